"""Plan → apply → a smaller model; replay of plans on a fresh instance."""

from autoprune.surgery.apply import apply_plan, check_forward
from autoprune.surgery.plan import PruningPlan

__all__ = ["PruningPlan", "apply_plan", "check_forward"]
