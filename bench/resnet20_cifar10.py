"""Benchmark: ResNet-20 on CIFAR-10 (../shared/data), pruned to 50% MACs by uniform-L1 and global-Taylor.

Trains a baseline once (cached in bench/.cache), then runs the real pipeline for each method with
the same fine-tune budget, and writes bench/results/resnet20_cifar10.{json,md}. Run alone: other
load on the machine skews the latencies.

    .venv/bin/python bench/resnet20_cifar10.py [--train-epochs 15] [--finetune-epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from autoprune import pipeline
from autoprune.types import Budget, FinetuneConfig, JobSpec

ROOT = Path(__file__).resolve().parent
CIFAR = ROOT.parent.parent / "shared" / "data" / "cifar10"
METHODS = [("uniform", "l1"), ("global", "taylor")]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), no GPU"


def baseline(epochs: int, seed: int) -> tuple[Path, dict]:
    cache = ROOT / ".cache"
    weights = cache / f"resnet20-cifar10-e{epochs}-s{seed}.safetensors"
    meta = weights.with_suffix(".json")
    if not weights.exists():
        start = time.perf_counter()
        cfg = FinetuneConfig(lr=0.1, batch_size=128, weight_decay=5e-4, distill=False)
        result = pipeline.train_baseline("resnet20", f"npz:{CIFAR}", weights, epochs=epochs, cfg=cfg, seed=seed)
        result["seconds"] = time.perf_counter() - start
        result["recipe"] = f"SGD momentum 0.9, lr 0.1 cosine, wd 5e-4, batch 128, {epochs} epochs, crop+flip, 27k-image train subset"
        meta.write_text(json.dumps(result, indent=2))
    return weights, json.loads(meta.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--budget", default="flops=0.5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights, base = baseline(args.train_epochs, args.seed)
    print(f"baseline top-1 {base['accuracy']:.4f} ({base['recipe']})")
    rows = []
    for method, criterion in METHODS:
        spec = JobSpec(
            arch="resnet20",
            weights=str(weights),
            data=f"npz:{CIFAR}",
            budget=Budget.parse(args.budget),
            method=method,
            criterion=criterion,
            finetune=FinetuneConfig(epochs=args.finetune_epochs, lr=0.01, batch_size=128),
            seed=args.seed,
            latency_repeats=50,
            out_dir=str(ROOT / ".cache" / "runs" / f"{method}-{criterion}"),
        )
        start = time.perf_counter()
        report = pipeline.run(spec, progress=lambda s, f, m: None)
        report["wall_seconds"] = time.perf_counter() - start
        rows.append(report)
        print(f"{method}-{criterion}: top-1 {report['accuracy_after']:.4f}, MACs {report['flops_ratio']:.3f}")
    write(rows, base, args)


def write(rows: list[dict], base: dict, args: argparse.Namespace) -> None:
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    meta = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "baseline": base, "args": vars(args)}
    keys = ["method", "criterion", "budget", "accuracy_before", "accuracy_pruned", "accuracy_after", "macs_before", "macs_after", "params_before", "params_after", "latency", "timings", "wall_seconds", "allocation", "layers"]
    (out / "resnet20_cifar10.json").write_text(json.dumps({**meta, "runs": [{k: r[k] for k in keys} for r in rows]}, indent=2))
    lines = [
        f"ResNet-20, CIFAR-10 (27k train subset, full 10k test), {args.budget}, {args.finetune_epochs} fine-tune epochs with distillation.",
        f"Baseline: top-1 {100 * base['accuracy']:.2f}% after {args.train_epochs} epochs. Machine: {meta['machine']}. Date: {meta['date']}.",
        "",
        "| method | top-1 before | pruned, not tuned | after fine-tune | MACs (M) | params (M) | torch ms (b=1) | onnxruntime ms (b=1) | score+allocate s | fine-tune s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency"]
        t = r["timings"]
        lines.append(
            f"| {r['method']}-{r['criterion']} | {100 * r['accuracy_before']:.2f} | {100 * r['accuracy_pruned']:.2f} | {100 * r['accuracy_after']:.2f} "
            f"| {r['macs_before'] / 1e6:.2f} → {r['macs_after'] / 1e6:.2f} | {r['params_before'] / 1e6:.3f} → {r['params_after'] / 1e6:.3f} "
            f"| {lat['before']['torch']:.2f} → {lat['after']['torch']:.2f} | {lat['before'].get('onnxruntime', float('nan')):.2f} → {lat['after'].get('onnxruntime', float('nan')):.2f} "
            f"| {t.get('importance', 0) + t.get('allocation', 0):.1f} | {t.get('finetune', 0):.0f} |"
        )
    (out / "resnet20_cifar10.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
