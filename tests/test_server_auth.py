"""API keys, roles, customer restrictions, the audit actor, TLS and the listen rule (server/auth.py, server/app.py).

Unit tests of the key file and the method -> role table, then real server processes (tests/serverproc.py).
Demo prices (server/demo.py): a simple summary on gpt-4o-mini costs 0.5 credits; acme holds 50,000 credits.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tariff import PermissionDenied, TariffClient, TariffError, Unauthenticated
from tariff.v1 import (
    alerts_pb2,
    balance_pb2,
    contracts_pb2,
    invoices_pb2,
    pricing_pb2,
    usage_pb2,
)

from engine.errors import InvalidArgument
from server import auth
from server.app import ServeConfig, listen_refusal
from tests.demo_usage import ACME, CHEAP, demo_batch
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess, ServerStartError

BETA = "beta"
TARIFF = Path(sys.executable).parent / "tariff"  # the installed command (as tests/test_cli.py runs it)
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]
TARIFF_PROTOS = [alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2]


# ---------------------------------------------------------------------------------------------
# Helpers


class Keys:
    """A key file written for a test: role/restriction name -> the secret key."""

    def __init__(self, path: Path, entries: dict[str, tuple[str, list[str] | None]]) -> None:
        self.path = path
        self.key: dict[str, str] = {}
        document: list[dict[str, object]] = []
        for name, (role, customers) in entries.items():
            key = secrets.token_urlsafe(24)
            self.key[name] = key
            entry: dict[str, object] = {"name": name, "sha256": auth.key_hash(key), "role": role}
            if customers is not None:
                entry["customers"] = customers
            document.append(entry)
        path.write_text(json.dumps({"keys": document}))

    @property
    def args(self) -> list[str]:
        return ["--api-keys", str(self.path)]


STANDARD_KEYS: dict[str, tuple[str, list[str] | None]] = {
    "ops-admin": ("admin", None),
    "meter": ("ingest", None),
    "finance": ("read", None),
    "acme-meter": ("ingest", [ACME]),
    "acme-portal": ("read", [ACME]),
}


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status of a call that must fail (OK when it succeeded), and its message."""
    try:
        call()
    except TariffError as e:  # the client's stubs raise its typed errors
        return e.code, e.details
    except grpc.RpcError as e:  # a bare channel's calls, grpc's own
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def add_beta(admin: TariffClient) -> None:
    """A second customer on the demo rate card with 100 prepaid credits."""
    admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=BETA, name="Beta Ltd"))
    admin.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(id="beta-2026", customer_id=BETA, rate_card_id="ai-credits")
    )
    admin.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id="beta-prepaid", customer_id=BETA, kind=contracts_pb2.PREPAID, amount="100", paid_amount="90"
            )
        )
    )


class Bidi:
    """A bidi call driven from a queue, so a test can send batch by batch and read acks in between."""

    def __init__(self, responses_of: Callable[[Iterator[object]], Iterator[object]]) -> None:
        self._requests: queue.Queue[object] = queue.Queue()
        self.responses = responses_of(iter(self._requests.get, None))

    def send(self, message: object) -> object:
        self._requests.put(message)
        return next(self.responses)

    def end(self) -> None:
        self._requests.put(None)


@pytest.fixture
def keyed(server_factory: ServerFactory, tmp_path: Path) -> tuple[ServerProcess, Keys]:
    """A demo server with the standard keys, plus customer beta (created by the admin key)."""
    keys = Keys(tmp_path / "keys.json", STANDARD_KEYS)
    server = server_factory(demo=True, extra_args=keys.args, api_key=keys.key["ops-admin"], name="keyed")
    with server.client() as admin:
        add_beta(admin)
    return server, keys


# ---------------------------------------------------------------------------------------------
# The key file and the table (no server)


def test_every_rpc_of_every_tariff_service_is_in_the_role_table_with_fields_that_exist() -> None:
    listed = set(auth.RULES)
    for module in TARIFF_PROTOS:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                assert path in listed, f"{path} is missing from server/auth.py RULES"
                listed.discard(path)
                rule = auth.RULES[path]
                assert "admin" in rule.roles, f"admin may do everything, not {path}"
                if rule.scope in (auth.Scope.FIELD, auth.Scope.FIELD_LIST, auth.Scope.CONTRACT, auth.Scope.ALERT_RULE):
                    message = method.input_type
                    for part in rule.field.split("."):
                        assert part in message.fields_by_name, f"{path}: {rule.field} is not a request field"
    assert listed == set(), f"rules for methods that do not exist: {sorted(listed)}"


