"""`tariff grants`, `tariff topup set|clear|show`, `tariff reserve` and `tariff release` against a real demo server."""

from __future__ import annotations

import json

from tests.serverproc import ServerProcess
from tests.test_cli import tariff


def test_reserve_grants_release_and_a_top_up_policy_from_the_command_line(demo_server: ServerProcess) -> None:
    held = json.loads(
        tariff(
            demo_server,
            "reserve",
            "acme",
            "ai_action",
            "action=summary",
            "model=gpt-4",
            "complexity=complex",
            "--id",
            "cli-1",
            "--ttl-s",
            "30",
            "--json",
        ).stdout
    )
    assert (held["allowed"], held["reservation_id"], held["estimated_cost"]) == (True, "cli-1", "5")
    grants = json.loads(tariff(demo_server, "grants", "acme", "--json").stdout)["grants"]
    assert [(g["grant_id"], g["held"], g["remaining"]) for g in grants] == [("acme-prepaid-50k", "5", "50000")]
    assert "acme-prepaid-50k" in tariff(demo_server, "grants", "acme").stdout
    released = json.loads(tariff(demo_server, "release", "acme", "cli-1", "--json").stdout)
    assert released == {"released_amount": "5"}
    missing = tariff(demo_server, "release", "acme", "nope", check=False)
    assert missing.stderr.strip() == "tariff: NOT_FOUND: customer 'acme' has no reservation 'nope'"
    tariff(
        demo_server,
        "topup",
        "set",
        "acme-2026",
        "--threshold",
        "1000",
        "--recharge-to",
        "5000",
        "--price-per-credit",
        "0.9",
        "--max-per-period",
        "2",
    )
    shown = json.loads(tariff(demo_server, "topup", "show", "acme-2026", "--json").stdout)
    assert shown == {
        "threshold": "1000",
        "recharge_to": "5000",
        "price_per_credit": "0.9",
        "max_per_period": 2,
        "currency": "USD",
    }
    bad = tariff(
        demo_server,
        "topup",
        "set",
        "acme-2026",
        "--threshold",
        "5000",
        "--recharge-to",
        "5000",
        "--price-per-credit",
        "0.9",
        "--max-per-period",
        "2",
        check=False,
    )
    assert bad.returncode == 1 and "INVALID_ARGUMENT: top_up.threshold" in bad.stderr
    # No policy: the contract's top_up is unset, so null (not a policy of 0 top-ups, which no policy can be).
    assert json.loads(tariff(demo_server, "topup", "clear", "acme-2026", "--json").stdout) is None
    assert json.loads(tariff(demo_server, "topup", "show", "acme-2026", "--json").stdout) is None
