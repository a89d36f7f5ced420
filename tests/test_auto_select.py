"""``auto`` chooses among candidate allocations by adaptive-BN accuracy, and says what it compared."""

from __future__ import annotations

import pytest
import torch
from conftest import build

from autoprune.allocate import ProblemInputs, allocate
from autoprune.data import iterate_batches, load_data
from autoprune.graph import build_graph
from autoprune.importance import get_criterion
from autoprune.models import load_weights
from autoprune.pipeline import run
from autoprune.spec import Budget, FinetuneConfig, JobSpec, Target, allocator_options
from solvers import Allocation, AllocationProblem, Allocator, AllocatorContext
from solvers.auto import Auto
from solvers.global_rank import GlobalRank
from solvers.uniform import Uniform

X = torch.zeros(1, 3, 32, 32)


class Starved(Allocator):
    """An absurd allocation within the budget: every group at its floor but the widest, which keeps all."""

    def allocate(self, problem: AllocationProblem) -> Allocation:
        widest = max(problem.groups, key=lambda g: g.channels)
        units = {g.id: g.units if g is widest else g.min_units for g in problem.groups}
        return Allocation(keep=problem.channels(units), cost=problem.cost_of_units(units))


class Broken(Allocator):
    def allocate(self, problem: AllocationProblem) -> Allocation:
        raise ValueError("solver status: infeasible_inaccurate")


@pytest.fixture(scope="module")
def trained(trained_resnet20):
    model = build("resnet20")
    load_weights(model, str(trained_resnet20))
    graph = build_graph(model.eval(), X)
    data = load_data("digits")
    scores = get_criterion("l1").score(graph)
    batches = lambda: iterate_batches(data, "train", 64, limit=2)  # noqa: E731
    return ProblemInputs.measure(model, graph, scores, X, data=data, batches=batches, calibration_batches=2)


def test_an_absurd_candidate_loses_and_a_failing_one_is_reported(trained):
    candidates = {"starved": Starved(), "global": GlobalRank(), "broken": Broken(), "uniform": Uniform()}
    allocation = allocate(Auto(candidates), trained, Budget.parse("flops=0.5"))
    rows = {row["method"]: row for row in allocation.diagnostics["auto_candidates"]}
    assert list(rows) == ["starved", "global", "broken", "uniform"]
    assert rows["broken"]["error"] == "solver status: infeasible_inaccurate" and "score" not in rows["broken"]
    assert rows["starved"]["score"] < min(rows["global"]["score"], rows["uniform"]["score"])
    chosen = allocation.diagnostics["auto_chosen"]
    assert chosen in ("global", "uniform") and rows[chosen]["chosen"]
    assert rows[chosen]["score"] == max(row.get("score", -1) for row in rows.values())
    assert sum(row["chosen"] for row in rows.values()) == 1
    assert all(0.9 < row["cost_over_budget"] <= 1 for m, row in rows.items() if m not in ("broken", "starved"))
    # the chosen candidate's widths are what auto returns
    assert dict(allocation.keep) == dict(allocate(candidates[chosen], trained, Budget.parse("flops=0.5")).keep)


def test_the_default_job_chooses_among_all_candidates_and_reports_them(tmp_path, trained_resnet20):
    spec = JobSpec(
        arch="resnet20", data="digits", weights=str(trained_resnet20), budget=Budget.parse("flops=0.5"),
        finetune=FinetuneConfig(epochs=0), latency_repeats=3, exports=(), ensure_faster=False,
        target=Target(runtime="torch"), calibration_batches=2, options={"auto_search_trials": 2},
        out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    assert spec.method == "auto" and spec.criterion_name == "taylor"
    report = run(spec).to_dict()
    assert report["method"] == "auto"
    rows = report["candidates"]
    assert [row["method"] for row in rows] == ["global", "uniform", "nap", "itpruner", "evolution"]
    assert all(row["error"] is None and row["seconds"] > 0 for row in rows)
    (chosen,) = [row for row in rows if row["chosen"]]
    assert chosen["score"] == max(row["score"] for row in rows)
    assert report["allocation"][0]["auto_chosen"] == chosen["method"]
    assert report["flops_ratio"] <= 0.5


def test_auto_takes_no_latency_budget_and_its_search_can_be_left_out():
    latency = JobSpec(arch="resnet20", data="digits", budget=Budget.parse("latency=0.7"), out_dir="-")
    assert latency.method == "halp"  # auto under a latency budget: HALP, as before
    spec = JobSpec(arch="resnet20", data="digits", budget="flops=0.5", out_dir="-", options={"auto_search_trials": 0})
    auto = Auto.configure(allocator_options(spec), AllocatorContext(channel_step=8))
    assert list(auto.candidates) == ["global", "uniform", "nap", "itpruner"] and auto.channel_step == 8


def test_a_re_solve_asks_only_the_candidate_auto_chose_before():
    """The never-slower and latency-aware re-solves (autoprune/faster.py) keep auto's choice."""
    spec = JobSpec(arch="resnet20", data="digits", budget="flops=0.5", out_dir="-")
    auto = Auto.configure(allocator_options(spec), AllocatorContext(channel_step=8, candidate="evolution"))
    assert list(auto.candidates) == ["evolution"] and auto.channel_step == 8
