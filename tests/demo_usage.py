"""Usage batches for the demo catalogue (server/demo.py), shared by the tests that drive a demo server.

Demo prices: a simple summary on gpt-4o-mini (CHEAP) costs 0.5 credits; a complex summary on gpt-4
(COMPLEX) costs 5.
"""

from __future__ import annotations

from collections.abc import Mapping

from tariff import now_ms
from tariff.v1 import usage_pb2

ACME = "acme"
CHEAP = {"action": "summary", "model": "gpt-4o-mini", "complexity": "simple", "data_source": "crm"}  # 0.5
COMPLEX = {"action": "summary", "model": "gpt-4", "complexity": "complex", "data_source": "crm"}  # 5


def demo_batch(
    batch_id: str,
    prefix: str,
    count: int,
    *,
    customer: str = ACME,
    dimensions: Mapping[str, str] = CHEAP,
) -> usage_pb2.UsageBatch:
    """`count` ai_action events of one customer, stamped a second ago, transaction ids `{prefix}-{i}`."""
    at = now_ms() - 1_000
    return usage_pb2.UsageBatch(
        batch_id=batch_id,
        events=[
            usage_pb2.UsageEvent(
                transaction_id=f"{prefix}-{i}",
                customer_id=customer,
                event_type="ai_action",
                timestamp_ms=at,
                dimensions=dimensions,
            )
            for i in range(count)
        ],
    )
