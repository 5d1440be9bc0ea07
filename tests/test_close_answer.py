"""ClosePeriod's answer (server/services/invoices.py): the close checks, before anything changes, that the answer
will fit (the draft made into a message as final), then answers the final invoice. When what the close made is the
draft it checked (it is, unless a command applied in between changed the period), the answer is that message,
numbered: made again it would be the same, and an invoice listing 11,000 grants takes 10-40 ms to make into one.
The close command itself builds the invoice once."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from engine import commands as cmd
from engine import invoicing
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
