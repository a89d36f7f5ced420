"""Inference latency: median of repeated timed runs after warm-up, fixed threads and batch.

Both runtimes are timed the same way: ``warmup`` untimed runs, then ``repeats`` timed runs of one
batch of random input, the median reported in milliseconds. torch runs under
``torch.inference_mode``; onnxruntime runs with sequential execution and ``threads`` intra-op
threads. Timings swing with machine load: benchmarks should run alone.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _median_ms(run: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def torch_latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
) -> float:
    x = torch.randn(batch_size, *input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch_threads(threads), torch.inference_mode():
            return _median_ms(lambda: model(x), repeats, warmup)
    finally:
        model.train(was_training)


def onnx_session(path: str | Path, threads: int | None = None, *, spin: bool = True):  # -> onnxruntime.InferenceSession
    """A CPU session. ``spin=False`` makes its idle pool threads block instead of spin-waiting:
    needed when several sessions take turns, where each one's spinning threads would steal the
    cores from the next (ResNet-20 at batch 1 timed 20x slower among 32 spinning sessions)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_latency_ms(
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
) -> float:
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    x = torch.randn(batch_size, *input_shape).numpy()
    return _median_ms(lambda: session.run(None, {name: x}), repeats, warmup)
