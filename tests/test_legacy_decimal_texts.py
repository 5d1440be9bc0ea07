"""A data directory whose journal holds decimal texts an earlier release accepted, outside today's grammar
(" 100", "+90", "+2", "007.5", " 1_0 * markup", "5e-1", " 0.5", " 5"), starts and serves exactly the balances
those texts give.

Releases before the grammar read every decimal with Decimal(text.strip()) and formulas with Python's number
syntax, and journaled each command with its texts as received; replay (and a snapshot's restore) reads them
again. The grammar is checked where a new request enters, so such a journal replays as it did: with the grammar
in the engine, the server refused to start on it and everything acknowledged in it was out of reach.

The journal is written here as that release wrote it: the commands it journaled, each a record of its own, none
of which fired an alert (there is no rule before the last one, and it fires for no balance below 5).
"""

from __future__ import annotations

import time
from pathlib import Path

from tariff import TariffClient
from tariff.v1 import alerts_pb2, balance_pb2, usage_pb2

from engine import commands as cmd
from engine.contracts import OveragePolicy, Override
from engine.ledger import GrantKind
from engine.products import Aggregation
from engine.ratecard import Rate, UnitPrice
from server.journal import LmdbJournal
from server.records import JournalRecord, encode_record
from tests.serverproc import ServerFactory

HOUR_MS = 3_600_000
ACTOR = "earlier-release"


def legacy_commands(start_ms: int) -> list[cmd.AdminCommand]:
    """What an earlier release journaled for requests carrying these texts (none of them in the grammar)."""
    return [
        cmd.CreateProduct(
            start_ms, ACTOR, "ai_action", "AI action", "ai_action", Aggregation.COUNT, "", {}, ("model",), "actions"
        ),
        cmd.CreateRateCard(start_ms, ACTOR, "legacy", "Legacy", "credits"),
        cmd.CreateDraftVersion(
            start_ms,
            ACTOR,
            "legacy",
            0,
            {"markup": "+2"},
            (),
            (
                Rate("ai_action", {}, UnitPrice("007.5", " 1")),  # 7.5 per action
                Rate("ai_action", {"model": "big"}, UnitPrice(" 1_0 * markup")),  # 20 per action
            ),
            (),
            "prices as an earlier release took them",
        ),
        cmd.PublishVersion(start_ms, ACTOR, "legacy", 1, start_ms),
        cmd.CreateCustomer(start_ms, ACTOR, "globex", "Globex", {}),
        cmd.CreateContract(
            start_ms, ACTOR, "globex-1", "globex", "legacy", start_ms, None, OveragePolicy.ALLOW, "5e-1", "USD"
        ),
        cmd.AddOverride(
            start_ms, ACTOR, "globex-1", Override("half", "ai_action", {"model": "big"}, " 0.5", None, 0, None)
        ),  # big: 10 per action
        cmd.GrantCredits(
            start_ms,
            ACTOR,
            "globex-prepaid",
            "globex",
            "globex-1",
            GrantKind.PREPAID,
            " 100",
            "+90",
            0,
            (),
            start_ms,
            None,
            " 0",
        ),
        cmd.CreateAlert(start_ms, ACTOR, "low", "globex", False, "LOW_BALANCE", " 5"),
    ]


def write_journal(data_dir: Path, commands: list[cmd.AdminCommand]) -> None:
    journal = LmdbJournal(data_dir / "journal", map_size_bytes=1 << 26)
    try:
        journal.commit([(seq, encode_record(JournalRecord(command=c))) for seq, c in enumerate(commands, start=1)])
    finally:
        journal.close()


def globex(client: TariffClient) -> balance_pb2.Balance:
    read: balance_pb2.Balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="globex"))
    read.ClearField("as_of_seq")
    return read


def test_a_journal_with_texts_an_earlier_release_accepted_starts_with_the_same_balances(
    server_factory: ServerFactory,
) -> None:
    # A snapshot after every record: the restart below restores one holding the texts, rather than replaying them.
    server = server_factory(start=False, extra_args=["--snapshot-every", "1", "--snapshot-journal-factor", "0"])
    server.data_dir.mkdir(parents=True, exist_ok=True)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms // HOUR_MS * HOUR_MS - 24 * HOUR_MS
    commands = legacy_commands(start_ms)
    write_journal(server.data_dir, commands)
    server.start()
    assert server.running, server.log_tail()
    with server.client() as client:
        before = globex(client)
        assert (before.credits_remaining, before.grants[0].amount, before.overage_due) == ("100", "100", "0")
        [rule] = client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules
        assert (rule.id, rule.threshold) == ("low", "5")

        def event(n: int, model: str) -> usage_pb2.UsageEvent:
            return usage_pb2.UsageEvent(
                transaction_id=f"e{n}",
                customer_id="globex",
                event_type="ai_action",
                timestamp_ms=now_ms - 60_000,
                dimensions={"model": model},
            )

        # 3 small at 7.5 and 10 big at 20 x 0.5: 122.5 credits, 100 of them from the grant, 22.5 of overage at
        # 0.5 USD each.
        ack = client.ingest_batch([event(n, "small") for n in range(3)] + [event(n, "big") for n in range(3, 13)])
        assert (ack.accepted, len(ack.rejected)) == (13, 0), ack
        after = globex(client)
    assert (after.credits_remaining, after.period_charges, after.overage_amount) == ("0", "122.5", "22.5")
    assert after.overage_due == "11.25"
    assert (after.grants[0].drawn, after.grants[0].remaining) == ("100", "0")
    assert server.terminate() == 0
    journal = LmdbJournal(server.data_dir / "journal", map_size_bytes=1 << 26)
    try:
        snapshot = journal.load_snapshot()
    finally:
        journal.close()
    assert snapshot is not None and snapshot[0] > len(commands)
    server.start()  # again, from the snapshot
    with server.client() as client:
        assert globex(client) == after
