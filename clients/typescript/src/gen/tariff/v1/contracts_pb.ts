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

// @generated by protoc-gen-es v2.13.0 with parameter "target=ts,import_extension=js"
// @generated from file tariff/v1/contracts.proto (package tariff.v1, syntax proto3)
/* eslint-disable */

import type { GenEnum, GenFile, GenMessage, GenService } from "@bufbuild/protobuf/codegenv2";
import { enumDesc, fileDesc, messageDesc, serviceDesc } from "@bufbuild/protobuf/codegenv2";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { file_google_protobuf_timestamp } from "@bufbuild/protobuf/wkt";
import type { Message } from "@bufbuild/protobuf";

/**
 * Describes the file tariff/v1/contracts.proto.
 */
export const file_tariff_v1_contracts: GenFile = /*@__PURE__*/
  fileDesc("Chl0YXJpZmYvdjEvY29udHJhY3RzLnByb3RvEgl0YXJpZmYudjEiwAEKCEN1c3RvbWVyEgoKAmlkGAEgASgJEgwKBG5hbWUYAiABKAkSNwoKYXR0cmlidXRlcxgDIAMoCzIjLnRhcmlmZi52MS5DdXN0b21lci5BdHRyaWJ1dGVzRW50cnkSLgoKY3JlYXRlZF9hdBgEIAEoCzIaLmdvb2dsZS5wcm90b2J1Zi5UaW1lc3RhbXAaMQoPQXR0cmlidXRlc0VudHJ5EgsKA2tleRgBIAEoCRINCgV2YWx1ZRgCIAEoCToCOAEiqgEKFUNyZWF0ZUN1c3RvbWVyUmVxdWVzdBIKCgJpZBgBIAEoCRIMCgRuYW1lGAIgASgJEkQKCmF0dHJpYnV0ZXMYAyADKAsyMC50YXJpZmYudjEuQ3JlYXRlQ3VzdG9tZXJSZXF1ZXN0LkF0dHJpYnV0ZXNFbnRyeRoxCg9BdHRyaWJ1dGVzRW50cnkSCwoDa2V5GAEgASgJEg0KBXZhbHVlGAIgASgJOgI4ASIgChJHZXRDdXN0b21lclJlcXVlc3QSCgoCaWQYASABKAkiPQoUTGlzdEN1c3RvbWVyc1JlcXVlc3QSEQoJcGFnZV9zaXplGAEgASgNEhIKCnBhZ2VfdG9rZW4YAiABKAkiWAoVTGlzdEN1c3RvbWVyc1Jlc3BvbnNlEiYKCWN1c3RvbWVycxgBIAMoCzITLnRhcmlmZi52MS5DdXN0b21lchIXCg9uZXh0X3BhZ2VfdG9rZW4YAiABKAkiqgIKDVByaWNlT3ZlcnJpZGUSCgoCaWQYASABKAkSEgoKcHJvZHVjdF9pZBgCIAEoCRIyCgVtYXRjaBgDIAMoCzIjLnRhcmlmZi52MS5QcmljZU92ZXJyaWRlLk1hdGNoRW50cnkSFAoKbXVsdGlwbGllchgEIAEoCUgAEg8KBXByaWNlGAUgASgJSAASLwoLc3RhcnRpbmdfYXQYBiABKAsyGi5nb29nbGUucHJvdG9idWYuVGltZXN0YW1wEjEKDWVuZGluZ19iZWZvcmUYByABKAsyGi5nb29nbGUucHJvdG9idWYuVGltZXN0YW1wGiwKCk1hdGNoRW50cnkSCwoDa2V5GAEgASgJEg0KBXZhbHVlGAIgASgJOgI4AUIMCgphZGp1c3RtZW50InkKC1RvcFVwUG9saWN5EhEKCXRocmVzaG9sZBgBIAEoCRITCgtyZWNoYXJnZV90bxgCIAEoCRIYChBwcmljZV9wZXJfY3JlZGl0GAMgASgJEhYKDm1heF9wZXJfcGVyaW9kGAQgASgNEhAKCGN1cnJlbmN5GAUgASgJIvcCCghDb250cmFjdBIKCgJpZBgBIAEoCRITCgtjdXN0b21lcl9pZBgCIAEoCRIUCgxyYXRlX2NhcmRfaWQYAyABKAkSLwoLc3RhcnRpbmdfYXQYBCABKAsyGi5nb29nbGUucHJvdG9idWYuVGltZXN0YW1wEjEKDWVuZGluZ19iZWZvcmUYBSABKAsyGi5nb29nbGUucHJvdG9idWYuVGltZXN0YW1wEisKCW92ZXJyaWRlcxgGIAMoCzIYLnRhcmlmZi52MS5QcmljZU92ZXJyaWRlEiAKBmdyYW50cxgHIAMoCzIQLnRhcmlmZi52MS5HcmFudBIwCg5vdmVyYWdlX3BvbGljeRgIIAEoDjIYLnRhcmlmZi52MS5PdmVyYWdlUG9saWN5EhUKDW92ZXJhZ2VfcHJpY2UYCSABKAkSJgoGdG9wX3VwGAogASgLMhYudGFyaWZmLnYxLlRvcFVwUG9saWN5EhAKCGN1cnJlbmN5GAsgASgJIo0CChVDcmVhdGVDb250cmFjdFJlcXVlc3QSCgoCaWQYASABKAkSEwoLY3VzdG9tZXJfaWQYAiABKAkSFAoMcmF0ZV9jYXJkX2lkGAMgASgJEi8KC3N0YXJ0aW5nX2F0GAQgASgLMhouZ29vZ2xlLnByb3RvYnVmLlRpbWVzdGFtcBIxCg1lbmRpbmdfYmVmb3JlGAUgASgLMhouZ29vZ2xlLnByb3RvYnVmLlRpbWVzdGFtcBIwCg5vdmVyYWdlX3BvbGljeRgGIAEoDjIYLnRhcmlmZi52MS5PdmVyYWdlUG9saWN5EhUKDW92ZXJhZ2VfcHJpY2UYByABKAkSEAoIY3VycmVuY3kYCCABKAkiIAoSR2V0Q29udHJhY3RSZXF1ZXN0EgoKAmlkGAEgASgJIlUKEkFkZE92ZXJyaWRlUmVxdWVzdBITCgtjb250cmFjdF9pZBgBIAEoCRIqCghvdmVycmlkZRgCIAEoCzIYLnRhcmlmZi52MS5QcmljZU92ZXJyaWRlIuICCgVHcmFudBIKCgJpZBgBIAEoCRITCgtjdXN0b21lcl9pZBgCIAEoCRITCgtjb250cmFjdF9pZBgDIAEoCRIiCgRraW5kGAQgASgOMhQudGFyaWZmLnYxLkdyYW50S2luZBIOCgZhbW91bnQYBSABKAkSEwoLcGFpZF9hbW91bnQYBiABKAkSEAoIcHJpb3JpdHkYByABKAUSHgoWYXBwbGljYWJsZV9wcm9kdWN0X2lkcxgIIAMoCRItCglzdGFydHNfYXQYCSABKAsyGi5nb29nbGUucHJvdG9idWYuVGltZXN0YW1wEi4KCmV4cGlyZXNfYXQYCiABKAsyGi5nb29nbGUucHJvdG9idWYuVGltZXN0YW1wEhkKEXJvbGxvdmVyX2ZyYWN0aW9uGAsgASgJEi4KCmNyZWF0ZWRfYXQYDCABKAsyGi5nb29nbGUucHJvdG9idWYuVGltZXN0YW1wIkoKE0dyYW50Q3JlZGl0c1JlcXVlc3QSHwoFZ3JhbnQYASABKAsyEC50YXJpZmYudjEuR3JhbnQSEgoKcmVxdWVzdF9pZBgCIAEoCSJUChVTZXRUb3BVcFBvbGljeVJlcXVlc3QSEwoLY29udHJhY3RfaWQYASABKAkSJgoGdG9wX3VwGAIgASgLMhYudGFyaWZmLnYxLlRvcFVwUG9saWN5IlwKEkVuZENvbnRyYWN0UmVxdWVzdBITCgtjb250cmFjdF9pZBgBIAEoCRIxCg1lbmRpbmdfYmVmb3JlGAIgASgLMhouZ29vZ2xlLnByb3RvYnVmLlRpbWVzdGFtcCJrChJFeHBpcmVHcmFudFJlcXVlc3QSEwoLY3VzdG9tZXJfaWQYASABKAkSEAoIZ3JhbnRfaWQYAiABKAkSLgoKZXhwaXJlc19hdBgDIAEoCzIaLmdvb2dsZS5wcm90b2J1Zi5UaW1lc3RhbXAicQoSRW5kT3ZlcnJpZGVSZXF1ZXN0EhMKC2NvbnRyYWN0X2lkGAEgASgJEhMKC292ZXJyaWRlX2lkGAIgASgJEjEKDWVuZGluZ19iZWZvcmUYAyABKAsyGi5nb29nbGUucHJvdG9idWYuVGltZXN0YW1wKkUKDU92ZXJhZ2VQb2xpY3kSHgoaT1ZFUkFHRV9QT0xJQ1lfVU5TUEVDSUZJRUQQABIJCgVBTExPVxABEgkKBUJMT0NLEAIqXwoJR3JhbnRLaW5kEhoKFkdSQU5UX0tJTkRfVU5TUEVDSUZJRUQQABILCgdQUkVQQUlEEAESDwoLUFJPTU9USU9OQUwQAhIMCghST0xMT1ZFUhADEgoKBlRPUF9VUBAEMpEGCg9Db250cmFjdFNlcnZpY2USRwoOQ3JlYXRlQ3VzdG9tZXISIC50YXJpZmYudjEuQ3JlYXRlQ3VzdG9tZXJSZXF1ZXN0GhMudGFyaWZmLnYxLkN1c3RvbWVyEkEKC0dldEN1c3RvbWVyEh0udGFyaWZmLnYxLkdldEN1c3RvbWVyUmVxdWVzdBoTLnRhcmlmZi52MS5DdXN0b21lchJSCg1MaXN0Q3VzdG9tZXJzEh8udGFyaWZmLnYxLkxpc3RDdXN0b21lcnNSZXF1ZXN0GiAudGFyaWZmLnYxLkxpc3RDdXN0b21lcnNSZXNwb25zZRJHCg5DcmVhdGVDb250cmFjdBIgLnRhcmlmZi52MS5DcmVhdGVDb250cmFjdFJlcXVlc3QaEy50YXJpZmYudjEuQ29udHJhY3QSQQoLR2V0Q29udHJhY3QSHS50YXJpZmYudjEuR2V0Q29udHJhY3RSZXF1ZXN0GhMudGFyaWZmLnYxLkNvbnRyYWN0EkEKC0FkZE92ZXJyaWRlEh0udGFyaWZmLnYxLkFkZE92ZXJyaWRlUmVxdWVzdBoTLnRhcmlmZi52MS5Db250cmFjdBJACgxHcmFudENyZWRpdHMSHi50YXJpZmYudjEuR3JhbnRDcmVkaXRzUmVxdWVzdBoQLnRhcmlmZi52MS5HcmFudBJHCg5TZXRUb3BVcFBvbGljeRIgLnRhcmlmZi52MS5TZXRUb3BVcFBvbGljeVJlcXVlc3QaEy50YXJpZmYudjEuQ29udHJhY3QSQQoLRW5kQ29udHJhY3QSHS50YXJpZmYudjEuRW5kQ29udHJhY3RSZXF1ZXN0GhMudGFyaWZmLnYxLkNvbnRyYWN0Ej4KC0V4cGlyZUdyYW50Eh0udGFyaWZmLnYxLkV4cGlyZUdyYW50UmVxdWVzdBoQLnRhcmlmZi52MS5HcmFudBJBCgtFbmRPdmVycmlkZRIdLnRhcmlmZi52MS5FbmRPdmVycmlkZVJlcXVlc3QaEy50YXJpZmYudjEuQ29udHJhY3RCRQoNZGV2LnRhcmlmZi52MVABWjJnaXRodWIuY29tL3RhcmlmZi90YXJpZmYvZ2VuL2dvL3RhcmlmZi92MTt0YXJpZmZ2MWIGcHJvdG8z", [file_google_protobuf_timestamp]);

