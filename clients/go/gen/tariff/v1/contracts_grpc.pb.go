// Customers, their contracts and the credit granted to them. See
// docs/architecture.md §3.
//
// Ids chosen by clients (customers, contracts, grants, overrides, products,
// rate cards, request_id keys) follow one rule, enforced wherever an id
// enters: 1 to 128 characters, each an ASCII letter, digit, or one of
// . _ : @ -
// A field naming a record to find (customer_id, contract_id, rate_card_id,
// a Get's id, SimulateVersion's customer_ids, on every service) answers
// alike: empty is INVALID_ARGUMENT "is required" naming the field (but
// where the field says empty means every customer), breaking the rule is
// INVALID_ARGUMENT whose google.rpc.BadRequest names the field path
// ("customer_ids[2]") and why, and a well-formed id of no record is
// NOT_FOUND naming it; none changes anything. A record stored by an earlier
// release answers to its id as it did. Streams answer in-band instead: an
// AuthorizeStream or AuthorizeBatches request INVALID_REQUEST (its message
// naming the field) or UNKNOWN_CUSTOMER, a usage event INVALID_EVENT or
// UNKNOWN_CUSTOMER. A product_id inside a request's content (an override's,
// a grant's applicable_product_ids, a draft's upsert_rates) breaking the
// rule is INVALID_ARGUMENT naming it too; an unknown one there is
// INVALID_ARGUMENT "unknown product" (in a draft, a ValidateVersion finding).
// reservation_id, transaction_id, invoice_number and line_id are not under
// the rule.
//
// Free texts a request stores for a person to read (a customer's name and
// attributes; a product's name, event_type, unit, value_key, filters and
// pricing_dimensions; a rate card's name; a draft's change_note and its
// rates' match; a cohort's attributes; an override's match values) hold no
// control character (U+0000-U+001F and U+007F-U+009F: NUL, tab, LF, CR, ESC,
// DEL, NEL, CSI, ...), no line or paragraph separator (U+2028, U+2029) and
// no bidirectional control (U+061C, U+200E, U+200F, U+202A-U+202E,
// U+2066-U+2069): invoices, the audit log and the CLI's tables show a text
// as it is, and such a character breaks their rows or shows the text
// reversed. A change_note, written in lines, may hold LF and tab. A text that
// holds one is INVALID_ARGUMENT naming the field (a map entry by its key,
// the character escaped: "attributes[re\u202egion]"), the first such
// character's position (the first character is 1) and its code point
// ("name: character 4 is U+202E (a bidirectional control), which a name may
// not hold"), nothing made or changed. Any other text is taken and answered
// as sent: letters of every script (Arabic and Hebrew show right to left
// without any control), accents, emoji and the zero-width joiner. Records
// stored by an earlier release keep their texts as they were. A usage event's
// texts and an Authorize request's (usage.proto, balance.proto) are not under
// this rule.
//
// Times a request names (starting_at, ending_before, starts_at, expires_at,
// and in pricing.proto and invoices.proto effective_from,
// customers_created_after, at, period_start, period_end) lie between
// 1970-01-01T00:00:00Z and 8999-12-31T23:59:59.999Z, nanos 0-999,999,999;
// anything else is INVALID_ARGUMENT naming the field. The bounds of a filter
// (start_time, end_time, period_start_from, period_start_before) may be any
// valid Timestamp. State is kept in whole milliseconds, and a part finer than
// a millisecond is read as follows. What a request sets (a contract's or an
// override's starting_at and ending_before, a grant's starts_at and
// expires_at, customers_created_after) has it dropped: the record holds, and
// answers, the whole millisecond (a contract starting at 00:00:00.000999 starts
// at 00:00:00.000, and a grant expiring at 10:00:00.000500 expires at
// 10:00:00.000: usage at that millisecond is not paid from it). An instant a
// read locates (at, PreviewInvoice's period_start, SimulateVersion's
// period_start) has it dropped too, which changes no answer, every boundary
// being a whole millisecond. An instant that must be exact (effective_from, on
// an hour; ClosePeriod's and ExplainLineItem's period_start, a period's start)
// is INVALID_ARGUMENT with such a part. A span's ends (GetRevenueReport's
// period_start and period_end, SimulateVersion's period_end) and a filter's
// bounds are compared to the nanosecond: a period starting at t is in a span
// or filter ending at t + 0.5 ms.
//
// Decimal strings (amounts, prices, parameters, multipliers, thresholds, here
// and in pricing.proto and alerts.proto) are written as JSON writes a number:
// an optional '-', ASCII digits without leading zeros, optionally '.' and
// ASCII digits, then optionally 'e' or 'E', an optional sign and ASCII digits
// ("0", "-1.5", "0.03", "12.50", "1e3", "1E-7"); at most 64 characters, and the
// value below 10^18 with at most 18 decimal places ("1e-19" is refused, never
// rounded). Anything else ("1_000", " 1", "+1", "1.", ".5", "1.e3", "007",
// other scripts' digits) is INVALID_ARGUMENT naming the field. A price field
// of pricing.proto is held to the grammar so, but to 1,000 characters, and its
// value (a plain decimal's too) to the range by validation: a draft pricing
// "1e18" is made, ValidateVersion reports the error and PublishVersion refuses
// it (pricing.proto, above UnitPrice). Amounts the
// server writes follow the same grammar, without an exponent or trailing zeros,
// but for an invoice's amounts due, written with exactly the currency's
// minor_unit places ("12.30", "0.00", "1500"; invoices.proto). So do the
// decimals of a contract a request set (overage_price, an override's multiplier
// and price, the top-up policy: "12.50" is answered "12.5"), and an alert
// rule's threshold. A rate card version's parameters and price fields are kept
// as the draft wrote them ("1.50", "1e-2", formulas), as DiffVersions compares
// them: DiffVersions' old_price and new_price give their value.
//
// A refusal's status stays small, so that every client receives its code
// (gRPC clients refuse trailers past 8 or 16 KiB): its message is at most 512
// bytes (UTF-8), its details (the google.rpc.Status in
// grpc-status-details-bin, message included) at most 4,096 bytes. An
// INVALID_ARGUMENT whose violations do not all fit carries the first ones in
// its google.rpc.BadRequest, then one last violation with an empty field
// saying how many more there are (and, for a version's findings, that
// ValidateVersion lists them all); its message ends "(N violations in all)"
// ("(N violations in all; ValidateVersion lists them all)" for a version's).
// A value quoted in a message or violation may be cut, ending with "…".
//
// Paged lists (ListCustomers, ListRateCards, ListAlertRules, ListInvoices)
// answer in id order (ListInvoices: invoice number order), page_size items
// a page (100 when 0; more than 1,000 reads as 1,000; fewer, never none,
// when that many would take more than 4 MiB, what a gRPC client reads by
// default, or, under a lower --message-mb-max, than that limit less 64 KiB,
// so that the server can send the page), and an empty next_page_token on the
// last page only. A next_page_token is the id of its
// page's last item: passed back unchanged, with the same request fields
// (customer_id, filters) and key, it gives the next page, and every item
// shows exactly once. Any other page_token (made up, another list's, another
// customer's invoice, one outside the filters, an item the key may not see)
// is INVALID_ARGUMENT naming page_token, the same refusal for each: it is
// never read as a position. A token stays valid, restarts included: nothing
// listed is ever deleted but an alert rule (DeleteAlertRule), and a token
// naming a rule deleted since goes on after its id as before. An item added
// between two pages shows on a later page when its id sorts after the token
// (every new invoice does, numbers grow), and never otherwise.
//
// Every call that changes state is safe to retry: its id (or request_id) is
// its idempotency key. The same key with the same request answers with what
// the first call made, as it is now (a contract with its later grants, say),
// and changes nothing; the same key with a different request is
// ALREADY_EXISTS.

