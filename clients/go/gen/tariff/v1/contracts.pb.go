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

// Code generated by protoc-gen-go. DO NOT EDIT.
// versions:
// 	protoc-gen-go v1.36.12
// 	protoc        (unknown)
// source: tariff/v1/contracts.proto

package tariffv1

import (
	protoreflect "google.golang.org/protobuf/reflect/protoreflect"
	protoimpl "google.golang.org/protobuf/runtime/protoimpl"
	timestamppb "google.golang.org/protobuf/types/known/timestamppb"
	reflect "reflect"
	sync "sync"
	unsafe "unsafe"
)

const (
	// Verify that this generated code is sufficiently up-to-date.
	_ = protoimpl.EnforceVersion(20 - protoimpl.MinVersion)
	// Verify that runtime/protoimpl is sufficiently up-to-date.
	_ = protoimpl.EnforceVersion(protoimpl.MaxVersion - 20)
)

type OveragePolicy int32

const (
	// Treated as ALLOW.
	OveragePolicy_OVERAGE_POLICY_UNSPECIFIED OveragePolicy = 0
	// Charges beyond credit are billed in arrears at overage_price.
	OveragePolicy_ALLOW OveragePolicy = 1
	// Authorize denies once available credit is exhausted, read as: once the
	// described usage would exhaust it. A request whose estimated_cost is more
	// than the credit available to its products is denied INSUFFICIENT_CREDIT,
	// also while some credit is left (6.5 available: an estimate of 7 is
	// denied, one of 6.5 allowed; under ALLOW the 7 is OVERAGE_ALLOWED), and so
	// is any request while none is (balance.proto AuthorizeResponse). Usage that
	// happened is still recorded: ingestion never refuses it, and what no grant
	// covers is overage, as under ALLOW.
	OveragePolicy_BLOCK OveragePolicy = 2
)

// Enum value maps for OveragePolicy.
var (
	OveragePolicy_name = map[int32]string{
		0: "OVERAGE_POLICY_UNSPECIFIED",
		1: "ALLOW",
		2: "BLOCK",
	}
	OveragePolicy_value = map[string]int32{
		"OVERAGE_POLICY_UNSPECIFIED": 0,
		"ALLOW":                      1,
		"BLOCK":                      2,
	}
)

func (x OveragePolicy) Enum() *OveragePolicy {
	p := new(OveragePolicy)
	*p = x
	return p
}

func (x OveragePolicy) String() string {
	return protoimpl.X.EnumStringOf(x.Descriptor(), protoreflect.EnumNumber(x))
}

func (OveragePolicy) Descriptor() protoreflect.EnumDescriptor {
	return file_tariff_v1_contracts_proto_enumTypes[0].Descriptor()
}

func (OveragePolicy) Type() protoreflect.EnumType {
	return &file_tariff_v1_contracts_proto_enumTypes[0]
}

func (x OveragePolicy) Number() protoreflect.EnumNumber {
	return protoreflect.EnumNumber(x)
}

// Deprecated: Use OveragePolicy.Descriptor instead.
func (OveragePolicy) EnumDescriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{0}
}

type GrantKind int32

const (
	GrantKind_GRANT_KIND_UNSPECIFIED GrantKind = 0
	// Bought in advance: recognised as revenue as it is drawn.
	GrantKind_PREPAID GrantKind = 1
	// Given away: paid_amount is 0.
	GrantKind_PROMOTIONAL GrantKind = 2
	GrantKind_ROLLOVER    GrantKind = 3
	GrantKind_TOP_UP      GrantKind = 4
)

// Enum value maps for GrantKind.
var (
	GrantKind_name = map[int32]string{
		0: "GRANT_KIND_UNSPECIFIED",
		1: "PREPAID",
		2: "PROMOTIONAL",
		3: "ROLLOVER",
		4: "TOP_UP",
	}
	GrantKind_value = map[string]int32{
		"GRANT_KIND_UNSPECIFIED": 0,
		"PREPAID":                1,
		"PROMOTIONAL":            2,
		"ROLLOVER":               3,
		"TOP_UP":                 4,
	}
)

func (x GrantKind) Enum() *GrantKind {
	p := new(GrantKind)
	*p = x
	return p
}

func (x GrantKind) String() string {
	return protoimpl.X.EnumStringOf(x.Descriptor(), protoreflect.EnumNumber(x))
}

func (GrantKind) Descriptor() protoreflect.EnumDescriptor {
	return file_tariff_v1_contracts_proto_enumTypes[1].Descriptor()
}

func (GrantKind) Type() protoreflect.EnumType {
	return &file_tariff_v1_contracts_proto_enumTypes[1]
}

func (x GrantKind) Number() protoreflect.EnumNumber {
	return protoreflect.EnumNumber(x)
}

// Deprecated: Use GrantKind.Descriptor instead.
func (GrantKind) EnumDescriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{1}
}

type Customer struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	Id    string                 `protobuf:"bytes,1,opt,name=id,proto3" json:"id,omitempty"`
	Name  string                 `protobuf:"bytes,2,opt,name=name,proto3" json:"name,omitempty"`
	// Free-form attributes (segment, region, ...) that cohorts can match on.
	Attributes    map[string]string      `protobuf:"bytes,3,rep,name=attributes,proto3" json:"attributes,omitempty" protobuf_key:"bytes,1,opt,name=key" protobuf_val:"bytes,2,opt,name=value"`
	CreatedAt     *timestamppb.Timestamp `protobuf:"bytes,4,opt,name=created_at,json=createdAt,proto3" json:"created_at,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *Customer) Reset() {
	*x = Customer{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[0]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *Customer) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*Customer) ProtoMessage() {}

func (x *Customer) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[0]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use Customer.ProtoReflect.Descriptor instead.
func (*Customer) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{0}
}

func (x *Customer) GetId() string {
	if x != nil {
		return x.Id
	}
	return ""
}

func (x *Customer) GetName() string {
	if x != nil {
		return x.Name
	}
	return ""
}

func (x *Customer) GetAttributes() map[string]string {
	if x != nil {
		return x.Attributes
	}
	return nil
}

func (x *Customer) GetCreatedAt() *timestamppb.Timestamp {
	if x != nil {
		return x.CreatedAt
	}
	return nil
}

type CreateCustomerRequest struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	// Required; 1-128 letters, digits and . _ : @ - (see the top of this file).
	Id string `protobuf:"bytes,1,opt,name=id,proto3" json:"id,omitempty"`
	// At most 256 bytes of UTF-8 (more is INVALID_ARGUMENT naming name); the
	// id when empty. No control character, line break or bidirectional control
	// (see "Free texts" at the top of this file; INVALID_ARGUMENT naming name).
	Name string `protobuf:"bytes,2,opt,name=name,proto3" json:"name,omitempty"`
	// At most 64 entries; keys (non-empty) and values at most 256 bytes each,
	// neither holding a control character, line break or bidirectional control
	// ("Free texts" above; INVALID_ARGUMENT naming attributes[key]).
	Attributes    map[string]string `protobuf:"bytes,3,rep,name=attributes,proto3" json:"attributes,omitempty" protobuf_key:"bytes,1,opt,name=key" protobuf_val:"bytes,2,opt,name=value"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *CreateCustomerRequest) Reset() {
	*x = CreateCustomerRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[1]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *CreateCustomerRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*CreateCustomerRequest) ProtoMessage() {}

