"""Allocation methods: per-group keep counts under a budget. No torch imports here.

Allocators are plug-ins: each describes itself (``Allocator``'s class attributes) and is
registered by name, here for the built-in ones or by a plug-in module (``register``).
"""

from __future__ import annotations

from solvers.auto import Auto
from solvers.base import (
    Allocation,
    AllocationProblem,
    Allocator,
    AllocatorContext,
    GroupSpec,
    InfeasibleBudget,
    NoOptions,
    QuadraticCost,
)
from solvers.evolution import Evolution
from solvers.global_rank import GlobalRank
from solvers.knapsack import HALP
from solvers.nap import NAP
from solvers.qclp import ITPruner
from solvers.uniform import Uniform

ALLOCATORS: dict[str, type[Allocator]] = {}


def register(name: str, cls: type[Allocator]) -> type[Allocator]:
    """Add an allocator under ``name``; a name is registered once."""
    if name in ALLOCATORS:
        raise ValueError(f"allocator {name!r} is already registered")
    ALLOCATORS[name] = cls
    return cls


register("uniform", Uniform)
register("global", GlobalRank)
register("nap", NAP)
register("itpruner", ITPruner)
register("evolution", Evolution)
register("halp", HALP)
register("auto", Auto)  # the default for MACs/params budgets (autoprune.spec.resolve_method)


def allocator_class(name: str) -> type[Allocator]:
    """The allocator registered as ``name``; KeyError (with the known names) if unknown."""
    if name not in ALLOCATORS:
        raise KeyError(f"unknown allocator {name!r}; known: {', '.join(sorted(ALLOCATORS))}")
    return ALLOCATORS[name]


def get_allocator(name: str | Allocator) -> Allocator:
    """An allocator instance with default options from its name (or the instance itself)."""
    if isinstance(name, Allocator):
        return name
    return allocator_class(name)()


__all__ = [
    "ALLOCATORS",
    "Allocation",
    "AllocationProblem",
    "Allocator",
    "AllocatorContext",
    "GroupSpec",
    "InfeasibleBudget",
    "NoOptions",
    "QuadraticCost",
    "allocator_class",
    "get_allocator",
    "register",
]
