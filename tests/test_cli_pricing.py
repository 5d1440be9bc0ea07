"""`tariff ratecard draft|validate|diff|publish|rollback|versions|show` and `tariff audit` with its filters, run as
a user runs them (subprocesses against a real server process), in the style of tests/test_cli.py."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.serverproc import ServerFactory, ServerProcess
from tests.test_cli import table_rows, tariff
from tests.test_server_auth import Keys

HOUR_MS = 3_600_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_hour_ms() -> int:
    now_ms = time.time_ns() // 1_000_000
    return now_ms - now_ms % HOUR_MS + HOUR_MS


def test_the_litmus_story_draft_validate_diff_publish_rollback_show_and_audit(demo_server: ServerProcess) -> None:
    server = demo_server
    h1 = next_hour_ms()
    drafted = tariff(server, "ratecard", "draft", "ai-credits", "--base", "1", "--set", "gpt4_factor=2",
                     "--note", "GPT-4 price cut", "--actor", "analyst")  # fmt: skip
    assert ["version", "2"] in table_rows(drafted.stdout) and ["state", "DRAFT"] in table_rows(drafted.stdout)
    assert ["valid"] in table_rows(tariff(server, "ratecard", "validate", "ai-credits", "2").stdout)

    diff = tariff(server, "ratecard", "diff", "ai-credits", "1", "2")
    rows = table_rows(diff.stdout)
    assert ["CHANGED", "gpt4_factor", "2.5", "2"] in rows
    formula = "summary_base * gpt4_factor * complex_factor + crm_surcharge"
    assert ["REPRICED", "ai_action", "action=summary, complexity=complex, model=gpt-4", "unit.price", "credits",
            formula, "5", formula, "4"] in rows  # fmt: skip
    as_json = json.loads(tariff(server, "ratecard", "diff", "ai-credits", "1", "2", "--json").stdout)
    assert [p["name"] for p in as_json["parameters"]] == ["gpt4_factor"]
    assert [r["kind"] for r in as_json["rates"]] == ["REPRICED"] * 4
    same = tariff(server, "ratecard", "diff", "ai-credits", "2", "2")
    assert same.stdout.strip() == "versions 2 and 2 of 'ai-credits' hold the same prices"

    published = tariff(
        server, "ratecard", "publish", "ai-credits", "2", "--effective-from", iso(h1), "--actor", "analyst"
    )
    assert ["effective from", datetime.fromtimestamp(h1 // 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")] in table_rows(
        published.stdout
    )
    rolled = tariff(server, "ratecard", "rollback", "ai-credits", "1", "--effective-from", iso(h1 + HOUR_MS),
                    "--actor", "finance-lead")  # fmt: skip
    assert ["rollback", "of version 2 to version 1"] in table_rows(rolled.stdout)
    assert ["version", "3"] in table_rows(rolled.stdout)

    versions = json.loads(tariff(server, "ratecard", "versions", "ai-credits", "--json").stdout)["versions"]
    assert [(v["version"], v["state"], v["rollback_to_version"]) for v in versions] == [
        (1, "PUBLISHED", 0),
        (2, "PUBLISHED", 0),
        (3, "PUBLISHED", 1),
    ]
    shown = tariff(server, "ratecard", "show", "ai-credits", "--at", iso(h1 + HOUR_MS))
    assert ["version", "3"] in table_rows(shown.stdout) and ["gpt4_factor", "2.5"] in table_rows(shown.stdout)
    now = table_rows(tariff(server, "ratecard", "show", "ai-credits").stdout)
    assert ["version", "1"] in now
    two = json.loads(tariff(server, "ratecard", "show", "ai-credits", "2", "--json").stdout)
    assert two["parameters"]["gpt4_factor"] == "2"
    assert tariff(server, "ratecard", "show", "ai-credits", "2", "--at", iso(h1), check=False).returncode == 2

    refused = tariff(server, "ratecard", "rollback", "ai-credits", "2", "--effective-from", iso(h1), check=False)
    assert refused.returncode == 1
    assert (
        refused.stderr.startswith("tariff: FAILED_PRECONDITION:") and "version 2 is already in force" in refused.stderr
    )

    audit = json.loads(tariff(server, "audit", "--target", "rate_card/ai-credits/", "--json").stdout)
    assert [(e["actor"], e["action"], e["target"]) for e in audit["entries"]] == [
        ("demo", "CreateDraftVersion", "rate_card/ai-credits/version/1"),
        ("demo", "PublishVersion", "rate_card/ai-credits/version/1"),
        ("analyst", "CreateDraftVersion", "rate_card/ai-credits/version/2"),
        ("analyst", "PublishVersion", "rate_card/ai-credits/version/2"),
        ("finance-lead", "RollbackRateCard", "rate_card/ai-credits/version/3"),
    ]
    assert audit["next_after_seq"] == "0"
    by_analyst = table_rows(tariff(server, "audit", "--by", "analyst").stdout)
    assert [row[2:5] for row in by_analyst[2:]] == [
        ["analyst", "CreateDraftVersion", "rate_card/ai-credits/version/2"],
        ["analyst", "PublishVersion", "rate_card/ai-credits/version/2"],
    ]
    rollbacks = json.loads(tariff(server, "audit", "--action", "RollbackRateCard", "--json").stdout)["entries"]
    assert json.loads(rollbacks[0]["diff"])["rollback_from"] == 2


def test_audit_pages_until_its_limit_and_says_where_to_go_on(demo_server: ServerProcess) -> None:
    for index in range(5):
        tariff(demo_server, "customers", "create", f"paged-{index}", "--actor", "pager")
    first = tariff(demo_server, "audit", "--by", "pager", "--limit", "3")
    rows = table_rows(first.stdout)
    assert [row[4] for row in rows[2:5]] == ["customer/paged-0", "customer/paged-1", "customer/paged-2"]
    last_seq = rows[4][0]
    assert f"more entries: tariff audit --after {last_seq} (with the same filters)" in first.stdout
    rest = json.loads(tariff(demo_server, "audit", "--by", "pager", "--after", last_seq, "--json").stdout)
    assert [e["target"] for e in rest["entries"]] == ["customer/paged-3", "customer/paged-4"]
    since = tariff(demo_server, "audit", "--since", iso(next_hour_ms()), "--json")
    assert json.loads(since.stdout)["entries"] == []


@pytest.fixture
def keyed(server_factory: ServerFactory, tmp_path: Path) -> tuple[ServerProcess, Keys]:
    keys = Keys(tmp_path / "keys.json", {"ops": ("admin", None), "acme-ops": ("admin", ["acme"])})
    return server_factory(demo=True, extra_args=keys.args, api_key=keys.key["ops"]), keys


def test_actor_from_the_key_and_from_actor_or_tariff_actor(keyed: tuple[ServerProcess, Keys]) -> None:
    server, keys = keyed
    ops = ["--api-key", keys.key["ops"]]
    tariff(server, "customers", "create", "keyed-1", *ops)
    tariff(server, "customers", "create", "keyed-2", *ops, "--actor", "alice")
    tariff(server, "customers", "create", "keyed-3", *ops, env={"TARIFF_ACTOR": "bob"})
    audit = json.loads(tariff(server, "audit", "--target", "customer/keyed-", "--json", *ops).stdout)["entries"]
    assert [(e["actor"], e["target"]) for e in audit] == [
        ("ops", "customer/keyed-1"),
        ("alice via ops", "customer/keyed-2"),
        ("bob via ops", "customer/keyed-3"),
    ]
    refused = tariff(server, "customers", "create", "acme", "--api-key", keys.key["acme-ops"], "--actor", "eve",
                     check=False)  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("tariff: PERMISSION_DENIED:") and "x-actor" in refused.stderr
