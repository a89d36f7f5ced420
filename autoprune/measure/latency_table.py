"""A per-layer latency lookup table (LUT) measured on this machine: HALP's cost model.

HALP (Shen et al., NeurIPS 2022) and NetAdapt (Yang et al., ECCV 2018) predict a network's latency
as the sum of its layers' latencies, each read from a table of single-layer timings keyed by
``(batch, c_in, c_out, fmap, k, stride, groups)``. HALP does not release the code that builds its
table (NVlabs/HALP#5); this module builds one:

- every conv/linear layer is timed *alone*: a fresh module with the layer's kernel, stride,
  padding, dilation, groups and bias, on an input of the layer's real spatial size, at the
  (in, out) widths of a grid spanning the widths pruning can reach (a width no group can change
  gets one grid point). Identical keys are timed once, so ResNet-56's repeated shapes (and any
  shape an earlier build stored in the same ``cache`` file) cost nothing;
- between grid points the latency is interpolated bilinearly (HALP times every reachable
  width; a grid keeps the build to seconds on a CPU). The grid holds the *monotone envelope* of
  the timings, the largest timing at or below each (in, out) point: single-layer CPU timings are
  noisy on the scale of neighbouring widths, and a table in which a wider layer is cheaper
  misleads the knapsack. The envelope errs on the slow side. (HALP's knapsack instead copes with
  negative marginal latencies, which cuDNN algorithm switches cause on its GPU table.)
- the prediction is ``base_latency + scale · Σ_layers LUT(in, out)``, with ``base_latency`` and
  ``scale`` fitted so that it equals two whole-model measurements: at full width and with every
  group halved (a real pruned copy). The plain additive model (``scale = 1``,
  ``base = measured − Σ``; HALP's targets are fractions of the bare LUT sum) is conservative for
  torch and wrong for onnxruntime, whose isolated layers pay session overhead and layout reorders
  the whole graph avoids; calibrated, it tracks both (measurements: docs/methods.md#latency-table).
  onnxruntime leaves its blocked-layout fast path at widths that are not multiples of 8, which no
  per-layer table sees; build with ``channel_step=8`` and allocate with HALP's channel grouping
  (``HALP(channel_step=8)``) there.

Widths follow from per-group keep counts exactly as :class:`CostModel` computes them, so the
latency and MACs budgets see the same pruned network. Keys extend HALP's with the layer kind,
padding, dilation and bias (a ResNet-50 needs none of them, other models do); depthwise convs are
keyed with ``groups = channels`` as in HALP's code. One JSON file holds the single-layer timings
of any number of measurement contexts (device, runtime, batch size, threads) and the last table
saved to it, so a file is reusable across models on one machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
import warnings
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from autoprune.graph.build import ChannelGroup, PruneGraph
from autoprune.measure.cost import CONV, CostModel, count_cost, forward_with_hooks
from autoprune.measure.latency import onnx_latency_ms, torch_latency_ms
from autoprune.surgery import PruningPlan, apply_plan

log = logging.getLogger(__name__)

Runtime = Literal["torch", "onnxruntime"]
FORMAT = "autoprune.latency_table/1"


@dataclass(frozen=True, kw_only=True)
class Context:
    """Where and how the timings were taken; a LUT is valid only in its own context."""

    device: str
    runtime: Runtime
    batch_size: int
    threads: int

    @property
    def key(self) -> str:
        return f"{self.device}|{self.runtime}|batch={self.batch_size}|threads={self.threads}"


@dataclass(frozen=True, kw_only=True)
class LayerGrid:
    """One conv/linear layer of the model: its geometry and the widths it is timed at."""

    name: str
    kind: str  # the module class: Conv1d, Conv2d, Conv3d or Linear
    spatial: tuple[int, ...]  # input dims after the channels (H, W of a Conv2d; leading dims of a Linear)
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    depthwise: bool  # then in = out = groups, and out_grid is the single full width
    bias: bool
    calls: int  # times the layer runs in one forward pass
    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]

    def shape(self, c_in: int, c_out: int) -> tuple[int, int, int]:
        """(in, out, groups) of the layer at widths (c_in, c_out)."""
        return (c_in, c_in, c_in) if self.depthwise else (c_in, c_out, self.groups)

    def key(self, batch_size: int, c_in: int, c_out: int) -> str:
        """HALP's ``bs_cin_cout_fmap_k_stride_groups``, with kind, padding, dilation and bias added."""
        c_in, c_out, groups = self.shape(c_in, c_out)
        fmap = "x".join(map(str, self.spatial)) or "1"
        kernel, stride, padding, dilation = (
            "x".join(map(str, v)) if isinstance(v, tuple) else v
            for v in (self.kernel, self.stride, self.padding, self.dilation)
        )
        bias = "bias" if self.bias else "nobias"
        return (
            f"{self.kind}_{batch_size}_{c_in}_{c_out}_{fmap}_{kernel}_{stride}_{groups}_p{padding}_d{dilation}_{bias}"
        )

    def module(self, c_in: int, c_out: int) -> nn.Module:
        """A fresh layer of this geometry at widths (c_in, c_out)."""
        c_in, c_out, groups = self.shape(c_in, c_out)
        if self.kind == "Linear":
            return nn.Linear(c_in, c_out, bias=self.bias)
        conv = getattr(nn, self.kind)
        return conv(
            c_in,
            c_out,
            self.kernel,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=groups,
            bias=self.bias,
        )

    def input_shape(self, c_in: int) -> tuple[int, ...]:
        """Per-sample input shape at input width ``c_in``."""
        return (*self.spatial, c_in) if self.kind == "Linear" else (c_in, *self.spatial)

    def points(self) -> list[tuple[int, int]]:
        return [(i, o) for i in self.in_grid for o in self.out_grid]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerGrid:
        def tup(v: Any) -> Any:
            return tuple(v) if isinstance(v, list) else v

        return cls(**{k: tup(v) for k, v in data.items()})


