"""The PostgreSQL reference: a ledger doing Tariff's ingest work the plain way, on loopback.

Per batch, one transaction: COPY the events into a staging table, insert them into `events` whose
primary key is the transaction id (the dedupe), price them by joining a (model, region) rate table,
and subtract each customer's charge from `balances`; `synchronous_commit` on, so a batch is durable
when its COMMIT returns, as a Tariff ack is. One connection: a second one does not help.

The bench starts its own cluster (initdb in a temporary directory, `pg_ctl start` on a free
127.0.0.1 port) and stops it afterwards. Debian keeps the binaries in /usr/lib/postgresql/N/bin;
when none is found and the bench runs as root with apt-get, it tries `apt-get install -y postgresql`.
When anything fails, start() returns the reason and the other workloads go on.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from server.bench.seed import MODELS, PARAMETERS, REGIONS, batches, customer_id
from server.bench.target import HOST, free_port

PG_USER = "bench"
APT_INSTALL_TIMEOUT_S = 600
_MODEL_PARAMETER = {"gpt-4": "gpt4", "gpt-4o-mini": "mini", "claude-sonnet": "sonnet"}


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, newest PostgreSQL first."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(candidate).parent
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(os.path.realpath(initdb)).parent
    return None


def _try_apt_install() -> str:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "PostgreSQL is not installed (no initdb) and apt-get is not usable here"
    try:
        done = subprocess.run(
            ["apt-get", "install", "-y", "postgresql"],
            capture_output=True,
            timeout=APT_INSTALL_TIMEOUT_S,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except subprocess.TimeoutExpired:
        return "apt-get install postgresql timed out"
    if done.returncode != 0:
        return f"apt-get install postgresql failed: {done.stderr.decode(errors='replace')[-300:]}"
    return ""


class PostgresLedger:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data_dir = directory / "pgdata"
        self.port = free_port()
        self.bindir: Path | None = None
        self.connection: Any = None
        self.description = ""

    def _as_owner(self, command: list[str]) -> list[str]:
        # initdb refuses to run as root: run the cluster as the `postgres` system user then.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return command

    def start(self, customers: int) -> str:
        """Creates and starts the cluster and the schema; returns "" or why the reference cannot run."""
        try:
            import psycopg
        except ImportError:
            return "psycopg is not installed (pip install -e '.[dev]')"
        self.bindir = find_bindir()
        if self.bindir is None:
            reason = _try_apt_install()
            self.bindir = find_bindir()
            if self.bindir is None:
                return reason or "PostgreSQL binaries not found after apt-get install"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                # The cluster's owner must reach its directory through the bench's private temp dirs.
                for parent in [self.directory, *self.directory.parents]:
                    if parent == Path("/"):
                        break
                    parent.chmod(parent.stat().st_mode | 0o011)
                shutil.chown(self.directory, "postgres")
            self._run(
                [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", PG_USER, "--no-sync"]
            )
            options = (
                f"-p {self.port} -c listen_addresses={HOST} -k {self.directory} "
                "-c synchronous_commit=on -c fsync=on -c shared_buffers=256MB"
            )
            self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-o",
                    options,
                    "-l",
                    str(self.directory / "postgres.log"),
                    "-w",
                    "start",
                ]
            )
            self.connection = psycopg.connect(host=HOST, port=self.port, user=PG_USER, dbname="postgres")
            self._schema(customers)
        except Exception as e:
            self.stop()
            return f"could not start PostgreSQL: {type(e).__name__}: {e}"
        version = self.connection.info.server_version
        self.description = f"PostgreSQL {version // 10000}.{version % 10000} at {HOST}:{self.port}"
        return ""

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(self._as_owner(command), capture_output=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:1])} failed: {done.stderr.decode(errors='replace')[-500:]}")

    def _schema(self, customers: int) -> None:
        with self.connection.cursor() as cur:
            cur.execute(
                "CREATE TABLE rates (model text, region text, in_price numeric NOT NULL, out_price numeric NOT NULL,"
                " PRIMARY KEY (model, region))"
            )
            cur.execute("CREATE TABLE balances (customer_id text PRIMARY KEY, remaining numeric NOT NULL)")
            cur.execute(
                "CREATE TABLE events (transaction_id text PRIMARY KEY, customer_id text NOT NULL, ts_ms bigint NOT NULL,"
                " model text NOT NULL, region text NOT NULL, input_tokens numeric NOT NULL, output_tokens numeric NOT NULL)"
            )
            for model in MODELS:
                for region in REGIONS:
                    markup = PARAMETERS["eu_markup"] if region == "eu-west" else "1"
                    name = _MODEL_PARAMETER[model]
                    cur.execute(
                        "INSERT INTO rates VALUES (%s, %s, %s::numeric * %s::numeric, %s::numeric * %s::numeric)",
                        (model, region, PARAMETERS[f"{name}_in"], markup, PARAMETERS[f"{name}_out"], markup),
                    )
            with cur.copy("COPY balances FROM STDIN") as copy:
                for index in range(customers):
                    copy.write_row((customer_id(index), "1000000000000"))
        self.connection.commit()
        with self.connection.cursor() as cur:
            cur.execute("CREATE TEMP TABLE stage (LIKE events) ON COMMIT DELETE ROWS")
        self.connection.commit()

    def run(self, batch_count: int, batch_events: int, run_tag: str, customers: int) -> float:
        """Ingests `batch_count` batches (built before the clock starts); returns events/s."""
        payloads: list[str] = []
        for batch in batches(run_tag, customers, batch_events, batch_count, seed=len(run_tag)):
            lines = [
                f"{e.transaction_id}\t{e.customer_id}\t{e.timestamp_ms}\t{e.dimensions['model']}\t"
                f"{e.dimensions['region']}\t{e.values['input_tokens']!r}\t{e.values['output_tokens']!r}\n"
                for e in batch.events
            ]
            payloads.append("".join(lines))
        started = time.perf_counter()
        for payload in payloads:
            with self.connection.cursor() as cur:
                with cur.copy("COPY stage FROM STDIN") as copy:
                    copy.write(payload)
                cur.execute("INSERT INTO events SELECT * FROM stage")
                cur.execute(
                    "UPDATE balances b SET remaining = b.remaining - c.cost FROM ("
                    " SELECT s.customer_id, sum(s.input_tokens * r.in_price + s.output_tokens * r.out_price) / 1000 AS cost"
                    " FROM stage s JOIN rates r USING (model, region) GROUP BY s.customer_id) c"
                    " WHERE b.customer_id = c.customer_id"
                )
            self.connection.commit()
        elapsed_s = time.perf_counter() - started
        return batch_count * batch_events / elapsed_s

    def stop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if self.bindir is not None and (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                timeout=120,
            )
