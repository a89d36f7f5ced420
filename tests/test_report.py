"""report.html and its figures from a real pipeline run: self-contained, escaped, robust to missing parts."""

from __future__ import annotations

import base64
import copy
import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from autoprune.pipeline import run
from autoprune.report.write import write_report_files
from autoprune.spec import Budget, FinetuneConfig, JobSpec
from solvers import AllocationProblem, GroupSpec
from solvers import evolution as evolution_module
from solvers.evolution import Evolution
from solvers.nap import NAP

FIGURES = ("widths.png", "macs.png", "search.png", "finetune.png")


class Tags(HTMLParser):
    """Every start tag with its attributes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def threads(report) -> str:
    """How the page names the run's torch thread count (the suite runs with 1 or more)."""
    n = report["latency"]["threads"]
    return "1 thread" if n == 1 else f"{n} threads"


@pytest.fixture(scope="module")
def itpruner_run(tmp_path_factory):
    """A real (untrained) ResNet-20 pruned by ITPruner on digits, two short fine-tune epochs.

    No ONNX export (it would triple the run time), so the report has torch latencies only.
    """
    out = tmp_path_factory.mktemp("itpruner")
    spec = JobSpec(
        arch="resnet20",
        data="digits",
        budget=Budget(kind="flops", value=0.5),
        method="itpruner",
        finetune=FinetuneConfig(epochs=2, max_steps_per_epoch=2),
        calibration_batches=2,
        latency_repeats=3,
        exports=(),
        ensure_faster=False,
        out_dir=str(out / "run"),
    )
    return run(spec).to_dict()


@pytest.fixture(scope="module")
def written(itpruner_run, tmp_path_factory):
    """The report files of that run, and the page's text."""
    out = tmp_path_factory.mktemp("report")
    paths = write_report_files(out, itpruner_run)
    return out, paths, (out / "report.html").read_text()


def test_writes_the_page_and_every_figure_of_a_real_run(written):
    out, paths, _ = written
    assert [p.name for p in paths] == [*FIGURES, "report.html"]
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths)
    for path in paths[:-1]:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert 600 <= image.width <= 2000 and 250 <= image.height <= 800, (path.name, image.size)


def test_the_page_shows_the_summary_numbers(itpruner_run, written):
    page = written[2]
    r = itpruner_run
    for accuracy in (r["accuracy_before"], r["accuracy_pruned"], r["accuracy_after"]):
        assert f"{100 * accuracy:.2f}%" in page
    assert f"{r['macs_before'] / 1e6:.2f} M" in page and f"{r['macs_after'] / 1e6:.2f} M" in page
    assert f"{r['params_before'] / 1e3:.2f} K" in page and f"{r['params_after'] / 1e3:.2f} K" in page
    assert f"{r['macs_after'] / r['macs_before']:.3f}×" in page
    before, after = r["latency"]["before"]["torch"], r["latency"]["after"]["torch"]
    assert f"{before:.4g}" in page and f"{after:.4g}" in page
    assert f"{before / after:.2f}×" in page  # measured speedup, next to the MACs speedup
    assert f"{r['macs_before'] / r['macs_after']:.2f}×" in page
    assert f"batch {r['latency']['batch_size']}, {threads(r)}" in page
    assert all(f"<td>{stage}</td>" in page for stage in r["timings"])
    assert all(f"<td>{layer['name']}</td>" in page for layer in r["layers"])
    assert "formulation" in page and "CLARABEL" in page  # the allocation diagnostics


def test_a_pruned_model_slower_than_the_original_is_flagged(itpruner_run, tmp_path):
    report = copy.deepcopy(itpruner_run)
    report["latency"]["before"]["onnxruntime"], report["latency"]["after"]["onnxruntime"] = 0.5, 0.625
    write_report_files(tmp_path, report)
    page = (tmp_path / "report.html").read_text()
    assert f"latency, onnxruntime (ms, batch 1, {threads(report)})" in page
    assert '<span class="bad">0.80×</span>' in page


def test_a_latency_budget_shows_what_it_was_measured_against(itpruner_run, tmp_path):
    report = copy.deepcopy(itpruner_run)
    report["budget"] = {"latency_ms": 1.5, "runtime": "onnxruntime", "batch_size": 1}
    report["allocation"][-1]["achieved"] = 1.234
    report["latency"]["budget_reference_ms"] = 2.5
    write_report_files(tmp_path, report)
    page = (tmp_path / "report.html").read_text()
    assert "latency ≤ 1.5 ms (onnxruntime, batch 1)" in page
    assert "1.234 ms (measured on the whole pruned model; the unpruned model measured 2.500 ms" in page


def test_a_relative_latency_budget_shows_its_fraction_and_the_milliseconds_it_meant(itpruner_run, tmp_path):
    report = copy.deepcopy(itpruner_run)
    report["budget"] = {"latency": 0.7, "runtime": "torch", "batch_size": 4}
    report["allocation"][-1].update(achieved=1.5, unpruned=2.4)
    report["latency"].update(budget_reference_ms=2.5, budget_target_ms=1.75)
    write_report_files(tmp_path, report)
    page = (tmp_path / "report.html").read_text()
    assert "latency ≤ 70.0% of the unpruned model&#x27;s = 1.750 ms (torch, batch 4)" in page
    assert "62.5% of the unpruned model&#x27;s latency (timed in alternating rounds)" in page


