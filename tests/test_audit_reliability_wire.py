"""README "Reliability: what is promised, and how it is checked", audited over the wire (tests/serverproc.py).

The promises the suite checked only in part, each against a real server process on a real socket:

- Every state-changing call of README's retry table, retried, answers what the first call made, as it is now,
  and changes nothing (no journal record, no audit entry), again after `kill -9` and after a clean stop; the
  same key with another request is ALREADY_EXISTS (PublishVersion: FAILED_PRECONDITION; AuthorizeBatches:
  RESERVATION_CONFLICT in-band). tests/test_idempotency.py covers the creates before a restart; this adds the
  restarts and the rows it left out (SetTopUpPolicy, CreateAlert, RollbackRateCard, ClosePeriod,
  CloseDuePeriods, Authorize, AuthorizeStream and AuthorizeBatches with reserve, ReleaseReservation).
- A release that rates differently stops at start with one line naming the record, exit status 2, and writes
  nothing (tests/test_sequencer.py checks recover() on an in-memory journal; this checks the process).
- One bad event never sinks its batch, and the batch's outcome (accepted, refused) is the same after `kill -9`.
- A full LMDB map refuses an admin change as it refuses a batch: RESOURCE_EXHAUSTED, nothing committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import lmdb
import msgspec
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from tariff import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted, TariffClient, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.journal import _RECORDS_DB, _seq_key
from server.records import decode_record, encode_record
from tests.audit_fixtures import audit_count
from tests.demo_usage import ACME, demo_batch
from tests.serverproc import ServerFactory, ServerProcess, ServerStartError
from tests.test_audit_invoices_wire import ms, ts
from tests.test_crash import peek_journal

CARD = "rel-credits"
CUSTOMER = "rel"
HOUR_MS = 3_600_000


JAN_2025 = ms("2025-01-01T00:00:00")
JAN = ms("2026-01-01T00:00:00")
CONTRACT = f"{CUSTOMER}-20260101"  # CreateContract without an id names it after the customer and the start


def started(server: ServerProcess) -> ServerProcess:
    """Asserts that the process listening on the server's port is this server's (other test runs share the
    machine: a health probe answered by another process's server would prove nothing)."""
    assert server.running and server.pid is not None
    port_hex = f"{server.port:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC listens on an IPv6 socket, 127.0.0.1 mapped
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port_hex}") and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    owned = set()
    for fd in Path(f"/proc/{server.pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            owned.add(os.readlink(fd))
    assert {f"socket:[{inode}]" for inode in inodes} & owned, f"{server.target} is not served by pid {server.pid}"
    return server


def started_again(server: ServerProcess) -> None:
    server.restart()
    started(server)


def seq_of(client: TariffClient) -> int:
    seq: int = client.get_balance(CUSTOMER).as_of_seq
    return seq


def event(transaction_id: str, at_ms: int, n: float, k: str = "a") -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=CUSTOMER,
        event_type="unit",
        timestamp_ms=at_ms,
        dimensions={"k": k},
        values={"n": n},
    )


# The batches ingested along the way (January's before its period closes), resent after every retry round.
BATCHES = {
    "jan": [event("jan-1", JAN + HOUR_MS, 7)],
    "now": [event("now-1", now_ms() - 60_000, 3, "b"), event("now-2", now_ms() - 60_000, 4)],
}


def hold(reservation_id: str, n: float) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        customer_id=CUSTOMER,
        event_type="unit",
        dimensions={"k": "a"},
        values={"n": n},
        reserve=True,
        request_id=f"req-{reservation_id}",
        reservation_id=reservation_id,
        reservation_ttl=Duration(seconds=3600),
    )


def one_batch_of_holds(
    client: TariffClient, *requests: balance_pb2.AuthorizeRequest
) -> balance_pb2.AuthorizeBatchResult:
    """AuthorizeBatches with one message: its one result."""
    (result,) = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=list(requests))])))
    assert isinstance(result, balance_pb2.AuthorizeBatchResult)
    return result


Call = Callable[[TariffClient], Message]


Expected = Callable[[TariffClient, Message], Message]


def first_answer(client: TariffClient, first: Message) -> Message:
    return first


def contract_now(client: TariffClient, first: Message) -> Message:
    answer: Message = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=CONTRACT))
    return answer


