"""Runs inside a validator subprocess: the checks that need torch, before a job is queued.

Builds the architecture for the dataset's shape and loads the uploaded weights into it
(safetensors header checks, ``weights_only`` torch.load, shape checks: autoprune.models), and
loads an uploaded dataset through the safe extractor with the service's limits. Only these
processes and the worker's children import torch; a hostile file that crashes one takes down
nothing but that process, which the API restarts.

What a file *becomes* is bounded before it is built: an architecture is first built on the
``meta`` device (no memory) and refused over the parameter or MACs cap; an ONNX graph is
shape-inferred and refused when any tensor would exceed the element cap; npz arrays are sized
from their headers. The process itself runs under an address-space cap (``RLIMIT_AS``) and a
per-check CPU-time cap (``RLIMIT_CPU``, SIGXCPU): what slips past the checks fails there, as a
``memory_limit`` reply or a killed process the API reports as ``cpu_limit``.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError, UnsafeInputError

FAILPOINT_ENV = "AUTOPRUNE_FAILPOINT"  # tests: validator_sleep:S, validator_spin:S, validator_alloc
NICENESS = 10  # validators yield the CPU to the API's event loop
MEMORY_ERRORS = ("can't allocate memory", "out of memory", "bad_alloc", "cannot allocate memory")


@dataclass(frozen=True)
class Ready:
    """Sent once when the process has imported torch and is ready for checks."""


@dataclass(frozen=True)
class CheckPassed:
    """The validator's reply when the job would pass intake: what the data looks like."""

    info: dict[str, Any]  #: ``num_classes``, ``input_shape``


@dataclass(frozen=True)
class CheckFailed:
    """The validator's reply when the inputs would fail the job: an error code and a message for the caller."""

    code: str
    message: str


CheckReply = CheckPassed | CheckFailed


@dataclass(frozen=True)
class ProcessLimits:
    """Caps a validator process runs under (0: none)."""

    memory_bytes: int = 0  #: address space a check may add to the started process (RLIMIT_AS)
    cpu_s: float = 0.0  #: CPU seconds per check (RLIMIT_CPU, moved forward before each check)
    threads: int = 1  #: torch threads


@functools.cache
def _digits(size: tuple[int, int] | None = None) -> tuple[int, tuple[int, ...]]:
    """(classes, C×H×W) of the built-in dataset drawn at ``size``: it is drawn at the default size
    only (at a ViT's 518 px it would take 1.4 GB, and its shape depends on nothing else)."""
    from autoprune.data import load_data

    data = load_data("digits")
    channels, height, width = data.input_shape
    return data.num_classes, (channels, *(size or (height, width)))


def _load_data(ref: str, limits: dict[str, Any], scratch: str | None, preprocess: Any) -> tuple[int, tuple[int, ...]]:
    """(classes, C×H×W) of the data at the model's input (``preprocess``); an uploaded archive is
    extracted under ``scratch``, then removed."""
    from autoprune.data import ArchiveLimits, DataLimits, load_data

    if ref == "digits":
        return _digits(preprocess.size)
    if preprocess.normalize == "dataset":  # the shape is all a check needs: no pass over a folder's images
        preprocess = replace(preprocess, normalize="none")
    archive = ArchiveLimits(max_members=limits["max_archive_members"], max_total_bytes=limits["max_archive_bytes"])
    data_limits = DataLimits(archive=archive, max_array_bytes=limits.get("max_data_bytes", DataLimits.max_array_bytes))
    try:
        data = load_data(ref, limits=data_limits, work_dir=scratch, preprocess=preprocess)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return data.num_classes, tuple(data.input_shape)


def check_model_size(arch: str, num_classes: int, shape: tuple[int, ...], limits: dict[str, Any]) -> None:
    """Refuse an architecture over the parameter or MACs cap, measured on the ``meta`` device (no
    weights are allocated, so vit_h_14 is refused in well under a second). Models that cannot be
    built or run on ``meta`` are left to the real build, which runs under the memory cap."""
    import torch

    from autoprune.measure.cost import count_cost
    from autoprune.models import create_model

    max_params, max_macs = limits.get("max_model_params"), limits.get("max_model_macs")
    try:
        with torch.device("meta"):
            model = create_model(arch, num_classes=num_classes, in_channels=shape[0])
    except AutopruneError:
        raise
    except Exception:  # e.g. a model that reads tensor values while it is built
        return
    params = sum(p.numel() for p in model.parameters())
    if max_params and params > max_params:
        raise UnsafeInputError(f"{arch} has {params:,} parameters, over this service's cap of {max_params:,}")
    try:
        macs = count_cost(model, torch.empty(1, *shape, device="meta")).macs
    except Exception:  # its forward does not run on meta tensors (or not at this input size: the real build says)
        return
    if max_macs and macs > max_macs:
        size = "x".join(map(str, shape))
        raise UnsafeInputError(f"{arch} takes {macs:,} MACs per {size} input, over this service's cap of {max_macs:,}")


