"""Runs inside the validator subprocess: the checks that need torch, before a job is queued.

Builds the architecture for the dataset's shape and loads the uploaded weights into it
(safetensors header checks, ``weights_only`` torch.load, shape checks: autoprune.models), and
loads an uploaded dataset through the safe extractor with the service's limits. Only this
process and the worker's children import torch; a hostile file that crashes it takes down
nothing but this process, which the API restarts.
"""

from __future__ import annotations

import functools
from multiprocessing.connection import Connection
from typing import Any

from autoprune.errors import AutopruneError


@functools.cache
def _digits() -> tuple[int, tuple[int, ...]]:
    from autoprune.data import load_data

    data = load_data("digits")
    return data.num_classes, tuple(data.input_shape)


def check(request: dict[str, Any]) -> dict[str, Any]:
    """Raise an AutopruneError if the job would fail at intake; else describe the data."""
    from api.jobspec import to_jobspec
    from autoprune.data import ArchiveLimits, DataLimits, load_data
    from autoprune.models import WeightLimits, create_model, load_weights
    from autoprune.models.onnx_graph import check_input_shape
    from autoprune.pipeline import validate

    spec = to_jobspec(
        request["spec"], data=request["data"], weights=request["weights"], out_dir="unused",
        latency_repeats=1, calibration_batches=1, model_file=request.get("model"),
    )  # fmt: skip
    validate(spec)
    limits = request["limits"]
    if spec.data == "digits":
        num_classes, shape = _digits()
    else:
        archive = ArchiveLimits(max_members=limits["max_archive_members"], max_total_bytes=limits["max_archive_bytes"])
        data = load_data(spec.data, limits=DataLimits(archive=archive))
        num_classes, shape = data.num_classes, tuple(data.input_shape)
    if request.get("model"):
        check_input_shape(request["model"], shape)
    model = create_model(spec.arch, num_classes=num_classes, in_channels=shape[0])
    if spec.weights:
        weight_limits = WeightLimits(
            max_file_bytes=limits["max_upload_bytes"], max_tensor_elements=limits["max_tensor_elements"]
        )
        load_weights(model, spec.weights, weight_limits)
    return {"num_classes": num_classes, "input_shape": list(shape)}


def serve(conn: Connection, threads: int) -> None:
    """The validator's loop: one request in, ``("ok", info)`` or ``("error", code, text)`` out."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[Any, ...] = ("ok", check(request))
        except AutopruneError as exc:
            reply = ("error", exc.code, str(exc))
        except Exception as exc:  # a hostile or broken file: report it, keep serving
            reply = ("error", "bad_input", f"the inputs could not be read: {type(exc).__name__}: {exc}"[:2000])
        conn.send(reply)
