"""An audit of the three forms of the credit check (balance.proto: Authorize, AuthorizeStream, AuthorizeBatches) against
each other and against IngestUsage of the same usage, over the wire: "Prices the described event exactly as ingestion
would" and "Authorize, AuthorizeStream and AuthorizeBatches answer alike" (balance.proto). Each request goes through
all three forms (AuthorizeBatches with a good request on either side of it, which must be answered as if alone),
then the same usage is ingested and its charge (the move of Balance.period_charges) compared with the estimate. Every
amount is worked out by hand from the docs (pricing.proto: Rate, UnitPrice, TieredPrice, PackagePrice, FlatPrice).

Products (card `card`, credits, version 1 in force from 60 days ago):
- `pu` (event `u`, SUM of `n`, pricing dimension `model`): 0.5 per 1000 units, 3 per 1000 for model=gpt4;
- `pg` (event `g`, SUM of `n`) GRADUATED and `pv` (event `v`, SUM of `n`) VOLUME over the tiers: up to 10 at 1 a unit
  plus 5 on entering, up to 100 at 0.5 plus 2, beyond at 0.1;
- `pk` (event `k`, SUM of `n`): packages of 10 at 3; `pf` (event `f`, SUM of `n`): flat 7 per period;
- `m1` (event `m`, SUM of `a`) at 1 and `m2` (event `m`, COUNT) at 0.25: one `m` event with a=x costs x + 0.25.
One server for the module (`--close-grace off`), each test on customers of its own, contracts from this month's
start (ALLOW unless named BLOCK), overage at 1 USD."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess
from tests.test_audit_credits2_wire import CARD_FROM_MS, customer, grant

STREAM_TIMEOUT_S = 20.0
# What a form answered: (allowed, reason, estimated_cost, credits_available, reservation_id, message), or a
# refusal's ("status", code name, details).
Answer = tuple[object, ...]


def catalogue(client: TariffClient) -> None:
    pricing = client.pricing

    def product(product_id: str, event_type: str, **fields: object) -> None:
        made = pricing_pb2.Product(id=product_id, event_type=event_type, **fields)  # type: ignore[arg-type]
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=made))

    product("pu", "u", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["model"])
    for product_id in ("pg", "pv", "pk", "pf"):
        product(product_id, product_id[1], aggregation=pricing_pb2.SUM, value_key="n")
    product("m1", "m", aggregation=pricing_pb2.SUM, value_key="a")
    product("m2", "m", aggregation=pricing_pb2.COUNT)
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    tiers = [
        pricing_pb2.Tier(up_to="10", unit_price="1", flat_price="5"),
        pricing_pb2.Tier(up_to="100", unit_price="0.5", flat_price="2"),
        pricing_pb2.Tier(unit_price="0.1"),
    ]
    rates = [
        pricing_pb2.Rate(
            product_id="pu", match={"model": "*"}, unit=pricing_pb2.UnitPrice(price="0.5", per_units="1000")
        ),
        pricing_pb2.Rate(
            product_id="pu", match={"model": "gpt4"}, unit=pricing_pb2.UnitPrice(price="3", per_units="1000")
        ),
        pricing_pb2.Rate(product_id="pg", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers)),
        pricing_pb2.Rate(product_id="pv", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.VOLUME, tiers=tiers)),
        pricing_pb2.Rate(product_id="pk", package=pricing_pb2.PackagePrice(package_size="10", package_price="3")),
        pricing_pb2.Rate(product_id="pf", flat=pricing_pb2.FlatPrice(price="7")),
        pricing_pb2.Rate(product_id="m1", unit=pricing_pb2.UnitPrice(price="1")),
        pricing_pb2.Rate(product_id="m2", unit=pricing_pb2.UnitPrice(price="0.25")),
    ]
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )
    customer(client, "idn", block=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-authorize-forms")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def ask(
    customer_id: str,
    event_type: str,
    values: Mapping[str, float],
    dimensions: Mapping[str, str] | None = None,
    **fields: object,
) -> balance_pb2.AuthorizeRequest:
    request = balance_pb2.AuthorizeRequest(
        request_id=str(fields.pop("request_id", "q")),
        customer_id=customer_id,
        event_type=event_type,
        values=values,
        dimensions=dimensions or {},
        **fields,  # type: ignore[arg-type]
    )
    return request


def answer_of(answer: balance_pb2.AuthorizeResponse) -> Answer:
    return (
        answer.allowed,
        answer.reason,
        answer.estimated_cost,
        answer.credits_available,
        answer.reservation_id,
        answer.message,
    )


def unary(client: TariffClient, request: balance_pb2.AuthorizeRequest) -> Answer:
    try:
        return answer_of(client.balance.Authorize(request))
    except TariffError as exc:
        return ("status", exc.code.name, exc.details)


def streamed(client: TariffClient, request: balance_pb2.AuthorizeRequest) -> Answer:
    answers = list(client.balance.AuthorizeStream(iter([request]), timeout=STREAM_TIMEOUT_S))
    assert len(answers) == 1
    return answer_of(answers[0])


def batched(
    client: TariffClient, request: balance_pb2.AuthorizeRequest, neighbour: balance_pb2.AuthorizeRequest
) -> Answer:
    """`request` in one AuthorizeBatch between two copies of `neighbour` (a good request), whose answers must be
    what `neighbour` alone gets: one bad request must not sink the rest."""
    alone = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[neighbour])])))
    message = balance_pb2.AuthorizeBatch(requests=[neighbour, request, neighbour])
    results = list(client.balance.AuthorizeBatches(iter([message]), timeout=STREAM_TIMEOUT_S))
    assert len(results) == 1 and len(results[0].responses) == 3
    first, answer, last = results[0].responses
    assert answer_of(first) == answer_of(last) == answer_of(alone[0].responses[0])
    return answer_of(answer)


def charged(client: TariffClient, customer_id: str, event: usage_pb2.UsageEvent) -> Decimal:
    before = Decimal(client.get_balance(customer_id).period_charges)
    ack = client.ingest_batch([event])
    assert ack.accepted == 1, ack
    return Decimal(client.get_balance(customer_id).period_charges) - before


PRICED: list[tuple[str, dict[str, float], dict[str, str], str, str]] = [
    # (event type, values, dimensions, cost of the first event, cost of the same event again)
    # 1500 units at 0.5 per 1000 (no model: "" matches the "*" rate), then 1500 more alike.
    ("u", {"n": 1500}, {}, "0.75", "0.75"),
    # The gpt4 rate is more specific than "*": 1500 x 3 / 1000.
    ("u", {"n": 1500}, {"model": "gpt4"}, "4.5", "4.5"),
    # GRADUATED 15: 10 x 1 + 5 (entering tier 1) + 5 x 0.5 + 2 (entering tier 2) = 19.5; at 30: 15 + 20 x 0.5 + 2 =
    # 27, so the second 15 cost 27 - 19.5 = 7.5.
    ("g", {"n": 15}, {}, "19.5", "7.5"),
    # VOLUME 15: all 15 in tier 2: 15 x 0.5 + 2 = 9.5; at 30: 30 x 0.5 + 2 = 17, so 7.5 more.
    ("v", {"n": 15}, {}, "9.5", "7.5"),
    # VOLUME 150: 150 x 0.1 = 15; at 300: 30, so 15 more.
    ("v", {"n": 150}, {}, "15", "15"),
    # PACKAGE 11: 2 packages of 10 x 3 = 6; at 22: 3 packages = 9, so 3 more.
    ("k", {"n": 11}, {}, "6", "3"),
    # FLAT: 7 once the line's quantity is above zero, nothing more after.
    ("f", {"n": 1}, {}, "7", "0"),
    # Two products: m1 2 x 1 + m2 1 x 0.25 = 2.25, each time.
    ("m", {"a": 2}, {}, "2.25", "2.25"),
]


@pytest.mark.parametrize("block", [False, True], ids=["allow", "block"])
def test_each_price_model_is_estimated_alike_by_the_three_forms_and_charged_as_estimated(
    server: ServerProcess, block: bool
) -> None:
    """balance.proto: Authorize "Prices the described event exactly as ingestion would"; the streams answer alike.
    Each case on a customer of its own with a grant of 1000 (every cost is covered: OK, credits_available 1000 before
    the event, 1000 - the first cost before the second). The estimate of each price model equals the hand amount in
    PRICED, the same from the three forms, and ingesting the event charges exactly that; the second estimate (the
    line then holding the first event's quantity) equals the second event's charge."""
    suffix = "b" if block else "a"
    with server.client() as client:
        for index, (event_type, values, dimensions, first_cost, second_cost) in enumerate(PRICED):
            customer_id = f"p{index}{suffix}"
            customer(client, customer_id, block=block)
            grant(client, customer_id, f"{customer_id}.g", "1000")
            neighbour = ask(customer_id, "m", {"a": 1}, request_id="n")
            available = Decimal(1000)
            for round_, cost in enumerate((first_cost, second_cost)):
                request = ask(customer_id, event_type, values, dimensions)
                want: Answer = (True, "OK", cost, str(available), "", "")
                assert unary(client, request) == want, (event_type, values, dimensions, round_)
                assert streamed(client, request) == want
                assert batched(client, request, neighbour) == want
                event = usage_pb2.UsageEvent(
                    transaction_id=f"t{round_}",
                    customer_id=customer_id,
                    event_type=event_type,
                    timestamp_ms=now_ms(),
                    values=values,
                    dimensions=dimensions,
                )
                assert charged(client, customer_id, event) == Decimal(cost)
                available -= Decimal(cost)


BAD_ID = "bad id!"
BAD_ID_MESSAGE = f"customer_id: {BAD_ID!r} must be 1-128 characters of letters, digits and ._:@-"


@pytest.mark.parametrize(
    ("event_type", "values"),
    [("m", {"a": 1}), ("m", {"a": -1}), ("m", {"a": 1e-50}), ("", {"a": 1})],
    ids=["good-usage", "negative-value", "too-many-decimals", "no-event-type"],
)
def test_a_customer_id_breaking_the_id_rule_is_named_by_every_form_whatever_else_is_wrong(
    server: ServerProcess, event_type: str, values: dict[str, float]
) -> None:
    """balance.proto AuthorizeResponse.reason: "A customer_id that is empty or breaks the id rule ... is
    INVALID_REQUEST, its message naming customer_id" on the streams (unary: INVALID_ARGUMENT naming it), amounts "0".
    Unary Authorize and AuthorizeStream check the customer_id first, so a request whose usage is also malformed (a
    negative value, too many decimals, no event type) is refused for its customer_id; AuthorizeBatches must answer
    it alike, in a message asking for no hold (read in place) and in one that also holds (decoded), and with
    reserve=true."""
    with server.client() as client:
        neighbour = ask("idn", "m", {"a": 1}, request_id="n")
        for reserve in (False, True):
            request = ask(BAD_ID, event_type, values, reserve=reserve)
            assert unary(client, request) == ("status", "INVALID_ARGUMENT", BAD_ID_MESSAGE), reserve
            want: Answer = (False, "INVALID_REQUEST", "0", "0", "", BAD_ID_MESSAGE)
            assert streamed(client, request) == want, reserve
            assert batched(client, request, neighbour) == want, reserve
        # A message with a hold in it takes the decoded path: its plain requests are answered alike.
        hold = ask("idn", "m", {"a": 0}, reserve=True, reservation_id=f"idn-{event_type}-{values['a']}", request_id="h")
        plain = ask(BAD_ID, event_type, values, request_id="p")
        results = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[hold, plain])])))
        assert answer_of(results[0].responses[1]) == (False, "INVALID_REQUEST", "0", "0", "", BAD_ID_MESSAGE)


def test_a_reservation_id_is_one_hold_whichever_form_made_or_repeats_it(server: ServerProcess) -> None:
    """balance.proto reservation_id: "The same id with the same request answers again and holds once; with a
        different request it is ALREADY_EXISTS (on AuthorizeBatches: reason RESERVATION_CONFLICT, in-band)"; README: "a
        hold made through one is the same hold for the other". BLOCK, grant 10. `m` a=3 costs 3.25: held through
        Authorize as r1, then repeated through AuthorizeStream and AuthorizeBatches: the same decision, cost and id,
        available 10 - 3.25 = 6.75 each time, held 3.25 once. `m` a=1 (1.25) held first through AuthorizeBatches as r2,
        then repeated through Authorize and AuthorizeStream: held 4.5, available 5.5. r1 with a=4 is ALREADY_EXISTS on
        Authorize and AuthorizeStream, RESERVATION_CONFLICT in-band on AuthorizeBatches, nothing held, as is r1 with a
    negative value (the id is checked before the usage: docs/architecture.md). Settling r1 with
        an event of a=3 gives the 3.25 back and charges 3.25: charges 3.25, held 1.25, available 10 - 3.25 - 1.25 = 5.5."""
    again = "already held: this reservation was made by an earlier identical request"
    with server.client() as client:
        customer(client, "rid", block=True)
        grant(client, "rid", "rid.g", "10")
        neighbour = ask("rid", "m", {"a": 0}, request_id="n")
        first = ask("rid", "m", {"a": 3}, reserve=True, reservation_id="r1")
        assert unary(client, first) == (True, "OK", "3.25", "6.75", "r1", "")
        assert streamed(client, first) == (True, "OK", "3.25", "6.75", "r1", again)
        assert batched(client, first, neighbour) == (True, "OK", "3.25", "6.75", "r1", again)
        second = ask("rid", "m", {"a": 1}, reserve=True, reservation_id="r2")
        assert batched(client, second, neighbour) == (True, "OK", "1.25", "5.5", "r2", "")
        assert unary(client, second) == (True, "OK", "1.25", "5.5", "r2", again)
        assert streamed(client, second) == (True, "OK", "1.25", "5.5", "r2", again)
        balance = client.get_balance("rid")
        assert (balance.credits_held, balance.credits_available) == ("4.5", "5.5")
        other = ask("rid", "m", {"a": 4}, reserve=True, reservation_id="r1")
        taken = "reservation_id 'r1' is already used by a different request of this customer; nothing was held"
        assert unary(client, other) == ("status", "ALREADY_EXISTS", taken)
        with pytest.raises(TariffError) as ended:
            streamed(client, other)
        assert (ended.value.code.name, ended.value.details) == ("ALREADY_EXISTS", taken)
        assert batched(client, other, neighbour) == (False, "RESERVATION_CONFLICT", "0", "0", "", taken)
        # A taken id is answered before the usage is read (docs/architecture.md: the order of the checks).
        malformed = ask("rid", "m", {"a": -1}, reserve=True, reservation_id="r1")
        assert unary(client, malformed) == ("status", "ALREADY_EXISTS", taken)
        assert batched(client, malformed, neighbour) == (False, "RESERVATION_CONFLICT", "0", "0", "", taken)
        event = usage_pb2.UsageEvent(
            transaction_id="s1",
            customer_id="rid",
            event_type="m",
            timestamp_ms=now_ms(),
            values={"a": 3},
            reservation_id="r1",
        )
        assert charged(client, "rid", event) == Decimal("3.25")
        balance = client.get_balance("rid")
        assert (balance.credits_held, balance.credits_available) == ("1.25", "5.5")


def test_one_bad_request_among_holds_sinks_nothing(server: ServerProcess) -> None:
    """balance.proto AuthorizeBatches: "A hold request that cannot hold is answered in-band ... the other requests
    are answered as usual". BLOCK, grant 10. One message: hold h1 (`m` a=1, 1.25), a hold with a negative value, a
    hold with a zero TTL, one without event type, a plain request naming a reservation_id, a hold of an unknown
    customer, a hold costing 100.25 (denied: 10 - 1.25 = 8.75 available), hold h2 (`m` a=2, 2.25). h1 and h2 hold:
    held 3.5, available 6.5; every other answer is in-band and holds nothing."""
    with server.client() as client:
        customer(client, "mix", block=True)
        grant(client, "mix", "mix.g", "10")
        requests = [
            ask("mix", "m", {"a": 1}, reserve=True, reservation_id="h1", request_id="1"),
            ask("mix", "m", {"a": -1}, reserve=True, reservation_id="bad", request_id="2"),
            ask("mix", "m", {"a": 1}, reserve=True, reservation_ttl=Duration(seconds=0), request_id="3"),
            ask("mix", "", {"a": 1}, reserve=True, request_id="4"),
            ask("mix", "m", {"a": 1}, reservation_id="plain", request_id="5"),
            ask("nobody", "m", {"a": 1}, reserve=True, request_id="6"),
            ask("mix", "m", {"a": 100}, reserve=True, reservation_id="big", request_id="7"),
            ask("mix", "m", {"a": 2}, reserve=True, reservation_id="h2", request_id="8"),
        ]
        results = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)])))
        got = [answer_of(a)[:5] for a in results[0].responses]
        assert got == [
            (True, "OK", "1.25", "8.75", "h1"),
            (False, "INVALID_REQUEST", "0", "8.75", ""),
            (False, "INVALID_REQUEST", "0", "0", ""),
            (False, "INVALID_REQUEST", "0", "0", ""),
            (False, "INVALID_REQUEST", "0", "0", ""),
            (False, "UNKNOWN_CUSTOMER", "0", "0", ""),
            (False, "INSUFFICIENT_CREDIT", "100.25", "8.75", ""),
            (True, "OK", "2.25", "6.5", "h2"),
        ]
        balance = client.get_balance("mix")
        assert (balance.credits_held, balance.credits_available) == ("3.5", "6.5")


@pytest.mark.parametrize(
    ("ttl", "why"),
    [
        (Duration(seconds=0), "must be positive"),
        (Duration(seconds=-1), "must be positive"),
        (Duration(nanos=1), "must be a whole number of milliseconds"),
        (Duration(seconds=3601), "must be at most 3600 s (the server's --reservation-ttl-max-s)"),
    ],
    ids=["zero", "negative", "sub-millisecond", "over-max"],
)
def test_a_bad_reservation_ttl_is_answered_in_band_by_both_streams_and_refused_by_authorize(
    server: ServerProcess, ttl: Duration, why: str
) -> None:
    """balance.proto AuthorizeResponse.reason: INVALID_REQUEST is "answered in-band only on AuthorizeStream and
    AuthorizeBatches (so one bad request does not end the stream); unary Authorize answers ... INVALID_ARGUMENT (with
    the field)". A bad reservation_ttl (3600 s is the default --reservation-ttl-max-s) is that on all three forms:
    INVALID_ARGUMENT naming reservation_ttl on Authorize, INVALID_REQUEST in-band on AuthorizeStream (which then
    answers its next request) and on AuthorizeBatches, nothing held. README "TTL" named AuthorizeBatches alone."""
    message = f"reservation_ttl: {why}"
    with server.client() as client:
        request = ask("idn", "m", {"a": 1}, reserve=True, reservation_ttl=ttl, reservation_id="ttl")
        assert unary(client, request) == ("status", "INVALID_ARGUMENT", message)
        after = ask("idn", "m", {"a": 1}, request_id="after")
        answers = list(client.balance.AuthorizeStream(iter([request, after]), timeout=STREAM_TIMEOUT_S))
        want: Answer = (False, "INVALID_REQUEST", "0", "0", "", message)
        assert [answer_of(a) for a in answers] == [want, unary(client, after)]
        assert batched(client, request, after) == want
        assert client.get_balance("idn").credits_held == "0"


@pytest.mark.parametrize(
    "values",
    [{"a": 1}, {"a": -1}, {"a": 1e-50}, {f"k{i}": 1 for i in range(65)}],
    ids=["good-usage", "negative-value", "too-many-decimals", "too-many-values"],
)
def test_a_well_formed_unknown_customer_is_unknown_on_every_form_with_or_without_a_hold(
    server: ServerProcess, values: dict[str, float]
) -> None:
    """balance.proto AuthorizeResponse.reason: a well-formed unknown customer_id is UNKNOWN_CUSTOMER in-band on the
    streams, NOT_FOUND on unary Authorize; README: Authorize(reserve=true) "decides exactly as Authorize does". Unary
    Authorize(reserve=true) and AuthorizeStream(reserve=true) find the customer before reading the usage, so a
    request of `nobody` is NOT_FOUND / UNKNOWN_CUSTOMER ("customer 'nobody' does not exist", amounts "0") whatever
    its values; the same request through AuthorizeBatches, and every form without reserve, must answer alike."""
    unknown = "customer 'nobody' does not exist"
    with server.client() as client:
        neighbour = ask("idn", "m", {"a": 1}, request_id="n")
        for reserve in (True, False):
            request = ask("nobody", "m", values, reserve=reserve)
            assert unary(client, request) == ("status", "NOT_FOUND", unknown), reserve
            want: Answer = (False, "UNKNOWN_CUSTOMER", "0", "0", "", unknown)
            assert streamed(client, request) == want, reserve
            assert batched(client, request, neighbour) == want, reserve
