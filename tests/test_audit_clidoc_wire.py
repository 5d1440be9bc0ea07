"""An acceptance audit of `tariff`'s client commands against README's "Admin CLI" and each command's `--help`, for
what tests/test_cli*.py and the other CLI audits leave out: every amount table says its unit, a malformed argument
is a usage error naming its option before anything is sent (exit 2), and `usage send --json`'s summary is the
object README describes. Run as a user runs it, against a real demo server on a real socket.

The demo: customer `acme`, contract `acme-2026` (USD, periods from the 1st of this month), grant
`acme-prepaid-50k` of 50,000 credits bought for 45,000 USD, rate card `ai-credits` (a complex GPT-4 summary: 5
credits).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from tariff import TariffClient, now_ms

from tests.audit_fixtures import audit_count, open_contract, serving
from tests.serverproc import ServerProcess
from tests.test_cli import table_rows, tariff

SUMMARY = {"action": "summary", "model": "gpt-4", "complexity": "complex"}


def last_month_start() -> datetime:
    first = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1)


def catalogue(client: TariffClient) -> None:
    """The demo's, and customer `clidoc-old`, whose contract on the demo card started last month (no usage): that
    month's period has ended and can be closed."""
    open_contract(
        client, "clidoc-old", "clidoc-old-1", int(last_month_start().timestamp()) * 1000, rate_card_id="ai-credits"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serving(ServerProcess(tmp_path_factory.mktemp("audit-clidoc") / "data", demo=True), catalogue)


def this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def topup_set(threshold: str, recharge_to: str, price_per_credit: str) -> tuple[str, ...]:
    """`tariff topup set` of the demo's contract, two top-ups a period."""
    amounts = ("--threshold", threshold, "--recharge-to", recharge_to, "--price-per-credit", price_per_credit)
    return ("topup", "set", "acme-2026", *amounts, "--max-per-period", "2")


def titles(output: str) -> list[str]:
    """The lines of a printed output that title a table (the line before a header whose next line is a rule)."""
    lines = output.splitlines()
    return [lines[i - 1].strip() for i in range(1, len(lines) - 1) if lines[i + 1].startswith("─") and i >= 1]


def test_every_revenue_table_names_the_reports_currency(server: ServerProcess) -> None:
    # README "Revenue": the report is in the contracts' currency; the demo's is USD, and acme's 45,000 USD prepaid
    # stays deferred. Each of the three tables holds amounts of that currency, so each says which.
    out = tariff(server, "revenue", "--from", this_month()).stdout
    assert titles(out) == ["by product (USD)", "by customer (USD)", "reconciliation (USD)"], out
    assert ["prepaid sold", "45000"] in table_rows(out)


def test_the_revenue_columns_say_recognised_from_credits_and_from_overage(server: ServerProcess) -> None:
    # README "Revenue" (and the reconciliation's own labels): recognised from credits, recognised from overage. A
    # column headed "credits" under "(USD)" read as a count of credits.
    rows = table_rows(tariff(server, "revenue", "--from", this_month()).stdout)
    headers = [row for row in rows if row and row[0] == "period"]
    assert headers == [
        ["period", "product", "recognised", "from credits", "from overage", "breakage"],
        ["period", "customer", "recognised", "from credits", "from overage", "breakage", "deferred at end"],
    ]


@pytest.mark.parametrize("ttl_s", ["0", "-5", "-0.001"])
def test_a_reserve_ttl_that_is_not_positive_is_a_usage_error_and_holds_nothing(
    server: ServerProcess, ttl_s: str
) -> None:
    # README "Admin CLI": a malformed argument is exit 2, the option named, nothing sent. A hold lasting no time
    # (or less) is never one the server takes.
    reservation = f"clidoc-ttl{ttl_s}"
    done = tariff(server, "reserve", "acme", "ai_action", "--id", reservation, "--ttl-s", ttl_s, check=False)
    assert done.returncode == 2, done.stderr
    assert "--ttl-s" in done.stderr and "Traceback" not in done.stderr
    with server.client() as client:
        assert str(client.get_balance("acme").credits_held) == "0"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("ratecard", "draft", "ai-credits", "--base", "1", "--set", "gpt4_factor=2,5"), "--set"),
        (("ratecard", "draft", "ai-credits", "--base", "1", "--set", "gpt4_factor= 2"), "--set"),
        (("alerts", "create", "--customer", "acme", "--type", "LOW_BALANCE", "--threshold", "1_000"), "--threshold"),
        (topup_set("ten", "5000", "0.9"), "--threshold"),
        (topup_set("1000", "+5000", "0.9"), "--recharge-to"),
        (topup_set("1000", "5000", ".9"), "--price-per-credit"),
    ],
)
def test_a_decimal_option_that_is_no_decimal_is_a_usage_error_naming_the_option(
    server: ServerProcess, args: tuple[str, ...], option: str
) -> None:
    # README "Admin CLI": exit 2 for a malformed argument, the option named, before anything is sent (so the audit
    # log gains nothing); the server's own refusal would name the wire's field (top_up.threshold), not the option.
    with server.client() as client:
        before = audit_count(client)
    done = tariff(server, *args, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert option in done.stderr and "is not a decimal" in done.stderr, done.stderr
    assert "INVALID_ARGUMENT" not in done.stderr
    with server.client() as client:
        assert audit_count(client) == before


def test_an_id_the_servers_rule_refuses_is_exit_1_naming_the_field(server: ServerProcess) -> None:
    # README "Admin CLI", exit 1: a well-formed argument the server's rules refuse comes back INVALID_ARGUMENT naming
    # the request's field, in one line; nothing is created.
    done = tariff(server, "customers", "create", "clidoc bad", check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("tariff: INVALID_ARGUMENT: id: 'clidoc bad' must be 1-128"), done.stderr
    assert tariff(server, "customers", "show", "clidoc bad", check=False).returncode == 1


def test_a_decimal_option_in_the_grammar_is_sent_as_written(server: ServerProcess) -> None:
    # The client's check is the server's grammar, no stricter: an exponent and a negative parameter are decimals.
    args = ("ratecard", "draft", "ai-credits", "--base", "1", "--set", "tiny=1e-3", "--set", "off=-0.5", "--json")
    parameters = json.loads(tariff(server, *args).stdout)["parameters"]
    assert (parameters["tiny"], parameters["off"], parameters["gpt4_factor"]) == ("1e-3", "-0.5", "2.5")
    alert = json.loads(
        tariff(
            server, "alerts", "create", "--customer", "acme", "--type", "LOW_BALANCE", "--threshold", "2.5E3", "--json"
        ).stdout
    )
    assert (alert["customer_id"], alert["threshold"]) == ("acme", "2500")  # 2.5E3, as the server normalises it


def test_a_choice_is_taken_in_the_case_the_tables_print_it(server: ServerProcess) -> None:
    # `products list` prints the aggregation COUNT, `invoices list --json` the status INVOICE_FINAL's FINAL, and
    # `alerts list` LOW_BALANCE; --aggregation took only `count`, --status only `final`, --type only `LOW_BALANCE`:
    # a value copied from one output into the next command was a usage error.
    product = ("products", "create", "clidoc-calls", "--event-type", "clidoc_call", "--aggregation", "COUNT", "--json")
    assert json.loads(tariff(server, *product).stdout)["aggregation"] == "COUNT"
    rule = ("alerts", "create", "--customer", "acme", "--type", "credits_exhausted", "--id", "clidoc-case", "--json")
    assert json.loads(tariff(server, *rule).stdout)["type"] == "CREDITS_EXHAUSTED"
    listed = json.loads(tariff(server, "invoices", "list", "--status", "FINAL", "--customer", "acme", "--json").stdout)
    assert listed == {"invoices": []}


def test_usage_send_json_is_the_summary_readme_describes(server: ServerProcess) -> None:
    # README "Admin CLI": `usage send --json` prints its summary, one object: the counts, the rejections by reason
    # and the first rejected transaction id and message of each reason, and the batches sent and resent.
    now = now_ms()
    lines = [
        {"transaction_id": "clidoc-u1", "customer_id": "acme", "event_type": "ai_action", "timestamp_ms": now},
        {"transaction_id": "clidoc-u2", "customer_id": "nobody", "event_type": "ai_action", "timestamp_ms": now},
    ]
    lines[0]["dimensions"] = SUMMARY
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    done = tariff(server, "usage", "send", "--json", stdin=stdin, check=False)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout) == {
        "events_read": 2,
        "accepted": 1,
        "duplicates": 0,
        "rejected": 1,
        "rejected_by_reason": {"UNKNOWN_CUSTOMER": 1},
        "rejections": [
            {"transaction_id": "clidoc-u2", "reason": "UNKNOWN_CUSTOMER", "message": "customer 'nobody' does not exist"}
        ],
        "batches": 1,
        "batches_resent": 0,
    }


def test_balance_shows_credits_in_the_pricing_unit_and_due_in_the_currency(server: ServerProcess) -> None:
    # README "Admin CLI": tables say their units; `--json` is protobuf's JSON mapping with proto field names,
    # decimals as strings and the 64-bit as_of_seq as a string.
    rows = table_rows(tariff(server, "balance", "acme").stdout)
    labels = [row[0] for row in rows if row]
    for label in ("credits remaining (credits)", "credits available (credits)", "overage due (USD)"):
        assert label in labels, labels
    shown = json.loads(tariff(server, "balance", "acme", "--json").stdout)
    assert (shown["customer_id"], shown["pricing_unit"], shown["currency"]) == ("acme", "credits", "USD")
    assert isinstance(shown["as_of_seq"], str) and isinstance(shown["credits_available"], str)
    assert shown["grants"][0]["grant_id"] == "acme-prepaid-50k" and shown["grants"][0]["amount"] == "50000"


def test_the_balance_grants_table_says_its_unit_as_tariff_grants_does(server: ServerProcess) -> None:
    # `tariff grants acme` titles its table "grants of acme (credits)"; the same grants' amounts under `tariff
    # balance` were titled "grants" alone, below fields that each say "(credits)".
    assert "grants of acme (credits)" in titles(tariff(server, "grants", "acme").stdout)
    assert "grants (credits)" in titles(tariff(server, "balance", "acme").stdout)


def test_the_grants_revenue_column_says_its_currency_not_credits(server: ServerProcess) -> None:
    # GrantBalance.recognized_revenue is drawn x paid_amount / amount: money of the contract's currency (45,000 USD
    # for 50,000 credits), under a title saying "(credits)" for the other columns.
    out = tariff(server, "grants", "acme").stdout
    header = out.splitlines()[1].split()
    assert header[header.index("expired") + 1 : header.index("expired") + 3] == ["revenue", "(USD)"], out


def test_the_invoice_lines_say_the_unit_of_their_overage(server: ServerProcess) -> None:
    # The invoice's fields say "overage (credits)" and "overage due (USD)"; its lines' overage column, in credits
    # beside "due (USD)", said no unit at all.
    out = tariff(server, "invoices", "preview", "acme").stdout
    lines = out.splitlines()
    header = lines[[line.strip() for line in lines].index("lines") + 1]
    assert "amount (credits)" in header and "overage (credits)" in header and "due (USD)" in header, header


def test_topup_set_and_clear_json_print_the_policy_then_null(server: ServerProcess) -> None:
    # README "Admin CLI": topup set, clear and show --json print the contract's policy (its top_up), null when none.
    policy = ("--threshold", "100", "--recharge-to", "500", "--price-per-credit", "0.9", "--max-per-period", "2")
    set_json = json.loads(tariff(server, "topup", "set", "acme-2026", *policy, "--json").stdout)
    assert set_json == {
        "threshold": "100",
        "recharge_to": "500",
        "price_per_credit": "0.9",
        "max_per_period": 2,
        "currency": "USD",
    }
    assert json.loads(tariff(server, "topup", "show", "acme-2026", "--json").stdout) == set_json
    assert tariff(server, "topup", "clear", "acme-2026", "--json").stdout.strip() == "null"
    assert tariff(server, "topup", "show", "acme-2026", "--json").stdout.strip() == "null"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("audit", "--since", "2026-12-01T01:00:00+01:00", "--until", "2026-11-30 23:00"),
            "--until 2026-11-30T23:00:00Z is not after --since 2026-12-01T00:00:00Z",
        ),
        (
            ("ratecard", "simulate", "ai-credits", "1", "--from", "2026-12-01T01:00:00+01:00", "--to", "2026-12-01"),
            "--to 2026-12-01T00:00:00Z is not after --from 2026-12-01T00:00:00Z",
        ),
    ],
    ids=["audit", "simulate"],
)
def test_a_span_ending_before_it_starts_names_both_times_in_utc(
    server: ServerProcess, args: tuple[str, ...], expected: str
) -> None:
    # A TIME naming no offset is UTC; one with an offset is that instant. The refusal names both instants as the
    # CLI shows times, in UTC with Z (01:00+01:00 is 00:00Z), not Python's "+00:00" or the offset as typed.
    done = tariff(server, *args, check=False)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr, done.stderr


