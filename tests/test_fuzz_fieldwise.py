"""Sound admin requests with one hostile field at a time, over one real server process.

tests/test_fuzz_server.py builds whole requests at random, so few get past the first "does not exist" check to a
deeper one. Here each request starts from a valid one (real ids of the demo catalogue, a fresh id where one must be
new) and exactly one leaf field is replaced by a hostile value of its type: texts that are numbers in odd spellings,
huge or empty; integers and enums at their limits; Timestamps at the calendar's edges (a contract starting at
midnight of 10000-01-01 once stopped the writer and shut the server down); repeated fields with duplicates or
thousands of entries. Every value of every leaf is sent, in a fixed order, so a run is reproducible.

For every call: the answer is never UNKNOWN, INTERNAL, UNAVAILABLE or past its deadline, and the server stays up.
At the end, what was accepted survives recovery: after kill -9 (replay of the journal) and after a clean stop
(the snapshot), the state read back is the same.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import descriptor, duration_pb2, message, timestamp_pb2
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from server.journal import LmdbJournal
from tests.serverproc import ServerFactory, ServerProcess

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
NOW_MS = int(time.time() * 1000)
HOUR_START_MS = NOW_MS - NOW_MS % HOUR_MS
DEADLINE_S = 10.0
FORBIDDEN = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

TEXTS = [
    "",
    " ",
    "x" * 129,
    "z" * 70_000,
    "é",
    "\x00",
    "NaN",
    "-1",
    "0",
    "-0",
    "1E+400",
    "1e-50",
    "0.0000000000000000001",
    "99999999999999999999",
    "999999999999999999",
    "1_000",
    " 1",
    "+1",
    "Infinity",
    "0x10",
    "1.5e3",
    "\uff11\uff10",  # full-width "10"
    "\u0663",  # Arabic-Indic 3
    "1/0",
    "1" * 65,
    "ai_action",
    "acme",
    "acme-2026",
    "*",
    "max(1, 2)",
    "(" * 40 + "1" + ")" * 40,
]
INTEGERS = {
    descriptor.FieldDescriptor.TYPE_INT32: [-(2**31), -1, 0, 1, 2**31 - 1],
    descriptor.FieldDescriptor.TYPE_UINT32: [0, 1, 2**32 - 1],
    descriptor.FieldDescriptor.TYPE_INT64: [-(2**63), -1, 0, 2**63 - 1],
    descriptor.FieldDescriptor.TYPE_UINT64: [0, 2**64 - 1],
}
# (seconds, nanos): the server's range is 1970-01-01 .. 8999-12-31T23:59:59.999 (engine/instants.py).
EDGE_INSTANTS = [
    (0, 0),
    (-1, 999_000_000),
    (221_845_391_999, 999_000_000),
    (221_845_392_000, 0),
    (253_402_300_800, 0),  # 10000-01-01T00:00:00Z
    (-62_135_596_800, 0),  # 0001-01-01T00:00:00Z
    (NOW_MS // 1000, -1),
    (HOUR_START_MS // 1000, 0),
    (HOUR_START_MS // 1000 + 1, 0),
]
DURATIONS = [(0, 0), (-1, 0), (2**62, 0), (0, 1), (0, -5), (1, -1)]
MAP_ENTRIES = 12  # the first TEXTS, as a key and as a value


Edit = Callable[[message.Message], None]


def scalar_values(field: descriptor.FieldDescriptor) -> list[Any]:
    kind = field.type
    if kind == field.TYPE_STRING:
        return TEXTS
    if kind == field.TYPE_BOOL:
        return [True, False]
    if kind == field.TYPE_ENUM:
        assert field.enum_type is not None
        return [value.number for value in field.enum_type.values] + [99, -1]
    if kind in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return [float("nan"), float("inf"), -1.0, 0.0, 1e308]
    return INTEGERS.get(kind, [])


# Edits: each sets one leaf of a request (a copy of a base) to one hostile value.


def set_scalar(name: str, value: Any) -> Edit:
    def edit(request: message.Message) -> None:
        setattr(request, name, value)

    return edit


def set_message(name: str, value: message.Message) -> Edit:
    def edit(request: message.Message) -> None:
        getattr(request, name).CopyFrom(value)

    return edit


def put_entry(name: str, key: str, value: str) -> Edit:
    def edit(request: message.Message) -> None:
        getattr(request, name)[key] = value

    return edit


def append(name: str, value: Any) -> Edit:
    def edit(request: message.Message) -> None:
        getattr(request, name).append(value)

    return edit


def duplicate_entries(name: str) -> Edit:
    def edit(request: message.Message) -> None:
        entries = getattr(request, name)
        entries.extend(list(entries) or ["ai_action", "ai_action"])

    return edit


def repeat_first(name: str, times: int) -> Edit:
    def edit(request: message.Message) -> None:
        entries = getattr(request, name)
        for _ in range(times):
            entries.add().CopyFrom(entries[0])

    return edit


def within(name: str, inner: Edit, first_entry: bool = False) -> Edit:
    def edit(request: message.Message) -> None:
        target = getattr(request, name)
        inner(target[0] if first_entry else target)

    return edit


def edits(desc: descriptor.Descriptor, base: message.Message) -> Iterator[tuple[str, Edit]]:
    """(field path, edit) for one hostile value of one leaf each: set fields are recursed into, repeated
    messages through their first entry."""
    for field in desc.fields:
        yield from _field_edits(field, base)


def _field_edits(field: descriptor.FieldDescriptor, base: message.Message) -> Iterator[tuple[str, Edit]]:
    name = field.name
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if field.message_type.fields_by_name["value"].message_type is None:
            for text in TEXTS[:MAP_ENTRIES]:
                yield f"{name}[key]", put_entry(name, text, "x")
                yield f"{name}[value]", put_entry(name, "segment", text)
    elif field.is_repeated:
        yield from _repeated_edits(field, base)
    elif field.message_type is not None:
        yield from _message_edits(field, field.message_type, base)
    else:
        for value in scalar_values(field):
            yield name, set_scalar(name, value)


def _repeated_edits(field: descriptor.FieldDescriptor, base: message.Message) -> Iterator[tuple[str, Edit]]:
    name = field.name
    if field.message_type is None:
        for value in scalar_values(field):
            yield f"{name}[+]", append(name, value)
        yield f"{name}[dup]", duplicate_entries(name)
        return
    entries = getattr(base, name)
    if not entries:
        return
    yield f"{name}[x2000]", repeat_first(name, 2000)
    for path, edit in edits(field.message_type, entries[0]):
        yield f"{name}[0].{path}", within(name, edit, first_entry=True)


def _message_edits(
    field: descriptor.FieldDescriptor, desc: descriptor.Descriptor, base: message.Message
) -> Iterator[tuple[str, Edit]]:
    name = field.name
    if desc.full_name == "google.protobuf.Timestamp":
        for seconds, nanos in EDGE_INSTANTS:
            yield name, set_message(name, timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    elif desc.full_name == "google.protobuf.Duration":
        for seconds, nanos in DURATIONS:
            yield name, set_message(name, duration_pb2.Duration(seconds=seconds, nanos=nanos))
    elif base.HasField(name):
        for path, edit in edits(desc, getattr(base, name)):
            yield f"{name}.{path}", within(name, edit)


class Caller:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def __call__(self, method: str, request: message.Message) -> bytes:
        call = self.channel.unary_unary(method, request_serializer=type(request).SerializeToString)
        answer: bytes = call(request, timeout=DEADLINE_S)
        return answer


Fresh = Callable[[Caller, message.Message, str, int], None]


def fresh_id(field: str) -> Fresh:
    """An id no earlier request used, unless the mutated field is that id itself."""

    def give(_: Caller, request: message.Message, path: str, n: int) -> None:
        *parents, leaf = field.split(".")
        if path == field:
            return
        target = request
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, f"f{n}")

    return give


def fresh_customer(call: Caller, request: message.Message, path: str, n: int) -> None:
    if path != "customer_id":
        call("/tariff.v1.ContractService/CreateCustomer", contracts_pb2.CreateCustomerRequest(id=f"k{n}", name="K"))
        request.customer_id = f"k{n}"  # type: ignore[attr-defined]


def fresh_draft(call: Caller, request: message.Message, path: str, n: int) -> None:
    if path != "version":
        draft = contracts_draft(call, n)
        request.version = draft  # type: ignore[attr-defined]


def contracts_draft(call: Caller, n: int) -> int:
    made = call(
        "/tariff.v1.PricingService/CreateDraftVersion",
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="ai-credits", request_id=f"draft{n}"),
    )
    return int(pricing_pb2.RateCardVersion.FromString(made).version)


def nothing(_: Caller, __: message.Message, ___: str, ____: int) -> None:
    pass


CONTRACT = "acme-2026"  # the demo's (server/demo.py)
BASES: dict[str, tuple[message.Message, Fresh]] = {
    "/tariff.v1.ContractService/CreateCustomer": (
        contracts_pb2.CreateCustomerRequest(id="new", name="N", attributes={"segment": "smb"}),
        fresh_id("id"),
    ),
    "/tariff.v1.ContractService/CreateContract": (
        contracts_pb2.CreateContractRequest(
            customer_id="globex",
            rate_card_id="ai-credits",
            starting_at=stamp(HOUR_START_MS),  # no ending_before: a start must not be refused for being after it
            overage_policy=contracts_pb2.ALLOW,
            overage_price="1.5",
            currency="USD",
        ),
        fresh_customer,
    ),
    "/tariff.v1.ContractService/AddOverride": (
        contracts_pb2.AddOverrideRequest(
            contract_id=CONTRACT,
            override=contracts_pb2.PriceOverride(
                product_id="ai_action",
                match={"model": "gpt-4"},
                multiplier="0.9",
                starting_at=stamp(HOUR_START_MS),
                ending_before=stamp(HOUR_START_MS + DAY_MS),
            ),
        ),
        fresh_id("override.id"),
    ),
    "/tariff.v1.ContractService/GrantCredits": (
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                contract_id=CONTRACT,
                kind=contracts_pb2.PREPAID,
                amount="10",
                paid_amount="9",
                priority=5,
                applicable_product_ids=["ai_action"],
                starts_at=stamp(HOUR_START_MS),
                expires_at=stamp(HOUR_START_MS + DAY_MS),
                rollover_fraction="0.5",
            )
        ),
        fresh_id("grant.id"),
    ),
    "/tariff.v1.ContractService/SetTopUpPolicy": (
        contracts_pb2.SetTopUpPolicyRequest(
            contract_id=CONTRACT,
            top_up=contracts_pb2.TopUpPolicy(
                threshold="100", recharge_to="1000", price_per_credit="0.9", max_per_period=3
            ),
        ),
        nothing,
    ),
    "/tariff.v1.PricingService/CreateProduct": (
        pricing_pb2.CreateProductRequest(
            product=pricing_pb2.Product(
                id="tokens",
                name="T",
                event_type="llm",
                aggregation=pricing_pb2.SUM,
                value_key="tokens",
                filters={"model": "gpt-4"},
                pricing_dimensions=["model"],
                unit="tokens",
            )
        ),
        fresh_id("product.id"),
    ),
    "/tariff.v1.PricingService/CreateDraftVersion": (
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="ai-credits",
            based_on_version=1,
            set_parameters={"markup": "1.1"},
            upsert_rates=[
                pricing_pb2.Rate(
                    product_id="ai_action",
                    match={"model": "gpt-4"},
                    tiered=pricing_pb2.TieredPrice(
                        mode=pricing_pb2.GRADUATED,
                        tiers=[
                            pricing_pb2.Tier(up_to="100", unit_price="1", flat_price="2"),
                            pricing_pb2.Tier(unit_price="0.5"),
                        ],
                        per_units="10",
                    ),
                )
            ],
            change_note="n",
        ),
        fresh_id("request_id"),
    ),
    "/tariff.v1.PricingService/PublishVersion": (
        pricing_pb2.PublishVersionRequest(
            rate_card_id="ai-credits",
            effective_from=stamp(HOUR_START_MS + HOUR_MS),
            cohort=pricing_pb2.Cohort(
                customer_ids=["acme"], attributes={"segment": "enterprise"}, customers_created_after=stamp(0)
            ),
        ),
        fresh_draft,
    ),
    "/tariff.v1.PricingService/SimulateVersion": (
        pricing_pb2.SimulateVersionRequest(
            rate_card_id="ai-credits",
            version=1,
            period_start=stamp(HOUR_START_MS - DAY_MS),
            period_end=stamp(HOUR_START_MS + HOUR_MS),
            customer_ids=["acme"],
        ),
        nothing,
    ),
    "/tariff.v1.AlertService/CreateAlert": (
        alerts_pb2.CreateAlertRequest(customer_id="acme", type=alerts_pb2.LOW_BALANCE, threshold="100"),
        fresh_id("id"),
    ),
    "/tariff.v1.InvoiceService/PreviewInvoice": (
        invoices_pb2.PreviewInvoiceRequest(customer_id="acme", period_start=stamp(HOUR_START_MS)),
        nothing,
    ),
}

READS: list[tuple[str, message.Message, type[message.Message]]] = [
    ("/tariff.v1.BalanceService/GetBalance", balance_pb2.GetBalanceRequest(customer_id="acme"), balance_pb2.Balance),
    (
        "/tariff.v1.InvoiceService/PreviewInvoice",
        invoices_pb2.PreviewInvoiceRequest(customer_id="acme"),
        invoices_pb2.Invoice,
    ),
    ("/tariff.v1.ContractService/GetContract", contracts_pb2.GetContractRequest(id=CONTRACT), contracts_pb2.Contract),
    (
        "/tariff.v1.PricingService/ListVersions",
        pricing_pb2.ListVersionsRequest(rate_card_id="ai-credits"),
        pricing_pb2.ListVersionsResponse,
    ),
    (
        "/tariff.v1.PricingService/GetAuditLog",
        pricing_pb2.GetAuditLogRequest(page_size=1000),
        pricing_pb2.GetAuditLogResponse,
    ),
    ("/tariff.v1.AlertService/ListAlertRules", alerts_pb2.ListAlertRulesRequest(), alerts_pb2.ListAlertRulesResponse),
    (
        "/tariff.v1.ContractService/ListCustomers",
        contracts_pb2.ListCustomersRequest(page_size=1000),
        contracts_pb2.ListCustomersResponse,
    ),
]


def state(call: Caller) -> dict[str, message.Message]:
    """What the server shows, parsed (maps serialize in any order, so bytes would differ after a restart)."""
    return {method: answer.FromString(call(method, request)) for method, request, answer in READS}


def mutate_all(server: ServerProcess, call: Caller) -> collections.Counter[tuple[str, str]]:
    codes: collections.Counter[tuple[str, str]] = collections.Counter()
    n = 0
    for method, (base, fresh) in BASES.items():
        for path, edit in edits(base.DESCRIPTOR, base):  # type: ignore[arg-type]
            n += 1
            request = type(base)()
            request.CopyFrom(base)
            edit(request)
            fresh(call, request, path, n)
            try:
                call(method, request)
                code = "OK"
            except grpc.RpcError as error:
                status = error.code()
                assert status not in FORBIDDEN, f"{method} with {path} edited: {status} {error.details()}"
                code = status.name
            codes[(method.rsplit("/", 1)[1], code)] += 1
            assert server.running, f"the server stopped on {method} with {path} edited"
    return codes


def test_one_hostile_field_at_a_time_never_fails_the_server_and_what_was_accepted_recovers(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True)
    with grpc.insecure_channel(server.target) as channel:
        call = Caller(channel)
        call("/tariff.v1.ContractService/CreateCustomer", contracts_pb2.CreateCustomerRequest(id="globex", name="G"))
        codes = mutate_all(server, call)
        dimensions = {"action": "summary", "model": "gpt-4", "complexity": "simple", "data_source": "crm"}
        events = [
            usage_pb2.UsageEvent(
                transaction_id=f"u{i}",
                customer_id="acme",
                event_type="ai_action",
                timestamp_ms=NOW_MS - 1000 * i,
                dimensions=dimensions,
            )
            for i in range(20)
        ]
        call("/tariff.v1.UsageService/IngestUsageBatch", usage_pb2.UsageBatch(events=events))
        before = state(call)
    print(sorted(codes.items()), sum(codes.values()), "requests")
    # Each request kind got past its first checks some of the time: the mutations reached the deeper rules.
    accepted = {method for method, code in codes if code == "OK"}
    assert accepted >= {method.rsplit("/", 1)[1] for method in BASES} - {"SimulateVersion", "PreviewInvoice"}
    server.kill9()
    server.restart()
    with grpc.insecure_channel(server.target) as channel:
        assert state(Caller(channel)) == before, "replaying the journal gave another state"
    assert server.terminate() == 0, "a clean stop (SIGTERM) writes a snapshot and exits 0"
    journal = LmdbJournal(server.data_dir / "journal", map_size_bytes=1 << 20)
    try:
        snapshot = journal.load_snapshot()
        assert snapshot is not None and snapshot[0] == journal.last_seq(), "the restart restores the snapshot alone"
    finally:
        journal.close()
    server.start()
    with grpc.insecure_channel(server.target) as channel:
        assert state(Caller(channel)) == before, "restoring the snapshot gave another state"
