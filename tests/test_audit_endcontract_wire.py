"""An audit of ending a contract once created (contracts.proto EndContract; README "Contract switches"): a customer who
churns, or moves to another plan, mid-contract. EndContract sets (or moves) a contract's ending_before: usage dated
before it counts, usage dated at or after it is NO_ACTIVE_CONTRACT or the next contract's; refusals change nothing
(GetContract and the audit log as they were); a retry answers the contract as it is; the end survives a kill -9.

Product `units` (event type `work`, SUM of `n`) at 1 credit a unit on rate card `card` (credits), in force from
2025-01-01, ALLOW contracts with overage at 1 USD a credit and no grants: every unit is 1 USD due. One server for the
file (`--close-grace off`: no period closes by itself; `--future-skew-s 7200`: events dated up to 2 h ahead are
taken, so that usage after a future end can be sent), each test its own customer. Times are relative to the current
hour H (on the hour); each contract starts at S, the first instant of the previous UTC month, so its current period
starts at P, the first instant of this month, and ends at the first of next month (a contract ended within its
period keeps that monthly end)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import (
    HOUR_MS,
    catalogue,
    iso,
    month_start,
    preview,
    refusal,
    rejected,
    serving,
    this_hour_ms,
    usage,
)
from tests.serverproc import ServerProcess

MINUTE_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-endcontract")
    args = ["--close-grace", "off", "--future-skew-s", "7200"]
    yield from serving(ServerProcess(root / "data", extra_args=args), catalogue)


def contract(
    client: TariffClient, customer_id: str, contract_id: str, start_ms: int, end_ms: int | None = None
) -> None:
    """An ALLOW contract on `card` (overage 1 USD), creating the customer on its first one."""
    if customer_id not in {
        c.id for c in client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest()).customers
    }:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
    request = contracts_pb2.CreateContractRequest(
        id=contract_id, customer_id=customer_id, rate_card_id="card", starting_at=stamp(start_ms)
    )
    if end_ms is not None:
        request.ending_before.CopyFrom(stamp(end_ms))
    client.contracts.CreateContract(request)


def end(client: TariffClient, contract_id: str, end_ms: int | None) -> contracts_pb2.Contract:
    request = contracts_pb2.EndContractRequest(contract_id=contract_id)
    if end_ms is not None:
        request.ending_before.CopyFrom(stamp(end_ms))
    answer: contracts_pb2.Contract = client.contracts.EndContract(request)
    return answer


def get(client: TariffClient, contract_id: str) -> contracts_pb2.Contract:
    found: contracts_pb2.Contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id))
    return found


def audit_actions(client: TariffClient, contract_id: str) -> list[str]:
    log = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target=f"contract/{contract_id}"))
    return [entry.action for entry in log.entries]


def test_an_open_ended_contract_ended_ahead_counts_usage_before_the_end_and_refuses_usage_at_or_after_it(
    server: ServerProcess,
) -> None:
    """`e1` from S, open-ended; 2 units at P. Ended at E = H + 1 h: answered with ending_before E, GetContract alike,
    one EndContract entry after the CreateContract in the audit log. Then 3 units at E - 1 min (before the end)
    count, 4 units at E and 5 at E + 1 min are NO_ACTIVE_CONTRACT. The last period, P to the first of next month
    (its monthly end), holds 2 + 3 = 5 units at 1 credit: 5 credits, all overage at 1 USD, due 5.00."""
    h = this_hour_ms()
    s, p, e = month_start(h, -1), month_start(h), h + HOUR_MS
    with server.client() as client:
        contract(client, "end1", "e1", s)
        assert rejected(client, usage("a1", "end1", 2, p)) == []
        answer = end(client, "e1", e)
        assert answer.ending_before.ToMilliseconds() == e and answer.HasField("ending_before")
        assert get(client, "e1") == answer
        assert audit_actions(client, "e1") == ["CreateContract", "EndContract"]
        late = rejected(client, usage("a2", "end1", 3, e - MINUTE_MS), usage("a3", "end1", 4, e))
        assert late == [("a3", usage_pb2.NO_ACTIVE_CONTRACT)]
        assert rejected(client, usage("a4", "end1", 5, e + MINUTE_MS)) == [("a4", usage_pb2.NO_ACTIVE_CONTRACT)]
        invoice = preview(client, "end1", p)
        assert (invoice.contract_id, invoice.period_start.ToMilliseconds(), invoice.period_end.ToMilliseconds()) == (
            "e1",
            p,
            month_start(h, 1),
        )
        assert [(line.quantity, line.amount, line.events) for line in invoice.lines] == [("5", "5", 2)]
        assert (invoice.overage_amount, invoice.total_due) == ("5", "5.00")


def refused(client: TariffClient, contract_id: str, end_ms: int | None) -> tuple[grpc.StatusCode, str]:
    """EndContract's refusal, checking it changed nothing: the contract and its audit entries as they were."""
    before, actions = get(client, contract_id) if contract_id != "nobody" else None, audit_actions(client, contract_id)
    code, message = refusal(lambda: end(client, contract_id, end_ms))
    if before is not None:
        assert get(client, contract_id) == before
    assert audit_actions(client, contract_id) == actions
    return code, message


