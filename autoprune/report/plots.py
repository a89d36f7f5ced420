"""Figures of one pruning report: per-layer widths and MACs, the search or allocation, fine-tuning.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, never through
pyplot: no global backend switch and no figure registry, so this is safe inside workers and
threads. Each ``*_figure`` function takes the report dict (``pipeline.run``'s) and returns None
when the report has nothing to draw.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from autoprune.budget import Budget

Layers = Sequence[Mapping[str, Any]]

BEFORE, AFTER = "0.55", "C0"  # unpruned grey, pruned blue: the same in every figure
DPI = 110
HEADROOM = 1.3  # allocation figure: y range over the data's, leaving a band for the legend
MAX_TICK_LABELS = 90  # beyond this many layers, only every k-th layer is named on the axis

# Per-group values an allocator reports, how the allocation figure labels and scales them.
GROUP_VALUES = {
    "layer_weights": ("layer weight α (nHSIC), ÷ max", "linear"),
    "group_median_score": ("median saliency of the group's channels", "log"),
    "saliency_per_cost": ("removable saliency ÷ the cost it carries", "log"),
}


def short_name(layer: str) -> str:
    """``layer2.0.downsample.0`` → ``2.0.ds``: tick labels that fit under a 20-layer axis."""
    return layer.replace("layer", "").replace("downsample.0", "ds")


def draw_widths(ax: Axes, before: Sequence[float], after: Sequence[float]) -> None:
    """Output channels per layer before (dashed grey) and after pruning, on positions 0..n-1."""
    x = range(len(before))
    ax.plot(x, before, color=BEFORE, linestyle="--", linewidth=1.5, label="unpruned")
    ax.plot(x, after, color=AFTER, marker="o", markersize=3, label="pruned")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def report_figures(report: Mapping[str, Any]) -> dict[str, Figure]:
    """The figures this report has data for, by file name, in page order."""
    search = search_figure(report)
    figures = {
        "widths.png": widths_figure(report),
        "macs.png": macs_figure(report),
        "search.png": search if search is not None else allocation_figure(report),
        "finetune.png": finetune_figure(report),
    }
    return {name: fig for name, fig in figures.items() if fig is not None}


def pruned_layers(layers: Layers) -> list[Mapping[str, Any]]:
    """Every layer but linear ones that keep their outputs (the classifier is never pruned)."""
    return [r for r in layers if not (r["kind"] == "Linear" and r["channels_before"] == r["channels_after"])]


def widths_figure(report: Mapping[str, Any]) -> Figure | None:
    rows = pruned_layers(report.get("layers") or [])
    if not rows:
        return None
    fig, ax = _single(len(rows))
    draw_widths(ax, [r["channels_before"] for r in rows], [r["channels_after"] for r in rows])
    kept = sum(r["channels_after"] for r in rows) / max(1, sum(r["channels_before"] for r in rows))
    ax.set_title(f"Output channels per layer ({kept:.0%} of all channels kept)")
    ax.set_ylabel("output channels")
    _layer_ticks(ax, [r["name"] for r in rows])
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def macs_figure(report: Mapping[str, Any]) -> Figure | None:
    rows = report.get("layers") or []
    if not rows:
        return None
    before = np.array([r["macs_before"] for r in rows], dtype=float)
    after = np.array([r["macs_after"] for r in rows], dtype=float)
    scale, unit = unit_of(before.max())
    fig, ax = _single(len(rows))
    x = np.arange(len(rows))
    ax.bar(x, before / scale, width=0.8, color=BEFORE, alpha=0.45, label="unpruned")
    ax.bar(x, after / scale, width=0.5, color=AFTER, label="pruned")
    total_before, total_after = before.sum(), after.sum()
    ratio = total_after / total_before if total_before else float("nan")
    ax.set_title(f"MACs per layer: {total_before / scale:.4g} {unit} → {total_after / scale:.4g} {unit} ({ratio:.3f}×)")
    ax.set_ylabel(f"MACs per sample ({unit})")
    ax.grid(True, axis="y", alpha=0.3)
    _layer_ticks(ax, [r["name"] for r in rows])
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def search_figure(report: Mapping[str, Any]) -> Figure | None:
    """Evolution: every candidate's cost against its proxy accuracy, and the score by trial."""
    steps = [(i, d) for i, d in enumerate(report.get("allocation") or [], 1) if d.get("candidates")]
    if not steps:
        return None
    budget = Budget.from_dict(report["budget"])
    fig = Figure(figsize=(11, 4.0), dpi=DPI)
    cost_ax, trial_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    many = len(steps) > 1
    for n, (step, diag) in enumerate(steps):
        color, label = f"C{n}", (f"step {step}" if many else "candidates")
        target = float(diag.get("target", 1.0))  # the solver's budget, in the budget's own unit
        scored = [r for r in diag["candidates"] if r["score"] is not None]
        rejected = [r for r in diag["candidates"] if r["score"] is None]
        if not scored:
            continue
        score = [r["score"] for r in scored]
        trials = [r["trial"] for r in scored]
        cost_ax.scatter(
            [r["cost_over_budget"] * target for r in scored], score, s=16, color=color, alpha=0.7, label=label
        )
        trial_ax.scatter(trials, score, s=12, color=color, alpha=0.6)
        trial_ax.plot(
            trials, np.maximum.accumulate(score), color=color, label=f"best so far{f', step {step}' if many else ''}"
        )
        if rejected:  # drawn along the bottom: they have a cost but no score
            rejected_cost = [r["cost_over_budget"] * target for r in rejected]
            cost_ax.scatter(
                rejected_cost, [min(score)] * len(rejected), marker="x", s=16, color="0.6", label="rejected"
            )
        first = scored[0]  # the uniform allocation, enqueued as trial 0
        uniform_label = "uniform (first trial)" if n == 0 else None
        cost_ax.scatter(
            first["cost_over_budget"] * target,
            first["score"],
            marker="s",
            s=44,
            facecolor="none",
            edgecolor="k",
            label=uniform_label,
        )
        for best in (r for r in scored if r["best"]):
            cost_ax.scatter(
                best["cost_over_budget"] * target,
                best["score"],
                marker="*",
                s=170,
                color="C3",
                zorder=3,
                label="chosen" if n == 0 else None,
            )
        cost_ax.axvline(target, color="k", linestyle=":", linewidth=1, label="budget" if n == 0 else None)
    cost_ax.set_xlabel(_cost_label(budget))
    cost_ax.set_ylabel("proxy top-1 (adaptive BN, held-out train)")
    cost_ax.set_title("Candidates: cost vs proxy accuracy")
    trial_ax.set_xlabel("trial")
    trial_ax.set_title("Proxy accuracy by trial")
    for ax, where in ((cost_ax, "best"), (trial_ax, "lower right")):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc=where)
    fig.tight_layout()
    return fig


