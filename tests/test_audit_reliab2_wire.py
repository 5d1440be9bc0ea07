"""README "Reliability: what is promised, and how it is checked", second audit over the wire (tests/serverproc.py).

What tests/test_audit_reliability_wire.py and the others did not send, each against a real server process:

- A usage batch acknowledged, then `kill -9` before any snapshot holds it: after the restart the balance (with the
  top-up it bought), the contract, the invoice draft, the explain pages (a page token from before the crash
  included), the alerts and the audit log show it exactly once; its resend on a new stream is all duplicates and
  changes none of them, also after a clean stop.
- An `IngestUsage` ack lost with its stream (the call cancelled before the ack is read): the batch resent on a new
  stream is all duplicates with the current journal_seq; across a `kill -9`, all accepted or all duplicates, and
  charged once. A batch refused whole mid-stream (past the events limit, or for its key): those before it acked,
  none sent after it applied, though already sent.
- GrantCredits: a top-up id taken before the server gives it, the server's top-up then under the id with a '+'.
- PublishVersion and RollbackRateCard retried after a retroactive first call: the version, counts zero, nothing
  re-rated again (the docs said a rollback's retry "is answered as the first one was").
- Holds retried once ended (settled, released, expired while no server ran) and a hold that bought a top-up.
- A refused event keeps no key; a resend and its refusals are answered word for word alike after restarts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    TariffClient,
    now_ms,
)
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory, wait_for
from tests.test_audit_invoices_wire import ms, ts
from tests.test_audit_reliability_wire import started, started_again
from tests.test_crash import peek_journal
from tests.test_server_auth import Keys

CUSTOMER = "r2"
CARD = "r2-card"
CONTRACT = "r2-contract"
JAN_2025 = ms("2025-01-01T00:00:00")
JAN = ms("2026-01-01T00:00:00")

PRODUCT = pricing_pb2.Product(
    id="unit", name="unit", event_type="unit", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["k"]
)
RATE = pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="1"))
POLICY = contracts_pb2.TopUpPolicy(threshold="20", recharge_to="100", price_per_credit="0.01", max_per_period=3)


def set_up(client: TariffClient, policy: bool = True) -> None:
    """A customer on a card pricing one unit of `n` at 1 credit, with 100 prepaid credits (and a top-up policy:
    below 20 available, buy up to 100)."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=CUSTOMER, name="R2"))
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=PRODUCT))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=[RATE], request_id="v1")
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(JAN_2025))
    )
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=CONTRACT,
            customer_id=CUSTOMER,
            rate_card_id=CARD,
            starting_at=ts(JAN),
            overage_policy=contracts_pb2.ALLOW,
        )
    )
    client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id="g1", customer_id=CUSTOMER, kind=contracts_pb2.PREPAID, amount="100", paid_amount="10"
            )
        )
    )
    if policy:
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=CONTRACT, top_up=POLICY))


A_MINUTE_AGO = now_ms() - 60_000  # the same instant for every event built alike: a resend is identical
# Instants above are taken at import: conftest.py skips the module once a calendar month has turned since.
pytestmark = pytest.mark.clock_at_import


def event(transaction_id: str, n: float, k: str = "a", at_ms: int | None = None) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=CUSTOMER,
        event_type="unit",
        timestamp_ms=A_MINUTE_AGO if at_ms is None else at_ms,
        dimensions={"k": k},
        values={"n": n},
    )


def on_a_new_stream(client: TariffClient, *batches: usage_pb2.UsageBatch) -> list[usage_pb2.IngestAck]:
    acks = list(client.usage.IngestUsage(iter(batches)))
    assert len(acks) == len(batches), acks
    return acks


def explain_pages(client: TariffClient, line_id: str, period_start: Timestamp) -> list[invoices_pb2.ExplainedEvent]:
    """Every event of the line, page after page (two a page)."""
    events: list[invoices_pb2.ExplainedEvent] = []
    token = ""
    while True:
        page = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(
                customer_id=CUSTOMER, period_start=period_start, line_id=line_id, page_size=2, page_token=token
            )
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


