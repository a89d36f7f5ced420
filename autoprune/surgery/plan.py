"""PruningPlan: which channels each group keeps. JSON, replayable on a fresh model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.errors import SurgeryError
from autoprune.graph import PruneGraph

PLAN_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class PruningPlan:
    """Kept root-channel indices (sorted) of each pruned group, with the group's original width."""

    keep: Mapping[str, tuple[int, ...]]
    channels: Mapping[str, int]
    ignore: tuple[str, ...] = ()  # layers never pruned (the head), as the graph was built
    skipped: tuple[str, ...] = ()  # groups torch-pruning could not cut, left whole

    def __post_init__(self) -> None:
        for group_id, kept in self.keep.items():
            n = self.channels.get(group_id)
            if n is None:
                raise SurgeryError(f"plan keeps channels of {group_id!r} but does not give its width")
            if not kept or list(kept) != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= n:
                raise SurgeryError(f"plan for {group_id!r} must keep a sorted, non-empty subset of range({n})")

    @classmethod
    def from_keep(
        cls,
        keep: Mapping[str, Sequence[int]],
        channels: Mapping[str, int],
        *,
        ignore: Sequence[str] = (),
        skipped: Sequence[str] = (),
    ) -> PruningPlan:
        return cls(
            keep={g: tuple(sorted(int(i) for i in idx)) for g, idx in keep.items()},
            channels={g: int(channels[g]) for g in keep},
            ignore=tuple(ignore),
            skipped=tuple(skipped),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "ignore": list(self.ignore),
            "skipped": list(self.skipped),
            "groups": {g: {"channels": self.channels[g], "keep": list(k)} for g, k in self.keep.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        if data.get("version") != PLAN_VERSION or not isinstance(data.get("groups"), dict):
            raise SurgeryError(f"not a version-{PLAN_VERSION} pruning plan")
        groups = data["groups"]
        try:
            return cls.from_keep(
                {g: v["keep"] for g, v in groups.items()},
                {g: v["channels"] for g, v in groups.items()},
                ignore=data.get("ignore", ()),
                skipped=data.get("skipped", ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SurgeryError(f"malformed pruning plan: {exc}") from exc

    def widths(self) -> dict[str, int]:
        return {g: len(k) for g, k in self.keep.items()}


def make_plan(graph: PruneGraph, scores: Mapping[str, np.ndarray], keep: Mapping[str, int]) -> PruningPlan:
    """Keep the best-scored channels of each group; group-conv blocks keep the same positions."""
    kept: dict[str, list[int]] = {}
    for g in graph.groups:
        n = keep.get(g.id, g.channels)
        if n >= g.channels:
            continue
        units = np.asarray(scores[g.id], dtype=np.float64).reshape(g.blocks, g.block_size).mean(0)
        best = np.sort(np.argsort(-units, kind="stable")[: n // g.blocks])
        kept[g.id] = [int(p) + b * g.block_size for b in range(g.blocks) for p in best]
    return PruningPlan.from_keep(
        kept, {g.id: g.channels for g in graph.groups}, ignore=graph.ignore, skipped=graph.skipped
    )
