"""Channel importance criteria, by name."""

from autoprune.importance.attribution import Attribution, TaylorGuided
from autoprune.importance.base import Batches, Criterion, GroupScores
from autoprune.importance.bn_scale import BNScale
from autoprune.importance.chip import CHIP
from autoprune.importance.kfac import KFAC
from autoprune.importance.l1 import L1
from autoprune.importance.taylor import Taylor
from autoprune.registry import Registry

CRITERIA: Registry[type[Criterion]] = Registry("criterion")
CRITERIA.register("l1")(L1)
CRITERIA.register("taylor")(Taylor)
CRITERIA.register("bn_scale")(BNScale)
CRITERIA.register("chip")(CHIP)
CRITERIA.register("attribution")(Attribution)
CRITERIA.register("taylor_guided")(TaylorGuided)
CRITERIA.register("kfac")(KFAC)


def get_criterion(name: str | Criterion) -> Criterion:
    """A criterion instance from its registered name (or the instance itself)."""
    return name if isinstance(name, Criterion) else CRITERIA.get(name)()


__all__ = ["CRITERIA", "Batches", "Criterion", "GroupScores", "get_criterion"]
