"""README.md's quick start and examples, run exactly as written: taken from README.md itself, so it cannot drift.

A fenced block immediately preceded by a line `<!-- readme-test: NAME -->` is run, against a fresh demo server
(a real process on 127.0.0.1, a free port, a temporary data directory), with the README's address
`127.0.0.1:50051` replaced by that server's:

- `python`: written to a file and run with the venv's python, twice; the second run must say "already
  recorded" and leave the balance the first run left.
- `typescript`: the same with node, from a file inside clients/typescript (so that `@tariff/client` resolves to
  the package, built first); skipped, saying why, when node or the package's node_modules are absent.
- `cli`: every line that is not empty and not a comment (a leading `$ ` is dropped, a trailing `\\` continues
  it) runs with `bash -c`, in order, with TARIFF_SERVER set to the server and the venv's bin first on PATH;
  each must exit 0.

Also: every `make` command the README shows is a Makefile target (with Makefile variables), and every
`docs/...` or `.md` file it cites exists, as does every `docs/architecture.md §N` section cited in the repository.

And docs/architecture.md cites only what exists: every repository path and `make` target it names, every `--flag`
(declared by the server's or a bench module's code), every qualified name such as `Sequencer._x`, `Kernel::x`,
`revenue._x` or `GrantCredits.field` (defined where its owner lives), and §8's defaults of `tariff serve` flags are
the CLI's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess

README = REPO_ROOT / "README.md"
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
MAKEFILE = REPO_ROOT / "Makefile"
TS_DIR = REPO_ROOT / "clients" / "typescript"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
README_ADDRESS = "127.0.0.1:50051"
KINDS = ("python", "typescript", "cli")
RUN_TIMEOUT_S = 120

_BLOCK = re.compile(r"^<!-- readme-test: (?P<name>[\w-]+) -->\n```[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
_BALANCE = re.compile(r"^credits remaining: (?P<credits>\S+)$", re.M)


@dataclass(frozen=True)
class Block:
    name: str
    code: str
    line: int  # of the marker in README.md, for the test id and messages

    @property
    def id(self) -> str:
        return f"{self.name}@README.md:{self.line}"


def extract_blocks(text: str) -> list[Block]:
    """Every fenced block whose opening fence immediately follows a `<!-- readme-test: NAME -->` line."""
    return [Block(m["name"], m["code"], text.count("\n", 0, m.start()) + 1) for m in _BLOCK.finditer(text)]


def cli_commands(code: str) -> list[str]:
    """The commands of a `cli` block: lines neither empty nor comments, `$ ` dropped, `\\` continuations joined."""
    commands: list[str] = []
    pending = ""
    for raw in code.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending and line.startswith("$ "):
            line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        commands.append(pending + line)
        pending = ""
    if pending.strip():
        commands.append(pending.strip())
    return commands


BLOCKS = extract_blocks(README.read_text())


def blocks(name: str) -> list[Block]:
    return [block for block in BLOCKS if block.name == name]


def venv_python() -> str:
    python = VENV_BIN / "python"
    return str(python) if python.exists() else sys.executable


def example_env() -> dict[str, str]:
    # The demo server has no API keys; a key in the caller's environment must not change what the examples do.
    # Nor may an HTTP proxy from the environment stand between them and a loopback server.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TARIFF_API_KEY", "TARIFF_SERVER") and "proxy" not in key.lower()
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def on_server(block: Block, server: ServerProcess) -> str:
    assert README_ADDRESS in block.code, f"{block.id} does not use {README_ADDRESS}: it would not reach the test server"
    return block.code.replace(README_ADDRESS, server.target)


def run_twice(command: list[str], cwd: Path) -> tuple[str, str]:
    outputs = []
    for attempt in ("first", "second"):
        done = subprocess.run(
            command, cwd=cwd, env=example_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
        assert done.returncode == 0, (
            f"{attempt} run of {command} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
        outputs.append(done.stdout)
    return outputs[0], outputs[1]


def printed_balance(output: str) -> str:
    found = _BALANCE.findall(output)
    assert len(found) == 1, f"the example must print one 'credits remaining: N' line; it printed:\n{output}"
    return str(found[0])


def check_rerun(server: ServerProcess, before: str, first: str, second: str) -> None:
    """The first run records its event; the second resends it, says so, and changes no balance."""
    with server.client() as client:
        after = client.get_balance("acme").credits_remaining
    for output in (first, second):  # what the examples' comments say: "# OK 5"
        assert output.startswith("authorize: OK estimated cost 5\n"), f"the example's decision:\n{output}"
    assert "already recorded" not in first and "recorded" in first, f"first run:\n{first}"
    assert "rejected" not in first + second, f"first run:\n{first}\nsecond run:\n{second}"
    assert printed_balance(first) == after != before, f"before {before}, after {after}; first run:\n{first}"
    assert "already recorded" in second, f"second run:\n{second}"
    assert printed_balance(second) == after, f"second run changed the balance from {after}:\n{second}"


# The examples ------------------------------------------------------------------------------------------------


def test_the_readme_has_its_examples_marked_and_no_unknown_kind() -> None:
    assert [b.id for b in BLOCKS if b.name not in KINDS] == [], f"readme-test kinds are {KINDS}"
    assert blocks("python") and blocks("typescript"), "the Python and TypeScript examples must carry their markers"


@pytest.mark.parametrize("block", blocks("python"), ids=lambda b: b.id)
def test_python_example_runs_as_written_and_a_rerun_is_already_recorded(
    block: Block, demo_server: ServerProcess, tmp_path: Path
) -> None:
    script = tmp_path / "example.py"
    script.write_text(on_server(block, demo_server))
    with demo_server.client() as client:
        before = client.get_balance("acme").credits_remaining
    first, second = run_twice([venv_python(), str(script)], cwd=tmp_path)
    check_rerun(demo_server, before, first, second)


@pytest.fixture(scope="module")
def built_typescript_client() -> Path:
    """clients/typescript built as the README says (`npm run build`); skips when node cannot run it here."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node or npm not found: the README's TypeScript example is not run")
    if not (TS_DIR / "node_modules" / ".installed").exists():
        pytest.skip("clients/typescript/node_modules is missing: run `make ts-install` (make lint and make test do)")
    subprocess.run([npm, "run", "--silent", "build"], cwd=TS_DIR, check=True, timeout=RUN_TIMEOUT_S)
    return Path(node)


