"""The caller's job description (stored as JSON) → autoprune's JobSpec. Torch-free.

The API parses with it to refuse malformed budgets and fine-tune options before any file is
kept; the validator and the worker child build the JobSpec they run from the same function.
"""

from __future__ import annotations

from typing import Any

from autoprune.errors import AutopruneError
from autoprune.types import Budget, FinetuneConfig, JobSpec


class SpecError(AutopruneError):
    """The job description is malformed."""

    code = "invalid_spec"


MAX_SEARCH_WORKERS = 8  # worker slots one evolution search may take: the lead and its helpers
MAX_SEARCH_TRIALS = 2000  # candidates one evolution search may evaluate
EXPORTS = ("onnx", "pt2")  # formats a job writes besides safetensors + spec.json (field `exports`)
ONNX_ARCH = "onnx"  # the stored arch of a job whose model is its uploaded ONNX graph
ONNX_PREFIX = "onnx:"  # autoprune.models.onnx_graph.ONNX_PREFIX; importing it would pull in torch


def to_jobspec(
    spec: dict[str, Any],
    *,
    data: str,
    weights: str | None,
    out_dir: str,
    latency_repeats: int,
    calibration_batches: int,
    model_file: str | None = None,
) -> JobSpec:
    """Build the JobSpec; raises an AutopruneError naming the field at fault.

    An ``onnx`` job runs ``onnx:<model_file>``, the server's copy of the upload; an ``onnx:``
    path in the caller's own spec is refused, so a job can never name a server file.
    """
    arch = str(spec["arch"])
    if arch.startswith(ONNX_PREFIX):
        raise SpecError(f"arch {arch!r}: upload the ONNX graph as the 'onnx' file instead")
    if arch == ONNX_ARCH:
        if model_file is None:
            raise SpecError("this job's ONNX graph is missing")
        arch = ONNX_PREFIX + model_file
    budget = Budget.from_dict(spec["budget"])
    search_helpers(spec, budget)
    try:
        finetune = FinetuneConfig(**spec.get("finetune", {}))
    except TypeError as exc:
        raise SpecError(f"finetune: {exc}".replace("FinetuneConfig.__init__() ", "")) from None
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    trials = spec.get("search_trials")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_SEARCH_TRIALS):
        raise SpecError(f"search_trials must be an integer from 1 to {MAX_SEARCH_TRIALS}, not {trials!r}")
    if trials is not None and spec.get("method") != "evolution":
        raise SpecError(f"search_trials sets the evolution search; method {spec.get('method')!r} has none")
    exports = spec.get("exports", list(EXPORTS))
    if not isinstance(exports, list) or not set(exports) <= set(EXPORTS):
        raise SpecError(f"exports must name some of {', '.join(EXPORTS)} (or none), not {exports!r}")
    return JobSpec(
        arch=arch,
        data=data,
        weights=weights,
        budget=budget,
        method=spec["method"],
        criterion=spec.get("criterion"),
        finetune=finetune,
        search_trials=trials,
        channel_step=_channel_step(spec),
        export_onnx="onnx" in exports,
        export_pt2="pt2" in exports,
        out_dir=out_dir,
        latency_repeats=latency_repeats,
        calibration_batches=calibration_batches,
    )


def _channel_step(spec: dict[str, Any]) -> int:
    step = spec.get("channel_step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 64:
        raise SpecError(f"channel_step must be an integer from 1 to 64, not {step!r}")
    return step


def search_helpers(spec: dict[str, Any], budget: Budget) -> int:
    """Helper rows to queue with the job: ``search_workers - 1`` slots join its evolution search.

    Only a MACs or params budget can be shared: a latency table is measured per process, so
    two processes would price the same candidate differently.
    """
    workers = spec.get("search_workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_SEARCH_WORKERS:
        raise SpecError(f"search_workers must be an integer from 1 to {MAX_SEARCH_WORKERS}, not {workers!r}")
    if workers > 1 and spec.get("method") != "evolution":
        raise SpecError(f"search_workers > 1 spreads an evolution search; method {spec.get('method')!r} has none")
    if workers > 1 and budget.measured:
        raise SpecError("search_workers > 1 needs a flops or params budget: latency tables are measured per process")
    return workers - 1
