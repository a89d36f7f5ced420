"""Benchmark: every pruning method on ResNet-20 / CIFAR-10 at 2× and 3× MACs reduction.

Each method prunes the cached ResNet-20 baseline of ``resnet20_cifar10.py`` (15 epochs, seed 0)
to the same MACs budgets and is fine-tuned with the same recipe (``--finetune-epochs``, SGD lr 0.01
cosine, batch 128, distillation from the unpruned model). Baselines: uniform allocation (with L1,
and with Taylor so that the criterion can be compared at identical widths) and Torch-Pruning's own
global pruners, run as its users run them (``MetaPruner``, global ranking, ``iterative_steps=1``),
with the pruning ratio bisected until the MACs meet the target. One more run gives HALP a latency
budget, half the baseline's onnxruntime batch-1 latency on this CPU, and the tables check which
MACs-budget runs meet the same latency.

Every run lives in ``bench/.cache/methods/<arch>-<method>-<criterion>-<budget>-e<epochs>-s<seed>/``
(report.json, the exported model, latency.json) and is skipped when its report exists, so an
interrupted benchmark resumes. Latencies are measured from the exported files (torch via
``load_pruned``, onnxruntime from model.onnx) at batch 1 and 64: train under load if you must,
then re-time everything on an idle machine with ``--only-latency``. Writes
``bench/results/methods_cifar10.{json,md}`` and ``bench/results/widths_<budget>.png``.

    .venv/bin/python bench/methods_cifar10.py                 # everything (hours on 2 cores)
    .venv/bin/python bench/methods_cifar10.py --only-latency  # re-time finished runs, rewrite results
    .venv/bin/python bench/methods_cifar10.py --quick         # smoke test (minutes), separate cache
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from plots import width_plot  # bench/ is no package: its scripts import each other from sys.path[0]
from resnet20_cifar10 import CIFAR, baseline, machine
from torch import nn

from autoprune import pipeline
from autoprune.data import ImageData, load_data
from autoprune.errors import SurgeryError
from autoprune.export import ModelSpec, export_onnx, load_pruned, read_spec, save_weights, write_json
from autoprune.finetune import evaluate, finetune
from autoprune.graph import build_graph
from autoprune.measure import count_cost, onnx_latency_ms, torch_latency_ms
from autoprune.models import create_model, load_weights
from autoprune.surgery import PruningPlan, apply_plan
from autoprune.types import Budget, FinetuneConfig, JobSpec

ROOT = Path(__file__).resolve().parent
ARCH = "resnet20"
TRAIN_EPOCHS, BASELINE_SEED = 15, 0  # the cached baseline of resnet20_cifar10.py
METHODS = (
    "uniform:l1", "uniform:taylor", "global:taylor", "global:chip", "global:attribution", "nap:kfac",
    "itpruner:l1", "evolution:l1", "halp:taylor", "tp:magnitude", "tp:taylor", "tp:group_norm",
)  # fmt: skip
BUDGETS = "flops=0.5,flops=0.333"
QUICK_BUDGETS = "flops=0.5"  # one budget keeps the smoke test to a few minutes
LATENCY_METHOD = ("halp", "taylor")
LATENCY_COMPARED = "flops=0.5"  # the MACs budget whose runs are held against the latency target
LATENCY_BATCHES = (1, 64)
CALIBRATION_BATCHES = next(f.default for f in fields(JobSpec) if f.name == "calibration_batches")

# Torch-Pruning 1.6.1 has no "GroupNormImportance": the DepGraph paper's group-norm criterion is
# GroupMagnitudeImportance(p=2) (its GroupNormPruner adds sparse training, which we do not run).
TP_IMPORTANCE: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "group_norm": lambda: tp.importance.GroupMagnitudeImportance(p=2),
}
L1_CRITERIA = ("l1", "magnitude")  # the L1 criterion, ours and Torch-Pruning's


# --- settings and runs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where the benchmark reads and writes, and how much work each run does."""

    cache: Path
    results: Path
    data_ref: str
    finetune: FinetuneConfig
    latency_repeats: int

    @classmethod
    def make(cls, args: argparse.Namespace) -> Settings:
        if args.quick:
            quick = ROOT / ".cache" / "quick"
            return cls(
                cache=quick / "methods",
                results=ROOT / "results" / "quick",
                data_ref=f"npz:{cifar_subset(quick / 'cifar10-subset')}",
                finetune=FinetuneConfig(epochs=1, lr=0.01, batch_size=128, max_steps_per_epoch=1),
                latency_repeats=3,
            )
        return cls(
            cache=ROOT / ".cache" / "methods",
            results=ROOT / "results",
            data_ref=f"npz:{CIFAR}",
            finetune=FinetuneConfig(epochs=args.finetune_epochs, lr=0.01, batch_size=128),
            latency_repeats=30,
        )


