"""Figures, their statistics, the plain-text table and the JSON file.

A Figure holds one value per run (and, when it is compared with a reference, one ratio per run,
computed pair by pair within the same run); the table shows the median with the min–max beside it.
A workload that could not run carries its reason instead of figures ("not available yet: ...").
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in [0, 1]) of unsorted samples."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class Figure:
    metric: str
    unit: str
    values: list[float]
    # What the ratio is against ("no-op ceiling") and the ratio per run (value / reference value).
    reference: str = ""
    ratios: list[float] = field(default_factory=list)
    # The target of docs/architecture.md §9, for a person, and whether the median met it (None: no target).
    target: str = ""
    met: bool | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def ratio_median(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["median"] = self.median
        out["min"] = min(self.values)
        out["max"] = max(self.values)
        out["ratio_median"] = self.ratio_median
        if self.ratios:
            out["ratio_min"] = min(self.ratios)
            out["ratio_max"] = max(self.ratios)
        return out


@dataclass
class WorkloadResult:
    name: str
    # "ok", "not available" (an RPC answers UNIMPLEMENTED, a flag is not built yet) or "failed".
    status: str = "ok"
    reason: str = ""
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def figure(self, metric: str) -> Figure:
        for candidate in self.figures:
            if candidate.metric == metric:
                return candidate
        raise KeyError(metric)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "figures": [f.to_json() for f in self.figures],
            "details": self.details,
            "notes": self.notes,
        }


def _number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.3g} ms" if value < 10 else f"{value:.1f} ms"
    if unit == "µs":
        return f"{value:.3g} µs"
    if unit == "bytes":
        if abs(value) < 1024:
            return f"{value:.0f} B"
        return f"{value / 1024:.1f} KiB" if abs(value) < 1024 * 1024 else f"{value / 1024 / 1024:.1f} MiB"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def table(results: list[WorkloadResult]) -> str:
    header = [
        "workload",
        "metric",
        "median",
        "min–max",
        "reference",
        "ratio (min–max)",
        "target (docs/architecture.md §9)",
        "met?",
    ]
    rows: list[list[str]] = []
    for result in results:
        if result.status != "ok" and not result.figures:
            # The reason is printed in full under the table; a long cell would widen every row.
            rows.append([result.name, f"{result.status} (see notes)", "", "", "", "", "", ""])
            continue
        for figure in result.figures:
            ratio = ""
            if figure.ratios:
                ratio = f"{figure.ratio_median:.3g} ({min(figure.ratios):.3g}–{max(figure.ratios):.3g})"
            met = "" if figure.met is None else ("yes" if figure.met else "NO")
            rows.append(
                [
                    result.name,
                    figure.metric,
                    _number(figure.median, figure.unit),
                    f"{_number(min(figure.values), figure.unit)}–{_number(max(figure.values), figure.unit)}",
                    figure.reference,
                    ratio,
                    figure.target,
                    met,
                ]
            )
        if result.status != "ok":
            rows.append([result.name, f"{result.status} (see notes)", "", "", "", "", "", ""])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(header)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)
    return "\n".join(lines)


def write_json(path: Path, machine: dict[str, Any], config: dict[str, Any], results: list[WorkloadResult]) -> None:
    document = {"machine": machine, "config": config, "workloads": {r.name: r.to_json() for r in results}}
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
