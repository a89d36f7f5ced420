"""Paired, load-robust timing: two models timed in one process, in alternating rounds.

A lone "before" timing and a later "after" timing compare two moments of a shared machine: a
neighbour's burst between them can make either side look several times slower. Timing both
models in the same process and threads, run by run (A B A B ..., rounds starting with either),
exposes both to the same load; each round gives one ratio of medians, and the median of those
ratios is robust to the rounds a burst spoils. This is the figure the report quotes, latency budgets are
checked with, and the "never slower" check uses.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.measure.latency import onnx_session, torch_threads

Run = Callable[[], object]


@dataclass(frozen=True)
class PairedTiming:
    """Medians of both models over all rounds, and the median and quartiles of the per-round ratios."""

    before_ms: float
    after_ms: float
    ratio: float  # after / before: below 1 means the second model is faster
    ratio_q1: float
    ratio_q3: float
    rounds: int

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio

    def to_dict(self) -> dict[str, float | int]:
        return {
            "before_ms": self.before_ms, "after_ms": self.after_ms, "ratio": self.ratio, "speedup": self.speedup,
            "ratio_q1": self.ratio_q1, "ratio_q3": self.ratio_q3, "rounds": self.rounds,
        }  # fmt: skip


def _timed(run: Run) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def paired_timing(before: Run, after: Run, *, rounds: int = 10, repeats: int = 5, warmup: int = 3) -> PairedTiming:
    """Time ``before`` and ``after`` in ``rounds`` rounds of ``repeats`` alternating runs each
    (A B A B ..., the first one switching every round); a round's ratio is the median of its
    ``after`` runs over the median of its ``before`` runs."""
    if rounds < 1 or repeats < 1:
        raise ValueError("paired timing needs at least one round of one run")
    for _ in range(warmup):
        before()
        after()
    ratios: list[float] = []
    all_before: list[float] = []
    all_after: list[float] = []
    for i in range(rounds):
        times_before, times_after = [], []
        for _ in range(repeats):
            if i % 2 == 0:
                times_before.append(_timed(before))
                times_after.append(_timed(after))
            else:
                times_after.append(_timed(after))
                times_before.append(_timed(before))
        ratios.append(statistics.median(times_after) / statistics.median(times_before))
        all_before += times_before
        all_after += times_after
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return PairedTiming(
        before_ms=statistics.median(all_before), after_ms=statistics.median(all_after),
        ratio=statistics.median(ratios), ratio_q1=q1, ratio_q3=q3, rounds=rounds,
    )  # fmt: skip


def torch_runner(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> Run:
    """One inference of ``model`` (eval mode, no autograd) on a fixed random batch."""
    x = torch.randn(batch_size, *input_shape)
    model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def onnx_runner(path: str | Path, input_shape: tuple[int, ...], batch_size: int, threads: int | None) -> Run:
    """One onnxruntime run of the graph at ``path``. Non-spinning threads: two sessions take turns,
    and a session's spinning pool would steal the cores from the other."""
    session = onnx_session(path, threads, spin=False)
    name = session.get_inputs()[0].name
    x = torch.randn(batch_size, *input_shape).numpy()
    return lambda: session.run(None, {name: x})


def paired_model_timing(
    before: nn.Module,
    after: nn.Module,
    input_shape: tuple[int, ...],
    *,
    runtime: str,
    batch_size: int,
    threads: int,
    rounds: int = 10,
    repeats: int = 5,
    onnx_paths: tuple[Path | None, Path | None] = (None, None),
) -> PairedTiming:
    """Paired timing of two torch models in ``runtime``. For onnxruntime, each is exported to ONNX
    first unless ``onnx_paths`` names its export already made."""
    from autoprune.export import export_onnx  # the export package imports the models: not at module load

    with torch_threads(threads), tempfile.TemporaryDirectory() as tmp:
        if runtime == "onnxruntime":
            paths = []
            for model, given, name in zip((before, after), onnx_paths, ("before", "after"), strict=True):
                if given is None:
                    given = Path(tmp) / f"{name}.onnx"
                    export_onnx(model, given, torch.zeros(1, *input_shape))
                paths.append(given)
            runs = [onnx_runner(p, input_shape, batch_size, threads) for p in paths]
        else:
            runs = [torch_runner(m, input_shape, batch_size) for m in (before, after)]
        return paired_timing(runs[0], runs[1], rounds=rounds, repeats=repeats)
