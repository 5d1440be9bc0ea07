"""Text identity over the wire: whether two texts a client sends are the same one, and every RPC agreeing on it.

The rules (contracts.proto, usage.proto, pricing.proto, README "Ids" and "Limits"): an id a client chooses or names
(a customer's, contract's, grant's, ...) is 1-128 ASCII letters, digits and `. _ : @ -`; anything else, a composed
or decomposed "é", a full-width letter, a zero-width space, a space, a control character, is INVALID_ARGUMENT
naming the field on every RPC (UNKNOWN_CUSTOMER naming customer_id and the rule in a usage event), quoted as
Python's repr quotes it. Free texts (a transaction id, an event's dimension keys and values, a rate's match, a
reservation id) are compared as their UTF-8 bytes, never normalised: "café" composed and decomposed, "gpt-4" and
"gpt‑4" (a non-breaking hyphen), "a" and "A" are different texts; their limits count UTF-8 bytes (256), in the
kernel and in the control plane alike. A UsageBatch whose strings are not UTF-8 does not decode: INVALID_ARGUMENT,
the batch refused whole.

Catalogue: product `tok` (event `call`, SUM of `n`, priced by `model`) on card `card`: 1 a unit, 5 for model
"gpt-4", 7 for model "café" (composed). Customer `acme` (contract from 5 hours ago, ALLOW overage at 1).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tariff import TariffClient, TariffError
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, release, serving, this_hour_ms, unit, varint
from tests.serverproc import ServerProcess
from tests.test_server_auth import Keys

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
CUSTOMER = "acme"
RULE_WHY = "must be 1-128 characters of letters, digits and ._:@-"
NFC = "caf\u00e9"
NFD = "cafe\u0301"
p = pricing_pb2


def catalogue(client: TariffClient) -> None:
    product = p.Product(id="tok", event_type="call", aggregation=p.SUM, value_key="n", pricing_dimensions=["model"])
    client.pricing.CreateProduct(p.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rates = [unit("tok", "1"), unit("tok", "5", model="gpt-4"), unit("tok", "7", model=NFC)]
    client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        p.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )
    open_contract(client, CUSTOMER, "acme-c", this_hour_ms() - 5 * HOUR_MS, rate_card_id="card")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-unicode")
    # Snapshots every 3 records: a restart reads the dedupe table from a snapshot's segments, then the journal.
    yield from serving(ServerProcess(root / "data", extra_args=["--snapshot-every", "3"]), catalogue)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[TariffClient]:
    with server.client() as made:
        yield made


def event(tx: str, n: float = 1.0, customer_id: str = CUSTOMER, **dimensions: str) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=tx,
        customer_id=customer_id,
        event_type="call",
        timestamp_ms=this_hour_ms() - HOUR_MS,
        dimensions=dimensions,
        values={"n": n},
    )


def violation(call: Callable[..., object], *args: object) -> tuple[grpc.StatusCode, str, str]:
    """(status, the first BadRequest violation's field, its description) of `call(*args)`, refused."""
    with pytest.raises(TariffError) as failed:
        call(*args)
    status = rpc_status.from_call(failed.value.__cause__)
    field, why = "", failed.value.details
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                field, why = bad.field_violations[0].field, bad.field_violations[0].description
    return failed.value.code, field, why


# --- dimension values and rate matches: bytes, never normalised -------------------------------------------------


def test_dimension_values_match_rates_byte_for_byte(client: TariffClient) -> None:
    # model -> the unit price the event is rated at: only the exact bytes of a rate's match select it.
    cases = {
        "gpt-4": "5",
        "gpt\u20114": "1",  # non-breaking hyphen
        "GPT-4": "1",
        "gpt-4 ": "1",
        "\uff47\uff50\uff54-4": "1",  # full-width gpt
        "gpt-4\u200b": "1",  # zero-width space
        NFC: "7",
        NFD: "1",
    }
    for model, price in cases.items():
        answer = client.authorize(CUSTOMER, "call", {"model": model}, {"n": 1.0})
        assert answer.estimated_cost == price, (model, answer)
    before = client.get_balance(CUSTOMER).period_charges
    ack = client.ingest_batch([event(f"dim-{i}", model=m) for i, m in enumerate(cases)])
    assert (ack.accepted, list(ack.rejected)) == (len(cases), [])
    after = client.get_balance(CUSTOMER).period_charges
    assert float(after) - float(before) == 5 + 1 + 1 + 1 + 1 + 1 + 7 + 1
    # The invoice keeps both forms of "café" as two lines, each its own bytes percent-escaped.
    i = invoices_pb2
    request = i.PreviewInvoiceRequest(customer_id=CUSTOMER)
    invoice = client.invoices.PreviewInvoice(request)
    ids = [line.line_id for line in invoice.lines]
    assert {"tok;model=caf%C3%A9", "tok;model=cafe%CC%81", "tok;model=gpt%E2%80%914"} <= set(ids)
    # Lines run by their values' UTF-8 bytes: "cafe" + U+0301 (65 CC 81) before "caf" + U+00E9 (C3 A9).
    assert ids.index("tok;model=cafe%CC%81") < ids.index("tok;model=caf%C3%A9")
    # ExplainLineItem finds each line by its own id only: not by the other form, nor by another escape of it.
    for line_id, tx in [("tok;model=caf%C3%A9", "dim-6"), ("tok;model=cafe%CC%81", "dim-7")]:
        explain = i.ExplainLineItemRequest(customer_id=CUSTOMER, line_id=line_id, period_start=invoice.period_start)
        assert [e.transaction_id for e in client.invoices.ExplainLineItem(explain).events] == [tx]
    for line_id in ["tok;model=caf%c3%a9", f"tok;model={NFC}"]:
        explain = i.ExplainLineItemRequest(customer_id=CUSTOMER, line_id=line_id, period_start=invoice.period_start)
        assert violation(client.invoices.ExplainLineItem, explain)[0] == grpc.StatusCode.NOT_FOUND


def test_rate_match_is_stored_as_sent(client: TariffClient) -> None:
    version = client.pricing.GetVersion(p.GetVersionRequest(rate_card_id="card", version=1))
    matches = [dict(rate.match) for rate in version.rates]
    assert {"model": NFC} in matches


# --- transaction ids: two forms are two events, on both RPCs and across a restart -----------------------------


def test_transaction_ids_in_two_forms_are_two_events(server: ServerProcess) -> None:
    ids = [f"tx-{NFC}", f"tx-{NFD}", "tx-\uff41", "tx-a", "tx-A", "tx-a\u200b"]
    with server.client() as client:
        ack = client.ingest_batch([event(tx) for tx in ids])
        assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (len(ids), 0, [])
        streamed = list(client.usage.IngestUsage(iter([usage_pb2.UsageBatch(events=[event(tx) for tx in ids])])))
        assert [(a.accepted, a.duplicates) for a in streamed] == [(0, len(ids))]
        conflict = client.ingest_batch([event(f"tx-{NFD}", n=2.0)])
        assert [usage_pb2.RejectReason.Name(r.reason) for r in conflict.rejected] == ["DUPLICATE_CONFLICT"]
        for more in range(4):  # records past a snapshot
            assert client.ingest_batch([event(f"tx-more-{more}")]).accepted == 1
    server.restart()
    with server.client() as client:
        ack = client.ingest_batch([event(tx) for tx in ids])
        assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (0, len(ids), [])


# --- limits count UTF-8 bytes, in the kernel and the control plane alike ----------------------------------------


def test_event_texts_are_held_to_256_bytes_not_characters(client: TariffClient) -> None:
    fits, over = "\u00e9" * 128, "\u00e9" * 129  # 256 and 258 bytes, 128 and 129 characters
    ack = client.ingest_batch([event(fits), event(over), event("len-d1", model=fits), event("len-d2", model=over)])
    assert ack.accepted == 2
    reasons = [(r.index, usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected]
    assert reasons == [(1, "INVALID_EVENT"), (3, "INVALID_EVENT")]
    assert "256 bytes" in ack.rejected[0].message and "256 bytes" in ack.rejected[1].message
    # Authorize: the same dimension limit; a reservation id is held to the same 256 bytes.
    assert client.authorize(CUSTOMER, "call", {"model": fits}, {"n": 1.0}).estimated_cost == "1"
    code, field, why = violation(lambda: client.authorize(CUSTOMER, "call", {"model": over}, {"n": 1.0}))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "dimensions"), why
    assert why == "dimensions['model']: keys and values are at most 256 bytes", why
    held = client.authorize(CUSTOMER, "call", {}, {"n": 1.0}, reserve=True, reservation_id=fits)
    assert held.reservation_id == fits
    code, field, _ = violation(
        lambda: client.authorize(CUSTOMER, "call", {}, {"n": 1.0}, reserve=True, reservation_id=over)
    )
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "reservation_id")


