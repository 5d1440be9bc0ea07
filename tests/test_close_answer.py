"""ClosePeriod's answer (server/services/invoices.py): the close checks, before anything changes, that the answer
will fit (the draft made into a message as final), then answers the final invoice. When what the close made is the
draft it checked (it is, unless a command applied in between changed the period), the answer is that message,
numbered: made again it would be the same, and an invoice listing 11,000 grants takes 10-40 ms to make into one.
The close command itself builds the invoice once. A close refused anyway (a period not ended, no period start)
builds no draft: the refusals that need no invoice come first, as the command makes them."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from google.protobuf import timestamp_pb2
from tariff.v1 import invoices_pb2

from engine import commands as cmd
from engine import invoicing
from engine.errors import EngineError, FailedPrecondition, InvalidArgument
from engine.invoices import Invoice, build_invoice
from server.services import invoices as service
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, basic_world

DAY_MS = 86_400_000
FEB_MS = EPOCH_MS + 31 * DAY_MS
CLOSE_RULES = {
    "rollovers_shown": True,
    "adjustments_in_contract": True,
    "parts_in_contract": True,
    "rolled_breakage_shown": True,
    "expired_breakage_shown": True,
    "spent_grants_left_out": True,
    "closed_in_journal_order": True,
}


def january_ended() -> Ledger:
    """acme's January: 75 units, r (90, rollover 0.5) pays them; the clock at February 2."""
    world = basic_world()
    world.apply(world.grant_command("r", "90", rollover_fraction="0.5"))
    m = Ledger(world)
    m.ingest([event("jan", EPOCH_MS + DAY_MS, 75)], EPOCH_MS + DAY_MS)
    m.advance(FEB_MS + DAY_MS)
    return m


def draft_and_final() -> tuple[Invoice, Invoice]:
    """January's draft, and its final invoice closed on February 2."""
    m = january_ended()
    draft = m.billing.engine.preview("acme", EPOCH_MS)
    final = m.run(cmd.ClosePeriod(FEB_MS + DAY_MS, ACTOR, "acme", EPOCH_MS, **CLOSE_RULES))
    assert isinstance(final, Invoice) and final.final and not draft.final
    return draft, final


def test_the_close_command_builds_the_period_s_invoice_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command builds the final invoice once (the service's check builds the draft before it: ClosePeriod in
    server/services/invoices.py says why both are needed), the invoice builder counted through the real engine."""
    m = january_ended()
    built: list[Invoice] = []
    real = build_invoice  # the one engine/invoicing.py calls

    def counted(*args: Any, **kwargs: Any) -> Invoice:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(invoicing, "build_invoice", counted)
    final = m.run(cmd.ClosePeriod(FEB_MS + DAY_MS, ACTOR, "acme", EPOCH_MS, **CLOSE_RULES))
    assert built == [final]


def test_the_close_answers_the_checked_draft_numbered_without_making_it_again(monkeypatch: pytest.MonkeyPatch) -> None:
    draft, final = draft_and_final()
    expected = service.invoice_pb(final)
    checked = service._closing_check(draft, FEB_MS + DAY_MS)
    made: list[Invoice] = []
    real = service.invoice_pb

    def counted(invoice: Invoice) -> object:
        made.append(invoice)
        return real(invoice)

    monkeypatch.setattr(service, "invoice_pb", counted)
    assert service._closed_answer(final, checked) == expected
    assert made == []  # the draft's message, numbered


def test_a_period_changed_since_the_check_is_made_into_a_message_again() -> None:
    draft, final = draft_and_final()
    checked = service._closing_check(draft, FEB_MS + DAY_MS)
    other = msgspec.structs.replace(final, total_due_minor=final.total_due_minor + 1)
    assert service._closed_answer(other, checked) == service.invoice_pb(other)
    later = msgspec.structs.replace(final, closed_at_ms=final.closed_at_ms + 1)
    assert service._closed_answer(later, service._closing_check(draft, FEB_MS + DAY_MS)) == service.invoice_pb(later)


def test_a_retry_of_a_closed_period_answers_the_checked_invoice() -> None:
    _, final = draft_and_final()
    checked = service._closing_check(final, FEB_MS + 2 * DAY_MS)
    assert service._closed_answer(final, checked) is checked.message
    assert checked.message == service.invoice_pb(final)


class Writer:
    """The sequencer as InvoiceService uses it: applies each command as the writer does, and keeps them."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.commands: list[object] = []

    async def run(self, command: cmd.AdminCommand, deadline_monotonic: float | None = None) -> tuple[int, object]:
        self.commands.append(command)
        return self.ledger.billing.last_seq, self.ledger.run(command)


