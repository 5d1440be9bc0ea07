"""The demo catalogue (docs/architecture.md §1), loaded through the same commands an admin would send.

One product, `ai_action`, counted per action and priced in credits by action, data source, model and
complexity, with formulas over parameters (a complex CRM summary on GPT-4 burns 5 credits). One customer,
`acme`, whose contract starts at the beginning of the current month and who bought 50,000 credits for
45,000 USD (1 credit = 1 USD at a 10% discount).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from engine import commands as cmd
from engine.contracts import OveragePolicy
from engine.ledger import GrantKind
from engine.products import Aggregation
from engine.ratecard import Rate, UnitPrice

if TYPE_CHECKING:
    from server.sequencer import Sequencer

ACTOR = "demo"
RATE_CARD_ID = "ai-credits"
CUSTOMER_ID = "acme"


def _rate(price: str, **match: str) -> Rate:
    return Rate("ai_action", dict(sorted(match.items())), UnitPrice(price))


def _draft_prices(now_ms: int) -> cmd.CreateDraftVersion:
    """Version 1 of the demo rate card: a base per action times a model factor and a complexity factor."""
    return cmd.CreateDraftVersion(
        now_ms,
        ACTOR,
        RATE_CARD_ID,
        0,
        {
            "summary_base": "1",
            "enrichment_base": "0.5",
            "gpt4_factor": "2.5",
            "mini_factor": "0.5",
            "complex_factor": "2",
            "crm_surcharge": "0",
            "web_surcharge": "0.25",
        },
        (),
        (
            _rate(
                "summary_base * gpt4_factor * complex_factor + crm_surcharge",
                action="summary",
                model="gpt-4",
                complexity="complex",
            ),
            _rate("summary_base * gpt4_factor", action="summary", model="gpt-4", complexity="simple"),
            _rate(
                "summary_base * mini_factor * complex_factor",
                action="summary",
                model="gpt-4o-mini",
                complexity="complex",
            ),
            _rate("summary_base * mini_factor", action="summary", model="gpt-4o-mini", complexity="simple"),
            _rate("enrichment_base * gpt4_factor", action="enrichment", model="gpt-4"),
            _rate("enrichment_base * mini_factor", action="enrichment", model="gpt-4o-mini"),
            _rate(
                "enrichment_base * gpt4_factor + web_surcharge",
                action="enrichment",
                model="gpt-4",
                data_source="web",
            ),
            _rate("1"),
        ),
        (),
        "Demo prices: base per action x model factor x complexity factor",
    )


def demo_commands(now_ms: int) -> list[cmd.AdminCommand]:
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    month_start_ms = int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp() * 1000)
    year_ms = 366 * 24 * 3600 * 1000
    return [
        cmd.CreateProduct(
            now_ms,
            ACTOR,
            "ai_action",
            "AI action",
            "ai_action",
            Aggregation.COUNT,
            "",
            {},
            ("action", "data_source", "model", "complexity"),
            "actions",
        ),
        cmd.CreateRateCard(now_ms, ACTOR, RATE_CARD_ID, "AI credits", "credits"),
        _draft_prices(now_ms),
        cmd.PublishVersion(now_ms, ACTOR, RATE_CARD_ID, 1, month_start_ms),
        cmd.CreateCustomer(now_ms, ACTOR, CUSTOMER_ID, "Acme Corp", {"segment": "enterprise", "region": "us-east"}),
        cmd.CreateContract(
            now_ms, ACTOR, "acme-2026", CUSTOMER_ID, RATE_CARD_ID, month_start_ms, None, OveragePolicy.ALLOW, "1", "USD"
        ),
        cmd.GrantCredits(
            now_ms,
            ACTOR,
            "acme-prepaid-50k",
            CUSTOMER_ID,
            "acme-2026",
            GrantKind.PREPAID,
            "50000",
            "45000",
            0,
            (),
            month_start_ms,
            month_start_ms + year_ms,
            "0",
            use_ends_at_rollover=True,
        ),
    ]


async def load_demo(sequencer: Sequencer, now_ms: int) -> None:
    """Loads the demo through the writer, all of it or none: its commands are queued before the writer runs again,
    so it takes them as one group and commits them in one transaction. Run one at a time, a start killed between
    two left a part of the demo, which no later `--demo` start completed (it seeds an empty journal only)."""
    seeded = [sequencer.submit(command) for command in demo_commands(now_ms)]
    await asyncio.gather(*seeded)