def test_the_csv_export_writes_times_as_the_tables_do_fractional_seconds_included(server: ServerProcess) -> None:
    # README "Invoices and revenue": the CSV's times are as the tables write them, `YYYY-MM-DD HH:MM:SSZ`, with the
    # fractional seconds when there are any: closed_at is the instant of the close, to the millisecond.
    month = last_month_start().strftime("%Y-%m")
    tariff(server, "invoices", "close", "clidoc-old", "--period", month)
    invoices = json.loads(tariff(server, "invoices", "list", "--customer", "clidoc-old", "--json").stdout)["invoices"]
    exported = tariff(server, "invoices", "export", "--period", month, "--customer", "clidoc-old").stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert len(rows) == 1 and len(invoices) == 1, exported  # an invoice without lines: one row
    assert (rows[0]["period_start"], rows[0]["line_id"]) == (f"{month}-01 00:00:00Z", "")
    assert rows[0]["closed_at"] == invoices[0]["closed_at"].replace("T", " ", 1)


def test_a_month_without_a_period_is_one_not_found_line_as_every_exit_1_is(server: ServerProcess) -> None:
    # README "Admin CLI", exit 1: the status code and message in one line (`tariff: NOT_FOUND: ...`). acme's contract
    # starts this month: last month holds no period of it, which the CLI finds out itself and said without a code.
    month = last_month_start().strftime("%Y-%m")
    for command in ("preview", "close", "explain"):
        args = ("invoices", command, "acme", *(["ai_action"] if command == "explain" else []), "--period", month)
        done = tariff(server, *args, check=False)
        assert done.returncode == 1, done.stderr
        assert done.stderr == f"tariff: NOT_FOUND: customer 'acme' has no period starting in {month}\n", done.stderr