class Call:
    def invocation_metadata(self) -> tuple[()]:
        return ()


def close(ledger: Ledger, period_start_ms: int, at_ms: int) -> tuple[invoices_pb2.Invoice, Writer]:
    """ClosePeriod's handler (unwrapped from `unary`, which makes an error a status) at at_ms."""
    writer = Writer(ledger)
    invoices = service.InvoiceService(ledger.billing, writer, lambda: at_ms)  # type: ignore[arg-type]
    start = timestamp_pb2.Timestamp()
    start.FromMilliseconds(period_start_ms)
    request = invoices_pb2.ClosePeriodRequest(customer_id="acme", period_start=start)
    handler = service.InvoiceService.ClosePeriod.__wrapped__  # type: ignore[attr-defined]
    return asyncio.run(handler(invoices, request, Call())), writer


def counted_builds(monkeypatch: pytest.MonkeyPatch) -> list[Invoice]:
    built: list[Invoice] = []

    def counted(*args: Any, **kwargs: Any) -> Invoice:
        built.append(build_invoice(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(invoicing, "build_invoice", counted)
    return built


def refusal_of_the_command(ledger: Ledger, period_start_ms: int, at_ms: int) -> EngineError:
    with pytest.raises(EngineError) as refused:
        ledger.run(cmd.ClosePeriod(at_ms, ACTOR, "acme", period_start_ms, **CLOSE_RULES))
    return refused.value


@pytest.mark.parametrize(
    ("period_start_ms", "refusal"),
    [(FEB_MS, FailedPrecondition), (EPOCH_MS + DAY_MS, InvalidArgument)],
    ids=["a period not ended", "no period start"],
)
def test_a_close_refused_anyway_builds_no_draft_and_is_refused_as_the_command_refuses_it(
    monkeypatch: pytest.MonkeyPatch, period_start_ms: int, refusal: type[EngineError]
) -> None:
    """February has not ended on February 2; January 2 starts no period of acme's. Refused on the loop, before the
    draft: no invoice built, no command queued, the command's own status and message."""
    m = january_ended()
    expected = refusal_of_the_command(m, period_start_ms, FEB_MS + DAY_MS)
    built = counted_builds(monkeypatch)
    with pytest.raises(refusal) as refused:
        close(m, period_start_ms, FEB_MS + DAY_MS)
    assert type(refused.value) is type(expected) and str(refused.value) == str(expected)
    assert built == []


def test_a_close_of_an_ended_period_builds_the_draft_and_the_final_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    m = january_ended()
    built = counted_builds(monkeypatch)
    answer, writer = close(m, EPOCH_MS, FEB_MS + DAY_MS)
    final = m.billing.engine.invoice(answer.invoice_number)
    assert len(writer.commands) == 1 and len(built) == 2 and built[1] == final and not built[0].final
    assert answer == service.invoice_pb(final)


def test_a_retry_of_a_closed_period_builds_nothing_and_reads_no_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    m = january_ended()
    final = m.run(cmd.ClosePeriod(FEB_MS + DAY_MS, ACTOR, "acme", EPOCH_MS, **CLOSE_RULES))
    assert isinstance(final, Invoice)
    built = counted_builds(monkeypatch)
    previews: list[object] = []
    monkeypatch.setattr(m.billing.engine, "preview", lambda *args: previews.append(args))
    answer, _ = close(m, EPOCH_MS, FEB_MS + 2 * DAY_MS)
    assert answer == service.invoice_pb(final)
    assert built == [] and previews == []