def next_page_of(client: TariffClient, page: invoices_pb2.ExplainLineItemResponse) -> list[str]:
    """The transaction ids of the page after `page` of line unit;k=a of the current period (one a page)."""
    draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=CUSTOMER))
    answer = client.invoices.ExplainLineItem(
        invoices_pb2.ExplainLineItemRequest(
            customer_id=CUSTOMER,
            period_start=draft.period_start,
            line_id="unit;k=a",
            page_size=1,
            page_token=page.next_page_token,
        )
    )
    return [e.transaction_id for e in answer.events]


def all_alerts(client: TariffClient) -> list[alerts_pb2.Alert]:
    """Every alert kept, oldest first: WatchAlerts from the start, read until it has been quiet for a second."""
    alerts: list[alerts_pb2.Alert] = []
    try:
        for alert in client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=1.0):
            alerts.append(alert)
    except DeadlineExceeded:
        pass
    return alerts


def what_a_customer_sees(client: TariffClient) -> dict[str, object]:
    """Everything the batch shows in: balance (grants, top-ups), contract, the invoice draft, its lines' explain
    pages, and the audit log."""
    draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=CUSTOMER))
    explained = {line.line_id: explain_pages(client, line.line_id, draft.period_start) for line in draft.lines}
    audit = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries
    contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=CONTRACT))
    return {
        "balance": client.get_balance(CUSTOMER),
        "contract": contract,
        "draft": draft,
        "explained": explained,
        "audit": list(audit),
    }


# ---------------------------------------------------------------------------------------------
# A batch acked, then kill -9 before a snapshot holds it


def test_a_batch_acked_then_kill_9_before_a_snapshot_shows_once_everywhere_and_its_resend_changes_nothing(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="acked-kill"))
    batch = usage_pb2.UsageBatch(
        batch_id="b1", events=[event("t-1", 30), event("t-2", 30, "b"), event("t-3", 25), event("t-4", 1, "b")]
    )
    with server.client() as client:
        set_up(client)
        for type_, threshold in ((alerts_pb2.SPEND_THRESHOLD, "80"), (alerts_pb2.TOP_UP_EXECUTED, "")):
            rule = alerts_pb2.CreateAlertRequest(customer_id=CUSTOMER, type=type_, threshold=threshold)
            client.alerts.CreateAlert(rule)
        (ack,) = on_a_new_stream(client, batch)
        assert (ack.batch_id, ack.accepted, ack.duplicates, list(ack.rejected)) == ("b1", 4, 0, []), ack
        seen = what_a_customer_sees(client)
        alerts = all_alerts(client)
        fired = sorted(a.type for a in alerts)
        assert fired == [alerts_pb2.SPEND_THRESHOLD, alerts_pb2.TOP_UP_EXECUTED], alerts
        draft = seen["draft"]
        assert isinstance(draft, invoices_pb2.Invoice)
        line_a = "unit;k=a"
        first_page = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(
                customer_id=CUSTOMER, period_start=draft.period_start, line_id=line_a, page_size=1
            )
        )
        assert first_page.next_page_token, first_page
    balance = seen["balance"]
    kinds = [g.kind for g in balance.grants]  # type: ignore[attr-defined]
    assert kinds.count(contracts_pb2.TOP_UP) == 1, f"86 drawn of 100 leaves 14 < 20: one top-up bought: {balance}"
    assert Decimal(balance.period_charges) == 86, balance  # type: ignore[attr-defined]
    explained = seen["explained"]
    assert isinstance(explained, dict)
    charged = sorted(e.transaction_id for events in explained.values() for e in events)
    assert charged == ["t-1", "t-2", "t-3", "t-4"], "each event explained once"
    server.kill9()
    snapshot_seq, last_seq = peek_journal(server)
    assert snapshot_seq < ack.journal_seq == last_seq, "the batch is replayed, not restored from a snapshot"
    started_again(server)
    with server.client() as client:
        assert what_a_customer_sees(client) == seen, "after kill -9: the batch once, its top-up once"
        assert next_page_of(client, first_page) == ["t-3"], "a page token from before the crash still pages on"
        (again,) = on_a_new_stream(client, batch)
        assert (again.batch_id, again.accepted, again.duplicates, list(again.rejected)) == ("b1", 0, 4, []), again
        assert again.journal_seq == ack.journal_seq, "a batch that accepts nothing carries the current seq"
        assert what_a_customer_sees(client) == seen, "the resend changed nothing"
        assert all_alerts(client) == alerts, "the batch's alerts, replayed once, and none for its resend"
    assert server.terminate() == 0  # a clean stop: the restart restores the snapshot it writes
    assert peek_journal(server) == (last_seq, last_seq), "the resend wrote no record"
    started_again(server)
    with server.client() as client:
        assert what_a_customer_sees(client) == seen
        assert next_page_of(client, first_page) == ["t-3"], "and after a clean stop"
        assert all_alerts(client) == alerts