def _device() -> str:
    """The CPU's model name (the runtimes here time on the CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu:{line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu:{platform.processor() or platform.machine()}"


def _axis(lo: int, hi: int, points: int, step: int) -> tuple[int, ...]:
    """About ``points`` widths from ``lo`` to ``hi``: multiples of ``step``, and ``hi``."""
    if lo >= hi:
        return (hi,)
    lo = min(max(lo, step), hi)
    return tuple(sorted({min(hi, step * max(1, round(v / step))) for v in np.linspace(lo, hi, points)} | {hi}))


def _input_dims(model: nn.Module, names: set[str], example_input: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Input dims after the channel dim of each named layer (for a Linear: before the features)."""
    dims: dict[str, tuple[int, ...]] = {}

    def hook(name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        shape = tuple(args[0].shape)
        dims[name] = shape[1:-1] if isinstance(module, nn.Linear) else shape[2:]

    hooks = [
        m.register_forward_pre_hook(lambda m, a, n=n: hook(n, m, a)) for n, m in model.named_modules() if n in names
    ]
    forward_with_hooks(model, example_input, hooks)
    return dims


def _layer_grids(
    model: nn.Module,
    graph: PruneGraph,
    cost_model: CostModel,
    example_input: torch.Tensor,
    points: int,
    channel_step: int,
) -> tuple[LayerGrid, ...]:
    """A grid per layer from its narrowest reachable widths (each group keeps one unit) to full."""
    layers = cost_model.report.layers
    modules = {layer.name: model.get_submodule(layer.name) for layer in layers}
    depthwise = {name: CostModel._geometry(m)[3] for name, m in modules.items()}
    narrowest = cost_model.widths({g.id: g.blocks for g in graph.groups})
    dims = _input_dims(model, set(modules), example_input)
    grids = []
    for layer in layers:
        m = modules[layer.name]
        conv = isinstance(m, CONV)
        step = math.lcm(channel_step, m.groups if conv and not depthwise[layer.name] else 1)
        lo_in, lo_out = narrowest[layer.name]
        in_grid = _axis(lo_in, layer.in_channels, points, step)
        grids.append(
            LayerGrid(
                name=layer.name,
                kind=type(m).__name__,
                spatial=dims[layer.name],
                kernel=tuple(m.kernel_size) if conv else (),
                stride=tuple(m.stride) if conv else (),
                padding=(m.padding if isinstance(m.padding, str) else tuple(m.padding)) if conv else (),
                dilation=tuple(m.dilation) if conv else (),
                groups=m.groups if conv else 1,
                depthwise=depthwise[layer.name],
                bias=m.bias is not None,
                calls=layer.calls,
                in_grid=in_grid,
                out_grid=(layer.out_channels,)
                if depthwise[layer.name]
                else _axis(lo_out, layer.out_channels, points, step),
            )
        )
    return tuple(grids)


def _timer(context: Context, repeats: int, warmup: int, workdir: Path) -> Callable[[nn.Module, tuple[int, ...]], float]:
    """Median latency (ms) of one module on random input, in the context's runtime."""
    timing = dict(batch_size=context.batch_size, repeats=repeats, warmup=warmup, threads=context.threads)
    if context.runtime == "torch":
        return lambda module, shape: torch_latency_ms(module, shape, **timing)

    def onnx_ms(module: nn.Module, shape: tuple[int, ...]) -> float:
        # The legacy TorchScript exporter takes ~20 ms per layer here, the dynamo one ~1 s.
        path = workdir / "model.onnx"
        was_training = module.training
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module.eval(), (torch.randn(context.batch_size, *shape),), str(path), dynamo=False)
        finally:
            module.train(was_training)
        return onnx_latency_ms(path, shape, **timing)

    return onnx_ms


