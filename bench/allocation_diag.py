"""Where each allocator puts its cuts, and what that costs before and after a short fine-tune.

For one trained model and one MACs budget, every method (allocator:criterion) is run through the
product's own pieces (scoring on the calibration batches, ``allocate``, the cut with NAP's OBS
compensation where the criterion gives curvature, BatchNorm re-estimated on the calibration
batches: adaptive BN), then optionally fine-tuned by the same short recipe for all. ``random``
as a criterion scores channels at random (seeded): with ``uniform`` it is the floor any method
must beat. Prints the per-group keep ratios and a summary table (test top-1). Issue #22.

    .venv/bin/python -m bench.allocation_diag --weights bench/.cache/resnet20-cifar10-e15-s0.safetensors
    .venv/bin/python -m bench.allocation_diag --weights W --budget 0.333 --finetune-steps 211 --methods "nap(per_cost=False):kfac;uniform:l1"

``--weights`` takes a safetensors file or a baseline's ``.train.pt`` (weights of the last epoch).
Single-threaded by default (``--threads``): the machine is shared.
"""

from __future__ import annotations

import argparse
import ast
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune import catalog
from autoprune.allocate import ProblemInputs, allocate
from autoprune.budget import Budget
from autoprune.compensate import compensated_cut
from autoprune.data import ImageData, load_data
from autoprune.finetune import evaluate, finetune
from autoprune.graph import PruneGraph, build_graph
from autoprune.importance import GroupScores, get_criterion
from autoprune.measure import count_cost
from autoprune.models import create_model, load_weights
from autoprune.prune_step import calibration, reestimate_bn
from autoprune.spec import FinetuneConfig
from autoprune.surgery import apply_plan, make_plan
from bench.common import CIFAR
from solvers import Allocator

METHODS = "uniform:random;uniform:l1;global:taylor;nap:kfac;itpruner:l1;halp:taylor"


def load_model(arch: str, weights: Path, data: ImageData) -> nn.Module:
    model = create_model(arch, num_classes=data.num_classes, in_channels=data.input_shape[0])
    if weights.suffix == ".pt":  # a baseline still training: its last finished epoch
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["weights"])
    else:
        load_weights(model, weights)
    return model.eval()


def random_scores(graph: PruneGraph, seed: int) -> GroupScores:
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.channels) for g in graph.groups}


