"""What a pruned model may cost: the budget and its kinds. Torch-free."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

from autoprune.errors import BudgetError

Runtime = Literal["torch", "onnxruntime"]
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime")
MAX_LATENCY_BATCH = 1024  # a latency is timed on a batch of zeros this large: bounded memory


@dataclass(frozen=True)
class BudgetKind:
    """How one kind of budget is read and met: the strategy behind ``Budget.kind``.

    ``relative`` kinds are fractions of the unpruned model's cost, in (0, 1); ``measured`` kinds
    are met by timing the pruned model rather than counting its operations; ``priced_as`` is the
    kind an allocator sees (a relative latency is turned into milliseconds of the unpruned
    model's timing before allocation).
    """

    name: str
    relative: bool
    measured: bool
    priced_as: str
    meaning: str
    counted: str = ""  # what a counted kind counts: "macs" or "params" (a CostReport's attribute)
    unit: str = "ms"


KINDS: dict[str, BudgetKind] = {
    kind.name: kind
    for kind in (
        BudgetKind(
            "flops", relative=True, measured=False, priced_as="flops", meaning="keep at most this fraction of MACs",
            counted="macs", unit="MACs",
        ),
        BudgetKind(
            "params", relative=True, measured=False, priced_as="params", meaning="at most this fraction of params",
            counted="params", unit="params",
        ),
        BudgetKind(
            "latency", relative=True, measured=True, priced_as="latency_ms",
            meaning="at most this fraction of the unpruned model's latency, timed by the job",
        ),
        BudgetKind("latency_ms", relative=False, measured=True, priced_as="latency_ms", meaning="an absolute latency in ms"),
    )
}  # fmt: skip
BUDGET_KINDS: tuple[str, ...] = tuple(KINDS)


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What the pruned model may cost.

    A latency budget is measured in the job's deployment target (``autoprune.spec.Target``):
    ``runtime`` and ``batch_size`` here, when given, are the older way to name that target.
    ``flops`` and ``params`` are fractions of the unpruned model (``flops=0.5`` keeps at most half
    of the MACs); ``latency_ms`` is an absolute target measured in ``runtime`` at ``batch_size``;
    ``latency`` is a fraction of the unpruned model's latency, timed by the job itself when it
    starts. The relative form is what to use on a shared or unfamiliar machine: a target timed
    elsewhere, or at another load, can ask for the impossible.
    """

    kind: str
    value: float
    runtime: Runtime | None = None  # a latency budget's; None: the job's deployment target's
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BudgetError(f"budget kind must be one of {', '.join(BUDGET_KINDS)}, not {self.kind!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or self.value != self.value:
            raise BudgetError(f"budget value must be a number, not {self.value!r}")
        if self.rule.relative and not 0.0 < self.value < 1.0:
            raise BudgetError(
                f"{self.kind} budget is a fraction of the original and must lie in (0, 1), not {self.value}"
            )
        if not self.rule.relative and not 0 < self.value < float("inf"):
            raise BudgetError(f"{self.kind} budget must be positive, not {self.value}")
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise BudgetError(f"runtime must be 'torch' or 'onnxruntime', not {self.runtime!r}")
        batch = self.batch_size
        if batch is not None and (
            isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_LATENCY_BATCH
        ):
            raise BudgetError(f"batch_size must be an integer from 1 to {MAX_LATENCY_BATCH}, not {batch!r}")

    @property
    def rule(self) -> BudgetKind:
        return KINDS[self.kind]

    @property
    def measured(self) -> bool:
        """A latency budget: met by timing the pruned model, not by counting its operations."""
        return self.rule.measured

    def in_ms(self, reference_ms: float) -> Budget:
        """This budget with a relative latency turned into milliseconds of ``reference_ms``, the
        unpruned model's latency; other kinds are returned as they are."""
        if not (self.measured and self.rule.relative):
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
            raise BudgetError(
                f"budget must look like flops=0.5, params=0.6, latency=0.7 or latency_ms=4.0, not {text!r}"
            )
        try:
            number = float(value)
        except ValueError:
            raise BudgetError(f"budget value {value!r} is not a number") from None
        return cls(kind=kind.strip(), value=number)

    @classmethod
    def from_dict(cls, data: Any) -> Budget:
        """Parse the API form ``{"flops": 0.5}`` or ``{"latency": 0.7 | "latency_ms": 4, "runtime": ..., "batch_size": 1}``."""
        if not isinstance(data, dict):
            raise BudgetError('budget must be a JSON object such as {"flops": 0.5}')
        kinds = [k for k in data if k in KINDS]
        extra = set(data) - set(KINDS) - {"runtime", "batch_size"}
        if len(kinds) != 1 or extra:
            raise BudgetError(f"budget needs exactly one of {', '.join(BUDGET_KINDS)}; got keys {sorted(data)}")
        value = data[kinds[0]]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BudgetError(f"budget value must be a number, not {value!r}")
        return cls(
            kind=kinds[0],
            value=float(value),
            runtime=data.get("runtime"),
            batch_size=data.get("batch_size"),
        )

    def evolve(self, **changes: Any) -> Budget:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: self.value}
        if self.measured:
            out.update({k: v for k, v in (("runtime", self.runtime), ("batch_size", self.batch_size)) if v is not None})
        return out

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"