def rate_card_now(client: TariffClient, first: Message) -> Message:
    answer: Message = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
    return answer


def version_now(client: TariffClient, first: Message) -> Message:
    assert isinstance(first, pricing_pb2.RateCardVersion)
    answer: Message = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=first.version))
    return answer


ALREADY_HELD = "already held: this reservation was made by an earlier identical request"


def hold_now(client: TariffClient, first: Message) -> balance_pb2.AuthorizeResponse:
    """The same hold (id, cost, decision), with the credits available now and a message saying it was held before."""
    assert isinstance(first, balance_pb2.AuthorizeResponse)
    answer = balance_pb2.AuthorizeResponse()
    answer.CopyFrom(first)
    answer.credits_available = client.get_balance(CUSTOMER).credits_available
    answer.message = ALREADY_HELD
    return answer


def one_streamed_hold(client: TariffClient, request: balance_pb2.AuthorizeRequest) -> Message:
    """AuthorizeStream with one request: its one answer."""
    (answer,) = list(client.balance.AuthorizeStream(iter([request])))
    found: Message = answer
    return found


def holds_now(client: TariffClient, first: Message) -> Message:
    assert isinstance(first, balance_pb2.AuthorizeBatchResult)
    return balance_pb2.AuthorizeBatchResult(responses=[hold_now(client, r) for r in first.responses])


@dataclasses.dataclass(frozen=True)
class Step:
    """One state-changing call. `again`: what its retry answers, from its first answer. A retry answers what the
    first call made as it is now: a record changed since (a contract's later grants, a draft since published)
    shows the change. `clash`, when given, is the same key with another request."""

    name: str
    call: Call
    clash: Call | None = None
    again: Expected = first_answer


PRODUCT = pricing_pb2.Product(
    id="unit", name="unit", event_type="unit", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["k"]
)
RATE_V1 = pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="1"))
RATE_V2 = pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="2"))
POLICY = contracts_pb2.TopUpPolicy(threshold="100", recharge_to="500", price_per_credit="0.01", max_per_period=3)
GRANT = contracts_pb2.Grant(customer_id=CUSTOMER, kind=contracts_pb2.PREPAID, amount="1000", paid_amount="10")
BIGGER_GRANT = contracts_pb2.Grant(customer_id=CUSTOMER, kind=contracts_pb2.PREPAID, amount="2000", paid_amount="10")
OVERRIDE = contracts_pb2.PriceOverride(product_id="unit", match={"k": "b"}, multiplier="0.5")
ALERT = alerts_pb2.CreateAlertRequest(customer_id=CUSTOMER, type=alerts_pb2.LOW_BALANCE, threshold="50")
NAMED_ALERT = alerts_pb2.CreateAlertRequest(customer_id=CUSTOMER, type=alerts_pb2.LOW_BALANCE, threshold="50", id="low")
NAMED_OVERRIDE = contracts_pb2.PriceOverride(id="half-c", product_id="unit", match={"k": "c"}, multiplier="0.5")


def catalogue_steps() -> list[Step]:
    """The customer, the product, the rate card and its first version, published."""
    return [
        Step(
            "CreateCustomer",
            lambda t: t.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=CUSTOMER, name="Rel")),
            lambda t: t.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=CUSTOMER, name="Other")),
        ),
        Step(
            "CreateProduct",
            lambda t: t.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=PRODUCT)),
            lambda t: t.pricing.CreateProduct(
                pricing_pb2.CreateProductRequest(
                    product=pricing_pb2.Product(id="unit", event_type="other", aggregation=pricing_pb2.COUNT)
                )
            ),
        ),
        Step(
            "CreateRateCard",
            lambda t: t.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="credits")),
            lambda t: t.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="USD")),
            again=rate_card_now,
        ),
        Step(
            "CreateDraftVersion",
            lambda t: t.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=[RATE_V1], request_id="v1")
            ),
            lambda t: t.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=[RATE_V2], request_id="v1")
            ),
            again=version_now,
        ),
        Step(
            "PublishVersion",
            lambda t: t.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(JAN_2025))
            ),
        ),
    ]


