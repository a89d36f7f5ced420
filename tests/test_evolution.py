"""Evolution allocator (Optuna search) on toy problems with brute-forced optima; adaptive-BN evaluator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import optuna
import pytest
import torch
from nets import conv_bn
from torch import nn

from autoprune.adaptive_bn import make_evaluator, recalibrate, split_training
from autoprune.allocate import group_specs
from autoprune.data import load_data
from autoprune.finetune import finetune
from autoprune.graph import build_graph
from autoprune.importance import get_criterion
from autoprune.measure import CostModel, count_cost
from autoprune.spec import FinetuneConfig
from solvers import AllocationProblem, GroupSpec, InfeasibleBudget
from solvers.evolution import Evolution
from solvers.uniform import Uniform

ALPHA = {"a": 0.5, "b": 0.3, "c": 0.2}
WEIGHT = {"a": 1.0, "b": 2.0, "c": 1.0}


def log_utility(keep):
    """Concave and increasing: its maximum under a linear cost lies on the budget boundary."""
    return sum(ALPHA[g] * math.log(keep[g]) for g in ALPHA)


def linear_problem(
    budget=60.0, seed=0, evaluate=log_utility, channels=40, blocks=1, min_units=1, storage=None, study_name=None
):
    groups = tuple(GroupSpec(id=g, channels=channels, blocks=blocks, min_units=min_units) for g in ALPHA)
    return AllocationProblem(
        groups=groups,
        scores={g: np.ones(channels) for g in ALPHA},
        cost=lambda keep: sum(WEIGHT[g] * keep[g] for g in keep),
        budget=budget,
        evaluate=evaluate,
        storage=storage,
        study_name=study_name,
        seed=seed,
    )


def chain_cost(keep):
    """A three-layer CNN's MACs: bilinear in neighbouring widths, like the real cost model."""
    return 27 * keep["a"] + 9 * keep["a"] * keep["b"] + 9 * keep["b"] * keep["c"] + 10 * keep["c"]


def test_finds_the_brute_force_optimum_on_the_budget_boundary():
    problem = linear_problem()
    best = max(
        (log_utility(dict(zip(ALPHA, k, strict=True))), k)
        for k in itertools.product(range(1, 41), repeat=3)
        if problem.cost(dict(zip(ALPHA, k, strict=True))) <= problem.budget
    )
    allocation = Evolution(trials=60).allocate(problem)
    uniform = log_utility(Uniform().allocate(problem).keep)
    assert best[0] - uniform > 0.1  # the uniform start is far from the optimum
    assert allocation.diagnostics["best_score"] == pytest.approx(log_utility(allocation.keep))
    assert allocation.diagnostics["best_score"] >= best[0] - 0.02
    assert allocation.cost == problem.cost(allocation.keep) <= problem.budget


def test_repair_fills_the_budget_and_the_uniform_allocation_is_tried_first():
    calls = []
    problem = linear_problem(evaluate=lambda keep: calls.append(dict(keep)) or log_utility(keep))
    allocation = Evolution(trials=12, population=4).allocate(problem)
    assert calls[0] == dict(Uniform().allocate(problem).keep)
    # the repaired candidate stops only when the next unit (costing 1 or 2) would not fit
    assert all(problem.budget - 2 < problem.cost(keep) <= problem.budget for keep in calls)
    shown = allocation.diagnostics["candidates"]
    assert [c["cost_over_budget"] for c in shown] == [round(problem.cost(k) / 60, 4) for k in calls]
    assert allocation.diagnostics["feasible"] == 12
    assert allocation.diagnostics["uniform_score"] == log_utility(calls[0])


@pytest.mark.parametrize("repair", [True, False])
def test_never_evaluates_or_returns_an_infeasible_allocation(repair):
    calls = []
    groups = tuple(GroupSpec(id=g, channels=32) for g in ALPHA)
    budget = 0.2 * chain_cost({g: 32 for g in ALPHA})
    problem = AllocationProblem(
        groups=groups,
        scores={g: np.ones(32) for g in ALPHA},
        cost=chain_cost,
        budget=budget,
        evaluate=lambda keep: calls.append(dict(keep)) or log_utility(keep),
        seed=3,
    )
    allocation = Evolution(trials=40, population=8, repair=repair).allocate(problem)
    diagnostics = allocation.diagnostics
    assert all(chain_cost(keep) <= budget for keep in calls)
    assert chain_cost(allocation.keep) <= budget and allocation.keep in calls
    feasible = [c for c in diagnostics["candidates"] if c["feasible"]]
    assert diagnostics["feasible"] == len(feasible) == len(calls)
    assert [c["score"] for c in feasible] == [round(log_utility(keep), 4) for keep in calls]
    if repair:
        assert len(calls) == 40
    else:  # random ratios in [1/32, 1]: most cost more than 20% of the full chain, and are skipped
        assert len(calls) < 40