/**
 * @generated from message tariff.v1.Customer
 */
export type Customer = Message<"tariff.v1.Customer"> & {
  /**
   * @generated from field: string id = 1;
   */
  id: string;

  /**
   * @generated from field: string name = 2;
   */
  name: string;

  /**
   * Free-form attributes (segment, region, ...) that cohorts can match on.
   *
   * @generated from field: map<string, string> attributes = 3;
   */
  attributes: { [key: string]: string };

  /**
   * @generated from field: google.protobuf.Timestamp created_at = 4;
   */
  createdAt?: Timestamp | undefined;
};

/**
 * Describes the message tariff.v1.Customer.
 * Use `create(CustomerSchema)` to create a new message.
 */
export const CustomerSchema: GenMessage<Customer> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 0);

/**
 * @generated from message tariff.v1.CreateCustomerRequest
 */
export type CreateCustomerRequest = Message<"tariff.v1.CreateCustomerRequest"> & {
  /**
   * Required; 1-128 letters, digits and . _ : @ - (see the top of this file).
   *
   * @generated from field: string id = 1;
   */
  id: string;

  /**
   * At most 256 bytes of UTF-8 (more is INVALID_ARGUMENT naming name); the
   * id when empty. No control character, line break or bidirectional control
   * (see "Free texts" at the top of this file; INVALID_ARGUMENT naming name).
   *
   * @generated from field: string name = 2;
   */
  name: string;

  /**
   * At most 64 entries; keys (non-empty) and values at most 256 bytes each,
   * neither holding a control character, line break or bidirectional control
   * ("Free texts" above; INVALID_ARGUMENT naming attributes[key]).
   *
   * @generated from field: map<string, string> attributes = 3;
   */
  attributes: { [key: string]: string };
};