def contract_steps() -> list[Step]:
    """The contract, its overrides, grant and top-up policy, and the customer's alerts."""
    return [
        Step(
            "CreateContract",  # no id: named after the customer and the start
            lambda t: t.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(
                    customer_id=CUSTOMER, rate_card_id=CARD, starting_at=ts(JAN), overage_policy=contracts_pb2.ALLOW
                )
            ),
            lambda t: t.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(
                    id=CONTRACT, customer_id=CUSTOMER, rate_card_id=CARD, starting_at=ts(JAN), overage_price="2"
                )
            ),
            again=contract_now,
        ),
        Step(
            "AddOverride",  # no id: named after its content
            lambda t: t.contracts.AddOverride(
                contracts_pb2.AddOverrideRequest(contract_id=CONTRACT, override=OVERRIDE)
            ),
            again=contract_now,
        ),
        Step(
            "GrantCredits",
            lambda t: t.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=GRANT, request_id="topup-1")),
            lambda t: t.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(grant=BIGGER_GRANT, request_id="topup-1")
            ),
        ),
        Step(
            "SetTopUpPolicy",
            lambda t: t.contracts.SetTopUpPolicy(
                contracts_pb2.SetTopUpPolicyRequest(contract_id=CONTRACT, top_up=POLICY)
            ),
            again=contract_now,
        ),
        Step("CreateAlert", lambda t: t.alerts.CreateAlert(ALERT)),  # no id: named after the rule
        Step(
            "CreateAlert with an id",
            lambda t: t.alerts.CreateAlert(NAMED_ALERT),
            lambda t: t.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(
                    customer_id=CUSTOMER, type=alerts_pb2.LOW_BALANCE, threshold="60", id="low"
                )
            ),
        ),
        Step(
            "AddOverride with an id",
            lambda t: t.contracts.AddOverride(
                contracts_pb2.AddOverrideRequest(contract_id=CONTRACT, override=NAMED_OVERRIDE)
            ),
            lambda t: t.contracts.AddOverride(
                contracts_pb2.AddOverrideRequest(
                    contract_id=CONTRACT,
                    override=contracts_pb2.PriceOverride(id="half-c", product_id="unit", price="2"),
                )
            ),
            again=contract_now,
        ),
    ]


def pricing_change_steps(hour_ms: int) -> list[Step]:
    """A second version from two hours on, rolled back from three hours on; January closed."""
    return [
        Step(
            "CreateDraftVersion v2",
            lambda t: t.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(
                    rate_card_id=CARD, based_on_version=1, upsert_rates=[RATE_V2], request_id="v2"
                )
            ),
            again=version_now,
        ),
        Step(
            "PublishVersion v2",
            lambda t: t.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(
                    rate_card_id=CARD, version=2, effective_from=ts(hour_ms + 2 * HOUR_MS)
                )
            ),
        ),
        Step(
            "RollbackRateCard",
            lambda t: t.pricing.RollbackRateCard(
                pricing_pb2.RollbackRateCardRequest(
                    rate_card_id=CARD, to_version=1, effective_from=ts(hour_ms + 3 * HOUR_MS)
                )
            ),
        ),
        Step(
            "ClosePeriod",
            lambda t: t.invoices.ClosePeriod(
                invoices_pb2.ClosePeriodRequest(customer_id=CUSTOMER, period_start=ts(JAN))
            ),
        ),
    ]


def hold_steps() -> list[Step]:
    """Holds by each of the three Authorize RPCs, and one released."""
    return [
        Step(
            "Authorize reserve",
            lambda t: t.balance.Authorize(hold("hold-1", 20)),
            lambda t: t.balance.Authorize(hold("hold-1", 21)),
            again=hold_now,
        ),
        Step(
            "AuthorizeStream reserve",
            lambda t: one_streamed_hold(t, hold("hold-4", 6)),
            lambda t: one_streamed_hold(t, hold("hold-4", 7)),
            again=hold_now,
        ),
        Step("AuthorizeBatches reserve", lambda t: one_batch_of_holds(t, hold("hold-3", 5)), again=holds_now),
        Step(
            "ReleaseReservation",
            lambda t: t.balance.ReleaseReservation(
                balance_pb2.ReleaseReservationRequest(customer_id=CUSTOMER, reservation_id="hold-2")
            ),
        ),
    ]