def test_the_page_is_self_contained(written):
    out, _, page = written
    found = tags(page)
    images = [attrs for tag, attrs in found if tag == "img"]
    assert len(images) == len(FIGURES)
    for attrs in images:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (out / (attrs["alt"] or "")).read_bytes()
    assert not any(tag in ("script", "link", "iframe", "object", "embed") for tag, _ in found)
    # the dashboard's CSP refuses inline style attributes: all CSS is in the one <style> block
    assert not any("style" in attrs for _, attrs in found)
    assert not any(name.startswith("on") for _, attrs in found for name in attrs)
    assert "http://" not in page and "https://" not in page and "file:" not in page


def test_strings_from_the_report_are_escaped(itpruner_run, tmp_path):
    report = copy.deepcopy(itpruner_run)
    report["arch"] = "<script>alert(1)</script>"
    report["data"] = '"><img src=x onerror=alert(2)>'
    report["layers"][0]["name"] = "<b>conv</b>"
    report["layers"][1]["name"] = r"a$\frac$b"  # no mathtext in the figures: this would not parse
    report["allocation"][0]["criterion"] = "</td><script>alert(3)</script>"
    write_report_files(tmp_path, report)
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page and "<b>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert all(tag != "script" for tag, _ in tags(page))


def test_a_report_without_history_or_search_still_renders(itpruner_run, tmp_path):
    report = copy.deepcopy(itpruner_run)
    report["finetune"]["history"] = []
    del report["allocation"][0]["layer_weights"]
    paths = write_report_files(tmp_path, report)
    assert [p.name for p in paths] == ["widths.png", "macs.png", "report.html"]
    page = paths[-1].read_text()
    assert "No fine-tuning epochs were run." in page and len([t for t, _ in tags(page) if t == "img"]) == 2

    bare = {
        k: v for k, v in itpruner_run.items() if k not in ("layers", "allocation", "finetune", "latency", "timings")
    }
    (tmp_path / "bare").mkdir()
    paths = write_report_files(tmp_path / "bare", bare)
    assert [p.name for p in paths] == ["report.html"]
    assert f"{100 * bare['accuracy_after']:.2f}%" in paths[0].read_text()


def test_itpruner_reports_a_layer_weight_per_group(itpruner_run):
    weights = itpruner_run["allocation"][0]["layer_weights"]
    names = {layer["name"] for layer in itpruner_run["layers"]}
    assert weights and set(weights) <= names  # group ids are their first layer's name: plotted there
    assert max(weights.values()) == 1.0 and all(0 <= w <= 1 for w in weights.values())


def toy_problem(evaluate, budget=40.0):
    groups = tuple(GroupSpec(id=g, channels=40) for g in "abc")
    return AllocationProblem(
        groups=groups,
        scores={g: np.linspace(0.1, 1.0, 40) * (i + 1) for i, g in enumerate("abc")},
        cost=lambda keep: sum(keep.values()),
        budget=budget,
        evaluate=evaluate,
    )


def test_evolution_candidates_are_compact_and_flag_the_rejected_and_the_best(monkeypatch):
    def utility(keep):
        return sum(math.log(n) for n in keep.values())

    allocation = Evolution(trials=24, population=4, repair=False).allocate(toy_problem(utility))
    d = allocation.diagnostics
    rows = d["candidates"]
    assert [r["trial"] for r in rows] == list(range(24))
    assert [r["trial"] for r in rows if r["best"]] == [d["best_trial"]]
    assert sum(r["feasible"] for r in rows) == d["feasible"] < 24  # some sampled ratios were over the budget
    assert all((r["score"] is None) == (not r["feasible"]) == (r["cost_over_budget"] > 1) for r in rows)
    assert all(r["cost_over_budget"] == round(r["cost_over_budget"], 4) for r in rows)
    json.dumps(rows, allow_nan=False)

    monkeypatch.setattr(evolution_module, "CANDIDATES_SHOWN", 5)
    thinned = Evolution(trials=24, population=4).allocate(toy_problem(utility)).diagnostics
    trials = [r["trial"] for r in thinned["candidates"]]
    assert trials[0] == 0 and thinned["best_trial"] in trials and len(trials) <= 6


@pytest.mark.parametrize("steps", [1, 2])
def test_an_evolution_search_is_plotted(itpruner_run, tmp_path, steps):
    search = Evolution(trials=12, population=4, repair=False).allocate(
        toy_problem(lambda keep: sum(math.log(n) for n in keep.values()) / 10)
    )
    report = copy.deepcopy(itpruner_run)
    report["method"] = "evolution"
    step = {"criterion": "l1", "target": 0.5, "achieved": 0.499, **search.diagnostics}
    report["allocation"] = [step] * steps
    paths = write_report_files(tmp_path, report)
    assert "search.png" in [p.name for p in paths]
    page = (tmp_path / "report.html").read_text()
    assert "Evolution search" in page and "12 entries (in report.json)" in page


def test_halps_saliency_per_cost_is_plotted(itpruner_run, tmp_path):
    report = copy.deepcopy(itpruner_run)
    diagnostics = report["allocation"][0]
    groups = list(diagnostics.pop("layer_weights"))
    diagnostics["saliency_per_cost"] = {g: 10.0**-i for i, g in enumerate(groups)}  # log axis
    paths = write_report_files(tmp_path, report)
    assert "search.png" in [p.name for p in paths]
    assert "(in report.json), plotted in search.png" in (tmp_path / "report.html").read_text()


def test_nap_reports_the_median_score_of_each_group():
    problem = toy_problem(None, budget=60.0)
    d = NAP().allocate(problem).diagnostics
    assert set(d["group_median_score"]) == {"a", "b", "c"}
    assert d["group_median_score"]["c"] == pytest.approx(3 * 0.55, rel=1e-3)
    assert d["threshold"] is not None
