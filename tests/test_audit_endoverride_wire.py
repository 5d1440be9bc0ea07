"""An audit of ending a contract's price override early (contracts.proto EndOverride; README "Contracts", Ending an
override early): a discount given to a customer, revoked. EndOverride sets an override's ending_before, or moves it
earlier: usage dated at or after the new end is priced by the rate card, usage dated before it (late arrivals
included) keeps the override; refusals change nothing (GetContract and the audit log as they were); a retry, and the
AddOverride that made the override sent again, answer the contract as it is; the end survives a kill -9.

Products `units` (event type `work`, SUM of `n`) and `other` (event type `other`, SUM of `n`), each at 1 credit a
unit on rate card `card` (credits), in force from 2025-01-01; ALLOW contracts with no grants. Overrides multiply the
card's price by 0.5 ("half") or 2. One server for the file (`--close-grace off`: no period closes by itself;
`--future-skew-s 7200`: events dated up to 2 h ahead are taken, so that usage after a future end can be sent), each
test its own customer. Times are relative to the current hour H (on the hour); each contract starts at S, the first
instant of the previous UTC month. Charges are the balance's period_charges, in credits."""

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
from tests.audit_fixtures import HOUR_MS, charges, iso, month_start, refusal, rejected, serving, this_hour_ms
from tests.serverproc import ServerProcess

MINUTE_MS = 60_000


def catalogue(client: TariffClient) -> None:
    rates = []
    for product_id, event_type in (("units", "work"), ("other", "other")):
        product = pricing_pb2.Product(id=product_id, event_type=event_type, aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        rates.append(pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price="1")))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    start = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(start))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-endoverride")
    args = ["--close-grace", "off", "--future-skew-s", "7200"]
    yield from serving(ServerProcess(root / "data", extra_args=args), catalogue)


def contract(client: TariffClient, customer_id: str) -> str:
    """Customer `customer_id` with an open-ended ALLOW contract `k-<customer>` from S on `card`; returns its id."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
    request = contracts_pb2.CreateContractRequest(
        id=f"k-{customer_id}",
        customer_id=customer_id,
        rate_card_id="card",
        starting_at=stamp(month_start(this_hour_ms(), -1)),
    )
    client.contracts.CreateContract(request)
    return request.id


def override_request(
    contract_id: str,
    override_id: str,
    *,
    product_id: str = "units",
    multiplier: str = "0.5",
    starting_at_ms: int | None = None,
    ending_before_ms: int | None = None,
) -> contracts_pb2.AddOverrideRequest:
    override = contracts_pb2.PriceOverride(id=override_id, product_id=product_id, multiplier=multiplier)
    if starting_at_ms is not None:
        override.starting_at.CopyFrom(stamp(starting_at_ms))
    if ending_before_ms is not None:
        override.ending_before.CopyFrom(stamp(ending_before_ms))
    return contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=override)


def add(client: TariffClient, request: contracts_pb2.AddOverrideRequest) -> contracts_pb2.Contract:
    answer: contracts_pb2.Contract = client.contracts.AddOverride(request)
    return answer


def end(client: TariffClient, contract_id: str, override_id: str, end_ms: int | None) -> contracts_pb2.Contract:
    request = contracts_pb2.EndOverrideRequest(contract_id=contract_id, override_id=override_id)
    if end_ms is not None:
        request.ending_before.CopyFrom(stamp(end_ms))
    answer: contracts_pb2.Contract = client.contracts.EndOverride(request)
    return answer


def get(client: TariffClient, contract_id: str) -> contracts_pb2.Contract:
    found: contracts_pb2.Contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id))
    return found


def override_end(contract: contracts_pb2.Contract, override_id: str) -> int | None:
    """The override's ending_before (Unix ms), None when unset."""
    held = next(o for o in contract.overrides if o.id == override_id)
    return held.ending_before.ToMilliseconds() if held.HasField("ending_before") else None


def audit_actions(client: TariffClient, contract_id: str) -> list[str]:
    log = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target=f"contract/{contract_id}"))
    return [entry.action for entry in log.entries]


