"""Deployment speed of the default job beside Torch-Pruning ``round_to=8`` at the same MACs (issue #19).

For each network and MACs target: the product's default job (``auto``, default target: onnxruntime
CPU batch 1, never-slower and latency-aware choice on) with no fine-tune, and Torch-Pruning's
global L1 ``MetaPruner`` with ``round_to=8`` bisected to the MACs the job reached, both cut from the
same random-init network. All three ONNX files are then timed by ``bench.ort_speedup`` (onnxruntime
only, 1 thread, alternating rounds) against the unpruned model at batch 1 and 32. Speed does not
depend on trained weights, accuracy does: this table has no top-1 (see docs/benchmark.md).

    python -m bench.speed_table --archs resnet56 cifar_vgg16_bn --targets 0.5 0.333
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from autoprune.errors import SurgeryError
from autoprune.export import export_onnx
from autoprune.measure import count_cost
from autoprune.pipeline import run
from autoprune.spec import Budget, FinetuneConfig, InputSpec, JobSpec
from autoprune.stages import load_model_and_data
from bench.common import load_average, machine, today, versions
from bench.ort_speedup import speedup
from bench.tp_baselines import bisect_ratio

RESULTS = Path(__file__).parent / "results"
DEFAULT_ARCHS = ("resnet56", "cifar_vgg16_bn", "cifar_mobilenetv2", "resnet18")


def job_spec(arch: str, target: float, out: Path) -> JobSpec:
    """The default job at ``target`` of the MACs, without fine-tuning (speed is what is measured)."""
    size = InputSpec(size=32) if arch == "resnet18" else InputSpec()  # the table: resnet18 at 32 px
    return JobSpec(
        arch=arch, data="digits", budget=Budget(kind="flops", value=target), input=size,
        finetune=FinetuneConfig(epochs=0), exports=("onnx",), out_dir=str(out),
    )  # fmt: skip


def cell(arch: str, target: float, work: Path, rounds: int) -> dict[str, Any]:
    """One network at one MACs target: the job's cut and Torch-Pruning's, both timed against the unpruned."""
    out = work / f"{arch}-{target}"
    spec = job_spec(arch, target, out / "job")
    started = time.perf_counter()
    report = run(spec).to_dict()
    job_seconds = time.perf_counter() - started
    model, data = load_model_and_data(spec)
    example = torch.zeros(1, *data.input_shape)
    unpruned_macs = count_cost(model, example).macs
    export_onnx(model, out / "unpruned.onnx", example)
    try:
        tp_cut, _ = bisect_ratio(model, example, "magnitude", report["flops_ratio"] * unpruned_macs, round_to=8)
        export_onnx(tp_cut.model.eval(), out / "tp.onnx", example)
    except SurgeryError as exc:  # round_to=8 cannot go this low on narrow nets (ResNet-56's 16-wide stage)
        tp_cut, tp_error = None, str(exc)
    row: dict[str, Any] = {
        "arch": arch,
        "target": target,
        "macs_ours": report["flops_ratio"],
        "macs_tp": tp_cut.macs / unpruned_macs if tp_cut is not None else None,
        "tp_error": None if tp_cut is not None else tp_error,
        "job_seconds": round(job_seconds, 1),
        "faster_check": report["allocation"][0].get("faster_check"),
    }
    for batch in (1, 32):
        runs = 20 if batch == 1 else 5
        for name, path in (("ours", out / "job" / "model.onnx"), ("tp", out / "tp.onnx")):
            if name == "ours" or tp_cut is not None:
                row[f"b{batch}_{name}"] = speedup(out / "unpruned.onnx", path, batch, rounds, runs, threads=1)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| network | MACs kept: job / TP r8 | b1: job | b1: TP r8 | b32: job | b32: TP r8 | b32 job ÷ MACs speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b1o, b1t, b32o, b32t = (
            f"{r[k]['speedup']:.2f}×" if k in r else "n/a" for k in ("b1_ours", "b1_tp", "b32_ours", "b32_tp")
        )
        macs_tp = f"{r['macs_tp']:.3f}" if r["macs_tp"] is not None else "n/a"
        lines.append(
            f"| {r['arch']} {1 / r['target']:.0f}× | {r['macs_ours']:.3f} / {macs_tp} | {b1o} | {b1t} | {b32o} | {b32t} "
            f"| {r['b32_ours']['speedup'] * r['macs_ours']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.333])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoprune-speed-table"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = {"date": today(), "machine": machine(), "load_start": load_average(), "versions": versions()}
    rows = []
    for arch in args.archs:
        for target in args.targets:
            rows.append(cell(arch, target, args.work, args.rounds))
            print(json.dumps(rows[-1]), flush=True)
            _write(header, rows)
    print(table(rows))


def _write(header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """After each cell: a long run that stops early keeps what it measured."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed_table.json").write_text(
        json.dumps({**header, "load_end": load_average(), "rows": rows}, indent=1) + "\n"
    )
    (RESULTS / "speed_table.md").write_text(table(rows) + "\n")


if __name__ == "__main__":
    main()