# ---------------------------------------------------------------------------------------------
# An IngestUsage ack lost with its stream, the batch resent on a new stream


def lose_the_ack(client: TariffClient, batch: usage_pb2.UsageBatch, seq_before: int) -> None:
    """Sends the batch on a stream and cancels the stream, unread, once the batch shows in the balance: its ack,
    if it was sent, is lost with the stream."""
    done = threading.Event()

    def batches() -> Iterator[usage_pb2.UsageBatch]:
        yield batch
        done.wait(30)  # the stream stays open until it is cancelled

    call = client.usage.IngestUsage(batches())
    try:
        assert wait_for(lambda: client.get_balance(CUSTOMER).as_of_seq > seq_before, 30), "the batch never applied"
    finally:
        call.cancel()
        done.set()


def test_an_ack_lost_with_its_stream_then_the_batch_resent_on_a_new_stream_is_all_duplicates(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="lost-ack"))
    batch = usage_pb2.UsageBatch(batch_id="lost", events=[event("l-1", 5), event("l-2", 6, "b")])
    with server.client() as client:
        set_up(client, policy=False)
        before = client.get_balance(CUSTOMER)
        lose_the_ack(client, batch, before.as_of_seq)
        applied = client.get_balance(CUSTOMER)
        assert Decimal(before.credits_remaining) - Decimal(applied.credits_remaining) == 11, applied
        (again,) = on_a_new_stream(client, batch)
        assert (again.batch_id, again.accepted, again.duplicates, list(again.rejected)) == ("lost", 0, 2, []), again
        assert again.journal_seq == applied.as_of_seq == before.as_of_seq + 1, again
        assert client.get_balance(CUSTOMER) == applied, "the resend charged nothing"
        # Resent with the batch after it on one new stream: the lost one duplicates, the next one accepted.
        after_it = usage_pb2.UsageBatch(batch_id="next", events=[event("l-3", 2)])
        acks = on_a_new_stream(client, batch, after_it)
        assert [(a.batch_id, a.accepted, a.duplicates) for a in acks] == [("lost", 0, 2), ("next", 1, 0)], acks
        assert Decimal(applied.credits_remaining) - Decimal(client.get_balance(CUSTOMER).credits_remaining) == 2


def test_an_ack_lost_then_kill_9_the_resend_is_all_accepted_or_all_duplicates_and_charged_once(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="lost-ack-kill"))
    batch = usage_pb2.UsageBatch(batch_id="lost", events=[event(f"k-{i}", 1 + i, "ab"[i % 2]) for i in range(6)])
    with server.client() as client:
        set_up(client, policy=False)
        before = client.get_balance(CUSTOMER)
        lose_the_ack(client, batch, before.as_of_seq)
    server.kill9()
    started_again(server)
    with server.client() as client:
        (again,) = on_a_new_stream(client, batch)
        assert list(again.rejected) == [], again
        assert (again.accepted, again.duplicates) in ((6, 0), (0, 6)), f"never a mix: {again}"
        after = client.get_balance(CUSTOMER)
        assert Decimal(before.credits_remaining) - Decimal(after.credits_remaining) == 21, "charged once"
        assert after.as_of_seq == before.as_of_seq + 1, "one record for the batch, however often sent"
        (third,) = on_a_new_stream(client, batch)
        assert (third.accepted, third.duplicates, third.journal_seq) == (0, 6, after.as_of_seq), third


