"""The size checks made before a change (ClosePeriod, AddOverride, SetTopUpPolicy, CreateContract,
CreateDraftVersion refused before the change when their answer would not fit --message-mb-max) leave the normal
paths, under the default limit, as README and the protos say, over the wire: ClosePeriod's refusals (a period not
ended: FAILED_PRECONDITION naming its end; no period start: INVALID_ARGUMENT naming the nearest; an unknown
customer: NOT_FOUND), closing a switched customer's periods, a retry of a close answering the same invoice (after
kill -9 too), with --close-grace off and on; retries of AddOverride (at the 1,000-overrides cap too),
SetTopUpPolicy, CreateContract and CreateDraftVersion answering the same; every refusal changing nothing.

Catalogue: product `calls` (event type `c`, SUM of `n`) at 1 credit a unit on rate card `card`, in force from
2024-01-01; contracts overage at 1 USD a credit, so a unit costs 1.00 USD."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, preview, refusal, serving, this_hour_ms
from tests.serverproc import ServerProcess

JAN_2024_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
FEB_2024_MS = 1_706_745_600_000  # 2024-02-01T00:00:00Z
FEB_15_2024_MS = FEB_2024_MS + 14 * 86_400_000
MAR_2024_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z
MAR_15_2024_MS = MAR_2024_MS + 14 * 86_400_000
DAY_MS = 86_400_000


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(
        id="calls", event_type="c", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["route"]
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="1"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[rate]))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_2024_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("audit-prechecks")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


@pytest.fixture(scope="module")
def graced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("audit-prechecks-grace")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "24h"]), catalogue)


def audit_count(client: TariffClient) -> int:
    """Every entry of the audit log, page by page."""
    count, after_seq = 0, 0
    while True:
        page = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=after_seq, page_size=1000))
        count += len(page.entries)
        if not page.next_after_seq or not page.entries:
            return count
        after_seq = page.next_after_seq


def use(client: TariffClient, customer_id: str, at_ms: int, units: float, key: str) -> None:
    event = usage_pb2.UsageEvent(
        transaction_id=key, customer_id=customer_id, event_type="c", timestamp_ms=at_ms, values={"n": units}
    )
    ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[event]))
    assert ack.accepted == 1 and not ack.rejected, ack.rejected


def close(client: TariffClient, customer_id: str, start_ms: int) -> invoices_pb2.Invoice:
    request = invoices_pb2.ClosePeriodRequest(customer_id=customer_id, period_start=stamp(start_ms))
    invoice: invoices_pb2.Invoice = client.invoices.ClosePeriod(request)
    return invoice


def test_close_refusals_change_nothing_and_a_retry_answers_the_same_after_kill9(server: ServerProcess) -> None:
    """Customer `a` on `card` from 2024-01-01, 5 units on 2024-01-15: January closes as 5.00 USD. The running
    period is FAILED_PRECONDITION naming its end, 2024-01-02 INVALID_ARGUMENT naming 2024-01-01, an unknown
    customer NOT_FOUND; none is in the audit log. A retry answers the same invoice, after kill -9 too."""
    with server.client() as client:
        open_contract(client, "a", "k-a", JAN_2024_MS, rate_card_id="card")
        use(client, "a", JAN_2024_MS + 14 * DAY_MS, 5, "a-1")
        running = preview(client, "a", this_hour_ms())
        before, balance = audit_count(client), client.get_balance("a")
        start_ms = running.period_start.ToMilliseconds()
        code, message = refusal(lambda: close(client, "a", start_ms))
        end_iso = running.period_end.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S")
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "has not ended" in message and end_iso in message
        code, message = refusal(lambda: close(client, "a", JAN_2024_MS + DAY_MS))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "period_start" in message, message
        assert "nearest period start is 2024-01-01T00:00:00" in message, message
        code, message = refusal(lambda: close(client, "nobody", JAN_2024_MS))
        assert code == grpc.StatusCode.NOT_FOUND and "nobody" in message, message
        code, message = refusal(lambda: close(client, "a", JAN_2024_MS - 31 * DAY_MS))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "nearest period start is 2024-01-01T00:00:00" in message
        code, message = refusal(lambda: close(client, "", JAN_2024_MS))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "customer_id" in message, message
        assert audit_count(client) == before and client.get_balance("a") == balance
        draft = preview(client, "a", JAN_2024_MS)
        first = close(client, "a", JAN_2024_MS)
        assert first.status == invoices_pb2.INVOICE_FINAL and first.total_due == "5.00", first
        draft.invoice_number, draft.status = first.invoice_number, first.status
        draft.closed_at.CopyFrom(first.closed_at)
        assert draft == first
        assert close(client, "a", JAN_2024_MS) == first
        closed = audit_count(client)
    server.kill9()
    server.restart()
    with server.client() as client:
        assert close(client, "a", JAN_2024_MS) == first
        assert audit_count(client) == closed


def test_a_switched_customer_closes_each_contracts_period(server: ServerProcess) -> None:
    """Customer `s`: k1 from 2024-01-01 ending before 2024-02-15 (its last period keeps its monthly end, 03-01), k2
    from 2024-02-15 (periods from the 15th). 2 units on 02-10 (k1), 3 units on 02-20 (k2): the period from 02-01
    closes as 2.00, the one from 02-15 as 3.00; 02-01 is not k2's start, 02-15 not k1's."""
    with server.client() as client:
        open_contract(client, "s", "k1", JAN_2024_MS, FEB_15_2024_MS, rate_card_id="card")
        open_contract(client, "s", "k2", FEB_15_2024_MS, rate_card_id="card")
        use(client, "s", FEB_2024_MS + 9 * DAY_MS, 2, "s-1")
        use(client, "s", FEB_2024_MS + 19 * DAY_MS, 3, "s-2")
        draft = preview(client, "s", FEB_2024_MS)
        old = close(client, "s", FEB_2024_MS)
        draft.invoice_number, draft.status = old.invoice_number, old.status
        draft.closed_at.CopyFrom(old.closed_at)
        assert draft == old
        assert (old.total_due, old.period_end.ToMilliseconds()) == ("2.00", MAR_2024_MS), old
        new = close(client, "s", FEB_15_2024_MS)
        assert (new.total_due, new.period_end.ToMilliseconds()) == ("3.00", MAR_15_2024_MS), new
        assert close(client, "s", FEB_2024_MS) == old and close(client, "s", FEB_15_2024_MS) == new


def month_before(at_ms: int) -> int:
    at = dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC)
    earlier = at.replace(year=at.year - 1, month=12) if at.month == 1 else at.replace(month=at.month - 1)
    return int(earlier.timestamp() * 1000)


def test_with_close_grace_a_period_within_its_grace_closes_on_request(graced: ServerProcess) -> None:
    """--close-grace 24h: a contract starting a month and an hour before this hour has a first period that ended an
    hour ago, within its grace, so the server has not closed it; ClosePeriod does (2 units: 2.00), a retry answers
    the same, and the running period is FAILED_PRECONDITION."""
    end_ms = this_hour_ms() - HOUR_MS
    start_ms = month_before(end_ms)
    if dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).day > 28:
        pytest.skip("a month clipped at its end")
    with graced.client() as client:
        open_contract(client, "g", "k-g", start_ms, rate_card_id="card")
        use(client, "g", start_ms + HOUR_MS, 2, "g-1")
        assert preview(client, "g", start_ms).status == invoices_pb2.INVOICE_DRAFT
        first = close(client, "g", start_ms)
        assert (first.total_due, first.period_end.ToMilliseconds()) == ("2.00", end_ms), first
        assert close(client, "g", start_ms) == first
        code, message = refusal(lambda: close(client, "g", end_ms))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "has not ended" in message, message


def override(n: int) -> contracts_pb2.PriceOverride:
    return contracts_pb2.PriceOverride(id=f"o{n}", product_id="calls", match={"route": f"r{n}"}, price="2")


def add(client: TariffClient, contract_id: str, n: int) -> contracts_pb2.Contract:
    made: contracts_pb2.Contract = client.contracts.AddOverride(
        contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=override(n))
    )
    return made


def refusal_or_none(client: TariffClient, n: int) -> grpc.StatusCode | None:
    try:
        add(client, "k-o", n)
    except TariffError as error:
        return error.code
    return None


def test_override_retries_answer_the_same_up_to_the_cap(server: ServerProcess) -> None:
    """A retry of AddOverride answers the same contract and adds no audit entry; at 1,000 overrides a new one is
    RESOURCE_EXHAUSTED changing nothing, while the retry of one held still answers."""
    with server.client() as client:
        open_contract(client, "o", "k-o", JAN_2024_MS, rate_card_id="card")
        first = add(client, "k-o", 0)
        entries = audit_count(client)
        assert add(client, "k-o", 0) == first and audit_count(client) == entries
        unnamed = contracts_pb2.AddOverrideRequest(
            contract_id="k-o",
            override=contracts_pb2.PriceOverride(product_id="calls", match={"route": "x", "other": "*"}, price="4"),
        )
        named = client.contracts.AddOverride(unnamed)
        entries = audit_count(client)
        assert client.contracts.AddOverride(unnamed) == named and audit_count(client) == entries
        for n in range(1, 998):
            add(client, "k-o", n)
        entries = audit_count(client)
        with ThreadPoolExecutor(4) as pool:  # 999 held: of four new ones sent at once, one is added
            racing = [pool.submit(refusal_or_none, client, n) for n in (998, 1_001, 1_002, 1_003)]
            refused = [f.result() for f in racing]
        assert [code for code in refused if code is not None] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3, refused
        assert audit_count(client) == entries + 1
        full = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-o"))
        assert len(full.overrides) == 1_000
        won = next(n for n, code in zip((998, 1_001, 1_002, 1_003), refused, strict=True) if code is None)
        code, message = refusal(lambda: add(client, "k-o", 1_000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "k-o" in message, message
        assert add(client, "k-o", 500) == full and add(client, "k-o", won) == full
        assert client.contracts.AddOverride(unnamed) == full
        assert audit_count(client) == entries + 1
        got = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-o"))
        assert got == full


def test_top_up_contract_and_draft_retries_answer_the_same(server: ServerProcess) -> None:
    """SetTopUpPolicy, CreateContract (of a customer with 300 grants given without a contract) and
    CreateDraftVersion (by request id) retried answer as the first time and add no audit entry."""
    with server.client() as client:
        open_contract(client, "t", "k-t", JAN_2024_MS, rate_card_id="card")
        policy = contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="0.5", max_per_period=2)
        request = contracts_pb2.SetTopUpPolicyRequest(contract_id="k-t", top_up=policy)
        first = client.contracts.SetTopUpPolicy(request)
        entries = audit_count(client)
        assert client.contracts.SetTopUpPolicy(request) == first and audit_count(client) == entries
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="many", name="many"))
        for n in range(300):
            grant = contracts_pb2.Grant(
                id=f"m{n}", customer_id="many", kind=contracts_pb2.PREPAID, amount="1", paid_amount="1"
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        made = open_contract(client, "many", "k-many", JAN_2024_MS, rate_card_id="card")
        assert len(made.grants) == 300, len(made.grants)
        entries = audit_count(client)
        again = open_contract(client, "many", "k-many", JAN_2024_MS, rate_card_id="card")
        assert again == made and audit_count(client) == entries
        draft = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="card",
            based_on_version=1,
            request_id="d-1",
            upsert_rates=[pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="3"))],
        )
        version = client.pricing.CreateDraftVersion(draft)
        entries = audit_count(client)
        assert client.pricing.CreateDraftVersion(draft) == version and audit_count(client) == entries


def test_usage_racing_a_close_is_in_its_invoice_or_refused_period_closed(server: ServerProcess) -> None:
    """Customer `r` on `card` from 2024-01-01: 40 events of 1 unit dated 2024-01-20, sent one a call from 4
    threads while January is closed. Each is either accepted and in the invoice, or PERIOD_CLOSED: the invoice's
    total is the accepted count in USD, and January's draft after is that invoice."""
    with server.client() as client:
        open_contract(client, "r", "k-r", JAN_2024_MS, rate_card_id="card")

        def send(n: int) -> bool:
            event = usage_pb2.UsageEvent(
                transaction_id=f"r-{n}",
                customer_id="r",
                event_type="c",
                timestamp_ms=JAN_2024_MS + 19 * DAY_MS,
                values={"n": 1.0},
            )
            ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[event]))
            assert ack.accepted + len(ack.rejected) == 1, ack
            if ack.rejected:
                assert ack.rejected[0].reason == usage_pb2.PERIOD_CLOSED, ack
            return bool(ack.accepted == 1)

        with ThreadPoolExecutor(4) as pool:
            sent = [pool.submit(send, n) for n in range(20)]
            closing = pool.submit(close, client, "r", JAN_2024_MS)
            sent += [pool.submit(send, n) for n in range(20, 40)]
            accepted = sum(f.result() for f in sent)
            invoice = closing.result()
        assert invoice.total_due == f"{accepted}.00", (accepted, invoice)
        assert preview(client, "r", JAN_2024_MS) == invoice


