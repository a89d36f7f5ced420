"""Markdown from the suite's and the fidelity checks' json: nothing in a table is typed by hand.

Cells aggregate over seeds: top-1 as mean ± half the range (min to max) with the number of seeds;
costs, latencies and times as means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, read_json, today, versions
from settings import ARCHS, Settings

Row = Mapping[str, Any]
L1_CRITERIA = ("l1", "magnitude")  # the L1 criterion, ours and Torch-Pruning's
ARCH_TITLES = {
    "resnet20": "ResNet-20", "resnet56": "ResNet-56", "cifar_mobilenetv2": "MobileNetV2 (CIFAR)",
    "cifar_vgg16_bn": "VGG-16-BN",
}  # fmt: skip


# --- numbers ---------------------------------------------------------------------------------


def ms(latency: Mapping[str, Any] | None, runtime: str, batch: int) -> float:
    return float("nan") if latency is None else latency[runtime][str(batch)]


def search_seconds(timings: Mapping[str, float]) -> float:
    return sum(timings.get(stage, 0.0) for stage in ("importance", "allocation", "latency_table"))


def practical_speedup(row: Row, base_latency: Mapping[str, Any]) -> float:
    """onnxruntime batch-64 latency of the unpruned model ÷ the run's, both timed by the suite."""
    return ms(base_latency, "onnxruntime", 64) / ms(row["latency_ms"], "onnxruntime", 64)


def done(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if "error" not in r]