# ---------------------------------------------------------------------------------------------
# GrantCredits: ids the server gives top-ups, taken before it gives them and after


def grant_request(id_: str = "", request_id: str = "", amount: str = "5") -> contracts_pb2.GrantCreditsRequest:
    return contracts_pb2.GrantCreditsRequest(
        grant=contracts_pb2.Grant(
            id=id_, customer_id=CUSTOMER, kind=contracts_pb2.PREPAID, amount=amount, paid_amount="1"
        ),
        request_id=request_id,
    )


def grant_ids(client: TariffClient) -> dict[str, int]:
    return {g.grant_id: g.kind for g in client.get_balance(CUSTOMER).grants}


def test_a_top_up_id_taken_before_the_server_gives_it_and_the_one_it_then_gives_hold_across_kill_9(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="top-up-ids"))
    with server.client() as client:
        set_up(client)
        period_ms = client.get_balance(CUSTOMER).period_start.ToMilliseconds()
        taken = f"top-up-{period_ms}-1"  # the id the period's first top-up is about to get
        first = client.contracts.GrantCredits(grant_request(taken))
        assert first.id == taken
        ack = client.ingest_batch([event("u-1", 90)], "u")  # 105 - 90 = 15 available < 20: a top-up
        assert ack.accepted == 1, ack
        made = taken + "+"
        ids = grant_ids(client)
        assert (ids.get(taken), ids.get(made)) == (contracts_pb2.PREPAID, contracts_pb2.TOP_UP), ids
        seen = what_a_customer_sees(client)
        for restart in (server.kill9, server.terminate):
            assert client.contracts.GrantCredits(grant_request(taken)) == first, "the taker's retry answers alike"
            with pytest.raises(AlreadyExists):
                client.contracts.GrantCredits(grant_request(taken, amount="6"))
            with pytest.raises(AlreadyExists):  # the id the server gave its top-up
                client.contracts.GrantCredits(grant_request(made))
            assert what_a_customer_sees(client) == seen, "retries and refusals change nothing"
            client.close()
            restart()
            started_again(server)
            client = server.client()
            assert what_a_customer_sees(client) == seen, f"after {restart.__name__}: both grants, each once"
        client.close()


# ---------------------------------------------------------------------------------------------
# PublishVersion retried without effective_from; a retroactive publish's retry re-rates nothing again


def test_a_retroactive_publish_retried_with_no_effective_from_answers_its_version_and_re_rates_nothing_again(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="publish-retry"))
    hour_ms = now_ms() // 3_600_000 * 3_600_000
    with server.client() as client:
        set_up(client, policy=False)
        client.ingest_batch([event("p-1", 10, at_ms=hour_ms - 3_600_000 + 1_000)], "p")
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=1,
                upsert_rates=[pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="2"))],
                request_id="v2",
            )
        )
        publish = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD, version=2, effective_from=ts(hour_ms - 3_600_000)
        )
        first = client.pricing.PublishVersion(publish)
        assert (first.events_rerated, Decimal(first.rerated_amount_delta)) == (1, Decimal(10)), first
        seen = what_a_customer_sees(client)
        assert Decimal(seen["balance"].period_charges) == 20  # type: ignore[attr-defined]
    retried = pricing_pb2.PublishVersionResponse()
    retried.CopyFrom(first)
    retried.events_rerated, retried.customers_rerated, retried.buckets_rerated = 0, 0, 0
    retried.rerated_amount_delta = "0"
    for restart in (None, server.kill9, server.terminate):
        if restart is not None:
            restart()
            started_again(server)
        with server.client() as client:
            for request in (publish, pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2)):
                answer = client.pricing.PublishVersion(request)
                assert answer.version == first.version, answer
                assert answer == retried, f"a retry re-rates nothing again: {answer}"
            with pytest.raises(FailedPrecondition):
                client.pricing.PublishVersion(
                    pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(hour_ms))
                )
            assert what_a_customer_sees(client) == seen, "nothing re-rated twice"


