"""Figures for the benchmarks: per-layer widths of pruned models (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a benchmark machine

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from autoprune.report.plots import draw_widths, short_name  # noqa: E402  (the job report draws the same panels)

Layers = Sequence[Mapping[str, Any]]


def width_plot(runs: Mapping[str, Layers], path: str | Path, *, title: str = "", columns: int = 4) -> None:
    """Output channels of every conv layer before pruning and after: one small panel per run.

    ``runs`` maps a label (``global:taylor``) to a report's ``layers`` list (each with ``name``,
    ``kind``, ``channels_before``, ``channels_after``); linear layers are left out, as the
    classifier is never pruned. Panels share both axes, so widths compare across methods; a dozen
    lines on one axis were unreadable.
    """
    if not runs:
        raise ValueError("runs must name at least one run to plot")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, not {columns}")
    convs = {label: [row for row in layers if row["kind"] != "Linear"] for label, layers in runs.items()}
    first = next(iter(convs.values()))
    names = [row["name"] for row in first]
    before = [row["channels_before"] for row in first]
    x = list(range(len(names)))  # draw_widths plots layer i at x = i
    ncols = min(columns, len(convs))
    nrows = math.ceil(len(convs) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 2.6 * nrows + 1.2), sharex=True, sharey=True, squeeze=False
    )
    for ax, (label, layers) in zip(axes.flat, convs.items()):
        after = {row["name"]: row["channels_after"] for row in layers}
        draw_widths(ax, before, [after.get(n, float("nan")) for n in names])
        ax.set_title(label, fontsize=10)
    for ax in axes.flat[len(convs) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("output channels")
    for col in range(ncols):  # tick labels under the lowest visible panel of each column
        rows = [r for r in range(nrows) if r * ncols + col < len(convs)]
        axes[rows[-1], col].tick_params(labelbottom=True)
        axes[rows[-1], col].set_xticks(x, [short_name(n) for n in names], rotation=90, fontsize=6)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title}\n(stage.block.conv; ds = shortcut projection)" if title else "")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
