"""The job report: one typed record, written as report.json and served as a job's ``result``.

Torch-free, so the HTTP service can publish its JSON schema. ``Report.to_dict()`` is what
report.json holds; ``Report.model_validate(json)`` reads one back.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MACS_NOTE = "MACs count conv+linear multiply-accumulates per sample; FLOPs = 2 x MACs."


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class LatencyReport(_Record):
    """Median latency (ms) of the unpruned (``before``) and pruned model in each runtime, timed in
    pairs: both in one process, alternating rounds (``paired``: per runtime, the median and
    quartiles of the per-round ratios after/before, which a busy machine moves far less than
    either time)."""

    batch_size: int
    threads: int
    before: dict[str, float]
    after: dict[str, float]
    paired: dict[str, dict[str, float]] = Field(default_factory=dict)
    target: dict[str, Any] = Field(default_factory=dict, description="where the model is deployed")
    budget_reference_ms: float | None = Field(
        None, description="a latency budget's unpruned latency, measured when the job started (what it pruned from)"
    )
    budget_target_ms: float | None = Field(None, description="a latency budget's target, in ms")


class LayerRow(_Record):
    """One conv/linear layer's widths and MACs before and after pruning."""

    name: str
    kind: str
    channels_before: int
    channels_after: int
    in_channels_before: int
    in_channels_after: int
    macs_before: int
    macs_after: int


class BoundGroup(_Record):
    """A group the last cut left at the fewest channels it may keep, and the limit that set that floor."""

    group: str
    channels: int
    of: int = Field(description="its width before the cut")
    limit: str = Field(description="e.g. '--keep fc', '--max-layer-prune 0.5'; 'default': the 10% floor")


class LayerLimitsReport(_Record):
    """The per-group limits the job set (``--max-layer-prune``, ``--keep``, ``layer_limits``) and which bound."""

    max_layer_prune: float | None
    keep: list[str]
    layer_limits: dict[str, float]
    bound: list[BoundGroup] = Field(description="groups at their floor after the last cut")


class CandidateRow(_Record):
    """One allocation ``auto`` considered: its adaptive-BN accuracy on held-out training data, its
    cost over the budget, the seconds it took to allocate and score, or why it failed."""

    method: str
    score: float | None = None
    cost_over_budget: float | None = None
    seconds: float
    chosen: bool = False
    error: str | None = None


class FinetuneReport(_Record):
    config: dict[str, Any]
    history: list[dict[str, Any]]


class Report(_Record):
    """Before/after cost and accuracy of one pruning job, and how it got there."""

    arch: str
    data: str
    method: str
    criterion: str
    budget: dict[str, Any]
    schedule: str
    seed: int
    macs_before: int
    macs_after: int
    flops_before: int
    flops_after: int
    flops_ratio: float
    params_before: int
    params_after: int
    params_ratio: float
    latency_ms_before: float
    latency_ms_after: float
    latency: LatencyReport
    accuracy_before: float
    accuracy_pruned: float = Field(
        description="right after the (first) cut, BN statistics re-estimated, not fine-tuned"
    )
    bn_reestimation_batches: int = Field(description="after each cut and after fine-tuning")
    accuracy_after: float
    loss_before: float
    loss_after: float
    faster: bool = Field(description="the pruned model is faster than the unpruned one in the target (paired timing)")
    warnings: list[str] = Field(default_factory=list, description="what the user should know, e.g. not faster")
    onnx_max_abs_diff: float | None
    layers: list[LayerRow]
    allocation: list[dict[str, Any]] = Field(description="per cut: the allocator's diagnostics")
    limits: LayerLimitsReport | None = Field(None, description="the per-group limits, if the job set any")
    candidates: list[CandidateRow] = Field(
        default_factory=list, description="auto: the allocations it chose among (the last cut's), best score chosen"
    )
    finetune: FinetuneReport
    timings: dict[str, float] = Field(description="wall seconds per stage")
    device: str
    resumed: dict[str, int] | None
    versions: dict[str, str]
    input: dict[str, Any] | None = Field(
        None, description="the input the model was fed: size, resize/crop, interpolation, normalisation, source"
    )
    notes: str = MACS_NOTE
