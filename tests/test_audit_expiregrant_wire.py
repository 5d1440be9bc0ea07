"""An audit of ending a credit grant early (contracts.proto ExpireGrant; README "Credits and the gateway", Ending a
grant early): a grant given by mistake, or forfeited. ExpireGrant moves a grant's expires_at earlier (or sets one):
what it holds at the new expiry is breakage as for a grant created expiring then; refusals change nothing (the
grant's expiry in GetBalance and the audit log as they were); a retry answers the grant as it is; the expiry and
its breakage survive a restart.

Product `units` (event type `work`, SUM of `n`) at 1 credit a unit on rate card `card` (credits), in force from
2025-01-01, ALLOW contracts with overage at 1 USD a credit. One server for the file (`--close-grace off`: no
period closes by itself; `--future-skew-s 7200`: events dated up to 2 h ahead are taken, so that usage after a
future expiry can be sent), each test its own customer. Times are relative to the current hour H (on the hour);
each contract starts at S, the first instant of the previous UTC month. Usage that must not stop an expiry a few
seconds from now is dated in the hour before H: usage is kept by the hour, and an hour ending after the new expiry
refuses it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, catalogue, iso, month_start, refusal, serving, this_hour_ms
from tests.serverproc import ServerProcess

MINUTE_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-expiregrant")
    args = ["--close-grace", "off", "--future-skew-s", "7200"]
    yield from serving(ServerProcess(root / "data", extra_args=args), catalogue)


def customer_with_grant(
    client: TariffClient, customer_id: str, grant_id: str, paid: str = "50", expires_ms: int | None = None
) -> int:
    """Customer `customer_id` with an ALLOW contract `k-<customer>` from S on `card`, and a PREPAID grant of 100
    credits paid `paid` USD naming it (so starting at S); returns S."""
    s = month_start(this_hour_ms(), -1)
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}", customer_id=customer_id, rate_card_id="card", starting_at=stamp(s)
        )
    )
    grant = contracts_pb2.Grant(
        id=grant_id, contract_id=f"k-{customer_id}", kind=contracts_pb2.PREPAID, amount="100", paid_amount=paid
    )
    if expires_ms is not None:
        grant.expires_at.CopyFrom(stamp(expires_ms))
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    return s


def expire(client: TariffClient, customer_id: str, grant_id: str, expires_ms: int | None) -> contracts_pb2.Grant:
    request = contracts_pb2.ExpireGrantRequest(customer_id=customer_id, grant_id=grant_id)
    if expires_ms is not None:
        request.expires_at.CopyFrom(stamp(expires_ms))
    answer: contracts_pb2.Grant = client.contracts.ExpireGrant(request)
    return answer


def grant_of(client: TariffClient, customer_id: str, grant_id: str) -> balance_pb2.GrantBalance:
    balance: balance_pb2.Balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=customer_id))
    found: balance_pb2.GrantBalance = next(g for g in balance.grants if g.grant_id == grant_id)
    return found


def conserved(grant: balance_pb2.GrantBalance) -> bool:
    """granted = drawn + remaining + held + expired (GetBalance shows a usable grant's remaining with its held in
    it: a grant past its expiry holds nothing usable, so its held is outside remaining then)."""
    usable = not grant.HasField("expires_at") or grant.expires_at.ToMilliseconds() > now_ms()
    held = Decimal(0) if usable else Decimal(grant.held)
    return Decimal(grant.amount) == Decimal(grant.drawn) + Decimal(grant.remaining) + held + Decimal(grant.expired)


def audit_actions(client: TariffClient, grant_id: str) -> list[str]:
    """The grant's audit entries' actions (the log's target filter is a prefix: g2 would find g2gone's too)."""
    log = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target=f"grant/{grant_id}"))
    return [entry.action for entry in log.entries if entry.target == f"grant/{grant_id}"]


def usage(transaction_id: str, customer_id: str, n: float, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id, customer_id=customer_id, event_type="work", timestamp_ms=at_ms, values={"n": n}
    )


def rejected(client: TariffClient, *events: usage_pb2.UsageEvent) -> list[tuple[str, int]]:
    ack = client.ingest_batch(list(events))
    return [(r.transaction_id, r.reason) for r in ack.rejected]


def wait_for_expired(client: TariffClient, customer_id: str, grant_id: str, expired: str) -> balance_pb2.GrantBalance:
    """The server's clock records an expiry a moment after it is due (its driver looks every 50 ms)."""
    shown = grant_of(client, customer_id, grant_id)
    for _ in range(400):
        if shown.expired == expired:
            return shown
        time.sleep(0.05)
        shown = grant_of(client, customer_id, grant_id)
    raise AssertionError(f"expired {shown.expired}, not {expired}")


