"""An audit of README "Clients" and clients/typescript/README.md statement by statement, where the README's own
tests (tests/test_readme.py), the other client audits and the clients' suites (make test-ts, test-go, test-java) do
not pin the statement yet: each TypeScript check runs a script through the package (compiled by its tsconfig into a
directory of this file's own) against one demo server for the file.

- clients/typescript/README.md's example runs as written: it prints the ack's accepted count and rejections, then
  the balance, "49995" on a fresh demo; run again (txn-1 with another timestampMs) its event is rejected
  DUPLICATE_CONFLICT and nothing is charged.
- "for an unknown customer or a malformed request: a denial in-band there (reason UNKNOWN_CUSTOMER or
  INVALID_REQUEST), where authorize throws NOT_FOUND or INVALID_ARGUMENT" (the TypeScript streamer).
- A paged RPC "answers one page, at most 100 items when pageSize is 0 ... call again with pageToken:
  page.nextPageToken (getAuditLog: afterSeq: page.nextAfterSeq) until it is empty (0n)".
- "Other languages": buf v1.75 is clients/typescript/node_modules/.bin/buf after `make clients` (its ts-install),
  and run from the repository root it finds the `proto` module buf.yaml names.
- `make proto-breaking` refuses a removed field unless its number and name are reserved.
- README "TypeScript": the quickstart runs from a project of the user's own that `npm install`ed the package.
- README "Go": a module of the user's own with the README's require and replace lines builds and runs the example.
- The Python and TypeScript clients' defaults as README gives them (deadlines, retry policies, ack timeout).

One server for the file: the demo (customer acme, 50,000 credits) plus customers page-000 ... page-100, so that
ListCustomers holds more than a page (101 + the demo's) and the audit log more than 100 entries.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tariff import AsyncTariffClient, RetryPolicy, TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import serving
from tests.serverproc import REPO_ROOT, ServerProcess

TS_DIR = REPO_ROOT / "clients" / "typescript"
TS_README = TS_DIR / "README.md"
README_ADDRESS = "127.0.0.1:50051"
RUN_TIMEOUT_S = 120
PAGED_CUSTOMERS = [f"page-{n:03d}" for n in range(101)]


def catalogue(client: TariffClient) -> None:
    for customer_id in PAGED_CUSTOMERS:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-clientdoc") / "data", demo=True)
    yield from serving(process, catalogue)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """clients/typescript compiled by its tsconfig into a directory of this module's own inside the package (never
    dist/, which tests/test_readme.py and `npm test` rebuild, rm -rf first, perhaps at the same time), with a
    package.json naming it @tariff/client: a script there imports "@tariff/client" as the README's do (the package's
    self-reference) and finds its dependencies in the package's node_modules. Skips when node cannot run it here."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: the TypeScript client is not run")
    if not (TS_DIR / "node_modules" / ".installed").exists():
        pytest.skip("clients/typescript/node_modules is missing: run `make ts-install` (make lint and make test do)")
    built = Path(tempfile.mkdtemp(prefix=".clientdoc-test-", dir=TS_DIR))
    try:
        tsc = TS_DIR / "node_modules" / ".bin" / "tsc"
        subprocess.run([tsc, "-p", "tsconfig.json", "--outDir", built], cwd=TS_DIR, check=True, timeout=RUN_TIMEOUT_S)
        manifest = {"name": "@tariff/client", "type": "module", "exports": {".": "./src/index.js"}}
        (built / "package.json").write_text(json.dumps(manifest))
        yield node, built
    finally:
        shutil.rmtree(built, ignore_errors=True)


