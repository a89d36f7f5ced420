"""Method-fidelity checks on a trained baseline (no fine-tuning): does each criterion measure what it claims?

(a) Molchanov et al. 2016 (arXiv 1611.06440, §3/Table 1): for a sample of channels per layer, the
    oracle loss change of removing the channel (its feature map zeroed wherever the group produces
    it, so the next layers see exactly what surgery would leave; mean cross-entropy on a fixed set
    of training batches, BN in eval mode) against each criterion's score: Spearman ρ per layer,
    their mean, and pooled over all sampled channels with the scores L2-normalised per layer
    (Molchanov 2017) and RMS-normalised (what the global allocator ranks since 2026-12-01).
    Criteria: the product's taylor, l1, chip, attribution and kfac,
    and Molchanov's mean-activation baseline (the mean of the rectified feature map). The oracle
    uses |ΔL| (the paper's "oracle-abs"); the signed ΔL is in the json too.
(b) CHIP's claim that its channel-independence ranking is robust to the input samples: CHIP scores
    from disjoint sets of calibration batches, compared pairwise per layer (Spearman, Kendall τ,
    overlap of the kept top half; chance overlap is 0.5), with Taylor scored the same way for reference.

Checks (c) allocators vs uniform and (d) attribution at high compression come from the suite's
runs (tables.py). Writes ``results/fidelity-<arch>.{json,md}`` and rewrites ``results/RESULTS.md``.

    .venv/bin/python -m bench.fidelity [--arch resnet20] [--channels-per-layer 16]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from autoprune.data import iterate_batches, load_data
from autoprune.export import write_json
from autoprune.graph import PruneGraph, build_graph
from autoprune.importance import get_criterion
from autoprune.importance.base import Batches, GroupScores, gradient_statistics, scatter_to_channels
from autoprune.importance.taylor import feature_points, summed_cross_entropy
from bench.baselines import load_baseline, train_baseline
from bench.common import load_average, machine, today, versions
from bench.settings import Settings
from bench.tables import fidelity_markdown, write_results
from solvers.global_rank import rms_normalised

ORACLE_CRITERIA = ("taylor", "l1", "activation", "chip", "attribution", "kfac")
STABILITY_CRITERIA = ("chip", "taylor")


# --- scores ----------------------------------------------------------------------------------


def mean_activation(graph: PruneGraph, batches: Batches) -> GroupScores:
    """Molchanov's activation baseline: mean of the rectified feature map, summed over coupled maps."""
    points = {g.id: feature_points(graph, g.id) for g in graph.groups}
    modules = set().union(*points.values())
    sums = gradient_statistics(graph.model, modules, batches, summed_cross_entropy, lambda a, g: a.clamp(min=0).mean(2))
    return {
        gid: scatter_to_channels(graph, gid, lambda m, dim, mods=mods: sums.get(m) if m in mods else None)
        for gid, mods in points.items()
    }


def criterion_scores(name: str, graph: PruneGraph, batches: Batches) -> GroupScores:
    if name == "activation":
        return mean_activation(graph, batches)
    criterion = get_criterion(name)
    return criterion.score(graph, batches if criterion.needs_data else None)


# --- (a) oracle ------------------------------------------------------------------------------


def mean_loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            total += float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
            count += len(y)
    return total / count


def zero_channels(indices: list[int]) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, indices] = 0
        return output

    return hook


def oracle(
    graph: PruneGraph, batches: list[tuple[torch.Tensor, torch.Tensor]], sampled: dict[str, list[int]]
) -> tuple[float, dict[str, list[float]]]:
    """The base loss, and the loss change of zeroing each sampled channel's feature maps."""
    model = graph.model.eval()
    base = mean_loss(model, batches)
    deltas: dict[str, list[float]] = {}
    for gid, channels in sampled.items():
        points = feature_points(graph, gid)
        maps = [(m, idxs, roots) for m, _dim, idxs, roots in graph.channel_map(gid) if m in points]
        deltas[gid] = []
        for channel in channels:
            hooks = [
                m.register_forward_hook(zero_channels([i for i, r in zip(idxs, roots, strict=True) if r == channel]))
                for m, idxs, roots in maps
            ]
            try:
                deltas[gid].append(mean_loss(model, batches) - base)
            finally:
                for h in hooks:
                    h.remove()
        print(f"  [{time.strftime('%H:%M:%S')}] oracle: {gid} ({len(channels)} channels)", flush=True)
    return base, deltas


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman ρ, or None when either side is constant (ρ undefined)."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def l2_normalised(scores: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(scores))
    return scores / norm if norm > 0 else scores


