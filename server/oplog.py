"""The operator's log: what a person running the server reads, in text or JSON lines, on stderr.

One line at start, progress during a long recovery, one line per admin change, a periodic activity line
while the server is busy, one line at shutdown. Counters are fed once per committed group of batches (never
per event), and the activity line is written by a task on the event loop, so logging costs the per-event path
nothing. gRPC core writes its own lines straight to stderr; `quiet_grpc_core` turns them off before grpc is
imported, so they do not interleave with these.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
ACTIVITY_EVERY_S_DEFAULT = 60.0
COMMIT_SAMPLES_MAX = 100_000  # commit times kept per activity interval for the p99 (a few MB at most; see committed)

log = logging.getLogger("tariff")


def quiet_grpc_core(level: str) -> None:
    """Silences gRPC core's own stderr lines (`chttp2_transport.cc ... Got goaway`), whatever the environment
    says; must run before grpc is imported. At level debug, GRPC_VERBOSITY / GRPC_TRACE from the environment
    are kept, for an operator debugging gRPC itself."""
    if level == "debug":
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        os.environ.setdefault("GRPC_TRACE", "")
    else:
        os.environ["GRPC_VERBOSITY"] = "NONE"
        os.environ["GRPC_TRACE"] = ""


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text


class TextFormatter(logging.Formatter):
    """`2026-12-01T22:10:00.123Z INFO tariff: serving version=0.1.0 listen=127.0.0.1:50051 ...`"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"{stamp} {record.levelname} {record.name}: {record.getMessage()}"
        fields: dict[str, object] = getattr(record, "fields", {})
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, msg, then the line's own fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(log_format: str = "text", level: str = "info") -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def line(message: str, *, level: int = logging.INFO, logger: logging.Logger = log, **fields: object) -> None:
    """A log line with named fields (key=value in text, keys of the object in JSON)."""
    logger.log(level, "%s", message, extra={"fields": fields})


@dataclass
class Activity:
    """What the server did since the last activity line; fed per committed group, read by `report`."""

    accepted: int = 0
    duplicates: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    admin_changes: int = 0
    commit_ms: list[float] = field(default_factory=list)  # at most COMMIT_SAMPLES_MAX of them, for the p99
    commits: int = 0  # every one, however many commit_ms keeps
    commit_stride: int = 1  # commit_ms keeps every commit_stride-th commit time, doubled each time it fills
    streams_open: int = 0
    since_monotonic: float = field(default_factory=time.monotonic)

    def committed(self, commit_ms: float) -> None:
        """One group commit. Its time is kept at a stride that doubles when the kept times fill (every other one is
        dropped then), so the p99 reads the whole interval however busy, in bounded memory."""
        self.commits += 1
        if (self.commits - 1) % self.commit_stride == 0:
            self.commit_ms.append(commit_ms)
            if len(self.commit_ms) >= COMMIT_SAMPLES_MAX:
                del self.commit_ms[1::2]
                self.commit_stride *= 2

    def batch(self, accepted: int, duplicates: int, rejected_by_reason: collections.Counter[str]) -> None:
        self.accepted += accepted
        self.duplicates += duplicates
        self.rejected.update(rejected_by_reason)

    def busy(self) -> bool:
        return bool(self.accepted or self.duplicates or self.rejected or self.admin_changes or self.commits)

    def report(self, journal_bytes: Callable[[], int]) -> dict[str, Any] | None:
        """The fields of an activity line, and a fresh interval; None when nothing happened since the last."""
        now = time.monotonic()
        elapsed_s = max(now - self.since_monotonic, 1e-9)
        busy = self.busy()
        fields: dict[str, Any] = {
            "events_per_s": round(self.accepted / elapsed_s, 1),
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": ",".join(f"{k}:{v}" for k, v in sorted(self.rejected.items())) or "none",
            "admin_changes": self.admin_changes,
            "commits": self.commits,
            "commit_p99_ms": round(_p99(self.commit_ms), 2),
            "journal_bytes": journal_bytes(),
            "streams": self.streams_open,
        }
        self.accepted = self.duplicates = self.admin_changes = self.commits = 0
        self.rejected = collections.Counter()
        self.commit_ms = []
        self.commit_stride = 1
        self.since_monotonic = now
        return fields if busy else None


def _p99(samples: list[float]) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# The server's one Activity (the writer and the usage servicer feed it; server/app.py reports it).
activity = Activity()
