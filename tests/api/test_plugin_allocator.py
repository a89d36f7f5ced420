"""A new allocator with one option, added by this file alone and its registration.

It describes itself (summary, default criterion, an ``Options`` dataclass, ``configure``); the
CLI flag ``--bisect-iterations`` and the HTTP form field ``bisect_iterations`` are generated from
that. The service's processes (API, validator, worker child) load this module as a plug-in through
``AUTOPRUNE_PLUGINS``, as they would a user's package named by the ``autoprune.plugins`` entry
point. The module imports only what the plug-in needs at its top, since those processes import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from autoprune.catalog import register_allocator
from solvers import ALLOCATORS, Allocation, AllocationProblem, AllocatorContext
from solvers.uniform import Uniform

PLUGIN_MODULE = "tests.api.test_plugin_allocator"
NAME = "coarse_uniform"


class CoarseUniform(Uniform):
    """Uniform widths from a bisection of the keep ratio cut short after ``bisect_iterations`` steps."""

    summary = "uniform widths, bisected coarsely (registered by a test)"

    @dataclass(frozen=True)
    class Options:
        bisect_iterations: int = field(
            default=40, metadata={"help": "bisection steps of the keep ratio", "min": 1, "max": 60}
        )

    @classmethod
    def configure(cls, options: Any, context: AllocatorContext) -> CoarseUniform:
        return cls(iterations=options.bisect_iterations)

    def allocate(self, problem: AllocationProblem) -> Allocation:
        allocation = super().allocate(problem)
        return Allocation(
            keep=allocation.keep, cost=allocation.cost, diagnostics={"bisect_iterations": self.iterations}
        )


if NAME not in ALLOCATORS:
    register_allocator(NAME, CoarseUniform)


def test_the_cli_generates_its_flag_and_runs_it(tmp_path, capsys):
    from autoprune.cli import build_parser, main

    prune = build_parser()._subparsers._group_actions[0].choices["prune"]  # type: ignore[union-attr]
    assert "--bisect-iterations" in prune.format_help() and NAME in prune.format_help()
    out = tmp_path / "out"
    argv = ["prune", "--arch", "resnet20", "--data", "digits", "--budget", "flops=0.5", "--method", NAME,
            "--bisect-iterations", "12", "--finetune-epochs", "0", "--exports", "none", "--latency-repeats", "2",
            "--calibration-batches", "1", "--no-ensure-faster", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == NAME and report["criterion"] == "l1"
    assert report["allocation"][0]["bisect_iterations"] == 12 and report["flops_ratio"] <= 0.5
    assert main([*argv[:-1], str(tmp_path / "o2"), "--bisect-iterations", "0"]) == 2  # its bounds, from its metadata
    assert "from 1 to 60" in capsys.readouterr().err
    assert main([*argv[:8], "global", *argv[9:]]) == 2  # an option of another method
    assert "coarse_uniform" in capsys.readouterr().err


def test_the_http_api_generates_its_field_and_runs_it(tmp_path):
    from service_harness import Service, submit

    svc = Service(tmp_path)
    svc.env.update(AUTOPRUNE_PLUGINS=PLUGIN_MODULE)
    try:
        svc.start_api()
        svc.start_worker()
        client = svc.client(svc.token("plugin"))
        form = client.get("/openapi.json").json()["paths"]["/jobs"]["post"]["requestBody"]
        properties = form["content"]["multipart/form-data"]["schema"]["properties"]
        assert "bisect_iterations" in properties and NAME in properties["method"]["enum"]
        refused = submit(client, method=NAME, bisect_iterations="61", exports="none")
        assert refused.status_code == 422 and "from 1 to 60" in refused.json()["detail"], refused.text
        response = submit(client, method=NAME, bisect_iterations="12", exports="none")
        assert response.status_code == 201, response.text
        job = svc.wait_status(response.json()["id"], {"succeeded", "failed"}, timeout=180)
        assert job.status.value == "succeeded", job.error
        assert job.result["method"] == NAME and job.result["allocation"][0]["bisect_iterations"] == 12
    finally:
        svc.close()