def oracle_check(graph: PruneGraph, batches: Batches, per_layer: int, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    sampled = {
        g.id: sorted(
            int(i)
            for i in (
                range(g.channels) if g.channels <= per_layer else rng.choice(g.channels, per_layer, replace=False)
            )
        )
        for g in graph.groups
    }
    fixed = list(batches())
    base, deltas = oracle(graph, fixed, sampled)
    oracle_seconds = time.perf_counter() - start
    scores, seconds = {}, {}
    for name in ORACLE_CRITERIA:
        begin = time.perf_counter()
        scores[name] = criterion_scores(name, graph, lambda: iter(fixed))
        seconds[name] = round(time.perf_counter() - begin, 2)
        print(f"  [{time.strftime('%H:%M:%S')}] scored {name} ({seconds[name]:.1f} s)", flush=True)
    layers = []
    for gid, channels in sampled.items():
        delta = np.array(deltas[gid])
        row: dict[str, Any] = {
            "group": gid, "channels": graph.group(gid).channels, "sampled": len(channels),
            "mean_abs_delta": float(np.abs(delta).mean()), "max_abs_delta": float(np.abs(delta).max()),
            "rho": {n: spearman(scores[n][gid][channels], np.abs(delta)) for n in ORACLE_CRITERIA},
            "rho_signed": {n: spearman(scores[n][gid][channels], delta) for n in ORACLE_CRITERIA},
        }  # fmt: skip
        layers.append(row)
    pooled_delta = np.concatenate([np.abs(deltas[g]) for g in sampled])
    summary = {}
    for name in ORACLE_CRITERIA:
        per_layer_rho = [r["rho"][name] for r in layers if r["rho"][name] is not None]
        signed = [r["rho_signed"][name] for r in layers if r["rho_signed"][name] is not None]
        normalised = np.concatenate([l2_normalised(scores[name][g])[c] for g, c in sampled.items()])
        rms = np.concatenate([rms_normalised(scores[name][g])[c] for g, c in sampled.items()])
        summary[name] = {
            "mean_rho": float(np.mean(per_layer_rho)) if per_layer_rho else None,
            "mean_rho_signed": float(np.mean(signed)) if signed else None,
            "pooled_rho_l2_normalised": spearman(normalised, pooled_delta),  # Molchanov 2017's normalisation
            "pooled_rho_rms_normalised": spearman(rms, pooled_delta),  # the global allocator's (since 2026-12-01)
            "layers": len(per_layer_rho),
            "seconds": seconds[name],
        }
    return {
        "images": sum(len(y) for _, y in fixed),
        "channels_per_layer": per_layer,
        "base_loss": base,
        "sampled_channels": int(sum(len(c) for c in sampled.values())),
        "oracle_seconds": round(oracle_seconds, 1),
        "layers": layers,
        "summary": summary,
        "deltas": deltas,
        "sampled": sampled,
    }


# --- (b) ranking stability -------------------------------------------------------------------


def top_overlap(a: np.ndarray, b: np.ndarray, keep: int) -> float:
    top_a = set(np.argsort(-a, kind="stable")[:keep].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:keep].tolist())
    return len(top_a & top_b) / keep


def stability_check(graph: PruneGraph, data: Any, splits: int, per_split: int, seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed + 1)  # other batches than the oracle's
    batches = list(iterate_batches(data, "train", 64, shuffle=True, generator=generator, limit=splits * per_split))
    if len(batches) < splits * per_split:
        raise SystemExit(f"the train split has {len(batches)} batches of 64; the check needs {splits * per_split}")
    chunks = [batches[i * per_split : (i + 1) * per_split] for i in range(splits)]
    out: dict[str, Any] = {"splits": splits, "images_per_split": per_split * 64, "criteria": {}}
    for name in STABILITY_CRITERIA:
        begin = time.perf_counter()
        runs = [criterion_scores(name, graph, lambda chunk=chunk: iter(chunk)) for chunk in chunks]
        layers = []
        for g in graph.groups:
            keep = math.ceil(g.channels / 2)
            pairs = list(itertools.combinations(range(splits), 2))
            rho = [spearman(runs[i][g.id], runs[j][g.id]) for i, j in pairs]
            tau = [float(stats.kendalltau(runs[i][g.id], runs[j][g.id]).statistic) for i, j in pairs]
            overlap = [top_overlap(runs[i][g.id], runs[j][g.id], keep) for i, j in pairs]
            layers.append({
                "group": g.id, "channels": g.channels,
                "spearman": float(np.mean([r for r in rho if r is not None])) if any(r is not None for r in rho) else None,
                "kendall": float(np.nanmean(tau)), "top_half_overlap": float(np.mean(overlap)),
            })  # fmt: skip
        out["criteria"][name] = {
            "layers": layers,
            "mean_spearman": float(np.mean([r["spearman"] for r in layers if r["spearman"] is not None])),
            "mean_kendall": float(np.mean([r["kendall"] for r in layers])),
            "mean_top_half_overlap": float(np.mean([r["top_half_overlap"] for r in layers])),
            "seconds": round(time.perf_counter() - begin, 1),
        }
    return out


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fidelity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--oracle-batches", type=int, default=8, help="batches of 64 training images for (a)")
    parser.add_argument("--channels-per-layer", type=int, default=16, help="channels sampled per group for (a)")
    parser.add_argument("--splits", type=int, default=4, help="disjoint calibration sets for (b)")
    parser.add_argument("--split-batches", type=int, default=4, help="batches of 64 per set for (b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke test on the --quick data subset and baselines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings.make("quick" if args.quick else "cpu")
    weights, base = train_baseline(settings, args.arch)
    data = load_data(settings.data_ref)
    model = load_baseline(args.arch, weights, data)
    graph = build_graph(model, torch.zeros(1, *data.input_shape))
    batches = list(
        iterate_batches(
            data,
            "train",
            64,
            shuffle=True,
            generator=torch.Generator().manual_seed(args.seed),
            limit=args.oracle_batches,
        )
    )
    load_before = load_average()
    start = time.perf_counter()
    result = {
        "arch": args.arch,
        "code_version": settings.code_version,
        "machine": machine(),
        "date": today(),
        "versions": versions(),
        "baseline": {"weights": weights.name, "accuracy": base["accuracy"], "recipe": base["recipe"]},
        "args": vars(args),
        "oracle": oracle_check(graph, lambda: iter(batches), args.channels_per_layer, args.seed),
        "stability": stability_check(graph, data, args.splits, args.split_batches, args.seed),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["load_average"] = max(load_before, load_average())
    settings.results.mkdir(parents=True, exist_ok=True)
    write_json(settings.results / f"fidelity-{args.arch}.json", result)
    text = "\n".join(fidelity_markdown(result)) + "\n"
    (settings.results / f"fidelity-{args.arch}.md").write_text(text)
    print(text)
    print(f"wrote {write_results(settings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
