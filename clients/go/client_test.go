// The Go client against a real Tariff server process (demo catalogue): a batch ingested and its
// ack, the balance it leaves, Authorize (charges nothing; fail open or closed, within its
// deadline, when the server is not reached), a DUPLICATE_CONFLICT in the ack, and the API key.

package tariff_test

import (
	"context"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tariff "github.com/tariff/tariff/clients/go"
	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

func TestAgainstDemoServer(t *testing.T) {
	srv := startServer(t)
	client := newClient(t, srv.target(), tariff.Options{})
	ctx := context.Background()

	t.Run("a batch sent by the usage sender is acked, and the balance drops by its exact price", func(t *testing.T) {
		before, err := client.GetBalance(ctx, customer)
		if err != nil {
			t.Fatal(err)
		}
		sender, err := client.NewUsageSender(tariff.SenderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		runID := fmt.Sprintf("batch-%d", time.Now().UnixNano())
		var events []*tariffv1.UsageEvent
		price := new(big.Rat)
		for i := range 10 {
			event, kind := demoEvent(runID, i, time.Now().UnixMilli())
			events = append(events, event)
			price.Add(price, decimal(t, kind.price))
		}
		ack, err := sender.SendBatch(ctx, events, runID+"-b")
		if err != nil {
			t.Fatal(err)
		}
		if ack.GetBatchId() != runID+"-b" || ack.GetAccepted() != 10 || ack.GetDuplicates() != 0 || len(ack.GetRejected()) != 0 {
			t.Fatalf("ack = %v, want batch %s-b with 10 accepted", ack, runID)
		}
		again, err := sender.SendBatch(ctx, events, runID+"-b-again")
		if err != nil {
			t.Fatal(err)
		}
		if again.GetAccepted() != 0 || again.GetDuplicates() != 10 {
			t.Fatalf("identical resend: ack = %v, want 10 duplicates", again)
		}
		stats, err := sender.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if stats.BatchesAcked != 2 || stats.EventsAccepted != 10 || stats.EventsDuplicate != 10 || stats.BufferedEvents != 0 {
			t.Fatalf("stats = %+v", stats)
		}
		after, err := client.GetBalance(ctx, customer)
		if err != nil {
			t.Fatal(err)
		}
		drop := new(big.Rat).Sub(decimal(t, before.GetCreditsRemaining()), decimal(t, after.GetCreditsRemaining()))
		if drop.Cmp(price) != 0 {
			t.Fatalf("credits remaining dropped by %s, want %s", drop.RatString(), price.RatString())
		}
	})

	t.Run("Send batches by size and linger; Close waits for every ack", func(t *testing.T) {
		var acks []*tariffv1.IngestAck
		sender, err := client.NewUsageSender(tariff.SenderOptions{
			BatchEventsMax: 4,
			OnAck:          func(ack *tariffv1.IngestAck, _ *tariffv1.UsageBatch) { acks = append(acks, ack) },
		})
		if err != nil {
			t.Fatal(err)
		}
		runID := fmt.Sprintf("send-%d", time.Now().UnixNano())
		for i := range 10 {
			event, _ := demoEvent(runID, i, time.Now().UnixMilli())
			if err := sender.Send(ctx, event); err != nil {
				t.Fatal(err)
			}
		}
		stats, err := sender.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// 4 + 4 cut by size, the last 2 by the linger or by Close.
		if stats.BatchesSent != 3 || len(acks) != 3 || stats.EventsAccepted != 10 {
			t.Fatalf("stats = %+v, %d acks", stats, len(acks))
		}
		if err := sender.Send(ctx, &tariffv1.UsageEvent{}); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("Send after Close: %v, want FAILED_PRECONDITION", err)
		}
	})

	t.Run("a transaction id reused with other content comes back as DUPLICATE_CONFLICT", func(t *testing.T) {
		runID := fmt.Sprintf("conflict-%d", time.Now().UnixNano())
		first, _ := demoEvent(runID, 0, time.Now().UnixMilli())
		ack, err := client.IngestBatch(ctx, &tariffv1.UsageBatch{BatchId: runID + "-1", Events: []*tariffv1.UsageEvent{first}})
		if err != nil || ack.GetAccepted() != 1 {
			t.Fatalf("first: ack %v, err %v", ack, err)
		}
		before, err := client.GetBalance(ctx, customer)
		if err != nil {
			t.Fatal(err)
		}
		changed, _ := demoEvent(runID, 1, first.GetTimestampMs()) // another kind, the same transaction id
		changed.TransactionId = first.GetTransactionId()
		sender, err := client.NewUsageSender(tariff.SenderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer sender.Abort()
		ack, err = sender.SendBatch(ctx, []*tariffv1.UsageEvent{changed}, runID+"-2")
		if err != nil {
			t.Fatal(err)
		}
		rejected := ack.GetRejected()
		if ack.GetAccepted() != 0 || len(rejected) != 1 || rejected[0].GetReason() != tariffv1.RejectReason_DUPLICATE_CONFLICT ||
			rejected[0].GetTransactionId() != first.GetTransactionId() || rejected[0].GetIndex() != 0 {
			t.Fatalf("ack = %v, want one DUPLICATE_CONFLICT for %s", ack, first.GetTransactionId())
		}
		after, err := client.GetBalance(ctx, customer)
		if err != nil {
			t.Fatal(err)
		}
		if after.GetCreditsRemaining() != before.GetCreditsRemaining() {
			t.Fatalf("the conflicting event changed the balance: %s -> %s", before.GetCreditsRemaining(), after.GetCreditsRemaining())
		}
	})

	t.Run("Authorize prices the action and charges nothing", func(t *testing.T) {
		before, err := client.GetBalance(ctx, customer)
		if err != nil {
			t.Fatal(err)
		}
		for _, kind := range eventKinds {
			decision, err := client.Authorize(ctx, &tariffv1.AuthorizeRequest{CustomerId: customer, EventType: eventType, Dimensions: kind.dimensions}, tariff.AuthorizeOptions{Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if !decision.Allowed || decision.Reason != "OK" || decision.Degraded || decision.RequestID == "" {
				t.Fatalf("decision = %+v", decision)
			}
			if decimal(t, decision.EstimatedCost).Cmp(decimal(t, kind.price)) != 0 {
				t.Fatalf("estimated cost of %v = %s, want %s", kind.dimensions, decision.EstimatedCost, kind.price)
			}
		}
		after, err := client.GetBalance(ctx, customer)
		if err != nil {
			t.Fatal(err)
		}
		if after.GetCreditsRemaining() != before.GetCreditsRemaining() {
			t.Fatalf("authorize charged: %s -> %s", before.GetCreditsRemaining(), after.GetCreditsRemaining())
		}
	})

	t.Run("a hold asked for without an id goes by the id the client chose before the call", func(t *testing.T) {
		kind := eventKinds[0]
		decision, err := client.Authorize(ctx, &tariffv1.AuthorizeRequest{CustomerId: customer, EventType: eventType, Dimensions: kind.dimensions, Reserve: true},
			tariff.AuthorizeOptions{Timeout: 5 * time.Second})
		if err != nil || !decision.Allowed || !strings.HasPrefix(decision.ReservationID, "go-r-") {
			t.Fatalf("decision = %+v, %v; want an allowed hold under a go-r- id", decision, err)
		}
		if _, err := client.Balance.ReleaseReservation(ctx, &tariffv1.ReleaseReservationRequest{CustomerId: customer, ReservationId: decision.ReservationID}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("an INVALID_ARGUMENT names its field in a google.rpc.BadRequest, as the README shows", func(t *testing.T) {
		_, err := client.Contracts.CreateCustomer(ctx, &tariffv1.CreateCustomerRequest{Id: fmt.Sprintf("named-%d", time.Now().UnixNano()), Name: strings.Repeat("n", 300)})
		var fields []string
		for _, detail := range status.Convert(err).Details() {
			if badRequest, ok := detail.(*errdetails.BadRequest); ok {
				for _, violation := range badRequest.GetFieldViolations() {
					fields = append(fields, violation.GetField())
				}
			}
		}
		if status.Code(err) != codes.InvalidArgument || strings.Join(fields, ",") != "name" {
			t.Fatalf("a 300-byte customer name: %v, field violations %v; want INVALID_ARGUMENT naming name", err, fields)
		}
	})

	t.Run("errors wrap the gRPC status and are never degraded into a decision", func(t *testing.T) {
		_, err := client.Authorize(ctx, &tariffv1.AuthorizeRequest{CustomerId: "nobody", EventType: eventType}, tariff.AuthorizeOptions{OnUnavailable: tariff.FailOpen})
		if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "nobody") {
			t.Fatalf("unknown customer: %v, want NOT_FOUND", err)
		}
		if _, err := client.GetBalance(ctx, "nobody"); status.Code(err) != codes.NotFound {
			t.Fatalf("GetBalance(nobody): %v, want NOT_FOUND", err)
		}
	})
}

func TestAuthorizeWhenTheServerIsNotReached(t *testing.T) {
	ctx := context.Background()
	request := &tariffv1.AuthorizeRequest{RequestId: "r-1", CustomerId: customer, EventType: eventType}

	// Nothing listens on this port: UNAVAILABLE at once.
	closed := newClient(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), tariff.Options{})
	// This one accepts connections and never answers: the deadline decides.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	hanging := newClient(t, silent.Addr().String(), tariff.Options{})

	for _, client := range []*tariff.Client{closed, hanging} {
		started := time.Now()
		_, err := client.Authorize(ctx, request, tariff.AuthorizeOptions{Timeout: 300 * time.Millisecond})
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			t.Fatalf("ReturnError: %v, want UNAVAILABLE or DEADLINE_EXCEEDED", err)
		}
		open, err := client.Authorize(ctx, request, tariff.AuthorizeOptions{Timeout: 300 * time.Millisecond, OnUnavailable: tariff.FailOpen})
		if err != nil || !open.Allowed || !open.Degraded || open.Reason != "UNAVAILABLE" || open.RequestID != "r-1" {
			t.Fatalf("FailOpen: %+v, %v", open, err)
		}
		shut, err := client.Authorize(ctx, request, tariff.AuthorizeOptions{Timeout: 300 * time.Millisecond, OnUnavailable: tariff.FailClosed})
		if err != nil || shut.Allowed || !shut.Degraded || shut.Reason != "UNAVAILABLE" {
			t.Fatalf("FailClosed: %+v, %v", shut, err)
		}
		// Three calls, each bounded by its 300 ms deadline (generous margin for a loaded machine).
		if elapsed := time.Since(started); elapsed > 5*time.Second {
			t.Fatalf("three authorize calls took %s", elapsed)
		}
	}
	// A hold asked for without an id gets one chosen by the client before the call: a degraded decision
	// carries it, since the server may have journaled the hold before the deadline ran out (the usage
	// event settles it with that id; an unknown id only earns the event a notice).
	reserve := &tariffv1.AuthorizeRequest{RequestId: "r-2", CustomerId: customer, EventType: eventType, Reserve: true}
	held, err := hanging.Authorize(ctx, reserve, tariff.AuthorizeOptions{Timeout: 300 * time.Millisecond, OnUnavailable: tariff.FailOpen})
	if err != nil || !held.Degraded || held.ReservationID == "" {
		t.Fatalf("FailOpen with Reserve: %+v, %v; want a degraded decision naming the reservation id the hold may go by", held, err)
	}
	again, err := hanging.Authorize(ctx, reserve, tariff.AuthorizeOptions{Timeout: 300 * time.Millisecond, OnUnavailable: tariff.FailOpen})
	if err != nil || again.ReservationID == held.ReservationID || reserve.GetReservationId() != "" {
		t.Fatalf("a second hold asked for without an id: %+v, %v (request now %v); want a new id, the caller's request untouched", again, err, reserve)
	}
	// With the default policy the error is returned, and the Decision returned with it still names the id the
	// hold may go by: without it a retry would choose another id and hold the credit twice.
	failed, err := hanging.Authorize(ctx, reserve, tariff.AuthorizeOptions{Timeout: 300 * time.Millisecond})
	if code := status.Code(err); code != codes.DeadlineExceeded || failed.ReservationID == "" || failed.RequestID != "r-2" || failed.Allowed {
		t.Fatalf("ReturnError with Reserve: %+v, %v; want DEADLINE_EXCEEDED with a Decision naming request r-2 and the reservation id", failed, err)
	}
	// The caller's own cancellation is never turned into a decision.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := hanging.Authorize(cancelled, request, tariff.AuthorizeOptions{OnUnavailable: tariff.FailOpen}); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled context: %v, want CANCELED", err)
	}
	// Nor is the caller's own deadline, earlier than the decision's Timeout: it ends the call, and it is the
	// caller's decision too (AuthorizeOptions.OnUnavailable), as in the Java and TypeScript clients.
	expiring, cancelExpiring := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelExpiring()
	decision, err := hanging.Authorize(expiring, request, tariff.AuthorizeOptions{Timeout: 30 * time.Second, OnUnavailable: tariff.FailOpen})
	if status.Code(err) != codes.DeadlineExceeded || decision.Degraded || decision.Allowed {
		t.Fatalf("the caller's deadline before Timeout: %+v, %v; want DEADLINE_EXCEEDED and no decision", decision, err)
	}
}

func TestAPIKey(t *testing.T) {
	keysFile := filepath.Join(t.TempDir(), "keys.toml")
	cmd := exec.Command(pythonPath(t), "-m", "server.cli", "keys", "new", "--name", "go-client", "--role", "admin", "--file", keysFile)
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tariff keys new: %v", err)
	}
	key := strings.TrimSpace(string(out))
	srv := startServer(t, "--api-keys", keysFile)
	ctx := context.Background()

	withKey := newClient(t, srv.target(), tariff.Options{APIKey: key})
	if _, err := withKey.GetBalance(ctx, customer); err != nil {
		t.Fatalf("with the key: %v", err)
	}
	if _, err := withKey.Authorize(ctx, &tariffv1.AuthorizeRequest{CustomerId: customer, EventType: eventType}, tariff.AuthorizeOptions{}); err != nil {
		t.Fatalf("authorize with the key: %v", err)
	}
	sender, err := withKey.NewUsageSender(tariff.SenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	event, _ := demoEvent(fmt.Sprintf("key-%d", time.Now().UnixNano()), 0, time.Now().UnixMilli())
	if ack, err := sender.SendBatch(ctx, []*tariffv1.UsageEvent{event}, ""); err != nil || ack.GetAccepted() != 1 {
		t.Fatalf("a stream with the key: ack %v, err %v", ack, err)
	}
	if _, err := sender.Close(ctx); err != nil {
		t.Fatal(err)
	}

	for name, opts := range map[string]tariff.Options{"no key": {}, "a wrong key": {APIKey: key + "x"}} {
		client := newClient(t, srv.target(), opts)
		if _, err := client.GetBalance(ctx, customer); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%s: %v, want UNAUTHENTICATED", name, err)
		}
		sender, err := client.NewUsageSender(tariff.SenderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sender.SendBatch(ctx, []*tariffv1.UsageEvent{event}, ""); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%s: stream: %v, want UNAUTHENTICATED (not retried)", name, err)
		}
		sender.Abort()
	}
	_ = os.Remove(keysFile)
}
