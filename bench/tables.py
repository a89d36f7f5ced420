"""Markdown from the suite's and the fidelity checks' json: nothing in a table is typed by hand.

An arch's results are tabulated per code version (``cells.by_code_version``): runs of different
code get separate sections and are never averaged or compared with each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.cache import short
from bench.cells import ARCH_TITLES, Row, by_code_version, cells, done, mean, ms, pct, practical_speedup, search_seconds
from bench.claims import allocators_vs_uniform, fidelity_markdown, high_compression, taylor_vs_l1
from bench.common import ROOT, machine, read_json, today, versions
from bench.settings import ARCHS, Settings

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
        listed = ", ".join(
            f"{r['name']} s{r['seed']} (ratio {r['allocation'][0]['pruning_ratio']:.3f})" for r in missed
        )
        lines += [
            "",
            f"No Torch-Pruning ratio landed within 1% below the MACs target for {listed}: the closest below is shown.",
        ]
    return lines


def threads_note(suite: Mapping[str, Any], rows: Sequence[Row]) -> str:
    """The thread counts the timings recorded (``--no-run`` keeps timings made with other ``--threads``)."""
    timings = [suite["baseline"]["latency_ms"], *(r["latency_ms"] for r in done(rows))]
    counts = sorted({t["threads"] for t in timings})
    return " or ".join(str(c) for c in counts) + " thread(s)"


def load_note(base: Row, rows: Sequence[Row]) -> str:
    """The load averages recorded with the timings."""
    timings = [r["latency_ms"] for r in done(rows)]
    loads = [t["load_average"] for t in timings]
    parts = [f"unpruned model timed at load average {base['latency_ms']['load_average']:.1f}"]
    if loads:
        parts.append(f"{len(loads)} run(s) timed at load average {min(loads):.1f}–{max(loads):.1f}")
    together = sum(1 for t in timings if t.get("interleaved"))
    if together:
        parts.append(f"{together} run(s) timed with the unpruned model in interleaved rounds, one call each per round")
    spinning = sum(1 for t in timings if t.get("interleaved") and t["onnxruntime_spinning"])
    if spinning:  # all sessions alive and spin-waiting: they stole each other's cores
        parts.append(
            f"{spinning} of those with spin-waiting onnxruntime sessions, which inflates their onnxruntime times"
        )
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
    # the committed results/suite-resnet20.json predates latency_target_ms: its runs had an absolute budget
    target = halp[0].get("latency_target_ms") or halp[0]["budget"]["latency_ms"]
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


def width_runs(rows: Sequence[Row], label: str) -> dict[str, Any]:
    """Per-layer widths of the first seed of each cell at ``label``, for the width plots."""
    return {name: group[0]["layers"] for (lab, name), group in cells(rows).items() if lab == label and group}


# --- the whole file --------------------------------------------------------------------------


BN_NOTE = (
    "Pruned, not tuned: right after the cut, with BatchNorm statistics re-estimated on the calibration "
    "batches (as after fine-tuning too)."
)


def code_version_note(version: str | None) -> str:
    if version is None:
        return (
            "Code version: not recorded (these runs predate the bench's code versions, when its cache did not "
            "tell code apart: they may come from several)."
        )
    return (
        f"Code version: `{short(version)}` (sha256 of the autoprune/ and solvers/ sources that made every run "
        "below, `bench/cache.py`)."
    )


def arch_sections(suite: Mapping[str, Any]) -> list[str]:
    """The arch's sections: one per code version of its runs (one, when the suite wrote the file)."""
    parts = by_code_version(suite)
    if len(parts) == 1:
        return arch_section(parts[0])
    title = ARCH_TITLES.get(suite["arch"], suite["arch"])
    note = (
        f"{title}'s results file holds runs of {len(parts)} code versions: each has its own section, and none "
        "is averaged or compared with another's."
    )
    lines = []
    for part in parts:
        lines += arch_section(part, heading=f"{title}, code version {short(part['code_version'])}", note=note)
    return lines


def arch_section(suite: Mapping[str, Any], heading: str | None = None, note: str | None = None) -> list[str]:
    """One arch's tables, from rows of one code version."""
    rows, base, s = suite["runs"], suite["baseline"], suite["settings"]
    ft = s["finetune"]
    cap = f", at most {ft['max_steps_per_epoch']} steps per epoch" if ft["max_steps_per_epoch"] else ""
    title = ARCH_TITLES.get(suite["arch"], suite["arch"])
    seeds = ", ".join(str(x) for x in suite["seeds"])
    lines = [
        f"## {heading or title}",
        "",
        *([note, ""] if note else []),
        f"Baseline: top-1 {100 * base['accuracy']:.2f}% ({base['recipe']}; seed 0; trained in {base.get('seconds', 0) / 60:.0f} min). "
        f"Fine-tune for every method: {ft['epochs']} epoch(s){cap}, SGD lr {ft['lr']} cosine, batch {ft['batch_size']}, "
        f"distillation from the unpruned model (weight {ft['distill_weight']}, T={ft['temperature']:g}). "
        f"Pruning/fine-tune seeds: {seeds}. Latency: median of {s['latency_repeats']} runs, "
        f"{threads_note(suite, rows)}, from the exported files ({load_note(base, rows)}). "
        "Search s = importance + allocation (+ HALP's latency table; Torch-Pruning: its ratio bisection). "
        "`/stepN` rows kept widths in multiples of N (`--channel-step N`), which onnxruntime's kernels run faster.",
        "",
        f"{BN_NOTE} {code_version_note(suite.get('code_version'))}",
        "",
        f"Written {suite['date']} on {suite['machine']}. {len(done(rows))} of {len(rows)} runs finished; their "
        f"stages took {sum(sum(r['timings'].values()) for r in done(rows)) / 3600:.1f} h in all (as they ran, "
        "under whatever load the machine had).",
        "",
    ]
    for label in dict.fromkeys(r["label"] for r in rows if r["kind"] == "main"):
        table = method_table([r for r in rows if r["label"] == label and r["kind"] in ("main", "step")], base)
        lines += [f"### {label}", "", *table, ""]
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


