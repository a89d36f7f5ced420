"""Plan → apply → a smaller model; replay of plans on a fresh instance."""

from autoprune.surgery.apply import apply_plan, check_forward
from autoprune.surgery.plan import PruningPlan, make_plan

__all__ = ["PruningPlan", "apply_plan", "check_forward", "make_plan"]
