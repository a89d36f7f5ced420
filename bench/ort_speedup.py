"""Speed-up of a pruned ONNX model over its parent in onnxruntime, timed like an outside check would.

Independent of autoprune's own timing code on purpose (only onnxruntime and numpy): the issue's
acceptance is "faster when timed by an outside script". Both sessions are built once, with the
same threads; rounds alternate which model runs first; each round times ``runs`` calls of each
model; the figure is the median over rounds of the per-round ratio of medians.

    python -m bench.ort_speedup unpruned.onnx pruned.onnx --batch 1 32 --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feed(sess: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """Random input of the graph's static sample shape, at ``batch``."""
    info = sess.get_inputs()[0]
    shape = [batch, *(int(d) for d in info.shape[1:])]
    return {info.name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}


def median_ms(sess: ort.InferenceSession, inputs: dict[str, np.ndarray], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def speedup(before: Path, after: Path, batch: int, rounds: int, runs: int, threads: int) -> dict[str, float]:
    """Median and quartiles of before/after over alternating rounds (above 1: the pruned model is faster)."""
    a, b = session(before, threads), session(after, threads)
    xa, xb = feed(a, batch), feed(b, batch)
    for _ in range(3):  # warm-up: allocations, kernel selection
        a.run(None, xa), b.run(None, xb)
    ratios, before_ms, after_ms = [], [], []
    for r in range(rounds):
        pair = [(a, xa, before_ms), (b, xb, after_ms)]
        for sess, x, sink in pair if r % 2 == 0 else pair[::-1]:
            sink.append(median_ms(sess, x, runs))
        ratios.append(before_ms[-1] / after_ms[-1])
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {
        "batch": batch,
        "before_ms": statistics.median(before_ms),
        "after_ms": statistics.median(after_ms),
        "speedup": statistics.median(ratios),
        "speedup_q1": q1,
        "speedup_q3": q3,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the unpruned model (.onnx)")
    parser.add_argument("after", type=Path, help="the pruned model (.onnx)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=0, help="calls per model per round (default: 20 at b1, 5 above)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for batch in args.batch:
        runs = args.runs or (20 if batch == 1 else 5)
        row = speedup(args.before, args.after, batch, args.rounds, runs, args.threads)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
