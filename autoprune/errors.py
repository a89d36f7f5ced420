"""The AutopruneError tree.

Every error a user can cause or meet derives from :class:`AutopruneError`. Each class says, in
``retryable``, whether running the same job again could succeed (the job service uses this to
decide between a retry and an immediate failure), and its docstring is the default message.
Third-party exceptions are wrapped with ``raise ... from exc`` where they enter our code.
"""

from __future__ import annotations

from typing import ClassVar


class AutopruneError(Exception):
    """autoprune failed."""

    retryable: ClassVar[bool] = False
    code: ClassVar[str] = "autoprune_error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ModelIntakeError(AutopruneError):
    """The model could not be built or its weights could not be loaded."""

    code = "bad_model"


class UnknownNameError(AutopruneError):
    """A name (architecture, criterion, allocator, dataset) is not registered."""

    code = "unknown_name"


class UnsafeInputError(AutopruneError):
    """An input file was refused because loading it could run code or exhaust resources."""

    code = "unsafe_input"


class DataError(AutopruneError):
    """The dataset could not be read."""

    code = "bad_data"


class BudgetError(AutopruneError):
    """The budget is malformed or cannot be met by this model."""

    code = "bad_budget"


class UnsupportedLayerError(AutopruneError):
    """A layer cannot be handled by the dependency graph."""

    code = "unsupported_layer"


class SurgeryError(AutopruneError):
    """Removing channels produced a model that does not run or has the wrong output."""

    code = "surgery_failed"


class SolverError(AutopruneError):
    """An allocation solver did not return a usable answer."""

    code = "solver_failed"
    retryable = True


class ExportError(AutopruneError):
    """The pruned model could not be exported or did not match after export."""

    code = "export_failed"


class CancelledError(AutopruneError):
    """The job was cancelled."""

    code = "cancelled"
