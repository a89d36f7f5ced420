"""Deployment speed: paired timing that a busy machine cannot fool, and "never slower by default".

The re-solve and the warning are decisions on measured speedups; to test each decision on its own,
two tests script the speedups the job measures (a real model's speed on a shared 2-core machine is
not something a test can fix). The paired timing itself is tested for real, under a real load.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch
from torch import nn

from autoprune import faster, stages
from autoprune.measure.latency import torch_threads
from autoprune.measure.paired import PairedTiming, paired_timing, torch_runner
from autoprune.pipeline import run
from autoprune.spec import Budget, FinetuneConfig, JobSpec, Target


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_paired_timing_resists_a_load_that_fools_a_fixed_before():
    """Two copies of one model: the true ratio is 1. A load of three busy processes on this
    machine's cores, started after the lone "before", makes the lone "after" look much slower;
    the paired ratio, both sides timed round by round under the same load, stays near 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    twin = nn.Sequential(*[m for m in model]).eval()
    run_a, run_b = torch_runner(model, (3, 48, 48), 4), torch_runner(twin, (3, 48, 48), 4)
    context = multiprocessing.get_context("spawn")
    burners = [context.Process(target=_burn, args=(60.0,), daemon=True) for _ in range(3)]
    with torch_threads(1):  # one thread: no OpenMP barrier waits on a preempted sibling thread
        lone_before = paired_timing(run_a, run_a, rounds=4, repeats=5).before_ms
        for p in burners:
            p.start()
        try:
            time.sleep(1.0)  # the load is running
            paired = paired_timing(run_a, run_b, rounds=12, repeats=5)
            lone_after = paired_timing(run_b, run_b, rounds=4, repeats=5).after_ms
        finally:
            for p in burners:
                p.terminate()
    tolerance = 0.25
    assert abs(paired.ratio - 1.0) < tolerance, paired
    assert lone_after / lone_before > 1 + tolerance, (lone_before, lone_after)  # what a fixed "before" would report


def _spec(tmp_path, weights, **changes) -> JobSpec:
    return JobSpec(
        arch="resnet20", weights=str(weights), data="digits", budget=Budget(kind="flops", value=0.5), method="global",
        finetune=FinetuneConfig(epochs=0), latency_repeats=6, exports=(), calibration_batches=2,
        out_dir=str(tmp_path / "out"), **changes,
    )  # fmt: skip


def test_a_cut_that_is_not_faster_is_re_solved_with_wider_steps(tmp_path, trained_resnet20, monkeypatch):
    measured = iter([0.8, 0.95, 1.3])  # step 1 slower, step 8 slower, step 16 faster: step 16 is kept
    monkeypatch.setattr(faster, "speedup", lambda ctx, pruned: next(measured))
    monkeypatch.setattr(faster, "measured_step", lambda ctx: 8)  # this host's runtime wants multiples of 8
    report = run(_spec(tmp_path, trained_resnet20)).to_dict()
    check = report["allocation"][0]["faster_check"]
    assert [t["channel_step"] for t in check["tried"]] == [1, 8, 16]
    pruned = [layer for layer in report["layers"] if layer["channels_after"] < layer["channels_before"]]
    assert pruned and all(layer["channels_after"] % 16 == 0 for layer in pruned)
    assert report["flops_ratio"] <= 0.5


def test_a_model_that_stays_slower_is_reported_as_such(tmp_path, trained_resnet20, monkeypatch):
    monkeypatch.setattr(faster, "speedup", lambda ctx, pruned: 0.9)  # no step helps
    monkeypatch.setattr(faster, "measured_step", lambda ctx: 4)  # tried first, before 8, 16, 32
    slower = PairedTiming(before_ms=1.0, after_ms=1.1, ratio=1.1, ratio_q1=1.05, ratio_q3=1.15, rounds=2)
    monkeypatch.setattr(stages, "paired_model_timing", lambda *args, **kwargs: slower)
    report = run(_spec(tmp_path, trained_resnet20)).to_dict()
    check = report["allocation"][0]["faster_check"]
    assert check["measured_step"] == 4 and [t["channel_step"] for t in check["tried"]] == [1, 4, 8, 16, 32]
    assert report["faster"] is False and "not faster" in report["warnings"][0]
    assert report["latency"]["paired"]["onnxruntime"]["ratio"] == 1.1


