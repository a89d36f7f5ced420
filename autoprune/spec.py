"""A pruning job's options, defined and validated once. Torch-free (pydantic).

``JobOptions`` is what a user chooses; ``JobSpec`` adds where the inputs are and where the
outputs go. The command line (``autoprune prune``, ``autoprune submit``) and the HTTP form of
``POST /jobs`` with its OpenAPI schema are generated from these fields (``autoprune.spec_cli``,
``api.form``), so an option is added here, once. A field's ``json_schema_extra`` may name its
flag (``cli``) when it is not ``--`` plus the field's name, or keep it off the HTTP form
(``http: False``: an operator setting the service decides, such as the device). An allocator's
own options (``solvers.Allocator.Options``) travel in ``options`` and get flags and form fields
of their own names.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)

from autoprune import catalog
from autoprune.budget import BUDGET_KINDS, KINDS, MAX_LATENCY_BATCH, Budget
from autoprune.errors import AutopruneError, BudgetError

DEFAULT_METHOD = "auto"
ONNX_PREFIX = "onnx:"  # arch "onnx:PATH": the model is the ONNX graph at PATH, converted to torch
Export = Literal["onnx", "pt2"]
EXPORTS: tuple[Export, ...] = ("onnx", "pt2")  # formats a job writes besides model.safetensors + spec.json


class SpecError(AutopruneError):
    """The job description is malformed."""

    code = "invalid_spec"


def _budget(value: Any) -> Budget:
    if isinstance(value, Budget):
        return value
    return Budget.parse(value) if isinstance(value, str) else Budget.from_dict(value)


BUDGET_SCHEMA = {
    "type": "object",
    "description": "exactly one of "
    + ", ".join(f"{k} ({v.meaning})" for k, v in KINDS.items())
    + '; latency budgets may add "runtime" (torch | onnxruntime) and "batch_size"',
    "example": {"flops": 0.5},
}
BudgetField = Annotated[
    InstanceOf[Budget],
    BeforeValidator(_budget),
    PlainSerializer(lambda budget: budget.to_dict(), return_type=dict),
    WithJsonSchema(BUDGET_SCHEMA),
]


class _Frozen(BaseModel):
    """Strict, frozen, no unknown keys, finite floats; a bad value is a SpecError naming it."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SpecError(describe(exc, type(self))) from None

    def evolve(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated like a new one: the fields given when this one was
        made, and ``changes`` (a default left out stays a default, e.g. ``auto`` resolves anew)."""
        return type(self)(**{**{k: getattr(self, k) for k in self.model_fields_set}, **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class FinetuneConfig(_Frozen):
    """How a pruned model is trained back. The defaults (plain SGD with Nesterov momentum, no
    distillation) follow a measured comparison: docs/methods.md#fine-tuning."""

    model_config = ConfigDict(title="finetune")  # names its fields in errors: finetune.epochs

    epochs: int = Field(
        5, ge=0, le=1000, description="epochs of fine-tuning", json_schema_extra={"cli": "--finetune-epochs"}
    )
    batch_size: int = Field(128, ge=1, le=4096, description="training batch size")
    lr: float = Field(0.05, gt=0, le=10, description="peak learning rate of the cosine schedule")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(True, description="Nesterov momentum (sgd)")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="weight decay")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (with momentum) or adamw")
    distill: bool = Field(False, description="distil from the unpruned model (default: train on labels only)")
    distill_weight: float = Field(0.7, ge=0, le=1, description="weight of the distillation loss")
    temperature: float = Field(4.0, gt=0, le=100, description="distillation temperature")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy loss")
    augment: bool = Field(True, description="random crop/flip during fine-tuning")
    max_steps_per_epoch: int | None = Field(
        None, ge=1, le=1_000_000, description="cap the batches per epoch (quick runs)"
    )


class Target(_Frozen):
    """Where the pruned model will run: the report times it there against the unpruned model, a
    latency budget is measured there, and "faster" means faster there."""

    model_config = ConfigDict(title="target")

    runtime: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime", description="the runtime it is deployed in", json_schema_extra={"cli": "--runtime"}
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="cpu, or cuda (torch runtime only)", json_schema_extra={"cli": "--target-device"}
    )
    batch_size: int = Field(
        1, ge=1, le=MAX_LATENCY_BATCH, description="batch size it serves",
        json_schema_extra={"cli": "--latency-batch"},
    )  # fmt: skip
    threads: int | None = Field(None, ge=1, le=256, description="threads it runs with (default: the job's own)")

    @model_validator(mode="after")
    def _runtime_on_device(self) -> Self:
        if self.device == "cuda" and self.runtime != "torch":
            raise SpecError("a cuda target is timed in torch: set runtime torch")
        return self