@pytest.mark.parametrize("block", blocks("typescript"), ids=lambda b: b.id)
def test_typescript_example_runs_as_written_and_a_rerun_is_already_recorded(
    block: Block, built_typescript_client: Path, demo_server: ServerProcess
) -> None:
    with demo_server.client() as client:
        before = client.get_balance("acme").credits_remaining
    # Inside the package, `import ... from "@tariff/client"` resolves to it (package self-reference).
    work = Path(tempfile.mkdtemp(prefix=".readme-test-", dir=TS_DIR))
    try:
        script = work / "quickstart.mjs"
        script.write_text(on_server(block, demo_server))
        first, second = run_twice([str(built_typescript_client), str(script)], cwd=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check_rerun(demo_server, before, first, second)


def test_the_typed_typescript_example_is_the_readmes_but_for_its_import() -> None:
    """README: "The same example, typed, is clients/typescript/examples/quickstart.ts, compiled by every build"."""
    (block,) = blocks("typescript")
    typed = (TS_DIR / "examples" / "quickstart.ts").read_text()
    code = typed[typed.index("\nimport ") + 1 :].replace('from "../src/index.js"', 'from "@tariff/client"')
    assert code == block.code, "copy clients/typescript/examples/quickstart.ts into README.md's TypeScript example"


@pytest.mark.parametrize("block", blocks("cli"), ids=lambda b: b.id)
def test_cli_block_runs_as_written(block: Block, server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(demo=True, name="cli")
    env = {**example_env(), "TARIFF_SERVER": server.target}
    commands = cli_commands(block.code.replace(README_ADDRESS, server.target))
    assert commands, f"{block.id} holds no command"
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, (
            f"{block.id}: `{command}` exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )


def test_extraction_takes_only_marked_blocks_and_splits_cli_lines() -> None:
    text = (
        "<!-- readme-test: cli -->\n```sh\n# a comment\n$ tariff --version\n\ntariff balance acme \\\n  --json\n```\n"
        "<!-- readme-test: python -->\n\n```python\nprint('not marked: a blank line comes between')\n```\n"
        "```sh\nmake run\n```\n"
    )
    found = extract_blocks(text)
    assert [(b.name, b.line) for b in found] == [("cli", 1)]
    assert cli_commands(found[0].code) == ["tariff --version", "tariff balance acme --json"]


# What the README cites ---------------------------------------------------------------------------------------


def _make_commands(text: str) -> list[list[str]]:
    """`make ...` as the README shows it: in inline code, or as a line of a fenced block (comments dropped)."""
    shown = re.findall(r"`(make [^`]+)`", text)
    shown += [line.split("#")[0] for line in re.findall(r"^(make \S.*)$", text, re.M)]
    return [command.split()[1:] for command in shown]


def test_every_make_command_in_the_readme_is_a_makefile_target() -> None:
    makefile = MAKEFILE.read_text()
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", makefile, re.M))
    commands = _make_commands(README.read_text())
    shown_targets = {args[0] for args in commands if args}
    assert {"run", "test"} <= shown_targets, "the quick start's `make run` and `make test` were not found"
    for args in commands:
        assert args and args[0] in targets, f"`make {' '.join(args)}`: no such target in the Makefile"
        for assignment in args[1:]:
            name = assignment.split("=")[0]
            assert "=" in assignment and name in variables, (
                f"`make {' '.join(args)}`: {name} is not a Makefile variable"
            )
    assert any(
        args[0] == "run" and {"LISTEN", "DATA_DIR"} <= {a.split("=")[0] for a in args[1:]} for args in commands
    ), "the README documents `make run LISTEN=... DATA_DIR=...`"


def test_every_document_the_readme_cites_exists() -> None:
    text = README.read_text()
    cited = set(re.findall(r"(?<![\w/.-])(docs/[\w./-]*\w)", text))
    cited |= set(re.findall(r"(?<![\w/.:-])([\w./-]+\.md)\b", text))
    cited |= {target for target in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in target}
    assert "docs/architecture.md" in cited
    missing = sorted(path for path in cited if not (REPO_ROOT / path).exists())
    assert missing == [], f"README.md cites files the repository does not hold: {missing}"


def test_every_cited_architecture_section_exists() -> None:
    sections = set(re.findall(r"^## (§\d+) ", ARCHITECTURE.read_text(), re.M))
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    # "docs/architecture.md §3", "... §3 and §5", "... §3, §5", also across a comment's line break ("//", "*", "#").
    gap = r"[\s/*#]*"
    citation = re.compile(rf"docs/architecture\.md((?:{gap}§\d+(?:{gap}(?:,|and){gap}§?\d+)*)?)")
    wrong = []
    for name in tracked:
        path = REPO_ROOT / name
        if path.suffix not in {".py", ".ts", ".md", ".proto", ".yaml", ".toml"} and path.name != "Makefile":
            continue
        for match in citation.finditer(path.read_text(errors="replace")):
            for number in re.findall(r"\d+", match[1]):
                if f"§{number}" not in sections:
                    wrong.append(f"{name}: docs/architecture.md §{number}")
    assert sections, "docs/architecture.md has no numbered sections"
    assert wrong == [], f"citations of sections docs/architecture.md does not have: {wrong}"


def test_the_readme_admin_cli_section_names_every_client_command() -> None:
    from server.admin import COMMANDS

    text = README.read_text()
    start = text.index("## Admin CLI\n")
    section = text[start : text.index("\n## ", start + 1)]
    for command in COMMANDS:
        assert f"`tariff {command.name}" in section, command.name


# What docs/architecture.md cites -----------------------------------------------------------------------------

# Flags of tools the document quotes running on the server (perf, valgrind), not the server's or the bench's own.
_TOOL_FLAGS = {"--call-graph", "--toggle-collect", "--tool"}
# `Owner.name` or `Owner::name` (the kernel's Rust) as the document writes them: a class, a proto message or a module.
_QUALIFIED = re.compile(r"`(?P<owner>[A-Za-z_]\w*)(?P<sep>\.|::)(?P<name>[A-Za-z_]\w*)")
_SOURCES = ("engine/*.py", "engine/_kernel.pyi", "engine/kernel/src/*.rs", "server/**/*.py", "proto/**/*.proto")


def _architecture_text() -> str:
    return ARCHITECTURE.read_text()


def test_every_path_the_architecture_cites_exists() -> None:
    """Every repository path docs/architecture.md names (in code spans or not) is in the tree."""
    text = _architecture_text()
    cited = set(re.findall(r"(?<![\w/.-])((?:engine|server|proto|tests|docs|clients|loadtests)/[\w./*-]*\w)", text))
    assert "server/sequencer.py" in cited
    missing = sorted(path for path in cited if not any(REPO_ROOT.glob(path)))
    assert missing == [], f"docs/architecture.md cites paths the repository does not hold: {missing}"


def test_every_make_command_in_the_architecture_is_a_makefile_target() -> None:
    targets = set(re.findall(r"^([\w.-]+):", MAKEFILE.read_text(), re.M))
    commands = _make_commands(_architecture_text())
    assert commands, "docs/architecture.md shows `make install` and `make bench`"
    assert [args for args in commands if not args or args[0] not in targets] == []


def test_every_flag_the_architecture_names_is_one_the_code_declares() -> None:
    """A `--flag` in docs/architecture.md is an option of `tariff` or of a bench module, spelt as the code spells it."""
    text = _architecture_text()
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text)) - _TOOL_FLAGS
    code = "\n".join(path.read_text() for path in (REPO_ROOT / "server").rglob("*.py"))
    declared = set(re.findall(r"[\"/](--[a-z][a-z0-9-]+)[\"/]", code))
    assert "--batch-events-max" in flags
    assert sorted(flags - declared) == [], "docs/architecture.md names flags no code declares"


def test_the_architecture_limits_table_gives_the_servers_defaults() -> None:
    """§8: each `tariff serve` flag in a row's "where" column has the default the row gives (its integer defaults,
    as written there: 10,000, 16 MiB, 300 s, ...)."""
    from server.cli import serve

    defaults = {opt: param.default for param in serve.params for opt in param.opts}
    text = _architecture_text()
    start = text.index("## §8 ")
    table = text[start : text.index("\n## ", start + 1)]
    checked = 0
    for line in re.findall(r"^\|.*\|$", table, re.M):
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]  # `\|` is a pipe inside a cell
        if len(cells) != 4:
            continue
        numbers = {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", cells[1])}
        for flag in re.findall(r"`(--[a-z][a-z0-9-]+)`", cells[2]):
            assert flag in defaults, f"§8 names {flag}, which is no `tariff serve` option"
            default = defaults[flag]
            if isinstance(default, int) and not isinstance(default, bool):
                assert default in numbers, f"§8 row {cells[0]!r}: {flag} defaults to {default}, not {cells[1]!r}"
                checked += 1
    assert checked >= 9, "the §8 table's flag rows were not found"


def _defines(source: str, name: str) -> bool:
    """Whether `source` defines `name`: a def, fn, class, struct, message..., a field, a variant or a constant."""
    name = re.escape(name)
    kinds = r"\b(?:def|fn|class|struct|enum|const|static|type|trait|mod|message|rpc)\s+" + name + r"\b"
    member = r"^\s*(?:pub(?:\([\w:]+\))?\s+)?" + name + r"\b\s*[:=({,]"
    proto_field = r"^\s*(?:repeated\s+|optional\s+)?[\w.]+\s+" + name + r"\s*=\s*\d+;"
    return re.search(f"{kinds}|{member}|{proto_field}", source, re.M) is not None


def _owner_sources(sources: dict[Path, str]) -> dict[tuple[str, bool], str]:
    """(owner, rust) -> where that owner is defined: for a module, its file (`revenue`: engine/revenue.py,
    `credits` in Rust: engine/kernel/src/credits.rs); for a Python class or proto message, the files defining it;
    for a Rust type, the whole kernel (its impl blocks and fields may be in several files)."""
    found: dict[tuple[str, bool], list[str]] = {}
    kind = re.compile(r"\b(?:class|struct|enum|trait|message|impl)\s+([A-Z]\w*)")
    rust_all = "\n".join(text for path, text in sources.items() if path.suffix == ".rs")
    for path, text in sources.items():
        rust = path.suffix == ".rs"
        found.setdefault((path.stem, rust), []).append(text)
        for owner in set(kind.findall(text)):
            found.setdefault((owner, rust), []).append(rust_all if rust else text)
    return {key: "\n".join(dict.fromkeys(texts)) for key, texts in found.items()}


def test_every_qualified_name_the_architecture_cites_is_defined() -> None:
    """`Sequencer._x`, `Billing.x`, `Kernel.x` (the binding), `Kernel::x` (the Rust kernel), `revenue._x`,
    `credits::x`, `GrantCredits.field`...: each is defined where its owner lives, so a rename does not leave the
    document behind. Owners that are not this project's (asyncio, BigDecimal) are left alone."""
    sources = {path: path.read_text() for pattern in _SOURCES for path in REPO_ROOT.glob(pattern)}
    owners = _owner_sources(sources)
    missing, checked = [], 0
    for match in _QUALIFIED.finditer(_architecture_text()):
        owner, sep, name = match["owner"], match["sep"], match["name"]
        source = owners.get((owner, sep == "::"))
        if source is None or name in ("py", "rs"):
            continue
        checked += 1
        if not _defines(source, name):
            missing.append(f"{owner}{sep}{name}")
    assert checked > 100, "the document's qualified names were not found"
    assert sorted(set(missing)) == [], "docs/architecture.md names what is not defined"


def test_every_name_cited_beside_its_file_is_defined_there() -> None:
    """ "`server/services/usage.py` `fitted_ack`": the name is defined in that file (a function, class, constant...)."""
    pairs = re.findall(
        r"`((?:engine|server|proto)/[\w./-]+\.(?:py|pyi|rs|proto))`,?\s+`([A-Za-z_]\w*)`", _architecture_text()
    )
    assert len(pairs) > 10, "the document's `file` `name` citations were not found"
    missing = [f"{path} {name}" for path, name in pairs if not _defines((REPO_ROOT / path).read_text(), name)]
    assert missing == [], "docs/architecture.md cites names their files do not define"