def revenue(client: TariffClient, customer_id: str, start_ms: int, end_ms: int) -> invoices_pb2.RevenueReport:
    found: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(
            period_start=stamp(start_ms), period_end=stamp(end_ms), customer_id=customer_id
        )
    )
    return found


def test_a_grant_ended_early_breaks_what_it_holds_then_at_its_cost_basis(server: ServerProcess) -> None:
    """`x1`: grant `g1` of 100 credits paid 50 USD, no expiry; 30 units dated in the hour before H draw 30. ExpireGrant
    at E = now + 3 s answers g1 expiring at E (one ExpireGrant entry after the GrantCredits in the audit log). Once
    the clock passes E, GetBalance shows g1 drawn 30, remaining 0, expired 70 (100 = 30 + 0 + 0 + 70), and the
    revenue report breakage 50 x 70/100 = 35 USD, recognised 50 x 30/100 = 15."""
    h = this_hour_ms()
    with server.client() as client:
        s = customer_with_grant(client, "x1", "g1")
        assert rejected(client, usage("a1", "x1", 30, h - HOUR_MS)) == []
        e = now_ms() + 3_000
        answer = expire(client, "x1", "g1", e)
        assert (answer.id, answer.customer_id, answer.expires_at.ToMilliseconds()) == ("g1", "x1", e)
        assert (answer.amount, answer.paid_amount) == ("100", "50")
        assert audit_actions(client, "g1") == ["GrantCredits", "ExpireGrant"]
        shown = wait_for_expired(client, "x1", "g1", "70")
        assert (shown.drawn, shown.remaining, shown.held, shown.expired) == ("30", "0", "0", "70")
        assert shown.expires_at.ToMilliseconds() == e and conserved(shown)
        report = revenue(client, "x1", s, month_start(h, 2))
        assert Decimal(report.reconciliation.breakage) == 35
        assert Decimal(report.reconciliation.recognized_credits) == 15


def refused(
    client: TariffClient, customer_id: str, grant_id: str, expires_ms: int | None
) -> tuple[grpc.StatusCode, str]:
    """ExpireGrant's refusal, checking it changed nothing: the grant in GetBalance and its audit entries as they
    were."""
    known = customer_id == "x2" and grant_id in {"g2", "g2gone"}
    before = grant_of(client, customer_id, grant_id) if known else None
    actions = audit_actions(client, grant_id)
    code, message = refusal(lambda: expire(client, customer_id, grant_id, expires_ms))
    if before is not None:
        assert grant_of(client, customer_id, grant_id).expires_at == before.expires_at
    assert audit_actions(client, grant_id) == actions
    return code, message


