"""The benchmark suite: every method at 2× and 3× MACs reduction on each reference model, resumable.

    .venv/bin/python -m bench.suite                                  # CPU setting: ResNet-20, seed 0 (≈1 h idle)
    .venv/bin/python -m bench.suite --archs resnet20,resnet56,cifar_mobilenetv2,cifar_vgg16_bn --seeds 0,1
    .venv/bin/python -m bench.suite --train-only --archs resnet56    # train (or finish training) baselines only
    .venv/bin/python -m bench.suite --no-run                         # tables from what has finished
    .venv/bin/python -m bench.suite --only-latency                   # re-time every finished run (in rounds), rewrite tables
    .venv/bin/python -m bench.suite --full --archs ...               # paper-like epochs (GPU machine)
    .venv/bin/python -m bench.suite --quick                          # smoke test, separate cache and results

(from the repository root: bench is a package.)

Per arch: the baseline (trained once, cached, resumable per epoch), then for each seed every
``--methods`` entry at each ``--budgets`` MACs budget, HALP at ``--latency-fraction`` × the
unpruned model's latency (timed again just before HALP runs, so a timing made under load earlier
cannot loosen the target), and the high-compression fidelity runs (``--high-methods`` at
``--high-budgets``). Every run is cached and skipped when done, so an interrupted suite resumes;
the cache is keyed by the job's fingerprint and the code version (``bench.cache``), so after a
change to autoprune/ or solvers/ every run is made again, and a table never mixes code versions.
Writes ``results/suite-<arch>.json``, ``results/widths-<arch>-<budget>.png`` and
``results/RESULTS.md`` (every arch's json found there, plus ``results/fidelity-*.json``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from autoprune.data import ImageData, load_data
from autoprune.export import write_json
from autoprune.measure import count_cost
from bench.baselines import (
    baseline_bundle,
    baseline_path,
    latency_of,
    load_baseline,
    measure_latencies_interleaved,
    train_baseline,
)  # fmt: skip
from bench.cache import short
from bench.common import load_average, machine, today, versions
from bench.plots import width_plot
from bench.runs import Run, collect, execute, is_done, parse_budgets, parse_methods, planned_runs
from bench.settings import (
    ARCHS,
    BUDGETS,
    CHANNEL_STEP,
    HIGH_BUDGETS,
    HIGH_METHODS,
    METHODS,
    STEP_BUDGETS,
    STEP_METHODS,
    Settings,
)
from bench.tables import ARCH_TITLES, width_runs, write_results

LATENCY_COMPARED = "flops=0.5"  # the MACs budget whose runs are held against HALP's latency target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default="resnet20", help=f"comma-separated, from {', '.join(ARCHS)}")
    parser.add_argument("--seeds", default="0", help="pruning/fine-tune seeds to run and tabulate (baselines: seed 0)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--full", action="store_true", help="paper-like epochs (settings.FULL_RECIPES); for a GPU machine"
    )
    mode.add_argument("--quick", action="store_true", help="smoke test: data subset, one fine-tune step")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated method:criterion (tp:… = Torch-Pruning)"
    )
    parser.add_argument("--budgets", default=BUDGETS, help="comma-separated MACs budgets (fractions kept)")
    parser.add_argument(
        "--latency-fraction",
        type=float,
        default=0.8,
        help="HALP's latency budget as a fraction of the unpruned latency; 0 skips it",
    )
    parser.add_argument("--latency-runtime", choices=["torch", "onnxruntime"], default="onnxruntime")
    parser.add_argument("--latency-batch", type=int, choices=[1, 64], default=64)
    parser.add_argument("--high-methods", default=",".join(HIGH_METHODS), help="fidelity check (d): methods")
    parser.add_argument("--high-budgets", default=HIGH_BUDGETS, help="fidelity check (d): budgets; empty skips it")
    parser.add_argument("--step-methods", default=",".join(STEP_METHODS), help="methods also run with --channel-step")
    parser.add_argument("--step-budgets", default=STEP_BUDGETS, help="their MACs budgets; empty skips them")
    parser.add_argument(
        "--channel-step", type=int, default=CHANNEL_STEP, help="widths in multiples of this for those runs"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-only", action="store_true", help="train the baselines of --archs, run nothing else")
    parser.add_argument(
        "--no-run", action="store_true", help="run nothing: tabulate the finished runs (their latency.json as timed)"
    )
    parser.add_argument("--only-latency", action="store_true", help="re-time finished runs and rewrite the tables")
    parser.add_argument(
        "--code-version", default=None,
        help="with --no-run: tabulate the cached runs of this older code version (a hex prefix) instead of this checkout's",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.code_version and not args.no_run:
        raise SystemExit("--code-version only goes with --no-run: runs and timings are made by this checkout's code")
    args.arch_list = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in args.arch_list if a not in ARCHS]
    if unknown:
        raise SystemExit(f"unknown arch {', '.join(unknown)}; the suite knows {', '.join(ARCHS)}")
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    for methods in (args.methods, args.high_methods, args.step_methods):  # fail on a malformed list before any work
        parse_methods(methods)
    for budgets in (args.budgets, args.high_budgets, args.step_budgets):
        parse_budgets(budgets)
    if "tp" in {m for m, _ in parse_methods(args.step_methods)}:
        raise SystemExit("--step-methods: Torch-Pruning's pruners have no channel step here")
    return args


def mode_of(args: argparse.Namespace) -> str:
    return "full" if args.full else "quick" if args.quick else "cpu"


def retime(arch: str, args: argparse.Namespace, settings: Settings, weights: Path, bundle: Path) -> None:
    """``--only-latency``: the unpruned model and every finished run, timed together in rounds."""
    runs = planned_runs(arch, args)
    done = [
        run.directory(settings, seed)
        for seed in args.seed_list
        for run in runs
        if is_done(run, settings, seed, weights)
    ]
    print(f"{arch}: timing the unpruned model and {len(done)} runs in rounds", flush=True)
    measure_latencies_interleaved([bundle, *done], args.threads, settings.latency_repeats)


def cell(run: Run) -> tuple[str, str, str, str, int]:
    return run.method, run.criterion, run.label, run.kind, run.channel_step


def tabulated(arch: str, args: argparse.Namespace, runs: list[Run]) -> list[Run]:
    """The default plan, then the call's other runs. A call with a subset of methods or budgets
    runs only those, but the arch's results file still lists every cell (finished ones from the cache)."""
    defaults = parse_args([*(["--full"] if args.full else []), *(["--quick"] if args.quick else [])])
    plan = planned_runs(arch, defaults)
    cells = {cell(run) for run in plan}
    return plan + [run for run in runs if cell(run) not in cells]


