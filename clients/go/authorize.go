// The gateway's credit check: one Authorize call per decision, with its own deadline and a policy
// for when the server cannot be reached in time.

package tariff

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

// UnavailablePolicy says what Authorize answers when the server cannot be reached in time
// (UNAVAILABLE or DEADLINE_EXCEEDED).
type UnavailablePolicy int

const (
	// ReturnError (the default) returns the error.
	ReturnError UnavailablePolicy = iota
	// FailOpen allows the request: a Decision with Allowed true, Degraded true, Reason "UNAVAILABLE".
	FailOpen
	// FailClosed denies it: Allowed false, Degraded true, Reason "UNAVAILABLE".
	FailClosed
)

// AuthorizeOptions tune one decision. The zero value uses the client's timeout and ReturnError.
type AuthorizeOptions struct {
	// Timeout bounds the call when ctx has no earlier deadline (default: the client's Timeout).
	// Gateways use a short one, e.g. 50 ms.
	Timeout time.Duration
	// OnUnavailable decides when the server is not reached in time. Other statuses (NOT_FOUND for
	// an unknown customer, INVALID_ARGUMENT, ...) are always returned as errors, and so is the
	// caller's own cancellation, ctx's deadline included (when it is earlier than Timeout, it ends
	// the call: the caller's decision, not the server's absence).
	OnUnavailable UnavailablePolicy
}

// Decision is the server's answer, or, when Degraded, the caller's fallback policy.
type Decision struct {
	RequestID string
	Allowed   bool
	// Reason: OK, OVERAGE_ALLOWED, INSUFFICIENT_CREDIT, NO_ACTIVE_CONTRACT, ... or UNAVAILABLE when Degraded.
	Reason string
	// EstimatedCost and CreditsAvailable are decimal strings in the rate card's pricing unit
	// ("" when Degraded).
	EstimatedCost    string
	CreditsAvailable string
	// ReservationID is the hold's id with Reserve: the server's answer, or, when Degraded or returned
	// with an error, the id the request carried (the hold may have been made).
	ReservationID string
	Message       string
	// Degraded is true when the server was not reached and OnUnavailable decided.
	Degraded bool
}

var requestCounter atomic.Uint64

// newRequestID is unique within the process and, with its time component, very likely across processes.
func newRequestID() string {
	return fmt.Sprintf("go-%x-%d", time.Now().UnixNano(), requestCounter.Add(1))
}

// Authorize asks whether the customer may consume this usage now. A request without RequestId
// gets a generated one (echoed in the Decision). It charges nothing; with Reserve it holds the
// estimated cost until an event carrying the reservation id settles it. A Reserve request without
// ReservationId gets one chosen here, before the call, so the hold's id is known whatever happens:
// a degraded decision carries it too (the server may have made the hold before the deadline ran
// out; an event naming an id that was never held is charged as usual, with a notice in its ack).
// To retry a Reserve request, send the same ReservationId: the server holds once. When Authorize
// returns an error, the Decision returned with it is no decision (Allowed false) but still names the
// RequestID and the ReservationID the request carried, so that a retry can reuse the id.
func (c *Client) Authorize(ctx context.Context, req *tariffv1.AuthorizeRequest, opts AuthorizeOptions) (Decision, error) {
	needsReservationID := req.GetReserve() && req.GetReservationId() == ""
	if req.GetRequestId() == "" || needsReservationID {
		// Copy rather than write into the caller's message, which it may reuse or share.
		req = proto.Clone(req).(*tariffv1.AuthorizeRequest)
		if req.GetRequestId() == "" {
			req.RequestId = newRequestID()
		}
		if needsReservationID {
			req.ReservationId = newReservationID()
		}
	}
	requestID := req.GetRequestId()
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = c.timeout
	}
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.Balance.Authorize(callCtx, req)
	if err == nil {
		return Decision{
			RequestID:        firstNonEmpty(resp.GetRequestId(), requestID),
			Allowed:          resp.GetAllowed(),
			Reason:           resp.GetReason(),
			EstimatedCost:    resp.GetEstimatedCost(),
			CreditsAvailable: resp.GetCreditsAvailable(),
			ReservationID:    resp.GetReservationId(),
			Message:          resp.GetMessage(),
		}, nil
	}
	code := status.Code(err)
	unreachable := code == codes.Unavailable || code == codes.DeadlineExceeded
	// The caller's own cancellation or deadline is its decision, not the server's absence.
	if opts.OnUnavailable == ReturnError || !unreachable || ctx.Err() != nil {
		failed := Decision{RequestID: requestID, ReservationID: req.GetReservationId()}
		return failed, fmt.Errorf("tariff: Authorize(%q, %q): %w", req.GetCustomerId(), req.GetEventType(), err)
	}
	return Decision{
		RequestID:     requestID,
		Allowed:       opts.OnUnavailable == FailOpen,
		Reason:        "UNAVAILABLE",
		ReservationID: req.GetReservationId(),
		Message:       fmt.Sprintf("Tariff server not reached (%s: %s); policy: %s", code, status.Convert(err).Message(), opts.OnUnavailable),
		Degraded:      true,
	}, nil
}

// newReservationID is random (128 bits): two gateways must never share a hold by choosing the same id.
func newReservationID() string {
	random := make([]byte, 16)
	_, _ = rand.Read(random) // crypto/rand.Read never fails (Go 1.24+)
	return "go-r-" + hex.EncodeToString(random)
}

func (p UnavailablePolicy) String() string {
	switch p {
	case ReturnError:
		return "return error"
	case FailOpen:
		return "fail open"
	case FailClosed:
		return "fail closed"
	}
	return fmt.Sprintf("UnavailablePolicy(%d)", int(p))
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
