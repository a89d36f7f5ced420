"""Runs grouped into cells (one method at one budget) and aggregated over seeds, for the tables and claims.

Top-1 as mean ± half the range (min to max) with the number of seeds; costs, latencies and times as means.
Rows of different code versions are never aggregated together: ``cells`` refuses them, and the
tables split a results file by code version first (``by_code_version``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Row = Mapping[str, Any]

ARCH_TITLES = {
    "resnet20": "ResNet-20", "resnet56": "ResNet-56", "cifar_mobilenetv2": "MobileNetV2 (CIFAR)",
    "cifar_vgg16_bn": "VGG-16-BN",
}  # fmt: skip


def ms(latency: Mapping[str, Any] | None, runtime: str, batch: int) -> float:
    return float("nan") if latency is None else latency[runtime][str(batch)]


def search_seconds(timings: Mapping[str, float]) -> float:
    return sum(timings.get(stage, 0.0) for stage in ("importance", "allocation", "latency_table"))


def practical_speedup(row: Row, base_latency: Mapping[str, Any]) -> float:
    """onnxruntime batch-64 latency of the unpruned model ÷ the run's, both timed by the suite."""
    return ms(base_latency, "onnxruntime", 64) / ms(row["latency_ms"], "onnxruntime", 64)


def done(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if "error" not in r]


class MixedCodeVersions(ValueError):
    """Rows made by different code were about to be aggregated together."""


def by_code_version(suite: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The arch's results split into one results dict per code version, in first-seen order.

    A row's code version is its own, else the file's (None: not recorded, as in the results
    committed before the bench recorded code versions); each row carries it after the split.
    """
    parts: dict[str | None, list[Row]] = {}
    for r in suite["runs"]:
        version = r.get("code_version", suite.get("code_version"))
        parts.setdefault(version, []).append({**r, "code_version": version})
    if not parts:
        parts[suite.get("code_version")] = []
    return [{**suite, "code_version": version, "runs": rows} for version, rows in parts.items()]


def cells(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    """(label, name) → the finished rows of that cell (one per seed), in first-seen order.

    Raises ``MixedCodeVersions`` if the rows come from more than one code version.
    """
    versions = {r.get("code_version") for r in rows}
    if len(versions) > 1:
        raise MixedCodeVersions(f"rows of {len(versions)} code versions: {sorted(map(str, versions))}")
    out: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        out.setdefault((r["label"], r["name"]), [])
        if "error" not in r:
            out[(r["label"], r["name"])].append(r)
    return out


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def pct(rows: Sequence[Row], key: str) -> str:
    """Mean top-1 in %, with ± half the range over seeds when there are several."""
    values = [100 * r[key] for r in rows]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{mean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def delta_text(deltas: Sequence[float]) -> str:
    if not deltas:
        return "–"
    if len(deltas) == 1:
        return f"{deltas[0]:+.2f}"
    return f"{mean(deltas):+.2f} ± {(max(deltas) - min(deltas)) / 2:.2f}"


def verdict(delta: float, ahead: str, behind: str) -> str:
    return ahead if delta > 0 else behind if delta < 0 else "tie"


def paired_deltas(run_rows: Sequence[Row], ref_rows: Sequence[Row], key: str = "accuracy_after") -> list[float]:
    """Per-seed differences in points (seeds present in both)."""
    ref = {r["seed"]: r for r in ref_rows}
    return [100 * (r[key] - ref[r["seed"]][key]) for r in run_rows if r["seed"] in ref]
