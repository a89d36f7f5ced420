"""The job-service harness of tests/api (``tests/api/service_harness.py``) for the service benchmarks.

tests/ is no package, so the module is loaded from its file (once per process, registered as
``service_harness`` like the tests import it) instead of putting tests/api on ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HARNESS = Path(__file__).resolve().parent.parent / "tests" / "api" / "service_harness.py"


def _load() -> ModuleType:
    if "service_harness" in sys.modules:  # already imported (by the tests of the same process)
        return sys.modules["service_harness"]
    spec = importlib.util.spec_from_file_location("service_harness", HARNESS)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the service harness from {HARNESS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


_harness = _load()
Service = _harness.Service
stop_process = _harness.stop_process
submit = _harness.submit

__all__ = ["HARNESS", "Service", "stop_process", "submit"]