def _pruned_widths(report) -> list[int]:
    return [layer["channels_after"] for layer in report["layers"] if layer["channels_after"] < layer["channels_before"]]


@pytest.mark.parametrize("guard", [True, False])
def test_under_a_macs_budget_a_faster_aligned_cut_is_preferred_unless_less_accurate(
    tmp_path, trained_resnet20, monkeypatch, guard
):
    """Already faster (1.2x), but the host's step 4 gives 1.5x at the same MACs budget (and step 8 no
    more): kept when the accuracy guard passes, not when it finds the aligned cut worse."""
    measured = iter([1.2, 1.5, 1.5])
    monkeypatch.setattr(faster, "speedup", lambda ctx, pruned: next(measured))
    monkeypatch.setattr(faster, "measured_step", lambda ctx: 4)
    monkeypatch.setattr(faster, "not_worse", lambda before, after: guard)
    report = run(_spec(tmp_path, trained_resnet20)).to_dict()
    check = report["allocation"][0]["faster_check"]
    assert [t["channel_step"] for t in check["tried"]] == [1, 4, 8]
    assert all("held_out_accuracy" in t for t in check["tried"][:2])
    aligned = all(width % 4 == 0 for width in _pruned_widths(report))
    assert aligned is guard and report["flops_ratio"] <= 0.5


def test_an_aligned_cut_that_is_not_clearly_faster_is_not_taken(tmp_path, trained_resnet20, monkeypatch):
    measured = iter([1.2, 1.22])  # within the noise margin: the finer allocation stays
    monkeypatch.setattr(faster, "speedup", lambda ctx, pruned: next(measured))
    monkeypatch.setattr(faster, "measured_step", lambda ctx: 8)
    report = run(_spec(tmp_path, trained_resnet20)).to_dict()
    tried = report["allocation"][0]["faster_check"]["tried"]
    assert [t["channel_step"] for t in tried] == [1, 8] and "held_out_accuracy" not in tried[1]
    assert report["allocation"][0]["channel_step"] == 1


def test_the_accuracy_guard_is_a_paired_test_on_the_examples_the_cuts_disagree_on():
    before = torch.tensor([True] * 90 + [False] * 10)
    assert faster.not_worse(before, before.clone())
    fewer = before.clone()
    fewer[:2] = False  # 2 points lower, 2 disagreements: 2*sqrt(2)/100 + 0.005 = 0.033 allowed
    assert faster.not_worse(before, fewer)
    much_fewer = before.clone()
    much_fewer[:8] = False  # 8 points lower: 2*sqrt(8)/100 + 0.005 = 0.062 allowed
    assert not faster.not_worse(before, much_fewer)
    swapped = before.clone()
    swapped[:20], swapped[90:] = False, True  # 10 points lower over 30 disagreements: 0.115 allowed
    assert faster.not_worse(before, swapped)


def test_the_target_defaults_to_onnxruntime_on_the_cpu_at_batch_1_and_names_latency_budgets(tmp_path):
    spec = JobSpec(arch="resnet20", data="digits", budget=Budget.parse("flops=0.5"), out_dir="-")
    assert spec.target == Target(runtime="onnxruntime", device="cpu", batch_size=1, threads=None)
    assert spec.ensure_faster
    older = JobSpec(
        arch="resnet20", data="digits", budget={"latency": 0.7, "runtime": "torch", "batch_size": 8}, out_dir="-"
    )
    assert older.target.runtime == "torch" and older.target.batch_size == 8  # the budget's own fields, as before
    newer = older.evolve(target=Target(batch_size=4))
    assert newer.budget.runtime == "onnxruntime" and newer.budget.batch_size == 4  # measured in the target
    with pytest.raises(Exception, match="cuda target is timed in torch"):
        Target(device="cuda")
