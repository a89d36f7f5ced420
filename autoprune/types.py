"""Frozen value objects handed between pipeline stages."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from autoprune.errors import BudgetError

BudgetKind = Literal["flops", "params", "latency", "latency_ms"]
Runtime = Literal["torch", "onnxruntime"]
BUDGET_KINDS: tuple[str, ...] = ("flops", "params", "latency", "latency_ms")
FRACTION_KINDS: tuple[str, ...] = ("flops", "params", "latency")


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What the pruned model may cost.

    ``flops`` and ``params`` are fractions of the unpruned model (``flops=0.5`` keeps at most half
    of the MACs); ``latency_ms`` is an absolute target measured in ``runtime`` at ``batch_size``;
    ``latency`` is a fraction of the unpruned model's latency, timed by the job itself when it
    starts. The relative form is what to use on a shared or unfamiliar machine: a target timed
    elsewhere, or at another load, can be off by a quarter and ask for the impossible.
    """

    kind: BudgetKind
    value: float
    runtime: Runtime = "torch"
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise BudgetError(f"budget kind must be one of {', '.join(BUDGET_KINDS)}, not {self.kind!r}")
        if not isinstance(self.value, (int, float)) or self.value != self.value:
            raise BudgetError(f"budget value must be a number, not {self.value!r}")
        if self.kind in FRACTION_KINDS and not 0.0 < self.value < 1.0:
            raise BudgetError(f"{self.kind} budget is a fraction of the original and must lie in (0, 1), not {self.value}")
        if self.kind == "latency_ms" and not self.value > 0:
            raise BudgetError(f"latency_ms budget must be positive, not {self.value}")
        if self.runtime not in ("torch", "onnxruntime"):
            raise BudgetError(f"runtime must be 'torch' or 'onnxruntime', not {self.runtime!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise BudgetError(f"batch_size must be a positive integer, not {self.batch_size!r}")

    @property
    def measured(self) -> bool:
        """A latency budget: met by timing the pruned model, not by counting its operations."""
        return self.kind in ("latency", "latency_ms")

    def in_ms(self, reference_ms: float) -> Budget:
        """This budget with a relative latency turned into milliseconds of ``reference_ms``, the
        unpruned model's latency; other kinds are returned as they are."""
        if self.kind != "latency":
            return self
        return self.evolve(kind="latency_ms", value=self.value * reference_ms)

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse the CLI form ``flops=0.5`` (also ``params=0.6``, ``latency=0.7``, ``latency_ms=4``) or a JSON object."""
        text = text.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BudgetError(f"budget is not valid JSON: {exc}") from exc
            return cls.from_dict(data)
        kind, sep, value = text.partition("=")
        if not sep:
            raise BudgetError(f"budget must look like flops=0.5, params=0.6, latency=0.7 or latency_ms=4.0, not {text!r}")
        try:
            number = float(value)
        except ValueError:
            raise BudgetError(f"budget value {value!r} is not a number") from None
        return cls(kind=kind.strip(), value=number)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Any) -> Budget:
        """Parse the API form ``{"flops": 0.5}`` or ``{"latency": 0.7 | "latency_ms": 4, "runtime": ..., "batch_size": 1}``."""
        if not isinstance(data, dict):
            raise BudgetError("budget must be a JSON object such as {\"flops\": 0.5}")
        kinds = [k for k in data if k in BUDGET_KINDS]
        extra = set(data) - set(BUDGET_KINDS) - {"runtime", "batch_size"}
        if len(kinds) != 1 or extra:
            raise BudgetError(f"budget needs exactly one of {', '.join(BUDGET_KINDS)}; got keys {sorted(data)}")
        value = data[kinds[0]]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BudgetError(f"budget value must be a number, not {value!r}")
        return cls(
            kind=kinds[0],  # type: ignore[arg-type]
            value=float(value),
            runtime=data.get("runtime", "torch"),
            batch_size=data.get("batch_size", 1),
        )

    def evolve(self, **changes: Any) -> Budget:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: self.value}
        if self.measured:
            out.update(runtime=self.runtime, batch_size=self.batch_size)
        return out

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """How a pruned model is trained back; distillation from the unpruned model by default."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: Literal["sgd", "adamw"] = "sgd"
    distill: bool = True
    distill_weight: float = 0.7
    temperature: float = 4.0
    label_smoothing: float = 0.0
    augment: bool = True
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 0,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "distill_weight": 0 <= self.distill_weight <= 1,
            "temperature": self.temperature > 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"finetune {name}={getattr(self, name)!r} is out of range")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"finetune optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")

    def evolve(self, **changes: Any) -> FinetuneConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# "auto" picks by the budget's kind what bench/results supports (2026-12-02): for MACs/params,
# `global` Taylor ranking (RMS-normalised per layer), which beat uniform-L1 in every cell run with
# the current code (2x/3x: ResNet-20 +0.7/+1.3 points over two seeds, MobileNetV2 +5.0/+8.0,
# VGG-16-BN +1.6/+2.7) and is the fastest method that sets per-layer widths from data (evolution
# scored higher on ResNet-20 but searches for minutes); for latency, HALP, the one method that
# prunes toward a measured latency.
DEFAULT_METHOD = "auto"


def resolve_method(method: str, budget: Budget) -> str:
    """``method``, or for ``auto`` the allocator the benchmark supports for this kind of budget."""
    if method != DEFAULT_METHOD:
        return method
    return "halp" if budget.measured else "global"


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Everything one pruning run needs; the CLI, the worker and the benchmarks all build one."""

    arch: str
    data: str
    budget: Budget
    out_dir: str
    weights: str | None = None
    method: str = DEFAULT_METHOD
    criterion: str | None = None
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    schedule: Literal["oneshot", "iterative"] = "oneshot"
    iterative_steps: int = 3
    calibration_batches: int = 8
    obs_compensation: bool = True  # with the kfac criterion: NAP's OBS update of the kept weights
    search_trials: int | None = None  # evolution: candidates its search evaluates (None: the allocator's 60)
    channel_step: int = 1  # kept widths in multiples of this (8 suits onnxruntime/cuDNN kernels); full widths stay
    seed: int = 0
    # where scoring, the search, fine-tuning and evaluation run: auto (a CUDA GPU if present), cpu, cuda[:N];
    # tracing, surgery, cost counting, latency and export always run on the CPU
    device: str = "auto"
    latency_repeats: int = 30
    export_onnx: bool = True
    export_pt2: bool = True
    # an SQLAlchemy URL where evolution keeps its Optuna study: a re-run of the spec continues it
    search_storage: str | None = None
    # scopes that study to one job (the service passes the job id): identical specs of two jobs
    # then search apart, while a job's attempts and search helpers share its study
    search_key: str | None = None
    # how the report names the data when ``data`` is a path the user should not see (a server's)
    data_label: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", resolve_method(self.method, self.budget))  # reports name the real one

    def evolve(self, **changes: Any) -> JobSpec:
        return replace(self, **changes)