def run_arch(arch: str, args: argparse.Namespace, settings: Settings, data: ImageData) -> tuple[dict[str, Any], bool]:
    """Run (or reuse) every cell of ``arch``; returns the arch's results and whether any run failed."""
    weights, meta = train_baseline(settings, arch)
    bundle = baseline_bundle(settings, arch, weights, data)
    if args.only_latency:
        retime(arch, args, settings, weights, bundle)
    reuse = args.no_run or args.only_latency
    base_latency = latency_of(bundle, args.threads, settings.latency_repeats, reuse_any=reuse)
    cost = count_cost(load_baseline(arch, weights, data), torch.zeros(1, *data.input_shape))
    base = {
        **{k: meta[k] for k in ("accuracy", "loss", "epochs", "recipe", "seconds", "code_version") if k in meta},
        "weights": weights.name,
        "macs": cost.macs,
        "params": cost.params,
        "latency_ms": base_latency,
    }
    runs = planned_runs(arch, args)
    wanted = {cell(run) for run in runs}
    rows, failed = [], False
    for seed in args.seed_list:
        for run in tabulated(arch, args, runs):
            out = run.directory(settings, seed)
            if cell(run) in wanted and not (args.no_run or args.only_latency or is_done(run, settings, seed, weights)):
                try:
                    execute(run, settings, weights, data, seed)
                    (out / "error.txt").unlink(missing_ok=True)
                except Exception:  # one failed method must not stop a multi-hour suite
                    traceback.print_exc()
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "error.txt").write_text(traceback.format_exc())
                    failed = True
            latency = None
            if is_done(run, settings, seed, weights):
                latency = latency_of(out, args.threads, settings.latency_repeats, reuse_any=reuse)
            rows.append(collect(run, settings, seed, latency))
    suite = {
        "arch": arch,
        "code_version": settings.code_version,  # of every row: runs of other code are not reused
        "machine": machine(),
        "date": today(),
        "versions": versions(),
        "load_average_at_write": load_average(),
        "baseline": base,
        "args": {k: v for k, v in vars(args).items() if k not in ("arch_list", "seed_list")},
        "seeds": args.seed_list,
        "settings": settings.to_dict(arch),
        "latency_compared": LATENCY_COMPARED,
        "runs": rows,
    }
    return suite, failed


def plot_widths(suite: dict[str, Any], out: Path) -> None:
    arch = suite["arch"]
    for stale in out.glob(f"widths-{arch}-*.png"):  # from budgets no longer run
        stale.unlink()
    rows = suite["runs"]
    for label in dict.fromkeys(r["label"] for r in rows if "error" not in r):
        runs = width_runs(rows, label)
        title = f"{ARCH_TITLES.get(arch, arch)} / CIFAR-10: output channels per layer, {label}"
        width_plot(runs, out / f"widths-{arch}-{label}.png", title=title)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    settings = Settings.make(mode_of(args), args.code_version)
    print(f"code version {short(settings.code_version)}: runs cached in {settings.runs}", flush=True)
    if args.train_only:
        for arch in args.arch_list:
            start = time.perf_counter()
            _, meta = train_baseline(settings, arch)
            print(
                f"{arch}: baseline ready, top-1 {meta['accuracy']:.4f} ({time.perf_counter() - start:.0f} s this call)"
            )
        return 0
    data = load_data(settings.data_ref)
    settings.results.mkdir(parents=True, exist_ok=True)
    failed = False
    for arch in args.arch_list:
        if args.no_run and not baseline_path(settings, arch).with_suffix(".json").exists():
            print(f"{arch}: no trained baseline yet; skipped (--no-run)")
            continue
        start = time.perf_counter()
        suite, arch_failed = run_arch(arch, args, settings, data)
        failed |= arch_failed
        if args.no_run and all("error" in r for r in suite["runs"]):  # keep what the results file holds
            print(f"{arch}: no finished run of code version {short(settings.code_version)}; "
                  f"results/suite-{arch}.json left as it was (--code-version tabulates an older one)")  # fmt: skip
            continue
        write_json(settings.results / f"suite-{arch}.json", suite)
        plot_widths(suite, settings.results)
        print(
            f"{arch}: {sum('error' not in r for r in suite['runs'])} of {len(suite['runs'])} runs done "
            f"({time.perf_counter() - start:.0f} s this call)",
            flush=True,
        )
    print(f"wrote {write_results(settings)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