def test_read_role_gets_no_state_changing_rpc_and_ingest_only_usage_balances_and_alert_reads() -> None:
    changing = {"Create", "Delete", "Publish", "Rollback", "Add", "Grant", "Set", "Close", "Ingest", "Release"}
    alert_reads = {"/tariff.v1.AlertService/WatchAlerts", "/tariff.v1.AlertService/ListAlertRules"}
    for path, rule in auth.RULES.items():
        name = path.rsplit("/", 1)[-1]
        if "read" in rule.roles:
            assert not any(name.startswith(prefix) for prefix in changing), path
        if "ingest" in rule.roles:
            assert path.startswith(("/tariff.v1.UsageService/", "/tariff.v1.BalanceService/")) or path in alert_reads


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ('{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '", "role": "root"}]}', "json", "keys[0] (a): 'role'"),
        ('{"keys": [{"name": "a", "sha256": "abc", "role": "read"}]}', "json", "keys[0] (a): 'sha256'"),
        ('{"keys": [{"sha256": "' + "0" * 64 + '", "role": "read"}]}', "json", "keys[0]: 'name' is required"),
        (
            '{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '", "role": "read", "key": "x"}]}',
            "json",
            "unknown field(s) key",
        ),
        (
            '{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '", "role": "read", "customers": []}]}',
            "json",
            "'customers' must be a non-empty list",
        ),
        (
            '[[keys]]\nname = "a"\nsha256 = "'
            + "0" * 64
            + '"\nrole = "read"\n[[keys]]\nname = "a"\nsha256 = "'
            + "1" * 64
            + '"\nrole = "admin"\n',
            "toml",
            "keys[1]: the name 'a' is used twice",
        ),
        ('{"keys": []}', "json", "no keys"),
        ('{"users": []}', "json", "top-level 'keys' list"),
        ("[[keys]\n", "toml", "not valid TOML"),
    ],
)
def test_a_bad_key_file_is_refused_with_a_message_naming_the_entry(text: str, fmt: str, expected: str) -> None:
    with pytest.raises(auth.KeyFileError) as caught:
        auth.parse_keys(text, fmt, "keys-file")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("keys-file: ")


# Names breaking the x-actor rule (1-128 ASCII letters, digits and ._:@-) that a key file could hold: the key's name
# is the audit log's actor, so "alice via ops" would read as alice's change made through key ops, and a newline or
# control character would break an audit table's rows and the server's log lines.
BAD_KEY_NAMES = {
    "via": "alice via ops",
    "newline": "a\nb",
    "trailing-newline": "ops\n",
    "tab": "tab\there",
    "control": "bell\x07",
    "leading-space": " ops",
    "blank": " ",
    "129-chars": "x" * 129,
    "non-ascii": "café",
}
ACTOR_RULE_WHY = (
    "must be 1-128 characters of letters, digits and ._:@- (the rule an x-actor has: it is the audit log's actor)"
)