def check(request: dict[str, Any]) -> dict[str, Any]:
    """Raise an AutopruneError if the job would fail at intake; else describe the data."""
    from api.jobspec import to_jobspec
    from autoprune.models import WeightLimits, create_model, load_weights
    from autoprune.models.onnx_graph import check_graph_size, check_input_shape
    from autoprune.models.preprocess import check_input_size, resolve_input
    from autoprune.pipeline import validate

    spec = to_jobspec(
        request["spec"], data=request["data"], weights=request["weights"], out_dir="unused",
        latency_repeats=1, calibration_batches=1, model_file=request.get("model"),
    )  # fmt: skip
    validate(spec)
    limits = request["limits"]
    preprocess = resolve_input(spec.arch, spec.input)
    num_classes, shape = _load_data(spec.data, limits, request.get("scratch"), preprocess)
    if request.get("model"):
        check_input_shape(request["model"], shape)
        check_graph_size(request["model"], max_elements=limits["max_tensor_elements"])
    else:
        check_model_size(spec.arch, num_classes, shape, limits)
    model = create_model(spec.arch, num_classes=num_classes, in_channels=shape[0])
    check_input_size(model, shape, spec.arch)
    if spec.weights:
        weight_limits = WeightLimits(
            max_file_bytes=limits["max_upload_bytes"], max_tensor_elements=limits["max_tensor_elements"]
        )
        load_weights(model, spec.weights, weight_limits)
    return {"num_classes": num_classes, "input_shape": list(shape)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _allow_cpu(seconds: float) -> None:
    """Move the CPU-time soft limit to ``seconds`` from now: past it the kernel sends SIGXCPU,
    whose default action ends the process (the API then reports ``cpu_limit``)."""
    if seconds <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(_cpu_seconds() + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def mapped_bytes() -> int:
    """This process's address space now (VmSize): torch alone maps ~3 GB it never touches."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def cap_memory(memory_bytes: int) -> int:
    """RLIMIT_AS at what the process maps now plus ``memory_bytes``: an allocation past it fails
    (MemoryError) instead of growing. Call it once the libraries are imported; returns the cap."""
    if memory_bytes <= 0:
        return 0
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = mapped_bytes() + memory_bytes
    soft = soft if hard == resource.RLIM_INFINITY else min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return soft


def _failpoint() -> None:
    """Test stand-ins for slow or hostile inputs (``AUTOPRUNE_FAILPOINT``)."""
    kind, _, value = os.environ.get(FAILPOINT_ENV, "").partition(":")
    if kind == "validator_sleep":  # a slow check
        time.sleep(float(value or 1))
    elif kind == "validator_spin":  # a check that burns CPU
        end = time.monotonic() + float(value or 60)
        while time.monotonic() < end:
            pass
    elif kind == "validator_alloc":  # a check that reserves memory without end (untouched: no RSS)
        import numpy as np

        hoard = []
        while True:
            hoard.append(np.empty(256 << 20, dtype=np.uint8))


def run_check(request: dict[str, Any], limits: ProcessLimits) -> CheckReply:
    """One check under the per-check CPU cap; every failure becomes a :class:`CheckFailed`."""
    _allow_cpu(limits.cpu_s)
    try:
        _failpoint()
        return CheckPassed(check(request))
    except AutopruneError as exc:
        return CheckFailed(exc.code, str(exc))
    except MemoryError:
        return CheckFailed("memory_limit", _memory_message(limits))
    except Exception as exc:  # a hostile or broken file: report it, keep serving
        if limits.memory_bytes and any(m in str(exc).lower() for m in MEMORY_ERRORS):
            return CheckFailed("memory_limit", _memory_message(limits))
        return CheckFailed("bad_input", f"the inputs could not be read: {type(exc).__name__}: {exc}"[:2000])
    finally:
        scratch = request.get("scratch")
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _memory_message(limits: ProcessLimits) -> str:
    return f"checking the inputs needed more than this service's memory cap of {limits.memory_bytes / 2**30:.1f} GiB"


def serve(conn: Connection, limits: ProcessLimits) -> None:
    """The validator's loop: :class:`Ready` once, then one request in, a :class:`CheckPassed` or
    :class:`CheckFailed` out."""
    os.nice(NICENESS)
    import torch

    if limits.threads:
        torch.set_num_threads(limits.threads)
    _digits()  # the built-in dataset, loaded once: most checks use it
    cap_memory(limits.memory_bytes)
    conn.send(Ready())
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(run_check(request, limits))


def scratch_dir(job_dir: Path) -> Path:
    """Where a submission's checks extract data: inside the job's own directory."""
    return job_dir / "scratch" / "validate"
