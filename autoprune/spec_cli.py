"""Command-line flags generated from the job spec, and the spec read back from them.

Every field of ``autoprune.spec.JobOptions`` (and of ``FinetuneConfig``, ``Target``, ``InputSpec``, and every registered
allocator's ``Options``) becomes a flag: ``--`` plus its name with dashes, or the field's
``cli`` extra; ``--no-NAME`` for an option that is on by default. A flag left out is left out of
the spec, so its default lives in one place, the spec. ``autoprune prune`` and ``autoprune
submit`` (the HTTP client) both use these flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from autoprune import catalog
from autoprune.budget import Budget
from autoprune.spec import (
    EXPORTS,
    FinetuneConfig,
    InputSpec,
    JobOptions,
    JobSpec,
    SpecError,
    Target,
    criterion_help,
    method_help,
    option_fields,
    option_type,
)

# Fields with a flag of their own shape (or none): the budget with its latency settings, the
# nested fine-tune options and the method's options (flags of their own), the exports list.
SPECIAL = frozenset({"budget", "finetune", "target", "input", "options", "exports"})
NESTED = ("finetune", "target", "input", "options")


def flag_name(name: str, info: FieldInfo | None = None) -> str:
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("cli") or "--" + name.replace("_", "-"))


def _base_type(annotation: Any) -> Any:
    """``int`` for ``int | None``; the annotation itself otherwise."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return members[0] if len(members) == 1 else str
    return annotation


def _add(group: Any, dest: str, flag: str, annotation: Any, default: Any, help_text: str, required: bool) -> None:
    """One flag for a field; ``dest`` keeps the field's path (``finetune.lr``) for reading back."""
    kind = _base_type(annotation)
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    if kind is bool:
        if default:
            flag, help_text = "--no-" + flag.removeprefix("--"), "turn off: " + help_text
        group.add_argument(flag, dest=dest, action="store_const", const=not default, default=None, help=help_text)
        return
    shown = "" if required or default is None else f" (default {default})"
    metavar = dest.rpartition(".")[2].upper()
    options: dict[str, Any] = {
        "dest": dest,
        "default": None,
        "required": required,
        "help": help_text + shown,
        "metavar": metavar,
    }
    if typing.get_origin(kind) is Literal:
        options["choices"] = list(typing.get_args(kind))
    elif kind == tuple[str, ...] or typing.get_origin(kind) is dict:  # repeatable: --keep A --keep B
        options.update(action="append", metavar="PATTERN=F" if typing.get_origin(kind) is dict else metavar)
    elif kind in (int, float):
        options["type"] = kind
    group.add_argument(flag, **options)


def add_model_flags(
    group: Any, model: type[BaseModel], *, prefix: str = "", skip: frozenset[str] = frozenset(), optional: bool = False
) -> None:
    """A flag per field of ``model``; ``optional``: none required (the HTTP client, whose server has defaults)."""
    for name, info in model.model_fields.items():
        if name in skip or name in SPECIAL:
            continue
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        required = info.is_required() and not optional
        _add(group, prefix + name, flag_name(name, info), info.annotation, default, info.description or "", required)


def add_options_flags(parser: argparse.ArgumentParser, *, http_only: bool = False) -> None:
    """The job options' flags, the fine-tune group and each allocator's options."""
    skip = frozenset(n for n, i in JobOptions.model_fields.items() if http_only and _extra(i).get("http") is False)
    add_model_flags(parser, JobOptions, skip=skip | {"method", "criterion"}, optional=http_only)
    parser.add_argument(
        "--budget",
        required=not http_only,
        default=None,
        help=str(JobOptions.model_fields["budget"].description).replace("%", "%%"),
    )
    parser.add_argument("--method", default=None, help=method_help())
    parser.add_argument("--criterion", default=None, help=criterion_help())
    parser.add_argument(
        "--exports", default=None, help=f"formats besides safetensors: {', '.join(EXPORTS)} (default both), or none"
    )
    methods = parser.add_argument_group("method options")
    for name, (method, f) in option_fields().items():
        annotation = option_type(catalog.allocator(method).Options, name)
        default = None if f.default is dataclasses.MISSING else f.default
        _add(
            methods,
            "options." + name,
            "--" + name.replace("_", "-"),
            annotation,
            default,
            f"{method}: {f.metadata.get('help', '')}",
            False,
        )
    add_model_flags(parser.add_argument_group("fine-tuning"), FinetuneConfig, prefix="finetune.")
    add_model_flags(parser.add_argument_group("deployment target"), Target, prefix="target.", optional=True)
    add_model_flags(parser.add_argument_group("model input (default: the model's own)"), InputSpec, prefix="input.")


def _extra(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def add_spec_flags(parser: argparse.ArgumentParser) -> None:
    """``autoprune prune``'s flags: where the inputs and outputs are, then the options."""
    add_model_flags(parser, JobSpec, skip=frozenset(JobOptions.model_fields))
    add_options_flags(parser)


def given_options(args: argparse.Namespace, model: type[BaseModel] = JobSpec) -> dict[str, Any]:
    """The fields of ``model`` the flags set, nested as the spec nests them (``finetune``, ``options``)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None or dest.startswith("_"):
            continue
        head, _, tail = dest.partition(".")
        if tail and head in NESTED:
            out.setdefault(head, {})[tail] = value
        elif head in model.model_fields and head not in SPECIAL:
            out[head] = pairs(head, value) if typing.get_origin(model.model_fields[head].annotation) is dict else value
    if getattr(args, "exports", None) is not None:
        out["exports"] = parse_names(args.exports)
    if getattr(args, "budget", None) is not None:
        out["budget"] = budget_of(args)
    return out


def pairs(name: str, given: list[str]) -> dict[str, float]:
    """``["layer1.*=0.5", "fc=0"]`` → ``{"layer1.*": 0.5, "fc": 0.0}`` (a repeated ``KEY=NUMBER`` flag)."""
    out: dict[str, float] = {}
    for item in given:
        key, _, number = item.rpartition("=")
        try:
            if not key:
                raise ValueError(item)
            out[key] = float(number)
        except ValueError:
            flag = flag_name(name, JobOptions.model_fields[name])
            raise SpecError(f"{flag} takes PATTERN=NUMBER, not {item!r}") from None
    return out


def budget_of(args: argparse.Namespace) -> Budget:
    """The budget; a latency budget is measured in the target (``--runtime``, ``--latency-batch``)."""
    return Budget.parse(args.budget)


def parse_names(text: str) -> list[str]:
    """A comma-separated list; ``none`` or empty: no names."""
    text = text.strip()
    return [] if text in ("", "none") else [part.strip() for part in text.split(",")]


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    return JobSpec(**given_options(args))