def key_file_text(fmt: str, entries: Sequence[Mapping[str, object]]) -> str:
    """A key file of `entries` (name, sha256, role, customers) as JSON or TOML (JSON string escapes and arrays of
    strings are TOML's too)."""
    if fmt == "json":
        return json.dumps({"keys": entries})
    return "".join("[[keys]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in e.items()) for e in entries)


@pytest.mark.parametrize("fmt", ["json", "toml"])
@pytest.mark.parametrize("name", list(BAD_KEY_NAMES.values()), ids=list(BAD_KEY_NAMES))
def test_a_key_name_breaking_the_actor_rule_is_refused_in_one_line_naming_the_entry(fmt: str, name: str) -> None:
    """README "API keys": a key's name is held to the x-actor rule in the key file too. The server took any
    non-blank text there ("alice via ops", newlines, control characters); now KeyFileError names the entry and why,
    in one line (the name quoted, so its newline cannot start a line of its own), before anything is opened."""
    entries = [
        {"name": "ops", "sha256": "0" * 64, "role": "admin"},
        {"name": name, "sha256": "1" * 64, "role": "read"},
    ]
    with pytest.raises(auth.KeyFileError) as caught:
        auth.parse_keys(key_file_text(fmt, entries), fmt, "keys-file")
    message = str(caught.value)
    shown = repr(name) if len(name) <= 128 else f"{name[:128]!r}…"
    assert message == f"keys-file: keys[1]: 'name' {shown} {ACTOR_RULE_WHY}"
    assert "\n" not in message


def test_a_key_name_of_megabytes_is_quoted_cut_to_128_characters() -> None:
    entries = [{"name": "n" * 1_000_000, "sha256": "0" * 64, "role": "admin"}]
    with pytest.raises(auth.KeyFileError) as caught:
        auth.parse_keys(key_file_text("json", entries), "json", "keys-file")
    assert str(caught.value) == f"keys-file: keys[0]: 'name' '{'n' * 128}'… {ACTOR_RULE_WHY}"


@pytest.mark.parametrize("fmt", ["json", "toml"])
@pytest.mark.parametrize(
    "customer_id", ["acme corp", "acme\n", "x" * 129, "café"], ids=["space", "newline", "129", "accent"]
)
def test_a_key_restricted_to_a_customer_id_breaking_the_id_rule_is_refused_naming_the_entry(
    fmt: str, customer_id: str
) -> None:
    """README "API keys": `tariff keys new --customers` refuses an id breaking the id rule, and the server holds the
    file to what `keys new` writes. It took `customers = ["acme corp"]`: a key restricted to a customer that can never
    exist, so a typo gave a key that touches no one, silently. Now the server refuses the file naming the entry."""
    entries: list[dict[str, str | list[str]]] = [
        {"name": "ops", "sha256": "0" * 64, "role": "admin"},
        {"name": "portal", "sha256": "1" * 64, "role": "read", "customers": ["acme", customer_id]},
    ]
    with pytest.raises(auth.KeyFileError) as caught:
        auth.parse_keys(key_file_text(fmt, entries), fmt, "keys-file")
    shown = repr(customer_id) if len(customer_id) <= 128 else f"{customer_id[:128]!r}…"
    assert str(caught.value) == (
        f"keys-file: keys[1] (portal): 'customers' holds {shown}, not a customer id (1-128 letters, digits and ._:@-)"
    )


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_a_key_name_the_actor_rule_allows_is_taken_as_it_is(fmt: str) -> None:
    """The longest name the rule allows, with every punctuation it allows."""
    name = ("ops.team_1:eu@acme-" * 7)[:128]
    loaded = auth.parse_keys(key_file_text(fmt, [{"name": name, "sha256": "A" * 64, "role": "read"}]), fmt)
    assert loaded == {"a" * 64: auth.Identity(name, "read", None)}


@pytest.mark.parametrize("suffix", ["json", "toml"])
def test_new_key_refuses_a_bad_name_and_a_file_holding_one_before_writing(tmp_path: Path, suffix: str) -> None:
    """`new_key` (behind `tariff keys new`) writes no file the server would refuse: not one it would add a bad name
    to, nor one already holding a bad name (the entry is named, the file left as it was)."""
    path = tmp_path / f"keys.{suffix}"
    with pytest.raises(auth.KeyFileError, match=r"keys\[0\]: 'name' 'alice via ops' must be 1-128"):
        auth.new_key(path, "alice via ops", "admin")
    assert not path.exists()
    text = key_file_text(suffix, [{"name": "ops\n", "sha256": "0" * 64, "role": "admin"}])
    path.write_text(text)
    with pytest.raises(auth.KeyFileError, match=r"keys\[0\]: 'name' 'ops\\n' must be 1-128"):
        auth.new_key(path, "meter", "ingest")
    assert path.read_text() == text


def test_new_key_refuses_to_append_to_a_broken_file_and_leaves_it_alone(tmp_path: Path) -> None:
    for name, text in [("keys.json", '{"keys": [}'), ("keys.toml", "[[keys]\n")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(auth.KeyFileError, match="not valid"):
            auth.new_key(path, "ops", "admin")
        assert path.read_text() == text


def test_keyring_identifies_only_the_exact_key() -> None:
    key = secrets.token_urlsafe(32)
    ring = auth.Keyring({auth.key_hash(key): auth.Identity("svc", "ingest", frozenset({ACME}))})
    assert ring.identify(key) == auth.Identity("svc", "ingest", frozenset({ACME}))
    assert ring.identify(key) == auth.Identity("svc", "ingest", frozenset({ACME}))  # cached answer is the same
    assert ring.identify(key[:-1]) is None
    assert ring.identify(key + "x") is None
    assert ring.identify(auth.key_hash(key)) is None  # the stored hash is not itself a key


@pytest.mark.parametrize("suffix", ["json", "toml"])
def test_tariff_keys_new_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"keys.{suffix}"
    printed: list[str] = []
    for name, role, customers in [("ops", "admin", ""), ("acme-meter", "ingest", "acme,acme-eu")]:
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "keys", "new", "--name", name, "--role", role, "--file", str(path)]
            + (["--customers", customers] if customers else []),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        key = result.stdout.strip()
        assert len(key) >= 40 and "\n" not in key
        printed.append(key)
    text = path.read_text()
    assert all(key not in text for key in printed), "the key itself must never be stored"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = auth.load_keys(path)
    assert loaded == {
        auth.key_hash(printed[0]): auth.Identity("ops", "admin", None),
        auth.key_hash(printed[1]): auth.Identity("acme-meter", "ingest", frozenset({"acme", "acme-eu"})),
    }
    # A reused name is refused and the file is left as it was.
    again = subprocess.run(
        [sys.executable, "-m", "server.cli", "keys", "new", "--name", "ops", "--role", "read", "--file", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert again.returncode == 2 and "used twice" in again.stderr, again.stderr
    assert again.stdout == ""
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("listen", "keys", "insecure", "tls", "refused"),
    [
        ("127.0.0.1:1", False, False, False, False),
        ("[::1]:1", False, False, False, False),
        ("localhost:1", False, False, False, False),
        ("0.0.0.0:1", False, False, False, True),
        ("10.1.2.3:1", False, False, False, True),
        ("0.0.0.0:1", False, True, False, False),
        ("0.0.0.0:1", True, False, False, False),
        ("0.0.0.0:1", True, False, True, False),
    ],
)
def test_listen_rule_needs_keys_or_insecure_beyond_loopback(
    listen: str, keys: bool, insecure: bool, tls: bool, refused: bool
) -> None:
    config = ServeConfig(
        listen=listen,
        data_dir=Path("unused"),
        insecure=insecure,
        api_keys=Path("keys.json") if keys else None,
        tls_cert=Path("c.pem") if tls else None,
        tls_key=Path("k.pem") if tls else None,
    )
    refusal = listen_refusal(config)
    assert (refusal is not None) == refused, refusal
    if refused:
        assert refusal is not None and "--api-keys" in refusal and "--insecure" in refusal


def test_tls_half_configured_is_refused() -> None:
    assert listen_refusal(ServeConfig("127.0.0.1:1", Path("d"), tls_cert=Path("c"))) is not None
    assert listen_refusal(ServeConfig("127.0.0.1:1", Path("d"), tls_client_ca=Path("ca"))) is not None


def test_server_with_a_bad_key_file_exits_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text('{"keys": [{"name": "x", "sha256": "' + "0" * 64 + '", "role": "superuser"}]}')
    command = ["serve", "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path / "d"), "--api-keys", str(bad)]
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", *command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "keys[0] (x): 'role' must be one of admin, ingest, read" in result.stderr, result.stderr
    assert not (tmp_path / "d").exists(), "nothing is created before the keys are known good"


def test_a_server_whose_key_file_names_a_key_against_the_actor_rule_stops_with_one_line(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A real `tariff serve` given a key file with a key named "ops" plus a newline and a forged log line: it
    started and recorded that name as the actor of the key's changes. Now it exits 2 before opening its data,
    its log saying why in one line naming the file and the entry."""
    name = "ops\n2026-12-06T00:00:00Z INFO all keys loaded"
    keys = Keys(tmp_path / "keys.json", {"ops-admin": ("admin", None), name: ("admin", None)})
    server = server_factory(extra_args=keys.args, api_key=keys.key["ops-admin"], name="bad-key-name", start=False)
    with pytest.raises(ServerStartError):
        server.start()
    assert server.returncode == 2
    log = server.log_tail(200)
    said = [line for line in log.splitlines() if "keys[1]" in line]
    assert len(said) == 1, log
    assert said[0].endswith(f"{keys.path}: keys[1]: 'name' {name!r} {ACTOR_RULE_WHY}"), log
    assert "all keys loaded" not in log.replace(repr(name), ""), "the name's newline started no line of its own"
    assert list(server.data_dir.iterdir()) == [], "nothing is opened before the keys are known good"


# ---------------------------------------------------------------------------------------------
# Authentication


def test_missing_or_wrong_key_is_unauthenticated_everywhere_but_health_and_reflection(
    keyed: tuple[ServerProcess, Keys],
) -> None:
    server, keys = keyed
    for key, expected in [(None, "missing API key"), ("not-a-key", "invalid API key"), ("", "missing API key")]:
        with server.client(api_key=key) as client:
            with pytest.raises(Unauthenticated) as caught:
                client.get_balance(ACME)
            assert expected in caught.value.details
            code, _ = code_of(lambda c=client: c.usage.IngestUsageBatch(demo_batch("b", "unauth", 1)))  # type: ignore[misc]
            assert code == grpc.StatusCode.UNAUTHENTICATED
            stream = Bidi(client.usage.IngestUsage)
            with pytest.raises(Unauthenticated):
                stream.send(demo_batch("s", "unauth-s", 1))
            stream.end()
            code, _ = code_of(
                lambda c=client: list(c.balance.AuthorizeStream(iter([balance_pb2.AuthorizeRequest(request_id="r")])))  # type: ignore[misc]
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
    # A bearer header with a different scheme is no key either.
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service="tariff.v1.UsageService"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        code, details = code_of(
            lambda: channel.unary_unary(
                "/tariff.v1.BalanceService/GetBalance",
                request_serializer=balance_pb2.GetBalanceRequest.SerializeToString,
                response_deserializer=balance_pb2.Balance.FromString,
            )(
                balance_pb2.GetBalanceRequest(customer_id=ACME),
                metadata=(("authorization", f"Basic {keys.key['ops-admin']}"),),
                timeout=5,
            )
        )
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
    with server.client() as admin:
        assert admin.get_balance(ACME).credits_remaining == "50000", "nothing was ingested by refused calls"


# ---------------------------------------------------------------------------------------------
# Roles


def _probes(client: TariffClient) -> dict[str, Callable[[], object]]:
    """One representative RPC per service and kind (read / use / admin)."""
    return {
        "usage.IngestUsageBatch": lambda: client.usage.IngestUsageBatch(demo_batch("role", "role", 1), timeout=5),
        "balance.GetBalance": lambda: client.balance.GetBalance(
            balance_pb2.GetBalanceRequest(customer_id=ACME), timeout=5
        ),
        "balance.Authorize": lambda: client.balance.Authorize(
            balance_pb2.AuthorizeRequest(customer_id=ACME, event_type="ai_action", dimensions=CHEAP), timeout=5
        ),
        "pricing.ListProducts": lambda: client.pricing.ListProducts(pricing_pb2.ListProductsRequest(), timeout=5),
        "pricing.GetAuditLog": lambda: client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(), timeout=5),
        "pricing.CreateRateCard": lambda: client.pricing.CreateRateCard(
            pricing_pb2.CreateRateCardRequest(id=f"card-{secrets.token_hex(4)}", name="x", pricing_unit="USD"),
            timeout=5,
        ),
        "contracts.GetCustomer": lambda: client.contracts.GetCustomer(
            contracts_pb2.GetCustomerRequest(id=ACME), timeout=5
        ),
        "contracts.CreateCustomer": lambda: client.contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(id=f"c-{secrets.token_hex(4)}", name="x"), timeout=5
        ),
        "invoices.PreviewInvoice": lambda: client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id=ACME), timeout=5
        ),
        "invoices.ClosePeriod": lambda: client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id=ACME), timeout=5
        ),
        # A watch a role may make runs, sending nothing on this quiet server, until its deadline (DEADLINE_EXCEEDED,
        # not a refusal); a refusal comes at once. 2 s, not the others' 5: three roles may watch.
        "alerts.WatchAlerts": lambda: list(client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(), timeout=2)),
        "alerts.CreateAlert": lambda: client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(customer_id=ACME, threshold="1"), timeout=5
        ),
    }


ALLOWED: dict[str, set[str]] = {
    "ops-admin": {
        "usage.IngestUsageBatch",
        "balance.GetBalance",
        "balance.Authorize",
        "pricing.ListProducts",
        "pricing.GetAuditLog",
        "pricing.CreateRateCard",
        "contracts.GetCustomer",
        "contracts.CreateCustomer",
        "invoices.PreviewInvoice",
        "invoices.ClosePeriod",
        "alerts.WatchAlerts",
        "alerts.CreateAlert",
    },
    "meter": {"usage.IngestUsageBatch", "balance.GetBalance", "balance.Authorize", "alerts.WatchAlerts"},
    "finance": {
        "balance.GetBalance",
        "pricing.ListProducts",
        "pricing.GetAuditLog",
        "contracts.GetCustomer",
        "invoices.PreviewInvoice",
        "alerts.WatchAlerts",
    },
}


def test_each_role_is_allowed_exactly_its_rpcs_on_every_service(keyed: tuple[ServerProcess, Keys]) -> None:
    server, keys = keyed
    for name, allowed in ALLOWED.items():
        role = STANDARD_KEYS[name][0]
        with server.client(api_key=keys.key[name]) as client:
            for probe, call in _probes(client).items():
                code, details = code_of(call)
                if probe in allowed:
                    # Allowed: it ran (OK, or UNIMPLEMENTED for what is not built yet), it was not refused.
                    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (
                        name,
                        probe,
                        code,
                        details,
                    )
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (name, probe, code, details)
                    assert f"key {name!r} has role {role!r}" in details, details
    with server.client() as admin:
        # Only the admin's and the meter's one-event batches were ingested (the same transaction id: one charge).
        assert admin.get_balance(ACME).credits_remaining == "49999.5"


def test_refused_rpcs_change_nothing(keyed: tuple[ServerProcess, Keys]) -> None:
    server, keys = keyed
    with server.client() as admin:
        before = admin.get_balance(ACME)
        audit_before = admin.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries
    with server.client(api_key=keys.key["finance"]) as reader, pytest.raises(PermissionDenied):
        reader.ingest_batch(demo_batch("x", "refused", 10).events)
    with server.client(api_key=keys.key["meter"]) as meter:
        code, _ = code_of(
            lambda: meter.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="sneaky", name="S"))
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
    with server.client() as admin:
        assert admin.get_balance(ACME) == before
        assert admin.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries == audit_before
        code, _ = code_of(lambda: admin.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="sneaky")))
        assert code == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------------------------------
# Customer restrictions


def test_restricted_ingest_key_serves_its_customer_and_refuses_a_batch_touching_another(
    keyed: tuple[ServerProcess, Keys],
) -> None:
    server, keys = keyed
    with server.client(api_key=keys.key["acme-meter"]) as meter:
        ack = meter.usage.IngestUsageBatch(demo_batch("own", "own", 2))
        assert (ack.accepted, list(ack.rejected)) == (2, [])

        mixed = demo_batch("mixed", "mixed", 4)
        mixed.events[2].customer_id = BETA
        code, details = code_of(lambda: meter.usage.IngestUsageBatch(mixed))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "events[2]" in details and "'beta'" in details and "acme-meter" in details, details

        # On a stream: the first batch is acked, the one touching beta ends the call and is not applied.
        stream = Bidi(meter.usage.IngestUsage)
        first = stream.send(demo_batch("s1", "s1", 3))
        assert isinstance(first, usage_pb2.IngestAck) and first.accepted == 3
        foreign = demo_batch("s2", "s2", 3)
        foreign.events[1].customer_id = BETA
        with pytest.raises(PermissionDenied) as streamed:
            stream.send(foreign)
        stream.end()
        assert "events[1]" in streamed.value.details

        # Balances: its own customer yes, the other no, and the refusal says nothing about beta's money.
        assert meter.get_balance(ACME).credits_remaining == "49997.5"  # 5 events x 0.5
        with pytest.raises(PermissionDenied) as denied:
            meter.get_balance(BETA)
        assert "100" not in denied.value.details and "beta-2026" not in denied.value.details
        with pytest.raises(PermissionDenied):
            meter.authorize(BETA, "ai_action", CHEAP)
        assert meter.authorize(ACME, "ai_action", CHEAP).allowed

        # AuthorizeStream checks every request as it is read.
        answers = Bidi(meter.balance.AuthorizeStream)
        ok = answers.send(balance_pb2.AuthorizeRequest(request_id="r1", customer_id=ACME, event_type="ai_action"))
        assert isinstance(ok, balance_pb2.AuthorizeResponse) and ok.request_id == "r1"
        with pytest.raises(PermissionDenied):
            answers.send(balance_pb2.AuthorizeRequest(request_id="r2", customer_id=BETA, event_type="ai_action"))
        answers.end()

    with server.client() as admin:
        assert admin.get_balance(BETA).credits_remaining == "100", "nothing reached beta"
        assert admin.get_balance(ACME).credits_remaining == "49997.5"
        # Not one event of the refused batches was recorded: resent by the admin they are new.
        resent = demo_batch("again", "mixed", 4)
        assert admin.usage.IngestUsageBatch(resent).accepted == 4
        assert admin.usage.IngestUsageBatch(demo_batch("again2", "s2", 3)).accepted == 3


def test_restricted_read_key_sees_only_its_customers_and_nothing_global(keyed: tuple[ServerProcess, Keys]) -> None:
    server, keys = keyed
    with server.client() as admin:
        everyone = admin.contracts.ListCustomers(contracts_pb2.ListCustomersRequest())
        assert [c.id for c in everyone.customers] == [ACME, BETA]
    with server.client(api_key=keys.key["acme-portal"]) as portal:
        listed = portal.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=1))
        assert ([c.id for c in listed.customers], listed.next_page_token) == ([ACME], "")
        assert portal.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=ACME)).name == "Acme Corp"
        assert portal.contracts.GetContract(contracts_pb2.GetContractRequest(id="acme-2026")).customer_id == ACME
        assert portal.pricing.ListProducts(pricing_pb2.ListProductsRequest()).products, "the catalogue is shared"
        refused = {
            "GetCustomer(beta)": lambda: portal.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=BETA)),
            "GetContract(beta's)": lambda: portal.contracts.GetContract(
                contracts_pb2.GetContractRequest(id="beta-2026")
            ),
            "GetContract(unknown)": lambda: portal.contracts.GetContract(contracts_pb2.GetContractRequest(id="nope")),
            "GetBalance(beta)": lambda: portal.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=BETA)),
            "GetAuditLog": lambda: portal.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest()),
            "GetRateCard": lambda: portal.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="ai-credits")),
            "GetRevenueReport(all)": lambda: portal.invoices.GetRevenueReport(invoices_pb2.GetRevenueReportRequest()),
            "ExplainLineItem(beta)": lambda: portal.invoices.ExplainLineItem(
                invoices_pb2.ExplainLineItemRequest(customer_id=BETA, line_id="ai_action")
            ),
            "SimulateVersion(all)": lambda: portal.pricing.SimulateVersion(
                pricing_pb2.SimulateVersionRequest(rate_card_id="ai-credits", version=1)
            ),
        }
        for what, call in refused.items():
            code, details = code_of(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (what, code, details)
            assert "acme-portal" in details and "Beta Ltd" not in details, details
        # Its own customer on a per-customer RPC passes the gate and is answered, with its own lines only.
        span = {
            "period_start": timestamp_pb2.Timestamp(seconds=0),
            "period_end": timestamp_pb2.Timestamp(seconds=2**32),
        }
        own = portal.invoices.GetRevenueReport(invoices_pb2.GetRevenueReportRequest(customer_id=ACME, **span))
        assert own.customer_lines and {line.customer_id for line in own.customer_lines} == {ACME}
        assert own.reconciliation.reconciles


# ---------------------------------------------------------------------------------------------
# The audit actor


def test_audit_log_records_the_key_name_as_actor(keyed: tuple[ServerProcess, Keys]) -> None:
    server, _ = keyed
    with server.client() as admin:
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="gamma", name="Gamma"))
        entries = admin.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries
    by_key = [(e.action, e.target, e.actor) for e in entries if e.actor != "demo"]  # the demo loader's own
    assert [(action, actor) for action, _, actor in by_key] == [
        ("CreateCustomer", "ops-admin"),  # beta
        ("CreateContract", "ops-admin"),
        ("GrantCredits", "ops-admin"),
        ("CreateCustomer", "ops-admin"),  # gamma
    ], by_key
    assert by_key[0][1].endswith("beta") and by_key[-1][1].endswith("gamma"), by_key


@pytest.mark.parametrize("named", ["alice\n", "alice via ops", "a" * 129, ""])
def test_an_x_actor_breaking_the_rule_is_invalid_argument_naming_the_header(named: str) -> None:
    """`actor` held the header to the rule with a `$`-anchored match, which let a trailing newline through:
    "alice\n" became the actor. Every value breaking the rule is INVALID_ARGUMENT naming x-actor."""
    with pytest.raises(InvalidArgument) as caught:
        auth.actor(named)
    assert [field for field, _ in caught.value.violations] == ["x-actor"]


def test_the_cli_refuses_an_actor_with_a_trailing_newline_as_a_usage_error() -> None:
    """`--actor $'alice\n'` passed the CLI's check (the same `$`-anchored match) and the call failed in grpc
    (exit 1, "INTERNAL: Invalid metadata" after a core error line); now a usage error naming --actor (exit 2),
    nothing sent."""
    command = [str(TARIFF), "customers", "create", "x", "--actor", "alice\n", "--server", "127.0.0.1:1"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=environment
    )
    assert done.returncode == 2, done
    assert "Invalid value for '--actor'" in done.stderr and "INTERNAL" not in done.stderr, done.stderr


@pytest.mark.parametrize("from_environment", [False, True])
def test_the_cli_refuses_an_api_key_with_a_trailing_newline_as_a_usage_error(from_environment: bool) -> None:
    """`--api-key $'KEY\n'` (or TARIFF_API_KEY so, as a key read from a file with its line end is) passed the CLI's
    visible-ASCII check (a `$`-anchored match) and the call failed in grpc (exit 1, "INTERNAL: Invalid metadata");
    now a usage error naming the option (exit 2), nothing sent."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    command = [str(TARIFF), "customers", "create", "x", "--server", "127.0.0.1:1"]
    if from_environment:
        environment["TARIFF_API_KEY"] = "abc\n"
    else:
        command += ["--api-key", "abc\n"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=environment
    )
    assert done.returncode == 2, done
    assert "'--api-key'" in done.stderr and "no API key has" in done.stderr, done.stderr
    assert "INTERNAL" not in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------------
# TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to make test certificates")
    d = tmp_path / "pki"
    d.mkdir()
    days = ["-days", "2"]
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", *days,
             "-subj", "/CN=tariff test CA", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=tariff {name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", *days, "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


def test_tls_server_answers_tls_clients_and_refuses_plaintext(server_factory: ServerFactory, pki: Path) -> None:
    server = server_factory(
        demo=True,
        extra_args=["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")],
        name="tls",
        start=False,
    )
    server.tls_root_cert = pki / "ca.pem"
    server.start()
    with server.client() as client:
        assert client.get_balance(ACME).credits_remaining == "50000"
    with TariffClient(server.target, channel_options=CHANNEL_OPTIONS, default_timeout_s=3) as plain:
        code, _ = code_of(lambda: plain.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME)))
        assert code == grpc.StatusCode.UNAVAILABLE
    # The client's own TLS options (not ready-made credentials) work too.
    with TariffClient(
        server.target, root_certificates=(pki / "ca.pem").read_bytes(), channel_options=CHANNEL_OPTIONS
    ) as client:
        assert client.get_balance(ACME).customer_id == ACME


def test_mutual_tls_refuses_a_client_without_a_certificate(
    server_factory: ServerFactory, pki: Path, tmp_path: Path
) -> None:
    keys = Keys(tmp_path / "keys.json", {"ops": ("admin", None)})
    server = server_factory(
        demo=True,
        extra_args=[
            "--tls-cert",
            str(pki / "server.pem"),
            "--tls-key",
            str(pki / "server.key"),
            "--tls-client-ca",
            str(pki / "ca.pem"),
            *keys.args,
        ],
        name="mtls",
        start=False,
        api_key=keys.key["ops"],
    )
    server.tls_root_cert = pki / "ca.pem"
    server.tls_client_cert = pki / "client.pem"
    server.tls_client_key = pki / "client.key"
    server.start()
    with server.client() as client:
        assert client.get_balance(ACME).credits_remaining == "50000"
    with TariffClient(
        server.target,
        api_key=keys.key["ops"],
        root_certificates=(pki / "ca.pem").read_bytes(),
        channel_options=CHANNEL_OPTIONS,
        default_timeout_s=3,
    ) as no_cert:
        code, _ = code_of(lambda: no_cert.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME)))
        assert code == grpc.StatusCode.UNAVAILABLE
    with (
        TariffClient(
            server.target,
            root_certificates=(pki / "ca.pem").read_bytes(),
            client_certificate_chain=(pki / "client.pem").read_bytes(),
            client_private_key=(pki / "client.key").read_bytes(),
            channel_options=CHANNEL_OPTIONS,
        ) as no_key,
        pytest.raises(Unauthenticated),
    ):
        no_key.get_balance(ACME)  # a certificate is no API key


def test_client_refuses_half_a_client_certificate() -> None:
    with pytest.raises(ValueError, match="go together"):
        TariffClient("127.0.0.1:1", client_certificate_chain=b"-----BEGIN CERTIFICATE-----")


# ---------------------------------------------------------------------------------------------
# The listen rule on a real process


def test_non_loopback_listen_is_refused_without_keys_before_binding(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "d")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert f"refusing to listen on 0.0.0.0:{port} without API keys" in result.stderr
    assert not (tmp_path / "d").exists()
