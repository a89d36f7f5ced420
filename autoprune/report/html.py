"""report.html: one self-contained page from a report dict and its PNGs.

Inline CSS in one ``<style>`` block, images as ``data:`` URIs, no script and nothing fetched, so
the file reads the same from a CI artifact, an email or the dashboard. Every value taken from the
report is HTML-escaped (architecture names and data references come from users); only markup
built here is emitted unescaped, marked with :class:`Markup`.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from autoprune.budget import Budget
from autoprune.report.plots import GROUP_VALUES, unit_of

RUNTIMES = ("torch", "onnxruntime")
NUMERIC = ' class="num"'
LONG_VALUE = 100  # characters: longer lists and dicts in the diagnostics are summarised
PLOTTED = {"candidates", *GROUP_VALUES}  # diagnostics that search.png draws

# Belt and braces for a file opened from disk: even injected markup could neither run nor load.
# blob: styles: the dashboard turns the <style> block into a blob: stylesheet (api/web/static/app.js).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline' blob:"

CAPTIONS = {
    "widths.png": "Output channels of every layer before (dashed) and after pruning. Layers coupled by a "
    "residual addition share their output width.",
    "macs.png": "Multiply-accumulates per sample of every conv and linear layer, before (wide grey bars) and "
    "after pruning (narrow blue bars).",
    "finetune.png": "Fine-tuning: training loss, training top-1 and learning rate per epoch; dotted lines "
    "separate the steps of an iterative schedule.",
}
SEARCH_CAPTION = (
    "Evolution search. Left: every candidate's cost against its proxy accuracy (adaptive-BN top-1 on a "
    "held-out part of the training split); the square is the uniform allocation tried first, the star the "
    "one chosen. Right: the proxy accuracy of each trial and the best so far."
)
ALLOCATION_CAPTION = (
    "The solver's allocation: kept fraction of each layer's channels (bars) and the per-group value the "
    "solver allocated by (diamonds, at each group's first layer; right axis)."
)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 32px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 15px; margin-bottom: 6px; }
.sub { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 12px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; border-top: 2px solid #8c959f; }
.kv th { width: 14em; }
.changed { color: #0b5cad; }
.bad { color: #b42318; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 13px; max-width: 900px; }
meter { width: 160px; }
.muted { color: #57606a; }
.scroll { overflow-x: auto; }
"""


class Markup(str):
    """HTML built here: emitted as is. Any other string is escaped."""