// Code generated by protoc-gen-go-grpc. DO NOT EDIT.
// versions:
// - protoc-gen-go-grpc v1.6.2
// - protoc             (unknown)
// source: tariff/v1/contracts.proto

package tariffv1

import (
	context "context"
	grpc "google.golang.org/grpc"
	codes "google.golang.org/grpc/codes"
	status "google.golang.org/grpc/status"
)

// This is a compile-time assertion to ensure that this generated file
// is compatible with the grpc package it is being compiled against.
// Requires gRPC-Go v1.64.0 or later.
const _ = grpc.SupportPackageIsVersion9

const (
	ContractService_CreateCustomer_FullMethodName = "/tariff.v1.ContractService/CreateCustomer"
	ContractService_GetCustomer_FullMethodName    = "/tariff.v1.ContractService/GetCustomer"
	ContractService_ListCustomers_FullMethodName  = "/tariff.v1.ContractService/ListCustomers"
	ContractService_CreateContract_FullMethodName = "/tariff.v1.ContractService/CreateContract"
	ContractService_GetContract_FullMethodName    = "/tariff.v1.ContractService/GetContract"
	ContractService_AddOverride_FullMethodName    = "/tariff.v1.ContractService/AddOverride"
	ContractService_GrantCredits_FullMethodName   = "/tariff.v1.ContractService/GrantCredits"
	ContractService_SetTopUpPolicy_FullMethodName = "/tariff.v1.ContractService/SetTopUpPolicy"
	ContractService_EndContract_FullMethodName    = "/tariff.v1.ContractService/EndContract"
	ContractService_ExpireGrant_FullMethodName    = "/tariff.v1.ContractService/ExpireGrant"
	ContractService_EndOverride_FullMethodName    = "/tariff.v1.ContractService/EndOverride"
)

