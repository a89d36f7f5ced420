"""The HTTP form of a job, generated from ``autoprune.spec``, and the job the service stores. Torch-free.

Every ``JobOptions`` field the service lets callers set (not ``http: False``), and every
registered allocator's option, is a text field of ``POST /jobs``; the service adds its own
envelope: ``dataset`` (or an uploaded ``data`` archive), ``search_workers`` and the files. The
stored job spec is what the caller gave (typed, ``method`` resolved), plus the envelope, so the
worker child and the validator rebuild the same ``JobSpec`` from it with ``to_jobspec``.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Any, Literal

from api.errors import ApiError
from autoprune import catalog
from autoprune.spec import ONNX_PREFIX, JobOptions, JobSpec, SpecError, option_fields, option_type

MAX_SEARCH_WORKERS = 8  # worker slots one evolution search may take: the lead and its helpers
ONNX_ARCH = "onnx"  # the stored arch of a job whose model is its uploaded ONNX graph
ENVELOPE_FIELDS = ("dataset", "search_workers")  # text fields of the service's own
FILE_FIELDS = ("weights", "data", "onnx")
EXPORT_NAMES_HELP = "comma-separated: onnx, pt2 (default both), or none"

Kind = Literal["text", "integer", "number", "boolean", "json", "list"]


@dataclass(frozen=True)
class FormField:
    """One text field of the form: how its text is read, and its OpenAPI description."""

    name: str
    kind: Kind
    description: str
    example: str | None = None
    enum: tuple[str, ...] | None = None
    option: bool = False  # an allocator's option, kept under JobOptions.options


def _kind(annotation: Any) -> tuple[Kind, tuple[str, ...] | None]:
    members = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    base = members[0] if len(members) == 1 else annotation
    if typing.get_origin(base) is Literal:
        return "text", tuple(typing.get_args(base))
    if base is bool:
        return "boolean", None
    if base is int:
        return "integer", None
    if base is float:
        return "number", None
    if typing.get_origin(base) is tuple:
        return "list", None
    if base is str:
        return "text", None
    return "json", None  # a nested model, the budget


EXAMPLES = {"arch": "resnet20", "budget": '{"flops": 0.5}', "finetune": '{"epochs": 1, "max_steps_per_epoch": 4}'}


def form_fields() -> dict[str, FormField]:
    """The job's text fields, in the order of the spec."""
    out: dict[str, FormField] = {}
    for name, info in JobOptions.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("http") is False or name == "options":
            continue
        kind, enum = _kind(info.annotation)
        if name == "method":
            enum = tuple(dict.fromkeys(("auto", *catalog.allocator_names())))
        if name == "criterion":
            enum = tuple(catalog.criterion_names())
        description = EXPORT_NAMES_HELP if name == "exports" else info.description or ""
        out[name] = FormField(name, kind, description, EXAMPLES.get(name), enum)
    for name, (method, f) in option_fields().items():
        kind, enum = _kind(option_type(catalog.allocator(method).Options, name))
        out[name] = FormField(name, kind, f"{method}: {f.metadata.get('help', '')}", enum=enum, option=True)
    return out


def text_fields() -> frozenset[str]:
    return frozenset(form_fields()) | frozenset(ENVELOPE_FIELDS)


def _read(field: FormField, text: str) -> Any:
    """The typed value of one field's text; a 422 naming the field when it cannot be read."""
    text = text.strip()
    if field.kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(422, "bad_json", f"{field.name!r} is not valid JSON: {exc}") from None
    if field.kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ApiError(422, "invalid_spec", f"{field.name!r} must be an integer, not {text!r}") from None
    if field.kind == "number":
        try:
            return float(text)
        except ValueError:
            raise ApiError(422, "invalid_spec", f"{field.name!r} must be a number, not {text!r}") from None
    if field.kind == "boolean":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ApiError(422, "invalid_spec", f"{field.name!r} must be true or false, not {text!r}")
        return text.lower() in ("true", "1")
    if field.kind == "list":
        return [] if text in ("", "none") else [part.strip() for part in text.split(",")]
    return text


