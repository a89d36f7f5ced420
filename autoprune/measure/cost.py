"""MACs and parameters, per layer and in total, measured and predicted.

MACs count the multiply-accumulates of convolution and linear layers (the convention of the
pruning literature: ResNet-56 ≈ 126 M, ResNet-18 ≈ 1.82 G); FLOPs = 2·MACs where quoted.
Normalisation, activations and pooling are not counted. Params count every parameter.

:func:`count_cost` measures a real model with forward hooks. :class:`CostModel` predicts the
cost of a pruned model from the keep counts of each channel group without building it, so
allocators can evaluate thousands of candidates; tests check it against :func:`count_cost` after
real surgery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from solvers.base import QuadraticCost

if TYPE_CHECKING:
    from autoprune.graph.build import PruneGraph

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True, kw_only=True)
class LayerCost:
    name: str
    kind: str
    in_channels: int
    out_channels: int
    macs: int
    params: int
    positions: int  # output positions per sample (H·W for a 2-d conv, 1 for a linear layer)
    calls: int = 1  # times the layer runs in one forward pass


@dataclass(frozen=True, kw_only=True)
class CostReport:
    macs: int
    params: int
    layers: tuple[LayerCost, ...]

    def layer(self, name: str) -> LayerCost:
        return next(layer for layer in self.layers if layer.name == name)


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def forward_with_hooks(model: nn.Module, example_input: torch.Tensor, hooks: list[RemovableHandle]) -> None:
    """One eval-mode forward of a single example for ``hooks`` to observe; then remove them."""
    was_training = model.training
    try:
        with torch.inference_mode():
            model.eval()(example_input[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def count_cost(model: nn.Module, example_input: torch.Tensor) -> CostReport:
    """Measure MACs (per sample) and params of ``model`` with one forward pass."""
    seen: dict[str, LayerCost] = {}

    def hook(name: str, module: nn.Module, out: torch.Tensor) -> None:
        if isinstance(module, CONV):
            positions = out[0, 0].numel()
            per_position = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
            macs = positions * module.out_channels * per_position
            channels = (module.in_channels, module.out_channels)
        else:
            positions = out[0].numel() // out.shape[-1]
            macs = positions * module.in_features * module.out_features
            channels = (module.in_features, module.out_features)
        calls = seen[name].calls + 1 if name in seen else 1  # a layer run twice costs twice
        seen[name] = LayerCost(
            name=name,
            kind=type(module).__name__,
            in_channels=channels[0],
            out_channels=channels[1],
            macs=macs * calls,
            params=_own_params(module),
            positions=positions,
            calls=calls,
        )

    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: hook(n, m, o))
        for n, m in model.named_modules()
        if isinstance(m, (*CONV, nn.Linear))
    ]
    forward_with_hooks(model, example_input, hooks)
    layers = tuple(seen.values())
    return CostReport(
        macs=sum(layer.macs for layer in layers),
        params=sum(p.numel() for p in model.parameters()),
        layers=layers,
    )


class CostModel:
    """Predicts MACs and params of the pruned model from per-group keep counts.

    Each conv/linear layer's cost is bilinear in its input and output widths, and each width is
    its original value minus the channels its groups remove; norm layers cost 2 params per kept
    channel. Everything else is constant.
    """

    def __init__(self, graph: PruneGraph, report: CostReport) -> None:
        self.report = report
        self.channels = {g.id: g.channels for g in graph.groups}
        # (module, dim) -> list of (group id, module channels per group channel)
        self._links: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for group in graph.groups:
            for member in group.members:
                self._links.setdefault((member.module, member.dim), []).append((group.id, member.per_channel))
        self._layers = [layer for layer in report.layers]
        self._groups_of = {layer.name: self._geometry(graph.model.get_submodule(layer.name)) for layer in self._layers}
        self._norms = {
            name: m.num_features for name, m in graph.model.named_modules() if isinstance(m, NORM) and m.affine
        }
        modelled = sum(layer.params for layer in self._layers) + sum(2 * n for n in self._norms.values())
        self._fixed_params = report.params - modelled

    @staticmethod
    def _geometry(module: nn.Module) -> tuple[int, int, bool, bool]:
        """(groups, kernel elements, has bias, is depthwise) of a conv/linear layer."""
        if isinstance(module, CONV):
            kernel = int(torch.tensor(module.kernel_size).prod())
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            return module.groups, kernel, module.bias is not None, depthwise
        return 1, 1, module.bias is not None, False

    def _removed(self, name: str, dim: str, keep: Mapping[str, int]) -> int:
        return sum(
            (self.channels[g] - keep.get(g, self.channels[g])) * per for g, per in self._links.get((name, dim), ())
        )

    def _width(self, name: str, dim: str, original: int, keep: Mapping[str, int], coupled: bool) -> int:
        removed = self._removed(name, dim, keep)
        if coupled:  # in and out are the same channels (depthwise conv, norm layer)
            removed = max(removed, self._removed(name, "in" if dim == "out" else "out", keep))
        return original - removed

    def widths(self, keep: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """(in, out) width of every conv/linear layer with ``keep[group]`` channels kept."""
        out = {}
        for layer in self._layers:
            depthwise = self._groups_of[layer.name][3]
            out[layer.name] = (
                self._width(layer.name, "in", layer.in_channels, keep, depthwise),
                self._width(layer.name, "out", layer.out_channels, keep, depthwise),
            )
        return out

    def cost(self, keep: Mapping[str, int]) -> tuple[int, int]:
        """(MACs, params) of the model with ``keep[group]`` channels kept in each group."""
        macs, params = self._polynomial(keep)
        return round(macs), round(params)

    def _polynomial(self, keep: Mapping[str, int]) -> tuple[float, float]:
        """The cost as the polynomial it is (group-conv widths divided exactly, not floored)."""
        macs = 0.0
        params = float(self._fixed_params)
        for layer in self._layers:
            groups, kernel, bias, depthwise = self._groups_of[layer.name]
            c_in = self._width(layer.name, "in", layer.in_channels, keep, depthwise)
            c_out = self._width(layer.name, "out", layer.out_channels, keep, depthwise)
            per_out = 1 if depthwise else c_in / groups
            macs += layer.calls * layer.positions * c_out * per_out * kernel
            params += c_out * per_out * kernel + (c_out if bias else 0)
        for name, features in self._norms.items():
            params += 2 * self._width(name, "out", features, keep, True)
        return macs, params

    def macs(self, keep: Mapping[str, int]) -> int:
        return self.cost(keep)[0]

    def params(self, keep: Mapping[str, int]) -> int:
        return self.cost(keep)[1]

    def quadratic(self, kind: str) -> QuadraticCost:
        """``macs`` or ``params`` as an explicit quadratic in the keep counts.

        The coefficients are identified from the exact cost at 0, e_g, 2·e_g and e_g + e_h (the
        cost is a polynomial of degree two), then checked at a random point.
        """
        index = {"macs": 0, "flops": 0, "params": 1}[kind]
        ids = sorted(self.channels)

        def f(keep: Mapping[str, int]) -> float:
            return self._polynomial({g: keep.get(g, 0) for g in ids})[index]

        constant = f({})
        single = {g: f({g: 1}) - constant for g in ids}
        double = {g: f({g: 2}) - constant for g in ids}
        square = {g: (double[g] - 2 * single[g]) / 2 for g in ids}
        linear = {g: single[g] - square[g] for g in ids}
        quadratic = {(g, g): square[g] for g in ids if square[g]}
        for i, g in enumerate(ids):
            for h in ids[i + 1 :]:
                cross = f({g: 1, h: 1}) - constant - single[g] - single[h]
                if cross:
                    quadratic[(g, h)] = cross
        form = QuadraticCost(constant=constant, linear=linear, quadratic=quadratic)
        probe = {g: (7 * i + 3) % self.channels[g] + 1 for i, g in enumerate(ids)}
        if abs(form(probe) - f(probe)) > 1e-6 * max(1.0, abs(f(probe))):
            raise ValueError("this model's cost is not quadratic in the keep counts")
        return form