def test_every_refusal_names_its_cause_and_changes_nothing(server: ServerProcess) -> None:
    """`x2`: grant `g2` of 100 expiring at H + 2 h; `g2gone` expiring at H - 1 min (granted with its expiry past).
    NOT_FOUND: an unknown customer, an unknown grant (naming them). INVALID_ARGUMENT naming the field: no
    customer_id, no grant_id, no expires_at, one at S (g2's start) or before it, one past 8999. FAILED_PRECONDITION:
    g2gone has already expired; H - 1 min is before now (no retroactive expiry); H + 3 h is after g2's expiry (only
    earlier). 1 unit dated H + 1 h 30 min (ahead, within the skew): an expiry at H + 1 h 10 min is
    FAILED_PRECONDITION naming that hour, H + 1 h (usage that could have drawn on g2 after it; the hour counts
    whole), and so is one at H + 1 h 45 min (that hour ends at H + 2 h, after it). g2's own expiry, H + 2 h, is a
    retry: it answers g2 as it is, journaling nothing."""
    h = this_hour_ms()
    with server.client() as client:
        s = customer_with_grant(client, "x2", "g2", expires_ms=h + 2 * HOUR_MS)
        gone = contracts_pb2.Grant(
            id="g2gone", contract_id="k-x2", kind=contracts_pb2.PROMOTIONAL, amount="5", expires_at=stamp(h - MINUTE_MS)
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=gone))
        for customer_id, grant_id, named in (("nobody", "g2", "nobody"), ("x2", "nope", "nope")):
            code, message = refused(client, customer_id, grant_id, h + HOUR_MS)
            assert code == grpc.StatusCode.NOT_FOUND and named in message, (code, message)
        for customer_id, grant_id, field in (("", "g2", "customer_id"), ("x2", "", "grant_id")):
            code, message = refused(client, customer_id, grant_id, h + HOUR_MS)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and field in message, (code, message)
        for bad in (None, s, s - HOUR_MS, int(datetime(9999, 1, 1, tzinfo=UTC).timestamp() * 1000)):
            code, message = refused(client, "x2", "g2", bad)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "expires_at" in message, (bad, message)
        code, message = refused(client, "x2", "g2gone", h + HOUR_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "already expired" in message, message
        code, message = refused(client, "x2", "g2", h - MINUTE_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "before now" in message, message
        code, message = refused(client, "x2", "g2", h + 3 * HOUR_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "only moved earlier" in message, message
        assert rejected(client, usage("b1", "x2", 1, h + HOUR_MS + 30 * MINUTE_MS)) == []
        for at_ms in (h + HOUR_MS + 10 * MINUTE_MS, h + HOUR_MS + 45 * MINUTE_MS):
            code, message = refused(client, "x2", "g2", at_ms)
            assert code == grpc.StatusCode.FAILED_PRECONDITION and iso(h + HOUR_MS) in message, message
        assert expire(client, "x2", "g2", h + 2 * HOUR_MS).expires_at.ToMilliseconds() == h + 2 * HOUR_MS
        assert audit_actions(client, "g2") == ["GrantCredits"]


def test_a_retry_answers_the_grant_as_it_is_and_another_earlier_expiry_moves_it(server: ServerProcess) -> None:
    """`x3`: g3 of 100 without expiry, expired at H + 2 h, then again at H + 2 h (a sub-millisecond part dropped:
    the same expiry): the same answer, one ExpireGrant entry. Moved to H + 1 h: a second entry; H + 2 h is then
    later than its expiry, FAILED_PRECONDITION. The GrantCredits that made g3, sent again, still answers g3 (as it
    is now, expiring at H + 1 h), granting nothing more."""
    h = this_hour_ms()
    with server.client() as client:
        customer_with_grant(client, "x3", "g3")
        first = expire(client, "x3", "g3", h + 2 * HOUR_MS)
        retry = contracts_pb2.ExpireGrantRequest(customer_id="x3", grant_id="g3", expires_at=stamp(h + 2 * HOUR_MS))
        retry.expires_at.nanos += 500
        assert client.contracts.ExpireGrant(retry) == first
        assert audit_actions(client, "g3") == ["GrantCredits", "ExpireGrant"]
        assert expire(client, "x3", "g3", h + HOUR_MS).expires_at.ToMilliseconds() == h + HOUR_MS
        code, _ = refusal(lambda: expire(client, "x3", "g3", h + 2 * HOUR_MS))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert audit_actions(client, "g3") == ["GrantCredits", "ExpireGrant", "ExpireGrant"]
        again = contracts_pb2.Grant(
            id="g3", contract_id="k-x3", kind=contracts_pb2.PREPAID, amount="100", paid_amount="50"
        )
        answer = client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=again))
        assert (answer.id, answer.expires_at.ToMilliseconds()) == ("g3", h + HOUR_MS)
        assert audit_actions(client, "g3") == ["GrantCredits", "ExpireGrant", "ExpireGrant"]


def test_the_expiry_and_its_breakage_survive_a_restart(server: ServerProcess) -> None:
    """`x4`: g4 of 100 paid 50, 30 drawn in the hour before H, expired at now + 2 s: once broken (70 expired), the
    server killed (SIGKILL) and started again replays the journal to the same balance: g4 expiring then, drawn 30,
    expired 70, and breakage 35 USD. Another grant `g4b` expired at H + 1 h before the kill keeps that expiry."""
    h = this_hour_ms()
    with server.client() as client:
        s = customer_with_grant(client, "x4", "g4")
        assert rejected(client, usage("c1", "x4", 30, h - HOUR_MS)) == []
        later = contracts_pb2.Grant(id="g4b", contract_id="k-x4", kind=contracts_pb2.PROMOTIONAL, amount="5")
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=later))
        expire(client, "x4", "g4b", h + HOUR_MS)
        e = now_ms() + 2_000
        expire(client, "x4", "g4", e)
        before = wait_for_expired(client, "x4", "g4", "70")
        balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="x4"))
    server.kill9()
    server.start()
    with server.client() as client:
        assert grant_of(client, "x4", "g4") == before and conserved(before)
        assert grant_of(client, "x4", "g4b").expires_at.ToMilliseconds() == h + HOUR_MS
        replayed = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="x4"))
        assert list(replayed.grants) == list(balance.grants)
        assert Decimal(revenue(client, "x4", s, month_start(h, 2)).reconciliation.breakage) == 35
        assert audit_actions(client, "g4") == ["GrantCredits", "ExpireGrant"]