/**
 * Describes the message tariff.v1.CreateCustomerRequest.
 * Use `create(CreateCustomerRequestSchema)` to create a new message.
 */
export const CreateCustomerRequestSchema: GenMessage<CreateCustomerRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 1);

/**
 * @generated from message tariff.v1.GetCustomerRequest
 */
export type GetCustomerRequest = Message<"tariff.v1.GetCustomerRequest"> & {
  /**
   * @generated from field: string id = 1;
   */
  id: string;
};

/**
 * Describes the message tariff.v1.GetCustomerRequest.
 * Use `create(GetCustomerRequestSchema)` to create a new message.
 */
export const GetCustomerRequestSchema: GenMessage<GetCustomerRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 2);

/**
 * Paged as the top of this file says; a key restricted to some customers
 * lists those only.
 *
 * @generated from message tariff.v1.ListCustomersRequest
 */
export type ListCustomersRequest = Message<"tariff.v1.ListCustomersRequest"> & {
  /**
   * At most 1,000; 100 when 0.
   *
   * @generated from field: uint32 page_size = 1;
   */
  pageSize: number;

  /**
   * next_page_token of the previous page, unchanged; empty for the first.
   *
   * @generated from field: string page_token = 2;
   */
  pageToken: string;
};

/**
 * Describes the message tariff.v1.ListCustomersRequest.
 * Use `create(ListCustomersRequestSchema)` to create a new message.
 */
export const ListCustomersRequestSchema: GenMessage<ListCustomersRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 3);

/**
 * @generated from message tariff.v1.ListCustomersResponse
 */
export type ListCustomersResponse = Message<"tariff.v1.ListCustomersResponse"> & {
  /**
   * @generated from field: repeated tariff.v1.Customer customers = 1;
   */
  customers: Customer[];

  /**
   * @generated from field: string next_page_token = 2;
   */
  nextPageToken: string;
};

/**
 * Describes the message tariff.v1.ListCustomersResponse.
 * Use `create(ListCustomersResponseSchema)` to create a new message.
 */
export const ListCustomersResponseSchema: GenMessage<ListCustomersResponse> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 4);

/**
 * @generated from message tariff.v1.PriceOverride
 */
export type PriceOverride = Message<"tariff.v1.PriceOverride"> & {
  /**
   * Optional; when empty, named after the override's content ("override-...").
   *
   * @generated from field: string id = 1;
   */
  id: string;

  /**
   * A product the contract's rate card does not price is accepted (a later
   * version may price it), but the override adds no rate: until the card
   * prices the product, its usage is NO_APPLICABLE_RATE.
   *
   * @generated from field: string product_id = 2;
   */
  productId: string;

  /**
   * Dimension -> value or "*"; empty matches every event of the product.
   * Keys must be among the product's pricing_dimensions, as a rate's (an
   * override matches those only), values at most 256 bytes (as an event's):
   * another key, or a longer value (not "*"), is INVALID_ARGUMENT naming
   * override.match.<key>; so is a value holding a control character, line
   * break or bidirectional control ("Free texts" at the top of this file).
   * An entry whose value is "*" is left out, as a key
   * left out means "*", whatever its key: the override holds, and answers,
   * its match without it ({"model": "a", "other": "*"} is {"model": "a"}).
   *
   * @generated from field: map<string, string> match = 3;
   */
  match: { [key: string]: string };

  /**
   * When several overrides match an event, the most specific match wins (the
   * most entries), and among equally specific ones the one added last.
   * Exactly one of multiplier and price, not negative ("0" is taken): neither
   * is INVALID_ARGUMENT naming override, a negative one naming its field
   * (override.multiplier, override.price).
   *
   * @generated from oneof tariff.v1.PriceOverride.adjustment
   */
  adjustment: {
    /**
     * Decimal string: multiplies the amount the rate card's price gives for
     * the period's cumulative quantity (every price model, tiers and flat
     * fees included); the product is rounded to 10^-12 once.
     *
     * @generated from field: string multiplier = 4;
     */
    value: string;
    case: "multiplier";
  } | {
    /**
     * Decimal string, at most 18 decimal places: the contract's own price,
     * replacing the rate card's, by price model:
     * - UNIT: the price per the rate's per_units (per_units is kept).
     * - TIERED (GRADUATED or VOLUME): a flat unit price per the rate's
     *   per_units for the whole quantity; the tiers and their flat fees are
     *   dropped (5,000 units at per_units 1000 and price "0.02" cost 0.1).
     * - PACKAGE: the price of each started package (package_size is kept).
     * - FLAT: the flat fee, due once the period's quantity is above zero.
     *
     * @generated from field: string price = 5;
     */
    value: string;
    case: "price";
  } | { case: undefined; value?: undefined };

  /**
   * Unset: in force from the contract's start (and left unset in answers).
   * 1970-01-01T00:00:00Z, before every contract's start, is read as unset:
   * answered unset, and the same request as one leaving it unset (AddOverride's
   * key, with or without an id).
   * The window is read against each event's own timestamp, but an override
   * prices only what is rated after AddOverride: usage already rated keeps
   * its amount (the override is not applied back), until a retroactive
   * PublishVersion or RollbackRateCard re-rates those hours, which prices them
   * with the contract's overrides as they are then, or re-rates later hours of
   * their period, the first of which carries what the override changes in
   * their charge (PublishVersionRequest.effective_from). Usage is kept by the hour:
   * a starting_at or ending_before off the hour splits its hour's usage between
   * two prices that the hour's bucket cannot tell apart, so a publish that would
   * re-rate that hour's matching usage (unless a more specific override prices
   * it on both sides) is refused (FAILED_PRECONDITION, see
   * PublishVersionRequest.effective_from) until the period closes; on the hour,
   * nothing is refused.
   *
   * @generated from field: google.protobuf.Timestamp starting_at = 6;
   */
  startingAt?: Timestamp | undefined;

  /**
   * Unset: open-ended (EndOverride may set it, or move it earlier, later).
   * The override prices usage dated from starting_at up
   * to but not at ending_before, which must be after starting_at (at least a
   * millisecond, what finer is dropped; INVALID_ARGUMENT naming
   * override.ending_before otherwise).
   *
   * @generated from field: google.protobuf.Timestamp ending_before = 7;
   */
  endingBefore?: Timestamp | undefined;
};

