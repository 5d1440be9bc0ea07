"""The README's Admin CLI examples run exactly as written, so the README cannot drift from the command.

Every ```sh block right after a `<!-- readme-test: cli -->` line is run line by line (a leading `$ ` dropped),
in order, through the shell, against one fresh demo server (TARIFF_SERVER), with the venv's `bin` first on
PATH and a scratch working directory; each line must exit 0. The section must also name every client command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from server.admin import COMMANDS
from tests.serverproc import REPO_ROOT, ServerProcess

MARKER = "<!-- readme-test: cli -->"
README = REPO_ROOT / "README.md"


def marked_blocks(text: str) -> list[list[str]]:
    """The command lines of each ```sh block that follows the marker line directly."""
    blocks: list[list[str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        assert lines[i + 1].strip() == "```sh", f"README line {i + 2}: the marker must sit right before a ```sh block"
        block = []
        for body in lines[i + 2 :]:
            if body.strip() == "```":
                break
            command = body.strip().removeprefix("$ ")
            if command:
                block.append(command)
        blocks.append(block)
    return blocks


def admin_section(text: str) -> str:
    start = text.index("## Admin CLI\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_cli_blocks_run_as_written(demo_server: ServerProcess, tmp_path: Path) -> None:
    blocks = marked_blocks(README.read_text())
    assert len(blocks) >= 3, "the Admin CLI section's examples are marked for this test"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    env |= {
        "TARIFF_SERVER": demo_server.target,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    for block in blocks:
        for command in block:
            done = subprocess.run(
                ["/bin/sh", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, f"{command}\nexited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def test_the_readme_names_every_client_command() -> None:
    section = admin_section(README.read_text())
    for command in COMMANDS:
        assert f"`tariff {command.name}" in section, command.name
