"""autoprune: structured channel pruning with automatic per-layer ratios."""