/**
 * Describes the message tariff.v1.PriceOverride.
 * Use `create(PriceOverrideSchema)` to create a new message.
 */
export const PriceOverrideSchema: GenMessage<PriceOverride> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 5);

/**
 * When a rated event or a hold leaves the customer's available credit below
 * threshold, one TOP_UP grant of (recharge_to - available) credits is bought
 * at price_per_credit, at most max_per_period times per billing period. The
 * available credit is all of the customer's, Balance.credits_available,
 * whatever products its grants apply to (not AuthorizeResponse's, the credit
 * one usage's products may draw): while grants for other products keep it at
 * or above threshold, usage no grant pays is overage (denied under BLOCK) and
 * buys nothing. One
 * policy per customer (set through any of its contracts). threshold must be
 * above 0 (available credit is never below 0) and below recharge_to, the
 * price not negative, max_per_period at least 1. A policy set while available
 * credit is already below threshold buys at the next rated event (one that
 * draws nothing included) or hold placed, not when it is set. The purchase follows the draw: an event costing more than is
 * available is rated against what is there (the rest is overage, BLOCK or
 * not), and Authorize decides without it; a retroactive PublishVersion or
 * RollbackRateCard that settles the period's draws again keeps it so (the
 * top-up pays only the period's charges beyond those at which it was
 * bought). A purchase
 * counts in the billing period of the event that triggered it; one an event
 * dated in the next period triggers (events may be dated up to the server's
 * future skew ahead) is a grant usable from that period's start, billed on its
 * invoice and sold in its revenue, and the credit available for it is counted
 * there.
 *
 * @generated from message tariff.v1.TopUpPolicy
 */
export type TopUpPolicy = Message<"tariff.v1.TopUpPolicy"> & {
  /**
   * The customer's one policy (every contract of the customer shows it).
   * Decimal strings in the pricing unit (threshold, recharge_to: at most 12
   * decimal places) / the currency (price_per_credit: at most 18) of the
   * contract the policy was set through; more is INVALID_ARGUMENT naming the
   * field, never rounded. It buys only in the billing periods of the
   * customer's contracts in that currency: after a switch to a contract in
   * another currency, a purchase that would count in the new contract's
   * periods is not made (a price of 0.9 set for USD is never read as 0.9
   * JPY) until the policy is set again through a contract in that currency,
   * after which it buys in no period of a contract in the first one (late
   * usage of the old contract included). (Policies set by earlier releases
   * buy in every contract's periods, their price read in that contract's
   * currency, and still do.) recharge_to x
   * price_per_credit (what one purchase can cost at most, kept exact at
   * 10^-30 in 128 bits) above (2^127 - 1) x 10^-30 (about 170 million in the
   * currency) is INVALID_ARGUMENT naming top_up.recharge_to.
   *
   * @generated from field: string threshold = 1;
   */
  threshold: string;

  /**
   * @generated from field: string recharge_to = 2;
   */
  rechargeTo: string;

  /**
   * @generated from field: string price_per_credit = 3;
   */
  pricePerCredit: string;

  /**
   * 1 to 1,000 (each purchase is a grant the customer keeps for good, listed
   * in its balance while it fits: Balance.grants): more is
   * INVALID_ARGUMENT naming top_up.max_per_period, nothing set.
   *
   * @generated from field: uint32 max_per_period = 4;
   */
  maxPerPeriod: number;

  /**
   * The currency of price_per_credit, answered by the server: that of the
   * contract the policy was set through, on every contract of the customer
   * (empty for a policy set by an earlier release, whose price is read in the
   * currency of the contract each purchase counts in). Optional in
   * SetTopUpPolicy: when set, it must be the contract's currency
   * (INVALID_ARGUMENT naming top_up.currency otherwise, nothing changed), so
   * that a policy read from one contract and sent through a contract in
   * another currency is refused, never repriced.
   *
   * @generated from field: string currency = 5;
   */
  currency: string;
};

/**
 * Describes the message tariff.v1.TopUpPolicy.
 * Use `create(TopUpPolicySchema)` to create a new message.
 */
export const TopUpPolicySchema: GenMessage<TopUpPolicy> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 6);

/**
 * @generated from message tariff.v1.Contract
 */
export type Contract = Message<"tariff.v1.Contract"> & {
  /**
   * @generated from field: string id = 1;
   */
  id: string;

  /**
   * @generated from field: string customer_id = 2;
   */
  customerId: string;

  /**
   * @generated from field: string rate_card_id = 3;
   */
  rateCardId: string;

  /**
   * Billing periods are monthly, anchored on starting_at (UTC).
   *
   * @generated from field: google.protobuf.Timestamp starting_at = 4;
   */
  startingAt?: Timestamp | undefined;

  /**
   * Unset: open-ended. Set at creation, or later by EndContract (which may
   * also move it): a switch to another contract is planned by ending this one
   * here and starting the next from here. The last
   * period keeps its monthly end (it is closed once that has passed). The
   * contract is in force from starting_at up to but not at ending_before,
   * which must be after starting_at (at least a millisecond, what finer is
   * dropped, see the top of this file; INVALID_ARGUMENT naming ending_before
   * otherwise): usage dated at ending_before is the next contract's, or
   * NO_ACTIVE_CONTRACT.
   *
   * @generated from field: google.protobuf.Timestamp ending_before = 5;
   */
  endingBefore?: Timestamp | undefined;

  /**
   * @generated from field: repeated tariff.v1.PriceOverride overrides = 6;
   */
  overrides: PriceOverride[];

  /**
   * The grants GrantCredits made naming this contract, and those naming only
   * its customer (every contract of the customer lists those), in creation
   * order. The grants the server makes (TOP_UP, ROLLOVER) are not listed:
   * GetBalance lists every grant of the customer.
   *
   * @generated from field: repeated tariff.v1.Grant grants = 7;
   */
  grants: Grant[];

  /**
   * @generated from field: tariff.v1.OveragePolicy overage_policy = 8;
   */
  overagePolicy: OveragePolicy;

  /**
   * Decimal string: currency per pricing unit of overage. "1" when unset.
   *
   * @generated from field: string overage_price = 9;
   */
  overagePrice: string;

  /**
   * @generated from field: tariff.v1.TopUpPolicy top_up = 10;
   */
  topUp?: TopUpPolicy | undefined;

  /**
   * ISO 4217 currency of overage_price and paid amounts ("USD" when unset):
   * a code that has a minor unit, the one invoices round amounts due to
   * (invoices.proto minor_unit); anything else ("usd", "US Dollar", "XYZ",
   * or XXX, XTS, XAU, which have no minor unit) is INVALID_ARGUMENT naming
   * currency.
   *
   * @generated from field: string currency = 11;
   */
  currency: string;
};

