"""Which channel widths a runtime runs fast on this machine: a micro-benchmark, cached per host.

Fast convolution kernels (onnxruntime's MLAS, oneDNN, cuDNN) work on channels in blocks of 4, 8
or 16 lanes; a width between two blocks can cost as much as the next block, or more when it falls
off the fast path. Which block a runtime wants depends on the CPU, the runtime's version and the
threads, so it is measured, not assumed: one 3×3 convolution per width around 64 channels, all
timed in interleaved rounds (a burst of load hits every width alike), and the step is the
smallest one whose multiples all run as fast as any wider layer (``preferred_step``). The answer
is cached per host, runtime, version, batch size and threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from autoprune.measure.latency import torch_threads
from autoprune.measure.paired import Run, _timed, onnx_runner, torch_runner

STEPS = (1, 2, 4, 8, 16)  # candidate channel steps, smallest first
WIDTHS = tuple(range(48, 81))  # around 64 channels: three multiples of 16, five of 8
SPATIAL = 16  # a CIFAR net's middle stage
MIN_ROUNDS, MAX_ROUNDS = 8, 400
TOLERANCE = 0.05  # a width within 5% of the fastest wider one counts as on the fast path


@dataclass(frozen=True)
class Alignment:
    """The measured step and the median time of each width (ms), for the report and the cache."""

    step: int
    times: dict[int, float]
    key: str


def preferred_step(times: Mapping[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest step whose every multiple is *efficient*: no wider width runs faster (within
    ``tolerance``). If the times grow with the width, that is 1; if only multiples of 8 sit on the
    fast path, it is 8."""
    widths = sorted(times)
    fastest_wider: dict[int, float] = {}
    best = float("inf")
    for width in reversed(widths):
        best = min(best, times[width])
        fastest_wider[width] = best
    for step in STEPS:
        if all(times[w] <= fastest_wider[w] * (1 + tolerance) for w in widths if w % step == 0):
            return step
    return STEPS[-1]


def measure_widths(
    runtime: str, *, batch_size: int, threads: int, widths: tuple[int, ...] = WIDTHS, seconds: float = 3.0
) -> dict[int, float]:
    """Median ms of one w→w 3×3 convolution per width, timed in rounds that visit every width (in
    a rotated order each round): at least ``MIN_ROUNDS``, then more while ``seconds`` last."""
    rng = np.random.default_rng(0)
    with torch_threads(threads), tempfile.TemporaryDirectory() as tmp:
        runs: dict[int, Run] = {}
        for width in widths:
            weight = rng.standard_normal((width, width, 3, 3), dtype=np.float32) * 0.05
            input_shape = (width, SPATIAL, SPATIAL)
            if runtime == "onnxruntime":
                path = Path(tmp) / f"w{width}.onnx"
                onnx.save(_conv_graph(weight), path)
                runs[width] = onnx_runner(path, input_shape, batch_size, threads)
            else:
                layer = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.ReLU()).eval()
                with torch.no_grad():
                    layer[0].weight.copy_(torch.from_numpy(weight))
                runs[width] = torch_runner(layer, input_shape, batch_size)
        for run in runs.values():  # warm-up
            run()
        samples: dict[int, list[float]] = {w: [] for w in widths}
        start, i = time.perf_counter(), 0
        while i < MIN_ROUNDS or (i < MAX_ROUNDS and time.perf_counter() - start < seconds):
            order = widths[i % len(widths) :] + widths[: i % len(widths)]
            for width in order:
                samples[width].append(_timed(runs[width]))
            i += 1
    return {w: statistics.median(t) for w, t in samples.items()}


def _conv_graph(weight: np.ndarray) -> onnx.ModelProto:
    """A 3×3 same-padded convolution and a ReLU, written directly (no exporter: fast to build)."""
    width = weight.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["y"], ["out"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width, SPATIAL, SPATIAL])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", width, SPATIAL, SPATIAL])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cache_key(runtime: str, batch_size: int, threads: int) -> str:
    """What the answer depends on: the CPU, the runtime and its version, batch size and threads."""
    if runtime == "onnxruntime":
        import onnxruntime

        version = onnxruntime.__version__
    else:
        version = torch.__version__
    parts = [_cpu_model(), platform.machine(), runtime, version, f"b{batch_size}", f"t{threads}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.node()


def default_cache_dir() -> Path:
    return Path(os.environ.get("AUTOPRUNE_CACHE_DIR") or Path.home() / ".cache" / "autoprune") / "alignment"


def channel_alignment(runtime: str, *, batch_size: int, threads: int, cache_dir: Path | None = None) -> Alignment:
    """The measured step for ``runtime`` on this host, from the cache when it has been measured."""
    key = cache_key(runtime, batch_size, threads)
    path = (cache_dir or default_cache_dir()) / f"{key}.json"
    try:
        saved = json.loads(path.read_text())
        return Alignment(step=int(saved["step"]), times={int(w): float(t) for w, t in saved["times"].items()}, key=key)
    except (OSError, ValueError, KeyError):
        pass
    times = measure_widths(runtime, batch_size=batch_size, threads=threads)
    found = Alignment(step=preferred_step(times), times=times, key=key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(found)))
        tmp.replace(path)
    except OSError:  # a read-only home: measured again next time
        pass
    return found
