"""What the server says when it refuses part of a request, over the wire: a rejection's message names the field
it is about (usage.proto EventRejection.message, balance.proto AuthorizeResponse.message), and quotes what it
refuses cut to a bounded length, so that an answer quoting many long values still fits a gRPC message (the
server's --message-mb-max, 16 MiB by default).

One server for the file, catalogue: product `sum_n` (event type `s`, SUM of value `n`, 1 a unit) on rate card
`card`, in force from 2024-01-01; each test makes its own customers, each with a contract from 5 hours ago."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerProcess

HOUR_MS = 3_600_000
CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
REJECT = usage_pb2.RejectReason
RULE_WHY = "must be 1-128 characters of letters, digits and ._:@-"
STREAM_TIMEOUT_S = 60
# What a quoted customer_id is cut to: the id rule's most characters, so every id within that length shows whole.
QUOTED_CHARS_MAX = 128


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-messages")
    process = ServerProcess(root / "data")
    process.start()
    try:
        with process.client() as client:
            product = pricing_pb2.Product(id="sum_n", event_type="s", aggregation=pricing_pb2.SUM, value_key="n")
            client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
            rate = pricing_pb2.Rate(product_id="sum_n", unit=pricing_pb2.UnitPrice(price="1"))
            client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
            client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[rate])
            )
            client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
            )
        yield process
    finally:
        process.stop()
        print(f"--- {process!r} (tail) ---\n{process.log_tail(40)}")


def customer(client: TariffClient, customer_id: str) -> int:
    """The customer and its contract on `card` from the hour 5 hours ago; returns the contract's start."""
    start_ms = now_ms() // HOUR_MS * HOUR_MS - 5 * HOUR_MS
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}", customer_id=customer_id, rate_card_id="card", starting_at=stamp(start_ms)
        )
    )
    return start_ms


def event(
    transaction_id: str,
    customer_id: str,
    at_ms: int,
    values: dict[str, float] | None = None,
    dimensions: dict[str, str] | None = None,
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="s",
        timestamp_ms=at_ms,
        values={"n": 1.0} if values is None else values,
        dimensions=dimensions or {},
    )


def rejections(client: TariffClient, *events: usage_pb2.UsageEvent) -> list[tuple[str, int, str]]:
    ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=events))
    return [(r.transaction_id, r.reason, r.message) for r in ack.rejected]


def test_an_event_with_too_many_entries_is_refused_naming_the_map_that_holds_them(server: ServerProcess) -> None:
    """usage.proto: dimensions and values hold at most 64 entries each. 65 values and 65 dimensions were both
    refused 'dimensions and values hold at most 64 entries each', naming neither map."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "crowded")
        many_values = {f"v{i:02}": 1.0 for i in range(64)} | {"n": 1.0}
        many_dimensions = {f"d{i:02}": "x" for i in range(65)}
        refused = rejections(
            client,
            event("values", "crowded", at_ms, values=many_values),
            event("dimensions", "crowded", at_ms, dimensions=many_dimensions),
        )
        assert refused == [
            ("values", REJECT.INVALID_EVENT, "values: at most 64 entries"),
            ("dimensions", REJECT.INVALID_EVENT, "dimensions: at most 64 entries"),
        ]


def test_a_values_key_too_long_is_refused_naming_the_key(server: ServerProcess) -> None:
    """A values key longer than 256 bytes was refused 'values keys are at most 256 bytes', saying neither which
    key nor where; it now names it as a long dimension is named: its first 32 characters, quoted."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "keyed")
        long_key = "it's" + "v" * 300
        refused = rejections(client, event("long", "keyed", at_ms, values={"n": 1.0, long_key: 1.0}))
        quoted = '"' + long_key[:32] + '"'  # quoted as Python would: it holds a '
        assert refused == [("long", REJECT.INVALID_EVENT, f"values[{quoted}]: keys are at most 256 bytes")]


def test_an_event_outside_every_contract_is_refused_naming_its_timestamp_ms(server: ServerProcess) -> None:
    """NO_ACTIVE_CONTRACT said 'customer 'x' has no contract covering 1700000000000', not naming the field."""
    with server.client() as client:
        start_ms = customer(client, "early")
        refused = rejections(client, event("before", "early", start_ms - 1))
        message = f"customer 'early' has no contract covering timestamp_ms {start_ms - 1}"
        assert refused == [("before", REJECT.NO_ACTIVE_CONTRACT, message)]