def test_every_refusal_names_its_cause_and_changes_nothing(server: ServerProcess) -> None:
    """`e2` from S, open-ended. Refused: an unknown contract (NOT_FOUND naming it); no ending_before, one at S or
    before it, one past 8999 (INVALID_ARGUMENT naming ending_before); H - 1 min, before the request's time
    (FAILED_PRECONDITION: no retroactive end). 1 unit dated H + 1 h 30 min (ahead, within the skew): an end at
    H + 1 h is FAILED_PRECONDITION naming that hour, H + 1 h (usage recorded at or after the new end), and so is one
    at H + 1 h 10 min (the hour holds the end: usage is kept by the hour). `e2old` of customer `end2b`, from S - 1
    month to S, has ended: FAILED_PRECONDITION. `e3a` from S to H + 2 h, `e3b` from H + 3 h: moving e3a's end to
    H + 4 h overlaps e3b (FAILED_PRECONDITION naming it); to H + 3 h it touches e3b and is taken."""
    h = this_hour_ms()
    s = month_start(h, -1)
    with server.client() as client:
        contract(client, "end2", "e2", s)
        code, message = refused(client, "nobody", h + HOUR_MS)
        assert code == grpc.StatusCode.NOT_FOUND and "nobody" in message, message
        for bad in (None, s, s - HOUR_MS, int(datetime(9999, 1, 1, tzinfo=UTC).timestamp() * 1000)):
            code, message = refused(client, "e2", bad)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "ending_before" in message, (bad, message)
        code, message = refused(client, "e2", h - MINUTE_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "before" in message, message
        assert rejected(client, usage("b1", "end2", 1, h + HOUR_MS + 30 * MINUTE_MS)) == []
        for at_ms in (h + HOUR_MS, h + HOUR_MS + 10 * MINUTE_MS):
            code, message = refused(client, "e2", at_ms)
            assert code == grpc.StatusCode.FAILED_PRECONDITION and iso(h + HOUR_MS) in message, message
        contract(client, "end2b", "e2old", month_start(h, -2), s)
        code, message = refused(client, "e2old", h + HOUR_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in message, message
        contract(client, "end3", "e3a", s, h + 2 * HOUR_MS)
        contract(client, "end3", "e3b", h + 3 * HOUR_MS)
        code, message = refused(client, "e3a", h + 4 * HOUR_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "e3b" in message, message
        assert end(client, "e3a", h + 3 * HOUR_MS).ending_before.ToMilliseconds() == h + 3 * HOUR_MS


def test_a_retry_answers_the_contract_as_it_is_and_another_end_moves_it(server: ServerProcess) -> None:
    """`e5` from S ended at H + 2 h, then again at H + 2 h (sub-millisecond part dropped: the same end): the same
    answer, one audit entry. Moved to H + 1 h: a second entry; the first end then is a move back, a third."""
    h = this_hour_ms()
    with server.client() as client:
        contract(client, "end5", "e5", month_start(h, -1))
        first = end(client, "e5", h + 2 * HOUR_MS)
        retry = contracts_pb2.EndContractRequest(contract_id="e5", ending_before=stamp(h + 2 * HOUR_MS))
        retry.ending_before.nanos += 500
        assert client.contracts.EndContract(retry) == first == get(client, "e5")
        assert audit_actions(client, "e5") == ["CreateContract", "EndContract"]
        assert end(client, "e5", h + HOUR_MS).ending_before.ToMilliseconds() == h + HOUR_MS
        assert end(client, "e5", h + 2 * HOUR_MS) == first
        assert audit_actions(client, "e5") == ["CreateContract", "EndContract", "EndContract", "EndContract"]


def test_the_end_survives_a_kill_9(server: ServerProcess) -> None:
    """`e7` from S ended at H + 1 h; the server killed (SIGKILL) and started again replays the journal: the contract
    still ends at H + 1 h, usage at H + 1 h is NO_ACTIVE_CONTRACT, usage at H + 1 h - 1 ms counts."""
    h = this_hour_ms()
    with server.client() as client:
        contract(client, "end7", "e7", month_start(h, -1))
        answer = end(client, "e7", h + HOUR_MS)
    server.kill9()
    server.start()
    with server.client() as client:
        assert get(client, "e7") == answer
        assert audit_actions(client, "e7") == ["CreateContract", "EndContract"]
        after = rejected(client, usage("k1", "end7", 1, h + HOUR_MS - 1), usage("k2", "end7", 1, h + HOUR_MS))
        assert after == [("k2", usage_pb2.NO_ACTIVE_CONTRACT)]


def test_a_switch_ends_the_old_contract_and_starts_the_next_at_its_end(server: ServerProcess) -> None:
    """`e6a` from S, open-ended, ended at E = H + 1 h; `e6b` from E (taken: it touches e6a's new end). 2 units at
    E - 1 min are e6a's, 3 at E + 1 min e6b's. e6a's last period (P to the first of next month) holds 2 units, due
    2.00; e6b's first (E to E + 1 month) holds 3, due 3.00."""
    h = this_hour_ms()
    e = h + HOUR_MS
    with server.client() as client:
        contract(client, "end6", "e6a", month_start(h, -1))
        end(client, "e6a", e)
        contract(client, "end6", "e6b", e)
        assert rejected(client, usage("w1", "end6", 2, e - MINUTE_MS), usage("w2", "end6", 3, e + MINUTE_MS)) == []
        old, new = preview(client, "end6", month_start(h)), preview(client, "end6", e)
        assert (old.contract_id, [line.quantity for line in old.lines], old.total_due) == ("e6a", ["2"], "2.00")
        assert (new.contract_id, new.period_start.ToMilliseconds(), [line.quantity for line in new.lines]) == (
            "e6b",
            e,
            ["3"],
        )
        assert new.total_due == "3.00"


def test_the_cli_ends_a_contract_and_says_why_it_refuses(server: ServerProcess) -> None:
    """`tariff contracts end e8 --at H + 1 h`: the table shows the new end, `--json` the contract (a retry: the same);
    `--at` an hour ago exits 1 with FAILED_PRECONDITION; an unknown contract exits 1 with NOT_FOUND naming it."""
    from tests.test_cli import table_rows, tariff

    h = this_hour_ms()
    with server.client() as client:
        contract(client, "end8", "e8", month_start(h, -1))
    at_text = iso(h + HOUR_MS)
    shown = table_rows(tariff(server, "contracts", "end", "e8", "--at", at_text).stdout)
    assert ["ends before", at_text.replace("T", " ")] in shown
    answer = json.loads(tariff(server, "contracts", "end", "e8", "--at", at_text, "--json").stdout)
    assert (answer["id"], answer["ending_before"]) == ("e8", at_text)
    past = tariff(server, "contracts", "end", "e8", "--at", iso(h - HOUR_MS), check=False)
    assert past.returncode == 1 and past.stderr.startswith("tariff: FAILED_PRECONDITION:"), past.stderr
    unknown = tariff(server, "contracts", "end", "nobody", "--at", at_text, check=False)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr and "nobody" in unknown.stderr, unknown.stderr


def test_a_watcher_of_the_customer_gets_its_balance_again_after_the_end(server: ServerProcess) -> None:
    """WatchBalance of `end9` sends the current balance, then, once `e9`'s end at H + 1 h commits, the balance again
    with that record's later as_of_seq (an end is a change of the customer, as an override is)."""
    h = this_hour_ms()
    with server.client() as client:
        contract(client, "end9", "e9", month_start(h, -1))
        call = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="end9"), timeout=30)
        stream = iter(call)
        first = next(stream)
        end(client, "e9", h + HOUR_MS)
        assert next(stream).as_of_seq > first.as_of_seq
        call.cancel()


def test_an_end_before_a_rolling_grants_start_is_refused_so_that_the_grant_keeps_a_period_to_roll_over_at(
    server: ServerProcess,
) -> None:
    """`e10` from S, open-ended; grant `g10` of 10 credits naming it, rollover_fraction 0.5, starting at H + 2 h (in
    e10's time, as GrantCredits requires of a grant that rolls over: contracts.proto rollover_fraction). Ending e10
    at H + 1 h would leave g10's start in no contract, so no billing period for it to roll over at the end of
    (GrantCredits refuses such a grant FAILED_PRECONDITION, granting nothing): refused FAILED_PRECONDITION naming
    g10, nothing changed (GetContract and the audit log as they were). An end at H + 3 h, after g10's start, is
    taken."""
    h = this_hour_ms()
    with server.client() as client:
        contract(client, "end10", "e10", month_start(h, -1))
        grant = contracts_pb2.Grant(
            id="g10",
            contract_id="e10",
            kind=contracts_pb2.PROMOTIONAL,
            amount="10",
            rollover_fraction="0.5",
            starts_at=stamp(h + 2 * HOUR_MS),
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        code, message = refused(client, "e10", h + HOUR_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "g10" in message, (code, message)
        assert end(client, "e10", h + 3 * HOUR_MS).ending_before.ToMilliseconds() == h + 3 * HOUR_MS


def create_request(
    contract_id: str, customer_id: str, start_ms: int, end_ms: int | None
) -> contracts_pb2.CreateContractRequest:
    request = contracts_pb2.CreateContractRequest(
        id=contract_id, customer_id=customer_id, rate_card_id="card", starting_at=stamp(start_ms)
    )
    if end_ms is not None:
        request.ending_before.CopyFrom(stamp(end_ms))
    return request


def test_the_create_contract_sent_again_after_its_end_moved_answers_the_contract_as_it_is_now(
    server: ServerProcess,
) -> None:
    """README's retry rule: the same request again answers what the first call made, as it is now. `e11` created from
    S ending at H + 3 h, then ended at H + 1 h; the same CreateContract again (naming H + 3 h) answers e11 as it is
    now, ending at H + 1 h (as GrantCredits sent again after ExpireGrant answers the grant with its new expiry),
    GetContract alike, no audit entry. A CreateContract under e11 naming H + 1 h is another request: ALREADY_EXISTS.
    `end12`'s contract created without an id and open-ended (its key: the customer and S), ended at H + 2 h: the same
    request again answers it ending at H + 2 h. Both retries answer alike after a kill -9 (the journal replayed).
    It was ALREADY_EXISTS: the retry was compared with the request rebuilt from the contract, which names its new end."""
    h = this_hour_ms()
    s = month_start(h, -1)
    first = create_request("e11", "end11", s, h + 3 * HOUR_MS)
    unnamed = create_request("", "end12", s, None)
    with server.client() as client:
        for customer_id in ("end11", "end12"):
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
        assert client.contracts.CreateContract(first).ending_before.ToMilliseconds() == h + 3 * HOUR_MS
        ended = end(client, "e11", h + HOUR_MS)
        made = client.contracts.CreateContract(unnamed)
        assert not made.HasField("ending_before")
        ended_unnamed = end(client, made.id, h + 2 * HOUR_MS)
        assert client.contracts.CreateContract(first) == ended == get(client, "e11")
        assert ended.ending_before.ToMilliseconds() == h + HOUR_MS
        assert client.contracts.CreateContract(unnamed) == ended_unnamed == get(client, made.id)
        assert ended_unnamed.ending_before.ToMilliseconds() == h + 2 * HOUR_MS
        code, message = refusal(lambda: client.contracts.CreateContract(create_request("e11", "end11", s, h + HOUR_MS)))
        assert code == grpc.StatusCode.ALREADY_EXISTS and "e11" in message, (code, message)
        assert audit_actions(client, "e11") == ["CreateContract", "EndContract"]
        assert audit_actions(client, made.id) == ["CreateContract", "EndContract"]
    server.kill9()
    server.start()
    with server.client() as client:
        assert client.contracts.CreateContract(first) == ended
        assert client.contracts.CreateContract(unnamed) == ended_unnamed
        assert audit_actions(client, "e11") == ["CreateContract", "EndContract"]
