"""`autoprune` command line: prune, train, demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.errors import AutopruneError
from autoprune.spec import DEFAULT_METHOD, Budget
from autoprune.spec_cli import add_spec_flags, spec_from_args

if TYPE_CHECKING:
    from autoprune.report.schema import Report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune",
        description="Structured channel pruning of trained CNNs with automatic per-layer ratios.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log warnings and debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser(
        "prune", help="prune, fine-tune and export a model", description="Prune a trained model to a budget."
    )
    add_spec_flags(prune)
    prune.set_defaults(func=cmd_prune)

    train = sub.add_parser("train", help="train an architecture from scratch (baselines, demos)")
    train.add_argument("--arch", required=True, help="architecture name")
    train.add_argument("--data", required=True, help="dataset reference, as for prune")
    train.add_argument("--epochs", type=int, default=15, help="epochs (default 15)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--out", required=True, help="where to write the .safetensors weights")
    train.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    train.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    train.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="train a CIFAR ResNet-20 on digits, prune it to half its MACs, report")
    demo.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    demo.add_argument("--train-epochs", type=int, default=12, help="baseline training epochs (default 12)")
    demo.add_argument("--finetune-epochs", type=int, default=4, help="fine-tuning epochs (default 4)")
    demo.set_defaults(func=cmd_demo)
    _service_commands(sub)
    return parser


def _service_commands(sub: Any) -> None:
    """Subcommands plugged in by other packages: each entry point of the group ``autoprune.commands``
    is called with the subparsers. The job service's ``serve | worker | token | submit`` come this
    way (``api.cli:add_commands``, declared in pyproject.toml), so the library never imports api."""
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group="autoprune.commands"), key=lambda e: e.name):
        entry.load()(sub)


def _metrics_text(metrics: dict[str, Any]) -> str:
    text = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in metrics.items()
        if not isinstance(v, (list, dict))
    )
    return text[:60]


class StageBars:
    """One rich progress bar per pipeline stage, for a terminal."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Callable[[str, float, dict[str, Any]], None]:
        self.progress.__enter__()
        return self.update

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def update(self, stage: str, fraction: float, metrics: dict[str, Any]) -> None:
        if stage == "done":
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=1.0, info="")
        self.progress.update(self.tasks[stage], completed=min(max(fraction, 0.0), 1.0), info=_metrics_text(metrics))


class StageLines:
    """Progress for a log (CI, nohup, a container): rich draws its bars only when the output is a
    terminal, elsewhere it prints them once at the end, so minutes of work would show nothing.
    Prints a timestamped line when a stage starts and at each further quarter of it; a stage that
    starts over (the next step of an iterative schedule) is printed again."""

    def __init__(self) -> None:
        self.quarters: dict[str, int] = {}
        self.fractions: dict[str, float] = {}

    def __enter__(self) -> Callable[[str, float, dict[str, Any]], None]:
        return self.update

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, stage: str, fraction: float, metrics: dict[str, Any]) -> None:
        if stage == "done":
            return
        last = self.fractions.get(stage)
        if last is not None and (fraction < last or last >= 1.0):  # the stage is running again
            self.quarters.pop(stage, None)
        self.fractions[stage] = fraction
        quarter = min(max(int(fraction * 4), 0), 4)
        if self.quarters.get(stage, -1) >= quarter:
            return
        self.quarters[stage] = quarter
        stamp = time.strftime("%H:%M:%S")
        print(
            f"[{stamp}] {stage:<11} {100 * min(max(fraction, 0.0), 1.0):5.1f}% {_metrics_text(metrics)}".rstrip(),
            flush=True,
        )


def stage_progress() -> StageBars | StageLines:
    """Bars on a terminal, lines in a log."""
    return StageBars() if sys.stdout.isatty() else StageLines()


def print_summary(report: Report, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    r = report
    table = Table(title=f"{r.arch} · {r.method}/{r.criterion} · {Budget.from_dict(r.budget)}")
    for col in ("", "before", "after", "ratio"):
        table.add_column(col, justify="right")

    def row(name: str, a: float, b: float, fmt: str) -> None:
        table.add_row(name, format(a, fmt), format(b, fmt), f"{b / a:.3f}" if a else "-")

    row("MACs (M)", r.macs_before / 1e6, r.macs_after / 1e6, ".2f")
    row("params (M)", r.params_before / 1e6, r.params_after / 1e6, ".3f")
    row("latency torch (ms)", r.latency_ms_before, r.latency_ms_after, ".2f")
    if "onnxruntime" in r.latency.after:
        row("latency onnxruntime (ms)", r.latency.before["onnxruntime"], r.latency.after["onnxruntime"], ".2f")
    pruned = f"pruned, BN re-estimated: {100 * r.accuracy_pruned:.2f}"
    table.add_row("top-1 (%)", f"{100 * r.accuracy_before:.2f}", f"{100 * r.accuracy_after:.2f}", pruned)
    for runtime, paired in r.latency.paired.items():
        speedup = f"{paired['speedup']:.2f}x faster (paired, {int(paired['rounds'])} rounds)"
        table.add_row(f"latency {runtime}, paired", "", "", speedup)
    console = Console()
    console.print(table)
    for warning in r.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    console.print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r.timings.items()))
    diff = r.onnx_max_abs_diff
    onnx = f", model.onnx (onnxruntime max abs diff {diff:.2g})" if diff is not None else ""
    console.print(f"wrote {out}/: report.html (open it in a browser), report.json, model.safetensors, spec.json{onnx}")


def cmd_prune(args: argparse.Namespace) -> int:
    from autoprune import pipeline

    spec = spec_from_args(args)
    with stage_progress() as bars:
        report = pipeline.run(spec, progress=bars)
    print_summary(report, spec.out_dir)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from autoprune import pipeline

    cfg = pipeline.BASELINE_RECIPE.evolve(lr=args.lr, batch_size=args.batch_size)
    with stage_progress() as bars:
        result = pipeline.train_baseline(
            args.arch, args.data, args.out, epochs=args.epochs, cfg=cfg, seed=args.seed, progress=bars
        )
    print(f"top-1 {100 * result['accuracy']:.2f}% after {args.epochs} epochs; weights in {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    weights = out / "baseline.safetensors"
    print("1/2 training a CIFAR ResNet-20 on scikit-learn's digits (upsampled to 32x32 RGB)")
    train_args = [
        "train",
        "--arch",
        "resnet20",
        "--data",
        "digits",
        "--epochs",
        str(args.train_epochs),
        "--out",
        str(weights),
    ]
    prune_args = [
        "prune",
        "--arch",
        "resnet20",
        "--weights",
        str(weights),
        "--data",
        "digits",
        "--budget",
        "flops=0.5",
        "--method",
        DEFAULT_METHOD,
        "--finetune-epochs",
        str(args.finetune_epochs),
        "--out",
        str(out),
        "--channel-step",
        "8",  # widths onnxruntime's fast kernels take: faster after pruning, not slower
    ]
    if main(train_args) != 0:
        return 1
    print(
        f"2/2 pruning to half the MACs ({DEFAULT_METHOD}: the best-scoring of several allocations), "
        "fine-tuning with distillation, exporting"
    )
    return main(prune_args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except AutopruneError as exc:
        print(f"error ({exc.code}): {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