func (x *CreateCustomerRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[1]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use CreateCustomerRequest.ProtoReflect.Descriptor instead.
func (*CreateCustomerRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{1}
}

func (x *CreateCustomerRequest) GetId() string {
	if x != nil {
		return x.Id
	}
	return ""
}

func (x *CreateCustomerRequest) GetName() string {
	if x != nil {
		return x.Name
	}
	return ""
}

func (x *CreateCustomerRequest) GetAttributes() map[string]string {
	if x != nil {
		return x.Attributes
	}
	return nil
}

type GetCustomerRequest struct {
	state         protoimpl.MessageState `protogen:"open.v1"`
	Id            string                 `protobuf:"bytes,1,opt,name=id,proto3" json:"id,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *GetCustomerRequest) Reset() {
	*x = GetCustomerRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[2]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *GetCustomerRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*GetCustomerRequest) ProtoMessage() {}

func (x *GetCustomerRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[2]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use GetCustomerRequest.ProtoReflect.Descriptor instead.
func (*GetCustomerRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{2}
}

func (x *GetCustomerRequest) GetId() string {
	if x != nil {
		return x.Id
	}
	return ""
}

// Paged as the top of this file says; a key restricted to some customers
// lists those only.
type ListCustomersRequest struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	// At most 1,000; 100 when 0.
	PageSize uint32 `protobuf:"varint,1,opt,name=page_size,json=pageSize,proto3" json:"page_size,omitempty"`
	// next_page_token of the previous page, unchanged; empty for the first.
	PageToken     string `protobuf:"bytes,2,opt,name=page_token,json=pageToken,proto3" json:"page_token,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *ListCustomersRequest) Reset() {
	*x = ListCustomersRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[3]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *ListCustomersRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*ListCustomersRequest) ProtoMessage() {}

func (x *ListCustomersRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[3]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use ListCustomersRequest.ProtoReflect.Descriptor instead.
func (*ListCustomersRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{3}
}

func (x *ListCustomersRequest) GetPageSize() uint32 {
	if x != nil {
		return x.PageSize
	}
	return 0
}

func (x *ListCustomersRequest) GetPageToken() string {
	if x != nil {
		return x.PageToken
	}
	return ""
}

type ListCustomersResponse struct {
	state         protoimpl.MessageState `protogen:"open.v1"`
	Customers     []*Customer            `protobuf:"bytes,1,rep,name=customers,proto3" json:"customers,omitempty"`
	NextPageToken string                 `protobuf:"bytes,2,opt,name=next_page_token,json=nextPageToken,proto3" json:"next_page_token,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *ListCustomersResponse) Reset() {
	*x = ListCustomersResponse{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[4]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *ListCustomersResponse) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*ListCustomersResponse) ProtoMessage() {}

func (x *ListCustomersResponse) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[4]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use ListCustomersResponse.ProtoReflect.Descriptor instead.
func (*ListCustomersResponse) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{4}
}

func (x *ListCustomersResponse) GetCustomers() []*Customer {
	if x != nil {
		return x.Customers
	}
	return nil
}

func (x *ListCustomersResponse) GetNextPageToken() string {
	if x != nil {
		return x.NextPageToken
	}
	return ""
}

type PriceOverride struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	// Optional; when empty, named after the override's content ("override-...").
	Id string `protobuf:"bytes,1,opt,name=id,proto3" json:"id,omitempty"`
	// A product the contract's rate card does not price is accepted (a later
	// version may price it), but the override adds no rate: until the card
	// prices the product, its usage is NO_APPLICABLE_RATE.
	ProductId string `protobuf:"bytes,2,opt,name=product_id,json=productId,proto3" json:"product_id,omitempty"`
	// Dimension -> value or "*"; empty matches every event of the product.
	// Keys must be among the product's pricing_dimensions, as a rate's (an
	// override matches those only), values at most 256 bytes (as an event's):
	// another key, or a longer value (not "*"), is INVALID_ARGUMENT naming
	// override.match.<key>; so is a value holding a control character, line
	// break or bidirectional control ("Free texts" at the top of this file).
	// An entry whose value is "*" is left out, as a key
	// left out means "*", whatever its key: the override holds, and answers,
	// its match without it ({"model": "a", "other": "*"} is {"model": "a"}).
	Match map[string]string `protobuf:"bytes,3,rep,name=match,proto3" json:"match,omitempty" protobuf_key:"bytes,1,opt,name=key" protobuf_val:"bytes,2,opt,name=value"`
	// When several overrides match an event, the most specific match wins (the
	// most entries), and among equally specific ones the one added last.
	// Exactly one of multiplier and price, not negative ("0" is taken): neither
	// is INVALID_ARGUMENT naming override, a negative one naming its field
	// (override.multiplier, override.price).
	//
	// Types that are valid to be assigned to Adjustment:
	//
	//	*PriceOverride_Multiplier
	//	*PriceOverride_Price
	Adjustment isPriceOverride_Adjustment `protobuf_oneof:"adjustment"`
	// Unset: in force from the contract's start (and left unset in answers).
	// 1970-01-01T00:00:00Z, before every contract's start, is read as unset:
	// answered unset, and the same request as one leaving it unset (AddOverride's
	// key, with or without an id).
	// The window is read against each event's own timestamp, but an override
	// prices only what is rated after AddOverride: usage already rated keeps
	// its amount (the override is not applied back), until a retroactive
	// PublishVersion or RollbackRateCard re-rates those hours, which prices them
	// with the contract's overrides as they are then, or re-rates later hours of
	// their period, the first of which carries what the override changes in
	// their charge (PublishVersionRequest.effective_from). Usage is kept by the hour:
	// a starting_at or ending_before off the hour splits its hour's usage between
	// two prices that the hour's bucket cannot tell apart, so a publish that would
	// re-rate that hour's matching usage (unless a more specific override prices
	// it on both sides) is refused (FAILED_PRECONDITION, see
	// PublishVersionRequest.effective_from) until the period closes; on the hour,
	// nothing is refused.
	StartingAt *timestamppb.Timestamp `protobuf:"bytes,6,opt,name=starting_at,json=startingAt,proto3" json:"starting_at,omitempty"`
	// Unset: open-ended (EndOverride may set it, or move it earlier, later).
	// The override prices usage dated from starting_at up
	// to but not at ending_before, which must be after starting_at (at least a
	// millisecond, what finer is dropped; INVALID_ARGUMENT naming
	// override.ending_before otherwise).
	EndingBefore  *timestamppb.Timestamp `protobuf:"bytes,7,opt,name=ending_before,json=endingBefore,proto3" json:"ending_before,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *PriceOverride) Reset() {
	*x = PriceOverride{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[5]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *PriceOverride) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*PriceOverride) ProtoMessage() {}

func (x *PriceOverride) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[5]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use PriceOverride.ProtoReflect.Descriptor instead.
func (*PriceOverride) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{5}
}

func (x *PriceOverride) GetId() string {
	if x != nil {
		return x.Id
	}
	return ""
}

func (x *PriceOverride) GetProductId() string {
	if x != nil {
		return x.ProductId
	}
	return ""
}

func (x *PriceOverride) GetMatch() map[string]string {
	if x != nil {
		return x.Match
	}
	return nil
}

func (x *PriceOverride) GetAdjustment() isPriceOverride_Adjustment {
	if x != nil {
		return x.Adjustment
	}
	return nil
}

func (x *PriceOverride) GetMultiplier() string {
	if x != nil {
		if x, ok := x.Adjustment.(*PriceOverride_Multiplier); ok {
			return x.Multiplier
		}
	}
	return ""
}

func (x *PriceOverride) GetPrice() string {
	if x != nil {
		if x, ok := x.Adjustment.(*PriceOverride_Price); ok {
			return x.Price
		}
	}
	return ""
}

func (x *PriceOverride) GetStartingAt() *timestamppb.Timestamp {
	if x != nil {
		return x.StartingAt
	}
	return nil
}

func (x *PriceOverride) GetEndingBefore() *timestamppb.Timestamp {
	if x != nil {
		return x.EndingBefore
	}
	return nil
}

type isPriceOverride_Adjustment interface {
	isPriceOverride_Adjustment()
}

type PriceOverride_Multiplier struct {
	// Decimal string: multiplies the amount the rate card's price gives for
	// the period's cumulative quantity (every price model, tiers and flat
	// fees included); the product is rounded to 10^-12 once.
	Multiplier string `protobuf:"bytes,4,opt,name=multiplier,proto3,oneof"`
}

type PriceOverride_Price struct {
	// Decimal string, at most 18 decimal places: the contract's own price,
	// replacing the rate card's, by price model:
	//   - UNIT: the price per the rate's per_units (per_units is kept).
	//   - TIERED (GRADUATED or VOLUME): a flat unit price per the rate's
	//     per_units for the whole quantity; the tiers and their flat fees are
	//     dropped (5,000 units at per_units 1000 and price "0.02" cost 0.1).
	//   - PACKAGE: the price of each started package (package_size is kept).
	//   - FLAT: the flat fee, due once the period's quantity is above zero.
	Price string `protobuf:"bytes,5,opt,name=price,proto3,oneof"`
}

func (*PriceOverride_Multiplier) isPriceOverride_Adjustment() {}

func (*PriceOverride_Price) isPriceOverride_Adjustment() {}

// When a rated event or a hold leaves the customer's available credit below
// threshold, one TOP_UP grant of (recharge_to - available) credits is bought
// at price_per_credit, at most max_per_period times per billing period. The
// available credit is all of the customer's, Balance.credits_available,
// whatever products its grants apply to (not AuthorizeResponse's, the credit
// one usage's products may draw): while grants for other products keep it at
// or above threshold, usage no grant pays is overage (denied under BLOCK) and
// buys nothing. One
// policy per customer (set through any of its contracts). threshold must be
// above 0 (available credit is never below 0) and below recharge_to, the
// price not negative, max_per_period at least 1. A policy set while available
// credit is already below threshold buys at the next rated event (one that
// draws nothing included) or hold placed, not when it is set. The purchase follows the draw: an event costing more than is
// available is rated against what is there (the rest is overage, BLOCK or
// not), and Authorize decides without it; a retroactive PublishVersion or
// RollbackRateCard that settles the period's draws again keeps it so (the
// top-up pays only the period's charges beyond those at which it was
// bought). A purchase
// counts in the billing period of the event that triggered it; one an event
// dated in the next period triggers (events may be dated up to the server's
// future skew ahead) is a grant usable from that period's start, billed on its
// invoice and sold in its revenue, and the credit available for it is counted
// there.
type TopUpPolicy struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	// The customer's one policy (every contract of the customer shows it).
	// Decimal strings in the pricing unit (threshold, recharge_to: at most 12
	// decimal places) / the currency (price_per_credit: at most 18) of the
	// contract the policy was set through; more is INVALID_ARGUMENT naming the
	// field, never rounded. It buys only in the billing periods of the
	// customer's contracts in that currency: after a switch to a contract in
	// another currency, a purchase that would count in the new contract's
	// periods is not made (a price of 0.9 set for USD is never read as 0.9
	// JPY) until the policy is set again through a contract in that currency,
	// after which it buys in no period of a contract in the first one (late
	// usage of the old contract included). (Policies set by earlier releases
	// buy in every contract's periods, their price read in that contract's
	// currency, and still do.) recharge_to x
	// price_per_credit (what one purchase can cost at most, kept exact at
	// 10^-30 in 128 bits) above (2^127 - 1) x 10^-30 (about 170 million in the
	// currency) is INVALID_ARGUMENT naming top_up.recharge_to.
	Threshold      string `protobuf:"bytes,1,opt,name=threshold,proto3" json:"threshold,omitempty"`
	RechargeTo     string `protobuf:"bytes,2,opt,name=recharge_to,json=rechargeTo,proto3" json:"recharge_to,omitempty"`
	PricePerCredit string `protobuf:"bytes,3,opt,name=price_per_credit,json=pricePerCredit,proto3" json:"price_per_credit,omitempty"`
	// 1 to 1,000 (each purchase is a grant the customer keeps for good, listed
	// in its balance while it fits: Balance.grants): more is
	// INVALID_ARGUMENT naming top_up.max_per_period, nothing set.
	MaxPerPeriod uint32 `protobuf:"varint,4,opt,name=max_per_period,json=maxPerPeriod,proto3" json:"max_per_period,omitempty"`
	// The currency of price_per_credit, answered by the server: that of the
	// contract the policy was set through, on every contract of the customer
	// (empty for a policy set by an earlier release, whose price is read in the
	// currency of the contract each purchase counts in). Optional in
	// SetTopUpPolicy: when set, it must be the contract's currency
	// (INVALID_ARGUMENT naming top_up.currency otherwise, nothing changed), so
	// that a policy read from one contract and sent through a contract in
	// another currency is refused, never repriced.
	Currency      string `protobuf:"bytes,5,opt,name=currency,proto3" json:"currency,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *TopUpPolicy) Reset() {
	*x = TopUpPolicy{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[6]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *TopUpPolicy) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*TopUpPolicy) ProtoMessage() {}

func (x *TopUpPolicy) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[6]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use TopUpPolicy.ProtoReflect.Descriptor instead.
func (*TopUpPolicy) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{6}
}

func (x *TopUpPolicy) GetThreshold() string {
	if x != nil {
		return x.Threshold
	}
	return ""
}

func (x *TopUpPolicy) GetRechargeTo() string {
	if x != nil {
		return x.RechargeTo
	}
	return ""
}

func (x *TopUpPolicy) GetPricePerCredit() string {
	if x != nil {
		return x.PricePerCredit
	}
	return ""
}

func (x *TopUpPolicy) GetMaxPerPeriod() uint32 {
	if x != nil {
		return x.MaxPerPeriod
	}
	return 0
}

func (x *TopUpPolicy) GetCurrency() string {
	if x != nil {
		return x.Currency
	}
	return ""
}

type Contract struct {
	state      protoimpl.MessageState `protogen:"open.v1"`
	Id         string                 `protobuf:"bytes,1,opt,name=id,proto3" json:"id,omitempty"`
	CustomerId string                 `protobuf:"bytes,2,opt,name=customer_id,json=customerId,proto3" json:"customer_id,omitempty"`
	RateCardId string                 `protobuf:"bytes,3,opt,name=rate_card_id,json=rateCardId,proto3" json:"rate_card_id,omitempty"`
	// Billing periods are monthly, anchored on starting_at (UTC).
	StartingAt *timestamppb.Timestamp `protobuf:"bytes,4,opt,name=starting_at,json=startingAt,proto3" json:"starting_at,omitempty"`
	// Unset: open-ended. Set at creation, or later by EndContract (which may
	// also move it): a switch to another contract is planned by ending this one
	// here and starting the next from here. The last
	// period keeps its monthly end (it is closed once that has passed). The
	// contract is in force from starting_at up to but not at ending_before,
	// which must be after starting_at (at least a millisecond, what finer is
	// dropped, see the top of this file; INVALID_ARGUMENT naming ending_before
	// otherwise): usage dated at ending_before is the next contract's, or
	// NO_ACTIVE_CONTRACT.
	EndingBefore *timestamppb.Timestamp `protobuf:"bytes,5,opt,name=ending_before,json=endingBefore,proto3" json:"ending_before,omitempty"`
	Overrides    []*PriceOverride       `protobuf:"bytes,6,rep,name=overrides,proto3" json:"overrides,omitempty"`
	// The grants GrantCredits made naming this contract, and those naming only
	// its customer (every contract of the customer lists those), in creation
	// order. The grants the server makes (TOP_UP, ROLLOVER) are not listed:
	// GetBalance lists every grant of the customer.
	Grants        []*Grant      `protobuf:"bytes,7,rep,name=grants,proto3" json:"grants,omitempty"`
	OveragePolicy OveragePolicy `protobuf:"varint,8,opt,name=overage_policy,json=overagePolicy,proto3,enum=tariff.v1.OveragePolicy" json:"overage_policy,omitempty"`
	// Decimal string: currency per pricing unit of overage. "1" when unset.
	OveragePrice string       `protobuf:"bytes,9,opt,name=overage_price,json=overagePrice,proto3" json:"overage_price,omitempty"`
	TopUp        *TopUpPolicy `protobuf:"bytes,10,opt,name=top_up,json=topUp,proto3" json:"top_up,omitempty"`
	// ISO 4217 currency of overage_price and paid amounts ("USD" when unset):
	// a code that has a minor unit, the one invoices round amounts due to
	// (invoices.proto minor_unit); anything else ("usd", "US Dollar", "XYZ",
	// or XXX, XTS, XAU, which have no minor unit) is INVALID_ARGUMENT naming
	// currency.
	Currency      string `protobuf:"bytes,11,opt,name=currency,proto3" json:"currency,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *Contract) Reset() {
	*x = Contract{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[7]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *Contract) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*Contract) ProtoMessage() {}

