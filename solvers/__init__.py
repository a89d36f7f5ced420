"""Allocation methods: per-group keep counts under a budget. No torch imports here."""

from __future__ import annotations

from solvers.base import Allocation, AllocationProblem, Allocator, GroupSpec, InfeasibleBudget, QuadraticCost
from solvers.evolution import Evolution
from solvers.global_rank import GlobalRank
from solvers.knapsack import HALP
from solvers.nap import NAP
from solvers.qclp import ITPruner
from solvers.uniform import Uniform

ALLOCATORS: dict[str, type[Allocator]] = {}


def register(name: str, cls: type[Allocator]) -> None:
    if name in ALLOCATORS:
        raise ValueError(f"allocator {name!r} is already registered")
    ALLOCATORS[name] = cls


register("uniform", Uniform)
register("global", GlobalRank)
register("nap", NAP)
register("itpruner", ITPruner)
register("evolution", Evolution)
register("halp", HALP)


def get_allocator(name: str | Allocator) -> Allocator:
    """An allocator instance from its name; KeyError (with the known names) if unknown."""
    if isinstance(name, Allocator):
        return name
    if name not in ALLOCATORS:
        raise KeyError(f"unknown allocator {name!r}; known: {', '.join(sorted(ALLOCATORS))}")
    return ALLOCATORS[name]()


__all__ = [
    "ALLOCATORS",
    "Allocation",
    "AllocationProblem",
    "Allocator",
    "GroupSpec",
    "InfeasibleBudget",
    "QuadraticCost",
    "get_allocator",
]
