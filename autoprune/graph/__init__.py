"""Dependency groups of coupled channels (wraps torch-pruning's DepGraph)."""

from autoprune.graph.build import ChannelGroup, Member, PruneGraph, module_by_name
from autoprune.graph.probe import build_graph

__all__ = ["ChannelGroup", "Member", "PruneGraph", "build_graph", "module_by_name"]