def cells(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    """(label, name) → the finished rows of that cell (one per seed), in first-seen order."""
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


# --- per-arch tables -------------------------------------------------------------------------


def method_table(rows: Sequence[Row], base: Row) -> list[str]:
    lat = base["latency_ms"]
    lines = [
        "| method | seeds | top-1 before | pruned, not tuned | after fine-tune | MACs (M) | MACs ratio | params (M) "
        "| torch ms b=1 | torch ms b=64 | ort ms b=1 | ort ms b=64 | speedup (ort b=64) | speedup ÷ MACs speedup "
        "| search s | fine-tune s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| unpruned | | {100 * base['accuracy']:.2f} | | | {base['macs'] / 1e6:.2f} | 1.000 | {base['params'] / 1e6:.3f} "
        f"| {ms(lat, 'torch', 1):.2f} | {ms(lat, 'torch', 64):.1f} | {ms(lat, 'onnxruntime', 1):.2f} "
        f"| {ms(lat, 'onnxruntime', 64):.1f} | 1.00 | | | |",
    ]
    for (_, name), group in cells(rows).items():
        if not group:
            errors = sorted({r["error"] for r in rows if r["name"] == name and "error" in r})
            lines.append(f"| {name} | 0 | {'; '.join(errors).replace('|', '/')} |" + " |" * 13)
            continue
        speedup = mean([practical_speedup(r, lat) for r in group])
        macs_speedup = mean([r["macs_before"] / r["macs_after"] for r in group])
        lines.append(
            f"| {name} | {len(group)} | {pct(group, 'accuracy_before')} | {pct(group, 'accuracy_pruned')} "
            f"| {pct(group, 'accuracy_after')} | {mean([r['macs_after'] for r in group]) / 1e6:.2f} "
            f"| {mean([r['flops_ratio'] for r in group]):.3f} | {mean([r['params_after'] for r in group]) / 1e6:.3f} "
            f"| {mean([ms(r['latency_ms'], 'torch', 1) for r in group]):.2f} "
            f"| {mean([ms(r['latency_ms'], 'torch', 64) for r in group]):.1f} "
            f"| {mean([ms(r['latency_ms'], 'onnxruntime', 1) for r in group]):.2f} "
            f"| {mean([ms(r['latency_ms'], 'onnxruntime', 64) for r in group]):.1f} | {speedup:.2f} "
            f"| {speedup / macs_speedup:.2f} | {mean([search_seconds(r['timings']) for r in group]):.1f} "
            f"| {mean([r['timings'].get('finetune', 0.0) for r in group]):.0f} |"
        )
    missed = [r for r in done(rows) if r["allocation"][0].get("within_tolerance") is False]
    if missed:
        listed = ", ".join(f"{r['name']} s{r['seed']} (ratio {r['allocation'][0]['pruning_ratio']:.3f})" for r in missed)
        lines += ["", f"No Torch-Pruning ratio landed within 1% below the MACs target for {listed}: the closest below is shown."]
    return lines


def threads_note(suite: Mapping[str, Any], rows: Sequence[Row]) -> str:
    """The thread counts the timings recorded (``--no-run`` keeps timings made with other ``--threads``)."""
    timings = [suite["baseline"]["latency_ms"], *(r.get("latency_ms") or {} for r in done(rows))]
    counts = sorted({t.get("threads", suite["args"]["threads"]) for t in timings if t})
    return " or ".join(str(c) for c in counts) + " thread(s)"


def load_note(base: Row, rows: Sequence[Row]) -> str:
    """The load averages recorded with the timings (older timings did not record one)."""
    loads = [r["latency_ms"]["load_average"] for r in done(rows) if "load_average" in (r.get("latency_ms") or {})]
    untimed = sum(1 for r in done(rows) if "load_average" not in (r.get("latency_ms") or {}))
    parts = [f"unpruned model timed at load average {base['latency_ms']['load_average']:.1f}"
             if "load_average" in base["latency_ms"] else "unpruned model's load average not recorded"]
    if loads:
        parts.append(f"{len(loads)} run(s) timed at load average {min(loads):.1f}–{max(loads):.1f}")
    if untimed:
        parts.append(f"{untimed} run(s) timed before load averages were recorded")
    timings = [r.get("latency_ms") or {} for r in done(rows)]
    together = sum(1 for t in timings if t.get("interleaved"))
    if together:
        parts.append(f"{together} run(s) timed with the unpruned model in interleaved rounds, one call each per round")
    spinning = sum(1 for t in timings if t.get("interleaved") and t.get("onnxruntime_spinning", True))
    if spinning:  # all sessions alive and spin-waiting: they stole each other's cores
        parts.append(f"{spinning} of those with spin-waiting onnxruntime sessions, which inflates their onnxruntime times")
    return "; ".join(parts)


def latency_fraction(row: Row) -> float:
    return float(row["label"].removeprefix("latency=").removesuffix("x"))


def latency_setting(row: Row) -> tuple[str, int]:
    return row["budget"].get("runtime", "onnxruntime"), int(row["budget"].get("batch_size", 1))


def relative_latency(row: Row, base: Row, setting: tuple[str, int]) -> float:
    """Latency ÷ the unpruned model's, both timed by the suite: load-independent, unlike the target."""
    return ms(row["latency_ms"], *setting) / ms(base["latency_ms"], *setting)


def latency_table(rows: Sequence[Row], base: Row, compared_label: str) -> list[str]:
    halp = [r for r in done(rows) if r["kind"] == "latency"]
    if not halp:
        errors = sorted({r["error"] for r in rows if r["kind"] == "latency" and "error" in r})
        return [f"No latency-budget run finished{': ' + '; '.join(errors) if errors else '.'}"]
    fraction, setting = latency_fraction(halp[0]), latency_setting(halp[0])
    target = halp[0]["budget"]["latency_ms"]
    compared = [r for r in rows if r["kind"] == "latency" or r["label"] == compared_label]
    lines = [
        f"HALP's budget: {fraction:g} × the unpruned model's {setting[0]} batch-{setting[1]} latency (the run "
        f"targeted {target:.3f} ms: the unpruned model timed {target / fraction:.3f} ms when the target was fixed). "
        f"Every latency below, the unpruned model's included ({ms(base['latency_ms'], *setting):.3f} ms), was "
        f"timed by the suite from the exported files; a run meets the budget when its latency ÷ the unpruned "
        f"latency is ≤ {fraction:g}.",
        "",
        f"| method | budget | seeds | {setting[0]} ms b={setting[1]} | ÷ unpruned | meets | top-1 after | MACs ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (label, name), group in cells(compared).items():
        if not group:
            continue
        ratio = mean([relative_latency(r, base, setting) for r in group])
        lines.append(
            f"| {name} | {label} | {len(group)} | {mean([ms(r['latency_ms'], *setting) for r in group]):.3f} "
            f"| {ratio:.3f} | {'yes' if ratio <= fraction else 'no'} | {pct(group, 'accuracy_after')} "
            f"| {mean([r['flops_ratio'] for r in group]):.3f} |"
        )
    return lines


def paired_deltas(run_rows: Sequence[Row], ref_rows: Sequence[Row], key: str = "accuracy_after") -> list[float]:
    """Per-seed differences in points (seeds present in both)."""
    ref = {r["seed"]: r for r in ref_rows}
    return [100 * (r[key] - ref[r["seed"]][key]) for r in run_rows if r["seed"] in ref]


def taylor_vs_l1(rows: Sequence[Row]) -> list[str]:
    """Same allocator, Taylor against L1 (Torch-Pruning's magnitude counts as L1)."""
    by_cell = cells(rows)
    lines = []
    for label, name in by_cell:
        method, _, criterion = name.partition(":")
        if criterion != "taylor":
            continue
        l1 = next((by_cell[(label, f"{method}:{c}")] for c in L1_CRITERIA if by_cell.get((label, f"{method}:{c}"))), None)
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
    wins = {label: [0, 0] for label in labels}
    for name in names:
        parts = []
        for label in labels:
            group, ref = by_cell.get((label, name), []), by_cell.get((label, "uniform:l1"), [])
            deltas = paired_deltas(group, ref)
            if deltas and not name.startswith("uniform:"):
                wins[label][0] += mean(deltas) > 0
                wins[label][1] += 1
            parts.append(f"{pct(group, 'accuracy_after')} | {delta_text(deltas)}")
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    lines += ["", *(f"- {label}: {w} of {n} non-uniform allocators above uniform:l1 on average" for label, (w, n) in wins.items() if n)]
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


def width_runs(rows: Sequence[Row], label: str) -> dict[str, Any]:
    """Per-layer widths of the first seed of each cell at ``label``, for the width plots."""
    return {name: group[0]["layers"] for (lab, name), group in cells(rows).items() if lab == label and group}


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
            + " | ".join(rho(row["rho"][n]) for n in names) + " |"
        )
    summary = oracle["summary"]
    lines += [
        "| **mean over layers** | | | | " + " | ".join(f"**{rho(summary[n]['mean_rho'])}**" for n in names) + " |",
        "| pooled, L2-normalised | | | | " + " | ".join(rho(summary[n]["pooled_rho_l2_normalised"]) for n in names) + " |",
        *(  # fidelity runs before 2026-12-01 did not compute it
            ["| pooled, RMS-normalised (`global`) | | | | "
             + " | ".join(rho(summary[n]["pooled_rho_rms_normalised"]) for n in names) + " |"]
            if all("pooled_rho_rms_normalised" in summary[n] for n in names) else []
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
        f"(load average up to {result['load_average']:.1f}).",
    ]
    return lines


# --- the whole file --------------------------------------------------------------------------


def predating(rows: Sequence[Row]) -> list[Row]:
    """Runs from before 2026-12-01: no BN re-estimation, and the plain-L2 ``global`` ranking."""
    return [r for r in rows if "bn_reestimation_batches" not in r]


def bn_note(rows: Sequence[Row]) -> str:
    """What "pruned, not tuned" measured: runs since 2026-12-01 re-estimate BN statistics after the cut."""
    fresh = len(rows) - len(predating(rows))
    if fresh == len(rows):
        return (
            "Pruned, not tuned: right after the cut, with BatchNorm statistics re-estimated on the calibration "
            "batches (as after fine-tuning too)."
        )
    return (
        f"Pruned, not tuned: right after the cut; {len(rows) - fresh} of {len(rows)} runs predate BatchNorm "
        "re-estimation (2026-12-01) and show the statistics inherited from the unpruned model, mostly near chance "
        "(nap:kfac re-estimated them already, after its OBS update). They also predate `global`'s per-layer RMS "
        "normalisation (it used plain L2, which guts wide layers): its rows here are the old method."
    )


def arch_section(suite: Mapping[str, Any]) -> list[str]:
    rows, base, s = suite["runs"], suite["baseline"], suite["settings"]
    ft = s["finetune"]
    cap = f", at most {ft['max_steps_per_epoch']} steps per epoch" if ft["max_steps_per_epoch"] else ""
    title = ARCH_TITLES.get(suite["arch"], suite["arch"])
    seeds = ", ".join(str(x) for x in suite["seeds"])
    lines = [
        f"## {title}",
        "",
        f"Baseline: top-1 {100 * base['accuracy']:.2f}% ({base['recipe']}; seed 0; trained in {base.get('seconds', 0) / 60:.0f} min). "
        f"Fine-tune for every method: {ft['epochs']} epoch(s){cap}, SGD lr {ft['lr']} cosine, batch {ft['batch_size']}, "
        f"distillation from the unpruned model (weight {ft['distill_weight']}, T={ft['temperature']:g}). "
        f"Pruning/fine-tune seeds: {seeds}. Latency: median of {s['latency_repeats']} runs, "
        f"{threads_note(suite, rows)}, from the exported files ({load_note(base, rows)}). "
        "Search s = importance + allocation (+ HALP's latency table; Torch-Pruning: its ratio bisection).",
        "",
        f"{bn_note(done(rows))}",
        "",
        f"Written {suite['date']} on {suite['machine']}. {len(done(rows))} of {len(rows)} runs finished; their "
        f"stages took {sum(sum(r['timings'].values()) for r in done(rows)) / 3600:.1f} h in all (as they ran, "
        "under whatever load the machine had).",
        "",
    ]
    for label in dict.fromkeys(r["label"] for r in rows if r["kind"] == "main"):
        lines += [f"### {label}", "", *method_table([r for r in rows if r["label"] == label and r["kind"] == "main"], base), ""]
    if any(r["kind"] == "latency" for r in rows):
        lines += ["### Latency budget", "", *latency_table(rows, base, suite["latency_compared"]), ""]
    lines += [
        "### Claims, computed from the tables",
        "",
        "**Taylor vs L1 under the same allocator:**",
        *taylor_vs_l1([r for r in rows if r["kind"] == "main"]),
        "",
        "### Fidelity (c): allocators vs uniform at equal MACs",
        "",
        "Δ = top-1 after fine-tuning minus uniform:l1's at the same budget, in points, paired by seed.",
        "",
        *allocators_vs_uniform(rows),
        "",
    ]
    if any(r["kind"] == "high" for r in rows):
        lines += [
            "### Fidelity (d): attribution vs L1 at high compression",
            "",
            "Δ = attribution minus L1 under the same allocator, in points, paired by seed.",
            "",
            *high_compression(rows),
            "",
        ]
    return lines


def results_markdown(suites: Sequence[Mapping[str, Any]], fidelities: Sequence[Mapping[str, Any]], header: Mapping[str, str]) -> str:
    lines = [
        f"# Benchmark results{header.get('title_suffix', '')}",
        "",
        "Generated by `bench/suite.py` (and `bench/fidelity.py`) from `bench/results/*.json`; do not edit by hand. CIFAR-10 from "
        "`../shared/data/cifar10`: the 27,000-image training subset, the full 10,000-image test set. MACs count "
        "conv + linear multiply-accumulates per image; speedup = unpruned ÷ pruned onnxruntime batch-64 latency.",
        "",
        f"Machine: {header['machine']}. Versions: {header['versions']}. Written {header['date']}.",
        "",
    ]
    for suite in suites:
        lines += arch_section(suite)
    if fidelities:
        lines += ["## Fidelity (a), (b): criteria on a trained baseline", ""]
        for result in fidelities:
            lines += [*fidelity_markdown(result), ""]
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- results:begin (bench/tables.py writes this block) -->", "<!-- results:end -->"


def readme_summary(suites: Sequence[Mapping[str, Any]], header: Mapping[str, str]) -> str:
    """The README's short table: top-1 after fine-tuning and the practical speedup per budget."""
    lines = [f"Generated from `bench/results/suite-*.json` on {header['date']}, {header['machine']}; "
             "full tables, settings and fidelity checks in [`bench/results/RESULTS.md`](bench/results/RESULTS.md).", ""]  # fmt: skip
    for suite in suites:
        rows, base = suite["runs"], suite["baseline"]
        labels = list(dict.fromkeys(r["label"] for r in rows if r["kind"] == "main"))
        head = " | ".join(f"{label}: top-1 | {label}: speedup" for label in labels)
        lines += [
            f"**{ARCH_TITLES.get(suite['arch'], suite['arch'])}** (unpruned {100 * base['accuracy']:.2f}%; speedup = "
            "unpruned ÷ pruned onnxruntime latency at batch 64, where < 1 the pruned model is slower)",
            "",
            f"| method | {head} |",
            "|---|" + "---|" * (2 * len(labels)),
        ]
        old = predating(done(rows))
        if old:  # the note goes above the table
            lines[-2:-2] = [
                f"{len(old)} of these runs predate 2026-12-01: no BatchNorm re-estimation after the cut and "
                "fine-tune, and `global:*` is the old plain-L2 ranking that guts wide layers.",
                "",
            ]
        by_label = {label: cells([r for r in rows if r["label"] == label and r["kind"] == "main"]) for label in labels}
        lat = base["latency_ms"]
        for name in dict.fromkeys(name for _, name in by_label[labels[0]]):
            row = [name]
            for label in labels:
                group = by_label[label].get((label, name), [])
                row += [pct(group, "accuracy_after"), f"{mean([practical_speedup(r, lat) for r in group]):.2f}" if group else ""]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> None:
    """Replace the text between the README's result markers (left alone when they are missing)."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return
    head, rest = text.split(README_BEGIN, 1)
    readme.write_text(head + README_BEGIN + "\n" + block + "\n" + README_END + rest.split(README_END, 1)[1])


def write_results(settings: Settings) -> Path:
    """RESULTS.md from every suite-*.json and fidelity-*.json in the results folder."""
    out = settings.results
    order = {arch: i for i, arch in enumerate(ARCHS)}
    suites = sorted((read_json(p) for p in out.glob("suite-*.json")), key=lambda s: order.get(s["arch"], len(order)))
    fidelities = [read_json(p) for p in sorted(out.glob("fidelity-*.json"))]
    header = {
        "machine": suites[0]["machine"] if suites else machine(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
        "date": today(),
        "title_suffix": {"quick": " (QUICK SMOKE TEST: the numbers mean nothing)", "full": " (--full)"}.get(settings.mode, ""),
    }
    path = out / "RESULTS.md"
    path.write_text(results_markdown(suites, fidelities, header) + "\n")
    if settings.mode == "cpu" and suites:
        update_readme(out.parent.parent / "README.md", readme_summary(suites, header))
    return path
