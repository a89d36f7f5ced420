"""Cost of a model: MACs and params (measured and predicted), latency."""

from autoprune.measure.cost import CostModel, CostReport, LayerCost, count_cost

__all__ = ["CostModel", "CostReport", "LayerCost", "count_cost"]
from autoprune.measure.latency import onnx_latency_ms, onnx_session, torch_latency_ms

__all__ += ["onnx_latency_ms", "onnx_session", "torch_latency_ms"]
