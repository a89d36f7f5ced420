"""Reference models: trained once per arch (resumable per epoch), exported and timed like a run.

A baseline is ``<arch>-cifar10-e<epochs>-s<seed>.safetensors`` plus a ``.json`` with its recipe,
accuracy and training time. While it trains, ``.train.pt`` holds the weights and the optimizer,
schedule and random-generator states after the last finished epoch (tensors and plain containers,
read back with ``weights_only=True``), so a killed training continues from that epoch with the
same batches and learning rates as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.data import ImageData, load_data
from autoprune.device import on_device, resolve_device
from autoprune.export import ModelSpec, export_onnx, load_pruned, read_spec, save_weights, write_json
from autoprune.finetune import evaluate, finetune
from autoprune.measure import onnx_latency_ms, torch_latency_ms
from autoprune.models import create_model, load_weights
from bench.common import load_average, read_json
from bench.settings import BASELINE_SEED, LATENCY_BATCHES, Settings, baseline_config, baseline_recipe_text

DEVICE = resolve_device("auto")  # training and evaluation: a CUDA GPU when there is one (--full)


def baseline_path(settings: Settings, arch: str) -> Path:
    epochs = settings.recipe(arch).baseline_epochs
    return settings.baselines / f"{arch}-cifar10-e{epochs}-s{BASELINE_SEED}.safetensors"


def train_baseline(settings: Settings, arch: str) -> tuple[Path, dict[str, Any]]:
    """The cached baseline of ``arch``, training it first (or finishing its training) if needed."""
    weights = baseline_path(settings, arch)
    meta_path, state_path = weights.with_suffix(".json"), weights.with_suffix(".train.pt")
    if meta_path.exists():  # written last
        return weights, read_json(meta_path)
    recipe = settings.recipe(arch)
    cfg = baseline_config(recipe)
    data = load_data(settings.data_ref)
    torch.manual_seed(BASELINE_SEED)
    model = create_model(arch, num_classes=data.num_classes, in_channels=data.input_shape[0])
    resume, seconds = None, 0.0
    if state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["weights"])
        resume, seconds = saved["training"], float(saved["seconds"])
        print(f"{arch}: resuming baseline training after epoch {len(resume['history'])}", flush=True)
    start = time.perf_counter() - seconds

    def save_epoch(training: dict[str, Any]) -> None:
        payload = {"weights": model.state_dict(), "training": training, "seconds": time.perf_counter() - start}
        tmp = state_path.with_name(f".{state_path.name}.{os.getpid()}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, state_path)  # atomic: a kill leaves the previous epoch's state or this one
        last = training["history"][-1]
        print(
            f"  [{time.strftime('%H:%M:%S')}] {arch} baseline: epoch {last['epoch']}/{cfg.epochs}, "
            f"loss {last['loss']:.3f}, train top-1 {last['train_accuracy']:.3f}, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )

    weights.parent.mkdir(parents=True, exist_ok=True)
    print(f"{arch}: training the baseline ({baseline_recipe_text(recipe)})", flush=True)
    with on_device(model, DEVICE):
        stats = finetune(model, data, cfg, seed=BASELINE_SEED, resume=resume, on_epoch=save_epoch)
        result = evaluate(model, data)
    save_weights(model, weights, ModelSpec.for_data(arch, data))
    meta = {
        "arch": arch,
        "accuracy": result.accuracy,
        "loss": result.loss,
        "epochs": recipe.baseline_epochs,
        "seed": BASELINE_SEED,
        "history": [{"epoch": s.epoch, "loss": s.loss, "train_accuracy": s.train_accuracy, "lr": s.lr} for s in stats],
        "weights": str(weights),
        "seconds": time.perf_counter() - start,
        "recipe": baseline_recipe_text(recipe),
        "config": cfg.to_dict(),
        "data": settings.data_ref,
        "threads": torch.get_num_threads(),
        "code_version": settings.code_version,  # of the training; runs key on the weights' hash, not on this
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    state_path.unlink(missing_ok=True)
    print(f"{arch}: baseline top-1 {result.accuracy:.4f} after {meta['seconds']:.0f} s", flush=True)
    return weights, meta


def load_baseline(arch: str, weights: Path, data: ImageData) -> nn.Module:
    model = create_model(arch, num_classes=data.num_classes, in_channels=data.input_shape[0])
    load_weights(model, weights)
    return model.eval()


def baseline_bundle(settings: Settings, arch: str, weights: Path, data: ImageData) -> Path:
    """The unpruned model exported like a run (weights, ONNX, spec.json), so it is timed the same way.

    It lives with the runs of this code version (``settings.runs``): exported and timed by the same code as they are.
    """
    out = settings.runs / f"{arch}-baseline"
    if not (out / "spec.json").exists():  # written last
        out.mkdir(parents=True, exist_ok=True)
        model = load_baseline(arch, weights, data)
        spec = ModelSpec.for_data(arch, data)
        save_weights(model, out / "model.safetensors", spec)
        export_onnx(model, out / "model.onnx", spec.example_input())
        write_json(out / "spec.json", spec.to_dict())
    return out


def measure_latency(bundle: Path, threads: int, repeats: int) -> dict[str, Any]:
    """Median ms of the exported model in torch and onnxruntime at each batch size; saved as latency.json.

    The load average before and after is kept with it: on a shared machine timings follow it.
    """
    spec = read_spec(bundle / "spec.json")
    model = load_pruned(spec, bundle / "model.safetensors")
    out: dict[str, Any] = {"threads": threads, "repeats": repeats, "torch": {}, "onnxruntime": {}}
    load_before = load_average()
    for batch in LATENCY_BATCHES:
        timing = dict(batch_size=batch, repeats=repeats, threads=threads)
        out["torch"][str(batch)] = torch_latency_ms(model, spec.input_shape, **timing)
        out["onnxruntime"][str(batch)] = onnx_latency_ms(bundle / "model.onnx", spec.input_shape, **timing)
    out["load_average"] = max(load_before, load_average())
    out["date"] = time.strftime("%Y-%m-%d %H:%M")
    write_json(bundle / "latency.json", out)
    return out


def measure_latencies_interleaved(bundles: list[Path], threads: int, repeats: int, warmup: int = 5) -> None:
    """Time every bundle like :func:`measure_latency`, but in rounds: each round runs every model once
    (in a rotated order), so a load that comes and goes over minutes slows all of them alike and the
    medians compare models, not moments. The onnxruntime sessions do not spin-wait (``spin=False``):
    all of them are alive at once. Rewrites each bundle's latency.json (``interleaved`` = N).
    """
    from autoprune.measure.latency import onnx_session, torch_threads

    specs = [read_spec(b / "spec.json") for b in bundles]
    models = [load_pruned(spec, b / "model.safetensors").eval() for spec, b in zip(specs, bundles, strict=True)]
    sessions = [onnx_session(b / "model.onnx", threads, spin=False) for b in bundles]
    results: list[dict[str, Any]] = [
        {"threads": threads, "repeats": repeats, "torch": {}, "onnxruntime": {}} for _ in bundles
    ]
    load_before = load_average()
    with torch_threads(threads), torch.inference_mode():
        for batch in LATENCY_BATCHES:
            inputs = [torch.randn(batch, *spec.input_shape) for spec in specs]
            calls = {
                "torch": [lambda m=m, x=x: m(x) for m, x in zip(models, inputs, strict=True)],
                "onnxruntime": [
                    lambda s=s, x=x.numpy(): s.run(None, {s.get_inputs()[0].name: x})
                    for s, x in zip(sessions, inputs, strict=True)
                ],
            }
            for runtime, runs in calls.items():
                for run in runs:
                    for _ in range(warmup):
                        run()
                times: list[list[float]] = [[] for _ in runs]
                for round_ in range(repeats):
                    order = list(range(len(runs)))
                    order = order[round_ % len(order) :] + order[: round_ % len(order)]
                    for i in order:
                        start = time.perf_counter()
                        runs[i]()
                        times[i].append((time.perf_counter() - start) * 1000)
                for result, samples in zip(results, times, strict=True):
                    result[runtime][str(batch)] = statistics.median(samples)
    load = max(load_before, load_average())
    for bundle, result in zip(bundles, results, strict=True):
        result.update(
            load_average=load,
            interleaved=len(bundles),
            onnxruntime_spinning=False,
            date=time.strftime("%Y-%m-%d %H:%M"),
        )
        write_json(bundle / "latency.json", result)


def latency_of(bundle: Path, threads: int, repeats: int, *, reuse_any: bool = False) -> dict[str, Any]:
    """latency.json if it was timed with these threads, else a fresh timing.

    ``reuse_any`` (``--no-run``) takes latency.json whatever its threads: tabulating must not re-time
    finished runs under whatever load there is now (each timing records its threads and load).
    """
    path = bundle / "latency.json"
    if path.exists():
        cached = read_json(path)
        if reuse_any or cached.get("threads") == threads:
            return cached
    return measure_latency(bundle, threads, repeats)
