"""Reservations and top-ups against a real server process: concurrent gateways holding credit under BLOCK, holds
kept and expired on time across a kill -9, top-up policies and their refusals over the wire."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import balance_pb2, contracts_pb2, usage_pb2

from tests.serverproc import ServerProcess, wait_for

GPT4_COMPLEX = {"action": "summary", "data_source": "crm", "model": "gpt-4", "complexity": "complex"}  # 5 credits
CREDIT = 100


def gateway_customer(client: TariffClient, customer_id: str, *, credit: int = CREDIT, block: bool = True) -> str:
    """A customer on the demo rate card with a contract (BLOCK unless told) and one grant of `credit` credits."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    policy = contracts_pb2.BLOCK if block else contracts_pb2.ALLOW
    contract = client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"c-{customer_id}", customer_id=customer_id, rate_card_id="ai-credits", overage_policy=policy
        )
    )
    grant = contracts_pb2.Grant(id=f"g-{customer_id}", contract_id=contract.id, kind=contracts_pb2.PREPAID)
    grant.amount, grant.paid_amount = str(credit), str(credit)
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    return str(contract.id)


def usage(transaction_id: str, customer_id: str, reservation_id: str) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="ai_action",
        timestamp_ms=time.time_ns() // 1_000_000,
        dimensions=GPT4_COMPLEX,
        reservation_id=reservation_id,
    )


def test_eight_gateways_never_hold_more_than_the_credit_and_the_balance_ends_exact(
    demo_server: ServerProcess,
) -> None:
    with demo_server.client() as admin:
        gateway_customer(admin, "gw")
    stop = threading.Event()
    violations: list[str] = []

    def watch() -> None:
        with demo_server.client() as client:
            while not stop.is_set():
                b = client.get_balance("gw")
                held, remaining = float(b.credits_held), float(b.credits_remaining)
                if held > remaining or float(b.credits_available) < 0 or remaining > CREDIT:
                    violations.append(f"held {held}, remaining {remaining}, available {b.credits_available}")

    def gateway(number: int) -> tuple[int, int]:
        allowed = denied = 0
        with demo_server.client() as client:
            for attempt in range(8):
                reservation_id = f"gw{number}-{attempt}"
                decision = client.authorize(
                    "gw", "ai_action", GPT4_COMPLEX, reserve=True, reservation_id=reservation_id, reservation_ttl_s=60
                )
                if not decision.allowed:
                    assert decision.reason == "INSUFFICIENT_CREDIT", decision
                    denied += 1
                    continue
                assert (decision.estimated_cost, decision.reservation_id) == ("5", reservation_id)
                allowed += 1
                ack = client.ingest_batch([usage(f"t-{reservation_id}", "gw", reservation_id)])
                assert (ack.accepted, list(ack.notices)) == (1, [])
        return allowed, denied

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(gateway, range(8)))
    finally:
        stop.set()
        watcher.join()
    assert violations == []
    allowed = sum(a for a, _ in outcomes)
    assert allowed == CREDIT // 5  # every credit was reserved, used, and never more
    assert sum(d for _, d in outcomes) == 64 - allowed
    with demo_server.client() as client:
        final = client.get_balance("gw")
    assert (final.credits_remaining, final.credits_held, final.credits_available) == ("0", "0", "0")
    assert (final.period_charges, final.overage_amount) == ("100", "0")


# Long enough for a kill -9 and a restart on a loaded 2-core machine (a restart took 3.5 s under pytest-xdist at
# load 10): the hold must still be there when the restarted server first answers.
SHORT_TTL_S = 8


def test_holds_survive_kill_9_and_expire_on_time_after_the_restart(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        gateway_customer(client, "gw")
        short = client.authorize(
            "gw", "ai_action", GPT4_COMPLEX, reserve=True, reservation_id="short", reservation_ttl_s=SHORT_TTL_S
        )
        long = client.authorize(
            "gw", "ai_action", GPT4_COMPLEX, reserve=True, reservation_id="long", reservation_ttl_s=600
        )
        made_at = time.monotonic()
        assert short.allowed and long.allowed
    demo_server.kill9()
    demo_server.restart()
    with demo_server.client() as client:
        assert client.get_balance("gw").credits_held == "10"  # both holds came back
        assert wait_for(lambda: client.get_balance("gw").credits_held == "5", 15)
        assert time.monotonic() - made_at >= SHORT_TTL_S - 0.1  # not before its TTL
        balance = client.get_balance("gw")
        assert (balance.credits_available, balance.credits_remaining) == ("95", "100")
        ack = client.ingest_batch([usage("late", "gw", "short")])
        assert [n.reason for n in ack.notices] == [usage_pb2.NOTICE_RESERVATION_EXPIRED]
        # The long hold is still there after a second restart, and a retry of it holds once.
        demo_server.kill9()
        demo_server.restart()
    with demo_server.client() as client:
        again = client.authorize(
            "gw", "ai_action", GPT4_COMPLEX, reserve=True, reservation_id="long", reservation_ttl_s=600
        )
        assert again.allowed and again.reservation_id == "long"
        assert client.get_balance("gw").credits_held == "5"
        released = client.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id="gw", reservation_id="long")
        )
        assert released.released_amount == "5"
        assert client.get_balance("gw").credits_held == "0"


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(TariffError) as failed:
        call()
    return failed.value.code, failed.value.details