def esc(value: Any) -> Markup:
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def render_html(report: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The page for ``report``; ``images`` maps file names (``widths.png``…) to PNG bytes, in page order."""
    title = f"Pruning report: {report.get('arch', '?')} · {report.get('method', '?')}"
    body = "\n".join(
        part
        for part in (
            f"<h1>{esc(title)}</h1>",
            f'<p class="sub">{esc(_subtitle(report))}</p>',
            _section("Job", _kv(_job_rows(report))),
            _section("Before and after", _summary(report) + _speedups(report)),
            _section("Plots", _figures(report, images)),
            _section("Per-layer widths and MACs", _layers(report)),
            _section("Allocation", _allocation(report)),
            _section("Fine-tuning", _finetune(report)),
            _section("Timings", _timings(report)),
            _section("Versions and notes", _versions(report)),
        )
        if part
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- sections


def _subtitle(report: Mapping[str, Any]) -> str:
    return " · ".join(
        str(x) for x in (report.get("method"), report.get("criterion"), _budget_text(report), report.get("data")) if x
    )


def _job_rows(report: Mapping[str, Any]) -> list[tuple[str, Any]]:
    steps = len(report.get("allocation") or [])
    schedule = report.get("schedule")
    if schedule == "iterative":
        schedule = f"iterative, {steps} steps"
    rows: list[tuple[str, Any]] = [
        ("architecture", report.get("arch")),
        ("data", report.get("data")),
        ("method (allocator)", report.get("method")),
        ("criterion (channel importance)", report.get("criterion")),
        ("budget", _budget_text(report)),
        ("budget reached", _reached(report)),
        ("schedule", schedule),
        ("seed", report.get("seed")),
    ]
    if report.get("resumed"):
        rows.append(("resumed from a checkpoint", _value(report["resumed"])))
    return [(k, v) for k, v in rows if v is not None]


def _summary(report: Mapping[str, Any]) -> str:
    latency = _latency(report)
    where = f"batch {latency['batch_size']}, {_threads(latency['threads'])}"
    rows: list[list[Any]] = []
    if "accuracy_before" in report:
        before, after = report["accuracy_before"], report.get("accuracy_after")
        change = f"{100 * (after - before):+.2f} points" if after is not None else ""
        rows.append(["top-1, test split", _pct(before), _pct(report.get("accuracy_pruned")), _pct(after), change])
    if "loss_before" in report:
        rows.append(["loss, test split", *_pair(report, "loss", _num)])
    for key, label in (("macs", "MACs per sample"), ("flops", "FLOPs per sample (2 × MACs)"), ("params", "parameters")):
        if f"{key}_before" in report:
            rows.append([label, *_pair(report, key, _count)])
    for runtime in RUNTIMES:
        before, after = latency["before"].get(runtime), latency["after"].get(runtime)
        if before is not None and after is not None:
            rows.append([f"latency, {runtime} (ms, {where})", _num(before), "", _num(after), _ratio(after, before)])
    for runtime, paired in (latency.get("paired") or {}).items():
        rows.append([f"speedup, {runtime}, paired ({int(paired['rounds'])} rounds)", "", "", "",
                     f"{paired['speedup']:.2f}x (IQR of after/before {paired['ratio_q1']:.3f}-{paired['ratio_q3']:.3f})"])  # fmt: skip
    if not rows:
        return ""
    headers = ["", "before", "pruned, not fine-tuned", "after fine-tuning", "after vs before"]
    warnings = "".join(
        f'<p class="warning"><strong>Warning:</strong> {esc(w)}</p>' for w in report.get("warnings") or []
    )
    return warnings + _table(headers, rows, numeric={1, 2, 3, 4})


def _speedups(report: Mapping[str, Any]) -> str:
    """Measured speedup next to the MACs speedup: pruning fewer MACs need not make a model faster."""
    latency = _latency(report)
    macs_before, macs_after = report.get("macs_before"), report.get("macs_after")
    if not macs_before or not macs_after:
        return ""
    macs_speedup = macs_before / macs_after
    rows = []
    for runtime in RUNTIMES:
        before, after = latency["before"].get(runtime), latency["after"].get(runtime)
        if before and after:
            measured = before / after
            cell = Markup(f'<span class="bad">{esc(f"{measured:.2f}×")}</span>') if measured < 1 else f"{measured:.2f}×"
            rows.append([runtime, f"{macs_speedup:.2f}×", cell, f"{measured / macs_speedup:.2f}"])
    if not rows:
        return ""
    note = (
        f'<p class="muted">Latency: median of repeated runs after warm-up, batch {esc(latency["batch_size"])}, '
        f"{esc(_threads(latency['threads']))}, on the machine that ran the job. A measured speedup below 1× means "
        "the pruned model is slower (e.g. channel counts that miss the runtime's fast kernels).</p>"
    )
    onnx = report.get("onnx_max_abs_diff")
    if onnx is not None:
        note += (
            f'<p class="muted">ONNX export checked against torch: max |onnxruntime − torch| = {esc(_num(onnx))}.</p>'
        )
    headers = ["runtime", "MACs speedup", "measured speedup", "measured ÷ MACs speedup"]
    return "<h3>Speedup</h3>" + _table(headers, rows, numeric={1, 2, 3}) + note


def _figures(report: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    search = SEARCH_CAPTION if any(d.get("candidates") for d in report.get("allocation") or []) else ALLOCATION_CAPTION
    parts = []
    for name, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        caption = CAPTIONS.get(name, search if name == "search.png" else "")
        parts.append(
            f'<figure><img src="{esc(uri)}" alt="{esc(name)}">'
            f"<figcaption>{esc(name)}: {esc(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _layers(report: Mapping[str, Any]) -> str:
    layers = report.get("layers") or []
    if not layers:
        return ""
    rows = [
        [
            i,
            r["name"],
            r["kind"],
            _arrow(r["channels_before"], r["channels_after"]),
            _pct(_div(r["channels_after"], r["channels_before"]), 0),
            _arrow(r["in_channels_before"], r["in_channels_after"]),
            _count(r["macs_before"]),
            _count(r["macs_after"]),
            _pct(_div(r["macs_after"], r["macs_before"]), 0),
        ]
        for i, r in enumerate(layers, 1)
    ]
    before, after = sum(r["macs_before"] for r in layers), sum(r["macs_after"] for r in layers)
    total = ["", "total", "", "", "", "", _count(before), _count(after), _pct(_div(after, before), 1)]
    headers = ["#", "layer", "kind", "out channels", "kept", "in channels", "MACs before", "MACs after", "MACs kept"]
    return '<div class="scroll">' + _table(headers, rows, numeric={0, 3, 4, 5, 6, 7, 8}, total=total) + "</div>"


def _allocation(report: Mapping[str, Any]) -> str:
    steps = report.get("allocation") or []
    parts = []
    for i, diagnostics in enumerate(steps, 1):
        heading = f"<h3>Step {i} of {len(steps)}</h3>" if len(steps) > 1 else ""
        rows = [(key, _diagnostic(report, key, value)) for key, value in diagnostics.items()]
        parts.append(heading + _kv(rows))
    if parts:
        parts.insert(
            0,
            '<p class="muted">What the allocator reported. <code>target</code> is the budget it was given, '
            "<code>predicted</code> its own cost estimate and <code>achieved</code> the cost measured on the "
            "pruned model. Long lists are summarised; report.json has them in full.</p>",
        )
    return "\n".join(parts)


def _finetune(report: Mapping[str, Any]) -> str:
    finetune = report.get("finetune") or {}
    history = finetune.get("history") or []
    parts = []
    if finetune.get("config"):
        config = finetune["config"]
        parts.append(_table(list(config), [[_value(v) for v in config.values()]]))
    if history:
        rows = [
            [h.get("step", 1), h.get("epoch"), _num(h.get("loss")), _pct(h.get("train_accuracy")), _num(h.get("lr"))]
            for h in history
        ]
        parts.append(
            _table(["step", "epoch", "training loss", "training top-1", "learning rate"], rows, numeric={0, 1, 2, 3, 4})
        )
    else:
        parts.append('<p class="muted">No fine-tuning epochs were run.</p>')
    return "\n".join(parts)


def _timings(report: Mapping[str, Any]) -> str:
    timings = report.get("timings") or {}
    if not timings:
        return ""
    total = sum(timings.values())
    rows = [
        [
            stage,
            f"{seconds:.1f}",
            _pct(_div(seconds, total), 0),
            Markup(f'<meter min="0" max="1" value="{_div(seconds, total) or 0:.4f}"></meter>'),
        ]
        for stage, seconds in timings.items()
    ]
    return _table(["stage", "seconds", "share", ""], rows, numeric={1, 2}, total=["total", f"{total:.1f}", "", ""])


def _versions(report: Mapping[str, Any]) -> str:
    rows = [(name, version) for name, version in (report.get("versions") or {}).items()]
    notes = f'<p class="muted">{esc(report["notes"])}</p>' if report.get("notes") else ""
    return (_kv(rows) if rows else "") + notes


# ---------------------------------------------------------------- building blocks


def _section(title: str, content: str) -> str:
    return f"<h2>{esc(title)}</h2>\n{content}" if content else ""


def _table(
    headers: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    numeric: set[int] | None = None,
    total: Sequence[Any] | None = None,
) -> str:
    numeric = numeric or set()

    def cells(values: Sequence[Any], tag: str) -> str:
        return "".join(f"<{tag}{NUMERIC if i in numeric else ''}>{esc(v)}</{tag}>" for i, v in enumerate(values))

    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    if total is not None:
        body += f'<tr class="total">{cells(total, "td")}</tr>'
    return f"<table><thead><tr>{cells(headers, 'th')}</tr></thead><tbody>{body}</tbody></table>"


def _kv(rows: Iterable[tuple[Any, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>' if body else ""


def _budget(report: Mapping[str, Any]) -> Budget | None:
    return Budget.from_dict(report["budget"]) if report.get("budget") else None


def _budget_text(report: Mapping[str, Any]) -> str:
    budget = _budget(report)
    if budget is None:
        return ""
    if budget.kind == "latency_ms":
        return f"latency ≤ {budget.value:g} ms ({budget.runtime}, batch {budget.batch_size})"
    if budget.kind == "latency":
        target = (report.get("latency") or {}).get("budget_target_ms")
        ms = f" = {target:.3f} ms" if target else ""
        return f"latency ≤ {_pct(budget.value, 1)} of the unpruned model's{ms} ({budget.runtime}, batch {budget.batch_size})"
    return f"{budget.kind}={budget.value:g} (keep at most {_pct(budget.value, 1)} of the {budget.rule.unit})"


def _reached(report: Mapping[str, Any]) -> str | None:
    steps = report.get("allocation") or []
    budget = _budget(report)
    if budget is None or not steps or "achieved" not in steps[-1]:
        return None
    achieved = steps[-1]["achieved"]
    unpruned = steps[-1].get("unpruned")
    if budget.kind == "latency" and unpruned:  # checked by paired timing against the unpruned model
        return f"{_pct(achieved / unpruned, 1)} of the unpruned model's latency (timed in alternating rounds)"
    if budget.measured:
        reference = (report.get("latency") or {}).get("budget_reference_ms")
        start = f"; the unpruned model measured {reference:.3f} ms when the job started" if reference else ""
        return f"{achieved:.3f} ms (measured on the whole pruned model{start})"
    return f"{_pct(achieved, 2)} (measured on the pruned model)"


def _diagnostic(report: Mapping[str, Any], key: str, value: Any) -> str:
    """One diagnostics value; the solver's ``predicted`` cost is absolute, so it gets its unit."""
    budget = _budget(report)
    if key == "predicted" and isinstance(value, int | float) and budget is not None:
        if budget.measured:
            return f"{value:.4g} ms"
        reference = f"{budget.rule.counted}_before"
        if report.get(reference):
            return f"{_count(value)} {budget.rule.unit} ({value / report[reference]:.4f} of the unpruned)"
    text = _value(value)
    return f"{text}, plotted in search.png" if key in PLOTTED and text.endswith("(in report.json)") else text


def _latency(report: Mapping[str, Any]) -> Mapping[str, Any]:
    """The report's ``latency`` block (batch_size, threads, before/after ms per runtime), or an empty one."""
    return report.get("latency") or {"batch_size": None, "threads": None, "before": {}, "after": {}}


def _pair(report: Mapping[str, Any], key: str, fmt: Any) -> list[Any]:
    before, after = report.get(f"{key}_before"), report.get(f"{key}_after")
    return [fmt(before), "", fmt(after), _ratio(after, before)]


def _arrow(before: int, after: int) -> Markup:
    if before == after:
        return esc(before)
    return Markup(f'<span class="changed">{esc(before)} → {esc(after)}</span>')


def _value(value: Any) -> str:
    """A diagnostics value as text: numbers to 4 significant digits, long collections summarised."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, list | tuple | dict):
        text = json.dumps(value, default=str)
        return text if len(text) <= LONG_VALUE else f"{len(value)} entries (in report.json)"
    return str(value)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _count(value: float | None) -> str:
    if value is None:
        return "—"
    scale, unit = unit_of(abs(value))
    return f"{value / scale:.2f} {unit}" if unit else f"{value:g}"


def _pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def _ratio(after: float | None, before: float | None) -> str:
    ratio = _div(after, before)
    return "" if ratio is None else f"{ratio:.3f}×"


def _threads(threads: Any) -> str:
    return "1 thread" if threads == 1 else f"{threads} threads"


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b
