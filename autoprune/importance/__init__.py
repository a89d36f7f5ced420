"""Channel importance criteria, by name (registered in ``autoprune.catalog``)."""

from autoprune.catalog import criterion_class
from autoprune.importance.base import Batches, Criterion, GroupScores


def get_criterion(name: str | Criterion) -> Criterion:
    """A criterion instance from its registered name (or the instance itself)."""
    return name if isinstance(name, Criterion) else criterion_class(name)()


__all__ = ["Batches", "Criterion", "GroupScores", "get_criterion"]