def allocation_figure(report: Mapping[str, Any]) -> Figure | None:
    """ITPruner / NAP / HALP: keep ratio of every layer, and the solver's per-group value at its root layer."""
    values = [
        (i, d, key) for i, d in enumerate(report.get("allocation") or [], 1) for key in GROUP_VALUES if d.get(key)
    ]
    rows = pruned_layers(report.get("layers") or [])
    if not values or not rows:
        return None
    names = [r["name"] for r in rows]
    position = {name: i for i, name in enumerate(names)}
    fig, ax = _single(len(rows))
    ratio = [r["channels_after"] / r["channels_before"] if r["channels_before"] else 0.0 for r in rows]
    ax.bar(range(len(rows)), ratio, width=0.7, color=AFTER, alpha=0.35, label="kept channels ÷ unpruned")
    ax.set_ylim(0, HEADROOM)  # the band above 1 holds the legend
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("keep ratio")
    twin = ax.twinx()
    many = len(values) > 1
    shown: list[float] = []
    for n, (step, diag, key) in enumerate(values):
        label, scale = GROUP_VALUES[key]
        points = [(position[g], v) for g, v in diag[key].items() if g in position and v is not None and v > 0]
        if not points:
            continue
        x, y = zip(*points, strict=True)
        name = f"{label}, step {step}" if many else label
        twin.plot(x, y, linestyle="none", marker="D", markersize=5, color=f"C{n + 1}", label=name)
        twin.set_yscale(scale)
        twin.set_ylabel(label)
        shown.extend(y)
        if diag.get("threshold") and key == "group_median_score":
            twin.axhline(diag["threshold"], color=f"C{n + 1}", linestyle=":", linewidth=1, label="ranking threshold")
            shown.append(diag["threshold"])
    if shown:  # the same headroom on the right axis: the data in the lower 1/HEADROOM
        if twin.get_yscale() == "log":
            low, high = min(shown) / 1.5, max(shown) * 1.5
            twin.set_ylim(low, low * (high / low) ** HEADROOM)
        else:
            twin.set_ylim(0, max(shown) * 1.05 * HEADROOM)
    title = f"{report.get('method', '')} allocation: keep ratio per layer and the solver's per-group value"
    ax.set_title(title, parse_math=False)
    _layer_ticks(ax, names)
    handles = ax.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    twin.legend(handles[0] + twin_handles[0], handles[1] + twin_handles[1], fontsize=7, loc="upper left", ncol=3)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def finetune_figure(report: Mapping[str, Any]) -> Figure | None:
    """Training loss, training top-1 and learning rate per fine-tuning epoch, over all steps."""
    finetune = report.get("finetune") or {}
    history = finetune.get("history") or []
    if not history:
        return None
    distill = (finetune.get("config") or {}).get("distill")
    x = np.arange(1, len(history) + 1)
    fig = Figure(figsize=(11, 3.2), dpi=DPI)
    axes = fig.subplots(1, 3)
    series = (
        ("loss", "training loss" + (" (with distillation)" if distill else ""), 1.0),
        ("train_accuracy", "training top-1 (%)", 100.0),
        ("lr", "learning rate (end of epoch)", 1.0),
    )
    for ax, (key, title, factor) in zip(axes, series, strict=True):
        ax.plot(x, [h[key] * factor for h in history], color=AFTER, marker="o", markersize=4)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch" if len({h.get("step", 1) for h in history}) == 1 else "epoch (all steps)")
        ax.grid(True, alpha=0.3)
        ax.set_xticks(x if len(x) <= 20 else x[:: math.ceil(len(x) / 20)])
        for i in range(1, len(history)):  # iterative schedule: a cut between steps
            if history[i].get("step") != history[i - 1].get("step"):
                ax.axvline(i + 0.5, color="0.5", linestyle=":", linewidth=1)
    fig.tight_layout()
    return fig


