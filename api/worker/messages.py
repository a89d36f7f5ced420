"""What the worker and a job's child process say to each other: the attempt they start it with,
and the messages it sends back over its pipe (pickled; the child never touches the database).

A child sends any number of :class:`Progress` messages, then exactly one final message:
:class:`Done`, :class:`Cancelled` or :class:`Failed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.jobs.model import JobKind


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """Everything the child needs to run one attempt of one job (built by the worker)."""

    job_id: str
    kind: JobKind  #: a user's job runs the pipeline; a search helper joins its lead's search
    spec: dict[str, Any]  #: the job row's spec, as the API stored it
    data: str  #: a dataset name or the path of the uploaded data
    weights: str | None
    model: str | None  #: an uploaded ONNX model's path
    out_dir: str  #: this attempt's own directory, published on success
    checkpoint_dir: str  #: resumable state shared by the job's attempts
    latency_repeats: int
    calibration_batches: int
    threads: int  #: torch threads of the child (0: torch's default)
    device: str
    search_storage: str | None  #: where evolution studies live, shared by a job and its helpers
    search_key: str  #: the job's study: the lead's id, for the lead and its helpers alike
    data_label: str  #: how the data is named in the study, so every process names it alike
    label: str  #: a helper's name in the study
    helper_seed: int
    memory_bytes: int = 0  #: the child's address-space cap on a CPU job (0: none)
    cpu_s: float = 0.0  #: the child's CPU-time cap (0: none)
    scratch_dir: str | None = None  #: the attempt's temporary files (extracted data): inside the job's dir


@dataclass(frozen=True)
class Progress:
    """The child reached ``fraction`` (0-1) of pipeline stage ``stage``."""

    stage: str
    fraction: float


@dataclass(frozen=True)
class Done:
    """The attempt finished: ``result`` is a search helper's summary, None for a job (its report is on disk)."""

    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class Cancelled:
    """The child stopped at a stop request (a cancel, or the worker shutting down)."""


@dataclass(frozen=True)
class Failed:
    """The attempt raised: ``code`` and ``message`` for the user, ``retryable`` for the retry strategy."""

    code: str
    retryable: bool
    message: str


Final = Done | Cancelled | Failed
ChildMessage = Progress | Final