def options(text: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name(option=value, ...)`` (values as Python literals) → (name, options)."""
    name, _, rest = text.partition("(")
    kwargs = {}
    for item in filter(None, rest.rstrip(")").split(",")):
        key, _, value = item.partition("=")
        kwargs[key.strip()] = ast.literal_eval(value.strip())
    return name.strip(), kwargs


def make_allocator(text: str) -> Allocator:
    """An allocator from ``name`` or ``name(option=value, ...)``, e.g. ``nap(per_cost=False)``."""
    name, kwargs = options(text)
    return catalog.allocator(name)(**kwargs)


def prune(
    model: nn.Module, example: torch.Tensor, method: str, budget: float, batches: Any, seed: int, compensate: bool
) -> tuple[nn.Module, dict[str, int], dict[str, int], dict[str, Any]]:
    """The cut model (BN re-estimated), each group's kept and total channels, and the allocator's diagnostics."""
    allocator_text, criterion_text = method.split(":", 1)
    criterion_name, criterion_options = options(criterion_text)
    graph = build_graph(model, example)
    factors = None
    if criterion_name == "random":
        scores = random_scores(graph, seed)
    else:
        criterion = (
            catalog.criterion_class(criterion_name)(**criterion_options)
            if criterion_options
            else get_criterion(criterion_name)
        )
        if criterion.provides_curvature and compensate:
            scores, factors = criterion.score_with_curvature(graph, batches)
        else:
            scores = criterion.score(graph, batches if criterion.needs_data else None)
    inputs = ProblemInputs.measure(model, graph, scores, example, batches=batches, seed=seed)
    allocation = allocate(make_allocator(allocator_text), inputs, Budget.parse(f"flops={budget}"))
    plan = make_plan(graph, scores, allocation.keep)
    if factors is not None:
        pruned = compensated_cut(model, graph, factors, plan, example)
    else:
        pruned = apply_plan(model, example, plan)
    reestimate_bn(pruned, batches, torch.device("cpu"))
    total = {g.id: g.channels for g in graph.groups}
    return pruned, {gid: int(allocation.keep.get(gid, n)) for gid, n in total.items()}, total, allocation.diagnostics


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = load_data(f"npz:{args.data}")
    model = load_model(args.arch, Path(args.weights), data)
    example = torch.zeros(1, *data.input_shape)
    base = count_cost(model, example)
    batches = calibration(data, args.calibration_batches, args.seed)
    print(f"{args.arch} unpruned: test top-1 {evaluate(model, data).accuracy:.4f}", flush=True)
    rows = []
    for method in args.methods.split(";"):
        start = time.perf_counter()
        pruned, kept, total, diagnostics = prune(
            model, example, method, args.budget, batches, args.seed, not args.no_obs_compensation
        )
        cost = count_cost(pruned, example)
        row: dict[str, Any] = {
            "method": method, "macs": cost.macs / base.macs, "params": cost.params / base.params,
            "cut": evaluate(pruned, data).accuracy, "ratios": {g: kept[g] / total[g] for g in total},
            "kept": kept, "total": total, "diagnostics": diagnostics,
        }  # fmt: skip
        if args.finetune_steps:
            cfg = FinetuneConfig(epochs=1, lr=0.01, batch_size=128, max_steps_per_epoch=args.finetune_steps)
            finetune(pruned, data, cfg, teacher=copy.deepcopy(model), seed=args.seed)
            reestimate_bn(pruned, batches, torch.device("cpu"))
            row["tuned"] = evaluate(pruned, data).accuracy
        row["seconds"] = time.perf_counter() - start
        print(
            f"  {method}: MACs {row['macs']:.3f}, params {row['params']:.3f}, top-1 after the cut "
            f"{row['cut']:.4f}" + (f", after fine-tune {row['tuned']:.4f}" if "tuned" in row else "")
            + f" ({row['seconds']:.0f} s)",
            flush=True,
        )  # fmt: skip
        rows.append(row)
    return rows


def tables(rows: list[dict[str, Any]], budget: float, finetune_steps: int) -> str:
    """Markdown: the per-group keep ratios, then the summary."""
    names = [r["method"] for r in rows]
    groups = list(rows[0]["total"])
    lines = ["| group | channels | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for g in groups:
        cells = " | ".join(f"{r['kept'][g]} ({r['ratios'][g]:.2f})" for r in rows)
        lines.append(f"| {g} | {rows[0]['total'][g]} | {cells} |")
    tuned = f"top-1 after a {finetune_steps}-step fine-tune" if finetune_steps else None
    lines += ["", f"| method | MACs kept (target {budget}) | params kept | top-1 after the cut (adaptive BN) |"
              + (f" {tuned} |" if tuned else ""), "|---|---|---|---|" + ("---|" if tuned else "")]  # fmt: skip
    for r in rows:
        extra = f" {r['tuned']:.2%} |" if "tuned" in r else ""
        lines.append(f"| {r['method']} | {r['macs']:.3f} | {r['params']:.3f} | {r['cut']:.2%} |{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a baseline's .safetensors (or .train.pt)")
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--data", default=str(CIFAR), help="folder of cifar10-{train,test}.npz")
    parser.add_argument("--budget", type=float, default=0.5, help="fraction of the unpruned MACs")
    parser.add_argument(
        "--methods",
        default=METHODS,
        help="';'-separated allocator:criterion, either with options: nap(per_cost=False):kfac(damping=0.1)",
    )
    parser.add_argument(
        "--no-obs-compensation", action="store_true", help="cut kfac-scored methods without NAP's OBS update"
    )
    parser.add_argument(
        "--calibration-batches", type=int, default=8, help="of 64 training images (the product's default)"
    )
    parser.add_argument(
        "--finetune-steps", type=int, default=0, help="steps of batch 128 (211 = one epoch of the 27k subset)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args)
    print()
    print(tables(rows, args.budget, args.finetune_steps))


if __name__ == "__main__":
    main()