func (x *Contract) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[7]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use Contract.ProtoReflect.Descriptor instead.
func (*Contract) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{7}
}

func (x *Contract) GetId() string {
	if x != nil {
		return x.Id
	}
	return ""
}

func (x *Contract) GetCustomerId() string {
	if x != nil {
		return x.CustomerId
	}
	return ""
}

func (x *Contract) GetRateCardId() string {
	if x != nil {
		return x.RateCardId
	}
	return ""
}

func (x *Contract) GetStartingAt() *timestamppb.Timestamp {
	if x != nil {
		return x.StartingAt
	}
	return nil
}

func (x *Contract) GetEndingBefore() *timestamppb.Timestamp {
	if x != nil {
		return x.EndingBefore
	}
	return nil
}

func (x *Contract) GetOverrides() []*PriceOverride {
	if x != nil {
		return x.Overrides
	}
	return nil
}

func (x *Contract) GetGrants() []*Grant {
	if x != nil {
		return x.Grants
	}
	return nil
}

func (x *Contract) GetOveragePolicy() OveragePolicy {
	if x != nil {
		return x.OveragePolicy
	}
	return OveragePolicy_OVERAGE_POLICY_UNSPECIFIED
}

func (x *Contract) GetOveragePrice() string {
	if x != nil {
		return x.OveragePrice
	}
	return ""
}

