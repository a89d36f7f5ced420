"""`autoprune` command line: prune, train, demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError
from autoprune.types import DEFAULT_METHOD, Budget, FinetuneConfig, JobSpec, resolve_method


def _finetune_flags(parser: argparse.ArgumentParser, epochs: int) -> None:
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--finetune-epochs", type=int, default=epochs, help=f"epochs of fine-tuning (default {epochs})")
    group.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the cosine schedule (default 0.01)")
    group.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    group.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="sgd (momentum 0.9) or adamw")
    group.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    group.add_argument(
        "--no-distill", action="store_true", help="train on labels only, without distillation from the unpruned model"
    )
    group.add_argument("--distill-weight", type=float, default=0.7, help="weight of the distillation loss (default 0.7)")
    group.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    group.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the CE loss (default 0)")
    group.add_argument("--no-augment", action="store_true", help="no random crop/flip during fine-tuning")
    group.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap the batches per epoch (quick runs)")


def _finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    try:
        return FinetuneConfig(
            epochs=args.finetune_epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            distill=not args.no_distill,
            distill_weight=args.distill_weight,
            temperature=args.temperature,
            label_smoothing=args.label_smoothing,
            augment=not args.no_augment,
            max_steps_per_epoch=args.max_steps_per_epoch,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune",
        description="Structured channel pruning of trained CNNs with automatic per-layer ratios.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log warnings and debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser("prune", help="prune, fine-tune and export a model", description="Prune a trained model to a budget.")
    prune.add_argument("--arch", required=True, help="architecture name: resnet20/32/56/110, cifar_vgg16_bn, any torchvision model, timm:NAME")
    prune.add_argument("--weights", help="trained weights: .safetensors or a weights-only .pt/.pth state dict")
    prune.add_argument("--data", required=True, help="digits | npz:DIR | folder:DIR | an archive (.zip/.tar/.tar.gz) of either")
    prune.add_argument(
        "--budget", required=True,
        help="flops=0.5 (keep at most 50%% of MACs) | params=0.6 | latency=0.7 (of the unpruned model's "
        "latency, timed by the job) | latency_ms=4.0 (absolute); latency in --runtime at --latency-batch",
    )
    prune.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch", help="where a latency budget is measured (default torch)")
    prune.add_argument("--latency-batch", type=int, default=1, help="batch size at which latency is measured (default 1)")
    prune.add_argument(
        "--method", default=DEFAULT_METHOD,
        help=f"allocator: uniform | global | nap | itpruner | evolution | halp, or {DEFAULT_METHOD} (the default: "
        "global for flops/params budgets, halp for latency budgets, as the benchmark supports); "
        "latency budgets: halp or evolution",
    )
    prune.add_argument(
        "--criterion",
        help="channel importance: l1 | taylor | bn_scale | chip | attribution | taylor_guided | kfac "
        "(default per method: global taylor, uniform l1, nap kfac, itpruner l1, evolution l1, halp taylor)",
    )
    prune.add_argument("--schedule", choices=["oneshot", "iterative"], default="oneshot", help="prune once, or in steps with fine-tuning between them")
    prune.add_argument("--steps", type=int, default=3, help="steps of the iterative schedule (default 3)")
    prune.add_argument("--calibration-batches", type=int, default=8, help="batches of 64 that data-driven criteria score on and BatchNorm statistics are re-estimated on (default 8)")
    prune.add_argument(
        "--no-obs-compensation", action="store_true",
        help="with the kfac criterion, skip NAP's OBS update of the kept weights",
    )
    prune.add_argument("--search-trials", type=int, help="evolution: candidates the search evaluates (default 60)")
    prune.add_argument("--channel-step", type=int, default=1, help="keep widths in multiples of this, e.g. 8 for onnxruntime (default 1)")
    prune.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    prune.add_argument("--device", default="auto", help="where scoring, search and fine-tuning run: auto, cpu, cuda[:N] (default auto)")
    prune.add_argument("--latency-repeats", type=int, default=30, help="timed runs per latency measurement (default 30)")
    prune.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and its onnxruntime check")
    prune.add_argument("--no-pt2", action="store_true", help="skip the torch.export (.pt2) export")
    prune.add_argument("--out", required=True, help="output directory")
    _finetune_flags(prune, epochs=5)
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
    """serve | worker | token | submit: the job service; api.cli imports its dependencies only when run."""
    from api.cli import add_commands

    add_commands(sub)


def _metrics_text(metrics: dict[str, Any]) -> str:
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if not isinstance(v, (list, dict)))
    return text[:60]


class StageBars:
    """One rich progress bar per pipeline stage, for a terminal."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<11}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False,
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
        print(f"[{stamp}] {stage:<11} {100 * min(max(fraction, 0.0), 1.0):5.1f}% {_metrics_text(metrics)}".rstrip(), flush=True)


