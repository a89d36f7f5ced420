"""The claims and fidelity checks, computed from the runs' and the fidelity script's json.

Comparisons are paired by seed: a cell is set against its reference only on seeds both have finished.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.cache import short
from bench.cells import ARCH_TITLES, Row, cells, delta_text, mean, paired_deltas, pct, verdict

L1_CRITERIA = ("l1", "magnitude")  # the L1 criterion, ours and Torch-Pruning's


# --- claims from the suite's runs ------------------------------------------------------------


def taylor_vs_l1(rows: Sequence[Row]) -> list[str]:
    """Same allocator, Taylor against L1 (Torch-Pruning's magnitude counts as L1)."""
    by_cell = cells(rows)
    lines = []
    for label, name in by_cell:
        method, _, criterion = name.partition(":")
        if criterion != "taylor":
            continue
        l1 = next(
            (by_cell[(label, f"{method}:{c}")] for c in L1_CRITERIA if by_cell.get((label, f"{method}:{c}"))), None
        )
        deltas = paired_deltas(by_cell[(label, name)], l1 or [])
        if deltas:
            lines.append(
                f"- {label}, {method} allocation: Taylor {pct(by_cell[(label, name)], 'accuracy_after')} vs L1 "
                f"{pct(l1, 'accuracy_after')} ({delta_text(deltas)}): {verdict(mean(deltas), 'Taylor ahead', 'L1 ahead')}"
            )
    return lines or ["- no allocator was run with both criteria"]


def allocators_vs_uniform(rows: Sequence[Row]) -> list[str]:
    """Fidelity check (c): each automatic allocator against uniform-L1 at the same MACs budget, paired by seed."""
    by_cell = cells([r for r in rows if r["kind"] == "main"])
    labels = list(dict.fromkeys(label for label, _ in by_cell))
    names = [n for n in dict.fromkeys(name for _, name in by_cell) if n != "uniform:l1"]
    lines = [
        "| method | " + " | ".join(f"{label}: top-1 | Δ vs uniform:l1" for label in labels) + " |",
        "|---|" + "---|---|" * len(labels),
    ]
    wins = {label: [0, 0, 0, 0] for label in labels}  # ahead on average, compared, ahead in every seed, with ≥ 2 seeds
    for name in names:
        parts = []
        for label in labels:
            group, ref = by_cell.get((label, name), []), by_cell.get((label, "uniform:l1"), [])
            deltas = paired_deltas(group, ref)
            if deltas and not name.startswith("uniform:"):
                tally = wins[label]
                tally[0] += mean(deltas) > 0
                tally[1] += 1
                if len(deltas) > 1:
                    tally[2] += min(deltas) > 0
                    tally[3] += 1
            parts.append(f"{pct(group, 'accuracy_after')} | {delta_text(deltas)}")
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    lines.append("")
    for label, (ahead, compared, always, seeded) in wins.items():
        if compared:
            every = f"; of the {seeded} run with several seeds, {always} ahead in every seed" if seeded else ""
            lines.append(f"- {label}: {ahead} of {compared} non-uniform allocators above uniform:l1 on average{every}")
    return lines


def high_compression(rows: Sequence[Row]) -> list[str]:
    """Fidelity check (d): attribution against L1 under the same allocator, right after the cut and after fine-tuning."""
    by_cell = cells([r for r in rows if r["kind"] == "high"])
    if not any(by_cell.values()):
        return ["No high-compression run finished."]
    lines = [
        "| budget | method | seeds | MACs ratio | params (M) | pruned, not tuned | Δ vs L1 | after fine-tune | Δ vs L1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (label, name), group in by_cell.items():
        method = name.partition(":")[0]
        ref = by_cell.get((label, f"{method}:l1"), [])
        same = name == f"{method}:l1"
        lines.append(
            f"| {label} | {name} | {len(group)} | {mean([r['flops_ratio'] for r in group]):.3f} "
            f"| {mean([r['params_after'] for r in group]) / 1e6:.3f} | {pct(group, 'accuracy_pruned')} "
            f"| {'' if same else delta_text(paired_deltas(group, ref, 'accuracy_pruned'))} "
            f"| {pct(group, 'accuracy_after')} | {'' if same else delta_text(paired_deltas(group, ref))} |"
        )
    return lines


# --- fidelity (a), (b) -----------------------------------------------------------------------


def rho(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def fidelity_markdown(result: Mapping[str, Any]) -> list[str]:
    oracle, stability = result["oracle"], result["stability"]
    names = list(oracle["summary"])
    title = ARCH_TITLES.get(result["arch"], result["arch"])
    lines = [
        f"### (a) Criteria vs the oracle loss change (Molchanov et al. 2016), {title}",
        "",
        f"Baseline {result['baseline']['weights']} (top-1 {100 * result['baseline']['accuracy']:.2f}%). Oracle: "
        f"mean cross-entropy change when a channel's feature maps are zeroed, on {oracle['images']} training "
        f"images (BN in eval mode; base loss {oracle['base_loss']:.4f}); {oracle['sampled_channels']} channels, "
        f"at most {oracle['channels_per_layer']} per layer (seed {result['args']['seed']}). Criteria scored on the "
        "same images. Spearman ρ of each criterion with |ΔL| per layer; *mean* is over layers, *pooled* ranks all "
        "sampled channels together with the scores L2-normalised per layer (Molchanov 2017) and, since 2026-12-01, "
        "RMS-normalised (the global allocator's ranking).",
        "",
        "| layer | channels | sampled | mean \\|ΔL\\| | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for row in oracle["layers"]:
        lines.append(
            f"| {row['group']} | {row['channels']} | {row['sampled']} | {row['mean_abs_delta']:.4f} | "
            + " | ".join(rho(row["rho"][n]) for n in names)
            + " |"
        )
    summary = oracle["summary"]
    lines += [
        "| **mean over layers** | | | | " + " | ".join(f"**{rho(summary[n]['mean_rho'])}**" for n in names) + " |",
        "| pooled, L2-normalised | | | | "
        + " | ".join(rho(summary[n]["pooled_rho_l2_normalised"]) for n in names)
        + " |",
        *(  # fidelity runs before 2026-12-01 did not compute it
            [
                "| pooled, RMS-normalised (`global`) | | | | "
                + " | ".join(rho(summary[n]["pooled_rho_rms_normalised"]) for n in names)
                + " |"
            ]
            if all("pooled_rho_rms_normalised" in summary[n] for n in names)
            else []
        ),
        "| mean ρ with signed ΔL | | | | " + " | ".join(rho(summary[n]["mean_rho_signed"]) for n in names) + " |",
        "| scoring s | | | | " + " | ".join(f"{summary[n]['seconds']:.1f}" for n in names) + " |",
        "",
        f"Oracle: {oracle['oracle_seconds']:.0f} s.",
        "",
        f"### (b) Ranking stability across disjoint calibration sets, {title}",
        "",
        f"{stability['splits']} disjoint sets of {stability['images_per_split']} training images; each criterion "
        "scored on each set; per layer, the mean over all pairs of sets of Spearman ρ, Kendall τ and the overlap "
        "of the kept top half (chance: 0.50).",
        "",
    ]
    crits = list(stability["criteria"])
    lines += [
        "| layer | channels | " + " | ".join(f"{c} ρ | {c} τ | {c} top-half overlap" for c in crits) + " |",
        "|---|---|" + "---|---|---|" * len(crits),
    ]
    per_layer = zip(*(stability["criteria"][c]["layers"] for c in crits), strict=True)
    for layers in per_layer:
        lines.append(
            f"| {layers[0]['group']} | {layers[0]['channels']} | "
            + " | ".join(f"{rho(r['spearman'])} | {r['kendall']:+.2f} | {r['top_half_overlap']:.2f}" for r in layers)
            + " |"
        )
    lines.append(
        "| **mean** | | "
        + " | ".join(
            f"**{stability['criteria'][c]['mean_spearman']:+.2f}** | **{stability['criteria'][c]['mean_kendall']:+.2f}** "
            f"| **{stability['criteria'][c]['mean_top_half_overlap']:.2f}**"
            for c in crits
        )
        + " |"
    )
    lines += [
        "",
        f"Machine: {result['machine']}; {result['date']}; {result['seconds']:.0f} s in all "
        f"(load average up to {result['load_average']:.1f}); code version "
        f"{f'`{short(v)}`' if (v := result.get('code_version')) else 'not recorded'}.",
    ]
    return lines