func (x *Contract) GetTopUp() *TopUpPolicy {
	if x != nil {
		return x.TopUp
	}
	return nil
}

func (x *Contract) GetCurrency() string {
	if x != nil {
		return x.Currency
	}
	return ""
}

type CreateContractRequest struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	// Optional; when empty, the customer id and the start's UTC date
	// ("acme-20261201"), or its Unix ms when the start is not at midnight
	// (the customer id cut so that the id keeps to 128 characters). When
	// another contract already holds that id (another customer's, or one of
	// this customer's from another start, named so by its request), ".2" is
	// added (".3", ... while taken; the customer id cut shorter to keep 128,
	// the start whole): the key of such a request is the customer and the
	// start, not the id.
	Id         string `protobuf:"bytes,1,opt,name=id,proto3" json:"id,omitempty"`
	CustomerId string `protobuf:"bytes,2,opt,name=customer_id,json=customerId,proto3" json:"customer_id,omitempty"`
	// A customer's contracts price in one pricing unit, that of their grants
	// (Grant.amount), which pay its usage under every contract: a card in
	// another unit than the customer's other contracts' cards is
	// FAILED_PRECONDITION naming that contract and both units, nothing created
	// (10 credits are never read as 10 EUR). (Contracts taken by earlier
	// releases stay as they are.)
	RateCardId string `protobuf:"bytes,3,opt,name=rate_card_id,json=rateCardId,proto3" json:"rate_card_id,omitempty"`
	// The start of the current UTC day when unset. A customer's contracts must
	// not overlap: one that would is FAILED_PRECONDITION naming the contract
	// already in that time, nothing created.
	StartingAt    *timestamppb.Timestamp `protobuf:"bytes,4,opt,name=starting_at,json=startingAt,proto3" json:"starting_at,omitempty"`
	EndingBefore  *timestamppb.Timestamp `protobuf:"bytes,5,opt,name=ending_before,json=endingBefore,proto3" json:"ending_before,omitempty"`
	OveragePolicy OveragePolicy          `protobuf:"varint,6,opt,name=overage_policy,json=overagePolicy,proto3,enum=tariff.v1.OveragePolicy" json:"overage_policy,omitempty"`
	OveragePrice  string                 `protobuf:"bytes,7,opt,name=overage_price,json=overagePrice,proto3" json:"overage_price,omitempty"`
	Currency      string                 `protobuf:"bytes,8,opt,name=currency,proto3" json:"currency,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *CreateContractRequest) Reset() {
	*x = CreateContractRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[8]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *CreateContractRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*CreateContractRequest) ProtoMessage() {}

func (x *CreateContractRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[8]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use CreateContractRequest.ProtoReflect.Descriptor instead.
func (*CreateContractRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{8}
}

func (x *CreateContractRequest) GetId() string {
	if x != nil {
		return x.Id
	}
	return ""
}

func (x *CreateContractRequest) GetCustomerId() string {
	if x != nil {
		return x.CustomerId
	}
	return ""
}

func (x *CreateContractRequest) GetRateCardId() string {
	if x != nil {
		return x.RateCardId
	}
	return ""
}

func (x *CreateContractRequest) GetStartingAt() *timestamppb.Timestamp {
	if x != nil {
		return x.StartingAt
	}
	return nil
}

func (x *CreateContractRequest) GetEndingBefore() *timestamppb.Timestamp {
	if x != nil {
		return x.EndingBefore
	}
	return nil
}

func (x *CreateContractRequest) GetOveragePolicy() OveragePolicy {
	if x != nil {
		return x.OveragePolicy
	}
	return OveragePolicy_OVERAGE_POLICY_UNSPECIFIED
}

func (x *CreateContractRequest) GetOveragePrice() string {
	if x != nil {
		return x.OveragePrice
	}
	return ""
}

func (x *CreateContractRequest) GetCurrency() string {
	if x != nil {
		return x.Currency
	}
	return ""
}

type GetContractRequest struct {
	state         protoimpl.MessageState `protogen:"open.v1"`
	Id            string                 `protobuf:"bytes,1,opt,name=id,proto3" json:"id,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *GetContractRequest) Reset() {
	*x = GetContractRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[9]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *GetContractRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*GetContractRequest) ProtoMessage() {}