def test_customer_name_is_held_to_256_bytes(client: TariffClient) -> None:
    made = client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="named", name="\u00e9" * 128))
    assert made.name == "\u00e9" * 128
    code, field, _ = violation(
        lambda: client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="named2", name="\u00e9" * 129))
    )
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "name")


# --- customer ids: every form outside the rule refused alike, quoted alike ----------------------------------------

# Each breaks the id rule; repr() is how every message quotes it (README "Ids").
NOT_IDS = [NFC, NFD, "\uff41cme", "acme\u200b", " acme", "acme ", "acme\x7f", "acme\u00a0", "acme\u2028", "\u202eacme"]
# Past 128 characters: quoted by its first 128 characters (not bytes), "…" after the quote.
LONG_NOT_IDS = ["a" * 129, "\u00e9" * 200, "\U0001f600" * 130]


def customer_calls(client: TariffClient) -> dict[str, tuple[str, Callable[[str], object]]]:
    """RPC -> (the field naming the customer, the call with that field set)."""
    start = stamp(this_hour_ms())
    c, i = contracts_pb2, invoices_pb2
    return {
        "CreateCustomer": ("id", lambda v: client.contracts.CreateCustomer(c.CreateCustomerRequest(id=v))),
        "GetCustomer": ("id", lambda v: client.contracts.GetCustomer(c.GetCustomerRequest(id=v))),
        "GrantCredits": (
            "grant.customer_id",
            lambda v: client.contracts.GrantCredits(
                c.GrantCreditsRequest(grant=c.Grant(id="g-x", customer_id=v, amount="1", starts_at=start))
            ),
        ),
        "Authorize": ("customer_id", lambda v: client.authorize(v, "call", {}, {"n": 1.0})),
        "GetBalance": ("customer_id", lambda v: client.get_balance(v)),
        "PreviewInvoice": (
            "customer_id",
            lambda v: client.invoices.PreviewInvoice(i.PreviewInvoiceRequest(customer_id=v)),
        ),
        "ExplainLineItem": (
            "customer_id",
            lambda v: client.invoices.ExplainLineItem(i.ExplainLineItemRequest(customer_id=v, line_id="tok")),
        ),
        "ListInvoices": ("customer_id", lambda v: client.invoices.ListInvoices(i.ListInvoicesRequest(customer_id=v))),
    }


