"""What can be named in a job, importable without torch: criteria, allocators, and plug-ins.

The HTTP service validates names and builds its OpenAPI enums from here without importing
torch, so criteria are kept as ``"module:Class"`` targets and imported when first used;
allocators are torch-free already (``solvers``). A plug-in is a module that registers more of
either at import: it is named by the ``autoprune.plugins`` entry-point group of an installed
package, or by ``AUTOPRUNE_PLUGINS`` (comma-separated module names), and loaded once per
process before any name is looked up.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from autoprune.errors import UnknownNameError
from autoprune.registry import Registry, close_matches
from solvers import ALLOCATORS, Allocator, allocator_class, register

PLUGINS_ENV = "AUTOPRUNE_PLUGINS"
PLUGIN_GROUP = "autoprune.plugins"


@dataclass(frozen=True)
class CriterionEntry:
    """A registered criterion: its class, or where to import it from, and a line for help texts."""

    target: str | type
    summary: str

    def load(self) -> Any:
        if not isinstance(self.target, str):
            return self.target
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


CRITERIA: Registry[CriterionEntry] = Registry("criterion")


def register_criterion(name: str, target: str | type, summary: str) -> None:
    """Add a channel-importance criterion (a ``autoprune.importance.Criterion`` subclass)."""
    CRITERIA.register(name)(CriterionEntry(target, summary))


for _name, _target, _summary in (
    ("l1", "autoprune.importance.l1:L1", "L1 norm of each filter's weights"),
    ("taylor", "autoprune.importance.taylor:Taylor", "first-order Taylor estimate of the loss change"),
    ("bn_scale", "autoprune.importance.bn_scale:BNScale", "|gamma| of the BatchNorm after each channel"),
    ("chip", "autoprune.importance.chip:CHIP", "CHIP: nuclear-norm independence of feature maps"),
    ("attribution", "autoprune.importance.attribution:Attribution", "integrated-gradient attribution"),
    ("taylor_guided", "autoprune.importance.attribution:TaylorGuided", "Taylor guided by attribution"),
    ("kfac", "autoprune.importance.kfac:KFAC", "K-FAC/OBS loss increase (NAP), with OBS compensation"),
):
    register_criterion(_name, _target, _summary)

_loaded = False


def load_plugins() -> None:
    """Import every plug-in module once (entry points, then ``AUTOPRUNE_PLUGINS``)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for point in entry_points(group=PLUGIN_GROUP):
        point.load()
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(module)


def criterion_names() -> list[str]:
    load_plugins()
    return CRITERIA.names()


def criterion_class(name: str) -> Any:
    """The criterion class registered as ``name`` (UnknownNameError if none)."""
    load_plugins()
    return CRITERIA.get(name).load()


def allocator_names() -> list[str]:
    load_plugins()
    return sorted(ALLOCATORS)


def allocator(name: str) -> type[Allocator]:
    """The allocator class registered as ``name`` (UnknownNameError if none)."""
    load_plugins()
    try:
        return allocator_class(name)
    except KeyError:
        raise UnknownNameError(
            f"unknown allocator {name!r}; known: {', '.join(sorted(ALLOCATORS))}; "
            f"did you mean: {close_matches(name, sorted(ALLOCATORS))}"
        ) from None


def register_allocator(name: str, cls: type[Allocator]) -> type[Allocator]:
    """Add an allocation method (a ``solvers.Allocator`` subclass that describes itself)."""
    return register(name, cls)