def test_respects_blocks_and_min_units():
    calls = []
    problem = linear_problem(
        budget=70.0, channels=32, blocks=4, min_units=3, evaluate=lambda keep: calls.append(dict(keep)) or 0.0
    )
    allocation = Evolution(trials=20, population=4).allocate(problem)
    for keep in [*calls, allocation.keep]:
        assert all(n % 4 == 0 and 12 <= n <= 32 for n in keep.values())
        assert problem.cost(keep) <= problem.budget


def test_study_is_persisted_with_constraints_and_rejected_trials_are_not_evaluated(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    calls = []
    problem = linear_problem(budget=40.0, storage=url, evaluate=lambda keep: calls.append(dict(keep)) or 1.0)
    allocation = Evolution(trials=8, population=4, repair=False).allocate(problem)
    trials = optuna.load_study(study_name=allocation.diagnostics["study_name"], storage=url).trials
    assert len(trials) == 8
    assert trials[0].params == {g: keep / 40 for g, keep in Uniform().allocate(problem).keep.items()}
    evaluated = []
    for trial in trials:
        candidate = trial.user_attrs["candidate"]
        keep = candidate["keep"]
        # without repair the candidate is the sampled ratios rounded to the nearest channel
        assert keep == {g: max(1, round(trial.params[g] * 40)) for g in ALPHA}
        assert trial.constraints["budget"] == pytest.approx(problem.cost(keep) / 40.0 - 1)
        assert candidate["cost_fraction"] == pytest.approx(problem.cost(keep) / 40.0)
        if trial.constraints["budget"] > 0:
            assert trial.value == -math.inf
        else:
            evaluated.append(keep)
            assert trial.value == 1.0
    assert evaluated == calls and 0 < len(calls) < 8


@pytest.mark.parametrize("sampler", ["nsga2", "cmaes"])
def test_both_samplers_run_and_are_reproducible(sampler):
    if sampler == "cmaes":
        pytest.importorskip("cmaes", reason="Optuna's CMA-ES sampler needs the cmaes package")
    first = Evolution(trials=20, population=6, sampler=sampler).allocate(linear_problem(seed=5))
    again = Evolution(trials=20, population=6, sampler=sampler).allocate(linear_problem(seed=5))
    assert first.keep == again.keep and first.diagnostics["candidates"] == again.diagnostics["candidates"]
    assert first.cost <= 60.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"trials": 0}, "trials"),
        ({"sampler": "tpe"}, "sampler"),
        ({"population": 1}, "population"),
        ({"sampler": "cmaes", "repair": False}, "repair"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Evolution(**kwargs)


# --- adaptive BN ------------------------------------------------------------------------------


class SmallNet(nn.Module):
    """Three conv-BN layers: pruning the first two leaves the next BN's statistics stale."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16), nn.MaxPool2d(2), conv_bn(16, 32), nn.MaxPool2d(2), conv_bn(32, 32), nn.AdaptiveAvgPool2d(1)
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@pytest.fixture(scope="module")
def trained():
    data = load_data("digits").subset(1000, 10)
    torch.manual_seed(0)
    model = SmallNet()
    cfg = FinetuneConfig(
        epochs=2, lr=3e-3, optimizer="adamw", weight_decay=0.0, distill=False, augment=False, batch_size=32
    )
    finetune(model, data, cfg)
    example = torch.zeros(1, 3, 32, 32)
    graph = build_graph(model, example)
    return model.eval(), graph, get_criterion("l1").score(graph), data


def test_recalibration_is_the_plain_average_of_batch_statistics():
    bn = nn.BatchNorm2d(3, momentum=0.3)
    bn.running_mean.fill_(5.0)
    model = nn.Sequential(bn).eval()
    batches = [torch.randn(4, 3, 2, 2) * (i + 1) + i for i in range(3)]
    recalibrate(model, ((x, None) for x in batches))
    means = torch.stack([x.mean((0, 2, 3)) for x in batches]).mean(0)
    variances = torch.stack([x.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for x in batches]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5)
    assert torch.allclose(bn.running_var, variances, atol=1e-4)
    assert bn.momentum == 0.3 and not model.training and not bn.training


def test_held_out_examples_are_disjoint_from_calibration():
    held, calibration = split_training(100, 30, seed=4)
    assert len(held) == 30 and set(held.tolist()).isdisjoint(calibration.tolist())
    assert sorted([*held.tolist(), *calibration.tolist()]) == list(range(100))
    assert torch.equal(held, split_training(100, 30, seed=4)[0])


def test_adaptive_bn_beats_stale_statistics_and_is_deterministic(trained):
    model, graph, scores, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = {g.id: round(0.6 * g.channels) for g in graph.groups}
    adaptive = make_evaluator(model, graph, scores, data, calibration_batches=10, eval_examples=400)
    stale = make_evaluator(model, graph, scores, data, calibration_batches=0, eval_examples=400)
    score = adaptive(keep)
    assert score >= stale(keep) + 0.1 and score > 0.3
    assert adaptive(keep) == score
    assert make_evaluator(model, graph, scores, data, calibration_batches=10, eval_examples=400)(keep) == score
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers untouched
    assert not model.training


def test_evolution_with_adaptive_bn_meets_a_macs_budget_and_refuses_one_percent(trained):
    model, graph, scores, data = trained
    example = graph.example_input
    report = count_cost(model, example)
    cost_model = CostModel(graph, report)

    def problem(fraction, evaluate):
        return AllocationProblem(
            groups=group_specs(graph, 0.1),
            scores=scores,
            cost=lambda keep: cost_model.cost(keep)[0],
            budget=fraction * report.macs,
            evaluate=evaluate,
        )

    evaluate = make_evaluator(model, graph, scores, data, calibration_batches=4, eval_examples=300)
    allocation = Evolution(trials=6, population=3).allocate(problem(0.5, evaluate))
    assert cost_model.cost(allocation.keep)[0] <= 0.5 * report.macs
    assert allocation.diagnostics["best_score"] == evaluate(allocation.keep)
    with pytest.raises(InfeasibleBudget):
        Evolution().allocate(problem(0.01, lambda keep: pytest.fail("an infeasible budget must not be searched")))


class Crash(Exception):
    pass


def test_a_stored_search_interrupted_midway_continues_where_it_stopped(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    calls = []

    def crashing(keep):
        if len(calls) == 5:
            raise Crash  # the process dies during its 6th evaluation
        calls.append(dict(keep))
        return log_utility(keep)

    with pytest.raises(Crash):
        Evolution(trials=12, population=4).allocate(linear_problem(storage=url, study_name="job-1", evaluate=crashing))
    first = list(calls)
    calls.clear()
    allocation = Evolution(trials=12, population=4).allocate(
        linear_problem(
            storage=url, study_name="job-1", evaluate=lambda keep: calls.append(dict(keep)) or log_utility(keep)
        )
    )
    assert allocation.diagnostics["resumed_trials"] == 5  # repair: every trial is evaluated, none rejected
    assert len(calls) == 12 - 5  # only the missing trials are evaluated again
    study = optuna.load_study(study_name="job-1", storage=url)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 12
    assert allocation.diagnostics["uniform_score"] == log_utility(first[0])  # trial 0 from the first process
    best = max(first + calls, key=log_utility)
    assert allocation.diagnostics["best_score"] == pytest.approx(log_utility(best))


def test_helpers_joining_a_stored_search_share_its_trials(tmp_path):
    """A helper asks and tells on the lead's study; the lead's answer is the best of everyone's trials."""
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    seen: dict[str, list[dict]] = {"lead": [], "helper": []}

    def slow(who):
        def evaluate(keep):
            time.sleep(0.02)  # long enough for the two to interleave
            seen[who].append(dict(keep))
            return log_utility(keep)

        return evaluate

    joined = {}
    helper = threading.Thread(
        target=lambda: joined.update(
            Evolution(trials=30, population=4).join(
                linear_problem(storage=url, study_name="shared", evaluate=slow("helper")),
                label="helper-1", seed=1, should_stop=lambda: False, wait_s=30, poll_s=0.05,
            )
        )
    )  # fmt: skip
    helper.start()  # before the study exists: it waits for the lead
    time.sleep(0.2)
    allocation = Evolution(trials=30, population=4).allocate(
        linear_problem(storage=url, study_name="shared", evaluate=slow("lead"))
    )
    helper.join(30)
    by = allocation.diagnostics["trials_by"]
    assert joined["joined"] and joined["trials_added"] == len(seen["helper"]) > 0
    assert by["lead"] == len(seen["lead"]) and 1 <= by["helper-1"] <= len(seen["helper"])
    assert seen["lead"][0] == Uniform().allocate(linear_problem()).keep  # the lead ran the enqueued uniform trial
    study = optuna.load_study(study_name="shared", storage=url)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert 30 <= len(finished) <= 31  # the helper's last trial may land after the lead stopped counting
    counted = {c["trial"] for c in allocation.diagnostics["candidates"]}
    assert len(counted) == sum(by.values()) >= 30
    assert allocation.diagnostics["best_score"] == max(t.value for t in finished if t.number in counted)


def test_a_helper_gives_up_when_no_lead_creates_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    stops = iter([False, False, True])
    joined = Evolution(trials=5).join(
        linear_problem(storage=url, study_name="never"), label="h", seed=1, should_stop=lambda: next(stops), poll_s=0.01
    )
    assert joined == {"study_name": "never", "joined": False, "trials_added": 0}


def test_processes_opening_a_fresh_study_database_together_all_succeed(tmp_path):
    """Optuna creates its tables on first open; concurrent first opens race (seen between a job and its helper)."""
    import threading

    from solvers.evolution import _storage

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    barrier, errors = threading.Barrier(4), []

    def open_it():
        barrier.wait()
        try:
            with _storage(url) as storage:
                storage.get_all_studies()
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(repr(exc))

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_the_search_reports_its_progress_after_every_trial():
    import dataclasses

    seen = []
    Evolution(trials=8, population=4).allocate(dataclasses.replace(linear_problem(), report=seen.append))
    assert seen == [i / 8 for i in range(8)]  # before each of the 8 trials: the share already finished