def given_from_form(fields: dict[str, str]) -> dict[str, Any]:
    """What the caller set, typed; empty text fields count as not given."""
    given: dict[str, Any] = {}
    for name, field in form_fields().items():
        if name in fields and (fields[name].strip() or field.kind == "list"):
            given[name] = _read(field, fields[name])
    return given


def options_kwargs(given: dict[str, Any]) -> dict[str, Any]:
    """JobOptions keyword arguments from the flat given fields (allocator options nested)."""
    option_names = set(option_fields())
    kwargs = {k: v for k, v in given.items() if k not in option_names and k not in ENVELOPE_FIELDS and k != "intake"}
    options = {k: v for k, v in given.items() if k in option_names}
    return {**kwargs, "options": options} if options else kwargs


def check_options(given: dict[str, Any]) -> JobOptions:
    """Validate the caller's options (raises the spec's errors: invalid_spec, bad_budget, unknown_name)."""
    return JobOptions(**options_kwargs(given))


def to_jobspec(
    stored: dict[str, Any],
    *,
    data: str,
    weights: str | None,
    out_dir: str,
    model_file: str | None = None,
    **operator: Any,
) -> JobSpec:
    """The JobSpec a stored job runs: an ``onnx`` job runs ``onnx:<model_file>``, the server's
    copy of the upload; ``operator`` sets the service's own fields (device, latency_repeats,
    calibration_batches)."""
    kwargs = options_kwargs(stored)
    if kwargs["arch"] == ONNX_ARCH:
        if model_file is None:
            raise SpecError("this job's ONNX graph is missing")
        kwargs["arch"] = ONNX_PREFIX + model_file
    return JobSpec(**kwargs, **operator, data=data, weights=weights, out_dir=out_dir)


def search_workers_of(fields: dict[str, str]) -> int:
    """The ``search_workers`` field (1 when not given)."""
    text = fields.get("search_workers", "").strip()
    return _read(FormField("search_workers", "integer", ""), text) if text else 1


def search_helpers(workers: int, options: JobOptions) -> int:
    """Helper rows to queue with the job: ``search_workers - 1`` slots join its evolution search.

    Only a MACs or params budget can be shared: a latency table is measured per process, so
    two processes would price the same candidate differently.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_SEARCH_WORKERS:
        raise SpecError(f"search_workers must be an integer from 1 to {MAX_SEARCH_WORKERS}, not {workers!r}")
    if workers > 1 and not catalog.allocator(options.method).joinable:
        raise SpecError(f"search_workers > 1 spreads an evolution search; method {options.method!r} has none")
    if workers > 1 and options.budget.measured:
        raise SpecError("search_workers > 1 needs a flops or params budget: latency tables are measured per process")
    return workers - 1


def openapi_form() -> dict[str, Any]:
    """The multipart body of ``POST /jobs`` for the OpenAPI schema, from the same fields."""
    properties: dict[str, Any] = {
        "onnx": {"type": "string", "format": "binary", "description": ".onnx classifier graph, instead of 'arch'"},
        "weights": {"type": "string", "format": "binary",
                    "description": ".safetensors or weights-only .pt/.pth (optional with 'onnx')"},
        "dataset": {"type": "string", "description": "built-in dataset name", "example": "digits"},
        "data": {"type": "string", "format": "binary", "description": ".zip/.tar/.tar.gz of an npz dir or image folder"},
        "search_workers": {"type": "string", "example": "1",
                           "description": f"evolution: worker slots that share its search (1-{MAX_SEARCH_WORKERS}; "
                           "flops/params budgets)"},
    }  # fmt: skip
    for name, field in form_fields().items():
        schema: dict[str, Any] = {"type": "string", "description": f"{field.description} ({field.kind})"}
        if field.example is not None:
            schema["example"] = field.example
        if field.enum is not None:
            schema["enum"] = list(field.enum)
        properties[name] = schema
    body = {"type": "object", "required": ["budget"], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}