// ContractServiceClient is the client API for ContractService service.
//
// For semantics around ctx use and closing/ending streaming RPCs, please refer to https://pkg.go.dev/google.golang.org/grpc/?tab=doc#ClientConn.NewStream.
type ContractServiceClient interface {
	// Key: id.
	CreateCustomer(ctx context.Context, in *CreateCustomerRequest, opts ...grpc.CallOption) (*Customer, error)
	GetCustomer(ctx context.Context, in *GetCustomerRequest, opts ...grpc.CallOption) (*Customer, error)
	ListCustomers(ctx context.Context, in *ListCustomersRequest, opts ...grpc.CallOption) (*ListCustomersResponse, error)
	// Key: id; when empty, the customer and the start (a customer's contracts
	// never overlap). A contract whose answer (it shows the customer's grants
	// given without a contract) would be larger than --message-mb-max is
	// RESOURCE_EXHAUSTED, not created; a retry of one made answers it as it is.
	CreateContract(ctx context.Context, in *CreateContractRequest, opts ...grpc.CallOption) (*Contract, error)
	GetContract(ctx context.Context, in *GetContractRequest, opts ...grpc.CallOption) (*Contract, error)
	// Key: override.id; when empty, the override's content as the request
	// writes it (a multiplier "0.50" and one "0.5" are two keys, and two
	// overrides alike once held: send the same text, or an id). A contract holds at
	// most 1,000 overrides: another is RESOURCE_EXHAUSTED (a retry of one it
	// holds still answers). An override that would make the answer (the whole
	// contract) larger than --message-mb-max is RESOURCE_EXHAUSTED, not added;
	// a retry of one the contract holds answers the contract as it is.
	AddOverride(ctx context.Context, in *AddOverrideRequest, opts ...grpc.CallOption) (*Contract, error)
	// Key: grant.id, or request_id when grant.id is empty (one of them is required).
	// A customer holds at most 1,000 grants given by GrantCredits over its
	// life, spent and expired ones too (no grant is ever removed, so none makes
	// room; every one is listed on its contracts, never paged): another is
	// RESOURCE_EXHAUSTED, nothing granted (a retry of one it holds still
	// answers). The grants the server makes (TOP_UP, ROLLOVER) do not count:
	// at most max_per_period TOP_UP grants a billing period, kept for good, and
	// one ROLLOVER grant for each grant with a rollover_fraction (it does not
	// roll over again). The balance lists them all while they fit one message
	// (Balance.grants).
	GrantCredits(ctx context.Context, in *GrantCreditsRequest, opts ...grpc.CallOption) (*Grant, error)
	// A policy that would make the answer (the whole contract) larger than
	// --message-mb-max, and larger than it is, is RESOURCE_EXHAUSTED, not set;
	// a retry of the policy set answers the contract as it is. One that leaves
	// it no larger (a clearing, say) is set even when the contract's grants
	// already take it past the limit: RESOURCE_EXHAUSTED saying the policy was
	// set (or cleared), so that a policy can always be stopped.
	SetTopUpPolicy(ctx context.Context, in *SetTopUpPolicyRequest, opts ...grpc.CallOption) (*Contract, error)
	// Ends a contract: sets its ending_before (or moves it), so that a customer
	// who churns or moves to another plan mid-contract stops being billed under
	// it. Key: the contract and the end: a retry, or any request naming the end
	// the contract has, answers the contract as it is and changes nothing; a
	// request naming another end moves it, within the rules below. An unknown
	// contract_id is NOT_FOUND (see the top of this file). ending_before is
	// required and held to CreateContract's rules (the time bounds, what finer
	// than a millisecond is dropped, after starting_at): INVALID_ARGUMENT naming
	// ending_before otherwise. FAILED_PRECONDITION, nothing changed, when the
	// contract has already ended (its ending_before is at or before the
	// request's time: an end that has passed is never moved), when the new end
	// is before the request's time (no retroactive end: periods and invoices
	// already billed stay as they are), when a grant with a rollover fraction
	// starts under the contract at or after the new end (its start would lie in
	// no contract, leaving it no billing period to roll over at the end of, as
	// GrantCredits requires: the message names the grant), when usage is
	// already recorded under the
	// contract in an hour ending after the new end (usage is kept by the hour, so
	// an hour holding the new end off the hour counts whole; events dated ahead
	// of the clock, within --future-skew-s, can be there: the message names the
	// latest such hour), or when a later end would overlap another contract of
	// the customer (the message names it). Usage dated at or after the end is
	// then the next contract's, or NO_ACTIVE_CONTRACT; usage dated before it,
	// late arrivals included, still counts. The last period keeps its monthly
	// end, as for a contract created with ending_before. The change is journaled
	// and in the audit log (action EndContract, target contract/<id>).
	EndContract(ctx context.Context, in *EndContractRequest, opts ...grpc.CallOption) (*Contract, error)
	// Ends a grant early: moves its expires_at earlier, or sets it on a grant
	// with none, so that credit granted by mistake, or forfeited, stops paying.
	// Any grant of the customer: given by GrantCredits, or made by the server
	// (TOP_UP, ROLLOVER: their ids are the customer's, hence customer_id).
	// Answers the grant as it is now. Key: the grant and the expiry: a retry, or
	// any request naming the expiry the grant has, answers the grant as it is
	// and changes nothing (after that expiry has passed too). What the grant
	// still holds at the new expiry is breakage, exactly as for a grant created
	// with that expires_at: the same revenue (breakage at its cost basis, in
	// the period the expiry falls in), the same invoice lines, and the same
	// rollover rule (a grant with a rollover_fraction expiring before the end of
	// the billing period it starts in does not roll over; exactly at that end it
	// rolls over there). Open holds on the grant keep what they hold: what one
	// gives back after the expiry (released, expired, or settled by an event
	// not drawing it) is breakage too, as for any expired grant. customer_id and
	// grant_id are required (INVALID_ARGUMENT naming them); an unknown customer,
	// or a grant it does not have, is NOT_FOUND. expires_at is required and held
	// to GrantCredits' rules (the time bounds, what finer than a millisecond is
	// dropped, after starts_at): INVALID_ARGUMENT naming expires_at otherwise.
	// FAILED_PRECONDITION, nothing changed, when the grant has already expired
	// (its expires_at is at or before the request's time: an expiry that has
	// passed is never moved), when it has already rolled over (a grant with a
	// rollover_fraction whose rollover, the end of the billing period it starts
	// in, is at or before the request's time: its remainder has moved to a
	// ROLLOVER grant or broken, and the message says "has already ended:
	// rolled over at" that end), when the new expires_at is before the request's
	// time (no retroactive expiry: what drew on it stays drawn), when it is
	// later than the grant's expires_at (an expiry is only moved earlier), or
	// when usage of the customer is already recorded in an hour ending after the
	// new expires_at (and after the grant's start, before its current expiry)
	// that could have drawn on the grant: usage is kept by the hour, so an hour
	// holding the new expiry off the hour counts whole, and usage of any product
	// counts (conservative: draws are not kept by the hour); events dated ahead
	// of the clock, within --future-skew-s, can be there: the message names the
	// latest such hour. The change is journaled and in the audit log (action
	// ExpireGrant, target grant/<id>).
	ExpireGrant(ctx context.Context, in *ExpireGrantRequest, opts ...grpc.CallOption) (*Grant, error)
	// Ends a contract's price override early: sets its ending_before, or moves
	// it earlier, so that a discount given to a customer can be revoked (an
	// override without an end lasts for the contract's life). Answers the
	// contract as it is now, as AddOverride does. Key: the override and the
	// end: a retry, or any request naming the end the override has, answers
	// the contract as it is and changes nothing (after that end has passed
	// too); the AddOverride that added the override, sent again, still answers
	// the contract as it is. Usage dated at or after the new end is priced
	// without the override (the rate card's price, or another override
	// matching it); usage dated before it, late arrivals included, keeps it.
	// An end off the hour splits its hour as any override's ending_before does
	// (PriceOverride.starting_at: a publish that would re-rate that hour's
	// matching usage is refused until the period closes); on the hour, nothing
	// is. contract_id and override_id are required (INVALID_ARGUMENT naming
	// them); an unknown contract, or an override it does not hold, is
	// NOT_FOUND.
	// ending_before is required and held to AddOverride's rules (the time
	// bounds, what finer than a millisecond is dropped, after the override's
	// starting_at): INVALID_ARGUMENT naming ending_before otherwise.
	// FAILED_PRECONDITION, nothing changed, when the override has already
	// ended (its ending_before is at or before the request's time: an end that
	// has passed is never moved), when the new end is before the request's
	// time (no retroactive end: re-pricing usage already rated is what
	// publishing a version, and its re-rating, is for), when it is later than
	// the override's ending_before (an end is only moved earlier), or when
	// usage of the customer in the override's product is already recorded in
	// an hour ending after the new end (and before the override's current
	// end): usage is kept by the hour, so an hour holding the new end off the
	// hour counts whole, and usage its match would not price counts too
	// (conservative); events dated ahead of the clock, within
	// --future-skew-s, can be there: the message names the latest such hour.
	// The change is journaled and in the audit log (action EndOverride, target
	// contract/<id>).
	EndOverride(ctx context.Context, in *EndOverrideRequest, opts ...grpc.CallOption) (*Contract, error)
}