def test_a_publish_prints_its_rerating_counts_in_one_table(server: ServerProcess) -> None:
    # It publishes (version 1's prices again: no later test reads a price). PublishVersionResponse's counts are one
    # answer; `ratecard publish` printed "events re-rated" in a field table of its own, then the other counts under
    # a second "field value" header.
    month_start = datetime.now(UTC).strftime("%Y-%m-01T00:00:00Z")
    event: dict[str, object] = {"transaction_id": "clidoc-publish-1", "customer_id": "acme", "event_type": "ai_action"}
    event |= {"timestamp_ms": now_ms(), "dimensions": SUMMARY}
    tariff(server, "usage", "send", stdin=json.dumps(event) + "\n")
    drafted = json.loads(tariff(server, "ratecard", "draft", "ai-credits", "--base", "1", "--json").stdout)
    version = str(drafted["version"])
    published = tariff(server, "ratecard", "publish", "ai-credits", version, "--effective-from", month_start).stdout
    assert titles(published)[-1] == "re-rating", published
    lines = published.splitlines()
    after_title = [i for i, line in enumerate(lines) if line.strip() == "re-rating"][-1] + 1
    counts = table_rows("\n".join(lines[after_title:]))
    assert counts[0] == ["field", "value"], counts
    labels = [row[0] for row in counts[2:]]
    assert labels[:4] == ["events re-rated", "customers re-rated", "buckets re-rated", "re-rated amount delta"]
    assert ["re-rated amount delta", "0"] in counts  # version 1's prices again: nothing moves
    assert published.count("field   ") == 2, published  # the version's fields, then the counts: one table each


