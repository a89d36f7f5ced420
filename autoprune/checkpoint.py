"""Resumable job state, so that a re-queued attempt skips the work already done.

One file, ``checkpoint.pt``, written whole under a temporary name, fsynced and renamed (atomic
on POSIX): a crash leaves the previous checkpoint or the new one, never half of one. It holds
only tensors and plain containers and is read back with ``weights_only=True``; the JSON-able
metadata travels as one JSON string. Every attempt of a job runs the same spec with the same
seeds, so any complete checkpoint, even one left by a stale attempt, is a valid place to resume
from; a checkpoint written for another spec (its fingerprint differs) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoprune.spec import JobSpec

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1
FILE_NAME = "checkpoint.pt"
# What may differ between attempts of one job without changing the result.
_PER_ATTEMPT = frozenset({"out_dir", "device"})  # the same run, wherever it runs


# Options added after checkpoints were first written: left out of the hash while at their
# defaults, so a job queued before they existed still resumes from its checkpoint.
_LATER_OPTIONS = ("input", "max_layer_prune", "keep", "layer_limits", "finetune.nesterov")


def fingerprint(spec: JobSpec) -> str:
    """A hash of everything in ``spec`` that decides the result."""
    exclude: dict[str, Any] = dict.fromkeys(_PER_ATTEMPT, True)
    for path in _LATER_OPTIONS:
        *parents, name = path.split(".")
        owner: Any = spec
        for parent in parents:
            owner = getattr(owner, parent)
        default = type(owner).model_fields[name].get_default(call_default_factory=True)
        if getattr(owner, name) == default:
            target = exclude
            for parent in parents:
                target = target.setdefault(parent, {})
            target[name] = True
    fields = spec.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class RunState:
    """Where a run stands: the cuts made, the fine-tune epochs done after the last one.

    ``plans`` are PruningPlan dicts in order; ``epochs_done`` counts the finished fine-tune
    epochs of the step that made the last plan, and ``training`` holds that fine-tune's
    optimizer, schedule and random-generator states (None before its first epoch).
    """

    reference: dict[str, float]
    plans: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    pruned_eval: dict[str, float] | None = None
    epochs_done: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    training: dict[str, Any] | None = None

    def meta(self) -> dict[str, Any]:
        return {
            "reference": self.reference, "plans": self.plans, "diagnostics": self.diagnostics,
            "history": self.history, "pruned_eval": self.pruned_eval, "epochs_done": self.epochs_done,
            "timings": self.timings,
        }  # fmt: skip


class CheckpointDir:
    """The checkpoint of one job, in a directory that outlives its attempts."""

    def __init__(self, directory: str | Path, spec: JobSpec) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.fingerprint = fingerprint(spec)

    def load(self) -> RunState | None:
        """The saved state, or None when there is none for this spec (or it cannot be read)."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            if saved.get("version") != CHECKPOINT_VERSION or saved.get("fingerprint") != self.fingerprint:
                log.warning("checkpoint %s is for another spec or version; starting over", self.path)
                return None
            meta = json.loads(saved["meta"])
            return RunState(**meta, weights=saved["weights"], training=saved["training"])
        except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            log.warning("checkpoint %s unreadable (%s); starting over", self.path, exc)
            return None

    def save(self, state: RunState) -> None:
        """Replace the checkpoint with ``state`` in one rename."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{FILE_NAME}.{os.getpid()}.tmp"
        payload = {
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "meta": json.dumps(state.meta(), default=float),
            "weights": state.weights,
            "training": state.training,
        }
        with tmp.open("wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