def test_the_cli_expires_a_grant_and_says_why_it_refuses(server: ServerProcess) -> None:
    """`tariff grant expire g5 --customer x5 --at H + 1 h`: the table shows the new expiry, `--json` the grant (a
    retry: the same); `--at` an hour ago exits 1 with FAILED_PRECONDITION; an unknown grant exits 1 with NOT_FOUND
    naming it."""
    from tests.test_cli import table_rows, tariff

    h = this_hour_ms()
    with server.client() as client:
        customer_with_grant(client, "x5", "g5")
    at_text = iso(h + HOUR_MS)
    shown = table_rows(tariff(server, "grant", "expire", "g5", "--customer", "x5", "--at", at_text).stdout)
    assert ["expires", at_text.replace("T", " ")] in shown
    answer = json.loads(tariff(server, "grant", "expire", "g5", "--customer", "x5", "--at", at_text, "--json").stdout)
    assert (answer["id"], answer["expires_at"]) == ("g5", at_text)
    past = tariff(server, "grant", "expire", "g5", "--customer", "x5", "--at", iso(h - HOUR_MS), check=False)
    assert past.returncode == 1 and past.stderr.startswith("tariff: FAILED_PRECONDITION:"), past.stderr
    unknown = tariff(server, "grant", "expire", "nope", "--customer", "x5", "--at", at_text, check=False)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr and "nope" in unknown.stderr, unknown.stderr


def test_a_watcher_of_the_customer_gets_its_balance_again_after_the_expiry_is_moved(server: ServerProcess) -> None:
    """WatchBalance of `x6` sends the current balance, then, once g6's expiry at H + 1 h commits, the balance again
    with that record's later as_of_seq, g6 showing its new expires_at (a grant's change is the customer's)."""
    h = this_hour_ms()
    with server.client() as client:
        customer_with_grant(client, "x6", "g6")
        call = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="x6"), timeout=30)
        stream = iter(call)
        first = next(stream)
        expire(client, "x6", "g6", h + HOUR_MS)
        after = next(stream)
        assert after.as_of_seq > first.as_of_seq
        assert [g.expires_at.ToMilliseconds() for g in after.grants if g.grant_id == "g6"] == [h + HOUR_MS]
        call.cancel()


