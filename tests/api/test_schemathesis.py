"""Property-based fuzzing of the live API from its own /openapi.json (schemathesis CLI).

Checks: no 5xx, auth never ignored, responses match the documented schemas (errors included).
DELETE is a cancel that keeps the job visible, so schemathesis' use-after-free check does not
apply. Bounded: 25 examples per operation, one worker; about 10 s here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import service_harness

service = service_harness.service  # fixture


def test_fuzzing_finds_no_server_errors(service, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists() and shutil.which("schemathesis") is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    token = service.token("fuzzer")
    result = subprocess.run(
        [str(cli if cli.exists() else "schemathesis"), "run", f"{service.url}/openapi.json",
         "--checks", "not_a_server_error,ignored_auth,response_schema_conformance",
         "-H", f"Authorization: Bearer {token}", "--max-examples", "25", "-w", "1", "--seed", "1",
         "--request-timeout", "60"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # it writes a .schemathesis/ cache
    )  # fmt: skip
    service.cancel_all_queued()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