def cifar_subset(directory: Path, train: int = 1024, test: int = 256) -> Path:
    """A small copy of the CIFAR-10 arrays for --quick (first rows; the train split is shuffled).

    1024 training images: the evolution search holds 512 out to score candidates.
    """
    if not (directory / "cifar10-test.npz").exists():  # written last: its presence means done
        directory.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", train), ("test", test)):
            with np.load(CIFAR / f"cifar10-{split}.npz", allow_pickle=False) as npz:
                np.savez(directory / f"cifar10-{split}.npz", x=npz["x"][:n], y=npz["y"][:n])
    return directory


@dataclass(frozen=True)
class Run:
    """One benchmark cell: an allocator and criterion at one budget."""

    method: str
    criterion: str
    budget: Budget
    label: str  # "flops=0.5", or "latency=0.5x" for half the baseline's measured latency

    @property
    def name(self) -> str:
        return f"{self.method}:{self.criterion}"

    def directory(self, settings: Settings, seed: int) -> Path:
        epochs = settings.finetune.epochs
        return settings.cache / f"{ARCH}-{self.method}-{self.criterion}-{self.label}-e{epochs}-s{seed}"


def parse_methods(text: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        method, sep, criterion = item.partition(":")
        if not sep or not method or not criterion:
            raise SystemExit(f"--methods entries look like global:taylor, not {item!r}")
        if method == "tp" and criterion not in TP_IMPORTANCE:
            raise SystemExit(f"tp criterion must be one of {', '.join(TP_IMPORTANCE)}, not {criterion!r}")
        out.append((method, criterion))
    return out


def planned_runs(args: argparse.Namespace, latency_target_ms: float) -> list[Run]:
    """Methods × MACs budgets, then HALP at a latency budget (when --latency-fraction > 0)."""
    runs = []
    for text in filter(None, (part.strip() for part in args.budgets.split(","))):
        budget = Budget.parse(text)
        runs += [Run(m, c, budget, str(budget)) for m, c in parse_methods(args.methods)]
    if args.latency_fraction > 0:
        budget = Budget(
            kind="latency_ms", value=latency_target_ms, runtime=args.latency_runtime, batch_size=args.latency_batch
        )
        runs.append(Run(*LATENCY_METHOD, budget, f"latency={args.latency_fraction:g}x"))
    return runs


# --- the unpruned model and latency ----------------------------------------------------------


def load_baseline(weights: Path, data: ImageData) -> nn.Module:
    model = create_model(ARCH, num_classes=data.num_classes, in_channels=data.input_shape[0])
    load_weights(model, weights)
    return model.eval()


def baseline_bundle(settings: Settings, weights: Path, data: ImageData) -> Path:
    """The unpruned model exported like a run (weights, ONNX, spec.json), so it is timed the same way."""
    out = settings.cache / f"{ARCH}-baseline"
    if not (out / "spec.json").exists():  # written last
        out.mkdir(parents=True, exist_ok=True)
        model = load_baseline(weights, data)
        spec = ModelSpec.for_data(ARCH, data)
        save_weights(model, out / "model.safetensors", spec)
        export_onnx(model, out / "model.onnx", spec.example_input())
        write_json(out / "spec.json", spec.to_dict())
    return out


def measure_latency(bundle: Path, threads: int, repeats: int) -> dict[str, Any]:
    """Median ms of the exported model in torch and onnxruntime at each batch size; saved as latency.json."""
    spec = read_spec(bundle / "spec.json")
    model = load_pruned(spec, bundle / "model.safetensors")
    out: dict[str, Any] = {"threads": threads, "repeats": repeats, "torch": {}, "onnxruntime": {}}
    for batch in LATENCY_BATCHES:
        timing = dict(batch_size=batch, repeats=repeats, threads=threads)
        out["torch"][str(batch)] = torch_latency_ms(model, spec.input_shape, **timing)
        out["onnxruntime"][str(batch)] = onnx_latency_ms(bundle / "model.onnx", spec.input_shape, **timing)
    write_json(bundle / "latency.json", out)
    return out


def latency_of(bundle: Path, threads: int, repeats: int, *, remeasure: bool) -> dict[str, Any]:
    """latency.json if it was timed with these threads (and not ``remeasure``), else a fresh timing."""
    path = bundle / "latency.json"
    if path.exists() and not remeasure:
        cached = read_json(path)
        if cached.get("threads") == threads:
            return cached
    return measure_latency(bundle, threads, repeats)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# --- one run ---------------------------------------------------------------------------------


def stage_printer(name: str) -> pipeline.Progress:
    """Print each stage once, as it starts: long runs show where they are."""
    seen: set[str] = set()

    def progress(stage: str, fraction: float, metrics: dict[str, Any]) -> None:
        if stage not in seen:
            seen.add(stage)
            print(f"  [{time.strftime('%H:%M:%S')}] {name}: {stage}", flush=True)

    return progress


def pipeline_run(run: Run, settings: Settings, weights: Path, seed: int, out: Path) -> dict[str, Any]:
    spec = JobSpec(
        arch=ARCH,
        weights=str(weights),
        data=settings.data_ref,
        budget=run.budget,
        method=run.method,
        criterion=run.criterion,
        finetune=settings.finetune,
        seed=seed,
        latency_repeats=settings.latency_repeats,
        export_pt2=False,
        out_dir=str(out),
    )
    return pipeline.run(spec, progress=stage_printer(run.name))


@dataclass
class TPCut:
    """A Torch-Pruning result: the pruned copy, its ratio and MACs, and the removed output channels."""

    model: nn.Module
    ratio: float
    macs: int
    removed: dict[str, list[int]]  # conv/linear name → removed output channels (original indices)


def tp_prune(model: nn.Module, example: torch.Tensor, criterion: str, ratio: float) -> TPCut:
    """MetaPruner with global ranking at one ``ratio``, on a copy of ``model`` (its gradients included)."""
    pruned = copy.deepcopy(model)
    for source, target in zip(model.parameters(), pruned.parameters(), strict=True):
        if source.grad is not None:  # deepcopy drops .grad; Taylor importance reads it
            target.grad = source.grad.clone()
    pruner = tp.pruner.MetaPruner(
        pruned,
        example,
        importance=TP_IMPORTANCE[criterion](),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=[pruned.fc],
        iterative_steps=1,
    )
    names = {module: name for name, module in pruned.named_modules()}
    removed: dict[str, list[int]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            module = dep.target.module
            if isinstance(module, (nn.Conv2d, nn.Linear)) and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                removed[names[module]] = sorted(int(i) for i in idxs)
        group.prune()
    pruned.zero_grad(set_to_none=True)
    return TPCut(pruned, ratio, count_cost(pruned, example).macs, removed)


def bisect_ratio(
    model: nn.Module, example: torch.Tensor, criterion: str, target: float, *, tolerance: float = 0.01, steps: int = 30
) -> tuple[TPCut, dict[str, Any]]:
    """The pruning ratio whose MACs are ≤ ``target`` and within ``tolerance`` below it, by bisection.

    Torch-Pruning's ratio counts channels, not MACs, so it is searched. If no ratio lands within
    the tolerance (MACs move in steps of whole channels), the feasible cut closest to the target
    is kept and the diagnostics say so.
    """
    lo, hi = 0.0, 0.99
    best: TPCut | None = None
    for step in range(1, steps + 1):
        cut = tp_prune(model, example, criterion, (lo + hi) / 2)
        if cut.macs > target:
            lo = cut.ratio
            continue
        hi = cut.ratio
        if best is None or cut.macs > best.macs:
            best = cut
        if cut.macs >= (1 - tolerance) * target:
            break
    if best is None:
        raise SurgeryError(f"torch-pruning ({criterion}) reached no MACs at or below {target:.4g} with ratio ≤ {hi}")
    within = best.macs >= (1 - tolerance) * target
    return best, {"pruning_ratio": best.ratio, "bisection_steps": step, "within_tolerance": within}


def plan_of(model: nn.Module, example: torch.Tensor, cut: TPCut) -> PruningPlan:
    """Torch-Pruning's cut as our replayable plan, checked to rebuild exactly its pruned weights.

    With the plan, spec.json + model.safetensors reload the model like any pipeline run's.
    """
    graph = build_graph(model, example)
    keep = {}
    for group in graph.groups:
        removed = set(cut.removed.get(group.id, ()))
        if removed:
            keep[group.id] = [i for i in range(group.channels) if i not in removed]
    channels = {g.id: g.channels for g in graph.groups}
    plan = PruningPlan.from_keep(keep, channels, ignore=graph.ignore, skipped=graph.skipped)
    replayed, theirs = apply_plan(model, example, plan).state_dict(), cut.model.state_dict()
    if replayed.keys() != theirs.keys() or any(not torch.equal(replayed[k], theirs[k]) for k in theirs):
        raise SurgeryError("torch-pruning's cut does not replay as a pruning plan of our graph")
    return plan


def tp_run(run: Run, settings: Settings, weights: Path, data: ImageData, seed: int, out: Path) -> dict[str, Any]:
    """Torch-Pruning's global pruner, then the pipeline's fine-tune, evaluation and export."""
    if run.budget.kind != "flops":
        raise ValueError(f"the torch-pruning baseline takes flops budgets, not {run.budget}")
    timer = pipeline.Timer()
    say = stage_printer(run.name)
    model = load_baseline(weights, data)
    example = torch.zeros(1, *data.input_shape)
    before, eval_before = count_cost(model, example), evaluate(model, data)
    teacher = copy.deepcopy(model).eval()
    with timer("importance"):
        say("importance", 0.0, {})
        if run.criterion == "taylor":  # gradients summed over the pipeline's calibration batches
            model.zero_grad(set_to_none=True)
            for x, y in pipeline.calibration(data, CALIBRATION_BATCHES, seed)():
                nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    with timer("allocation"):
        say("allocation", 0.0, {})
        target = run.budget.value * before.macs
        cut, diagnostics = bisect_ratio(model, example, run.criterion, target)
    with timer("surgery"):
        plan = plan_of(model, example, cut)
    pruned = cut.model
    eval_pruned = evaluate(pruned, data)
    with timer("finetune"):
        say("finetune", 0.0, {})
        stats = finetune(pruned, data, settings.finetune, teacher=teacher, seed=seed)
    after, eval_after = count_cost(pruned, example), evaluate(pruned, data)
    with timer("export"):
        say("export", 0.0, {})
        model_spec = ModelSpec.for_data(ARCH, data, [plan])
        save_weights(pruned, out / "model.safetensors", model_spec)
        write_json(out / "spec.json", model_spec.to_dict())
        onnx_diff = export_onnx(pruned, out / "model.onnx", example)
    importance = TP_IMPORTANCE[run.criterion]()
    report = {
        "arch": ARCH,
        "data": settings.data_ref,
        "method": run.method,
        "criterion": run.criterion,
        "budget": run.budget.to_dict(),
        "seed": seed,
        "macs_before": before.macs,
        "macs_after": after.macs,
        "flops_ratio": after.macs / before.macs,
        "params_before": before.params,
        "params_after": after.params,
        "params_ratio": after.params / before.params,
        "accuracy_before": eval_before.accuracy,
        "accuracy_pruned": eval_pruned.accuracy,
        "accuracy_after": eval_after.accuracy,
        "loss_before": eval_before.loss,
        "loss_after": eval_after.loss,
        "onnx_max_abs_diff": onnx_diff,
        "layers": pipeline.layer_table(before, after),
        "allocation": [
            {
                "criterion": run.criterion,
                "importance": f"torch_pruning {type(importance).__name__}"
                + (f"(p={importance.p})" if hasattr(importance, "p") else "()"),
                "target": run.budget.value,
                "achieved": after.macs / before.macs,
                **diagnostics,
            }
        ],
        "finetune": {"config": settings.finetune.to_dict(), "history": [asdict(s) for s in stats]},
        "timings": {stage: round(s, 3) for stage, s in timer.seconds.items()},
        "versions": {"torch": torch.__version__, "torch_pruning": tp.__version__},
        "notes": "torch_pruning MetaPruner, global_pruning=True, iterative_steps=1, fc ignored; "
        "pruning_ratio bisected to the MACs target.",
    }
    write_json(out / "report.json", report)
    return report


def execute(run: Run, settings: Settings, weights: Path, data: ImageData, seed: int) -> dict[str, Any]:
    out = run.directory(settings, seed)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if run.method == "tp":
        report = tp_run(run, settings, weights, data, seed, out)
    else:
        report = pipeline_run(run, settings, weights, seed, out)
    print(
        f"{run.name} {run.label}: top-1 {report['accuracy_after']:.4f}, MACs {report['flops_ratio']:.3f}, "
        f"{time.perf_counter() - start:.0f} s; stages {report['timings']}",
        flush=True,
    )
    return report


# --- results ---------------------------------------------------------------------------------

REPORT_KEYS = (
    "method", "criterion", "budget", "accuracy_before", "accuracy_pruned", "accuracy_after", "macs_before",
    "macs_after", "flops_ratio", "params_before", "params_after", "timings", "allocation", "layers",
)  # fmt: skip


def collect(run: Run, settings: Settings, seed: int, latency: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's row for the results: its report's keys, the latency timed here, or its error."""
    out = run.directory(settings, seed)
    row: dict[str, Any] = {"run": out.name, "name": run.name, "label": run.label, "budget_kind": run.budget.kind}
    if (out / "report.json").exists():
        report = read_json(out / "report.json")
        row.update({k: report[k] for k in REPORT_KEYS}, latency_ms=latency)
    elif (out / "error.txt").exists():
        row["error"] = "failed: " + (out / "error.txt").read_text().strip().splitlines()[-1]
    else:
        row["error"] = "not run"
    return row


def ms(latency: Mapping[str, Any] | None, runtime: str, batch: int) -> float:
    return float("nan") if latency is None else latency[runtime][str(batch)]


def speedup_over_macs(row: Mapping[str, Any], base_latency: Mapping[str, Any]) -> float:
    """Practical onnxruntime batch-64 speedup divided by the MACs speedup (1 = latency follows MACs)."""
    practical = ms(base_latency, "onnxruntime", 64) / ms(row["latency_ms"], "onnxruntime", 64)
    return practical / (row["macs_before"] / row["macs_after"])


def search_seconds(timings: Mapping[str, float]) -> float:
    return sum(timings.get(stage, 0.0) for stage in ("importance", "allocation", "latency_table"))


def method_table(rows: list[dict[str, Any]], base: Mapping[str, Any]) -> list[str]:
    lat = base["latency_ms"]
    lines = [
        "| method | top-1 before | pruned, not tuned | after fine-tune | MACs (M) | MACs ratio | params (M) "
        "| torch ms b=1 | torch ms b=64 | onnxruntime ms b=1 | onnxruntime ms b=64 | speedup ÷ MACs speedup (ort b=64) "
        "| search s | fine-tune s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| unpruned | {100 * base['accuracy']:.2f} | | | {base['macs'] / 1e6:.2f} | 1.000 | {base['params'] / 1e6:.3f} "
        f"| {ms(lat, 'torch', 1):.2f} | {ms(lat, 'torch', 64):.1f} | {ms(lat, 'onnxruntime', 1):.2f} "
        f"| {ms(lat, 'onnxruntime', 64):.1f} | | | |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['error'].replace('|', '/')} |" + " |" * 12)
            continue
        t, la = r["timings"], r["latency_ms"]
        lines.append(
            f"| {r['name']} | {100 * r['accuracy_before']:.2f} | {100 * r['accuracy_pruned']:.2f} "
            f"| {100 * r['accuracy_after']:.2f} | {r['macs_after'] / 1e6:.2f} | {r['flops_ratio']:.3f} "
            f"| {r['params_after'] / 1e6:.3f} | {ms(la, 'torch', 1):.2f} | {ms(la, 'torch', 64):.1f} "
            f"| {ms(la, 'onnxruntime', 1):.2f} | {ms(la, 'onnxruntime', 64):.1f} | {speedup_over_macs(r, lat):.2f} "
            f"| {search_seconds(t):.1f} | {t.get('finetune', 0.0):.0f} |"
        )
    missed = [r for r in rows if "error" not in r and r["allocation"][0].get("within_tolerance") is False]
    if missed:
        listed = ", ".join(f"{r['name']} (ratio {r['allocation'][0]['pruning_ratio']:.3f})" for r in missed)
        lines += [
            "",
            f"No Torch-Pruning ratio landed within 1% below the MACs target for {listed}: the closest below is shown.",
        ]
    return lines


def latency_compared(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The finished latency-budget run, and the runs held against its target: itself, then every
    finished run at the MACs budget LATENCY_COMPARED."""
    halp = next((r for r in rows if r["budget_kind"] == "latency_ms" and "error" not in r), None)
    if halp is None:
        return None, []
    return halp, [halp] + [r for r in rows if r["label"] == LATENCY_COMPARED and "error" not in r]


def latency_fraction(row: Mapping[str, Any]) -> float:
    """The fraction of the unpruned model's latency a ``latency=0.5x`` run was given."""
    return float(row["label"].removeprefix("latency=").removesuffix("x"))


def latency_setting(halp: Mapping[str, Any]) -> tuple[str, int]:
    """(runtime, batch size) of the latency-budget run."""
    return halp["budget"].get("runtime", "onnxruntime"), int(halp["budget"].get("batch_size", 1))


def relative_latency(row: Mapping[str, Any], base: Mapping[str, Any], setting: tuple[str, int]) -> float:
    """Latency in the budget's runtime and batch ÷ the unpruned model's, both timed in the same session.

    Load-independent, unlike the absolute target the run was given (timed when it started).
    """
    return ms(row["latency_ms"], *setting) / ms(base["latency_ms"], *setting)


def latency_table(rows: list[dict[str, Any]], base: Mapping[str, Any]) -> list[str]:
    halp, compared = latency_compared(rows)
    if halp is None:
        return ["No latency-budget run finished."]
    fraction, target = latency_fraction(halp), halp["budget"]["latency_ms"]
    setting = latency_setting(halp)
    lines = [
        f"HALP's budget: {fraction:g} × the unpruned model's {setting[0]} batch-{setting[1]} latency. The run targeted "
        f"{target:.3f} ms (the unpruned model timed {target / fraction:.3f} ms when it started). Below, every "
        f"latency, the unpruned model's included ({ms(base['latency_ms'], *setting):.3f} ms), was timed in "
        f"the same session, and a run meets the budget when its latency ÷ the unpruned latency is ≤ {fraction:g}.",
        "",
        f"| method | budget | {setting[0]} ms b={setting[1]} | ÷ unpruned | meets | top-1 after | MACs (M) | MACs ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in compared:
        ratio = relative_latency(r, base, setting)
        lines.append(
            f"| {r['name']} | {r['label']} | {ms(r['latency_ms'], *setting):.3f} | {ratio:.3f} "
            f"| {'yes' if ratio <= fraction else 'no'} | {100 * r['accuracy_after']:.2f} "
            f"| {r['macs_after'] / 1e6:.2f} | {r['flops_ratio']:.3f} |"
        )
    return lines


def verdict(delta: float, ahead: str, behind: str) -> str:
    return ahead if delta > 0 else behind if delta < 0 else "tie"


def taylor_vs_l1(rows: list[dict[str, Any]]) -> list[str]:
    """Same allocator, Taylor against L1 (Torch-Pruning's magnitude counts as L1)."""
    done = {(r["label"], r["name"]): r for r in rows if "error" not in r}
    lines = []
    for label in dict.fromkeys(r["label"] for r in rows):
        for method in dict.fromkeys(r["name"].split(":")[0] for r in rows):
            taylor = done.get((label, f"{method}:taylor"))
            l1 = next((done[(label, f"{method}:{c}")] for c in L1_CRITERIA if (label, f"{method}:{c}") in done), None)
            if taylor and l1:
                delta = 100 * (taylor["accuracy_after"] - l1["accuracy_after"])
                lines.append(
                    f"- {label}, {method} allocation: Taylor {100 * taylor['accuracy_after']:.2f} vs L1 "
                    f"{100 * l1['accuracy_after']:.2f} ({delta:+.2f}): {verdict(delta, 'Taylor ahead', 'L1 ahead')}"
                )
    return lines or ["- no allocator was run with both criteria"]


def closest_uniform(criterion: str) -> tuple[str, ...]:
    """Uniform runs to compare with, best first: the same criterion, else uniform-L1."""
    same = "l1" if criterion in ("magnitude", "group_norm") else criterion
    return (f"uniform:{same}", "uniform:l1")


def allocators_vs_uniform(rows: list[dict[str, Any]]) -> list[str]:
    """Every automatic allocator against uniform allocation at the same MACs budget."""
    done = {(r["label"], r["name"]): r for r in rows if "error" not in r}
    lines = []
    for label in dict.fromkeys(r["label"] for r in rows if r["budget_kind"] == "flops"):
        wins = total = 0
        for r in rows:
            if r["label"] != label or "error" in r or r["name"].startswith("uniform:"):
                continue
            ref = next((done[(label, u)] for u in closest_uniform(r["criterion"]) if (label, u) in done), None)
            if ref is None:
                continue
            delta = 100 * (r["accuracy_after"] - ref["accuracy_after"])
            wins, total = wins + (delta > 0), total + 1
            lines.append(
                f"- {label}: {r['name']} {100 * r['accuracy_after']:.2f} vs {ref['name']} {100 * ref['accuracy_after']:.2f} "
                f"({delta:+.2f}) at {r['macs_after'] / 1e6:.2f} vs {ref['macs_after'] / 1e6:.2f} M MACs: "
                f"{verdict(delta, 'above uniform', 'below uniform')}"
            )
        if total:
            lines.append(f"- **{label}: {wins} of {total} automatic allocators above uniform**")
    return lines or ["- no uniform run to compare with"]


def latency_claim(rows: list[dict[str, Any]], base: Mapping[str, Any]) -> list[str]:
    halp, compared = latency_compared(rows)
    if halp is None:
        return ["- no latency-budget run finished"]
    fraction = latency_fraction(halp)
    setting = latency_setting(halp)
    lines = [
        f"- {r['name']} ({r['label']}): {relative_latency(r, base, setting):.3f} × the unpruned latency vs budget "
        f"{fraction:g}: {'meets' if relative_latency(r, base, setting) <= fraction else 'misses'}, top-1 {100 * r['accuracy_after']:.2f}"
        for r in compared
    ]
    meet = sum(relative_latency(r, base, setting) <= fraction for r in compared[1:])
    lines.append(
        f"- **HALP with the latency budget {'meets' if relative_latency(halp, base, setting) <= fraction else 'misses'} it; "
        f"{meet} of {len(compared) - 1} {LATENCY_COMPARED} runs meet it**"
    )
    return lines


def write_results(
    rows: list[dict[str, Any]], base: dict[str, Any], args: argparse.Namespace, settings: Settings
) -> None:
    out = settings.results
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "baseline": base,
        "args": vars(args),
        "settings": {
            "data": settings.data_ref,
            "finetune": settings.finetune.to_dict(),
            "latency_repeats": settings.latency_repeats,
        },
    }
    write_json(out / "methods_cifar10.json", {**meta, "runs": rows})
    lines = [
        f"# ResNet-20 on CIFAR-10: pruning methods at equal budgets{' (QUICK SMOKE TEST: numbers mean nothing)' if args.quick else ''}",
        "",
        f"Baseline: top-1 {100 * base['accuracy']:.2f}% ({base['recipe']}). Data: {settings.data_ref}. "
        f"Fine-tune for every method: {settings.finetune.epochs} epoch(s), SGD lr {settings.finetune.lr} cosine, batch "
        f"{settings.finetune.batch_size}, distillation from the unpruned model; seed {args.seed}, one run each.",
        f"Machine: {meta['machine']}. Date: {meta['date']}. Latency: median of {settings.latency_repeats} runs "
        f"per cell, {args.threads} thread(s), from the exported files. Search s = importance + allocation "
        "(+ latency table); Torch-Pruning's allocation is its ratio bisection.",
        "",
    ]
    for label in dict.fromkeys(r["label"] for r in rows if r["budget_kind"] == "flops"):
        lines += [f"## {label}", "", *method_table([r for r in rows if r["label"] == label], base), ""]
    lines += ["## Latency budget", "", *latency_table(rows, base), ""]
    lines += [
        "## Claims, computed from the tables",
        "",
        "One seed per cell: differences of a few tenths of a point are within seed-to-seed noise.",
        "",
        "**Taylor beats L1** (same allocator, so the same kind of widths):",
        *taylor_vs_l1(rows),
        "",
        "**Automatic allocators beat uniform at equal MACs** (uniform with the same criterion where run, else uniform-L1):",
        *allocators_vs_uniform(rows),
        "",
        f"**HALP meets latency that MACs-based methods miss** ({LATENCY_COMPARED} runs against HALP's target):",
        *latency_claim(rows, base),
        "",
    ]
    (out / "methods_cifar10.md").write_text("\n".join(lines))
    plot_widths(rows, out)
    print("\n".join(lines))


def plot_widths(rows: list[dict[str, Any]], out: Path) -> None:
    """One figure per budget; the latency figure also shows the compared MACs-budget runs."""
    for stale in out.glob("widths_*.png"):  # from budgets no longer run
        stale.unlink()
    done = [r for r in rows if "error" not in r]
    for label in dict.fromkeys(r["label"] for r in done):
        if label.startswith("latency="):
            runs = {f"{r['name']} ({r['label']})": r["layers"] for r in latency_compared(rows)[1]}
        else:
            runs = {r["name"]: r["layers"] for r in done if r["label"] == label}
        width_plot(runs, out / f"widths_{label}.png", title=f"ResNet-20 / CIFAR-10: output channels per layer, {label}")


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated method:criterion (tp:… = Torch-Pruning)"
    )
    parser.add_argument(
        "--budgets",
        default=None,
        help=f"comma-separated MACs budgets, fractions of the original (default {BUDGETS}; {QUICK_BUDGETS} with --quick)",
    )
    parser.add_argument(
        "--latency-fraction",
        type=float,
        default=0.5,
        help="HALP's latency budget as a fraction of the baseline's latency (--latency-runtime, --latency-batch); 0 skips it",
    )
    parser.add_argument("--latency-runtime", choices=["torch", "onnxruntime"], default="onnxruntime")
    parser.add_argument("--latency-batch", type=int, choices=[1, 64], default=1)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument(
        "--seed", type=int, default=0, help="pruning and fine-tune seed (the baseline is always seed 0)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--only-latency",
        action="store_true",
        help="re-time finished runs from their exported files and rewrite the results",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: data subset, one fine-tune step, separate cache"
    )
    args = parser.parse_args(argv)
    if args.budgets is None:
        args.budgets = QUICK_BUDGETS if args.quick else BUDGETS
    parse_methods(args.methods)  # fail on a malformed list before any work
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    settings = Settings.make(args)
    weights, base_meta = baseline(TRAIN_EPOCHS, BASELINE_SEED)
    data = load_data(settings.data_ref)
    bundle = baseline_bundle(settings, weights, data)
    base_latency = latency_of(bundle, args.threads, settings.latency_repeats, remeasure=args.only_latency)
    cost = count_cost(load_baseline(weights, data), torch.zeros(1, *data.input_shape))
    base = {
        **{k: base_meta[k] for k in ("accuracy", "loss", "epochs", "recipe", "seconds") if k in base_meta},
        "macs": cost.macs,
        "params": cost.params,
        "latency_ms": base_latency,
    }
    runs = planned_runs(args, args.latency_fraction * base_latency[args.latency_runtime][str(args.latency_batch)])
    rows = []
    for run in runs:
        out = run.directory(settings, args.seed)
        if not args.only_latency and not (out / "report.json").exists():
            try:
                execute(run, settings, weights, data, args.seed)
                (out / "error.txt").unlink(missing_ok=True)
            except Exception:  # one failed method must not stop a multi-hour benchmark
                traceback.print_exc()
                (out / "error.txt").write_text(traceback.format_exc())
        latency = None
        if (out / "report.json").exists():
            latency = latency_of(out, args.threads, settings.latency_repeats, remeasure=args.only_latency)
        rows.append(collect(run, settings, args.seed, latency))
    write_results(rows, base, args, settings)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