/**
 * Describes the message tariff.v1.Contract.
 * Use `create(ContractSchema)` to create a new message.
 */
export const ContractSchema: GenMessage<Contract> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 7);

/**
 * @generated from message tariff.v1.CreateContractRequest
 */
export type CreateContractRequest = Message<"tariff.v1.CreateContractRequest"> & {
  /**
   * Optional; when empty, the customer id and the start's UTC date
   * ("acme-20261201"), or its Unix ms when the start is not at midnight
   * (the customer id cut so that the id keeps to 128 characters). When
   * another contract already holds that id (another customer's, or one of
   * this customer's from another start, named so by its request), ".2" is
   * added (".3", ... while taken; the customer id cut shorter to keep 128,
   * the start whole): the key of such a request is the customer and the
   * start, not the id.
   *
   * @generated from field: string id = 1;
   */
  id: string;

  /**
   * @generated from field: string customer_id = 2;
   */
  customerId: string;

  /**
   * A customer's contracts price in one pricing unit, that of their grants
   * (Grant.amount), which pay its usage under every contract: a card in
   * another unit than the customer's other contracts' cards is
   * FAILED_PRECONDITION naming that contract and both units, nothing created
   * (10 credits are never read as 10 EUR). (Contracts taken by earlier
   * releases stay as they are.)
   *
   * @generated from field: string rate_card_id = 3;
   */
  rateCardId: string;

  /**
   * The start of the current UTC day when unset. A customer's contracts must
   * not overlap: one that would is FAILED_PRECONDITION naming the contract
   * already in that time, nothing created.
   *
   * @generated from field: google.protobuf.Timestamp starting_at = 4;
   */
  startingAt?: Timestamp | undefined;

  /**
   * @generated from field: google.protobuf.Timestamp ending_before = 5;
   */
  endingBefore?: Timestamp | undefined;

  /**
   * @generated from field: tariff.v1.OveragePolicy overage_policy = 6;
   */
  overagePolicy: OveragePolicy;

  /**
   * @generated from field: string overage_price = 7;
   */
  overagePrice: string;

  /**
   * @generated from field: string currency = 8;
   */
  currency: string;
};

/**
 * Describes the message tariff.v1.CreateContractRequest.
 * Use `create(CreateContractRequestSchema)` to create a new message.
 */
export const CreateContractRequestSchema: GenMessage<CreateContractRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 8);

/**
 * @generated from message tariff.v1.GetContractRequest
 */
export type GetContractRequest = Message<"tariff.v1.GetContractRequest"> & {
  /**
   * @generated from field: string id = 1;
   */
  id: string;
};

/**
 * Describes the message tariff.v1.GetContractRequest.
 * Use `create(GetContractRequestSchema)` to create a new message.
 */
export const GetContractRequestSchema: GenMessage<GetContractRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 9);

/**
 * @generated from message tariff.v1.AddOverrideRequest
 */
export type AddOverrideRequest = Message<"tariff.v1.AddOverrideRequest"> & {
  /**
   * @generated from field: string contract_id = 1;
   */
  contractId: string;

  /**
   * @generated from field: tariff.v1.PriceOverride override = 2;
   */
  override?: PriceOverride | undefined;
};

/**
 * Describes the message tariff.v1.AddOverrideRequest.
 * Use `create(AddOverrideRequestSchema)` to create a new message.
 */
export const AddOverrideRequestSchema: GenMessage<AddOverrideRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 10);

/**
 * @generated from message tariff.v1.Grant
 */
export type Grant = Message<"tariff.v1.Grant"> & {
  /**
   * @generated from field: string id = 1;
   */
  id: string;

  /**
   * @generated from field: string customer_id = 2;
   */
  customerId: string;

  /**
   * The contract it is granted under: starts_at defaults to its start. The
   * credit is the customer's: it also pays usage under the customer's later
   * contracts.
   *
   * @generated from field: string contract_id = 3;
   */
  contractId: string;

  /**
   * @generated from field: tariff.v1.GrantKind kind = 4;
   */
  kind: GrantKind;

  /**
   * Decimal string, in the rate card's pricing unit. > 0, at most 12 decimal
   * places (the fixed scale is 10^-12 of a unit; more is refused, never rounded).
   *
   * @generated from field: string amount = 5;
   */
  amount: string;

  /**
   * Decimal string: what the customer paid, in the contract's currency, at
   * most 12 decimal places (revenue is kept at 10^-12 of the currency; more
   * is refused, never rounded). Cost basis per credit = paid_amount / amount.
   * 0 for promotional grants.
   *
   * @generated from field: string paid_amount = 6;
   */
  paidAmount: string;

  /**
   * Lower burns first.
   *
   * @generated from field: int32 priority = 7;
   */
  priority: number;

  /**
   * Products this grant may pay for; empty = all. At most 1,000 entries
   * (GrantCredits refuses more: INVALID_ARGUMENT naming
   * grant.applicable_product_ids).
   *
   * @generated from field: repeated string applicable_product_ids = 8;
   */
  applicableProductIds: string[];

  /**
   * @generated from field: google.protobuf.Timestamp starts_at = 9;
   */
  startsAt?: Timestamp | undefined;

  /**
   * Unset: never expires (ExpireGrant may set it, or move it earlier, later).
   * The grant pays usage dated from starts_at up to but
   * not at expires_at, which must be after starts_at (at least a millisecond,
   * what finer is dropped; INVALID_ARGUMENT naming grant.expires_at
   * otherwise).
   *
   * @generated from field: google.protobuf.Timestamp expires_at = 10;
   */
  expiresAt?: Timestamp | undefined;

  /**
   * Decimal string in [0, 1]: share of the remainder that rolls over. Such a
   * grant lasts until the end of the billing period in which it starts (one
   * starting exactly at a period's end starts the next period): usage
   * dated at or after that end is never paid from it, even if it arrives
   * before the rollover is done. (Grants created before this rule kept paying
   * such usage until the rollover, and still do.) A grant whose expires_at is
   * before that end does not roll over: it expires, and what it holds then is
   * breakage. One whose expires_at is exactly that end (its credits usable up
   * to, not at, it, as the period's) rolls over there like one with no expiry
   * or a later one. (Grants created before that rule simply expired at such a
   * tie, nothing rolling over, and still do.) At that end the share (rounded
   * down to 10^-12) moves into a ROLLOVER grant with the same cost basis,
   * usable from that end (usage dated exactly there draws on it) until the end
   * of the next period, and the rest is breakage. Its
   * start must lie in a contract of its customer (a billing period to end):
   * one starting when none is in force (before the first, between two, after
   * the last, or now by default with no contract in force) is
   * FAILED_PRECONDITION, granting nothing; name the contract to start it with
   * it. (Such grants made before this rule never roll over, and still do not.)
   *
   * @generated from field: string rollover_fraction = 11;
   */
  rolloverFraction: string;

  /**
   * @generated from field: google.protobuf.Timestamp created_at = 12;
   */
  createdAt?: Timestamp | undefined;
};