def _read_file(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a latency table file ({FORMAT})")
    return data


class LatencyTable:
    """Predicted latency (ms) of the model pruned to given keep counts.

    ``latency(keep) = base_latency + scale · Σ_layers LUT(in, out)``, with ``base_latency`` and
    ``scale`` fitted to two whole-model measurements (see :meth:`build`).
    """

    def __init__(
        self,
        *,
        context: Context,
        layers: tuple[LayerGrid, ...],
        lut: Mapping[str, float],
        cost_model: CostModel,
        measured_latency: float,
        calibration_keep: Mapping[str, int],
        calibration_latency: float,
    ) -> None:
        self.context = context
        self.layers = layers
        self.lut = dict(lut)
        self.cost_model = cost_model
        self.measured_latency = measured_latency
        self.calibration_keep = dict(calibration_keep)
        self.calibration_latency = calibration_latency
        self._by_name = {layer.name: layer for layer in layers}
        missing = [
            k
            for layer in layers
            for i, o in layer.points()
            if (k := layer.key(context.batch_size, i, o)) not in self.lut
        ]
        if missing:
            raise ValueError(f"lut lacks {len(missing)} timings, e.g. {missing[0]}")
        self._grid = {layer.name: self._envelope(layer) for layer in layers}
        self.scale, self.base_latency = self._calibrate()

    def _envelope(self, layer: LayerGrid) -> list[list[float]]:
        """Largest timing at or below each grid point: monotone in both widths."""
        rows = [[self.lut[layer.key(self.context.batch_size, i, o)] for o in layer.out_grid] for i in layer.in_grid]
        return np.maximum.accumulate(np.maximum.accumulate(np.array(rows), axis=0), axis=1).tolist()

    def _calibrate(self) -> tuple[float, float]:
        """(scale, base) through the two measurements; scale 1 if they do not fix a positive slope."""
        full = self.layer_sum({})
        reduced = self.layer_sum(self.calibration_keep)
        if full > reduced and self.measured_latency > self.calibration_latency:
            scale = (self.measured_latency - self.calibration_latency) / (full - reduced)
        else:  # timing noise swamped the difference: fall back to the additive model
            log.warning(
                "latency calibration failed (full %.4g ms, reduced %.4g ms); using scale 1",
                self.measured_latency,
                self.calibration_latency,
            )
            scale = 1.0
        return scale, self.measured_latency - scale * full

    def grid_values(self, name: str) -> np.ndarray:
        """The table of layer ``name`` for one call (rows: in_grid, columns: out_grid), in ms."""
        return np.array(self._grid[name])

    def layer_latency(self, name: str, c_in: float, c_out: float) -> float:
        """The layer's tabled latency at (c_in, c_out), bilinear between grid points, times its calls."""
        layer = self._by_name[name]
        t = self._grid[name]
        i0, i1, u = _bracket(layer.in_grid, c_in)
        j0, j1, v = _bracket(layer.out_grid, c_out)
        value = (1 - u) * ((1 - v) * t[i0][j0] + v * t[i0][j1]) + u * ((1 - v) * t[i1][j0] + v * t[i1][j1])
        return layer.calls * value

    def layer_sum(self, keep: Mapping[str, int]) -> float:
        """Σ over layers of the tabled latency at the widths ``keep`` gives (groups missing: full)."""
        widths = self.cost_model.widths(keep)
        return sum(self.layer_latency(name, *widths[name]) for name in self._by_name)

    def latency(self, keep: Mapping[str, int]) -> float:
        """Predicted latency (ms) with ``keep[group]`` channels kept per group (groups missing: full)."""
        return self.base_latency + self.scale * self.layer_sum(keep)

    @classmethod
    def build(
        cls,
        model: nn.Module,
        graph: PruneGraph,
        example_input: torch.Tensor,
        *,
        runtime: Runtime = "torch",
        batch_size: int = 1,
        threads: int | None = None,
        grid: int = 8,
        channel_step: int = 1,
        repeats: int = 20,
        warmup: int = 3,
        cache: str | Path | None = None,
    ) -> LatencyTable:
        """Time every layer on its grid, and the whole model twice, on this machine.

        ``grid``: widths per axis. ``channel_step``: grid widths are multiples of it (say 8 where
        the runtime's fast kernels need it; HALP's "channel groups"). ``threads`` defaults to
        torch's current count. ``cache``: a table file whose timings in this context are reused;
        the new table is saved to it.

        The whole model is timed at full width and with every group halved (a real pruned copy;
        three alternating rounds, medians), and ``latency`` is made to pass through both: a
        single-layer timing carries overheads that scale with the layer (for onnxruntime, layout
        reorders and no conv+BN+ReLU fusion; at batch 1 its isolated layers sum to twice the
        whole model), and the time outside conv/linear layers is partly fixed (the additive
        ``measured − Σ layers`` is scale = 1).
        """
        if runtime not in ("torch", "onnxruntime"):
            raise ValueError(f"runtime must be 'torch' or 'onnxruntime', not {runtime!r}")
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("grid", grid, 2),
            ("channel_step", channel_step, 1),
            ("repeats", repeats, 1),
            ("warmup", warmup, 0),
            ("threads", 1 if threads is None else threads, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, not {value!r}")
        context = Context(
            device=_device(), runtime=runtime, batch_size=batch_size, threads=threads or torch.get_num_threads()
        )
        cost_model = CostModel(graph, count_cost(model, example_input))
        layers = _layer_grids(model, graph, cost_model, example_input, grid, channel_step)
        lut: dict[str, float] = {}
        if cache is not None and Path(cache).exists():
            lut.update(_read_file(Path(cache))["luts"].get(context.key, {}))
        halved = {g.id: _halved(g, channel_step) for g in graph.groups}
        shape = tuple(example_input.shape[1:])
        with tempfile.TemporaryDirectory() as workdir:
            time_ms = _timer(context, repeats, warmup, Path(workdir))
            for layer in layers:
                for c_in, c_out in layer.points():
                    key = layer.key(batch_size, c_in, c_out)
                    if key not in lut:
                        lut[key] = time_ms(layer.module(c_in, c_out), layer.input_shape(c_in))
            reduced_model = apply_plan(model, example_input, _first_channels(graph, halved))
            # Alternate the two models so that load from other work on the machine hits both alike.
            pairs = [(time_ms(model, shape), time_ms(reduced_model, shape)) for _ in range(3)]
            measured, reduced = (float(np.median(column)) for column in zip(*pairs))
        table = cls(
            context=context,
            layers=layers,
            lut=lut,
            cost_model=cost_model,
            measured_latency=measured,
            calibration_keep=halved,
            calibration_latency=reduced,
        )
        if cache is not None:
            table.save(cache)
        return table

    def save(self, path: str | Path) -> None:
        """Write this table, keeping the timings of other contexts (and of other models) already there."""
        path = Path(path)
        luts = _read_file(path)["luts"] if path.exists() else {}
        luts[self.context.key] = {**luts.get(self.context.key, {}), **self.lut}
        data = {
            "format": FORMAT,
            "luts": luts,
            "table": {
                "context": asdict(self.context),
                "layers": [asdict(layer) for layer in self.layers],
                "measured_latency": self.measured_latency,
                "calibration_keep": self.calibration_keep,
                "calibration_latency": self.calibration_latency,
            },
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, graph: PruneGraph) -> LatencyTable:
        """The table last saved in ``path``, for ``graph``'s model (its layers must match)."""
        data = _read_file(Path(path))
        saved = data["table"]
        context = Context(**saved["context"])
        layers = tuple(LayerGrid.from_dict(layer) for layer in saved["layers"])
        cost_model = CostModel(graph, count_cost(graph.model, graph.example_input))
        expected = [(layer.name, layer.in_channels, layer.out_channels) for layer in cost_model.report.layers]
        found = [(layer.name, layer.in_grid[-1], layer.out_grid[-1]) for layer in layers]
        if found != expected:
            raise ValueError(f"{path} holds a table for another model (layers {found[:2]}…, expected {expected[:2]}…)")
        return cls(
            context=context,
            layers=layers,
            lut=data["luts"][context.key],
            cost_model=cost_model,
            measured_latency=saved["measured_latency"],
            calibration_keep=saved["calibration_keep"],
            calibration_latency=saved["calibration_latency"],
        )


def _halved(group: ChannelGroup, channel_step: int) -> int:
    """Half the group's channels, rounded up to whole units and to ``channel_step``."""
    unit = math.lcm(group.blocks, channel_step)
    return min(group.channels, unit * math.ceil(group.channels / 2 / unit))


def _first_channels(graph: PruneGraph, keep: Mapping[str, int]) -> PruningPlan:
    """A plan keeping the first ``keep[g]`` channels (the same positions in each block): timing only."""
    kept = {}
    for g in graph.groups:
        per_block = keep[g.id] // g.blocks
        kept[g.id] = [p + b * g.block_size for b in range(g.blocks) for p in range(per_block)]
    return PruningPlan.from_keep(
        kept, {g.id: g.channels for g in graph.groups}, ignore=graph.ignore, skipped=graph.skipped
    )


def _bracket(grid: tuple[int, ...], x: float) -> tuple[int, int, float]:
    """Indices of the grid points around x and x's fraction of the way between them."""
    if x <= grid[0]:
        return 0, 0, 0.0
    if x >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    i = bisect_right(grid, x) - 1
    return i, i + 1, (x - grid[i]) / (grid[i + 1] - grid[i])
