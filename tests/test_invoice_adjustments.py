"""A re-rated invoice line shows its adjustments (engine/invoices.py): one per hour bucket a retroactive publish
priced again, citing the publish's journal seq, the old and new versions and the exact amounts, only for the
buckets whose hour starts in the invoice's period; the preview equals the final invoice, adjustments included."""

from __future__ import annotations

from engine.invoices import LineAdjustment
from server.services.invoices import invoice_pb
from tests.engine_fixtures import DAY_MS, EPOCH_MS, HOUR_MS, rate, unit
from tests.test_invoices_engine import FEB_1_MS, draft_fields, tokens, world

E12 = 10**12
E18 = 10**18


def test_a_retroactive_publish_shows_its_adjustments_on_the_lines_it_rerated() -> None:
    w = world([(EPOCH_MS, "2", "1")])  # v1: gpt4 2 a token, claude 1
    w.grant("prepaid", "100")
    january = [tokens("t1", EPOCH_MS + HOUR_MS, 2), tokens("t2", EPOCH_MS + 6 * HOUR_MS, 2)]
    assert w.usage([*january, tokens("t3", EPOCH_MS + 7 * HOUR_MS, 1.5, "claude")]).accepted == 3
    assert w.usage([tokens("t4", FEB_1_MS + HOUR_MS, 1)], received_ms=FEB_1_MS + 2 * HOUR_MS).accepted == 1
    before = w.engine.preview("acme", EPOCH_MS)
    assert [line.adjustments for line in before.lines] == [[], []]

    # v2 from hour 5: gpt4 3 a token. Hour 6 holds tokens 3-4 of the period: 3 x 4 - 3 x 2 = 6 (was 2 x 2 = 4).
    # Claude keeps its price, but its bucket is now priced by v2: an adjustment of the same amount.
    v2 = w.draft([rate("tokens", unit("3"), model="gpt4"), rate("tokens", unit("1"), model="claude")])
    w.publish(v2.number, effective_from_ms=EPOCH_MS + 5 * HOUR_MS, at_ms=FEB_1_MS + 3 * HOUR_MS)
    first_seq = w.seq
    # v3 from hour 0: gpt4 2.5 a token, in force until v2 takes over at hour 5. Hour 1: 2 x 2.5 = 5 (was 4, by
    # v1); hour 6 stays v2's 3 x 4 - 3 x 2 = 6, and so do claude and February: nothing else is adjusted.
    v3 = w.draft([rate("tokens", unit("2.5"), model="gpt4"), rate("tokens", unit("1"), model="claude")])
    w.publish(v3.number, effective_from_ms=EPOCH_MS, at_ms=FEB_1_MS + 3 * HOUR_MS)
    second_seq = w.seq

    preview = w.engine.preview("acme", EPOCH_MS)
    claude, gpt4 = preview.lines
    hour = lambda h: EPOCH_MS + h * HOUR_MS  # noqa: E731
    assert gpt4.adjustments == [
        LineAdjustment(first_seq, hour(6), "card", [1], 2, 2 * E18, 1, 4 * E12, 6 * E12),
        LineAdjustment(second_seq, hour(1), "card", [1], 3, 2 * E18, 1, 4 * E12, 5 * E12),
    ]
    assert claude.adjustments == [
        LineAdjustment(first_seq, hour(7), "card", [1], 2, 15 * E18 // 10, 1, 15 * E12 // 10, 15 * E12 // 10),
    ]
    # The line already holds the re-rated buckets: the adjustments explain the change from 4 + 4 to 5 + 6.
    parts = [(p.version, p.amount_picos) for p in gpt4.parts]
    assert (gpt4.amount_picos, parts) == (11 * E12, [(2, 6 * E12), (3, 5 * E12)])
    assert gpt4.amount_picos - before.lines[1].amount_picos == sum(
        a.new_amount_picos - a.old_amount_picos for a in gpt4.adjustments
    )

    # On the wire: decimal strings, the hour as a timestamp.
    wire = invoice_pb(preview).lines[1].adjustments[1]
    assert (wire.journal_seq, wire.hour.ToMilliseconds(), wire.rate_card_id) == (second_seq, hour(1), "card")
    assert (list(wire.old_versions), wire.new_version, wire.quantity, wire.events) == ([1], 3, "2", 1)
    assert (wire.old_amount, wire.new_amount, wire.delta) == ("4", "5", "1")

    # February's bucket (re-rated by v2) shows on February's invoice only.
    february = w.engine.preview("acme", FEB_1_MS)
    [feb_gpt4] = february.lines
    assert [(a.journal_seq, a.hour_start_ms, a.old_versions, a.new_version) for a in feb_gpt4.adjustments] == [
        (first_seq, FEB_1_MS + HOUR_MS, [1], 2)
    ]
    assert [(a.old_amount_picos, a.new_amount_picos) for a in feb_gpt4.adjustments] == [(2 * E12, 3 * E12)]

    # The final invoice is the preview, field by field, adjustments included.
    final = w.close(at_ms=FEB_1_MS + DAY_MS)
    assert draft_fields(final) == draft_fields(preview)


def test_a_switched_contracts_last_period_lists_its_own_hours_unless_closed_by_an_earlier_release() -> None:
    """A contract ending on Jan 20 12:00 keeps its last period's monthly end (Feb 1): the adjustment of the Jan 25
    hour is the next contract's. Listed with adjustments_in_contract (drafts; closes the server records now), left
    in as before without it (ClosePeriod and CloseDuePeriods records of earlier releases replay as they closed)."""
    from engine.contracts import Contract, OveragePolicy
    from engine.invoices import KernelAdjustment, KernelLine, KernelLines, build_invoice

    jan_10, jan_25 = EPOCH_MS + 9 * DAY_MS, EPOCH_MS + 24 * DAY_MS
    contract = Contract("old", "acme", "card", EPOCH_MS, EPOCH_MS + 19 * DAY_MS + 12 * HOUR_MS, OveragePolicy.ALLOW,
                        "1", "USD", EPOCH_MS)  # fmt: skip
    row: KernelLine = ("use", [], 2 * E18, 1, 4 * E12, 4 * E12, [], [])
    period: KernelLines = (EPOCH_MS, EPOCH_MS + 31 * DAY_MS, E18, False, [row], [])
    adjustments: list[KernelAdjustment] = [
        (7, jan_10 // HOUR_MS, "use", [], "card", [1], 2, 2 * E18, 1, 2 * E12, 4 * E12),
        (7, jan_25 // HOUR_MS, "use", [], "card", [1], 2, 3 * E18, 1, 3 * E12, 6 * E12),
    ]

    def hours(adjustments_in_contract: bool) -> list[int]:
        invoice = build_invoice(contract, "credits", {"use": ()}, period, 0, adjustments,
                                adjustments_in_contract=adjustments_in_contract)  # fmt: skip
        return [a.hour_start_ms for a in invoice.lines[0].adjustments]

    assert hours(adjustments_in_contract=True) == [jan_10]
    assert hours(adjustments_in_contract=False) == [jan_10, jan_25]


def test_adjustments_in_contract_is_the_servers_in_neither_audit_entry_nor_retry_fingerprint() -> None:
    from engine import commands as cmd
    from engine.control import fingerprint
    from tests.credits_fixtures import Ledger
    from tests.engine_fixtures import ACTOR, basic_world

    m = Ledger(basic_world())
    m.advance(FEB_1_MS)
    close = cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS)
    server_close = cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS, adjustments_in_contract=True)
    assert fingerprint(server_close) == fingerprint(close)
    m.run(server_close)
    m.run(cmd.CloseDuePeriods(FEB_1_MS + 29 * DAY_MS, ACTOR, DAY_MS, adjustments_in_contract=True))
    closes = [e for e in m.billing.engine.state.audit if e.action in ("ClosePeriod", "CloseDuePeriods")]
    assert [e.action for e in closes] == ["ClosePeriod", "CloseDuePeriods"]
    assert all("adjustments_in_contract" not in entry.diff for entry in closes), closes