DEFAULT_TARGET = Target()

IMAGE_SIDE_MAX = 4096  # an input side, in pixels (the data caps images at 4096x4096 too)


def _side_pair(value: Any) -> Any:
    """``96``, ``"96"``, ``"96x80"`` or ``[96, 80]`` → ``(96, 80)`` (height, width)."""
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
            raise SpecError(f"input.size must be N or HxW (e.g. 224 or 224x160), not {value!r}")
        value = [int(p) for p in parts] * (3 - len(parts))  # N is NxN
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return tuple(value) if isinstance(value, list | tuple) else value


def _floats(value: Any) -> Any:
    """``"0.5,0.4,0.3"`` or ``[0.5, 0.4, 0.3]`` → a tuple of floats, one per input channel."""
    if isinstance(value, str):
        try:
            return tuple(float(p) for p in value.split(","))
        except ValueError:
            raise SpecError(f"expected comma-separated numbers, one per channel, not {value!r}") from None
    if isinstance(value, list | tuple):
        return tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
    return value


Side = Annotated[int, Field(ge=1, le=IMAGE_SIDE_MAX)]


class InputSpec(_Frozen):
    """What the model is fed: image size, resize and crop, interpolation, normalisation. Each field
    left out comes from the model's origin (``autoprune.models.preprocess``): CIFAR architectures
    the data's own size (32 px for folders) and the dataset's statistics; torchvision models their
    weights' preprocessing; timm models their ``pretrained_cfg``; ONNX graphs their input's H×W."""

    model_config = ConfigDict(title="input")

    size: Annotated[tuple[Side, Side] | None, BeforeValidator(_side_pair)] = Field(
        None, description="input size N or HxW (default: the model's)", json_schema_extra={"cli": "--input-size"}
    )
    resize: Side | None = Field(
        None, description="shorter image side before the centre crop to the input size (default: the model's)"
    )
    crop: Literal["center", "none"] | None = Field(
        None, description="center: resize the shorter side, crop the centre; none: resize whole images to the size"
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = Field(
        None, description="resampling of resized images (default: the model's)"
    )
    normalize: Literal["dataset", "imagenet", "none"] | None = Field(
        None, description="normalise by the dataset's own mean/std, ImageNet's, or not at all (default: the model's)"
    )
    mean: Annotated[tuple[float, ...] | None, BeforeValidator(_floats)] = Field(
        None, description="per-channel mean on the 0-1 scale, e.g. 0.485,0.456,0.406 (with --std)"
    )
    std: Annotated[tuple[float, ...] | None, BeforeValidator(_floats)] = Field(
        None, description="per-channel std on the 0-1 scale, e.g. 0.229,0.224,0.225 (with --mean)"
    )

    @model_validator(mode="after")
    def _statistics(self) -> Self:
        if (self.mean is None) != (self.std is None):
            raise SpecError("input.mean and input.std are given together (one value per input channel)")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or not 1 <= len(self.mean) <= 4:
                raise SpecError(
                    f"input.mean has {len(self.mean)} values and input.std {len(self.std)}: give one per input "
                    "channel (3 for RGB)"
                )
            if min(self.std) <= 0:
                raise SpecError(f"input.std must be positive, not {list(self.std)}")
            if self.normalize is not None:
                raise SpecError("give input.normalize or input.mean/std, not both")
        return self


def method_help() -> str:
    names = " | ".join(n for n in catalog.allocator_names() if n != DEFAULT_METHOD)
    return (
        f"allocator: {names}, or {DEFAULT_METHOD} (the default: for flops/params budgets the best of global, "
        "uniform, nap, itpruner and a short evolution by adaptive-BN accuracy; halp for latency budgets)"
    )


def criterion_help() -> str:
    defaults = ", ".join(f"{n} {catalog.allocator(n).default_criterion}" for n in catalog.allocator_names())
    return f"channel importance: {' | '.join(catalog.criterion_names())} (default per method: {defaults})"


class JobOptions(_Frozen):
    """What a user chooses for one pruning run."""

    arch: str = Field(
        min_length=1,
        description="architecture name: resnet20/32/56/110, cifar_vgg16_bn, any torchvision model, timm:NAME",
    )
    budget: BudgetField = Field(
        description="flops=0.5 (keep at most 50% of MACs) | params=0.6 | latency=0.7 (of the unpruned model's "
        "latency, timed by the job) | latency_ms=4.0 (absolute); latency in --runtime at --latency-batch"
    )
    method: str = Field(DEFAULT_METHOD, description="allocator (see the method list)")
    criterion: str | None = Field(None, description="channel importance (default: the method's own)")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="fine-tuning options")
    target: Target = Field(default_factory=Target, description="where the pruned model will run")
    input: InputSpec = Field(
        default_factory=InputSpec, description="input size and normalisation (default: the model's)"
    )
    ensure_faster: bool = Field(
        True,
        description="if the pruned model is not faster than the unpruned one in the target, re-solve with "
        "wider channel steps (measured), and say so in the report if it still is not",
    )
    schedule: Literal["oneshot", "iterative"] = Field(
        "oneshot", description="prune once, or in steps with fine-tuning between them"
    )
    iterative_steps: int = Field(
        3, ge=1, le=20, description="steps of the iterative schedule", json_schema_extra={"cli": "--steps"}
    )
    calibration_batches: int = Field(
        8, ge=1, le=1000, json_schema_extra={"http": False},
        description="batches of 64 that data-driven criteria score on and BatchNorm statistics are re-estimated on",
    )  # fmt: skip
    obs_compensation: bool = Field(True, description="with the kfac criterion, NAP's OBS update of the kept weights")
    options: dict[str, Any] = Field(default_factory=dict, description="the method's own options")
    channel_step: int = Field(
        1, ge=1, le=64, description="keep widths in multiples of this, e.g. 8 for onnxruntime (full widths stay)"
    )
    max_layer_prune: float | None = Field(
        None, gt=0, le=1,
        description="the largest fraction of its channels any layer group may lose, e.g. 0.7 (each keeps at "
        "least 30%); default: each keeps at least 10% (and one channel)",
    )  # fmt: skip
    keep: tuple[str, ...] = Field(
        (), strict=False, json_schema_extra={"cli": "--keep"},
        description="glob pattern of layer groups left whole (e.g. 'layer1.*', 'fc'), matched against each group's "
        "name and the layers producing its channels; repeatable",
    )  # fmt: skip
    layer_limits: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, json_schema_extra={"cli": "--layer-limit"},
        description="per-group max_layer_prune: {\"PATTERN\": F} for the groups a glob pattern matches (flag: "
        "PATTERN=F, repeatable); the smallest F that matches a group applies, 0 leaves it whole",
    )  # fmt: skip
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random seed")
    device: str = Field(
        "auto", json_schema_extra={"http": False},
        description="where scoring, search and fine-tuning run: auto, cpu, cuda[:N]",
    )  # fmt: skip
    latency_repeats: int = Field(
        30, ge=1, le=10_000, description="timed runs per latency measurement", json_schema_extra={"http": False}
    )
    exports: tuple[Export, ...] = Field(
        EXPORTS,
        strict=False,
        description="formats besides safetensors: onnx (checked with onnxruntime), pt2 (torch.export)",
    )

    @model_validator(mode="after")
    def _names_and_method(self) -> Self:
        method = resolve_method(self.method, self.budget)
        allocator = catalog.allocator(method)
        kind = self.budget.rule.priced_as
        if kind not in allocator.budgets:
            accepting = [n for n in catalog.allocator_names() if kind in catalog.allocator(n).budgets]
            raise BudgetError(
                f"method {method!r} does not take {self.budget.kind} budgets; methods that do: {', '.join(accepting)}"
            )
        if self.criterion is not None:
            catalog.CRITERIA.get(self.criterion)
        object.__setattr__(self, "method", method)  # reports name the real one
        object.__setattr__(self, "options", method_options(method, self.options))
        if self.budget.measured:  # a latency budget is measured in the target
            if "target" in self.model_fields_set:
                budget = self.budget.evolve(runtime=self.target.runtime, batch_size=self.target.batch_size)
                object.__setattr__(self, "budget", budget)
            else:  # the budget's own runtime and batch (the older form) name the target
                target = Target(
                    runtime=self.budget.runtime or DEFAULT_TARGET.runtime,
                    batch_size=self.budget.batch_size or DEFAULT_TARGET.batch_size,
                )
                object.__setattr__(self, "target", target)
                budget = self.budget.evolve(runtime=target.runtime, batch_size=target.batch_size)
                object.__setattr__(self, "budget", budget)
        return self

    @property
    def criterion_name(self) -> str:
        """The criterion the job ranks channels with: the given one, else the method's own."""
        return self.criterion or catalog.allocator(self.method).default_criterion