@pytest.mark.parametrize("value", NOT_IDS + LONG_NOT_IDS, ids=lambda v: ascii(v)[:40])
def test_customer_ids_outside_the_rule_are_refused_and_quoted_alike(client: TariffClient, value: str) -> None:
    quoted = repr(value) if len(value) <= 128 else f"{value[:128]!r}…"
    expected = f"{quoted} {RULE_WHY}"
    for rpc, (field, call) in customer_calls(client).items():
        assert violation(call, value) == (grpc.StatusCode.INVALID_ARGUMENT, field, expected), rpc
    ack = client.ingest_batch([event(f"who-{zlib.crc32(value.encode())}", customer_id=value)])
    assert [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["UNKNOWN_CUSTOMER"]
    assert ack.rejected[0].message == f"customer_id: {expected}, so no customer has it"
    # The streams answer in-band, quoting it the same way.
    asked = balance_pb2.AuthorizeRequest(request_id="r", customer_id=value, event_type="call", values={"n": 1.0})
    streamed = list(client.balance.AuthorizeStream(iter([asked])))
    batched = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[asked])])))
    for answer in (streamed[0], batched[0].responses[0]):
        assert (answer.allowed, answer.reason, answer.message) == (False, "INVALID_REQUEST", f"customer_id: {expected}")