/**
 * Describes the message tariff.v1.Grant.
 * Use `create(GrantSchema)` to create a new message.
 */
export const GrantSchema: GenMessage<Grant> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 11);

/**
 * @generated from message tariff.v1.GrantCreditsRequest
 */
export type GrantCreditsRequest = Message<"tariff.v1.GrantCreditsRequest"> & {
  /**
   * The grant to create. grant.id, or request_id, is required: it is the key
   * that makes a retried call grant once. customer_id and contract_id: at
   * least one. starts_at defaults to the start of the contract (given, or in
   * force now), so it also pays for that contract's late usage; to now when no
   * contract is in force. An id the server gave a grant it made for the
   * customer (top-up-<period start ms>-<n>, rollover-<grant>-<period end ms>)
   * is ALREADY_EXISTS, as any grant id taken. Such an id is not reserved: a
   * grant may take it before the server makes its grant, which then gets the
   * id with a '+' added (as many as needed), so that no two grants of a
   * customer share an id. The ids GrantCredits gives are server-wide; those
   * the server makes are each customer's own (two customers' first top-ups
   * of a period share an id), so one another customer's grant holds is free.
   *
   * @generated from field: tariff.v1.Grant grant = 1;
   */
  grant?: Grant | undefined;

  /**
   * Idempotency key, used as the grant's id when grant.id is empty.
   *
   * @generated from field: string request_id = 2;
   */
  requestId: string;
};

/**
 * Describes the message tariff.v1.GrantCreditsRequest.
 * Use `create(GrantCreditsRequestSchema)` to create a new message.
 */
export const GrantCreditsRequestSchema: GenMessage<GrantCreditsRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 12);

/**
 * @generated from message tariff.v1.SetTopUpPolicyRequest
 */
export type SetTopUpPolicyRequest = Message<"tariff.v1.SetTopUpPolicyRequest"> & {
  /**
   * @generated from field: string contract_id = 1;
   */
  contractId: string;

  /**
   * Unset: clears the customer's policy. Set, it is the whole policy: one
   * without threshold (an empty TopUpPolicy, or one with only a price) is
   * INVALID_ARGUMENT naming top_up.threshold, never a clearing.
   *
   * @generated from field: tariff.v1.TopUpPolicy top_up = 2;
   */
  topUp?: TopUpPolicy | undefined;
};

/**
 * Describes the message tariff.v1.SetTopUpPolicyRequest.
 * Use `create(SetTopUpPolicyRequestSchema)` to create a new message.
 */
export const SetTopUpPolicyRequestSchema: GenMessage<SetTopUpPolicyRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 13);

/**
 * @generated from message tariff.v1.EndContractRequest
 */
export type EndContractRequest = Message<"tariff.v1.EndContractRequest"> & {
  /**
   * Required; the contract to end (see the top of this file).
   *
   * @generated from field: string contract_id = 1;
   */
  contractId: string;

  /**
   * Required: the contract's new end, at or after the request's time, after
   * its starting_at (see EndContract).
   *
   * @generated from field: google.protobuf.Timestamp ending_before = 2;
   */
  endingBefore?: Timestamp | undefined;
};

/**
 * Describes the message tariff.v1.EndContractRequest.
 * Use `create(EndContractRequestSchema)` to create a new message.
 */
export const EndContractRequestSchema: GenMessage<EndContractRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 14);

/**
 * @generated from message tariff.v1.ExpireGrantRequest
 */
export type ExpireGrantRequest = Message<"tariff.v1.ExpireGrantRequest"> & {
  /**
   * Required; the customer whose grant it is (the ids of the grants the
   * server makes are the customer's).
   *
   * @generated from field: string customer_id = 1;
   */
  customerId: string;

  /**
   * Required; the grant to end early.
   *
   * @generated from field: string grant_id = 2;
   */
  grantId: string;

  /**
   * Required: the grant's new expiry, at or after the request's time, at or
   * before its current expires_at, after its starts_at (see ExpireGrant).
   *
   * @generated from field: google.protobuf.Timestamp expires_at = 3;
   */
  expiresAt?: Timestamp | undefined;
};

/**
 * Describes the message tariff.v1.ExpireGrantRequest.
 * Use `create(ExpireGrantRequestSchema)` to create a new message.
 */
export const ExpireGrantRequestSchema: GenMessage<ExpireGrantRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 15);

/**
 * @generated from message tariff.v1.EndOverrideRequest
 */
export type EndOverrideRequest = Message<"tariff.v1.EndOverrideRequest"> & {
  /**
   * Required; the contract holding the override (see the top of this file).
   *
   * @generated from field: string contract_id = 1;
   */
  contractId: string;

  /**
   * Required; the override to end (PriceOverride.id, as the contract answers
   * it: the one AddOverride gave when the request left it empty).
   *
   * @generated from field: string override_id = 2;
   */
  overrideId: string;

  /**
   * Required: the override's new end, at or after the request's time, at or
   * before its current ending_before, after its starting_at (see
   * EndOverride).
   *
   * @generated from field: google.protobuf.Timestamp ending_before = 3;
   */
  endingBefore?: Timestamp | undefined;
};

