"""The suite's cells: one method at one budget on one arch and seed, run once and cached.

A run lives in ``<runs>/<arch>-<method>-<criterion>-<budget>-<fine-tune tag>-s<seed>/``, where
``<runs>`` is the cache folder of this code version (``settings.runs``): report.json,
model.safetensors, spec.json, model.onnx, latency.json, bench.json (the job's description, its
fingerprint and the code version, see ``bench.cache``); error.txt if it failed. It is reused only
when its report exists and bench.json holds this job's fingerprint and this code version.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune import pipeline
from autoprune.data import ImageData
from autoprune.spec import Budget, JobSpec
from bench import cache
from bench.common import read_json, stage_printer
from bench.settings import Settings, finetune_config
from bench.tp_baselines import TP_IMPORTANCE, tp_run

LATENCY_METHOD = ("halp", "taylor")
REPORT_KEYS = (
    "method", "criterion", "budget", "accuracy_before", "accuracy_pruned", "bn_reestimation_batches", "accuracy_after",
    "macs_before", "macs_after", "flops_ratio", "params_before", "params_after", "timings", "allocation", "layers",
)  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One cell: an allocator and criterion at one budget on one arch.

    ``kind`` is ``main`` (the methods table), ``latency`` (HALP's latency budget), ``high``
    (the high-compression fidelity check) or ``step`` (widths in multiples of ``channel_step``,
    listed in the methods table beside the free-width rows).
    """

    arch: str
    method: str
    criterion: str
    budget: Budget
    label: str  # "flops=0.5", or "latency=0.8x" for 0.8 × the unpruned model's measured latency
    kind: str
    channel_step: int = 1

    @property
    def name(self) -> str:
        return f"{self.method}:{self.criterion}" + (f"/step{self.channel_step}" if self.channel_step > 1 else "")

    def directory(self, settings: Settings, seed: int) -> Path:
        tag = settings.recipe(self.arch).finetune_tag
        step = f"-step{self.channel_step}" if self.channel_step > 1 else ""
        return settings.runs / f"{self.arch}-{self.method}-{self.criterion}-{self.label}{step}-{tag}-s{seed}"


def parse_methods(text: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        method, sep, criterion = item.partition(":")
        if not sep or not method or not criterion:
            raise SystemExit(f"methods look like global:taylor, not {item!r}")
        if method == "tp" and criterion not in TP_IMPORTANCE:
            raise SystemExit(f"tp criterion must be one of {', '.join(TP_IMPORTANCE)}, not {criterion!r}")
        out.append((method, criterion))
    return out


def parse_budgets(text: str) -> list[Budget]:
    return [Budget.parse(part.strip()) for part in text.split(",") if part.strip()]


def planned_runs(arch: str, args: argparse.Namespace) -> list[Run]:
    """Methods × MACs budgets, HALP at a latency budget (unless --latency-fraction 0), the
    high-compression check (unless --high-budgets is empty), then the channel-step runs (unless
    --step-budgets is empty).

    The latency budget is the product's relative one: the job times the unpruned model itself,
    under the load its latency table is measured under. (Runs before 2026-12-02 were given an
    absolute target from a timing the suite made just before; up to 25% off on this VM.)"""
    runs = [
        Run(arch, m, c, budget, str(budget), "main")
        for budget in parse_budgets(args.budgets)
        for m, c in parse_methods(args.methods)
    ]
    if args.latency_fraction > 0:
        budget = Budget(
            kind="latency", value=args.latency_fraction, runtime=args.latency_runtime, batch_size=args.latency_batch
        )
        runs.append(Run(arch, *LATENCY_METHOD, budget, f"latency={args.latency_fraction:g}x", "latency"))
    runs += [
        Run(arch, m, c, budget, str(budget), "high")
        for budget in parse_budgets(args.high_budgets)
        for m, c in parse_methods(args.high_methods)
    ]
    runs += [
        Run(arch, m, c, budget, str(budget), "step", args.channel_step)
        for budget in parse_budgets(args.step_budgets)
        for m, c in parse_methods(args.step_methods)
    ]
    return runs


def job(run: Run, settings: Settings, seed: int, weights: Path) -> dict[str, Any]:
    """What decides the run's result besides the code: its fingerprint is the hash of this."""
    return {
        "arch": run.arch, "method": run.method, "criterion": run.criterion, "budget": run.budget.to_dict(),
        "channel_step": run.channel_step, "seed": seed, "mode": settings.mode,
        "data": Path(settings.data_ref.partition(":")[2]).name,
        "finetune": finetune_config(settings.recipe(run.arch)).to_dict(),
        "latency_repeats": settings.latency_repeats,
        "baseline": {"file": weights.name, "sha256": cache.file_sha256(weights)},
    }  # fmt: skip


def is_done(run: Run, settings: Settings, seed: int, weights: Path) -> bool:
    """A finished run of this job (this baseline, recipe, ...) made by this code version."""
    return cache.is_cached(run.directory(settings, seed), job(run, settings, seed, weights), settings.code_version)


def execute(run: Run, settings: Settings, weights: Path, data: ImageData, seed: int) -> dict[str, Any]:
    out = run.directory(settings, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # a stale report (other job) must not survive a failure
    (out / cache.MARKER).unlink(missing_ok=True)
    cfg = finetune_config(settings.recipe(run.arch))
    start = time.perf_counter()
    if run.method == "tp":
        report = tp_run(run.arch, run.criterion, run.budget, weights, data, settings.data_ref, cfg, seed, out)
    else:
        spec = JobSpec(
            arch=run.arch,
            weights=str(weights),
            data=settings.data_ref,
            budget=run.budget,
            method=run.method,
            criterion=run.criterion,
            finetune=cfg,
            seed=seed,
            latency_repeats=settings.latency_repeats,
            channel_step=run.channel_step,
            exports=("onnx",),
            out_dir=str(out),
        )
        report = pipeline.run(spec, progress=stage_printer(run.name)).to_dict()
    seconds = time.perf_counter() - start
    cache.write_marker(
        out, job=job(run, settings, seed, weights), version=settings.code_version, wall_seconds=round(seconds, 1)
    )
    print(
        f"{run.arch} {run.name} {run.label} s{seed}: top-1 {report['accuracy_after']:.4f}, "
        f"MACs {report['flops_ratio']:.3f}, {seconds:.0f} s; stages {report['timings']}",
        flush=True,
    )
    return report


def collect(run: Run, settings: Settings, seed: int, latency: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's row for the results: its report's keys and ``latency`` (its timing, given for a run
    that ``is_done``; None otherwise, and then a report left by another job or code version is not
    read), or its error."""
    out = run.directory(settings, seed)
    row: dict[str, Any] = {
        "arch": run.arch, "run": out.name, "name": run.name, "label": run.label, "kind": run.kind,
        "budget_kind": run.budget.kind, "seed": seed, "code_version": settings.code_version,
    }  # fmt: skip
    marker = cache.read_marker(out)
    if latency is not None and marker is not None and (out / "report.json").exists():
        report = read_json(out / "report.json")
        row.update({k: report[k] for k in REPORT_KEYS}, latency_ms=latency)
        if run.budget.measured:  # the target in ms the job priced from its own timing of the unpruned model
            row["latency_target_ms"] = report["latency"]["budget_target_ms"]
        row.update(code_version=marker["code_version"], fingerprint=marker["fingerprint"])
        row["wall_seconds"] = marker.get("wall_seconds")
    elif (out / "error.txt").exists():
        row["error"] = "failed: " + (out / "error.txt").read_text().strip().splitlines()[-1]
    else:
        row["error"] = "not run"
    return row
