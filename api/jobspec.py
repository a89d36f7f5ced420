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
    try:
        finetune = FinetuneConfig(**spec.get("finetune", {}))
    except TypeError as exc:
        raise SpecError(f"finetune: {exc}".replace("FinetuneConfig.__init__() ", "")) from None
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return JobSpec(
        arch=arch,
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