/**
 * Describes the message tariff.v1.EndOverrideRequest.
 * Use `create(EndOverrideRequestSchema)` to create a new message.
 */
export const EndOverrideRequestSchema: GenMessage<EndOverrideRequest> = /*@__PURE__*/
  messageDesc(file_tariff_v1_contracts, 16);

/**
 * @generated from enum tariff.v1.OveragePolicy
 */
export enum OveragePolicy {
  /**
   * Treated as ALLOW.
   *
   * @generated from enum value: OVERAGE_POLICY_UNSPECIFIED = 0;
   */
  OVERAGE_POLICY_UNSPECIFIED = 0,

  /**
   * Charges beyond credit are billed in arrears at overage_price.
   *
   * @generated from enum value: ALLOW = 1;
   */
  ALLOW = 1,

  /**
   * Authorize denies once available credit is exhausted, read as: once the
   * described usage would exhaust it. A request whose estimated_cost is more
   * than the credit available to its products is denied INSUFFICIENT_CREDIT,
   * also while some credit is left (6.5 available: an estimate of 7 is
   * denied, one of 6.5 allowed; under ALLOW the 7 is OVERAGE_ALLOWED), and so
   * is any request while none is (balance.proto AuthorizeResponse). Usage that
   * happened is still recorded: ingestion never refuses it, and what no grant
   * covers is overage, as under ALLOW.
   *
   * @generated from enum value: BLOCK = 2;
   */
  BLOCK = 2,
}

/**
 * Describes the enum tariff.v1.OveragePolicy.
 */
export const OveragePolicySchema: GenEnum<OveragePolicy> = /*@__PURE__*/
  enumDesc(file_tariff_v1_contracts, 0);

/**
 * @generated from enum tariff.v1.GrantKind
 */
export enum GrantKind {
  /**
   * @generated from enum value: GRANT_KIND_UNSPECIFIED = 0;
   */
  GRANT_KIND_UNSPECIFIED = 0,

  /**
   * Bought in advance: recognised as revenue as it is drawn.
   *
   * @generated from enum value: PREPAID = 1;
   */
  PREPAID = 1,

  /**
   * Given away: paid_amount is 0.
   *
   * @generated from enum value: PROMOTIONAL = 2;
   */
  PROMOTIONAL = 2,

  /**
   * @generated from enum value: ROLLOVER = 3;
   */
  ROLLOVER = 3,

  /**
   * @generated from enum value: TOP_UP = 4;
   */
  TOP_UP = 4,
}

/**
 * Describes the enum tariff.v1.GrantKind.
 */
export const GrantKindSchema: GenEnum<GrantKind> = /*@__PURE__*/
  enumDesc(file_tariff_v1_contracts, 1);

/**
 * @generated from service tariff.v1.ContractService
 */
