"""Search-based allocation (docs/methods.md#evolution): an Optuna ask/tell search over per-group keep ratios.

This is MetaPruning's evolutionary search without its PruningNet, with candidates scored by an
injected ``problem.evaluate`` (EagleEye's adaptive-BN accuracy in the pipeline, see
``autoprune.adaptive_bn``), run by an Optuna sampler:

- **Search space.** One float per group, its keep ratio in ``[min_units/units, 1]``. Groups whose
  ``min_units`` equals their width have nothing to choose and are left out. There is no
  reason to share ratios between groups here: the channel-coupling groups already merge the
  widths MetaPruning shares (residual stage outputs), so the ratios stay per group.
- **Repair (default).** A sampled ratio vector ``r`` is read as a *shape*: group ``g`` gets its
  k-th unit when a common scale ``s`` reaches ``(k - ½)/(r_g·units_g)``, so ``s = 1`` is ``r``
  itself rounded to whole units, and growing ``s`` adds units in proportion to ``r`` (so only the
  shape of ``r`` matters, not its scale: a flat direction the samplers tolerate). The
  largest prefix of that order whose cost fits the budget is found by bisection on the real
  cost (``largest_feasible``). This is ITPruner's ``raw2cfg`` rescaling (one scalar for all
  ratios) made exact on the integer grid: it moves candidates that are over the budget down and
  those under it up, so every evaluation is spent on a network that uses the budget, and
  none is infeasible. The sampler learns from the raw parameters; the evaluated allocation
  is kept in the trial's user attribute ``candidate``, so a stored study can be read back.
- **Rejection** (``repair=False``): MetaPruning/EagleEye's rule. The sampled ratios, rounded,
  are the candidate; one over the budget is not evaluated and is told ``-inf``. NSGA-II's
  constrained domination (feasible beats infeasible, then smaller violation) does the rest.
- **Constraint.** Every trial records ``trial.set_constraint("budget", cost/budget - 1)``
  (≤ 0 is feasible) for the candidate it stands for; ``constraints_func`` is deprecated in
  Optuna 5.0. CMA-ES ignores constraints, so it only runs with repair.
- **Warm start.** The uniform allocation is enqueued as the first trial, so
  the search never returns less than the uniform baseline as judged by ``evaluate``.
- **Several processes.** With a stored study, ``join`` lets other processes (the service's
  search helpers) ask and tell on the same study while ``allocate`` leads it; everyone stops when
  the study holds ``trials`` finished trials, and the lead picks the best of all of them. Each
  trial records who ran it (user attribute ``by``), tallied in ``trials_by``. Alone, the search is
  deterministic under its seed; with helpers, which trials exist depends on timing.
- **Diagnostics.** ``candidates``: every trial in order, rejected ones included, its
  cost/budget and score rounded to 4 decimals, thinned to about ``CANDIDATES_SHOWN`` trials so
  a long search stays a small report (the stored study keeps everything exactly).

Simplifications: single-objective (maximise ``evaluate``; the cost is a constraint, not a
second objective), and a few dozen trials instead of the papers' ~1000 evaluations, because
each adaptive-BN evaluation costs forward passes over the calibration and held-out batches.
"""

from __future__ import annotations

import importlib.util
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import sqlalchemy.exc
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState

from solvers.base import Allocation, AllocationProblem, Allocator, AllocatorContext, GroupSpec, largest_feasible
from solvers.uniform import Uniform

SAMPLERS = ("nsga2", "cmaes")
CANDIDATES_SHOWN = 200  # trials kept in the compact ``candidates`` diagnostic (the best always)
LEAD = "lead"  # the ``by`` label of trials run by ``allocate`` (helpers label theirs in ``join``)


@dataclass(frozen=True)
class _Evaluated:
    keep: dict[str, int]
    cost: float
    score: float
    trial: int