def _single(layers: int) -> tuple[Figure, Axes]:
    """One axis whose width grows with the number of layers named under it."""
    fig = Figure(figsize=(min(16.0, max(7.0, 2.0 + 0.2 * layers)), 4.2), dpi=DPI)
    return fig, fig.subplots()


def _layer_ticks(ax: Axes, names: Sequence[str]) -> None:
    every = math.ceil(len(names) / MAX_TICK_LABELS)
    ticks = list(range(0, len(names), every))
    labels = [_tick(names[i]) for i in ticks]  # names come from the user's model: no mathtext ($…$) parsing
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7 if len(ticks) <= 40 else 6, parse_math=False)
    ax.set_xlim(-0.6, len(names) - 0.4)


def _tick(name: str, limit: int = 24) -> str:
    short = short_name(name)
    return short if len(short) <= limit else "…" + short[-(limit - 1) :]


def unit_of(value: float) -> tuple[float, str]:
    """The SI prefix to show a count in: (1e6, "M") for 20 412 345."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return scale, unit
    return 1.0, ""


def _cost_label(budget: Budget) -> str:
    if budget.measured:
        return f"predicted latency (ms, {budget.runtime}, batch {budget.batch_size})"
    return f"{'MACs' if budget.kind == 'flops' else 'params'} ÷ unpruned"
