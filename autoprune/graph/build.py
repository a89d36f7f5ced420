"""Groups of coupled channels, from torch-pruning's DepGraph.

torch-pruning (pinned) traces the model and knows how residual adds, concatenations, depthwise
and group convolutions, BN and linear heads couple channels. This module is the only place that
talks to it: the rest of autoprune sees :class:`ChannelGroup` value objects and a
:class:`PruneGraph` that can remove channels from a group.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UnsupportedLayerError

log = logging.getLogger(__name__)

PRUNABLE_ROOTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True, kw_only=True)
class Member:
    """One module touched when a group's channels are removed.

    ``dim`` is ``"out"`` or ``"in"``; ``per_channel`` is how many of the module's channels along
    that dim go with one channel of the group (1, or H·W for a linear layer after a flatten).
    """

    module: str
    dim: str
    per_channel: int


@dataclass(frozen=True, kw_only=True)
class ChannelGroup:
    """Channels that must be kept or removed together, named after the layer that produces them.

    ``blocks`` > 1 means a group convolution consumes these channels: the same positions must be
    removed in each of the ``blocks`` equal slices, so keep counts are multiples of ``blocks``.
    """

    id: str
    channels: int
    blocks: int
    members: tuple[Member, ...]

    @property
    def block_size(self) -> int:
        return self.channels // self.blocks

    def removed_indices(self, keep: Sequence[int]) -> list[int]:
        kept = set(keep)
        return [i for i in range(self.channels) if i not in kept]


def module_by_name(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise UnsupportedLayerError(f"model has no layer named {name!r}") from exc


def find_output_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the conv/linear layers whose output width is the model's output width.

    The last such layer to run is the classifier head; its outputs must never be pruned.
    """
    order: list[tuple[str, int]] = []
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: order.append((name, o.shape[1])))
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_ROOTS)
    ]
    try:
        with torch.no_grad():
            out = model(example_input)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise UnsupportedLayerError("the model must return one tensor (logits)")
    width = out.shape[1]
    heads = [name for name, channels in order if channels == width]
    return heads[-1:] if heads else []


class PruneGraph:
    """A model, its dependency graph and its prunable channel groups."""

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        *,
        ignore: Sequence[str] = (),
        skipped: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.example_input = example_input
        self.ignore = tuple(ignore)
        self.skipped = tuple(skipped)
        ignored_modules = [module_by_name(model, n) for n in (*self.ignore, *self.skipped)]
        was_training = model.training
        model.eval()
        try:
            self.dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, ignored_layers=[], verbose=False
            )
        except Exception as exc:  # torch-pruning raises bare Exceptions/AssertionErrors on odd graphs
            raise UnsupportedLayerError(f"could not trace the model's dependency graph: {exc}") from exc
        finally:
            model.train(was_training)
        self._names = {m: n for n, m in model.named_modules()}
        self.groups: list[ChannelGroup] = []
        for tp_group in self.dg.get_all_groups(ignored_layers=ignored_modules, root_module_types=PRUNABLE_ROOTS):
            group = self._describe(tp_group)
            if group is not None:
                self.groups.append(group)
        self._by_id = {g.id: g for g in self.groups}

    def group(self, group_id: str) -> ChannelGroup:
        return self._by_id[group_id]

    def _describe(self, tp_group: tp.Group) -> ChannelGroup | None:
        root = tp_group[0].dep.target.module
        root_name = self._names[root]
        channels = len(tp_group[0].idxs)
        members: dict[tuple[str, str], int] = {}
        blocks = 1
        for item in tp_group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module not in self._names:
                continue
            name = self._names[module]
            dim = "out" if self.dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
            per_channel = max(1, round(len(item.idxs) / channels))
            members[(name, dim)] = per_channel
            if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d) and module.groups > 1:
                depthwise = module.groups == module.in_channels == module.out_channels
                if not depthwise:
                    blocks = math.lcm(blocks, module.groups)
        if channels % blocks:
            log.warning("skipping %s: %d channels do not split into %d groups", root_name, channels, blocks)
            return None
        if channels <= blocks:
            return None
        return ChannelGroup(
            id=root_name,
            channels=channels,
            blocks=blocks,
            members=tuple(Member(module=n, dim=d, per_channel=p) for (n, d), p in members.items()),
        )

    def channel_map(self, group_id: str) -> list[tuple[nn.Module, str, list[int], list[int]]]:
        """For each member module: (module, dim, its indices, the group channel each index belongs to)."""
        root = module_by_name(self.model, group_id)
        pruner = self.dg.get_pruner_of_module(root)
        tp_group = self.dg.get_pruning_group(
            root, pruner.prune_out_channels, list(range(self._by_id[group_id].channels))
        )
        out = []
        for item in tp_group:
            module = item.dep.target.module
            if isinstance(module, nn.Module) and module in self._names:
                dim = "out" if self.dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
                out.append((module, dim, list(item.idxs), list(item.root_idxs)))
        return out

    def prune(self, group_id: str, keep: Sequence[int]) -> None:
        """Remove every channel of the group not in ``keep`` (root channel indices), in place."""
        group = self._by_id[group_id]
        removed = group.removed_indices(keep)
        if not removed:
            return
        if len(removed) >= group.channels:
            raise UnsupportedLayerError(f"group {group_id} would lose all its channels")
        root = module_by_name(self.model, group_id)
        pruner = self.dg.get_pruner_of_module(root)
        tp_group = self.dg.get_pruning_group(root, pruner.prune_out_channels, removed)
        tp_group.prune(record_history=False)