def test_every_option_of_every_command_has_help() -> None:
    # README "Admin CLI": `tariff COMMAND --help` documents every option (invoices export --format had none).
    import click

    from server.cli import main

    def undocumented(command: click.Command, path: str) -> list[str]:
        if isinstance(command, click.Group):
            return [x for name, sub in command.commands.items() for x in undocumented(sub, f"{path} {name}")]
        return [f"{path} {p.opts[0]}" for p in command.params if isinstance(p, click.Option) and not p.help]

    assert undocumented(main, "tariff") == []


def test_ratecards_show_json_holds_the_card_its_versions_and_the_version_or_null(server: ServerProcess) -> None:
    # README "Admin CLI": ratecards show --json is {"rate_card", "versions", "version"}, version null while none is in
    # force.
    tariff(server, "ratecards", "create", "clidoc-empty", "--unit", "USD")
    empty = json.loads(tariff(server, "ratecards", "show", "clidoc-empty", "--json").stdout)
    assert (empty["rate_card"]["id"], empty["versions"], empty["version"]) == ("clidoc-empty", [], None)
    demo = json.loads(tariff(server, "ratecards", "show", "ai-credits", "--version", "1", "--json").stdout)
    assert list(demo) == ["rate_card", "versions", "version"]
    assert (demo["rate_card"]["pricing_unit"], demo["version"]["version"]) == ("credits", 1)
