"""spec.json: what rebuilds a pruned model from its architecture name and plans alone."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any, Literal, overload

import torch
from torch import nn
from torchvision.transforms import v2

from autoprune.data import ImageData
from autoprune.data.preprocess import Preprocess
from autoprune.errors import ModelIntakeError
from autoprune.models import create_model, load_weights
from autoprune.spec import ONNX_PREFIX
from autoprune.surgery import PruningPlan, apply_plan

SPEC_FORMAT = "autoprune.spec"
SPEC_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Architecture, input geometry, input normalisation and the plans applied, in order.

    ``preprocess`` is how images become the model's input (resize, crop, interpolation,
    normalisation); spec files written before it existed lack it, and then whole images were
    resized to ``input_shape`` and normalised with ``mean``/``std``."""

    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    plans: tuple[PruningPlan, ...] = ()
    preprocess: Preprocess | None = None
    # where a relative ``onnx:`` arch is found: the spec file's directory (set by read_spec)
    base_dir: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "plans": [p.to_dict() for p in self.plans],
            **({"input": self.preprocess.to_dict()} if self.preprocess is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if data.get("format") != SPEC_FORMAT or data.get("version") != SPEC_VERSION:
            raise ModelIntakeError(f"not an {SPEC_FORMAT} version {SPEC_VERSION} file")
        _check_onnx_reference(str(data.get("arch", "")))
        try:
            return cls(
                arch=str(data["arch"]),
                num_classes=int(data["num_classes"]),
                input_shape=tuple(int(v) for v in data["input_shape"]),  # type: ignore[arg-type]
                mean=tuple(float(v) for v in data["normalization"]["mean"]),
                std=tuple(float(v) for v in data["normalization"]["std"]),
                plans=tuple(PruningPlan.from_dict(p) for p in data["plans"]),
                preprocess=Preprocess.from_dict(data["input"]) if data.get("input") else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelIntakeError(f"malformed spec: {exc}") from exc

    @classmethod
    def for_data(cls, arch: str, data: ImageData, plans: Sequence[PruningPlan] = ()) -> ModelSpec:
        """The spec of ``arch`` trained on ``data``: classes, input shape and normalisation from it."""
        return cls(
            arch=arch,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            mean=data.mean,
            std=data.std,
            plans=tuple(plans),
            preprocess=data.preprocess,
        )

    def transform(self) -> v2.Compose:
        """The inference transform: a PIL image (or uint8 CHW tensor) → the tensor the model takes."""
        pre = self.preprocess or Preprocess(size=self.input_shape[1:])
        return pre.with_stats(self.mean, self.std).transform()

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape)

    def build(self) -> nn.Module:
        """A fresh instance (random weights; an ONNX graph's own) with every plan applied (the pruned shapes)."""
        arch = self.arch
        if arch.startswith(ONNX_PREFIX) and self.base_dir is not None:
            arch = ONNX_PREFIX + str(_inside(self.base_dir, arch.removeprefix(ONNX_PREFIX)))
        model = create_model(arch, num_classes=self.num_classes, in_channels=self.input_shape[0])
        for plan in self.plans:
            model = apply_plan(model, self.example_input(), plan)
        return model.eval()


def read_spec(spec: str | Path | Mapping[str, Any] | ModelSpec) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, Mapping):
        return ModelSpec.from_dict(spec)
    try:
        data = json.loads(Path(spec).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelIntakeError(f"cannot read spec {spec}: {exc}") from exc
    return replace(ModelSpec.from_dict(data), base_dir=Path(spec).resolve().parent)


def _check_onnx_reference(arch: str) -> None:
    """A spec names its ONNX graph by a path inside its own directory: nothing absolute, no ``..``."""
    if not arch.startswith(ONNX_PREFIX):
        return
    ref = PurePath(arch.removeprefix(ONNX_PREFIX))
    if not ref.parts or ref.is_absolute() or ".." in ref.parts:
        raise ModelIntakeError(f"spec arch {arch!r}: an onnx: reference must be a relative path without '..'")


def _inside(base_dir: Path, ref: str) -> Path:
    """``base_dir / ref`` with links resolved; it must stay in ``base_dir`` (a link may not lead out)."""
    base = base_dir.resolve()
    path = (base / ref).resolve()
    if not path.is_relative_to(base):
        raise ModelIntakeError(f"spec arch onnx:{ref} resolves to {path}, outside the spec's directory {base}")
    return path


SpecSource = str | Path | Mapping[str, Any] | ModelSpec


@overload
def load_pruned(spec: SpecSource, weights: str | Path, *, with_transform: Literal[False] = False) -> nn.Module: ...


@overload
def load_pruned(
    spec: SpecSource, weights: str | Path, *, with_transform: Literal[True]
) -> tuple[nn.Module, v2.Compose]: ...


def load_pruned(
    spec: SpecSource, weights: str | Path, *, with_transform: bool = False
) -> nn.Module | tuple[nn.Module, v2.Compose]:
    """Rebuild a pruned model from ``spec.json`` and ``model.safetensors`` alone (no pickle);
    ``with_transform``: also its inference transform (``ModelSpec.transform``), so images are fed
    as the model was pruned and fine-tuned on them."""
    model_spec = read_spec(spec)
    model = model_spec.build()
    load_weights(model, weights)
    return (model.eval(), model_spec.transform()) if with_transform else model.eval()
