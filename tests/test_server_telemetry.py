"""OpenTelemetry against a real server: `--metrics-port` serves Prometheus metrics that count what happened.

Counters are recorded per committed batch (never per event), so after a known sequence of batches the scrape
must show exactly those counts.
"""

from __future__ import annotations

import re
import urllib.request

from tariff import Usage, now_ms

from tests.serverproc import ServerFactory, free_port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one Prometheus sample, e.g. sample(t, "tariff_events_ingested_total")."""
    pattern = rf"^{re.escape(name)}(\{{[^}}]*{re.escape(labels)}[^}}]*\}})? (\S+)$"
    values = [float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)]
    assert values, f"no sample {name} {labels} in:\n{text[:3000]}"
    return sum(values)


def action(txn: str, ts_ms: int) -> Usage:
    return Usage(txn, "acme", "ai_action", ts_ms, {"action": "summary", "model": "gpt-4", "complexity": "simple"})


def test_prometheus_endpoint_counts_ingested_rejected_and_duplicated_events(server_factory: ServerFactory) -> None:
    port = free_port()
    server = server_factory(demo=True, extra_args=["--metrics-port", str(port)])
    ts = now_ms()
    with server.client() as client:
        first = client.ingest_batch([action("m-1", ts), action("m-2", ts), action("m-3", ts)], "b-1")
        assert first.accepted == 3
        # One duplicate (identical resend), one conflict and one unknown customer: three kinds of answer.
        second = client.ingest_batch(
            [
                action("m-1", ts),
                action("m-2", ts + 1),
                Usage("m-4", "nobody", "ai_action", ts, {}),
                action("m-5", ts),
            ],
            "b-2",
        )
        assert (second.accepted, second.duplicates, len(second.rejected)) == (1, 1, 2)
        authorized = client.authorize("acme", "ai_action", {"action": "summary", "model": "gpt-4"})
        assert authorized.allowed

    text = scrape(port)
    assert sample(text, "tariff_events_ingested_total") == 4
    assert sample(text, "tariff_events_duplicated_total") == 1
    assert sample(text, "tariff_events_rejected_total", 'reason="DUPLICATE_CONFLICT"') == 1
    assert sample(text, "tariff_events_rejected_total", 'reason="UNKNOWN_CUSTOMER"') == 1
    assert sample(text, "tariff_authorize_duration_milliseconds_count") == 1
    # Every group commit is timed: the demo catalogue's commands and the two batches at least.
    assert sample(text, "tariff_batch_commit_duration_milliseconds_count") >= 2
    assert sample(text, "tariff_journal_size_bytes") > 0