class JobSpec(JobOptions):
    """Everything one pruning run needs: the options, where the inputs are, where outputs go."""

    data: str = Field(description="digits | npz:DIR | folder:DIR | an archive (.zip/.tar/.tar.gz) of either")
    weights: str | None = Field(None, description="trained weights: .safetensors or a weights-only .pt/.pth state dict")
    out_dir: str = Field(description="output directory", json_schema_extra={"cli": "--out"})

    @classmethod
    def of(cls, options: JobOptions, **where: Any) -> JobSpec:
        return cls(**dict(options), **where)


def resolve_method(method: str, budget: Budget) -> str:
    """``method``; ``auto`` stays the ``auto`` allocator (a choice among candidates, scored by
    adaptive-BN accuracy: ``solvers.auto``) for MACs/params, and is HALP for latency budgets."""
    if method != DEFAULT_METHOD:
        return method
    return "halp" if budget.measured else DEFAULT_METHOD


def option_fields() -> dict[str, tuple[str, dataclasses.Field[Any]]]:
    """Every registered allocator's own options: option name → (allocator, dataclass field)."""
    out: dict[str, tuple[str, dataclasses.Field[Any]]] = {}
    for name in catalog.allocator_names():
        options = catalog.allocator(name).Options
        for f in dataclasses.fields(options):
            if f.name in out or f.name in JobSpec.model_fields:
                raise ValueError(f"option {f.name!r} of allocator {name!r} is already taken")
            out[f.name] = (name, f)
    return out