def results_markdown(
    suites: Sequence[Mapping[str, Any]], fidelities: Sequence[Mapping[str, Any]], header: Mapping[str, str]
) -> str:
    lines = [
        f"# Benchmark results{header.get('title_suffix', '')}",
        "",
        "Generated by `python -m bench.suite` (and `python -m bench.fidelity`) from `bench/results/*.json`; do not edit by hand. CIFAR-10 from "
        "`../shared/data/cifar10`: the 27,000-image training subset, the full 10,000-image test set. MACs count "
        "conv + linear multiply-accumulates per image; speedup = unpruned ÷ pruned onnxruntime batch-64 latency.",
        "",
        f"Machine: {header['machine']}. Versions: {header['versions']}. Written {header['date']}.",
        "",
    ]
    for suite in suites:
        lines += arch_sections(suite)
    if fidelities:
        lines += ["## Fidelity (a), (b): criteria on a trained baseline", ""]
        for result in fidelities:
            lines += [*fidelity_markdown(result), ""]
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- results:begin (bench/tables.py writes this block) -->", "<!-- results:end -->"


def readme_summary(suites: Sequence[Mapping[str, Any]], header: Mapping[str, str]) -> str:
    """The README's short table: top-1 after fine-tuning and the practical speedup per budget,
    one table per arch and code version."""
    lines = [f"Generated from `bench/results/suite-*.json` on {header['date']}, {header['machine']}; "
             "full tables, settings and fidelity checks in [`bench/results/RESULTS.md`](bench/results/RESULTS.md).", ""]  # fmt: skip
    for suite in (part for whole in suites for part in by_code_version(whole)):
        rows, base = suite["runs"], suite["baseline"]
        labels = list(dict.fromkeys(r["label"] for r in rows if r["kind"] == "main"))
        if not labels:
            continue
        head = " | ".join(f"{label}: top-1 | {label}: speedup" for label in labels)
        version = suite["code_version"]
        lines += [
            f"**{ARCH_TITLES.get(suite['arch'], suite['arch'])}** (code version "
            f"{f'`{short(version)}`' if version else 'not recorded'}; unpruned {100 * base['accuracy']:.2f}%; speedup = "
            "unpruned ÷ pruned onnxruntime latency at batch 64, where < 1 the pruned model is slower)",
            "",
            f"| method | {head} |",
            "|---|" + "---|" * (2 * len(labels)),
        ]
        by_label = {label: cells([r for r in rows if r["label"] == label and r["kind"] == "main"]) for label in labels}
        lat = base["latency_ms"]
        for name in dict.fromkeys(name for _, name in by_label[labels[0]]):
            row = [name]
            for label in labels:
                group = by_label[label].get((label, name), [])
                row += [
                    pct(group, "accuracy_after"),
                    f"{mean([practical_speedup(r, lat) for r in group]):.2f}" if group else "",
                ]
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


def write_results(
    settings: Settings, *, header: Mapping[str, str] | None = None, readme: Path | None = ROOT.parent / "README.md"
) -> Path:
    """RESULTS.md from every suite-*.json and fidelity-*.json in the results folder; in the CPU
    setting also the results block of ``readme`` (None: no README)."""
    out = settings.results
    order = {arch: i for i, arch in enumerate(ARCHS)}
    suites = sorted((read_json(p) for p in out.glob("suite-*.json")), key=lambda s: order.get(s["arch"], len(order)))
    fidelities = [read_json(p) for p in sorted(out.glob("fidelity-*.json"))]
    if header is None:
        header = {
            "machine": suites[0]["machine"] if suites else machine(),
            "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
            "date": today(),
            "title_suffix": {"quick": " (QUICK SMOKE TEST: the numbers mean nothing)", "full": " (--full)"}.get(
                settings.mode, ""
            ),
        }
    path = out / "RESULTS.md"
    path.write_text(results_markdown(suites, fidelities, header) + "\n")
    if settings.mode == "cpu" and suites and readme is not None:
        update_readme(readme, readme_summary(suites, header))
    return path