def test_reservation_and_top_up_refusals_name_the_field_and_change_nothing(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        contract_id = gateway_customer(client, "gw")
        gateway_customer(client, "other")
        stub = client.balance
        request = balance_pb2.AuthorizeRequest(customer_id="gw", event_type="ai_action", dimensions=GPT4_COMPLEX)
        request.reserve = True
        request.reservation_ttl.seconds = 3601
        assert status_of(lambda: stub.Authorize(request)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "reservation_ttl: must be at most 3600 s (the server's --reservation-ttl-max-s)",
        )
        client.authorize("other", "ai_action", GPT4_COMPLEX, reserve=True, reservation_id="theirs")
        assert status_of(
            lambda: stub.ReleaseReservation(
                balance_pb2.ReleaseReservationRequest(customer_id="gw", reservation_id="theirs")
            )
        ) == (grpc.StatusCode.NOT_FOUND, "customer 'gw' has no reservation 'theirs'")
        assert client.get_balance("other").credits_held == "5"
        contracts = client.contracts
        bad = [
            (
                contracts_pb2.TopUpPolicy(threshold="50", recharge_to="50", price_per_credit="1", max_per_period=1),
                "top_up.threshold",
            ),
            (
                contracts_pb2.TopUpPolicy(threshold="5", recharge_to="50", price_per_credit="-1", max_per_period=1),
                "top_up.price_per_credit",
            ),
            (
                contracts_pb2.TopUpPolicy(threshold="5", recharge_to="50", price_per_credit="1", max_per_period=0),
                "top_up.max_per_period",
            ),
        ]
        for policy, field in bad:
            code, message = status_of(
                lambda p=policy: contracts.SetTopUpPolicy(
                    contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=p)
                )  # type: ignore[misc]
            )
            assert (code, message.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, field)
        assert not contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id)).HasField("top_up")
        good = contracts_pb2.TopUpPolicy(threshold="20", recharge_to="100", price_per_credit="0.9", max_per_period=2)
        set_to = contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=good))
        # Answered with its price's currency: the contract's it was set through (contracts.proto TopUpPolicy.currency).
        assert set_to.top_up == contracts_pb2.TopUpPolicy(
            threshold="20", recharge_to="100", price_per_credit="0.9", max_per_period=2, currency="USD"
        )
        # 100 credits, 5 a use: the 17th use leaves 15 < 20 and buys one top-up back to 100 (85 credits).
        for i in range(17):
            assert client.ingest_batch([usage(f"u{i}", "gw", "")]).accepted == 1
        grants = {g.grant_id: g for g in client.get_balance("gw").grants}
        top_ups = [g for g in grants.values() if g.kind == contracts_pb2.TOP_UP]
        assert [(g.amount, g.remaining) for g in top_ups] == [("85", "85")]
        assert client.get_balance("gw").credits_available == "100"


def test_a_burst_of_concurrent_batches_crossing_the_threshold_tops_up_once(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        contract_id = gateway_customer(client, "gw", block=False)
        policy = contracts_pb2.TopUpPolicy(threshold="40", recharge_to="200", price_per_credit="1", max_per_period=5)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        for i in range(12):  # 60 credits drawn: 40 left, not below the threshold
            client.ingest_batch([usage(f"warm{i}", "gw", "")])

    def stream(number: int) -> int:
        with demo_server.client() as client:
            return sum(client.ingest_batch([usage(f"s{number}-{i}", "gw", "")]).accepted for i in range(2))

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(stream, range(8))) == 16  # 80 credits, crossing the threshold once
    with demo_server.client() as client:
        balance = client.get_balance("gw")
    top_ups = [g for g in balance.grants if g.kind == contracts_pb2.TOP_UP]
    # Whichever batch came first left 35 < 40 and bought 165 (back to 200). The other 15 events drew 75: the
    # prepaid grant's 35 first (a top-up burns last), then 40 of the top-up.
    assert [(g.amount, g.drawn) for g in top_ups] == [("165", "40")]
    assert (balance.credits_available, balance.overage_amount) == ("125", "0")