# ---------------------------------------------------------------------------------------------
# Holds retried once they have ended (settled, released), across kill -9 and a clean stop


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


def release(reservation_id: str) -> balance_pb2.ReleaseReservationRequest:
    return balance_pb2.ReleaseReservationRequest(customer_id=CUSTOMER, reservation_id=reservation_id)


def test_ended_holds_retried_answer_how_they_ended_and_hold_nothing_also_after_kill_9_and_a_clean_stop(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="ended-holds"))
    settling = usage_pb2.UsageBatch(batch_id="s", events=[event("s-1", 7)])
    settling.events[0].reservation_id = "h-settled"
    with server.client() as client:
        set_up(client, policy=False)
        assert client.balance.Authorize(hold("h-settled", 10)).allowed
        assert client.balance.Authorize(hold("h-released", 20)).allowed
        released = client.balance.ReleaseReservation(release("h-released"))
        assert Decimal(released.released_amount) == 20, released
        ack = client.ingest_batch(list(settling.events), "s")
        assert (ack.accepted, list(ack.notices)) == (1, []), ack
        seen = what_a_customer_sees(client)
        assert Decimal(seen["balance"].credits_held) == 0  # type: ignore[attr-defined]
        answers = {rid: client.balance.Authorize(hold(rid, n)) for rid, n in (("h-settled", 10), ("h-released", 20))}
    assert answers["h-settled"].message.startswith("this reservation was already settled at "), answers
    assert answers["h-released"].message.startswith("this reservation was already released at "), answers
    assert all(a.message.endswith("; nothing is held") for a in answers.values()), answers
    for restart in (None, server.kill9, server.terminate):
        if restart is not None:
            restart()
            started_again(server)
        with server.client() as client:
            for rid, n in (("h-settled", 10), ("h-released", 20)):
                assert client.balance.Authorize(hold(rid, n)) == answers[rid], f"{rid}: answers how it ended"
                (streamed,) = list(client.balance.AuthorizeStream(iter([hold(rid, n)])))
                assert streamed == answers[rid], f"{rid} on AuthorizeStream"
                with pytest.raises(AlreadyExists):
                    client.balance.Authorize(hold(rid, n + 1))
            assert client.balance.ReleaseReservation(release("h-released")) == released
            with pytest.raises(FailedPrecondition):
                client.balance.ReleaseReservation(release("h-settled"))
            again = client.ingest_batch(list(settling.events), "s")
            assert (again.accepted, again.duplicates, list(again.notices)) == (0, 1, []), again
            assert what_a_customer_sees(client) == seen, "retries of ended holds hold and charge nothing"


# ---------------------------------------------------------------------------------------------
# A batch refused whole mid-stream: the ones before it acked, none after it applied


def test_a_batch_refused_whole_mid_stream_leaves_the_batches_sent_after_it_unapplied_for_a_new_stream(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="refused-mid", extra_args=["--batch-events-max", "3"]))
    before_it = [usage_pb2.UsageBatch(batch_id=f"a{i}", events=[event(f"a-{i}", 1)]) for i in range(3)]
    too_big = usage_pb2.UsageBatch(batch_id="big", events=[event(f"big-{i}", 1) for i in range(4)])
    after_it = [usage_pb2.UsageBatch(batch_id=f"z{i}", events=[event(f"z-{i}", 2, "b")]) for i in range(20)]
    with server.client() as client:
        set_up(client, policy=False)
        start = client.get_balance(CUSTOMER)
        acks: list[usage_pb2.IngestAck] = []
        with pytest.raises(ResourceExhausted) as refused:
            for ack in client.usage.IngestUsage(iter([*before_it, too_big, *after_it])):
                acks.append(ack)
        assert "at most 3 events" in refused.value.details, refused.value.details
        assert [(a.batch_id, a.accepted) for a in acks] == [(b.batch_id, 1) for b in before_it], acks
        charged = Decimal(start.credits_remaining) - Decimal(client.get_balance(CUSTOMER).credits_remaining)
        assert charged == 3, "the batches before the refused one, and none after it"
    server.kill9()
    started_again(server)
    with server.client() as client:
        resent = on_a_new_stream(client, *before_it, *after_it)
        assert [(a.accepted, a.duplicates) for a in resent] == [(0, 1)] * 3 + [(1, 0)] * 20, resent
        charged = Decimal(start.credits_remaining) - Decimal(client.get_balance(CUSTOMER).credits_remaining)
        assert charged == 3 + 40