def test_customer_id_case_is_another_customer(client: TariffClient) -> None:
    for rpc, (_, call) in customer_calls(client).items():
        if rpc == "CreateCustomer":
            continue
        code, _, why = violation(call, "ACME")
        assert code == grpc.StatusCode.NOT_FOUND and "'ACME'" in why, (rpc, code, why)
    ack = client.ingest_batch([event("who-ACME", customer_id="ACME")])
    assert [(usage_pb2.RejectReason.Name(r.reason), r.message) for r in ack.rejected] == [
        ("UNKNOWN_CUSTOMER", "customer 'ACME' does not exist")
    ]


# --- a UsageBatch whose strings are not UTF-8 does not decode: refused whole, on both RPCs ----------------------


def _field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def raw_event(tx: bytes, customer_id: bytes, model: bytes = b"gpt-4", key: bytes = b"model") -> bytes:
    value = _field(1, b"n") + bytes([0x11]) + struct.pack("<d", 1.0)
    stamp_field = bytes([0x20]) + varint(this_hour_ms() - HOUR_MS)
    body = _field(1, tx) + _field(2, customer_id) + _field(3, b"call") + stamp_field
    return body + _field(5, _field(1, key) + _field(2, model)) + _field(6, value)


NOT_UTF8 = {
    "customer_id": raw_event(b"bad-c", b"acme\xff"),
    "transaction_id": raw_event(b"bad-t\xc3", CUSTOMER.encode()),
    "dimension value": raw_event(b"bad-v", CUSTOMER.encode(), model=b"caf\xe9"),  # Latin-1 "café"
    "dimension key": raw_event(b"bad-k", CUSTOMER.encode(), key=b"mod\xed\xa0\x80el"),  # an encoded surrogate
}


@pytest.mark.parametrize("what", list(NOT_UTF8))
def test_not_utf8_refuses_the_batch_whole_on_both_rpcs(server: ServerProcess, what: str) -> None:
    good = raw_event(f"good-{what}".encode(), CUSTOMER.encode())
    data = _field(1, b"b1") + _field(2, good) + _field(2, NOT_UTF8[what])
    with grpc.insecure_channel(server.target) as channel:
        unary = channel.unary_unary(
            "/tariff.v1.UsageService/IngestUsageBatch", response_deserializer=usage_pb2.IngestAck.FromString
        )
        with pytest.raises(grpc.RpcError) as failed:
            unary(data, timeout=10)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()
        assert "not UTF-8" in (failed.value.details() or ""), failed.value.details()
        stream = channel.stream_stream(
            "/tariff.v1.UsageService/IngestUsage", response_deserializer=usage_pb2.IngestAck.FromString
        )
        with pytest.raises(grpc.RpcError) as ended:
            list(stream(iter([data]), timeout=10))
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ended.value.details()
    # Nothing of it was applied: the good event of the batch is new when sent alone.
    with server.client() as client:
        again = client.ingest_batch([event(f"good-{what}", model="gpt-4")])
        assert (again.accepted, again.duplicates) == (1, 0)