def retry_table(hour_ms: int) -> list[Step]:
    """Every row of README's retry table but ingestion and CloseDuePeriods (their retries answer differently by
    design: duplicates, no invoices) and DeleteAlertRule (a deleted rule's CreateAlert is refused once it is gone:
    tests/test_audit_alerts_delete_wire.py retries both, after kill -9 and from a snapshot too), in an order that
    lets each first call succeed."""
    return catalogue_steps() + contract_steps() + pricing_change_steps(hour_ms) + hold_steps()


def answers_again_and_changes_nothing(client: TariffClient, steps: list[Step], firsts: dict[str, Message]) -> None:
    """Every step retried: the first call's answer, no journal record, no audit entry; every clash refused."""
    seq, audited = seq_of(client), audit_count(client)
    for step in steps:
        want = step.again(client, firsts[step.name])
        assert step.call(client) == want, f"{step.name}: a retry answers what the first call made, as it is now"
        assert (seq_of(client), audit_count(client)) == (seq, audited), f"{step.name}: a retry changes nothing"
    for step in steps:
        if step.clash is not None:
            with pytest.raises(AlreadyExists):
                step.clash(client)
            assert (seq_of(client), audit_count(client)) == (seq, audited), f"{step.name}: a clash changes nothing"
    with pytest.raises(FailedPrecondition):  # PublishVersion's key with another effective_from
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(JAN))
        )
    (conflict,) = one_batch_of_holds(client, hold("hold-3", 6)).responses
    assert (conflict.allowed, conflict.reason) == (False, "RESERVATION_CONFLICT"), conflict
    assert (seq_of(client), audit_count(client)) == (seq, audited), "AuthorizeBatches: a clash changes nothing"
    assert list(client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices) == []
    for batch_id, sent in BATCHES.items():
        ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id=batch_id, events=sent))
        assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (0, len(sent), []), f"{batch_id}: {ack}"
    assert (seq_of(client), audit_count(client)) == (seq, audited), "resent batches change nothing"