# ---------------------------------------------------------------------------------------------
# A refused event keeps no key: the same transaction id, sent again once it can be accepted, is accepted


def test_an_event_refused_then_sent_again_fixed_or_once_priced_is_accepted_once_across_kill_9(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="refused-then-fixed"))
    bad = event("f-1", -1)  # INVALID_EVENT: a negative value
    unpriced = event("f-2", 3)
    unpriced.event_type = "later"  # feeds a product the card does not price yet: NO_APPLICABLE_RATE
    with server.client() as client:
        set_up(client, policy=False)
        client.pricing.CreateProduct(
            pricing_pb2.CreateProductRequest(
                product=pricing_pb2.Product(
                    id="later", name="later", event_type="later", aggregation=pricing_pb2.SUM, value_key="n"
                )
            )
        )
        ack = client.ingest_batch([bad, unpriced], "f")
        reasons = [(r.transaction_id, r.reason) for r in ack.rejected]
        assert reasons == [("f-1", usage_pb2.INVALID_EVENT), ("f-2", usage_pb2.NO_APPLICABLE_RATE)], ack
        start = client.get_balance(CUSTOMER)
    server.kill9()
    started_again(server)
    with server.client() as client:
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=1,
                upsert_rates=[pricing_pb2.Rate(product_id="later", unit=pricing_pb2.UnitPrice(price="3"))],
                request_id="v2",
            )
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(JAN_2025))
        )
        fixed = event("f-1", 4)
        ack = client.ingest_batch([fixed, unpriced], "f")
        assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (2, 0, []), ack
        charged = Decimal(start.credits_remaining) - Decimal(client.get_balance(CUSTOMER).credits_remaining)
        assert charged == 4 + 9, charged
    server.kill9()
    started_again(server)
    with server.client() as client:
        again = client.ingest_batch([fixed, unpriced], "f")
        assert (again.accepted, again.duplicates, list(again.rejected)) == (0, 2, []), again
        (conflict,) = client.ingest_batch([event("f-1", 5)], "f").rejected  # other content under a taken id
        assert conflict.reason == usage_pb2.DUPLICATE_CONFLICT, conflict
        assert Decimal(start.credits_remaining) - Decimal(client.get_balance(CUSTOMER).credits_remaining) == 13


# ---------------------------------------------------------------------------------------------
# Resends answered alike, word for word, before and after kill -9 and a clean stop


def test_a_resend_and_its_refusals_are_answered_word_for_word_alike_after_kill_9_and_a_clean_stop(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="alike"))
    jan = JAN + 3_600_000
    with server.client() as client:
        set_up(client, policy=False)
        first = client.ingest_batch([event("w-1", 2), event("w-jan", 1, at_ms=jan)], "w")
        assert first.accepted == 2, first
        client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=CUSTOMER, period_start=ts(JAN)))
        same_twice = event("w-2", 3)
        other = event("w-2", 4)
        resend = [
            event("w-1", 2),  # duplicate
            event("w-1", 5),  # DUPLICATE_CONFLICT
            event("w-late", 1, at_ms=jan + 1),  # PERIOD_CLOSED
            event("w-early", 1, at_ms=JAN - 1),  # NO_ACTIVE_CONTRACT
            same_twice,  # accepted the first time, then a duplicate
            same_twice,  # a duplicate within its own batch
            other,  # a conflict within its own batch
        ]
        ack = client.ingest_batch(resend, "r")
        assert (ack.accepted, ack.duplicates) == (1, 2), f"w-1 and w-2's second copy duplicates: {ack}"
        answers = [client.ingest_batch(resend, "r") for _ in range(2)]
        assert answers[0] == answers[1], "a resend, answered twice alike"
        answer = answers[0]
        reasons = [(r.index, r.reason) for r in answer.rejected]
        assert (answer.accepted, answer.duplicates) == (0, 7 - len(reasons)), answer
        assert (1, usage_pb2.DUPLICATE_CONFLICT) in reasons and (2, usage_pb2.PERIOD_CLOSED) in reasons, answer
        assert (3, usage_pb2.NO_ACTIVE_CONTRACT) in reasons and (6, usage_pb2.DUPLICATE_CONFLICT) in reasons, answer
        seen = what_a_customer_sees(client)
    for restart in (server.kill9, server.terminate):
        restart()
        started_again(server)
        with server.client() as client:
            assert client.ingest_batch(resend, "r") == answer, f"after {restart.__name__}: the same answer"
            assert what_a_customer_sees(client) == seen