def option_type(options: type, name: str) -> Any:
    """The resolved type of an ``Options`` dataclass field (annotations may be strings)."""
    return typing.get_type_hints(options)[name]


def _options_model(method: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    options = catalog.allocator(method).Options
    for f in dataclasses.fields(options):
        bounds = {k: f.metadata[m] for k, m in (("ge", "min"), ("le", "max")) if m in f.metadata}
        fields[f.name] = (option_type(options, f.name), Field(f.default, **bounds))
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return create_model(f"{method}_options", __config__=config, **fields)


def method_options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against the method's ``Options``; only the options set are kept."""
    if not given:
        return {}
    allocator = catalog.allocator(method)
    own = {f.name for f in dataclasses.fields(allocator.Options)}
    for key in given:
        if key not in own:
            owner = option_fields().get(key, ("another",))[0]
            raise SpecError(f"{key} is an option of the {owner} method; method {method!r} has none")
    model = _options_model(method)
    try:
        model(**given)
    except ValidationError as exc:
        raise SpecError(describe(exc, model)) from None
    return dict(given)


def allocator_options(spec: JobOptions) -> Any:
    """The spec's options of its method, as the allocator's ``Options`` dataclass."""
    return catalog.allocator(spec.method).Options(**spec.options)


def describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line naming the first field at fault (``finetune.lr``) and what it must be."""
    error = exc.errors(include_url=False)[0]
    title = model.model_config.get("title")
    name = ".".join(str(part) for part in ((title,) if title else ()) + tuple(error["loc"])) or "spec"
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return f"unknown option {name!r}"
    if error["type"] == "missing":
        return f"{name} is required"
    bounds = _bounds(model, error["loc"])
    if {"ge", "le"} <= set(bounds) and isinstance(value, int):
        return f"{name} must be an integer from {bounds['ge']} to {bounds['le']}, not {value!r}"
    if error["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"):
        return f"{name}={value!r} is out of range: {error['msg'][0].lower()}{error['msg'][1:]}"
    return f"{name}: {error['msg'][0].lower()}{error['msg'][1:]}, not {value!r}"


def _bounds(model: type[BaseModel], loc: tuple[int | str, ...]) -> dict[str, Any]:
    """The ge/le bounds declared on the field at ``loc`` (for a message that states the range)."""
    field = model.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    if field is None:
        return {}
    return {k: getattr(m, k) for m in field.metadata for k in ("ge", "le") if getattr(m, k, None) is not None}


__all__ = [
    "BUDGET_KINDS",
    "DEFAULT_METHOD",
    "EXPORTS",
    "Budget",
    "FinetuneConfig",
    "InputSpec",
    "JobOptions",
    "JobSpec",
    "SpecError",
    "allocator_options",
    "option_fields",
    "resolve_method",
]