def run_module(package: tuple[str, Path], source: str) -> str:
    """Runs `source` as an ES module in the built package: its stdout."""
    node, built = package
    script = built / f"script-{uuid.uuid4().hex}.mjs"
    script.write_text(source)
    done = subprocess.run(
        [node, str(script)], cwd=built, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def ts_readme_example() -> str:
    (block,) = re.findall(r"```ts\n(.*?)```", TS_README.read_text(), re.DOTALL)
    assert README_ADDRESS in block
    return str(block)


def test_the_typescript_readmes_example_prints_its_ack_and_balance_and_a_rerun_is_a_duplicate_conflict(
    server: ServerProcess, package: tuple[str, Path]
) -> None:
    """First run: the ack accepts 1 event and rejects none (`1 []`), then "49995" (50,000 - the summary's 5). Second
    run, txn-1 again with another timestampMs: accepted 0, one rejection whose reason is DUPLICATE_CONFLICT, and the
    balance still 49995. (First in the file, while the demo is fresh: the tests after it that charge acme compute
    from the balance they find.)"""
    example = ts_readme_example().replace(README_ADDRESS, server.target)
    first = run_module(package, example).splitlines()
    assert first == ["1 []", "49995"], first
    second = run_module(package, example)
    conflict = usage_pb2.RejectReason.Value("DUPLICATE_CONFLICT")
    assert second.startswith("0 [") and f"reason: {conflict}," in second, second
    assert "transactionId: 'txn-1'" in second and second.splitlines()[-1] == "49995", second
    with server.client() as client:
        assert client.get_balance("acme").credits_remaining == "49995"


STREAMER_AND_AUTHORIZE = """
import { TariffClient, ConnectError, Code } from "@tariff/client";

const client = new TariffClient("TARGET");
const summary = { action: "summary", data_source: "crm", model: "gpt-4", complexity: "complex" };
const asks = {
  unknown: { customerId: "nobody", eventType: "ai_action", dimensions: summary },
  malformed: { customerId: "acme", eventType: "ai_action", dimensions: summary, reserve: true, reservationTtlMs: -1000 },
};
const streamer = client.authorizeStreamer({ timeoutMs: 10_000 });
const out = {};
for (const [name, input] of Object.entries(asks)) {
  const streamed = await streamer.authorize(input);
  const thrown = await client.authorize(input).then(() => "answered", (e) => Code[ConnectError.from(e).code]);
  out[name] = { streamed: [streamed.allowed, streamed.reason], thrown };
}
streamer.close();
client.close();
console.log(JSON.stringify(out));
"""


def test_the_typescript_streamer_denies_in_band_what_authorize_throws(
    server: ServerProcess, package: tuple[str, Path]
) -> None:
    """An unknown customer: UNKNOWN_CUSTOMER on the streamer, NOT_FOUND thrown by authorize; a reserve with a negative
    TTL: INVALID_REQUEST on the streamer, INVALID_ARGUMENT thrown (connect's Code names: NotFound,
    InvalidArgument)."""
    answered = json.loads(run_module(package, STREAMER_AND_AUTHORIZE.replace("TARGET", server.target)))
    assert answered == {
        "unknown": {"streamed": [False, "UNKNOWN_CUSTOMER"], "thrown": "NotFound"},
        "malformed": {"streamed": [False, "INVALID_REQUEST"], "thrown": "InvalidArgument"},
    }
    with server.client() as client:
        assert client.get_balance("acme").credits_held == "0"


PAGES = """
import { TariffClient } from "@tariff/client";

const client = new TariffClient("TARGET");
const customerPages = [];
let pageToken = "";
do {
  const page = await client.contracts.listCustomers({ pageToken });
  customerPages.push(page.customers.length);
  pageToken = page.nextPageToken;
} while (pageToken !== "");
const auditPages = [];
let afterSeq = 0n;
let seqType = "";
do {
  const page = await client.pricing.getAuditLog({ afterSeq });
  auditPages.push(page.entries.length);
  afterSeq = page.nextAfterSeq;
  seqType = typeof afterSeq;
} while (afterSeq !== 0n);
client.close();
console.log(JSON.stringify({ customerPages, auditPages, seqType }));
"""


def test_typescript_pages_hold_100_when_page_size_is_0_and_end_on_an_empty_token(
    server: ServerProcess, package: tuple[str, Path]
) -> None:
    """ListCustomers: 100, then the rest (the 101 made here and the demo's); GetAuditLog: pages of 100 until
    nextAfterSeq is 0n (a bigint), as many entries as the log holds."""
    with server.client() as client:
        customers = len(client.list_customers())
        entries = len(client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries)
    assert customers > 100 and 100 < entries < 1000, (customers, entries)
    read = json.loads(run_module(package, PAGES.replace("TARGET", server.target)))
    assert read["customerPages"] == [100, customers - 100], read
    assert read["auditPages"][:-1] == [100] * (entries // 100) and sum(read["auditPages"]) == entries, read
    assert read["seqType"] == "bigint", read


def test_buf_from_the_typescript_install_is_v1_75_and_builds_the_proto_module_from_the_root(tmp_path: Path) -> None:
    """README "Other languages": `buf` (v1.75, ... in clients/typescript/node_modules/.bin/buf after make clients) run
    from the repository root, where buf.yaml names the proto module: it builds tariff.v1 (an image naming its
    files)."""
    buf = TS_DIR / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.skip("clients/typescript/node_modules is missing: run `make ts-install` (make lint and make test do)")
    version = subprocess.run([buf, "--version"], capture_output=True, text=True, check=True, timeout=RUN_TIMEOUT_S)
    assert version.stdout.startswith("1.75."), version.stdout
    image = tmp_path / "image.json"
    subprocess.run([buf, "build", "-o", str(image)], cwd=REPO_ROOT, check=True, timeout=RUN_TIMEOUT_S)
    files = {f["name"] for f in json.loads(image.read_text())["file"]}
    assert {"tariff/v1/usage.proto", "tariff/v1/balance.proto", "tariff/v1/pricing.proto"} <= files, files


def _default(function: Callable[..., object], parameter: str) -> object:
    return inspect.signature(function).parameters[parameter].default


def test_the_python_clients_defaults_are_the_readmes() -> None:
    """README "Python": `default_timeout_s=`, 10 s unless given; `retry=RetryPolicy(max_elapsed_s=...)` (60 s, or 10
    reconnects, by default), `min_connect_s` 1 s; `ack_timeout_s` (60 s): on both clients, for usage_stream and
    usage_batcher alike."""
    policy = RetryPolicy()
    assert (policy.max_elapsed_s, policy.max_attempts, policy.min_connect_s) == (60.0, 10, 1.0)
    for client in (TariffClient, AsyncTariffClient):
        assert _default(client, "default_timeout_s") == 10.0, client
    for opener in (AsyncTariffClient.usage_stream, AsyncTariffClient.usage_batcher):
        assert _default(opener, "ack_timeout_s") == 60.0, opener
    assert _default(AsyncTariffClient.authorize_batcher, "max_delay_ms") == 1.0, "checks within a millisecond"


TS_DEFAULTS = """
import { TariffClient, DEFAULT_RETRY_POLICY } from "@tariff/client";

const client = new TariffClient("TARGET");
const streamer = client.authorizeStreamer();
console.log(JSON.stringify({
  retry: DEFAULT_RETRY_POLICY,
  unaryTimeoutMs: client.unaryTimeoutMs,
  streamerTimeoutMs: streamer.timeoutMs,
}));
streamer.close();
client.close();
"""


def test_the_typescript_clients_defaults_are_the_readmes(server: ServerProcess, package: tuple[str, Path]) -> None:
    """README "TypeScript": `retry.elapsedMaxMs` (60,000 by default), `retry.attemptsMax` (10), "the delays between
    them growing from 100 ms to 5 s", `retry.minConnectMs` (1,000), `unaryTimeoutMs` (default 10,000), the
    streamer's `timeoutMs` (1,000 by default)."""
    read = json.loads(run_module(package, TS_DEFAULTS.replace("TARGET", server.target)))
    retry = read["retry"]
    assert (retry["elapsedMaxMs"], retry["attemptsMax"], retry["minConnectMs"]) == (60_000, 10, 1_000), retry
    assert (read["unaryTimeoutMs"], read["streamerTimeoutMs"]) == (10_000, 1_000), read
    assert (retry["initialBackoffMs"], retry["maxBackoffMs"]) == (100, 5_000), retry


def _breaking(buf: Path, repo: Path, usage_proto: str) -> subprocess.CompletedProcess[str]:
    """`make proto-breaking`'s buf command in `repo` (a git repository holding buf.yaml and proto/ committed), with
    its proto/tariff/v1/usage.proto changed to `usage_proto`, against the commit (BREAKING_AGAINST=HEAD)."""
    (repo / "proto" / "tariff" / "v1" / "usage.proto").write_text(usage_proto)
    against = ".git#ref=HEAD,subdir=proto"
    return subprocess.run(
        [buf, "breaking", "--against", against], cwd=repo, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def test_proto_breaking_refuses_a_removed_field_unless_its_number_and_name_are_reserved(tmp_path: Path) -> None:
    """README: `make proto-breaking` fails on a wire- or source-incompatible change against a git ref ("a removed
    field must reserve its number and name"). EventRejection.message (4) dropped: refused as written, refused with
    only its number reserved, accepted with its number and name reserved."""
    buf = TS_DIR / "node_modules" / ".bin" / "buf"
    git = shutil.which("git")
    if not buf.exists() or git is None:
        pytest.skip("buf (make ts-install) or git missing")
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "--against '.git#ref=$(BREAKING_AGAINST),subdir=proto'" in makefile
    assert "\nBREAKING_AGAINST ?= HEAD~1\n" in makefile, "README: BREAKING_AGAINST=HEAD~1 by default"
    repo = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "proto", repo / "proto", ignore=shutil.ignore_patterns("*.py"))
    shutil.copy(REPO_ROOT / "buf.yaml", repo / "buf.yaml")
    identity = ["-c", "user.name=audit", "-c", "user.email=audit@example.com"]
    for command in (["init", "-q"], ["add", "."], [*identity, "commit", "-qm", "contract"]):
        subprocess.run([git, *command], cwd=repo, check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
    usage = (repo / "proto" / "tariff" / "v1" / "usage.proto").read_text()
    field = "  string message = 4;\n"
    assert usage.count(field) == 1
    dropped = _breaking(buf, repo, usage.replace(field, ""))
    assert dropped.returncode != 0 and "message" in dropped.stdout + dropped.stderr, dropped
    assert _breaking(buf, repo, usage.replace(field, "  reserved 4;\n")).returncode != 0
    reserved = _breaking(buf, repo, usage.replace(field, '  reserved 4;\n  reserved "message";\n'))
    assert reserved.returncode == 0, reserved
    assert _breaking(buf, repo, usage).returncode == 0


GO_DIR = REPO_ROOT / "clients" / "go"


def test_the_go_example_builds_and_runs_in_a_module_of_its_own_by_the_readmes_require_and_replace(
    server: ServerProcess, tmp_path: Path
) -> None:
    """README "Go": "The module is not published: in your go.mod, `require github.com/tariff/tariff/clients/go v0.0.0`
    and `replace ... => /path/to/clients/go`." A module outside the repository with just those two lines builds the
    README's example (clients/go/example/main.go) and it runs: OK 5, its event recorded, 5 credits fewer. (The
    module's go.sum is clients/go's, so the build needs no checksum database; -mod=mod lets it add the indirect
    requirements, as `go mod tidy` would.)"""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go not found: the Go client is not built")
    readme = (REPO_ROOT / "README.md").read_text()
    require = re.search(r"`(require github\.com/tariff/tariff/clients/go v0\.0\.0)`", readme)
    replace = re.search(r"`(replace github\.com/tariff/tariff/clients/go) => /path/to/clients/go`", readme)
    assert require and replace, "README's Go section no longer gives the require and replace lines"
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    go_mod = f"module example.com/gateway\n\ngo 1.26\n\n{require[1]}\n\n{replace[1]} => {GO_DIR}\n"
    (gateway / "go.mod").write_text(go_mod)
    shutil.copy(GO_DIR / "go.sum", gateway / "go.sum")
    shutil.copy(GO_DIR / "example" / "main.go", gateway / "main.go")
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower() and key != "TARIFF_API_KEY"}
    env.update({"GOFLAGS": "-mod=mod", "TARIFF_TARGET": server.target})
    with server.client() as client:
        before = int(client.get_balance("acme").credits_remaining)
    done = subprocess.run(
        [go, "run", "."], cwd=gateway, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "authorize: OK estimated cost 5" and lines[1].endswith(" recorded"), done.stdout
    assert lines[2] == f"credits remaining: {before - 5}", done.stdout


def test_the_typescript_quickstart_runs_from_a_project_that_npm_installed_the_package(
    server: ServerProcess, package: tuple[str, Path], tmp_path: Path
) -> None:
    """README "TypeScript": build the package, then "in your project: npm install /path/to/clients/typescript", save
    the example as quickstart.mjs and run `node quickstart.mjs`: from a project outside the repository, where
    "@tariff/client" resolves only through what npm installed. The package installed is the one built here, whose
    manifest points where the real one's does (its outDir for dist/)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm not found")
    node, built = package
    real = json.loads((TS_DIR / "package.json").read_text())
    assert real["exports"]["."]["default"] == "./dist/src/index.js", "the built manifest no longer mirrors the real"
    project = tmp_path / "project"
    project.mkdir()
    install = [npm, "install", "--offline", "--no-audit", "--no-fund", str(built)]
    subprocess.run(install, cwd=project, check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
    block = re.search(r"<!-- readme-test: typescript -->\n```js\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    assert block is not None
    (project / "quickstart.mjs").write_text(block[1].replace(README_ADDRESS, server.target))
    with server.client() as client:
        before = int(client.get_balance("acme").credits_remaining)
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower() and key != "TARIFF_API_KEY"}
    done = subprocess.run(
        [node, "quickstart.mjs"], cwd=project, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "authorize: OK estimated cost 5" and lines[1].endswith(" recorded"), done.stdout
    assert lines[2] == f"credits remaining: {before - 5}", done.stdout