def test_a_hold_whose_ttl_ran_out_while_the_server_was_down_is_retried_as_expired_alike_after_each_restart(
    server_factory: ServerFactory,
) -> None:
    server = started(server_factory(name="expired-down"))
    request = hold("h-short", 10)
    request.reservation_ttl.CopyFrom(Duration(seconds=1))
    with server.client() as client:
        set_up(client, policy=False)
        for type_ in (alerts_pb2.RESERVATION_EXPIRED, alerts_pb2.CREDITS_EXHAUSTED):
            client.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(customer_id=CUSTOMER, type=type_))
        first = client.balance.Authorize(request)
        assert first.allowed, first
        before = client.get_balance(CUSTOMER)
        assert Decimal(before.credits_held) == 10, before
    server.kill9()
    time.sleep(1.5)  # the TTL runs out while no server runs
    started_again(server)
    with server.client() as client:
        assert wait_for(lambda: Decimal(client.get_balance(CUSTOMER).credits_held) == 0, 10), "expired at start"
        answer = client.balance.Authorize(request)
        assert answer.message.startswith("this reservation was already expired at "), answer
        assert (answer.allowed, answer.estimated_cost, answer.reservation_id) == (True, "10", "h-short"), answer
        with pytest.raises(FailedPrecondition):
            client.balance.ReleaseReservation(release("h-short"))
        seen = what_a_customer_sees(client)
        assert Decimal(seen["balance"].credits_available) == Decimal(before.credits_available) + 10  # type: ignore[attr-defined]
        alerts = all_alerts(client)
        assert [a.type for a in alerts] == [alerts_pb2.RESERVATION_EXPIRED], alerts
    for restart in (server.kill9, server.terminate):
        restart()
        started_again(server)
        with server.client() as client:
            assert client.balance.Authorize(request) == answer, f"after {restart.__name__}: expired at the same instant"
            assert what_a_customer_sees(client) == seen
            assert all_alerts(client) == alerts, f"after {restart.__name__}: the expiry alerted once"