export const ContractService: GenService<{
  /**
   * Key: id.
   *
   * @generated from rpc tariff.v1.ContractService.CreateCustomer
   */
  createCustomer: {
    methodKind: "unary";
    input: typeof CreateCustomerRequestSchema;
    output: typeof CustomerSchema;
  },
  /**
   * @generated from rpc tariff.v1.ContractService.GetCustomer
   */
  getCustomer: {
    methodKind: "unary";
    input: typeof GetCustomerRequestSchema;
    output: typeof CustomerSchema;
  },
  /**
   * @generated from rpc tariff.v1.ContractService.ListCustomers
   */
  listCustomers: {
    methodKind: "unary";
    input: typeof ListCustomersRequestSchema;
    output: typeof ListCustomersResponseSchema;
  },
  /**
   * Key: id; when empty, the customer and the start (a customer's contracts
   * never overlap). A contract whose answer (it shows the customer's grants
   * given without a contract) would be larger than --message-mb-max is
   * RESOURCE_EXHAUSTED, not created; a retry of one made answers it as it is.
   *
   * @generated from rpc tariff.v1.ContractService.CreateContract
   */
  createContract: {
    methodKind: "unary";
    input: typeof CreateContractRequestSchema;
    output: typeof ContractSchema;
  },
  /**
   * @generated from rpc tariff.v1.ContractService.GetContract
   */
  getContract: {
    methodKind: "unary";
    input: typeof GetContractRequestSchema;
    output: typeof ContractSchema;
  },
  /**
   * Key: override.id; when empty, the override's content as the request
   * writes it (a multiplier "0.50" and one "0.5" are two keys, and two
   * overrides alike once held: send the same text, or an id). A contract holds at
   * most 1,000 overrides: another is RESOURCE_EXHAUSTED (a retry of one it
   * holds still answers). An override that would make the answer (the whole
   * contract) larger than --message-mb-max is RESOURCE_EXHAUSTED, not added;
   * a retry of one the contract holds answers the contract as it is.
   *
   * @generated from rpc tariff.v1.ContractService.AddOverride
   */
  addOverride: {
    methodKind: "unary";
    input: typeof AddOverrideRequestSchema;
    output: typeof ContractSchema;
  },
  /**
   * Key: grant.id, or request_id when grant.id is empty (one of them is required).
   * A customer holds at most 1,000 grants given by GrantCredits over its
   * life, spent and expired ones too (no grant is ever removed, so none makes
   * room; every one is listed on its contracts, never paged): another is
   * RESOURCE_EXHAUSTED, nothing granted (a retry of one it holds still
   * answers). The grants the server makes (TOP_UP, ROLLOVER) do not count:
   * at most max_per_period TOP_UP grants a billing period, kept for good, and
   * one ROLLOVER grant for each grant with a rollover_fraction (it does not
   * roll over again). The balance lists them all while they fit one message
   * (Balance.grants).
   *
   * @generated from rpc tariff.v1.ContractService.GrantCredits
   */
  grantCredits: {
    methodKind: "unary";
    input: typeof GrantCreditsRequestSchema;
    output: typeof GrantSchema;
  },
  /**
   * A policy that would make the answer (the whole contract) larger than
   * --message-mb-max, and larger than it is, is RESOURCE_EXHAUSTED, not set;
   * a retry of the policy set answers the contract as it is. One that leaves
   * it no larger (a clearing, say) is set even when the contract's grants
   * already take it past the limit: RESOURCE_EXHAUSTED saying the policy was
   * set (or cleared), so that a policy can always be stopped.
   *
   * @generated from rpc tariff.v1.ContractService.SetTopUpPolicy
   */
  setTopUpPolicy: {
    methodKind: "unary";
    input: typeof SetTopUpPolicyRequestSchema;
    output: typeof ContractSchema;
  },
  /**
   * Ends a contract: sets its ending_before (or moves it), so that a customer
   * who churns or moves to another plan mid-contract stops being billed under
   * it. Key: the contract and the end: a retry, or any request naming the end
   * the contract has, answers the contract as it is and changes nothing; a
   * request naming another end moves it, within the rules below. An unknown
   * contract_id is NOT_FOUND (see the top of this file). ending_before is
   * required and held to CreateContract's rules (the time bounds, what finer
   * than a millisecond is dropped, after starting_at): INVALID_ARGUMENT naming
   * ending_before otherwise. FAILED_PRECONDITION, nothing changed, when the
   * contract has already ended (its ending_before is at or before the
   * request's time: an end that has passed is never moved), when the new end
   * is before the request's time (no retroactive end: periods and invoices
   * already billed stay as they are), when a grant with a rollover fraction
   * starts under the contract at or after the new end (its start would lie in
   * no contract, leaving it no billing period to roll over at the end of, as
   * GrantCredits requires: the message names the grant), when usage is
   * already recorded under the
   * contract in an hour ending after the new end (usage is kept by the hour, so
   * an hour holding the new end off the hour counts whole; events dated ahead
   * of the clock, within --future-skew-s, can be there: the message names the
   * latest such hour), or when a later end would overlap another contract of
   * the customer (the message names it). Usage dated at or after the end is
   * then the next contract's, or NO_ACTIVE_CONTRACT; usage dated before it,
   * late arrivals included, still counts. The last period keeps its monthly
   * end, as for a contract created with ending_before. The change is journaled
   * and in the audit log (action EndContract, target contract/<id>).
   *
   * @generated from rpc tariff.v1.ContractService.EndContract
   */
  endContract: {
    methodKind: "unary";
    input: typeof EndContractRequestSchema;
    output: typeof ContractSchema;
  },
  /**
   * Ends a grant early: moves its expires_at earlier, or sets it on a grant
   * with none, so that credit granted by mistake, or forfeited, stops paying.
   * Any grant of the customer: given by GrantCredits, or made by the server
   * (TOP_UP, ROLLOVER: their ids are the customer's, hence customer_id).
   * Answers the grant as it is now. Key: the grant and the expiry: a retry, or
   * any request naming the expiry the grant has, answers the grant as it is
   * and changes nothing (after that expiry has passed too). What the grant
   * still holds at the new expiry is breakage, exactly as for a grant created
   * with that expires_at: the same revenue (breakage at its cost basis, in
   * the period the expiry falls in), the same invoice lines, and the same
   * rollover rule (a grant with a rollover_fraction expiring before the end of
   * the billing period it starts in does not roll over; exactly at that end it
   * rolls over there). Open holds on the grant keep what they hold: what one
   * gives back after the expiry (released, expired, or settled by an event
   * not drawing it) is breakage too, as for any expired grant. customer_id and
   * grant_id are required (INVALID_ARGUMENT naming them); an unknown customer,
   * or a grant it does not have, is NOT_FOUND. expires_at is required and held
   * to GrantCredits' rules (the time bounds, what finer than a millisecond is
   * dropped, after starts_at): INVALID_ARGUMENT naming expires_at otherwise.
   * FAILED_PRECONDITION, nothing changed, when the grant has already expired
   * (its expires_at is at or before the request's time: an expiry that has
   * passed is never moved), when it has already rolled over (a grant with a
   * rollover_fraction whose rollover, the end of the billing period it starts
   * in, is at or before the request's time: its remainder has moved to a
   * ROLLOVER grant or broken, and the message says "has already ended:
   * rolled over at" that end), when the new expires_at is before the request's
   * time (no retroactive expiry: what drew on it stays drawn), when it is
   * later than the grant's expires_at (an expiry is only moved earlier), or
   * when usage of the customer is already recorded in an hour ending after the
   * new expires_at (and after the grant's start, before its current expiry)
   * that could have drawn on the grant: usage is kept by the hour, so an hour
   * holding the new expiry off the hour counts whole, and usage of any product
   * counts (conservative: draws are not kept by the hour); events dated ahead
   * of the clock, within --future-skew-s, can be there: the message names the
   * latest such hour. The change is journaled and in the audit log (action
   * ExpireGrant, target grant/<id>).
   *
   * @generated from rpc tariff.v1.ContractService.ExpireGrant
   */
  expireGrant: {
    methodKind: "unary";
    input: typeof ExpireGrantRequestSchema;
    output: typeof GrantSchema;
  },
  /**
   * Ends a contract's price override early: sets its ending_before, or moves
   * it earlier, so that a discount given to a customer can be revoked (an
   * override without an end lasts for the contract's life). Answers the
   * contract as it is now, as AddOverride does. Key: the override and the
   * end: a retry, or any request naming the end the override has, answers
   * the contract as it is and changes nothing (after that end has passed
   * too); the AddOverride that added the override, sent again, still answers
   * the contract as it is. Usage dated at or after the new end is priced
   * without the override (the rate card's price, or another override
   * matching it); usage dated before it, late arrivals included, keeps it.
   * An end off the hour splits its hour as any override's ending_before does
   * (PriceOverride.starting_at: a publish that would re-rate that hour's
   * matching usage is refused until the period closes); on the hour, nothing
   * is. contract_id and override_id are required (INVALID_ARGUMENT naming
   * them); an unknown contract, or an override it does not hold, is
   * NOT_FOUND.
   * ending_before is required and held to AddOverride's rules (the time
   * bounds, what finer than a millisecond is dropped, after the override's
   * starting_at): INVALID_ARGUMENT naming ending_before otherwise.
   * FAILED_PRECONDITION, nothing changed, when the override has already
   * ended (its ending_before is at or before the request's time: an end that
   * has passed is never moved), when the new end is before the request's
   * time (no retroactive end: re-pricing usage already rated is what
   * publishing a version, and its re-rating, is for), when it is later than
   * the override's ending_before (an end is only moved earlier), or when
   * usage of the customer in the override's product is already recorded in
   * an hour ending after the new end (and before the override's current
   * end): usage is kept by the hour, so an hour holding the new end off the
   * hour counts whole, and usage its match would not price counts too
   * (conservative); events dated ahead of the clock, within
   * --future-skew-s, can be there: the message names the latest such hour.
   * The change is journaled and in the audit log (action EndOverride, target
   * contract/<id>).
   *
   * @generated from rpc tariff.v1.ContractService.EndOverride
   */
  endOverride: {
    methodKind: "unary";
    input: typeof EndOverrideRequestSchema;
    output: typeof ContractSchema;
  },
}> = /*@__PURE__*/
  serviceDesc(file_tariff_v1_contracts, 0);

