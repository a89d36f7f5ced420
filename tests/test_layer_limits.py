"""Per-group limits (--max-layer-prune, --keep, layer_limits): every allocator honours its floors."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from conftest import build

from autoprune.allocate import LayerLimits, ProblemInputs, allocate, group_specs
from autoprune.errors import BudgetError
from autoprune.graph import build_graph
from autoprune.importance import get_criterion
from autoprune.pipeline import run
from autoprune.spec import Budget, FinetuneConfig, JobSpec, SpecError, Target
from autoprune.spec_cli import add_spec_flags, spec_from_args
from solvers import ALLOCATORS, AllocationProblem, AllocatorContext, GroupSpec, InfeasibleBudget, QuadraticCost
from solvers.auto import Auto, default_candidates
from solvers.base import snap_to_step
from solvers.evolution import Evolution

# a chain 3 → a → b → c → d → 10 in MACs per pixel; c feeds a group convolution of 2 blocks
CHAIN = QuadraticCost(
    constant=0.0, linear={"a": 3.0, "d": 10.0}, quadratic={("a", "b"): 1.0, ("b", "c"): 1.0, ("c", "d"): 1.0}
)
FULL = CHAIN({"a": 16, "b": 16, "c": 8, "d": 24})  # 864
FLOORS = {"a": 16, "b": 12, "d": 6}  # a kept whole, b loses at most 25%, d at most 75% (units)
QUICK_EVOLUTION = Evolution(trials=3, population=2)


def chain(budget: float, floors: dict[str, int]) -> AllocationProblem:
    groups = (
        GroupSpec(id="a", channels=16, min_units=floors.get("a", 1)),
        GroupSpec(id="b", channels=16, min_units=floors.get("b", 1)),
        GroupSpec(id="c", channels=8, blocks=2, min_units=floors.get("c", 1)),
        GroupSpec(id="d", channels=24, min_units=floors.get("d", 1)),
    )
    rng = np.random.default_rng(0)
    return AllocationProblem(
        groups=groups,
        scores={g.id: rng.random(g.channels) + 0.1 for g in groups},
        cost=CHAIN,
        budget=budget,
        quadratic_cost=CHAIN,
        layer_importance={"a": 1.0, "b": 0.2, "c": 1.0, "d": 0.5},
        evaluate=lambda keep: float(sum(np.sqrt(keep[g.id] / g.channels) for g in groups)),
    )


def allocator(name: str, channel_step: int):
    """As a job configures it; the searches kept short (the contract, not the search quality)."""
    if name == "evolution":
        return QUICK_EVOLUTION
    if name == "auto":
        return Auto({**default_candidates(), "evolution": QUICK_EVOLUTION}, channel_step=channel_step)
    cls = ALLOCATORS[name]
    return cls.configure(cls.Options(), AllocatorContext(channel_step=channel_step))


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
@pytest.mark.parametrize("step", [1, 4])
def test_every_allocator_honours_the_floors_also_after_snapping(name, step):
    problem = chain(0.5 * FULL, FLOORS)
    keep = snap_to_step(problem, allocator(name, step).allocate(problem).keep, step)  # as allocate() snaps
    assert keep["a"] == 16  # left whole
    assert keep["b"] >= 12 and keep["d"] >= 6 and keep["c"] >= 2
    assert CHAIN(keep) <= problem.budget
    if step > 1:
        assert all(n % step == 0 or n == g.channels for g, n in zip(problem.groups, keep.values(), strict=True))


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_without_the_floors_every_allocator_would_cross_one(name):
    """So the test above can fail: the floors change what each allocator does."""
    keep = allocator(name, 1).allocate(chain(0.5 * FULL, {})).keep
    assert keep["a"] < 16 or keep["b"] < 12 or keep["d"] < 6


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_a_budget_below_the_floors_is_infeasible_for_every_allocator(name):
    floor_cost = CHAIN({"a": 16, "b": 12, "c": 2, "d": 6})
    with pytest.raises(InfeasibleBudget):
        allocator(name, 1).allocate(chain(floor_cost - 1, FLOORS))


X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet20():
    model = build("resnet20")
    graph = build_graph(model, X)
    return ProblemInputs.measure(model, graph, get_criterion("l1").score(graph), X)


def test_limits_map_to_floors_of_the_original_width(resnet20):
    graph = resnet20.graph
    limits = LayerLimits(max_prune=0.6, keep=("layer1.0.conv1",), per_group={"layer3.*": 0.2})
    floors = {g.id: g.min_units for g in group_specs(graph, 0.1, limits)}
    assert floors["layer1.0.conv1"] == 16  # kept whole
    assert floors["layer2.1.conv1"] == math.ceil(0.4 * 32)  # --max-layer-prune 0.6
    assert floors["layer3.1.conv1"] == math.ceil(0.8 * 64)  # the override
    assert floors["layer3.0.downsample.0"] == math.ceil(0.8 * 64)  # its producers include layer3.*.conv2
    assert {g.id: g.min_units for g in group_specs(graph, 0.1)}["layer3.1.conv1"] == 7  # the default 10% floor
    # after an earlier cut to 20 channels, a 0.6 limit still counts from the unpruned 32: at least 13
    later = {g.id: g.min_units for g in group_specs(graph, 0.1, limits, original={"layer2.1.conv1": 32})}
    assert later["layer2.1.conv1"] == 13


def test_a_pattern_that_matches_no_group_is_a_clear_error(resnet20):
    with pytest.raises(SpecError, match="--keep layer9.* matches no prunable layer group; the groups are: "):
        group_specs(resnet20.graph, 0.1, LayerLimits(keep=("layer9.*",)))


@pytest.mark.parametrize("channel_step", [1, 8])
def test_allocate_reports_the_groups_held_at_their_limit(resnet20, channel_step):
    resnet20.limits = LayerLimits(max_prune=0.5, keep=("conv1",))
    try:
        allocation = allocate("global", resnet20, Budget.parse("flops=0.4"), channel_step=channel_step)
    finally:
        resnet20.limits = LayerLimits()
    widths = {g.id: g.channels for g in resnet20.graph.groups}
    assert allocation.keep["conv1"] == 16
    assert all(allocation.keep[g] >= widths[g] // 2 for g in widths)
    bound = {row["group"]: row for row in allocation.diagnostics["bound"]}
    assert bound["conv1"]["limit"] == "--keep conv1"
    assert any(row["limit"] == "--max-layer-prune 0.5" for row in bound.values())


def test_a_budget_the_limits_cannot_meet_names_them(resnet20):
    resnet20.limits = LayerLimits(max_prune=0.3, per_group={"layer3.*": 0.1})
    try:
        with pytest.raises(BudgetError, match=r"cannot be met.*--max-layer-prune 0.3, --layer-limit layer3.\*=0.1"):
            allocate("uniform", resnet20, Budget.parse("flops=0.5"))
    finally:
        resnet20.limits = LayerLimits()


def test_the_flags_fill_the_spec_fields():
    parser = argparse.ArgumentParser()
    add_spec_flags(parser)
    base = ["--arch", "resnet20", "--data", "digits", "--out", "x", "--budget", "flops=0.5"]
    spec = spec_from_args(
        parser.parse_args(
            [*base, "--max-layer-prune", "0.7", "--keep", "fc*", "--keep", "conv1", "--layer-limit", "layer3.*=0.25"]
        )
    )
    assert (spec.max_layer_prune, spec.keep, spec.layer_limits) == (0.7, ("fc*", "conv1"), {"layer3.*": 0.25})
    with pytest.raises(SpecError, match="--layer-limit takes PATTERN=NUMBER"):
        spec_from_args(parser.parse_args([*base, "--layer-limit", "layer3.*"]))
    with pytest.raises(SpecError, match="layer_limits"):
        JobSpec(arch="resnet20", data="digits", out_dir="x", budget="flops=0.5", layer_limits={"conv1": 1.5})


def test_a_job_leaves_kept_groups_whole_and_respects_the_max_prune(tmp_path):
    """End to end through the pipeline, at a channel step of 8 (as the never-slower re-solve cuts)."""
    spec = JobSpec(
        arch="resnet20", data="digits", budget=Budget.parse("flops=0.5"), method="uniform",
        finetune=FinetuneConfig(epochs=0), latency_repeats=3, exports=(), ensure_faster=False, channel_step=8,
        target=Target(runtime="torch"), max_layer_prune=0.6, keep=("layer2.1.conv1",), out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    report = run(spec).to_dict()
    layers = {row["name"]: row for row in report["layers"]}
    assert layers["layer2.1.conv1"]["channels_after"] == 32
    assert all(row["channels_after"] >= math.ceil(0.4 * row["channels_before"]) for row in report["layers"])
    assert all(row["channels_after"] % 8 == 0 for row in report["layers"] if row["name"] != "fc")
    assert report["flops_ratio"] <= 0.5
    limits = report["limits"]
    assert (limits["max_layer_prune"], limits["keep"]) == (0.6, ["layer2.1.conv1"])
    assert {"group": "layer2.1.conv1", "channels": 32, "of": 32, "limit": "--keep layer2.1.conv1"} in limits["bound"]


def test_an_iterative_schedule_counts_limits_from_the_unpruned_widths():
    from autoprune.prune_step import original_widths

    plans = [
        {"groups": {"conv1": {"channels": 16, "keep": list(range(12))}}},
        {
            "groups": {
                "conv1": {"channels": 12, "keep": list(range(9))},
                "layer1.0.conv1": {"channels": 16, "keep": [0]},
            }
        },
    ]
    assert original_widths(plans) == {"conv1": 16, "layer1.0.conv1": 16}
    assert original_widths([]) == {}