# --- `tariff keys new --customers`: an id breaking the rule is a usage error, never silently another id --------


def _keys_new(path: Path, customers: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "server.cli", "keys", "new", "--name", "portal", "--role", "read"]
    return subprocess.run(
        [*command, "--customers", customers, "--file", str(path)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("customers", ["acme\u00a0", "\u3000acme", "acme\n", "acme\u2028,beta", "acme\x85"], ids=ascii)
def test_keys_new_refuses_a_customer_id_it_would_have_to_trim(tmp_path: Path, customers: str) -> None:
    path = tmp_path / "keys.json"
    done = _keys_new(path, customers)
    assert done.returncode == 2, (done.returncode, done.stderr, path.read_text() if path.exists() else "")
    assert "is not a customer id" in done.stderr and not path.exists()


def test_keys_new_drops_the_spaces_around_each_id(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    done = _keys_new(path, " acme , beta")
    assert done.returncode == 0, done.stderr
    assert [entry["customers"] for entry in json.loads(path.read_text())["keys"]] == [["acme", "beta"]]


# --- a key restricted to customers: every RPC refuses another id alike, however it differs ---------------------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Keys]]:
    root: Path = tmp_path_factory.mktemp("audit-unicode-keys")
    keys = Keys(root / "keys.json", {"ops": ("admin", None), "gw": ("admin", [CUSTOMER])})
    process = ServerProcess(root / "data", extra_args=keys.args, api_key=keys.key["ops"])
    for started in serving(process, catalogue):
        yield started, keys


@pytest.mark.parametrize("value", ["ACME", "acme\u200b", NFC, "nobody", "a" * 200], ids=lambda v: ascii(v)[:20])
def test_a_restricted_key_refuses_every_other_form_alike(keyed: tuple[ServerProcess, Keys], value: str) -> None:
    server, keys = keyed
    quoted = repr(value) if len(value) <= 128 else f"{value[:128]!r}…"
    denied = f"key 'gw' may not touch customer {quoted}"
    with server.client(api_key=keys.key["gw"]) as client:
        for rpc, (field, call) in customer_calls(client).items():
            code, _, why = violation(call, value)
            assert (code, why) == (grpc.StatusCode.PERMISSION_DENIED, f"{field}: {denied}"), rpc
        code, _, why = violation(lambda: client.ingest_batch([event("keyed", customer_id=value)]))
        assert (code, why) == (
            grpc.StatusCode.PERMISSION_DENIED,
            f"events[0]: {denied}; nothing in this batch was applied",
        )
        asked = balance_pb2.AuthorizeRequest(request_id="r", customer_id=value, event_type="call", values={"n": 1.0})
        batches = client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[asked])]))
        code, _, why = violation(lambda: list(batches))
        assert code == grpc.StatusCode.PERMISSION_DENIED and denied in why, why


def test_not_utf8_authorize_requests_are_refused_naming_request_or_the_batched_requests_field(
    server: ServerProcess,
) -> None:
    asked = _field(1, b"r1") + _field(2, b"acme\xff") + _field(3, b"call")
    with grpc.insecure_channel(server.target) as channel:
        unary = channel.unary_unary(
            "/tariff.v1.BalanceService/Authorize", response_deserializer=balance_pb2.AuthorizeResponse.FromString
        )
        batches = channel.stream_stream(
            "/tariff.v1.BalanceService/AuthorizeBatches",
            response_deserializer=balance_pb2.AuthorizeBatchResult.FromString,
        )
        calls = [
            (lambda: unary(asked, timeout=10), "request: "),
            # An AuthorizeBatch names the request and field, as a UsageBatch names the event and field.
            (lambda: list(batches(iter([_field(1, asked)]), timeout=10)), "requests[0].customer_id: "),
        ]
        for call, named in calls:
            with pytest.raises(grpc.RpcError) as failed:
                call()
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = failed.value.details() or ""
            assert details.startswith(named) and "UTF-8" in details, details


