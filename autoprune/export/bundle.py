"""Write the pruned model out: safetensors + spec, ONNX (checked with onnxruntime), torch.export."""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from autoprune.errors import ExportError
from autoprune.export.spec import ModelSpec
from autoprune.measure import onnx_session

log = logging.getLogger(__name__)
NOISE_FACTOR = 4.0  # onnxruntime may be this many times further from float64 than torch's float32 is


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_weights(model: nn.Module, path: Path, spec: ModelSpec) -> None:
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "autoprune", "arch": spec.arch})


def _batch_of_two(example_input: torch.Tensor) -> torch.Tensor:
    """Export traces with batch 2: with batch 1, torch.export specialises the batch dimension."""
    return torch.zeros(2, *example_input.shape[1:])


def export_onnx(model: nn.Module, path: Path, example_input: torch.Tensor, *, atol: float = 1e-4) -> float:
    """Export with the torch.export-based exporter (one file, dynamic batch) and compare the
    onnxruntime output with torch's on a random batch; returns the max abs difference.

    The tolerance is ``atol`` times the largest |logit| when that exceeds 1: float32 kernels
    that sum in a different order differ relatively, so an untrained or deep net with large
    logits would fail a purely absolute check for no fault of the export.
    """
    model.eval()
    example_input = _batch_of_two(example_input)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        torch.onnx.export(
            model,
            (example_input,),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"ONNX export failed: {exc}") from exc
    x = torch.randn(3, *example_input.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x).numpy()
    got = onnx_session(path).run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    tolerance = atol * max(1.0, float(np.abs(expected).max()))
    if diff > tolerance and not _within_rounding_noise(model, x, expected, got, tolerance):
        raise ExportError(f"onnxruntime output differs from torch by {diff:.3g} (> {tolerance:.3g})")
    return diff


def _within_rounding_noise(
    model: nn.Module, x: torch.Tensor, expected: np.ndarray, got: np.ndarray, tolerance: float
) -> bool:
    """Whether onnxruntime is as close to the exact (float64) output as torch's own float32 is.

    A model can be so ill-conditioned that float32 rounding alone moves its output by more than
    the tolerance: BatchNorms re-estimated on data where a channel is constant (e.g. torchvision's
    EfficientNet-B0 on 32x32 inputs: 1x1 maps by the last stages) get variances of 1e-12, far
    below ``eps``, and each such layer multiplies rounding noise by ~300; both runtimes then
    compute the same function, differently rounded (torch float32 itself is ~15 off float64 at
    logits of ~4500). There, a faulty export still differs from the float64 output by far more
    than torch's float32 does; a correct one does not.
    """
    try:
        exact_model = copy.deepcopy(model).double()
        with torch.inference_mode():
            exact = exact_model(x.double()).numpy()
    except Exception:  # a model that cannot run in float64: keep the plain check
        return False
    noise = float(np.abs(expected.astype(np.float64) - exact).max())
    off = float(np.abs(got.astype(np.float64) - exact).max())
    if off > max(tolerance, NOISE_FACTOR * noise):
        return False
    log.warning(
        "the model is numerically ill-conditioned: torch float32 is %.3g off its float64 output, onnxruntime %.3g; "
        "the ONNX export is accepted as equally exact",
        noise,
        off,
    )
    return True


def export_pt2(model: nn.Module, path: Path, example_input: torch.Tensor) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.export.export(model.eval(), (_batch_of_two(example_input),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    except Exception as exc:
        raise ExportError(f"torch.export failed: {exc}") from exc
