"""bench's Markdown from a synthetic results file: the numbers land in the right cells, seeds are
averaged, the README block is replaced between its markers only, and runs of different code
versions are never mixed. No torch, no training: a results dict is all the tables read."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench import tables
from bench.cells import MixedCodeVersions, by_code_version, cells
from bench.settings import Settings

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
HEADER = {"machine": "test machine", "versions": "torch 0", "date": "2030-01-02", "title_suffix": ""}
VERSION_A, VERSION_B = "a" * 64, "b" * 64


def latency(ort64: float, torch64: float = 30.0) -> dict[str, Any]:
    return {
        "threads": 2, "repeats": 3, "torch": {"1": 0.5, "64": torch64}, "onnxruntime": {"1": 0.25, "64": ort64},
        "load_average": 0.5, "interleaved": 8, "onnxruntime_spinning": False,
    }  # fmt: skip


def row(name: str, label: str, seed: int, after: float, ort64: float, *, version: str | None = VERSION_A,
        kind: str = "main", macs: float = 20e6) -> dict[str, Any]:  # fmt: skip
    method, _, criterion = name.partition(":")
    out = {
        "arch": "resnet20", "run": f"resnet20-{method}-{criterion}-{label}-e1-s{seed}", "name": name, "label": label,
        "kind": kind, "budget_kind": "flops", "seed": seed, "method": method, "criterion": criterion,
        "budget": {"flops": float(label.partition("=")[2])}, "accuracy_before": 0.9, "accuracy_pruned": 0.5,
        "bn_reestimation_batches": 8, "accuracy_after": after, "macs_before": 40e6, "macs_after": macs,
        "flops_ratio": macs / 40e6, "params_before": 270e3, "params_after": 130e3,
        "timings": {"importance": 1.0, "allocation": 2.0, "finetune": 60.0},
        "allocation": [{"criterion": criterion}], "layers": [], "latency_ms": latency(ort64), "wall_seconds": 70.0,
    }  # fmt: skip
    if version is not None:
        out["code_version"] = version
    return out


def suite(runs: list[dict[str, Any]], version: str | None = VERSION_A) -> dict[str, Any]:
    out = {
        "arch": "resnet20", "machine": "test machine", "date": "2030-01-01", "versions": {"torch": "0"},
        "baseline": {"accuracy": 0.9, "recipe": "test recipe", "seconds": 600.0, "weights": "w.safetensors",
                     "macs": 40e6, "params": 270e3, "latency_ms": latency(20.0)},
        "args": {"threads": 2}, "seeds": [0, 1],
        "settings": {"finetune": {"epochs": 1, "max_steps_per_epoch": None, "lr": 0.01, "batch_size": 128,
                                  "distill_weight": 0.7, "temperature": 4.0}, "latency_repeats": 3},
        "latency_compared": "flops=0.5", "runs": runs,
    }  # fmt: skip
    if version is not None:
        out["code_version"] = version
    return out


def two_seeds(version: str | None = VERSION_A) -> dict[str, Any]:
    """uniform:l1 and global:taylor at two budgets, seeds 0 and 1; tp:magnitude with seed 1 not run."""
    runs = [
        row("uniform:l1", "flops=0.5", 0, 0.80, 10.0, version=version),
        row("global:taylor", "flops=0.5", 0, 0.85, 16.0, version=version),
        row("tp:magnitude", "flops=0.5", 0, 0.70, 8.0, version=version),
        row("uniform:l1", "flops=0.333", 0, 0.70, 5.0, version=version, macs=13e6),
        row("global:taylor", "flops=0.333", 0, 0.75, 5.0, version=version, macs=13e6),
        row("uniform:l1", "flops=0.5", 1, 0.82, 12.0, version=version),
        row("global:taylor", "flops=0.5", 1, 0.86, 16.0, version=version),
        {**row("tp:magnitude", "flops=0.5", 1, 0.0, 1.0, version=version), "error": "not run"},
        row("uniform:l1", "flops=0.333", 1, 0.72, 5.0, version=version, macs=13e6),
        row("global:taylor", "flops=0.333", 1, 0.76, 5.0, version=version, macs=13e6),
    ]
    for r in runs:  # a row that did not finish carries only its identity and the error
        if "error" in r:
            for key in list(r):
                if key not in ("arch", "run", "name", "label", "kind", "budget_kind", "seed", "code_version", "error"):
                    del r[key]
    return suite(runs, version)


def table_row(lines: list[str], heading: str, name: str) -> list[str]:
    """The cells of ``name``'s row in the first table after ``heading``."""
    start = lines.index(heading)
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith(f"| {name} |"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row {name!r} under {heading!r}")


def test_method_table_cells_and_seed_means() -> None:
    lines = tables.arch_sections(two_seeds())
    uniform = table_row(lines, "### flops=0.5", "uniform:l1")
    # method, seeds, before, pruned, after, MACs (M), ratio, params (M), torch b1, torch b64, ort b1, ort b64,
    # speedup, speedup ÷ MACs speedup, search s, fine-tune s
    assert uniform[:8] == ["uniform:l1", "2", "90.00 ± 0.00", "50.00 ± 0.00", "81.00 ± 1.00", "20.00", "0.500", "0.130"]
    assert uniform[11] == "11.0"  # ort b64: (10 + 12) / 2
    assert uniform[12] == "1.83"  # speedup: mean of 20/10 and 20/12
    assert uniform[13] == "0.92"  # ÷ the MACs speedup (2)
    assert uniform[14:] == ["3.0", "60"]
    assert table_row(lines, "### flops=0.5", "global:taylor")[4] == "85.50 ± 0.50"
    tp = table_row(lines, "### flops=0.5", "tp:magnitude")  # seed 1 not run: one seed, no ±
    assert tp[1:5] == ["1", "90.00", "50.00", "70.00"]
    assert table_row(lines, "### flops=0.333", "uniform:l1")[4:6] == ["71.00 ± 1.00", "13.00"]
    unpruned = table_row(lines, "### flops=0.5", "unpruned")
    assert unpruned[2] == "90.00" and unpruned[11] == "20.0" and unpruned[12] == "1.00"
    text = "\n".join(lines)
    assert "## ResNet-20" in text and f"Code version: `{VERSION_A[:12]}`" in text
    # fidelity (c): global:taylor minus uniform:l1, paired by seed: +5 and +4 points
    assert "| global:taylor | 85.50 ± 0.50 | +4.50 ± 0.50 | 75.50 ± 0.50 | +4.50 ± 0.50 |" in text


def test_readme_block_replaced_between_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nIntro text.\n\n", "\n\n## Next section\n\nUntouched.\n"
    readme.write_text(f"{before}{tables.README_BEGIN}\nold numbers 12.34\n{tables.README_END}{after}")
    tables.update_readme(readme, tables.readme_summary([two_seeds()], HEADER))
    text = readme.read_text()
    assert text.startswith(before + tables.README_BEGIN + "\n") and text.endswith(tables.README_END + after)
    assert "old numbers" not in text
    block = text[len(before) + len(tables.README_BEGIN) : -len(tables.README_END + after)]
    assert f"code version `{VERSION_A[:12]}`" in block and "unpruned 90.00%" in block
    assert "| method | flops=0.5: top-1 | flops=0.5: speedup | flops=0.333: top-1 | flops=0.333: speedup |" in block
    assert "| uniform:l1 | 81.00 ± 1.00 | 1.83 | 71.00 ± 1.00 | 4.00 |" in block
    assert "| global:taylor | 85.50 ± 0.50 | 1.25 | 75.50 ± 0.50 | 4.00 |" in block
    assert "| tp:magnitude | 70.00 | 2.50 | – |  |" in block


def test_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    tables.update_readme(readme, "block")
    assert readme.read_text() == "no markers here\n"


def test_write_results_from_files(tmp_path: Path) -> None:
    (tmp_path / "suite-resnet20.json").write_text(json.dumps(two_seeds()))
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{tables.README_BEGIN}\n{tables.README_END}\nbottom\n")
    settings = Settings("cpu", tmp_path, tmp_path, tmp_path, "npz:x", {}, 3, VERSION_A)
    path = tables.write_results(settings, header=HEADER, readme=readme)
    text = path.read_text()
    assert text.startswith("# Benchmark results\n") and "Written 2030-01-02" in text
    assert "| uniform:l1 | 2 | 90.00 ± 0.00 | 50.00 ± 0.00 | 81.00 ± 1.00 | 20.00 | 0.500 |" in text
    assert "| uniform:l1 | 81.00 ± 1.00 | 1.83 |" in readme.read_text()
    assert readme.read_text().startswith("top\n") and readme.read_text().endswith("\nbottom\n")


def test_rows_of_two_code_versions_are_not_mixed(tmp_path: Path) -> None:
    mixed = two_seeds(VERSION_A)
    newer = two_seeds(VERSION_B)
    # seed 0 from version A, seed 1 from version B (as a hand-merged results file would have them)
    mixed["runs"] = [r for r in mixed["runs"] if r["seed"] == 0] + [r for r in newer["runs"] if r["seed"] == 1]
    with pytest.raises(MixedCodeVersions):
        cells(mixed["runs"])
    parts = by_code_version(mixed)
    assert [p["code_version"] for p in parts] == [VERSION_A, VERSION_B]
    assert all({r["seed"] for r in p["runs"]} == {i} for i, p in enumerate(parts))

    text = tables.results_markdown([mixed], [], HEADER)
    lines = text.splitlines()
    head_a, head_b = f"## ResNet-20, code version {VERSION_A[:12]}", f"## ResNet-20, code version {VERSION_B[:12]}"
    assert head_a in lines and head_b in lines and "\n## ResNet-20\n" not in text
    section_a = lines[lines.index(head_a) : lines.index(head_b)]
    section_b = lines[lines.index(head_b) :]
    assert table_row(section_a, "### flops=0.5", "uniform:l1")[1:5] == ["1", "90.00", "50.00", "80.00"]
    assert table_row(section_b, "### flops=0.5", "uniform:l1")[1:5] == ["1", "90.00", "50.00", "82.00"]
    assert "81.00" not in text  # the two seeds' mean would mix the versions
    block = tables.readme_summary([mixed], HEADER)
    assert "| uniform:l1 | 80.00 | 2.00 | 70.00 | 4.00 |" in block
    assert "| uniform:l1 | 82.00 | 1.67 | 72.00 | 4.00 |" in block
    assert "81.00" not in block


def test_rows_inherit_the_files_version_and_unversioned_rows_say_so() -> None:
    inherited = two_seeds()
    for r in inherited["runs"]:
        del r["code_version"]
    assert [p["code_version"] for p in by_code_version(inherited)] == [VERSION_A]

    old = two_seeds(version=None)  # as the results committed before code versions were recorded
    text = "\n".join(tables.arch_sections(old))
    assert "Code version: not recorded" in text and "81.00 ± 1.00" in text
    assert "(code version not recorded;" in tables.readme_summary([old], HEADER)
    # a file with versioned and unversioned rows is split too
    half = copy.deepcopy(old)
    half["runs"] = [r for r in old["runs"] if r["seed"] == 0] + [
        {**r, "code_version": VERSION_B} for r in old["runs"] if r["seed"] == 1
    ]
    assert [p["code_version"] for p in by_code_version(half)] == [None, VERSION_B]
    assert "81.00" not in tables.results_markdown([half], [], HEADER)


def test_committed_results_still_render() -> None:
    """The committed results json (data, not cache) are read as they are."""
    suites = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("suite-*.json"))]
    fidelities = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("fidelity-*.json"))]
    if not suites:
        pytest.skip("no committed results")
    text = tables.results_markdown(suites, fidelities, HEADER)
    block = tables.readme_summary(suites, HEADER)
    for s in suites:
        title = tables.ARCH_TITLES[s["arch"]]
        assert f"## {title}" in text and f"**{title}**" in block
        if not any("code_version" in r for r in s["runs"]) and "code_version" not in s:
            assert "Code version: not recorded" in text