def work(transaction_id: str, customer_id: str, n: float, at_ms: int, event_type: str = "work") -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms,
        values={"n": n},
    )


def test_usage_dated_at_or_after_the_new_end_is_priced_without_the_override_and_usage_before_keeps_it(
    server: ServerProcess,
) -> None:
    """`k-eo1` with override `half` (units x 0.5, open-ended). 10 units at H charge 5. Ended at E = H + 1 h: answered
    with half ending before E, GetContract alike, one EndOverride entry after the AddOverride in the audit log. Then
    10 units at E + 1 min charge 10 (the card's price), 4 units at E - 1 min (a late arrival) charge 2 (the
    override's): 5 + 10 + 2 = 17, 12 units at E itself 12 more: 29."""
    h = this_hour_ms()
    e = h + HOUR_MS
    with server.client() as client:
        contract_id = contract(client, "eo1")
        add(client, override_request(contract_id, "half"))
        assert rejected(client, work("a1", "eo1", 10, h)) == []
        assert charges(client, "eo1") == "5"
        answer = end(client, contract_id, "half", e)
        assert override_end(answer, "half") == e and answer == get(client, contract_id)
        assert audit_actions(client, contract_id) == ["CreateContract", "AddOverride", "EndOverride"]
        assert rejected(client, work("a2", "eo1", 10, e + MINUTE_MS)) == []
        assert charges(client, "eo1") == "15"
        assert rejected(client, work("a3", "eo1", 4, e - MINUTE_MS)) == []
        assert charges(client, "eo1") == "17"
        assert rejected(client, work("a4", "eo1", 12, e)) == []
        assert charges(client, "eo1") == "29"


def refused(
    client: TariffClient, contract_id: str, override_id: str, end_ms: int | None
) -> tuple[grpc.StatusCode, str]:
    """EndOverride's refusal, checking it changed nothing: the contract and its audit entries as they were."""
    known = contract_id.startswith("k-")
    before, actions = get(client, contract_id) if known else None, audit_actions(client, contract_id or "none")
    code, message = refusal(lambda: end(client, contract_id, override_id, end_ms))
    if before is not None:
        assert get(client, contract_id) == before
    assert audit_actions(client, contract_id or "none") == actions
    return code, message


