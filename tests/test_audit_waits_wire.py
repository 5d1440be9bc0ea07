"""The window between a rollover falling due and the clock driver's record of it (README "Rollover", "Reads in the
window" in docs/architecture.md), read through the invoice draft of the period after the rollover. README "Draft =
final": a draft is "computed and rounded exactly as closing it would: the final invoice `ClosePeriod` makes from the
same usage is equal field by field but for `invoice_number`, `status` and `closed_at`"; a close goes through the
writer, which records the due AdvanceClock first. The server's driver looks once an hour here, so the window lasts
until the close, deterministically.

`ro`: contract from 2025-01-31 (periods Jan 31 - Feb 28 - Mar 31). Grant `ro-g`: 100 credits paid 50, fraction 0.5,
starting Feb 10, so it rolls at Feb 28 (both ends long past): 50 move into `rollover-ro-g-<Feb 28>` (usable until
Mar 31, unused: it breaks whole), 50 break. GetBalance lists both grants, 50 expired each, at once (54d1fec). The
Feb 28 period's final invoice lists ro-g (100 granted, 50 drawn, 50 expired) and the ROLLOVER grant (50 granted,
50 expired); its draft, read in the window, must list the same."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tariff.v1 import contracts_pb2, invoices_pb2

from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess
from tests.test_audit_invoices_wire import but_final_fields, catalogue, close, customer, preview, ts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-waits")
    args = ["--close-grace", "off", "--clock-look-every-ms", "3600000"]
    yield from serving(ServerProcess(root / "data", extra_args=args), catalogue)


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


Row = tuple[str, str, str, str, str]


def rows(balances: Iterable[invoices_pb2.InvoiceGrantBalance]) -> list[Row]:
    return sorted((g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in balances)


def test_the_draft_of_the_period_after_a_due_rollover_lists_the_rollover_grant_as_its_close_will(
    server: ServerProcess,
) -> None:
    jan31, feb28 = at("2025-01-31T00:00:00"), at("2025-02-28T00:00:00")
    rolled_id = f"rollover-ro-g-{feb28}"
    with server.client() as client:
        customer(client, "ro", "USD", "1", start_ms=jan31)
        grant = contracts_pb2.Grant(
            id="ro-g",
            contract_id="ro-c",
            kind=contracts_pb2.PREPAID,
            amount="100",
            paid_amount="50",
            rollover_fraction="0.5",
            starts_at=ts(at("2025-02-10T00:00:00")),
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        seq = client.get_balance("ro").as_of_seq
        assert {g.grant_id: g.expired for g in client.get_balance("ro").grants} == {"ro-g": "50", rolled_id: "50"}

        draft = preview(client, "ro", feb28)
        assert client.get_balance("ro").as_of_seq == seq, "the clock recorded nothing yet: the draft is in the window"
        expected = [("ro-g", "100", "50", "0", "50"), (rolled_id, "50", "0", "0", "50")]
        final = close(client, "ro", feb28)
        assert rows(final.grant_balances) == expected
        assert rows(draft.grant_balances) == expected
        assert but_final_fields(draft) == but_final_fields(final)
