"""Which fine-tune recipe earns its cost (issue #22, deliverable 4): one cut, several recipes, same epochs.

A trained network is cut once by the default job (``--finetune-epochs 0``); the same cut is then
fine-tuned by each recipe for the same number of epochs, in the job's own loop
(``autoprune.finetune``), BN re-estimated afterwards as the job's settle stage does, and scored on
the test split. Wall and CPU seconds of each fine-tune are recorded. One seed; the recipes run
one after another on the same machine, so the time column is indicative (the CPU column less so
to a neighbour's load).

    python -m bench.finetune_study --weights resnet20.safetensors --data npz:cifar10/ --epochs 3
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from autoprune.export import load_pruned
from autoprune.finetune import evaluate, finetune
from autoprune.pipeline import run
from autoprune.prune_step import calibration, reestimate_bn
from autoprune.spec import Budget, FinetuneConfig, JobSpec
from autoprune.stages import load_model_and_data
from bench.common import load_average, machine, today, versions

RESULTS = Path(__file__).parent / "results"

RECIPES: dict[str, dict[str, Any]] = {
    "old default (lr 0.01, b64, distil 0.7)": dict(lr=0.01, batch_size=64, distill=True),
    "plain (Nesterov lr 0.05, b128, no distil)": dict(lr=0.05, batch_size=128, nesterov=True, distill=False),
    "plain + distil 0.7": dict(lr=0.05, batch_size=128, nesterov=True, distill=True),
    "plain, lr 0.1": dict(lr=0.1, batch_size=128, nesterov=True, distill=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--budget", default="flops=0.5")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoprune-finetune-study"))
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES))
    args = parser.parse_args()
    spec = JobSpec(
        arch=args.arch, weights=str(args.weights), data=args.data, budget=Budget.parse(args.budget),
        finetune=FinetuneConfig(epochs=0), exports=(), out_dir=str(args.work / "cut"),
    )  # fmt: skip
    started = time.perf_counter()
    report = run(spec).to_dict()
    cut_seconds = time.perf_counter() - started
    teacher, data = load_model_and_data(spec)
    cut = load_pruned(args.work / "cut" / "spec.json", args.work / "cut" / "model.safetensors")
    rows = []
    for name in args.recipes:
        model = copy.deepcopy(cut)
        cfg = FinetuneConfig(epochs=args.epochs, **RECIPES[name])
        wall, cpu = time.perf_counter(), time.process_time()
        finetune(model, data, cfg, teacher=teacher, seed=spec.seed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        reestimate_bn(model, calibration(data, spec.calibration_batches, spec.seed), torch.device("cpu"))
        top1 = evaluate(model, data).accuracy
        rows.append({"recipe": name, "config": cfg.to_dict(), "top1": top1, "wall_s": wall, "cpu_s": cpu})
        print(json.dumps(rows[-1]), flush=True)
    out = {
        "date": today(), "machine": machine(), "load_start": load_average(), "versions": versions(),
        "arch": args.arch, "budget": args.budget, "epochs": args.epochs, "cut_seconds": cut_seconds,
        "accuracy_before": report["accuracy_before"], "accuracy_cut": report["accuracy_pruned"],
        "flops_ratio": report["flops_ratio"], "rows": rows,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "finetune_study.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["| recipe | top-1 after | wall s | CPU s |", "|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {100 * r['top1']:.2f}% | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |" for r in rows]
    (RESULTS / "finetune_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