def test_far_and_fine_period_starts(server: ServerProcess) -> None:
    """Customer `f` on `card` from 2024-01-01: the period from 8999-12-01 (the last in range) has not ended,
    FAILED_PRECONDITION naming its end 9000-01-01; a period start with a nanosecond part is INVALID_ARGUMENT naming
    period_start. Neither changes anything."""
    with server.client() as client:
        open_contract(client, "f", "k-f", JAN_2024_MS, rate_card_id="card")
        before = audit_count(client)
        last_ms = int(dt.datetime(8999, 12, 1, tzinfo=dt.UTC).timestamp() * 1000)
        code, message = refusal(lambda: close(client, "f", last_ms))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "9000-01-01T00:00:00" in message, message
        fine = invoices_pb2.ClosePeriodRequest(customer_id="f", period_start=stamp(JAN_2024_MS))
        fine.period_start.nanos = 1
        code, message = refusal(lambda: client.invoices.ClosePeriod(fine))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "period_start" in message, message
        assert audit_count(client) == before


def test_refused_changes_change_nothing(server: ServerProcess) -> None:
    """Refusals around the new checks keep their codes and change nothing: CreateDraftVersion on an unknown card
    (NOT_FOUND) or version (NOT_FOUND naming it), SetTopUpPolicy in another currency (INVALID_ARGUMENT naming
    top_up.currency) or of an unknown contract (NOT_FOUND), AddOverride to an unknown contract (NOT_FOUND),
    CreateContract for an unknown customer (NOT_FOUND) or without customer_id (INVALID_ARGUMENT)."""
    with server.client() as client:
        open_contract(client, "n", "k-n", JAN_2024_MS, rate_card_id="card")
        before, balance = audit_count(client), client.get_balance("n")
        rate = pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="3"))

        def draft(card: str, base: int) -> object:
            request = pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=card, based_on_version=base, upsert_rates=[rate]
            )
            return client.pricing.CreateDraftVersion(request)

        assert refusal(lambda: draft("nocard", 0))[0] == grpc.StatusCode.NOT_FOUND
        code, message = refusal(lambda: draft("card", 99))
        assert code == grpc.StatusCode.NOT_FOUND and "99" in message, message
        policy = contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="0.5", currency="EUR")
        code, message = refusal(
            lambda: client.contracts.SetTopUpPolicy(
                contracts_pb2.SetTopUpPolicyRequest(contract_id="k-n", top_up=policy)
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "top_up.currency" in message, message
        policy.currency = ""
        code, _ = refusal(
            lambda: client.contracts.SetTopUpPolicy(
                contracts_pb2.SetTopUpPolicyRequest(contract_id="k-no", top_up=policy)
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
        assert refusal(lambda: add(client, "k-no", 1))[0] == grpc.StatusCode.NOT_FOUND
        request = contracts_pb2.CreateContractRequest(
            id="k-y", customer_id="ghost", rate_card_id="card", starting_at=stamp(JAN_2024_MS), currency="USD"
        )
        assert refusal(lambda: client.contracts.CreateContract(request))[0] == grpc.StatusCode.NOT_FOUND
        request.customer_id = ""
        code, message = refusal(lambda: client.contracts.CreateContract(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "customer_id" in message, message
        assert audit_count(client) == before and client.get_balance("n") == balance


MIB = 1024 * 1024
WIDE_DIMENSIONS = [f"d{n}" for n in range(16)]


def wide_catalogue(client: TariffClient) -> None:
    catalogue(client)
    wide = pricing_pb2.Product(
        id="wide", event_type="w", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=WIDE_DIMENSIONS
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=wide))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("audit-prechecks-small")
    args = ["--close-grace", "off", "--message-mb-max", "1"]
    yield from serving(ServerProcess(root / "data", extra_args=args), wide_catalogue)


def filling(n: int, room_bytes: int) -> contracts_pb2.PriceOverride:
    """Override `e<n>` of `wide` whose message takes as close to `room_bytes` as 16 values of up to 250 characters
    let it, and no more."""
    made = contracts_pb2.PriceOverride(id=f"e{n}", product_id="wide", multiplier="2")
    for dimension in WIDE_DIMENSIONS:
        made.match[dimension] = ""
        for length in range(250, -1, -1):
            made.match[dimension] = f"{n:04d}" + "v" * length
            if made.ByteSize() <= room_bytes:
                break
        if made.ByteSize() > room_bytes:
            del made.match[dimension]
            break
    return made


def fill_to_the_edge(client: TariffClient, contract_id: str) -> contracts_pb2.AddOverrideRequest:
    """Overrides of `wide` added to the contract until its message is within 1 KiB of 1 MiB (about 243 of 4.3 KB,
    the last ones smaller), as much as AddOverride's estimate (the contract, the override, 1 KiB) lets in: the
    request that added the last one."""
    request = contracts_pb2.AddOverrideRequest(contract_id=contract_id)
    n = 0
    while True:
        size = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id)).ByteSize()
        room = MIB - 1024 - size  # the service's slack of 1 KiB: what the estimate lets in
        if room < 40:
            return request
        request.override.CopyFrom(filling(n, room))
        client.contracts.AddOverride(request)
        n += 1


def test_a_retry_whose_answer_fits_is_not_refused_at_the_limit(small: ServerProcess) -> None:
    """--message-mb-max 1: contracts filled with overrides until their message is within 1 KiB of 1 MiB, the answer
    still fits. A retry of the last override adds nothing and must answer the contract (contracts.proto: a retry of
    one it holds still answers), as must a retry of CreateContract and of SetTopUpPolicy (the policy the contract
    has): nothing changes, and the answer is the contract as it is. Before the fix each was RESOURCE_EXHAUSTED
    "... was not added/set: contract ... would be about 1,048,5xx bytes", the estimate adding its 1 KiB slack."""
    with small.client() as client:
        open_contract(client, "edge", "k-edge", JAN_2024_MS, rate_card_id="card")
        policy = contracts_pb2.SetTopUpPolicyRequest(
            contract_id="k-edge",
            top_up=contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="0.5", max_per_period=2),
        )
        client.contracts.SetTopUpPolicy(policy)
        last = fill_to_the_edge(client, "k-edge")
        full = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-edge"))
        assert MIB - 1024 < full.ByteSize() <= MIB, full.ByteSize()
        entries = audit_count(client)
        assert client.contracts.AddOverride(last) == full
        assert open_contract(client, "edge", "k-edge", JAN_2024_MS, rate_card_id="card") == full
        assert client.contracts.SetTopUpPolicy(policy) == full
        assert audit_count(client) == entries


def padded_grant(grant_id: str, products: list[str], size_bytes: int) -> contracts_pb2.Grant:
    """A promotional grant of `rg` whose request takes `size_bytes` exactly (while products last). Products go in
    while more than 120 bytes remain, and the id's padding takes the rest: up to 127 characters (its length prefix
    one byte). With 130 and 120, a gap of 121-129 bytes was left short by up to 17, and whether it was depended on
    the earlier grants' sizes, that is on the milliseconds of their `created_at`."""
    grant = contracts_pb2.Grant(id=grant_id, customer_id="rg", kind=contracts_pb2.PROMOTIONAL, amount="1")
    grant.paid_amount = "0"
    while grant.ByteSize() + 120 <= size_bytes and len(grant.applicable_product_ids) < len(products):
        grant.applicable_product_ids.append(products[len(grant.applicable_product_ids)])
    grant.id += "p" * max(0, min(127 - len(grant.id), size_bytes - grant.ByteSize()))
    assert grant.ByteSize() == size_bytes or len(grant.applicable_product_ids) == len(products), grant.ByteSize()
    return grant


def test_a_create_contract_retry_whose_answer_fits_is_not_refused(small: ServerProcess) -> None:
    """--message-mb-max 1: customer `rg` with contract k-rg, then promotional grants given with customer_id alone
    (applicable to up to 40 products of 120-character ids, about 5 KB a grant) until the contract's answer, which
    shows them, is within 1 KiB of 1 MiB: it fits, GetContract answers it. A retry of CreateContract makes nothing
    and must answer that contract (CreateContract's key: id), not RESOURCE_EXHAUSTED "the contract was not
    created", which the estimate (every grant, the request and 1 KiB) said before the fix."""
    products = [f"q{n:03d}" + "x" * 117 for n in range(40)]
    with small.client() as client:
        for n, product_id in enumerate(products):
            product = pricing_pb2.Product(id=product_id, event_type=f"q{n}", aggregation=pricing_pb2.COUNT)
            client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        open_contract(client, "rg", "k-rg", JAN_2024_MS, rate_card_id="card")
        n = 0
        while True:
            size = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-rg")).ByteSize()
            room = MIB - 400 - size
            grant = contracts_pb2.Grant(
                id=f"rg{n}", customer_id="rg", kind=contracts_pb2.PROMOTIONAL, amount="1", paid_amount="0"
            )
            while grant.ByteSize() + 140 <= room and len(grant.applicable_product_ids) < len(products):
                grant.applicable_product_ids.append(products[len(grant.applicable_product_ids)])
            if room < 300:
                break
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
            n += 1
        full = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-rg"))
        assert MIB - 1024 < full.ByteSize() <= MIB, full.ByteSize()
        entries = audit_count(client)
        assert open_contract(client, "rg", "k-rg", JAN_2024_MS, rate_card_id="card") == full
        assert audit_count(client) == entries
        # Grants given with customer_id alone, sized (products, a padded id) to bring the answer within 16 bytes of
        # 1 MiB: a top-up policy (about 25 bytes shown) would not fit, and is refused before it is set (README
        # "Limits"). The first measures what a grant's answer adds to its request.
        size, overhead = full.ByteSize(), 0
        for n in range(2):
            pad = padded_grant(f"rg-pad{n}", products, MIB - 16 - size - overhead if n else 100)
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=pad))
            edge = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-rg"))
            overhead, size = edge.ByteSize() - size - pad.ByteSize(), edge.ByteSize()
        assert MIB - 24 < edge.ByteSize() <= MIB, edge.ByteSize()
        entries = audit_count(client)
        policy = contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="0.5", max_per_period=2)
        set_policy = contracts_pb2.SetTopUpPolicyRequest(contract_id="k-rg", top_up=policy)
        code, message = refusal(lambda: client.contracts.SetTopUpPolicy(set_policy))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "not set" in message and "--message-mb-max" in message
        assert client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-rg")) == edge
        assert audit_count(client) == entries