type contractServiceClient struct {
	cc grpc.ClientConnInterface
}

func NewContractServiceClient(cc grpc.ClientConnInterface) ContractServiceClient {
	return &contractServiceClient{cc}
}

func (c *contractServiceClient) CreateCustomer(ctx context.Context, in *CreateCustomerRequest, opts ...grpc.CallOption) (*Customer, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Customer)
	err := c.cc.Invoke(ctx, ContractService_CreateCustomer_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) GetCustomer(ctx context.Context, in *GetCustomerRequest, opts ...grpc.CallOption) (*Customer, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Customer)
	err := c.cc.Invoke(ctx, ContractService_GetCustomer_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) ListCustomers(ctx context.Context, in *ListCustomersRequest, opts ...grpc.CallOption) (*ListCustomersResponse, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(ListCustomersResponse)
	err := c.cc.Invoke(ctx, ContractService_ListCustomers_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) CreateContract(ctx context.Context, in *CreateContractRequest, opts ...grpc.CallOption) (*Contract, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Contract)
	err := c.cc.Invoke(ctx, ContractService_CreateContract_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) GetContract(ctx context.Context, in *GetContractRequest, opts ...grpc.CallOption) (*Contract, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Contract)
	err := c.cc.Invoke(ctx, ContractService_GetContract_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) AddOverride(ctx context.Context, in *AddOverrideRequest, opts ...grpc.CallOption) (*Contract, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Contract)
	err := c.cc.Invoke(ctx, ContractService_AddOverride_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) GrantCredits(ctx context.Context, in *GrantCreditsRequest, opts ...grpc.CallOption) (*Grant, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Grant)
	err := c.cc.Invoke(ctx, ContractService_GrantCredits_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) SetTopUpPolicy(ctx context.Context, in *SetTopUpPolicyRequest, opts ...grpc.CallOption) (*Contract, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Contract)
	err := c.cc.Invoke(ctx, ContractService_SetTopUpPolicy_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) EndContract(ctx context.Context, in *EndContractRequest, opts ...grpc.CallOption) (*Contract, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Contract)
	err := c.cc.Invoke(ctx, ContractService_EndContract_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) ExpireGrant(ctx context.Context, in *ExpireGrantRequest, opts ...grpc.CallOption) (*Grant, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Grant)
	err := c.cc.Invoke(ctx, ContractService_ExpireGrant_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *contractServiceClient) EndOverride(ctx context.Context, in *EndOverrideRequest, opts ...grpc.CallOption) (*Contract, error) {
	cOpts := append([]grpc.CallOption{grpc.StaticMethod()}, opts...)
	out := new(Contract)
	err := c.cc.Invoke(ctx, ContractService_EndOverride_FullMethodName, in, out, cOpts...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ContractServiceServer is the server API for ContractService service.
// All implementations must embed UnimplementedContractServiceServer
// for forward compatibility.
type ContractServiceServer interface {
	// Key: id.
	CreateCustomer(context.Context, *CreateCustomerRequest) (*Customer, error)
	GetCustomer(context.Context, *GetCustomerRequest) (*Customer, error)
	ListCustomers(context.Context, *ListCustomersRequest) (*ListCustomersResponse, error)
	// Key: id; when empty, the customer and the start (a customer's contracts
	// never overlap). A contract whose answer (it shows the customer's grants
	// given without a contract) would be larger than --message-mb-max is
	// RESOURCE_EXHAUSTED, not created; a retry of one made answers it as it is.
	CreateContract(context.Context, *CreateContractRequest) (*Contract, error)
	GetContract(context.Context, *GetContractRequest) (*Contract, error)
	// Key: override.id; when empty, the override's content as the request
	// writes it (a multiplier "0.50" and one "0.5" are two keys, and two
	// overrides alike once held: send the same text, or an id). A contract holds at
	// most 1,000 overrides: another is RESOURCE_EXHAUSTED (a retry of one it
	// holds still answers). An override that would make the answer (the whole
	// contract) larger than --message-mb-max is RESOURCE_EXHAUSTED, not added;
	// a retry of one the contract holds answers the contract as it is.
	AddOverride(context.Context, *AddOverrideRequest) (*Contract, error)
	// Key: grant.id, or request_id when grant.id is empty (one of them is required).
	// A customer holds at most 1,000 grants given by GrantCredits over its
	// life, spent and expired ones too (no grant is ever removed, so none makes
	// room; every one is listed on its contracts, never paged): another is
	// RESOURCE_EXHAUSTED, nothing granted (a retry of one it holds still
	// answers). The grants the server makes (TOP_UP, ROLLOVER) do not count:
	// at most max_per_period TOP_UP grants a billing period, kept for good, and
	// one ROLLOVER grant for each grant with a rollover_fraction (it does not
	// roll over again). The balance lists them all while they fit one message
	// (Balance.grants).
	GrantCredits(context.Context, *GrantCreditsRequest) (*Grant, error)
	// A policy that would make the answer (the whole contract) larger than
	// --message-mb-max, and larger than it is, is RESOURCE_EXHAUSTED, not set;
	// a retry of the policy set answers the contract as it is. One that leaves
	// it no larger (a clearing, say) is set even when the contract's grants
	// already take it past the limit: RESOURCE_EXHAUSTED saying the policy was
	// set (or cleared), so that a policy can always be stopped.
	SetTopUpPolicy(context.Context, *SetTopUpPolicyRequest) (*Contract, error)
	// Ends a contract: sets its ending_before (or moves it), so that a customer
	// who churns or moves to another plan mid-contract stops being billed under
	// it. Key: the contract and the end: a retry, or any request naming the end
	// the contract has, answers the contract as it is and changes nothing; a
	// request naming another end moves it, within the rules below. An unknown
	// contract_id is NOT_FOUND (see the top of this file). ending_before is
	// required and held to CreateContract's rules (the time bounds, what finer
	// than a millisecond is dropped, after starting_at): INVALID_ARGUMENT naming
	// ending_before otherwise. FAILED_PRECONDITION, nothing changed, when the
	// contract has already ended (its ending_before is at or before the
	// request's time: an end that has passed is never moved), when the new end
	// is before the request's time (no retroactive end: periods and invoices
	// already billed stay as they are), when a grant with a rollover fraction
	// starts under the contract at or after the new end (its start would lie in
	// no contract, leaving it no billing period to roll over at the end of, as
	// GrantCredits requires: the message names the grant), when usage is
	// already recorded under the
	// contract in an hour ending after the new end (usage is kept by the hour, so
	// an hour holding the new end off the hour counts whole; events dated ahead
	// of the clock, within --future-skew-s, can be there: the message names the
	// latest such hour), or when a later end would overlap another contract of
	// the customer (the message names it). Usage dated at or after the end is
	// then the next contract's, or NO_ACTIVE_CONTRACT; usage dated before it,
	// late arrivals included, still counts. The last period keeps its monthly
	// end, as for a contract created with ending_before. The change is journaled
	// and in the audit log (action EndContract, target contract/<id>).
	EndContract(context.Context, *EndContractRequest) (*Contract, error)
	// Ends a grant early: moves its expires_at earlier, or sets it on a grant
	// with none, so that credit granted by mistake, or forfeited, stops paying.
	// Any grant of the customer: given by GrantCredits, or made by the server
	// (TOP_UP, ROLLOVER: their ids are the customer's, hence customer_id).
	// Answers the grant as it is now. Key: the grant and the expiry: a retry, or
	// any request naming the expiry the grant has, answers the grant as it is
	// and changes nothing (after that expiry has passed too). What the grant
	// still holds at the new expiry is breakage, exactly as for a grant created
	// with that expires_at: the same revenue (breakage at its cost basis, in
	// the period the expiry falls in), the same invoice lines, and the same
	// rollover rule (a grant with a rollover_fraction expiring before the end of
	// the billing period it starts in does not roll over; exactly at that end it
	// rolls over there). Open holds on the grant keep what they hold: what one
	// gives back after the expiry (released, expired, or settled by an event
	// not drawing it) is breakage too, as for any expired grant. customer_id and
	// grant_id are required (INVALID_ARGUMENT naming them); an unknown customer,
	// or a grant it does not have, is NOT_FOUND. expires_at is required and held
	// to GrantCredits' rules (the time bounds, what finer than a millisecond is
	// dropped, after starts_at): INVALID_ARGUMENT naming expires_at otherwise.
	// FAILED_PRECONDITION, nothing changed, when the grant has already expired
	// (its expires_at is at or before the request's time: an expiry that has
	// passed is never moved), when it has already rolled over (a grant with a
	// rollover_fraction whose rollover, the end of the billing period it starts
	// in, is at or before the request's time: its remainder has moved to a
	// ROLLOVER grant or broken, and the message says "has already ended:
	// rolled over at" that end), when the new expires_at is before the request's
	// time (no retroactive expiry: what drew on it stays drawn), when it is
	// later than the grant's expires_at (an expiry is only moved earlier), or
	// when usage of the customer is already recorded in an hour ending after the
	// new expires_at (and after the grant's start, before its current expiry)
	// that could have drawn on the grant: usage is kept by the hour, so an hour
	// holding the new expiry off the hour counts whole, and usage of any product
	// counts (conservative: draws are not kept by the hour); events dated ahead
	// of the clock, within --future-skew-s, can be there: the message names the
	// latest such hour. The change is journaled and in the audit log (action
	// ExpireGrant, target grant/<id>).
	ExpireGrant(context.Context, *ExpireGrantRequest) (*Grant, error)
	// Ends a contract's price override early: sets its ending_before, or moves
	// it earlier, so that a discount given to a customer can be revoked (an
	// override without an end lasts for the contract's life). Answers the
	// contract as it is now, as AddOverride does. Key: the override and the
	// end: a retry, or any request naming the end the override has, answers
	// the contract as it is and changes nothing (after that end has passed
	// too); the AddOverride that added the override, sent again, still answers
	// the contract as it is. Usage dated at or after the new end is priced
	// without the override (the rate card's price, or another override
	// matching it); usage dated before it, late arrivals included, keeps it.
	// An end off the hour splits its hour as any override's ending_before does
	// (PriceOverride.starting_at: a publish that would re-rate that hour's
	// matching usage is refused until the period closes); on the hour, nothing
	// is. contract_id and override_id are required (INVALID_ARGUMENT naming
	// them); an unknown contract, or an override it does not hold, is
	// NOT_FOUND.
	// ending_before is required and held to AddOverride's rules (the time
	// bounds, what finer than a millisecond is dropped, after the override's
	// starting_at): INVALID_ARGUMENT naming ending_before otherwise.
	// FAILED_PRECONDITION, nothing changed, when the override has already
	// ended (its ending_before is at or before the request's time: an end that
	// has passed is never moved), when the new end is before the request's
	// time (no retroactive end: re-pricing usage already rated is what
	// publishing a version, and its re-rating, is for), when it is later than
	// the override's ending_before (an end is only moved earlier), or when
	// usage of the customer in the override's product is already recorded in
	// an hour ending after the new end (and before the override's current
	// end): usage is kept by the hour, so an hour holding the new end off the
	// hour counts whole, and usage its match would not price counts too
	// (conservative); events dated ahead of the clock, within
	// --future-skew-s, can be there: the message names the latest such hour.
	// The change is journaled and in the audit log (action EndOverride, target
	// contract/<id>).
	EndOverride(context.Context, *EndOverrideRequest) (*Contract, error)
	mustEmbedUnimplementedContractServiceServer()
}

// UnimplementedContractServiceServer must be embedded to have
// forward compatible implementations.
//
// NOTE: this should be embedded by value instead of pointer to avoid a nil
// pointer dereference when methods are called.
type UnimplementedContractServiceServer struct{}

func (UnimplementedContractServiceServer) CreateCustomer(context.Context, *CreateCustomerRequest) (*Customer, error) {
	return nil, status.Error(codes.Unimplemented, "method CreateCustomer not implemented")
}
func (UnimplementedContractServiceServer) GetCustomer(context.Context, *GetCustomerRequest) (*Customer, error) {
	return nil, status.Error(codes.Unimplemented, "method GetCustomer not implemented")
}
func (UnimplementedContractServiceServer) ListCustomers(context.Context, *ListCustomersRequest) (*ListCustomersResponse, error) {
	return nil, status.Error(codes.Unimplemented, "method ListCustomers not implemented")
}
func (UnimplementedContractServiceServer) CreateContract(context.Context, *CreateContractRequest) (*Contract, error) {
	return nil, status.Error(codes.Unimplemented, "method CreateContract not implemented")
}
func (UnimplementedContractServiceServer) GetContract(context.Context, *GetContractRequest) (*Contract, error) {
	return nil, status.Error(codes.Unimplemented, "method GetContract not implemented")
}
func (UnimplementedContractServiceServer) AddOverride(context.Context, *AddOverrideRequest) (*Contract, error) {
	return nil, status.Error(codes.Unimplemented, "method AddOverride not implemented")
}
func (UnimplementedContractServiceServer) GrantCredits(context.Context, *GrantCreditsRequest) (*Grant, error) {
	return nil, status.Error(codes.Unimplemented, "method GrantCredits not implemented")
}
func (UnimplementedContractServiceServer) SetTopUpPolicy(context.Context, *SetTopUpPolicyRequest) (*Contract, error) {
	return nil, status.Error(codes.Unimplemented, "method SetTopUpPolicy not implemented")
}
func (UnimplementedContractServiceServer) EndContract(context.Context, *EndContractRequest) (*Contract, error) {
	return nil, status.Error(codes.Unimplemented, "method EndContract not implemented")
}
func (UnimplementedContractServiceServer) ExpireGrant(context.Context, *ExpireGrantRequest) (*Grant, error) {
	return nil, status.Error(codes.Unimplemented, "method ExpireGrant not implemented")
}
func (UnimplementedContractServiceServer) EndOverride(context.Context, *EndOverrideRequest) (*Contract, error) {
	return nil, status.Error(codes.Unimplemented, "method EndOverride not implemented")
}
func (UnimplementedContractServiceServer) mustEmbedUnimplementedContractServiceServer() {}
func (UnimplementedContractServiceServer) testEmbeddedByValue()                         {}

// UnsafeContractServiceServer may be embedded to opt out of forward compatibility for this service.
// Use of this interface is not recommended, as added methods to ContractServiceServer will
// result in compilation errors.
type UnsafeContractServiceServer interface {
	mustEmbedUnimplementedContractServiceServer()
}

func RegisterContractServiceServer(s grpc.ServiceRegistrar, srv ContractServiceServer) {
	// If the following call panics, it indicates UnimplementedContractServiceServer was
	// embedded by pointer and is nil.  This will cause panics if an
	// unimplemented method is ever invoked, so we test this at initialization
	// time to prevent it from happening at runtime later due to I/O.
	if t, ok := srv.(interface{ testEmbeddedByValue() }); ok {
		t.testEmbeddedByValue()
	}
	s.RegisterService(&ContractService_ServiceDesc, srv)
}

func _ContractService_CreateCustomer_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(CreateCustomerRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).CreateCustomer(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_CreateCustomer_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).CreateCustomer(ctx, req.(*CreateCustomerRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_GetCustomer_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(GetCustomerRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).GetCustomer(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_GetCustomer_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).GetCustomer(ctx, req.(*GetCustomerRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_ListCustomers_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(ListCustomersRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).ListCustomers(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_ListCustomers_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).ListCustomers(ctx, req.(*ListCustomersRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_CreateContract_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(CreateContractRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).CreateContract(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_CreateContract_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).CreateContract(ctx, req.(*CreateContractRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_GetContract_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(GetContractRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).GetContract(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_GetContract_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).GetContract(ctx, req.(*GetContractRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_AddOverride_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(AddOverrideRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).AddOverride(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_AddOverride_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).AddOverride(ctx, req.(*AddOverrideRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_GrantCredits_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(GrantCreditsRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).GrantCredits(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_GrantCredits_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).GrantCredits(ctx, req.(*GrantCreditsRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_SetTopUpPolicy_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(SetTopUpPolicyRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).SetTopUpPolicy(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_SetTopUpPolicy_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).SetTopUpPolicy(ctx, req.(*SetTopUpPolicyRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_EndContract_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(EndContractRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).EndContract(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_EndContract_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).EndContract(ctx, req.(*EndContractRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_ExpireGrant_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(ExpireGrantRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).ExpireGrant(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_ExpireGrant_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).ExpireGrant(ctx, req.(*ExpireGrantRequest))
	}
	return interceptor(ctx, in, info, handler)
}

func _ContractService_EndOverride_Handler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	in := new(EndOverrideRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(ContractServiceServer).EndOverride(ctx, in)
	}
	info := &grpc.UnaryServerInfo{
		Server:     srv,
		FullMethod: ContractService_EndOverride_FullMethodName,
	}
	handler := func(ctx context.Context, req interface{}) (interface{}, error) {
		return srv.(ContractServiceServer).EndOverride(ctx, req.(*EndOverrideRequest))
	}
	return interceptor(ctx, in, info, handler)
}

// ContractService_ServiceDesc is the grpc.ServiceDesc for ContractService service.
// It's only intended for direct use with grpc.RegisterService,
// and not to be introspected or modified (even as a copy)
var ContractService_ServiceDesc = grpc.ServiceDesc{
	ServiceName: "tariff.v1.ContractService",
	HandlerType: (*ContractServiceServer)(nil),
	Methods: []grpc.MethodDesc{
		{
			MethodName: "CreateCustomer",
			Handler:    _ContractService_CreateCustomer_Handler,
		},
		{
			MethodName: "GetCustomer",
			Handler:    _ContractService_GetCustomer_Handler,
		},
		{
			MethodName: "ListCustomers",
			Handler:    _ContractService_ListCustomers_Handler,
		},
		{
			MethodName: "CreateContract",
			Handler:    _ContractService_CreateContract_Handler,
		},
		{
			MethodName: "GetContract",
			Handler:    _ContractService_GetContract_Handler,
		},
		{
			MethodName: "AddOverride",
			Handler:    _ContractService_AddOverride_Handler,
		},
		{
			MethodName: "GrantCredits",
			Handler:    _ContractService_GrantCredits_Handler,
		},
		{
			MethodName: "SetTopUpPolicy",
			Handler:    _ContractService_SetTopUpPolicy_Handler,
		},
		{
			MethodName: "EndContract",
			Handler:    _ContractService_EndContract_Handler,
		},
		{
			MethodName: "ExpireGrant",
			Handler:    _ContractService_ExpireGrant_Handler,
		},
		{
			MethodName: "EndOverride",
			Handler:    _ContractService_EndOverride_Handler,
		},
	},
	Streams:  []grpc.StreamDesc{},
	Metadata: "tariff/v1/contracts.proto",
}
