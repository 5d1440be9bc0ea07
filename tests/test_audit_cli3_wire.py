"""An acceptance audit (3) of README "Admin CLI" and `tariff --help` as an operator and a finance user use them,
against a real demo server on its own 127.0.0.1 port. It covers what the earlier CLI audits did not:

- `--actor` and `--api-key` (and TARIFF_ACTOR) values that gRPC metadata cannot carry, or that break the wire's
  x-actor grammar (1-128 letters, digits and ._:@-), are malformed arguments: exit 2 before anything is sent
  (they came back as `INTERNAL: Invalid metadata`, exit 1, as if the server had failed);
- `usage send`: a line naming a field twice is not such an object (exit 2, line named, nothing sent), since
  the CLI would otherwise pick one of two transaction ids (or customers) silently;
- `topup show --json` of a contract without a policy prints null (the wire's unset `top_up`), not a made-up
  policy of empty strings and max_per_period 0 (which the server refuses in a policy); its table leaves max per
  period empty too;
- `usage send` names the first rejected transaction of every reason, also of one first met after 100 rejections
  of another (it showed an empty cell, and --json's rejections left it out);
- `authorize`/`reserve --value NAME=nan|inf|1e400` is a usage error as `NAME=many` is, not a refused call;
- `ratecard draft --rates FILE`: a bad rate in the file is named by the file and its index there (it was
  `--rate: item N`, N counted on from the --rate options);
- a span ending before it starts (`revenue --to` before `--from`, `audit --until` not after `--since`, `ratecard
  simulate --to` not after `--from`) is a usage error naming the options, before any call;
- an argument that is no UTF-8 (a Latin-1 terminal's) is a usage error, not a Python traceback; a `usage send`
  line that is no UTF-8 is named (exit 2) with the events before it sent, not a traceback that sent none;
- `--server ''` is a usage error, not `UNKNOWN: Failed to create channel` (exit 1);
- `customers create --help` states the server's id alphabet (`@` included); `tariff --help` exit status 2 too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess
from tests.test_cli import GPT4_COMPLEX_SUMMARY, table_rows, tariff


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("audit-cli3") / "data", demo=True)
    server.start()
    yield server
    server.stop()


def assert_usage_error(done_returncode: int, stderr: str, *named: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert done_returncode == 2, f"exit {done_returncode}:\n{stderr}"
    assert len(stderr.strip().splitlines()) >= 1, "no message on stderr"
    for text in named:
        assert text in stderr, stderr


@pytest.mark.parametrize(
    "actor",
    ["José", "Jane Doe", "a" * 129, "analyst\tlead"],
    ids=["not-ascii", "a-space", "129-chars", "a-tab"],
)
def test_an_actor_outside_the_x_actor_grammar_is_a_usage_error_and_creates_nothing(
    demo: ServerProcess, actor: str
) -> None:
    customer_id = f"cli3-actor-{len(actor)}-{ord(actor[1])}"
    done = tariff(demo, "customers", "create", customer_id, "--actor", actor, check=False)
    assert_usage_error(done.returncode, done.stderr, "--actor")
    assert "INTERNAL" not in done.stderr
    missing = tariff(demo, "customers", "show", customer_id, check=False)
    assert missing.stderr.strip() == f"tariff: NOT_FOUND: customer '{customer_id}' does not exist"


def test_tariff_actor_from_the_environment_is_checked_as_actor_is(demo: ServerProcess) -> None:
    done = tariff(demo, "balance", "acme", env={"TARIFF_ACTOR": "Zoë"}, check=False)
    assert_usage_error(done.returncode, done.stderr, "--actor")


def test_an_actor_of_the_grammar_is_recorded_as_given(demo: ServerProcess) -> None:
    actor = "jane.doe@finance:eu_1-" + "x" * 106  # 128 characters, every kind the grammar allows
    tariff(demo, "customers", "create", "cli3-actor-ok", "--actor", actor)
    entries = json.loads(tariff(demo, "audit", "--target", "customer/cli3-actor-ok", "--json").stdout)["entries"]
    assert [(e["actor"], e["action"]) for e in entries] == [(actor, "CreateCustomer")]


def test_an_api_key_gRPC_cannot_send_is_a_usage_error(demo: ServerProcess) -> None:
    done = tariff(demo, "balance", "acme", "--api-key", "clé-secrète", check=False)
    assert_usage_error(done.returncode, done.stderr, "--api-key")
    assert "INTERNAL" not in done.stderr


def usage_line(transaction: str, *, customer: str = "acme", extra: str = "") -> str:
    dimensions = json.dumps(GPT4_COMPLEX_SUMMARY)
    return (
        f'{{"transaction_id": "{transaction}", {extra}"customer_id": "{customer}", "event_type": "ai_action", '
        f'"timestamp_ms": {demo_now_ms()}, "dimensions": {dimensions}}}\n'
    )


def demo_now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.parametrize("field", ["transaction_id", "customer_id"], ids=["two-transaction-ids", "two-customers"])
def test_usage_send_refuses_a_line_naming_a_field_twice(demo: ServerProcess, field: str) -> None:
    first = usage_line(f"cli3-twice-{field}-ok")
    value = "cli3-twice-other" if field == "transaction_id" else "nobody"
    twice = usage_line(f"cli3-twice-{field}", extra=f'"{field}": "{value}", ')
    assert twice.count(f'"{field}"') == 2
    done = tariff(demo, "usage", "send", "--json", stdin=first + twice, check=False)
    assert_usage_error(done.returncode, done.stderr, "line 2", field)
    summary = json.loads(done.stdout)
    assert (summary["events_read"], summary["accepted"], summary["rejected"]) == (1, 1, 0)
    # Neither of the line's two transaction ids was recorded: sending each now is accepted, not a duplicate.
    ids = [f"cli3-twice-{field}", "cli3-twice-other"] if field == "transaction_id" else [f"cli3-twice-{field}"]
    again = json.loads(tariff(demo, "usage", "send", "--json", stdin="".join(usage_line(t) for t in ids)).stdout)
    assert (again["accepted"], again["duplicates"]) == (len(ids), 0)


def test_topup_show_of_a_contract_without_a_policy_prints_none(demo: ServerProcess) -> None:
    tariff(demo, "topup", "clear", "acme-2026")
    assert json.loads(tariff(demo, "topup", "show", "acme-2026", "--json").stdout) is None
    rows = table_rows(tariff(demo, "topup", "show", "acme-2026").stdout)
    assert rows[2:] == [
        ["contract", "acme-2026"],
        ["threshold"],
        ["recharge to"],
        ["price per credit"],
        ["currency"],
        ["max per period"],
    ]
    tariff(
        demo,
        *("topup", "set", "acme-2026", "--threshold", "1000.000000000001", "--recharge-to", "5000"),
        *("--price-per-credit", "0.900000000000000001", "--max-per-period", "1"),
    )
    shown = json.loads(tariff(demo, "topup", "show", "acme-2026", "--json").stdout)
    assert shown == {
        "threshold": "1000.000000000001",
        "recharge_to": "5000",
        "price_per_credit": "0.900000000000000001",
        "max_per_period": 1,
        "currency": "USD",
    }
    rows = table_rows(tariff(demo, "topup", "show", "acme-2026").stdout)
    # The price's currency (the contract's it was set through) is shown beside it, as --json gives it.
    assert rows[-3:] == [["price per credit", "0.900000000000000001"], ["currency", "USD"], ["max per period", "1"]]
    cleared = tariff(demo, "topup", "clear", "acme-2026", "--json")
    assert json.loads(cleared.stdout) is None


def test_revenue_to_before_from_is_a_usage_error_before_any_call(demo: ServerProcess) -> None:
    done = tariff(demo, "revenue", "--from", "2026-12", "--to", "2026-11", check=False)
    assert_usage_error(done.returncode, done.stderr, "--to", "2026-11", "--from", "2026-12")
    assert "period_end" not in done.stderr
    one_month = json.loads(tariff(demo, "revenue", "--from", "2026-12", "--to", "2026-12", "--json").stdout)
    assert one_month["reconciliation"]["reconciles"] is True


def test_customers_create_help_states_the_servers_id_alphabet(demo: ServerProcess) -> None:
    from engine.control import ID_PATTERN

    assert ID_PATTERN.pattern == r"^[A-Za-z0-9._:@-]{1,128}$"
    text = " ".join(tariff(demo, "customers", "create", "--help").stdout.split())
    assert "letters, digits and ._:@-" in text, text
    created = json.loads(tariff(demo, "customers", "create", "cli3@example.com", "--json").stdout)
    assert created["id"] == "cli3@example.com"


def test_usage_send_names_the_first_rejection_of_a_reason_met_after_a_hundred_of_another(demo: ServerProcess) -> None:
    # README: "rejections by reason, with the first rejected transaction id and message of each reason".
    unknown = "".join(usage_line(f"cli3-many-{i}", customer="cli3-nobody") for i in range(101))
    late = usage_line("cli3-far-future").replace(str(demo_now_ms())[:4], "9999", 1)
    assert '"timestamp_ms": 9999' in late
    done = tariff(demo, "usage", "send", "--no-progress", stdin=unknown + late, check=False)
    assert done.returncode == 1, done.stderr
    rejected = {
        row[0]: row for row in table_rows(done.stdout) if row[0] in ("UNKNOWN_CUSTOMER", "TIMESTAMP_OUT_OF_RANGE")
    }
    assert rejected["UNKNOWN_CUSTOMER"][:3] == ["UNKNOWN_CUSTOMER", "101", "cli3-many-0"]
    far = rejected["TIMESTAMP_OUT_OF_RANGE"]
    assert far[:3] == ["TIMESTAMP_OUT_OF_RANGE", "1", "cli3-far-future"], far
    assert len(far) == 4 and far[3], far  # the server's message too
    summary = json.loads(
        tariff(
            demo, "usage", "send", "--json", stdin=unknown + late.replace("cli3-far-future", "cli3-far-2"), check=False
        ).stdout
    )
    firsts = {r["reason"]: r["transaction_id"] for r in reversed(summary["rejections"])}
    assert firsts == {"UNKNOWN_CUSTOMER": "cli3-many-0", "TIMESTAMP_OUT_OF_RANGE": "cli3-far-2"}


@pytest.mark.parametrize("command", ["authorize", "reserve"])
@pytest.mark.parametrize("number", ["nan", "inf", "-Infinity", "1e400"])
def test_a_value_that_is_no_finite_number_is_a_usage_error_before_any_call(
    demo: ServerProcess, command: str, number: str
) -> None:
    # `--value tokens=many` was a usage error, `--value tokens=nan` a call the server refused (exit 1).
    done = tariff(demo, command, "acme", "ai_action", "model=gpt-4", "--value", f"tokens={number}", check=False)
    assert_usage_error(done.returncode, done.stderr, "--value", f"tokens='{number}'")
    assert "INVALID_ARGUMENT" not in done.stderr


def test_a_bad_rate_in_a_rates_file_is_named_by_the_file_and_its_place_there(
    demo: ServerProcess, tmp_path: Path
) -> None:
    rates = tmp_path / "rates.json"
    rates.write_text(
        json.dumps(
            [{"product_id": "ai_action", "unit": {"price": "1"}}, {"product_id": "ai_action", "unit": {"prize": "1"}}]
        )
    )
    good_rate = json.dumps({"product_id": "ai_action", "match": {"model": "gpt-4"}, "unit": {"price": "2"}})
    for given in ((), ("--rate", good_rate)):  # with a --rate before it too: the file's own item 1, not item 2
        done = tariff(
            demo, "ratecard", "draft", "ai-credits", "--base", "1", *given, "--rates", str(rates), check=False
        )
        assert_usage_error(done.returncode, done.stderr, f"--rates {rates}", "item 1:", "prize")
        assert "item 2" not in done.stderr and "Invalid value for --rate:" not in done.stderr, done.stderr
    versions = json.loads(tariff(demo, "ratecard", "versions", "ai-credits", "--json").stdout)["versions"]
    assert [v["version"] for v in versions] == [1], "a draft was made"


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "--since", "2026-12-02T00:00:00Z", "--until", "2026-12-01T00:00:00Z"),
        ("audit", "--since", "2026-12-01T01:00:00+01:00", "--until", "2026-12-01T00:00:00Z"),  # the same instant
        ("ratecard", "simulate", "ai-credits", "1", "--from", "2026-12-02T00:00:00Z", "--to", "2026-12-01T00:00:00Z"),
    ],
    ids=["audit-until-before-since", "audit-until-at-since", "simulate-to-before-from"],
)
def test_a_span_ending_before_it_starts_is_a_usage_error_naming_the_options(
    demo: ServerProcess, args: tuple[str, ...]
) -> None:
    # The server's refusal named end_time / period_end, wire fields the user never typed.
    start, end = ("--since", "--until") if args[0] == "audit" else ("--from", "--to")
    done = tariff(demo, *args, check=False)
    assert_usage_error(done.returncode, done.stderr, start, end)
    assert "end_time" not in done.stderr and "period_end" not in done.stderr, done.stderr


def test_the_top_level_help_states_both_exit_statuses_readme_does() -> None:
    text = " ".join(tariff("unused:1", "--help").stdout.split())
    assert "exit 1 with the server's status code and message when a call fails" in text
    assert "2 for a malformed argument (before anything is sent)" in text, text


@pytest.mark.parametrize(
    "args",
    [
        ("customers", "show", "cli3-\udcff"),  # what a Latin-1 terminal sends for "cli3-ÿ"
        ("customers", "create", "cli3-latin", "--name", "Soci\udce9t\udce9"),
        ("authorize", "acme", "ai_action", "model=gpt-\udcff"),
    ],
    ids=["argument", "option", "dimension"],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error_not_a_traceback(
    demo: ServerProcess, args: tuple[str, ...]
) -> None:
    done = tariff(demo, *args, check=False)
    assert_usage_error(done.returncode, done.stderr, "UTF-8")
    if args[1] == "create":
        assert "--name" in done.stderr
        missing = tariff(demo, "customers", "show", "cli3-latin", check=False)
        assert missing.stderr.startswith("tariff: NOT_FOUND"), missing.stderr


def test_usage_send_a_line_that_is_not_utf8_is_named_and_the_events_before_it_are_sent(
    demo: ServerProcess, tmp_path: Path
) -> None:
    events = tmp_path / "latin1.jsonl"
    first = usage_line("cli3-utf8-ok").encode()
    latin = usage_line("cli3-latin-1").replace("gpt-4", "gpt-\u00e9").encode("latin-1")
    events.write_bytes(first + latin + usage_line("cli3-after").encode())
    done = tariff(demo, "usage", "send", "--json", str(events), check=False)
    assert_usage_error(done.returncode, done.stderr, "line 2", "UTF-8")
    summary = json.loads(done.stdout)
    assert (summary["events_read"], summary["accepted"]) == (1, 1)
    again = json.loads(tariff(demo, "usage", "send", "--json", stdin=first.decode()).stdout)  # the same event
    assert (again["accepted"], again["duplicates"]) == (0, 1)


def test_an_empty_server_address_is_a_usage_error_not_unknown() -> None:
    # It was `UNKNOWN: Failed to create channel to ''`, exit 1, as if a server had failed. (TARIFF_SERVER= set
    # but empty is click's unset: the default address.)
    done = tariff("unused:1", "balance", "acme", "--server", "", check=False)
    assert_usage_error(done.returncode, done.stderr, "--server", "HOST:PORT")
    assert "UNKNOWN" not in done.stderr
