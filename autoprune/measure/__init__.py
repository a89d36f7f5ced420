"""Cost of a model: MACs and params (measured and predicted), latency."""

from autoprune.measure.cost import CostModel, CostReport, LayerCost, count_cost

__all__ = ["CostModel", "CostReport", "LayerCost", "count_cost"]