class Evolution(Allocator):
    """Optuna NSGA-II or CMA-ES over per-group keep ratios, scored by ``problem.evaluate``."""

    needs = frozenset({"evaluate"})
    budgets = frozenset({"flops", "params", "latency_ms"})
    summary = "Optuna evolutionary search scored by adaptive-BN accuracy (slow, minutes)"
    joinable = True

    @dataclass(frozen=True)
    class Options:
        search_trials: int | None = field(
            default=None, metadata={"help": "candidates the search evaluates (default 60)", "min": 1, "max": 2000}
        )

    @classmethod
    def configure(cls, options: Any, context: AllocatorContext) -> Evolution:
        return cls() if options.search_trials is None else cls(trials=options.search_trials)

    def __init__(self, trials: int = 60, sampler: str = "nsga2", population: int = 16, repair: bool = True) -> None:
        if trials < 1:
            raise ValueError(f"trials must be at least 1, not {trials}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        if population < 2:
            raise ValueError(f"population must be at least 2, not {population}")
        if sampler == "cmaes" and not repair:
            raise ValueError("sampler='cmaes' ignores Optuna constraints: it needs repair=True")
        if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
            raise ValueError("sampler='cmaes' needs the 'cmaes' package (Optuna's CMA-ES backend)")
        self.trials = trials
        self.sampler = sampler
        self.population = population
        self.repair = repair

    def allocate(self, problem: AllocationProblem) -> Allocation:
        problem.check_feasible()
        if problem.evaluate is None:
            raise ValueError("the evolution allocator needs problem.evaluate (a score of keep counts)")
        space = self._space(problem)
        uniform = Uniform().allocate(problem).keep
        study_name = problem.study_name or f"autoprune-evolution-{self.sampler}-{uuid.uuid4().hex[:12]}"
        with _quiet_optuna(), _storage(problem.storage) as storage:
            study = optuna.create_study(
                storage=storage, study_name=study_name, direction="maximize", sampler=self._sampler(problem.seed),
                load_if_exists=True,
            )  # fmt: skip
            if not study.trials:
                study.enqueue_trial({g.id: uniform[g.id] / g.channels for g in problem.groups if g.id in space})
            resumed = _finished(study)
            self._search(study, space, problem, LEAD)
            # every finished trial, whichever process ran it: helpers may have joined (``join``)
            evaluated, rejected, by = self._replay(study, problem)
        best = max(evaluated, key=lambda c: c.score)  # the first of equals: deterministic
        return Allocation(
            keep=best.keep,
            cost=best.cost,
            diagnostics={
                "sampler": self.sampler,
                "repair": self.repair,
                "study_name": study_name,
                "trials": self.trials,
                "resumed_trials": resumed,
                "trials_by": by,
                "feasible": len(evaluated),
                "best_score": best.score,
                "best_trial": best.trial,
                "uniform_score": next((c.score for c in evaluated if c.trial == 0), None),
                "candidates": _compact_trace(evaluated, rejected, best.trial, problem.budget),
            },
        )

    def join(
        self,
        problem: AllocationProblem,
        *,
        label: str,
        seed: int,
        should_stop: Callable[[], bool],
        wait_s: float = 600.0,
        poll_s: float = 1.0,
    ) -> dict[str, Any]:
        """Add trials to the stored search another process leads with ``allocate`` on the same problem.

        Optuna's RDB storage is built for this: each process asks and tells on the shared study.
        The helper waits (up to ``wait_s``) until the lead has created the study and taken its
        first, uniform trial, then evaluates candidates until the study holds ``trials`` finished
        trials or ``should_stop()``. ``seed`` must differ from the lead's, or both samplers would
        propose the same candidates. The lead stops counting when the total is reached, so a
        helper's trial still running then is wasted: at most one evaluation per helper.
        """
        if problem.storage is None or problem.study_name is None:
            raise ValueError("joining a search needs the stored study's storage and study_name")
        if problem.evaluate is None:
            raise ValueError("the evolution allocator needs problem.evaluate (a score of keep counts)")
        space = self._space(problem)
        added = 0
        with _quiet_optuna(), _storage(problem.storage) as storage:
            assert storage is not None  # problem.storage was checked above
            study = _wait_for_study(storage, problem.study_name, self._sampler(seed), should_stop, wait_s, poll_s)
            if study is not None:
                added = self._search(study, space, problem, label, should_stop)
        return {"study_name": problem.study_name, "joined": study is not None, "trials_added": added}

    def _space(self, problem: AllocationProblem) -> dict[str, BaseDistribution]:
        """One keep ratio per group that has a choice (``min_units < units``)."""
        return {g.id: FloatDistribution(g.min_units / g.units, 1.0) for g in problem.groups if g.min_units < g.units}

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, popsize=self.population, warn_independent_sampling=False)
        return optuna.samplers.NSGAIISampler(population_size=self.population, seed=seed)

    @staticmethod
    def _replay(
        study: optuna.Study, problem: AllocationProblem
    ) -> tuple[list[_Evaluated], list[tuple[int, float]], dict[str, int]]:
        """The study's finished trials in trial order: the evaluated candidates, the rejected
        (trial, cost), and how many trials each process ran (``LEAD`` or a helper's label)."""
        evaluated: list[_Evaluated] = []
        rejected: list[tuple[int, float]] = []
        by: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            candidate = trial.user_attrs["candidate"]
            label = trial.user_attrs.get("by", LEAD)
            by[label] = by.get(label, 0) + 1
            if trial.value is None or math.isinf(trial.value):
                rejected.append((trial.number, candidate["cost_fraction"] * problem.budget))
            else:
                keep = {g: int(n) for g, n in candidate["keep"].items()}
                evaluated.append(
                    _Evaluated(keep=keep, cost=problem.cost(keep), score=float(trial.value), trial=trial.number)
                )
        return evaluated, rejected, by

    def _search(
        self,
        study: optuna.Study,
        space: dict[str, BaseDistribution],
        problem: AllocationProblem,
        label: str,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Ask, repair or reject, evaluate, tell until the study holds ``self.trials`` finished
        trials (from any process) or ``should_stop()``; returns how many trials this call ran.

        The first trial is the enqueued uniform allocation, which is feasible.
        """
        assert problem.evaluate is not None  # checked by allocate and join
        ran = 0
        while (finished := _finished(study)) < self.trials and not (should_stop is not None and should_stop()):
            if problem.report is not None:
                problem.report(finished / self.trials)
            trial = study.ask(space)
            units = self._candidate(problem, trial.params)
            keep = problem.channels(units)
            cost = problem.cost_of_units(units)
            trial.set_constraint("budget", cost / problem.budget - 1.0)
            trial.set_user_attr("candidate", {"keep": keep, "cost_fraction": cost / problem.budget})
            trial.set_user_attr("by", label)
            ran += 1
            if cost > problem.budget:
                study.tell(trial, -math.inf)  # rejected unevaluated; the constraint ranks it below feasible ones
                continue
            study.tell(trial, float(problem.evaluate(keep)))
        return ran

    def _candidate(self, problem: AllocationProblem, ratios: dict[str, float]) -> dict[str, int]:
        """Units per group for sampled ``ratios``: repaired onto the budget, or rounded as sampled."""
        groups = problem.groups
        floor = np.array([g.min_units for g in groups])
        owner, scales = _growth(groups, ratios)

        def units_at(k: int) -> dict[str, int]:
            counts = floor + np.bincount(owner[:k], minlength=len(groups))
            return {g.id: int(n) for g, n in zip(groups, counts, strict=True)}

        if self.repair:
            return units_at(largest_feasible(len(owner), lambda k: problem.cost_of_units(units_at(k)), problem.budget))
        return units_at(int(np.searchsorted(scales, 1.0, side="right")))


def _compact_trace(
    evaluated: list[_Evaluated], rejected: list[tuple[int, float]], best: int, budget: float
) -> list[dict[str, Any]]:
    """Every trial in order: cost/budget and score (None if rejected) to 4 decimals, and flags.

    Longer searches are thinned evenly to about ``CANDIDATES_SHOWN`` trials; the best is kept.
    """
    rows: list[tuple[int, float, float | None]] = [(c.trial, c.cost, c.score) for c in evaluated]
    rows = sorted([*rows, *((t, cost, None) for t, cost in rejected)], key=lambda row: row[0])
    stride = math.ceil(len(rows) / CANDIDATES_SHOWN)
    return [
        {
            "trial": trial,
            "cost_over_budget": round(cost / budget, 4),
            "score": None if score is None else round(score, 4),
            "feasible": score is not None,
            "best": trial == best,
        }
        for i, (trial, cost, score) in enumerate(rows)
        if i % stride == 0 or trial == best
    ]


def _growth(groups: tuple[GroupSpec, ...], ratios: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Every unit above the floors, in the order a growing common scale ``s`` adds them.

    Group ``g`` gets its u-th unit at ``s = (u - ½)/(ratio_g·units_g)``, so the units added up to
    ``s = 1`` are the sampled ratios rounded to the nearest unit. Returns the group index of each
    unit and its scale, sorted by scale (stable: ties go to the earlier group).
    """
    owner = np.concatenate([np.full(g.units - g.min_units, i, dtype=np.int64) for i, g in enumerate(groups)])
    scales = np.concatenate(
        [
            (np.arange(g.min_units + 1, g.units + 1) - 0.5) / (ratios.get(g.id, 1.0) * g.units)
            for g in groups  # a group left out of the search has no unit above its floor
        ]
    )
    order = np.argsort(scales, kind="stable")
    return owner[order], scales[order]


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _wait_for_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler,
    should_stop: Callable[[], bool],
    wait_s: float,
    poll_s: float,
) -> optuna.Study | None:
    """The stored study once its lead has taken the enqueued uniform trial; None on stop or timeout."""
    deadline = time.monotonic() + wait_s
    while not should_stop() and time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        except KeyError:  # the lead has not created it yet
            study = None
        if study is not None:
            trials = study.get_trials(deepcopy=False)
            if trials and trials[0].state != TrialState.WAITING:
                return study
        time.sleep(poll_s)
    return None


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; silence it for the search and restore the caller's level."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


@contextmanager
def _storage(url: str | None) -> Iterator[optuna.storages.BaseStorage | None]:
    """The study's storage: in memory for ``None``, else an RDB one whose connections are closed after."""
    if url is None:
        yield None
        return
    storage = _open_storage(url)
    try:
        yield storage
    finally:
        storage.remove_session()
        storage.engine.dispose()


def _open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage, retried: processes opening a fresh database together race to create
    its tables and version row, and all but one fail (IntegrityError / "table exists")."""
    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.DBAPIError:
            time.sleep(0.2 * (attempt + 1))
    return optuna.storages.RDBStorage(url)