def test_every_refusal_names_its_cause_and_changes_nothing(server: ServerProcess) -> None:
    """`k-eo2` with `half` (open-ended, from the contract's start), `late` (units x 0.5 from S + 1 day), `gone`
    (units x 0.5 ending at H - 1 h), `soon` (units x 0.5 ending at H + 2 h) and `twice` (other x 2). INVALID_ARGUMENT:
    no contract_id, or one breaking the id rule (naming contract_id); no override_id (naming override_id); no
    ending_before, one past 8999, or `late` ended at its own start (naming ending_before). NOT_FOUND: an unknown
    contract, an unknown override (each named). FAILED_PRECONDITION: `gone` has already ended; `half` ended at
    H - 1 min (before now); `soon` moved to H + 3 h (later than its end). 1 unit of `units` dated H + 1 h 30 min
    (ahead, within the skew): `half` ended at H + 1 h is FAILED_PRECONDITION naming the hour from H + 1 h, and so is
    an end at H + 1 h 10 min (the hour holding it counts whole); `twice`, on `other`, which has no usage there, is
    ended at H + 1 h."""
    h = this_hour_ms()
    s = month_start(h, -1)
    with server.client() as client:
        contract_id = contract(client, "eo2")
        add(client, override_request(contract_id, "half"))
        add(client, override_request(contract_id, "late", starting_at_ms=s + 24 * HOUR_MS))
        add(client, override_request(contract_id, "gone", ending_before_ms=h - HOUR_MS))
        add(client, override_request(contract_id, "soon", ending_before_ms=h + 2 * HOUR_MS))
        add(client, override_request(contract_id, "twice", product_id="other", multiplier="2"))
        for bad_contract in ("", "a b"):
            code, message = refused(client, bad_contract, "half", h + HOUR_MS)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "contract_id" in message, message
        code, message = refused(client, contract_id, "", h + HOUR_MS)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "override_id" in message, message
        far = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp() * 1000)
        for override_id, bad_end in (("half", None), ("half", far), ("late", s + 24 * HOUR_MS)):
            code, message = refused(client, contract_id, override_id, bad_end)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "ending_before" in message, (bad_end, message)
        code, message = refused(client, "nobody", "half", h + HOUR_MS)
        assert code == grpc.StatusCode.NOT_FOUND and "nobody" in message, message
        code, message = refused(client, contract_id, "ghost", h + HOUR_MS)
        assert code == grpc.StatusCode.NOT_FOUND and "ghost" in message, message
        code, message = refused(client, contract_id, "gone", h + HOUR_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in message, message
        code, message = refused(client, contract_id, "half", h - MINUTE_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "before now" in message, message
        code, message = refused(client, contract_id, "soon", h + 3 * HOUR_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "only moved earlier" in message, message
        assert rejected(client, work("b1", "eo2", 1, h + HOUR_MS + 30 * MINUTE_MS)) == []
        for at_ms in (h + HOUR_MS, h + HOUR_MS + 10 * MINUTE_MS):
            code, message = refused(client, contract_id, "half", at_ms)
            assert code == grpc.StatusCode.FAILED_PRECONDITION and iso(h + HOUR_MS) in message, message
        assert override_end(end(client, contract_id, "twice", h + HOUR_MS), "twice") == h + HOUR_MS


def test_a_retry_answers_the_contract_as_it_is_and_journals_nothing(server: ServerProcess) -> None:
    """`k-eo3` with `half` ended at H + 2 h, then again at H + 2 h (sub-millisecond part dropped: the same end): the
    same answer, one audit entry. Moved earlier to H + 1 h: a second entry; the end it has sent again answers the
    contract, no third entry; H + 2 h now is later than its end: FAILED_PRECONDITION."""
    h = this_hour_ms()
    with server.client() as client:
        contract_id = contract(client, "eo3")
        add(client, override_request(contract_id, "half"))
        first = end(client, contract_id, "half", h + 2 * HOUR_MS)
        retry = contracts_pb2.EndOverrideRequest(
            contract_id=contract_id, override_id="half", ending_before=stamp(h + 2 * HOUR_MS)
        )
        retry.ending_before.nanos += 500
        assert client.contracts.EndOverride(retry) == first == get(client, contract_id)
        assert audit_actions(client, contract_id) == ["CreateContract", "AddOverride", "EndOverride"]
        moved = end(client, contract_id, "half", h + HOUR_MS)
        assert override_end(moved, "half") == h + HOUR_MS
        assert end(client, contract_id, "half", h + HOUR_MS) == moved
        assert audit_actions(client, contract_id) == ["CreateContract", "AddOverride", "EndOverride", "EndOverride"]
        code, message = refused(client, contract_id, "half", h + 2 * HOUR_MS)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "only moved earlier" in message, message


def test_the_add_override_that_made_an_ended_override_sent_again_answers_the_contract_as_it_is(
    server: ServerProcess,
) -> None:
    """`k-eo4`: `half` (with an id, open-ended), `capped` (with an id, ending at H + 3 h) and an override sent
    without an id (named after its content). Each ended at H + 1 h; then each AddOverride sent again, as it was,
    answers OK with the contract as it is (each override ending at H + 1 h), adding nothing and journaling nothing."""
    h = this_hour_ms()
    with server.client() as client:
        contract_id = contract(client, "eo4")
        requests = [
            override_request(contract_id, "half"),
            override_request(contract_id, "capped", ending_before_ms=h + 3 * HOUR_MS),
            override_request(contract_id, "", product_id="other", multiplier="0.25"),
        ]
        made = [add(client, request) for request in requests]
        ids = ["half", "capped", made[-1].overrides[-1].id]
        assert ids[-1].startswith("override-")
        for override_id in ids:
            end(client, contract_id, override_id, h + HOUR_MS)
        actions = audit_actions(client, contract_id)
        now = get(client, contract_id)
        for request in requests:
            assert add(client, request) == now
        assert [override_end(now, override_id) for override_id in ids] == [h + HOUR_MS] * 3
        assert audit_actions(client, contract_id) == actions


def test_the_end_and_the_charges_survive_a_kill_9(server: ServerProcess) -> None:
    """`k-eo5` with `half`: 10 units at H charge 5; ended at H + 1 h; 10 units at H + 1 h + 1 min charge 10: 15. The
    server killed (SIGKILL) and started again replays the journal: the contract and its audit entries as they were,
    charges 15; then 2 units at H + 1 h + 2 min charge 2 (the card's price) and 2 at H + 10 min charge 1 (the
    override's): 18."""
    h = this_hour_ms()
    with server.client() as client:
        contract_id = contract(client, "eo5")
        add(client, override_request(contract_id, "half"))
        assert rejected(client, work("k1", "eo5", 10, h)) == []
        answer = end(client, contract_id, "half", h + HOUR_MS)
        assert rejected(client, work("k2", "eo5", 10, h + HOUR_MS + MINUTE_MS)) == []
        assert charges(client, "eo5") == "15"
    server.kill9()
    server.start()
    with server.client() as client:
        assert get(client, contract_id) == answer
        assert audit_actions(client, contract_id) == ["CreateContract", "AddOverride", "EndOverride"]
        assert charges(client, "eo5") == "15"
        assert rejected(client, work("k3", "eo5", 2, h + HOUR_MS + 2 * MINUTE_MS)) == []
        assert rejected(client, work("k4", "eo5", 2, h + 10 * MINUTE_MS)) == []
        assert charges(client, "eo5") == "18"


def test_the_cli_ends_an_override_and_says_why_it_refuses(server: ServerProcess) -> None:
    """`tariff contracts end-override k-eo6 half --at H + 1 h`: the table shows the override's new end, `--json` the
    contract (a retry: the same); `--at` an hour ago exits 1 with FAILED_PRECONDITION; an unknown override exits 1
    with NOT_FOUND naming it."""
    from tests.test_cli import table_rows, tariff

    h = this_hour_ms()
    with server.client() as client:
        contract_id = contract(client, "eo6")
        add(client, override_request(contract_id, "half"))
    at_text = iso(h + HOUR_MS)
    shown = table_rows(tariff(server, "contracts", "end-override", contract_id, "half", "--at", at_text).stdout)
    assert ["ends before", at_text.replace("T", " ")] in shown and ["override", "half"] in shown, shown
    answer = json.loads(
        tariff(server, "contracts", "end-override", contract_id, "half", "--at", at_text, "--json").stdout
    )
    assert answer["id"] == contract_id
    assert [(o["id"], o["ending_before"]) for o in answer["overrides"]] == [("half", at_text)]
    past = tariff(server, "contracts", "end-override", contract_id, "half", "--at", iso(h - HOUR_MS), check=False)
    assert past.returncode == 1 and past.stderr.startswith("tariff: FAILED_PRECONDITION:"), past.stderr
    unknown = tariff(server, "contracts", "end-override", contract_id, "ghost", "--at", at_text, check=False)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr and "ghost" in unknown.stderr, unknown.stderr


def test_a_watcher_of_the_customer_gets_its_balance_again_after_the_end(server: ServerProcess) -> None:
    """WatchBalance of `eo7` sends the current balance, then, once `half`'s end at H + 1 h commits, the balance again
    with that record's later as_of_seq (an override's end is a change of the customer, as an override is)."""
    h = this_hour_ms()
    with server.client() as client:
        contract_id = contract(client, "eo7")
        add(client, override_request(contract_id, "half"))
        call = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="eo7"), timeout=30)
        stream = iter(call)
        first = next(stream)
        end(client, contract_id, "half", h + HOUR_MS)
        assert next(stream).as_of_seq > first.as_of_seq
        call.cancel()