def test_authorize_without_a_contract_in_force_says_it_decided_now(server: ServerProcess) -> None:
    """An AuthorizeRequest has no timestamp_ms: it is decided now, and its NO_ACTIVE_CONTRACT says so rather than
    naming the event field."""
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="later", name="later"))
        starts_ms = (now_ms() // HOUR_MS + 2) * HOUR_MS
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-later", customer_id="later", rate_card_id="card", starting_at=stamp(starts_ms)
            )
        )
        request = balance_pb2.AuthorizeRequest(request_id="q", customer_id="later", event_type="s", values={"n": 1.0})
        before_ms = now_ms()
        answer = client.balance.Authorize(request)
        (streamed,) = list(client.balance.AuthorizeStream(iter([request]), timeout=STREAM_TIMEOUT_S))
        (batched,) = list(
            client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[request])]), timeout=60)
        )
        for decided in (answer, streamed, batched.responses[0]):
            assert (decided.allowed, decided.reason) == (False, "NO_ACTIVE_CONTRACT")
            prefix, _, rest = decided.message.partition(" now (")
            assert prefix == "customer 'later' has no contract covering", decided.message
            assert rest.endswith(")") and before_ms <= int(rest[:-1]) <= now_ms(), decided.message


def test_an_authorize_batch_result_quoting_long_customer_ids_still_reaches_the_client(server: ServerProcess) -> None:
    """balance.proto AuthorizeBatches: every request is answered in-band. Each answer to a customer_id that
    breaks the id rule quoted it whole, escaped (each backslash doubled): 250 requests naming a 60 KB customer
    id of backslashes (15 MB, under the 16 MiB message limit) made a 30 MB AuthorizeBatchResult that gRPC
    refused to send, and the stream ended RESOURCE_EXHAUSTED with no answer. The quote is now cut to the id
    rule's 128 characters; the decisions stay INVALID_REQUEST."""
    odd = "\\" * 60_000
    requests = [
        balance_pb2.AuthorizeRequest(request_id=f"q{i}", customer_id=odd, event_type="s", values={"n": 1.0})
        for i in range(250)
    ]
    quoted = "'" + "\\\\" * QUOTED_CHARS_MAX + "'…"
    with server.client() as client:
        (result,) = list(
            client.balance.AuthorizeBatches(
                iter([balance_pb2.AuthorizeBatch(requests=requests)]), timeout=STREAM_TIMEOUT_S
            )
        )
        answers = [(a.request_id, a.allowed, a.reason, a.message) for a in result.responses]
        assert answers == [(f"q{i}", False, "INVALID_REQUEST", f"customer_id: {quoted} {RULE_WHY}") for i in range(250)]


def test_an_authorize_stream_answer_quoting_a_long_customer_id_still_reaches_the_client(server: ServerProcess) -> None:
    """balance.proto AuthorizeStream: a malformed request is answered INVALID_REQUEST in-band and the stream goes
    on. A 9 MB customer_id of backslashes was quoted whole and escaped, an 18 MB answer gRPC refused to send:
    the stream ended RESOURCE_EXHAUSTED, the requests after it unanswered. It is quoted cut now, as AuthorizeBatches
    quotes it."""
    odd = "\\" * 9_000_000
    with server.client() as client:
        customer(client, "streamer")
        sent = [
            balance_pb2.AuthorizeRequest(request_id="odd", customer_id=odd, event_type="s", values={"n": 1.0}),
            balance_pb2.AuthorizeRequest(request_id="fine", customer_id="streamer", event_type="s", values={"n": 1.0}),
        ]
        answers = list(client.balance.AuthorizeStream(iter(sent), timeout=STREAM_TIMEOUT_S))
        quoted = "'" + "\\\\" * QUOTED_CHARS_MAX + "'…"
        assert [(a.request_id, a.reason, a.message) for a in answers] == [
            ("odd", "INVALID_REQUEST", f"customer_id: {quoted} {RULE_WHY}"),
            ("fine", "OVERAGE_ALLOWED", "beyond available credit: billed as overage"),  # no credit granted
        ]