def test_reservation_ids_in_two_forms_are_two_holds(client: TariffClient) -> None:
    holder = "holder"
    open_contract(client, holder, "holder-c", this_hour_ms() - 5 * HOUR_MS, rate_card_id="card")
    grant = contracts_pb2.Grant(
        id="holder-g", customer_id=holder, kind=contracts_pb2.PROMOTIONAL, amount="100", starts_at=stamp(CARD_FROM_MS)
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    held = client.authorize(holder, "call", {}, {"n": 3.0}, reserve=True, reservation_id=f"hold-{NFC}")
    assert (held.allowed, held.reservation_id, held.estimated_cost) == (True, f"hold-{NFC}", "3")
    code, _, why = violation(release, client, holder, f"hold-{NFD}")
    assert code == grpc.StatusCode.NOT_FOUND, why
    settle = event("settle-nfd", customer_id=holder)
    settle.reservation_id = f"hold-{NFD}"
    ack = client.ingest_batch([settle])
    assert [(n.reservation_id, usage_pb2.NoticeReason.Name(n.reason)) for n in ack.notices] == [
        (f"hold-{NFD}", "NOTICE_RESERVATION_UNKNOWN")
    ]
    # The event charged 1 (paid from the grant); the NFC hold still holds its 3, released now.
    assert release(client, holder, f"hold-{NFC}") == "3"


def _authorize_three_ways(client: TariffClient, asked: balance_pb2.AuthorizeRequest) -> list[tuple[str, str]]:
    """(refusal details or "OK") of `asked` sent on Authorize, AuthorizeStream and AuthorizeBatches."""
    batch = balance_pb2.AuthorizeBatch(requests=[asked])
    calls: list[Callable[[], object]] = [
        lambda: client.balance.Authorize(asked),
        lambda: list(client.balance.AuthorizeStream(iter([asked]))),
        lambda: list(client.balance.AuthorizeBatches(iter([batch]))),
    ]
    answers: list[tuple[str, str]] = []
    for call in calls:
        try:
            call()
            answers.append(("OK", ""))
        except TariffError as e:
            answers.append((e.code.name, e.details))
    return answers


def test_request_and_batch_ids_are_held_to_256_bytes_alike(client: TariffClient) -> None:
    fits, over = "\u00e9" * 128, "\u00e9" * 129
    asked = balance_pb2.AuthorizeRequest(request_id=fits, customer_id=CUSTOMER, event_type="call", values={"n": 1.0})
    assert _authorize_three_ways(client, asked) == [("OK", "")] * 3
    asked.request_id = over
    refused = "must be at most 256 bytes"
    assert _authorize_three_ways(client, asked) == [
        ("INVALID_ARGUMENT", f"request_id: {refused}"),
        ("INVALID_ARGUMENT", f"request_id: {refused}"),
        ("INVALID_ARGUMENT", f"requests[0].request_id: {refused}"),
    ]
    assert client.ingest_batch([event("bid-1")], batch_id=fits).batch_id == fits
    code, field, _ = violation(client.ingest_batch, [event("bid-2")], over)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "batch_id")


@pytest.mark.parametrize("value", ["acme-c\u200b", "b" * 200], ids=lambda v: ascii(v)[:20])
def test_a_restricted_key_quotes_a_contract_id_as_every_message_does(
    keyed: tuple[ServerProcess, Keys], value: str
) -> None:
    server, keys = keyed
    quoted = repr(value) if len(value) <= 128 else f"{value[:128]!r}…"
    with server.client(api_key=keys.key["gw"]) as client:
        code, _, why = violation(client.contracts.GetContract, contracts_pb2.GetContractRequest(id=value))
    assert (code, why) == (grpc.StatusCode.PERMISSION_DENIED, f"id: key 'gw' may not touch contract {quoted}")