def test_a_retroactive_rollback_retried_answers_its_copy_with_zero_counts_and_re_rates_nothing_again(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto said a retried rollback "is answered as the first one was"; the server answers the copy with
    the re-rating counts zero, as PublishVersionResponse says of a retried publish (the retry re-rated nothing),
    and the docs now say so."""
    server = started(server_factory(name="rollback-retry"))
    last_hour = now_ms() // 3_600_000 * 3_600_000 - 3_600_000
    rollback = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=ts(last_hour))
    with server.client() as client:
        set_up(client, policy=False)
        client.ingest_batch([event("rb-1", 10, at_ms=last_hour + 1_000)], "rb")
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=1,
                upsert_rates=[pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="2"))],
                request_id="v2",
            )
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(last_hour))
        )
        first = client.pricing.RollbackRateCard(rollback)
        assert (first.version.version, first.version.rollback_to_version) == (3, 1), first
        assert (first.events_rerated, first.buckets_rerated, Decimal(first.rerated_amount_delta)) == (
            1,
            1,
            Decimal(-10),
        )
        seen = what_a_customer_sees(client)
        assert Decimal(seen["balance"].period_charges) == 10  # type: ignore[attr-defined]
    retried = pricing_pb2.PublishVersionResponse(
        version=first.version, validation=first.validation, rerated_amount_delta="0", closed_amount_left_alone="0"
    )
    for restart in (None, server.kill9, server.terminate):
        if restart is not None:
            restart()
            started_again(server)
        with server.client() as client:
            assert client.pricing.RollbackRateCard(rollback) == retried, "the copy, and nothing re-rated again"
            assert what_a_customer_sees(client) == seen, "no second copy, no second re-rating"


def test_a_hold_that_bought_a_top_up_retried_after_kill_9_holds_and_buys_once(server_factory: ServerFactory) -> None:
    server = started(server_factory(name="hold-top-up"))
    with server.client() as client:
        set_up(client)
        first = client.balance.Authorize(hold("h-big", 90))  # 10 left available < 20: the hold buys 90
        assert (first.allowed, first.estimated_cost, first.credits_available) == (True, "90", "100"), first
        seen = what_a_customer_sees(client)
    kinds = [g.kind for g in seen["balance"].grants]  # type: ignore[attr-defined]
    assert kinds.count(contracts_pb2.TOP_UP) == 1, seen["balance"]
    retried = balance_pb2.AuthorizeResponse()
    retried.CopyFrom(first)
    retried.message = "already held: this reservation was made by an earlier identical request"
    server.kill9()
    assert peek_journal(server)[0] < peek_journal(server)[1], "the hold is replayed, not restored"
    for restart in (None, server.terminate):
        if restart is not None:
            restart()
        started_again(server)
        with server.client() as client:
            assert what_a_customer_sees(client) == seen, "the hold and its top-up, each once"
            assert client.balance.Authorize(hold("h-big", 90)) == retried
            (streamed,) = list(client.balance.AuthorizeStream(iter([hold("h-big", 90)])))
            assert streamed == retried
            assert what_a_customer_sees(client) == seen, "the retries held and bought nothing"


def test_a_batch_refused_for_its_key_mid_stream_leaves_the_batches_sent_after_it_unapplied(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The PERMISSION_DENIED path of "a batch refused whole ends the stream ... none sent after it is applied",
    with the batches after it already sent (tests/test_server_auth.py sends them one ack at a time)."""
    keys = Keys(tmp_path / "keys.json", {"admin": ("admin", None), "r2-meter": ("ingest", [CUSTOMER])})
    server = started(server_factory(name="denied-mid", extra_args=keys.args, api_key=keys.key["admin"]))
    before_it = [usage_pb2.UsageBatch(batch_id=f"a{i}", events=[event(f"a-{i}", 1)]) for i in range(3)]
    foreign = usage_pb2.UsageBatch(batch_id="foreign", events=[event("f-0", 1), event("f-1", 1)])
    foreign.events[1].customer_id = "other"
    after_it = [usage_pb2.UsageBatch(batch_id=f"z{i}", events=[event(f"z-{i}", 2, "b")]) for i in range(20)]
    with server.client() as admin:
        set_up(admin, policy=False)
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="other", name="Other"))
        start = admin.get_balance(CUSTOMER)
    with server.client(api_key=keys.key["r2-meter"]) as meter:
        acks: list[usage_pb2.IngestAck] = []
        with pytest.raises(PermissionDenied):
            for ack in meter.usage.IngestUsage(iter([*before_it, foreign, *after_it])):
                acks.append(ack)
        assert [(a.batch_id, a.accepted) for a in acks] == [(b.batch_id, 1) for b in before_it], acks
    with server.client() as admin:
        charged = Decimal(start.credits_remaining) - Decimal(admin.get_balance(CUSTOMER).credits_remaining)
        assert charged == 3, "the batches before the refused one, and none after it"
        resent = on_a_new_stream(admin, *before_it, *after_it)
        assert [(a.accepted, a.duplicates) for a in resent] == [(0, 1)] * 3 + [(1, 0)] * 20, resent
