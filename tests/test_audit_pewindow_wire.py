"""The window between an instant something falls due (here a billing period's end, at which a rolling grant rolls
over) and the moment the server's clock driver journals it (README "Rollover", `--clock-look-every-ms`): every read
answers as if the clock had recorded it the instant it fell due, consistent in itself and equal to what it answers
once recorded. The server's driver looks once an hour here, so the window lasts until a change goes through the
writer (which records the due AdvanceClock first): the reads below are made in it, deterministically, and the
journal sequence number (`as_of_seq`) shows the clock recorded nothing meanwhile.

README's example ("Held credit at a rollover"): grant R of 100 credits (paid 100 USD) with fraction 0.5, 40 drawn,
holds `r1` of 20 and `r2` of 6 open at the period's end. R has 100 - 40 = 60 left, 26 of them held: 0.5 x 60 = 30
roll over into `rollover-R-<end ms>` (30 remaining, 13 held: 10 for r1, 3 for r2; 17 available) and 30 break; R
shows 70 drawn (40 used + 30 rolled), 30 expired, 0 remaining, 0 held. Revenue at 1 USD a credit: sold 100,
recognised 40, breakage 30, deferred 30 (the rolled credit). Product `unit` costs 1 credit per 1000 units; the
contract is BLOCK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, usage_pb2

from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess
from tests.test_audit_invoices_wire import CARD, but_final_fields, catalogue, ts

# Long enough for the setup calls to be made before the period ends, even on a loaded machine.
SETUP_MARGIN_MS = 8_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-pewindow")
    args = ["--close-grace", "off", "--clock-look-every-ms", "3600000"]
    yield from serving(ServerProcess(root / "data", extra_args=args), catalogue)


def month_before(at_ms: int) -> int:
    """The same instant a calendar month earlier (the start of a monthly period ending at `at_ms`)."""
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    year, month = (at.year, at.month - 1) if at.month > 1 else (at.year - 1, 12)
    return int(at.replace(year=year, month=month).timestamp() * 1000)


def units(credits: int) -> dict[str, float]:
    return {"n": credits * 1000.0}


def setup_customer(client: TariffClient, customer_id: str) -> tuple[int, int]:
    """The customer above, its first period ending SETUP_MARGIN_MS from now: (period start, period end) in ms."""
    target_end_ms = now_ms() // 1000 * 1000 + SETUP_MARGIN_MS
    if datetime.fromtimestamp(target_end_ms / 1000, UTC).day > 28:
        pytest.skip("a period ending on the 29th-31st has no same-day start a month before")
    start_ms = month_before(target_end_ms)
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    contract = contracts_pb2.CreateContractRequest(
        id=f"{customer_id}-c",
        customer_id=customer_id,
        rate_card_id=CARD,
        starting_at=ts(start_ms),
        overage_policy=contracts_pb2.BLOCK,
        overage_price="1",
        currency="USD",
    )
    client.contracts.CreateContract(contract)
    grant = contracts_pb2.Grant(
        id="R",
        contract_id=f"{customer_id}-c",
        kind=contracts_pb2.PREPAID,
        amount="100",
        paid_amount="100",
        rollover_fraction="0.5",
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    event = usage_pb2.UsageEvent(
        transaction_id="u1",
        customer_id=customer_id,
        event_type="unit",
        timestamp_ms=now_ms(),
        dimensions={"k": "a"},
        values=units(40),
    )
    ack = client.ingest_batch([event])
    assert ack.accepted == 1, ack
    for reservation_id, credits in (("r1", 20), ("r2", 6)):
        held = client.balance.Authorize(
            balance_pb2.AuthorizeRequest(
                customer_id=customer_id,
                event_type="unit",
                dimensions={"k": "a"},
                values=units(credits),
                reserve=True,
                reservation_id=reservation_id,
                reservation_ttl=Duration(seconds=600),
            )
        )
        assert held.allowed, held
    balance = client.get_balance(customer_id)
    assert balance.period_end.ToMilliseconds() == target_end_ms
    assert now_ms() < target_end_ms, "the setup took longer than SETUP_MARGIN_MS: the period ended during it"
    assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("60", "26", "34")
    return start_ms, target_end_ms


def lines(balance: balance_pb2.Balance) -> dict[str, tuple[str, str, str, str, str]]:
    """grant id -> (amount, drawn, remaining, expired, held)."""
    return {g.grant_id: (g.amount, g.drawn, g.remaining, g.expired, g.held) for g in balance.grants}


def authorize(client: TariffClient, customer_id: str, credits: int) -> tuple[bool, str, str]:
    answer = client.balance.Authorize(
        balance_pb2.AuthorizeRequest(
            customer_id=customer_id, event_type="unit", dimensions={"k": "a"}, values=units(credits)
        )
    )
    return answer.allowed, answer.reason, answer.credits_available


def revenue(client: TariffClient, customer_id: str, start_ms: int) -> tuple[str, str, str, str]:
    """(sold, recognised, breakage, deferred at the end) in USD over the customer's first two periods."""
    report = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(
            customer_id=customer_id, period_start=ts(start_ms), period_end=ts(now_ms() + 86_400_000)
        )
    )
    r = report.reconciliation
    return r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end


def test_reads_between_a_period_end_and_the_clocks_record_answer_the_rolled_over_balance(
    server: ServerProcess,
) -> None:
    with server.client() as client:
        start_ms, end_ms = setup_customer(client, "win")
        seq_before = client.get_balance("win").as_of_seq
        while now_ms() <= end_ms:  # waits for the period to end: nothing asserted depends on how long this takes
            time.sleep(0.05)
        rolled = f"rollover-R-{end_ms}"
        expected = {"R": ("100", "70", "0", "30", "0"), rolled: ("30", "0", "30", "0", "13")}

        balance = client.get_balance("win")
        assert balance.as_of_seq == seq_before, "the clock recorded nothing yet: the read is in the window"
        assert lines(balance) == expected
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("30", "13", "17")
        # Its lines sum to its totals, and credit is conserved: granted = drawn + remaining + expired (R's drawn
        # holds what moved into the ROLLOVER grant, which is granted again there).
        assert sum(int(g.remaining) for g in balance.grants) == int(balance.credits_remaining)
        assert sum(int(g.held) for g in balance.grants) == int(balance.credits_held)
        # Authorize decides on the ROLLOVER grant's 17 available, as usage received now would find them.
        assert authorize(client, "win", 17) == (True, "OK", "17")
        assert authorize(client, "win", 18)[:2] == (False, "INSUFFICIENT_CREDIT")
        draft = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="win", period_start=ts(start_ms))
        )
        assert [(g.grant_id, g.drawn, g.remaining, g.expired) for g in draft.grant_balances] == [("R", "70", "0", "30")]
        assert revenue(client, "win", start_ms) == ("100", "40", "30", "30")
        assert client.get_balance("win").as_of_seq == seq_before

        # A change goes through the writer, which records the rollover first: the reads answer the same.
        final = client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id="win", period_start=ts(start_ms))
        )
        assert but_final_fields(final) == but_final_fields(draft)
        after = client.get_balance("win")
        assert after.as_of_seq > seq_before
        assert lines(after) == expected
        assert (after.credits_remaining, after.credits_held, after.credits_available) == ("30", "13", "17")
        assert authorize(client, "win", 17) == (True, "OK", "17")
        assert revenue(client, "win", start_ms) == ("100", "40", "30", "30")