def stage_progress() -> StageBars | StageLines:
    """Bars on a terminal, lines in a log."""
    return StageBars() if sys.stdout.isatty() else StageLines()


def print_summary(report: dict[str, Any], out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['arch']} · {report['method']}/{report['criterion']} · {Budget.from_dict(report['budget'])}")
    for col in ("", "before", "after", "ratio"):
        table.add_column(col, justify="right")

    def row(name: str, a: float, b: float, fmt: str) -> None:
        table.add_row(name, format(a, fmt), format(b, fmt), f"{b / a:.3f}" if a else "-")

    row("MACs (M)", report["macs_before"] / 1e6, report["macs_after"] / 1e6, ".2f")
    row("params (M)", report["params_before"] / 1e6, report["params_after"] / 1e6, ".3f")
    row("latency torch (ms)", report["latency_ms_before"], report["latency_ms_after"], ".2f")
    ort = report["latency"]
    if "onnxruntime" in ort["after"]:
        row("latency onnxruntime (ms)", ort["before"]["onnxruntime"], ort["after"]["onnxruntime"], ".2f")
    table.add_row("top-1 (%)", f"{100 * report['accuracy_before']:.2f}", f"{100 * report['accuracy_after']:.2f}", f"pruned, BN re-estimated: {100 * report['accuracy_pruned']:.2f}")
    console = Console()
    console.print(table)
    console.print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()))
    onnx = f", model.onnx (onnxruntime max abs diff {report['onnx_max_abs_diff']:.2g})" if report["onnx_max_abs_diff"] is not None else ""
    console.print(f"wrote {out}/: report.html (open it in a browser), report.json, model.safetensors, spec.json{onnx}")


def _budget(args: argparse.Namespace) -> Budget:
    budget = Budget.parse(args.budget)
    if budget.measured:
        return budget.evolve(runtime=args.runtime, batch_size=args.latency_batch)
    return budget


def cmd_prune(args: argparse.Namespace) -> int:
    from autoprune import pipeline

    spec = JobSpec(
        arch=args.arch,
        weights=args.weights,
        data=args.data,
        budget=_budget(args),
        method=args.method,
        criterion=args.criterion,
        schedule=args.schedule,
        iterative_steps=args.steps,
        calibration_batches=args.calibration_batches,
        obs_compensation=not args.no_obs_compensation,
        finetune=_finetune_config(args),
        search_trials=args.search_trials,
        channel_step=args.channel_step,
        seed=args.seed,
        device=args.device,
        latency_repeats=args.latency_repeats,
        export_onnx=not args.no_onnx,
        export_pt2=not args.no_pt2,
        out_dir=args.out,
    )
    with stage_progress() as bars:
        report = pipeline.run(spec, progress=bars)
    print_summary(report, args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from autoprune import pipeline

    cfg = FinetuneConfig(lr=args.lr, batch_size=args.batch_size, distill=False)
    with stage_progress() as bars:
        result = pipeline.train_baseline(args.arch, args.data, args.out, epochs=args.epochs, cfg=cfg, seed=args.seed, progress=bars)
    print(f"top-1 {100 * result['accuracy']:.2f}% after {args.epochs} epochs; weights in {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    weights = out / "baseline.safetensors"
    print("1/2 training a CIFAR ResNet-20 on scikit-learn's digits (upsampled to 32x32 RGB)")
    train_args = ["train", "--arch", "resnet20", "--data", "digits", "--epochs", str(args.train_epochs), "--out", str(weights)]
    prune_args = [
        "prune", "--arch", "resnet20", "--weights", str(weights), "--data", "digits", "--budget", "flops=0.5",
        "--method", DEFAULT_METHOD, "--finetune-epochs", str(args.finetune_epochs), "--out", str(out),
        "--channel-step", "8",  # widths onnxruntime's fast kernels take: faster after pruning, not slower
    ]
    if main(train_args) != 0:
        return 1
    method = resolve_method(DEFAULT_METHOD, Budget.parse("flops=0.5"))
    print(f"2/2 pruning to half the MACs ({DEFAULT_METHOD}: {method}), fine-tuning with distillation, exporting")
    return main(prune_args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
