"""Model intake: build an architecture by name and load trained weights into it safely."""

from __future__ import annotations

from autoprune.models.registry import create_model, list_archs
from autoprune.models.weights import WeightLimits, load_weights, read_state_dict

__all__ = ["WeightLimits", "create_model", "list_archs", "load_weights", "read_state_dict"]