def test_every_state_changing_call_retried_also_after_kill_9_and_a_clean_stop_changes_nothing(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="retries"))
    steps = retry_table(now_ms() // HOUR_MS * HOUR_MS)
    firsts: dict[str, Message] = {}
    with server.client() as client:
        for step in steps:
            if step.name == "ClosePeriod":
                # Usage in the period before it closes, then the period closed, then every other ended period.
                assert client.usage.IngestUsageBatch(
                    usage_pb2.UsageBatch(batch_id="jan", events=BATCHES["jan"])
                ).accepted
            if step.name == "Authorize reserve":
                assert client.usage.IngestUsageBatch(
                    usage_pb2.UsageBatch(batch_id="now", events=BATCHES["now"])
                ).accepted
            if step.name == "ReleaseReservation":
                assert client.balance.Authorize(hold("hold-2", 30)).allowed
            firsts[step.name] = step.call(client)
            if step.name == "ClosePeriod":
                assert client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices
        answers_again_and_changes_nothing(client, steps, firsts)
    server.kill9()  # the keys come back by replaying the journal
    started_again(server)
    with server.client() as client:
        answers_again_and_changes_nothing(client, steps, firsts)
    assert server.terminate() == 0  # and from the snapshot a clean stop writes
    assert peek_journal(server)[0] == peek_journal(server)[1], "the restart restores the snapshot alone"
    started_again(server)
    with server.client() as client:
        answers_again_and_changes_nothing(client, steps, firsts)


# ---------------------------------------------------------------------------------------------
# Recovery checks each replayed batch against the digest journaled with it


def rewrite_digest(journal_dir: Path, seq: int) -> None:
    """What a release rating differently amounts to: record `seq`'s journaled digest is not what replaying its
    batch gives now."""
    env = lmdb.open(str(journal_dir), max_dbs=4, subdir=True)
    try:
        with env.begin(write=True) as txn:
            records = env.open_db(_RECORDS_DB, txn=txn)
            blob = txn.get(_seq_key(seq), db=records)
            assert blob is not None, f"record {seq} is in the journal"
            record = decode_record(blob)
            assert record.usage is not None, f"record {seq} is a usage batch"
            other = bytes(b ^ 0xFF for b in record.usage.digest)
            changed = msgspec.structs.replace(record, usage=msgspec.structs.replace(record.usage, digest=other))
            txn.put(_seq_key(seq), encode_record(changed), db=records)
    finally:
        env.close()


def test_a_batch_that_replays_to_another_digest_stops_the_start_naming_its_record_and_writes_nothing(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(demo=True, name="digest"))
    with server.client() as client:
        ack = client.ingest_batch(demo_batch("d1", "d1", 3).events, "d1")
        assert ack.accepted == 3
        seq = ack.journal_seq
    server.kill9()  # no final snapshot: the batch is replayed at the next start
    ends = peek_journal(server)
    assert ends[0] < seq == ends[1], f"the batch is the last record and after the newest snapshot: {ends}"
    rewrite_digest(server.data_dir / "journal", seq)
    before = (server.data_dir / "journal" / "data.mdb").read_bytes()
    with pytest.raises(ServerStartError):
        server.start()
    assert server.returncode == 2
    said = [line for line in server.log_tail(200).splitlines() if "rating changed between releases" in line]
    assert len(said) == 1 and f"journal record {seq}:" in said[0], server.log_tail()
    assert peek_journal(server) == ends, "nothing written: no record, no snapshot"
    assert (server.data_dir / "journal" / "data.mdb").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# One bad event never sinks its batch, and the outcome holds after kill -9


def test_one_refused_event_leaves_the_rest_of_its_batch_accepted_and_a_resend_after_kill_9_answers_alike(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(demo=True, name="one-bad"))
    batch = demo_batch("mixed", "mixed", 4)
    batch.events[1].timestamp_ms = -5  # refused: not positive
    batch.events[2].customer_id = "nobody"  # refused: unknown customer
    with server.client() as client:
        before = client.get_balance(ACME)
        ack = client.ingest_batch(batch.events, "mixed")
        assert (ack.accepted, ack.duplicates) == (2, 0), ack
        assert [r.index for r in ack.rejected] == [1, 2], ack
        after = client.get_balance(ACME)
        assert Decimal(before.credits_remaining) - Decimal(after.credits_remaining) == Decimal("1")  # 2 x 0.5
        assert after.as_of_seq == before.as_of_seq + 1 == ack.journal_seq
    server.kill9()
    started_again(server)
    with server.client() as client:
        assert client.get_balance(ACME) == after, "the accepted half survived the crash, the refused half left nothing"
        again = client.ingest_batch(batch.events, "mixed")
        assert (again.accepted, again.duplicates) == (0, 2), again
        assert list(again.rejected) == list(ack.rejected), "the same events refused for the same reasons"
        assert client.get_balance(ACME) == after


# ---------------------------------------------------------------------------------------------
# A full LMDB map refuses an admin change as it refuses a batch


def customer_request(n: int) -> contracts_pb2.CreateCustomerRequest:
    attributes = {f"attribute-{a:02d}": f"{n:05d}-{a:02d}-" + "x" * 200 for a in range(20)}
    return contracts_pb2.CreateCustomerRequest(id=f"c-{n:05d}", name=f"Customer {n}", attributes=attributes)


def test_a_full_map_refuses_an_admin_change_whole_keeps_serving_and_a_bigger_map_takes_its_retry(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="full-admin", extra_args=["--map-size-mb", "1"]))
    created: list[contracts_pb2.Customer] = []
    with server.client() as client:
        for n in range(2000):
            try:
                created.append(client.contracts.CreateCustomer(customer_request(n)))
            except ResourceExhausted as refused:
                assert "full" in refused.details, refused.details
                break
        else:
            raise AssertionError("a 1 MiB map never filled up")
        assert created, "the map was full before the first change"
        refused_id = f"c-{len(created):05d}"
        with pytest.raises(NotFound):
            client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=refused_id))
        listed = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=1000)).customers
        assert [c.id for c in listed] == [c.id for c in created], "reads still answer; the refused change is absent"
        assert server.running
    server.kill9()
    assert peek_journal(server)[1] == len(created), "one record per acknowledged change, none for the refused one"
    server.extra_args = ("--map-size-mb", "64")
    started_again(server)
    with server.client() as client:
        again = client.contracts.CreateCustomer(customer_request(len(created)))
        assert again.id == refused_id
        for n, first in enumerate(created):
            assert client.contracts.CreateCustomer(customer_request(n)) == first, "acknowledged: a retry finds it"
        assert client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=refused_id)) == again