func (x *GetContractRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[9]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use GetContractRequest.ProtoReflect.Descriptor instead.
func (*GetContractRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{9}
}

func (x *GetContractRequest) GetId() string {
	if x != nil {
		return x.Id
	}
	return ""
}

type AddOverrideRequest struct {
	state         protoimpl.MessageState `protogen:"open.v1"`
	ContractId    string                 `protobuf:"bytes,1,opt,name=contract_id,json=contractId,proto3" json:"contract_id,omitempty"`
	Override      *PriceOverride         `protobuf:"bytes,2,opt,name=override,proto3" json:"override,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *AddOverrideRequest) Reset() {
	*x = AddOverrideRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[10]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *AddOverrideRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*AddOverrideRequest) ProtoMessage() {}

func (x *AddOverrideRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[10]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use AddOverrideRequest.ProtoReflect.Descriptor instead.
func (*AddOverrideRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{10}
}

func (x *AddOverrideRequest) GetContractId() string {
	if x != nil {
		return x.ContractId
	}
	return ""
}

func (x *AddOverrideRequest) GetOverride() *PriceOverride {
	if x != nil {
		return x.Override
	}
	return nil
}

type Grant struct {
	state      protoimpl.MessageState `protogen:"open.v1"`
	Id         string                 `protobuf:"bytes,1,opt,name=id,proto3" json:"id,omitempty"`
	CustomerId string                 `protobuf:"bytes,2,opt,name=customer_id,json=customerId,proto3" json:"customer_id,omitempty"`
	// The contract it is granted under: starts_at defaults to its start. The
	// credit is the customer's: it also pays usage under the customer's later
	// contracts.
	ContractId string    `protobuf:"bytes,3,opt,name=contract_id,json=contractId,proto3" json:"contract_id,omitempty"`
	Kind       GrantKind `protobuf:"varint,4,opt,name=kind,proto3,enum=tariff.v1.GrantKind" json:"kind,omitempty"`
	// Decimal string, in the rate card's pricing unit. > 0, at most 12 decimal
	// places (the fixed scale is 10^-12 of a unit; more is refused, never rounded).
	Amount string `protobuf:"bytes,5,opt,name=amount,proto3" json:"amount,omitempty"`
	// Decimal string: what the customer paid, in the contract's currency, at
	// most 12 decimal places (revenue is kept at 10^-12 of the currency; more
	// is refused, never rounded). Cost basis per credit = paid_amount / amount.
	// 0 for promotional grants.
	PaidAmount string `protobuf:"bytes,6,opt,name=paid_amount,json=paidAmount,proto3" json:"paid_amount,omitempty"`
	// Lower burns first.
	Priority int32 `protobuf:"varint,7,opt,name=priority,proto3" json:"priority,omitempty"`
	// Products this grant may pay for; empty = all. At most 1,000 entries
	// (GrantCredits refuses more: INVALID_ARGUMENT naming
	// grant.applicable_product_ids).
	ApplicableProductIds []string               `protobuf:"bytes,8,rep,name=applicable_product_ids,json=applicableProductIds,proto3" json:"applicable_product_ids,omitempty"`
	StartsAt             *timestamppb.Timestamp `protobuf:"bytes,9,opt,name=starts_at,json=startsAt,proto3" json:"starts_at,omitempty"`
	// Unset: never expires (ExpireGrant may set it, or move it earlier, later).
	// The grant pays usage dated from starts_at up to but
	// not at expires_at, which must be after starts_at (at least a millisecond,
	// what finer is dropped; INVALID_ARGUMENT naming grant.expires_at
	// otherwise).
	ExpiresAt *timestamppb.Timestamp `protobuf:"bytes,10,opt,name=expires_at,json=expiresAt,proto3" json:"expires_at,omitempty"`
	// Decimal string in [0, 1]: share of the remainder that rolls over. Such a
	// grant lasts until the end of the billing period in which it starts (one
	// starting exactly at a period's end starts the next period): usage
	// dated at or after that end is never paid from it, even if it arrives
	// before the rollover is done. (Grants created before this rule kept paying
	// such usage until the rollover, and still do.) A grant whose expires_at is
	// before that end does not roll over: it expires, and what it holds then is
	// breakage. One whose expires_at is exactly that end (its credits usable up
	// to, not at, it, as the period's) rolls over there like one with no expiry
	// or a later one. (Grants created before that rule simply expired at such a
	// tie, nothing rolling over, and still do.) At that end the share (rounded
	// down to 10^-12) moves into a ROLLOVER grant with the same cost basis,
	// usable from that end (usage dated exactly there draws on it) until the end
	// of the next period, and the rest is breakage. Its
	// start must lie in a contract of its customer (a billing period to end):
	// one starting when none is in force (before the first, between two, after
	// the last, or now by default with no contract in force) is
	// FAILED_PRECONDITION, granting nothing; name the contract to start it with
	// it. (Such grants made before this rule never roll over, and still do not.)
	RolloverFraction string                 `protobuf:"bytes,11,opt,name=rollover_fraction,json=rolloverFraction,proto3" json:"rollover_fraction,omitempty"`
	CreatedAt        *timestamppb.Timestamp `protobuf:"bytes,12,opt,name=created_at,json=createdAt,proto3" json:"created_at,omitempty"`
	unknownFields    protoimpl.UnknownFields
	sizeCache        protoimpl.SizeCache
}

func (x *Grant) Reset() {
	*x = Grant{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[11]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *Grant) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*Grant) ProtoMessage() {}

func (x *Grant) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[11]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use Grant.ProtoReflect.Descriptor instead.
func (*Grant) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{11}
}

func (x *Grant) GetId() string {
	if x != nil {
		return x.Id
	}
	return ""
}

func (x *Grant) GetCustomerId() string {
	if x != nil {
		return x.CustomerId
	}
	return ""
}

func (x *Grant) GetContractId() string {
	if x != nil {
		return x.ContractId
	}
	return ""
}

func (x *Grant) GetKind() GrantKind {
	if x != nil {
		return x.Kind
	}
	return GrantKind_GRANT_KIND_UNSPECIFIED
}

func (x *Grant) GetAmount() string {
	if x != nil {
		return x.Amount
	}
	return ""
}

func (x *Grant) GetPaidAmount() string {
	if x != nil {
		return x.PaidAmount
	}
	return ""
}

func (x *Grant) GetPriority() int32 {
	if x != nil {
		return x.Priority
	}
	return 0
}

func (x *Grant) GetApplicableProductIds() []string {
	if x != nil {
		return x.ApplicableProductIds
	}
	return nil
}

func (x *Grant) GetStartsAt() *timestamppb.Timestamp {
	if x != nil {
		return x.StartsAt
	}
	return nil
}

func (x *Grant) GetExpiresAt() *timestamppb.Timestamp {
	if x != nil {
		return x.ExpiresAt
	}
	return nil
}

func (x *Grant) GetRolloverFraction() string {
	if x != nil {
		return x.RolloverFraction
	}
	return ""
}

func (x *Grant) GetCreatedAt() *timestamppb.Timestamp {
	if x != nil {
		return x.CreatedAt
	}
	return nil
}

type GrantCreditsRequest struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	// The grant to create. grant.id, or request_id, is required: it is the key
	// that makes a retried call grant once. customer_id and contract_id: at
	// least one. starts_at defaults to the start of the contract (given, or in
	// force now), so it also pays for that contract's late usage; to now when no
	// contract is in force. An id the server gave a grant it made for the
	// customer (top-up-<period start ms>-<n>, rollover-<grant>-<period end ms>)
	// is ALREADY_EXISTS, as any grant id taken. Such an id is not reserved: a
	// grant may take it before the server makes its grant, which then gets the
	// id with a '+' added (as many as needed), so that no two grants of a
	// customer share an id. The ids GrantCredits gives are server-wide; those
	// the server makes are each customer's own (two customers' first top-ups
	// of a period share an id), so one another customer's grant holds is free.
	Grant *Grant `protobuf:"bytes,1,opt,name=grant,proto3" json:"grant,omitempty"`
	// Idempotency key, used as the grant's id when grant.id is empty.
	RequestId     string `protobuf:"bytes,2,opt,name=request_id,json=requestId,proto3" json:"request_id,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *GrantCreditsRequest) Reset() {
	*x = GrantCreditsRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[12]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *GrantCreditsRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*GrantCreditsRequest) ProtoMessage() {}

func (x *GrantCreditsRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[12]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use GrantCreditsRequest.ProtoReflect.Descriptor instead.
func (*GrantCreditsRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{12}
}

func (x *GrantCreditsRequest) GetGrant() *Grant {
	if x != nil {
		return x.Grant
	}
	return nil
}

func (x *GrantCreditsRequest) GetRequestId() string {
	if x != nil {
		return x.RequestId
	}
	return ""
}

type SetTopUpPolicyRequest struct {
	state      protoimpl.MessageState `protogen:"open.v1"`
	ContractId string                 `protobuf:"bytes,1,opt,name=contract_id,json=contractId,proto3" json:"contract_id,omitempty"`
	// Unset: clears the customer's policy. Set, it is the whole policy: one
	// without threshold (an empty TopUpPolicy, or one with only a price) is
	// INVALID_ARGUMENT naming top_up.threshold, never a clearing.
	TopUp         *TopUpPolicy `protobuf:"bytes,2,opt,name=top_up,json=topUp,proto3" json:"top_up,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *SetTopUpPolicyRequest) Reset() {
	*x = SetTopUpPolicyRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[13]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *SetTopUpPolicyRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*SetTopUpPolicyRequest) ProtoMessage() {}

func (x *SetTopUpPolicyRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[13]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use SetTopUpPolicyRequest.ProtoReflect.Descriptor instead.
func (*SetTopUpPolicyRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{13}
}

func (x *SetTopUpPolicyRequest) GetContractId() string {
	if x != nil {
		return x.ContractId
	}
	return ""
}

func (x *SetTopUpPolicyRequest) GetTopUp() *TopUpPolicy {
	if x != nil {
		return x.TopUp
	}
	return nil
}

type EndContractRequest struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	// Required; the contract to end (see the top of this file).
	ContractId string `protobuf:"bytes,1,opt,name=contract_id,json=contractId,proto3" json:"contract_id,omitempty"`
	// Required: the contract's new end, at or after the request's time, after
	// its starting_at (see EndContract).
	EndingBefore  *timestamppb.Timestamp `protobuf:"bytes,2,opt,name=ending_before,json=endingBefore,proto3" json:"ending_before,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *EndContractRequest) Reset() {
	*x = EndContractRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[14]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *EndContractRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*EndContractRequest) ProtoMessage() {}

func (x *EndContractRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[14]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use EndContractRequest.ProtoReflect.Descriptor instead.
func (*EndContractRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{14}
}

func (x *EndContractRequest) GetContractId() string {
	if x != nil {
		return x.ContractId
	}
	return ""
}

func (x *EndContractRequest) GetEndingBefore() *timestamppb.Timestamp {
	if x != nil {
		return x.EndingBefore
	}
	return nil
}

type ExpireGrantRequest struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	// Required; the customer whose grant it is (the ids of the grants the
	// server makes are the customer's).
	CustomerId string `protobuf:"bytes,1,opt,name=customer_id,json=customerId,proto3" json:"customer_id,omitempty"`
	// Required; the grant to end early.
	GrantId string `protobuf:"bytes,2,opt,name=grant_id,json=grantId,proto3" json:"grant_id,omitempty"`
	// Required: the grant's new expiry, at or after the request's time, at or
	// before its current expires_at, after its starts_at (see ExpireGrant).
	ExpiresAt     *timestamppb.Timestamp `protobuf:"bytes,3,opt,name=expires_at,json=expiresAt,proto3" json:"expires_at,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *ExpireGrantRequest) Reset() {
	*x = ExpireGrantRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[15]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *ExpireGrantRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*ExpireGrantRequest) ProtoMessage() {}

func (x *ExpireGrantRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[15]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use ExpireGrantRequest.ProtoReflect.Descriptor instead.
func (*ExpireGrantRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{15}
}

func (x *ExpireGrantRequest) GetCustomerId() string {
	if x != nil {
		return x.CustomerId
	}
	return ""
}

func (x *ExpireGrantRequest) GetGrantId() string {
	if x != nil {
		return x.GrantId
	}
	return ""
}

func (x *ExpireGrantRequest) GetExpiresAt() *timestamppb.Timestamp {
	if x != nil {
		return x.ExpiresAt
	}
	return nil
}

type EndOverrideRequest struct {
	state protoimpl.MessageState `protogen:"open.v1"`
	// Required; the contract holding the override (see the top of this file).
	ContractId string `protobuf:"bytes,1,opt,name=contract_id,json=contractId,proto3" json:"contract_id,omitempty"`
	// Required; the override to end (PriceOverride.id, as the contract answers
	// it: the one AddOverride gave when the request left it empty).
	OverrideId string `protobuf:"bytes,2,opt,name=override_id,json=overrideId,proto3" json:"override_id,omitempty"`
	// Required: the override's new end, at or after the request's time, at or
	// before its current ending_before, after its starting_at (see
	// EndOverride).
	EndingBefore  *timestamppb.Timestamp `protobuf:"bytes,3,opt,name=ending_before,json=endingBefore,proto3" json:"ending_before,omitempty"`
	unknownFields protoimpl.UnknownFields
	sizeCache     protoimpl.SizeCache
}

func (x *EndOverrideRequest) Reset() {
	*x = EndOverrideRequest{}
	mi := &file_tariff_v1_contracts_proto_msgTypes[16]
	ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
	ms.StoreMessageInfo(mi)
}

func (x *EndOverrideRequest) String() string {
	return protoimpl.X.MessageStringOf(x)
}

func (*EndOverrideRequest) ProtoMessage() {}

func (x *EndOverrideRequest) ProtoReflect() protoreflect.Message {
	mi := &file_tariff_v1_contracts_proto_msgTypes[16]
	if x != nil {
		ms := protoimpl.X.MessageStateOf(protoimpl.Pointer(x))
		if ms.LoadMessageInfo() == nil {
			ms.StoreMessageInfo(mi)
		}
		return ms
	}
	return mi.MessageOf(x)
}

// Deprecated: Use EndOverrideRequest.ProtoReflect.Descriptor instead.
func (*EndOverrideRequest) Descriptor() ([]byte, []int) {
	return file_tariff_v1_contracts_proto_rawDescGZIP(), []int{16}
}

func (x *EndOverrideRequest) GetContractId() string {
	if x != nil {
		return x.ContractId
	}
	return ""
}

func (x *EndOverrideRequest) GetOverrideId() string {
	if x != nil {
		return x.OverrideId
	}
	return ""
}

func (x *EndOverrideRequest) GetEndingBefore() *timestamppb.Timestamp {
	if x != nil {
		return x.EndingBefore
	}
	return nil
}

var File_tariff_v1_contracts_proto protoreflect.FileDescriptor

const file_tariff_v1_contracts_proto_rawDesc = "" +
	"\n" +
	"\x19tariff/v1/contracts.proto\x12\ttariff.v1\x1a\x1fgoogle/protobuf/timestamp.proto\"\xed\x01\n" +
	"\bCustomer\x12\x0e\n" +
	"\x02id\x18\x01 \x01(\tR\x02id\x12\x12\n" +
	"\x04name\x18\x02 \x01(\tR\x04name\x12C\n" +
	"\n" +
	"attributes\x18\x03 \x03(\v2#.tariff.v1.Customer.AttributesEntryR\n" +
	"attributes\x129\n" +
	"\n" +
	"created_at\x18\x04 \x01(\v2\x1a.google.protobuf.TimestampR\tcreatedAt\x1a=\n" +
	"\x0fAttributesEntry\x12\x10\n" +
	"\x03key\x18\x01 \x01(\tR\x03key\x12\x14\n" +
	"\x05value\x18\x02 \x01(\tR\x05value:\x028\x01\"\xcc\x01\n" +
	"\x15CreateCustomerRequest\x12\x0e\n" +
	"\x02id\x18\x01 \x01(\tR\x02id\x12\x12\n" +
	"\x04name\x18\x02 \x01(\tR\x04name\x12P\n" +
	"\n" +
	"attributes\x18\x03 \x03(\v20.tariff.v1.CreateCustomerRequest.AttributesEntryR\n" +
	"attributes\x1a=\n" +
	"\x0fAttributesEntry\x12\x10\n" +
	"\x03key\x18\x01 \x01(\tR\x03key\x12\x14\n" +
	"\x05value\x18\x02 \x01(\tR\x05value:\x028\x01\"$\n" +
	"\x12GetCustomerRequest\x12\x0e\n" +
	"\x02id\x18\x01 \x01(\tR\x02id\"R\n" +
	"\x14ListCustomersRequest\x12\x1b\n" +
	"\tpage_size\x18\x01 \x01(\rR\bpageSize\x12\x1d\n" +
	"\n" +
	"page_token\x18\x02 \x01(\tR\tpageToken\"r\n" +
	"\x15ListCustomersResponse\x121\n" +
	"\tcustomers\x18\x01 \x03(\v2\x13.tariff.v1.CustomerR\tcustomers\x12&\n" +
	"\x0fnext_page_token\x18\x02 \x01(\tR\rnextPageToken\"\xf9\x02\n" +
	"\rPriceOverride\x12\x0e\n" +
	"\x02id\x18\x01 \x01(\tR\x02id\x12\x1d\n" +
	"\n" +
	"product_id\x18\x02 \x01(\tR\tproductId\x129\n" +
	"\x05match\x18\x03 \x03(\v2#.tariff.v1.PriceOverride.MatchEntryR\x05match\x12 \n" +
	"\n" +
	"multiplier\x18\x04 \x01(\tH\x00R\n" +
	"multiplier\x12\x16\n" +
	"\x05price\x18\x05 \x01(\tH\x00R\x05price\x12;\n" +
	"\vstarting_at\x18\x06 \x01(\v2\x1a.google.protobuf.TimestampR\n" +
	"startingAt\x12?\n" +
	"\rending_before\x18\a \x01(\v2\x1a.google.protobuf.TimestampR\fendingBefore\x1a8\n" +
	"\n" +
	"MatchEntry\x12\x10\n" +
	"\x03key\x18\x01 \x01(\tR\x03key\x12\x14\n" +
	"\x05value\x18\x02 \x01(\tR\x05value:\x028\x01B\f\n" +
	"\n" +
	"adjustment\"\xb8\x01\n" +
	"\vTopUpPolicy\x12\x1c\n" +
	"\tthreshold\x18\x01 \x01(\tR\tthreshold\x12\x1f\n" +
	"\vrecharge_to\x18\x02 \x01(\tR\n" +
	"rechargeTo\x12(\n" +
	"\x10price_per_credit\x18\x03 \x01(\tR\x0epricePerCredit\x12$\n" +
	"\x0emax_per_period\x18\x04 \x01(\rR\fmaxPerPeriod\x12\x1a\n" +
	"\bcurrency\x18\x05 \x01(\tR\bcurrency\"\xee\x03\n" +
	"\bContract\x12\x0e\n" +
	"\x02id\x18\x01 \x01(\tR\x02id\x12\x1f\n" +
	"\vcustomer_id\x18\x02 \x01(\tR\n" +
	"customerId\x12 \n" +
	"\frate_card_id\x18\x03 \x01(\tR\n" +
	"rateCardId\x12;\n" +
	"\vstarting_at\x18\x04 \x01(\v2\x1a.google.protobuf.TimestampR\n" +
	"startingAt\x12?\n" +
	"\rending_before\x18\x05 \x01(\v2\x1a.google.protobuf.TimestampR\fendingBefore\x126\n" +
	"\toverrides\x18\x06 \x03(\v2\x18.tariff.v1.PriceOverrideR\toverrides\x12(\n" +
	"\x06grants\x18\a \x03(\v2\x10.tariff.v1.GrantR\x06grants\x12?\n" +
	"\x0eoverage_policy\x18\b \x01(\x0e2\x18.tariff.v1.OveragePolicyR\roveragePolicy\x12#\n" +
	"\roverage_price\x18\t \x01(\tR\foveragePrice\x12-\n" +
	"\x06top_up\x18\n" +
	" \x01(\v2\x16.tariff.v1.TopUpPolicyR\x05topUp\x12\x1a\n" +
	"\bcurrency\x18\v \x01(\tR\bcurrency\"\xea\x02\n" +
	"\x15CreateContractRequest\x12\x0e\n" +
	"\x02id\x18\x01 \x01(\tR\x02id\x12\x1f\n" +
	"\vcustomer_id\x18\x02 \x01(\tR\n" +
	"customerId\x12 \n" +
	"\frate_card_id\x18\x03 \x01(\tR\n" +
	"rateCardId\x12;\n" +
	"\vstarting_at\x18\x04 \x01(\v2\x1a.google.protobuf.TimestampR\n" +
	"startingAt\x12?\n" +
	"\rending_before\x18\x05 \x01(\v2\x1a.google.protobuf.TimestampR\fendingBefore\x12?\n" +
	"\x0eoverage_policy\x18\x06 \x01(\x0e2\x18.tariff.v1.OveragePolicyR\roveragePolicy\x12#\n" +
	"\roverage_price\x18\a \x01(\tR\foveragePrice\x12\x1a\n" +
	"\bcurrency\x18\b \x01(\tR\bcurrency\"$\n" +
	"\x12GetContractRequest\x12\x0e\n" +
	"\x02id\x18\x01 \x01(\tR\x02id\"k\n" +
	"\x12AddOverrideRequest\x12\x1f\n" +
	"\vcontract_id\x18\x01 \x01(\tR\n" +
	"contractId\x124\n" +
	"\boverride\x18\x02 \x01(\v2\x18.tariff.v1.PriceOverrideR\boverride\"\xea\x03\n" +
	"\x05Grant\x12\x0e\n" +
	"\x02id\x18\x01 \x01(\tR\x02id\x12\x1f\n" +
	"\vcustomer_id\x18\x02 \x01(\tR\n" +
	"customerId\x12\x1f\n" +
	"\vcontract_id\x18\x03 \x01(\tR\n" +
	"contractId\x12(\n" +
	"\x04kind\x18\x04 \x01(\x0e2\x14.tariff.v1.GrantKindR\x04kind\x12\x16\n" +
	"\x06amount\x18\x05 \x01(\tR\x06amount\x12\x1f\n" +
	"\vpaid_amount\x18\x06 \x01(\tR\n" +
	"paidAmount\x12\x1a\n" +
	"\bpriority\x18\a \x01(\x05R\bpriority\x124\n" +
	"\x16applicable_product_ids\x18\b \x03(\tR\x14applicableProductIds\x127\n" +
	"\tstarts_at\x18\t \x01(\v2\x1a.google.protobuf.TimestampR\bstartsAt\x129\n" +
	"\n" +
	"expires_at\x18\n" +
	" \x01(\v2\x1a.google.protobuf.TimestampR\texpiresAt\x12+\n" +
	"\x11rollover_fraction\x18\v \x01(\tR\x10rolloverFraction\x129\n" +
	"\n" +
	"created_at\x18\f \x01(\v2\x1a.google.protobuf.TimestampR\tcreatedAt\"\\\n" +
	"\x13GrantCreditsRequest\x12&\n" +
	"\x05grant\x18\x01 \x01(\v2\x10.tariff.v1.GrantR\x05grant\x12\x1d\n" +
	"\n" +
	"request_id\x18\x02 \x01(\tR\trequestId\"g\n" +
	"\x15SetTopUpPolicyRequest\x12\x1f\n" +
	"\vcontract_id\x18\x01 \x01(\tR\n" +
	"contractId\x12-\n" +
	"\x06top_up\x18\x02 \x01(\v2\x16.tariff.v1.TopUpPolicyR\x05topUp\"v\n" +
	"\x12EndContractRequest\x12\x1f\n" +
	"\vcontract_id\x18\x01 \x01(\tR\n" +
	"contractId\x12?\n" +
	"\rending_before\x18\x02 \x01(\v2\x1a.google.protobuf.TimestampR\fendingBefore\"\x8b\x01\n" +
	"\x12ExpireGrantRequest\x12\x1f\n" +
	"\vcustomer_id\x18\x01 \x01(\tR\n" +
	"customerId\x12\x19\n" +
	"\bgrant_id\x18\x02 \x01(\tR\agrantId\x129\n" +
	"\n" +
	"expires_at\x18\x03 \x01(\v2\x1a.google.protobuf.TimestampR\texpiresAt\"\x97\x01\n" +
	"\x12EndOverrideRequest\x12\x1f\n" +
	"\vcontract_id\x18\x01 \x01(\tR\n" +
	"contractId\x12\x1f\n" +
	"\voverride_id\x18\x02 \x01(\tR\n" +
	"overrideId\x12?\n" +
	"\rending_before\x18\x03 \x01(\v2\x1a.google.protobuf.TimestampR\fendingBefore*E\n" +
	"\rOveragePolicy\x12\x1e\n" +
	"\x1aOVERAGE_POLICY_UNSPECIFIED\x10\x00\x12\t\n" +
	"\x05ALLOW\x10\x01\x12\t\n" +
	"\x05BLOCK\x10\x02*_\n" +
	"\tGrantKind\x12\x1a\n" +
	"\x16GRANT_KIND_UNSPECIFIED\x10\x00\x12\v\n" +
	"\aPREPAID\x10\x01\x12\x0f\n" +
	"\vPROMOTIONAL\x10\x02\x12\f\n" +
	"\bROLLOVER\x10\x03\x12\n" +
	"\n" +
	"\x06TOP_UP\x10\x042\x91\x06\n" +
	"\x0fContractService\x12G\n" +
	"\x0eCreateCustomer\x12 .tariff.v1.CreateCustomerRequest\x1a\x13.tariff.v1.Customer\x12A\n" +
	"\vGetCustomer\x12\x1d.tariff.v1.GetCustomerRequest\x1a\x13.tariff.v1.Customer\x12R\n" +
	"\rListCustomers\x12\x1f.tariff.v1.ListCustomersRequest\x1a .tariff.v1.ListCustomersResponse\x12G\n" +
	"\x0eCreateContract\x12 .tariff.v1.CreateContractRequest\x1a\x13.tariff.v1.Contract\x12A\n" +
	"\vGetContract\x12\x1d.tariff.v1.GetContractRequest\x1a\x13.tariff.v1.Contract\x12A\n" +
	"\vAddOverride\x12\x1d.tariff.v1.AddOverrideRequest\x1a\x13.tariff.v1.Contract\x12@\n" +
	"\fGrantCredits\x12\x1e.tariff.v1.GrantCreditsRequest\x1a\x10.tariff.v1.Grant\x12G\n" +
	"\x0eSetTopUpPolicy\x12 .tariff.v1.SetTopUpPolicyRequest\x1a\x13.tariff.v1.Contract\x12A\n" +
	"\vEndContract\x12\x1d.tariff.v1.EndContractRequest\x1a\x13.tariff.v1.Contract\x12>\n" +
	"\vExpireGrant\x12\x1d.tariff.v1.ExpireGrantRequest\x1a\x10.tariff.v1.Grant\x12A\n" +
	"\vEndOverride\x12\x1d.tariff.v1.EndOverrideRequest\x1a\x13.tariff.v1.ContractB\xa0\x01\n" +
	"\rcom.tariff.v1B\x0eContractsProtoP\x01Z:github.com/tariff/tariff/clients/go/gen/tariff/v1;tariffv1\xa2\x02\x03TXX\xaa\x02\tTariff.V1\xca\x02\tTariff\\V1\xe2\x02\x15Tariff\\V1\\GPBMetadata\xea\x02\n" +
	"Tariff::V1b\x06proto3"

var (
	file_tariff_v1_contracts_proto_rawDescOnce sync.Once
	file_tariff_v1_contracts_proto_rawDescData []byte
)

func file_tariff_v1_contracts_proto_rawDescGZIP() []byte {
	file_tariff_v1_contracts_proto_rawDescOnce.Do(func() {
		file_tariff_v1_contracts_proto_rawDescData = protoimpl.X.CompressGZIP(unsafe.Slice(unsafe.StringData(file_tariff_v1_contracts_proto_rawDesc), len(file_tariff_v1_contracts_proto_rawDesc)))
	})
	return file_tariff_v1_contracts_proto_rawDescData
}

var file_tariff_v1_contracts_proto_enumTypes = make([]protoimpl.EnumInfo, 2)
var file_tariff_v1_contracts_proto_msgTypes = make([]protoimpl.MessageInfo, 20)
var file_tariff_v1_contracts_proto_goTypes = []any{
	(OveragePolicy)(0),            // 0: tariff.v1.OveragePolicy
	(GrantKind)(0),                // 1: tariff.v1.GrantKind
	(*Customer)(nil),              // 2: tariff.v1.Customer
	(*CreateCustomerRequest)(nil), // 3: tariff.v1.CreateCustomerRequest
	(*GetCustomerRequest)(nil),    // 4: tariff.v1.GetCustomerRequest
	(*ListCustomersRequest)(nil),  // 5: tariff.v1.ListCustomersRequest
	(*ListCustomersResponse)(nil), // 6: tariff.v1.ListCustomersResponse
	(*PriceOverride)(nil),         // 7: tariff.v1.PriceOverride
	(*TopUpPolicy)(nil),           // 8: tariff.v1.TopUpPolicy
	(*Contract)(nil),              // 9: tariff.v1.Contract
	(*CreateContractRequest)(nil), // 10: tariff.v1.CreateContractRequest
	(*GetContractRequest)(nil),    // 11: tariff.v1.GetContractRequest
	(*AddOverrideRequest)(nil),    // 12: tariff.v1.AddOverrideRequest
	(*Grant)(nil),                 // 13: tariff.v1.Grant
	(*GrantCreditsRequest)(nil),   // 14: tariff.v1.GrantCreditsRequest
	(*SetTopUpPolicyRequest)(nil), // 15: tariff.v1.SetTopUpPolicyRequest
	(*EndContractRequest)(nil),    // 16: tariff.v1.EndContractRequest
	(*ExpireGrantRequest)(nil),    // 17: tariff.v1.ExpireGrantRequest
	(*EndOverrideRequest)(nil),    // 18: tariff.v1.EndOverrideRequest
	nil,                           // 19: tariff.v1.Customer.AttributesEntry
	nil,                           // 20: tariff.v1.CreateCustomerRequest.AttributesEntry
	nil,                           // 21: tariff.v1.PriceOverride.MatchEntry
	(*timestamppb.Timestamp)(nil), // 22: google.protobuf.Timestamp
}
var file_tariff_v1_contracts_proto_depIdxs = []int32{
	19, // 0: tariff.v1.Customer.attributes:type_name -> tariff.v1.Customer.AttributesEntry
	22, // 1: tariff.v1.Customer.created_at:type_name -> google.protobuf.Timestamp
	20, // 2: tariff.v1.CreateCustomerRequest.attributes:type_name -> tariff.v1.CreateCustomerRequest.AttributesEntry
	2,  // 3: tariff.v1.ListCustomersResponse.customers:type_name -> tariff.v1.Customer
	21, // 4: tariff.v1.PriceOverride.match:type_name -> tariff.v1.PriceOverride.MatchEntry
	22, // 5: tariff.v1.PriceOverride.starting_at:type_name -> google.protobuf.Timestamp
	22, // 6: tariff.v1.PriceOverride.ending_before:type_name -> google.protobuf.Timestamp
	22, // 7: tariff.v1.Contract.starting_at:type_name -> google.protobuf.Timestamp
	22, // 8: tariff.v1.Contract.ending_before:type_name -> google.protobuf.Timestamp
	7,  // 9: tariff.v1.Contract.overrides:type_name -> tariff.v1.PriceOverride
	13, // 10: tariff.v1.Contract.grants:type_name -> tariff.v1.Grant
	0,  // 11: tariff.v1.Contract.overage_policy:type_name -> tariff.v1.OveragePolicy
	8,  // 12: tariff.v1.Contract.top_up:type_name -> tariff.v1.TopUpPolicy
	22, // 13: tariff.v1.CreateContractRequest.starting_at:type_name -> google.protobuf.Timestamp
	22, // 14: tariff.v1.CreateContractRequest.ending_before:type_name -> google.protobuf.Timestamp
	0,  // 15: tariff.v1.CreateContractRequest.overage_policy:type_name -> tariff.v1.OveragePolicy
	7,  // 16: tariff.v1.AddOverrideRequest.override:type_name -> tariff.v1.PriceOverride
	1,  // 17: tariff.v1.Grant.kind:type_name -> tariff.v1.GrantKind
	22, // 18: tariff.v1.Grant.starts_at:type_name -> google.protobuf.Timestamp
	22, // 19: tariff.v1.Grant.expires_at:type_name -> google.protobuf.Timestamp
	22, // 20: tariff.v1.Grant.created_at:type_name -> google.protobuf.Timestamp
	13, // 21: tariff.v1.GrantCreditsRequest.grant:type_name -> tariff.v1.Grant
	8,  // 22: tariff.v1.SetTopUpPolicyRequest.top_up:type_name -> tariff.v1.TopUpPolicy
	22, // 23: tariff.v1.EndContractRequest.ending_before:type_name -> google.protobuf.Timestamp
	22, // 24: tariff.v1.ExpireGrantRequest.expires_at:type_name -> google.protobuf.Timestamp
	22, // 25: tariff.v1.EndOverrideRequest.ending_before:type_name -> google.protobuf.Timestamp
	3,  // 26: tariff.v1.ContractService.CreateCustomer:input_type -> tariff.v1.CreateCustomerRequest
	4,  // 27: tariff.v1.ContractService.GetCustomer:input_type -> tariff.v1.GetCustomerRequest
	5,  // 28: tariff.v1.ContractService.ListCustomers:input_type -> tariff.v1.ListCustomersRequest
	10, // 29: tariff.v1.ContractService.CreateContract:input_type -> tariff.v1.CreateContractRequest
	11, // 30: tariff.v1.ContractService.GetContract:input_type -> tariff.v1.GetContractRequest
	12, // 31: tariff.v1.ContractService.AddOverride:input_type -> tariff.v1.AddOverrideRequest
	14, // 32: tariff.v1.ContractService.GrantCredits:input_type -> tariff.v1.GrantCreditsRequest
	15, // 33: tariff.v1.ContractService.SetTopUpPolicy:input_type -> tariff.v1.SetTopUpPolicyRequest
	16, // 34: tariff.v1.ContractService.EndContract:input_type -> tariff.v1.EndContractRequest
	17, // 35: tariff.v1.ContractService.ExpireGrant:input_type -> tariff.v1.ExpireGrantRequest
	18, // 36: tariff.v1.ContractService.EndOverride:input_type -> tariff.v1.EndOverrideRequest
	2,  // 37: tariff.v1.ContractService.CreateCustomer:output_type -> tariff.v1.Customer
	2,  // 38: tariff.v1.ContractService.GetCustomer:output_type -> tariff.v1.Customer
	6,  // 39: tariff.v1.ContractService.ListCustomers:output_type -> tariff.v1.ListCustomersResponse
	9,  // 40: tariff.v1.ContractService.CreateContract:output_type -> tariff.v1.Contract
	9,  // 41: tariff.v1.ContractService.GetContract:output_type -> tariff.v1.Contract
	9,  // 42: tariff.v1.ContractService.AddOverride:output_type -> tariff.v1.Contract
	13, // 43: tariff.v1.ContractService.GrantCredits:output_type -> tariff.v1.Grant
	9,  // 44: tariff.v1.ContractService.SetTopUpPolicy:output_type -> tariff.v1.Contract
	9,  // 45: tariff.v1.ContractService.EndContract:output_type -> tariff.v1.Contract
	13, // 46: tariff.v1.ContractService.ExpireGrant:output_type -> tariff.v1.Grant
	9,  // 47: tariff.v1.ContractService.EndOverride:output_type -> tariff.v1.Contract
	37, // [37:48] is the sub-list for method output_type
	26, // [26:37] is the sub-list for method input_type
	26, // [26:26] is the sub-list for extension type_name
	26, // [26:26] is the sub-list for extension extendee
	0,  // [0:26] is the sub-list for field type_name
}

func init() { file_tariff_v1_contracts_proto_init() }
func file_tariff_v1_contracts_proto_init() {
	if File_tariff_v1_contracts_proto != nil {
		return
	}
	file_tariff_v1_contracts_proto_msgTypes[5].OneofWrappers = []any{
		(*PriceOverride_Multiplier)(nil),
		(*PriceOverride_Price)(nil),
	}
	type x struct{}
	out := protoimpl.TypeBuilder{
		File: protoimpl.DescBuilder{
			GoPackagePath: reflect.TypeOf(x{}).PkgPath(),
			RawDescriptor: unsafe.Slice(unsafe.StringData(file_tariff_v1_contracts_proto_rawDesc), len(file_tariff_v1_contracts_proto_rawDesc)),
			NumEnums:      2,
			NumMessages:   20,
			NumExtensions: 0,
			NumServices:   1,
		},
		GoTypes:           file_tariff_v1_contracts_proto_goTypes,
		DependencyIndexes: file_tariff_v1_contracts_proto_depIdxs,
		EnumInfos:         file_tariff_v1_contracts_proto_enumTypes,
		MessageInfos:      file_tariff_v1_contracts_proto_msgTypes,
	}.Build()
	File_tariff_v1_contracts_proto = out.File
	file_tariff_v1_contracts_proto_goTypes = nil
	file_tariff_v1_contracts_proto_depIdxs = nil
}
