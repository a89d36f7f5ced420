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


def to_jobspec(
    spec: dict[str, Any], *, data: str, weights: str | None, out_dir: str, latency_repeats: int, calibration_batches: int
) -> JobSpec:
    """Build the JobSpec; raises an AutopruneError naming the field at fault."""
    try:
        finetune = FinetuneConfig(**spec.get("finetune", {}))
    except TypeError as exc:
        raise SpecError(f"finetune: {exc}".replace("FinetuneConfig.__init__() ", "")) from None
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return JobSpec(
        arch=spec["arch"],
        data=data,
        weights=weights,
        budget=Budget.from_dict(spec["budget"]),
        method=spec["method"],
        criterion=spec.get("criterion"),
        finetune=finetune,
        out_dir=out_dir,
        latency_repeats=latency_repeats,
        calibration_batches=calibration_batches,
    )