def test_a_top_up_grant_the_server_made_is_ended_early_by_its_id(server: ServerProcess) -> None:
    """`x7`: no grant of its own, a top-up policy (below 5, up to 10 credits at 0.1 USD each). 1 unit dated in the hour
    before H is overage and buys a TOP_UP grant of 10 credits (its id the server's, top-up-<period start>-1); 1 more
    draws 1 of it. ExpireGrant of it (customer x7, that id) at now + 2 s answers it as a TOP_UP grant expiring then;
    once broken GetBalance shows it drawn 1, expired 9 (10 = 1 + 0 + 0 + 9), and revenue breakage 9 x 0.1 = 0.9 USD."""
    h = this_hour_ms()
    with server.client() as client:
        s = month_start(h, -1)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="x7"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(id="k-x7", customer_id="x7", rate_card_id="card", starting_at=stamp(s))
        )
        policy = contracts_pb2.TopUpPolicy(threshold="5", recharge_to="10", price_per_credit="0.1", max_per_period=3)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="k-x7", top_up=policy))
        assert rejected(client, usage("d1", "x7", 1, h - HOUR_MS)) == []
        assert rejected(client, usage("d2", "x7", 1, h - HOUR_MS + 1)) == []
        balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="x7"))
        (top_up_id,) = [g.grant_id for g in balance.grants if g.kind == contracts_pb2.TOP_UP]
        assert top_up_id.startswith("top-up-") and top_up_id.endswith("-1"), top_up_id
        e = now_ms() + 2_000
        answer = expire(client, "x7", top_up_id, e)
        assert (answer.id, answer.kind, answer.expires_at.ToMilliseconds()) == (top_up_id, contracts_pb2.TOP_UP, e)
        shown = wait_for_expired(client, "x7", top_up_id, "9")
        assert (shown.amount, shown.drawn, shown.remaining, shown.expired) == ("10", "1", "0", "9") and conserved(shown)
        assert Decimal(revenue(client, "x7", s, month_start(h, 2)).reconciliation.breakage) == Decimal("0.9")


def test_a_grant_that_has_already_rolled_over_is_refused_as_ended_and_nothing_changes(server: ServerProcess) -> None:
    """`x8`: contract k-x8 from S; grant `g8` of 10 PROMOTIONAL credits naming it (so starting at S), rollover_fraction
    0.5, no expiry: it rolls over at the end of the billing period it starts in, P (this month's first instant), which
    has passed: the clock rolls 5 into a ROLLOVER grant and breaks 5. ExpireGrant of g8 at H + 1 h is then
    FAILED_PRECONDITION, "has already ended: rolled over at P", as for an expired grant: g8 still shows no expiry,
    its audit entries are GrantCredits alone. (It was taken, and g8's record given that expiry.)"""
    h = this_hour_ms()
    p = month_start(h)
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="x8"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-x8", customer_id="x8", rate_card_id="card", starting_at=stamp(month_start(h, -1))
            )
        )
        grant = contracts_pb2.Grant(
            id="g8", contract_id="k-x8", kind=contracts_pb2.PROMOTIONAL, amount="10", rollover_fraction="0.5"
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        rolled = f"rollover-g8-{p}"
        for _ in range(400):  # the server's clock rolls it over a moment after it is due (it looks every 50 ms)
            balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="x8"))
            if any(g.grant_id == rolled for g in balance.grants):
                break
            time.sleep(0.05)
        assert grant_of(client, "x8", rolled).amount == "5"
        code, message = refusal(lambda: expire(client, "x8", "g8", h + HOUR_MS))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, message)
        assert f"grant 'g8' has already ended: rolled over at {iso(p)}" in message, message
        assert not grant_of(client, "x8", "g8").HasField("expires_at")
        assert audit_actions(client, "g8") == ["GrantCredits"]
