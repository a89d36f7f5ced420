"""The whole pipeline on digits: budgets met, artifacts exported and verified, plans replayable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from autoprune.data import iterate_batches, load_data
from autoprune.export import load_pruned
from autoprune.measure import onnx_session
from autoprune.pipeline import run as run_job
from autoprune.report.schema import Report
from autoprune.spec import Budget, FinetuneConfig, JobSpec


def run(*args, **kwargs) -> dict:
    """The report as report.json holds it."""
    return run_job(*args, **kwargs).to_dict()


def spec(tmp_path, weights, **changes) -> JobSpec:
    base = JobSpec(
        arch="resnet20",
        weights=str(weights),
        data="digits",
        budget=Budget(kind="flops", value=0.5),
        method="global",
        finetune=FinetuneConfig(epochs=1, max_steps_per_epoch=8),
        latency_repeats=3,
        ensure_faster=False,  # its re-solve is tested on its own (test_faster.py)
        out_dir=str(tmp_path / "out"),
    )
    return base.evolve(**changes)


@pytest.fixture(scope="module")
def oneshot(tmp_path_factory, trained_resnet20):
    tmp = tmp_path_factory.mktemp("oneshot")
    stages = []
    report = run(spec(tmp, trained_resnet20), progress=lambda s, f, m: stages.append(s))
    return tmp / "out", report, stages


def test_report_has_the_contracted_fields_and_meets_the_budget(oneshot):
    out, report, stages = oneshot
    assert report == json.loads((out / "report.json").read_text())
    assert Report.model_validate(report).to_dict() == report  # report.json reads back as the typed Report
    assert 0.49 <= report["flops_after"] / report["flops_before"] <= 0.5
    assert report["params_after"] < report["params_before"]
    assert report["criterion"] == "taylor"
    assert any(layer["channels_after"] < layer["channels_before"] for layer in report["layers"])
    assert {"intake", "importance", "allocation", "surgery", "finetune", "export"} <= set(stages)
    assert set(report["timings"]) >= {"intake", "importance", "allocation", "surgery", "finetune", "export"}


def test_onnx_export_matches_torch(oneshot):
    out, report, _ = oneshot
    assert report["onnx_max_abs_diff"] < 1e-4
    model = load_pruned(out / "spec.json", out / "model.safetensors")
    x = torch.randn(4, 3, 32, 32)
    got = onnx_session(out / "model.onnx").run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_load_pruned_rebuilds_the_exported_model(oneshot):
    out, report, _ = oneshot
    model = load_pruned(out / "spec.json", out / "model.safetensors")
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    data = load_data("digits")
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in iterate_batches(data, "test", 128))
    assert correct / len(data.test_y) == pytest.approx(report["accuracy_after"])
    assert (out / "model.pt2").stat().st_size > 0


def test_iterative_schedule_records_each_step(tmp_path, trained_resnet20):
    report = run(
        spec(
            tmp_path,
            trained_resnet20,
            schedule="iterative",
            iterative_steps=2,
            method="uniform",
            criterion="l1",
            exports=(),
        )
    )  # the one-shot run checks the exports
    saved = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert len(saved["plans"]) == 2 and len(report["allocation"]) == 2
    assert 0.49 <= report["flops_ratio"] <= 0.5
    model = load_pruned(tmp_path / "out" / "spec.json", tmp_path / "out" / "model.safetensors")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_params_budget(tmp_path, trained_resnet20):
    report = run(
        spec(
            tmp_path,
            trained_resnet20,
            budget=Budget(kind="params", value=0.6),
            finetune=FinetuneConfig(epochs=0),
            exports=(),
        )
    )
    assert 0.59 <= report["params_ratio"] <= 0.6


@pytest.mark.parametrize(
    ("method", "criterion"),
    [("nap", None), ("itpruner", None), ("halp", None), ("global", "chip"), ("uniform", "attribution")],
)
def test_every_method_runs_end_to_end_and_meets_a_macs_budget(tmp_path, trained_resnet20, method, criterion):
    report = run(
        spec(
            tmp_path,
            trained_resnet20,
            method=method,
            criterion=criterion,
            finetune=FinetuneConfig(epochs=0),
            calibration_batches=2,
            exports=(),
        )
    )
    assert 0.49 <= report["flops_ratio"] <= 0.5
    assert report["criterion"] == (criterion or {"nap": "kfac", "itpruner": "l1", "halp": "taylor"}[method])


@pytest.mark.parametrize("method", ["global", "halp"])
def test_a_channel_step_keeps_every_pruned_width_a_multiple_of_it(tmp_path, trained_resnet20, method):
    """global is snapped after allocating; halp takes the step into its knapsack."""
    report = run(spec(tmp_path, trained_resnet20, method=method, channel_step=8, finetune=FinetuneConfig(epochs=0),
                      calibration_batches=2, exports=()))  # fmt: skip
    pruned = [layer for layer in report["layers"] if layer["channels_after"] < layer["channels_before"]]
    assert pruned and all(layer["channels_after"] % 8 == 0 for layer in pruned)
    assert 0.4 <= report["flops_ratio"] <= 0.5  # ResNet-20's 16-wide stage leaves coarse choices


def test_halp_meets_a_latency_budget_relative_to_its_own_timing(tmp_path, trained_resnet20):
    # Batch 16: at batch 1 per-op overheads dominate, and on one 2-core machine even 10% widths
    # took 0.755x the full latency. The budget is relative: the job times the unpruned model
    # itself, so the target is priced under the load its latency table is measured under (an
    # absolute target timed by this test, at another moment, was seen 20% off on a loaded VM).
    budget = Budget(kind="latency", value=0.75, runtime="torch", batch_size=16)
    report = run(spec(tmp_path, trained_resnet20, method="halp", budget=budget, finetune=FinetuneConfig(epochs=0),
                      latency_repeats=30, exports=()))  # fmt: skip
    step, latency = report["allocation"][0], report["latency"]
    assert report["budget"] == {"latency": 0.75, "runtime": "torch", "batch_size": 16}
    assert latency["budget_target_ms"] == pytest.approx(0.75 * latency["budget_reference_ms"])
    # priced from the latency table's own unpruned figure and checked by paired timing against the
    # unpruned model, so the lone timing at the start (budget_reference_ms) neither prices nor meets it
    assert step["budget"] == pytest.approx(0.75 * step["unpruned"])
    assert step["target"] <= step["budget"]  # the allocation's target, in the table's ms
    assert step["achieved"] <= step["budget"]  # the paired ratio on the whole pruned model, in those ms
    # Whenever its latency table says the unpruned model misses the target, HALP must cut. (Judged
    # on the table, not on a second timing: other work on a shared machine moves timings by 30%.)
    if step["predicted_unpruned"] > step["target"]:
        assert step["predicted"] <= step["target"] and report["flops_ratio"] < 1.0


def test_nap_obs_compensation_recovers_accuracy_before_any_finetuning(tmp_path, trained_resnet20):
    common = dict(method="nap", finetune=FinetuneConfig(epochs=0), calibration_batches=2, exports=())
    plain = run(spec(tmp_path, trained_resnet20, obs_compensation=False, **common))
    compensated = run(spec(tmp_path, trained_resnet20, obs_compensation=True, **common))
    assert compensated["allocation"][0]["obs_compensation"] and not plain["allocation"][0]["obs_compensation"]
    assert compensated["flops_ratio"] == plain["flops_ratio"]  # same plan, different weights
    assert compensated["accuracy_pruned"] > plain["accuracy_pruned"]


def test_a_cancel_stops_a_long_search_between_trials(tmp_path, trained_resnet20):
    """Evolution checks should_stop after every trial: a cancel does not wait for the whole search."""
    from autoprune.errors import CancelledError

    fractions = []

    def progress(stage, fraction, metrics):
        if stage == "allocation":
            fractions.append(fraction)

    stop_after_three = lambda: len(fractions) >= 4  # noqa: E731 - the start report, then three trials
    with pytest.raises(CancelledError):
        run(spec(tmp_path, trained_resnet20, method="evolution", options={"search_trials": 50}, finetune=FinetuneConfig(epochs=0),
                 calibration_batches=2, exports=()),
            progress=progress, should_stop=stop_after_three)  # fmt: skip
    assert fractions[1:] == [0.0, 0.02, 0.04]  # stopped at trial 4 of 50


def test_a_search_key_scopes_the_study_to_one_job_but_not_the_checkpoint(tmp_path):
    from autoprune.checkpoint import fingerprint
    from autoprune.context import RunContext, SearchStore
    from autoprune.prune_step import study_name

    base = spec(tmp_path, "w.safetensors", method="evolution")

    def name(job: JobSpec, key: str | None) -> str:
        search = SearchStore("sqlite://", key) if key else None
        return study_name(RunContext(spec=job, device=torch.device("cpu"), search=search), job.budget)

    assert len({name(base, None), name(base, "job-1"), name(base, "job-2")}) == 3
    elsewhere = base.evolve(out_dir="elsewhere", device="cpu")
    assert name(base, "job-1") == name(elsewhere, "job-1")  # attempts agree
    assert fingerprint(base) == fingerprint(elsewhere)  # the same run, so checkpoints still resume


def test_options_added_later_leave_the_fingerprint_of_an_older_job_alone(tmp_path):
    """A checkpoint written before ``input``, the layer limits and Nesterov existed hashed a spec without them."""
    import hashlib
    import json

    from autoprune.checkpoint import fingerprint
    from autoprune.spec import InputSpec

    job = spec(tmp_path, "w.safetensors")
    later = {
        "out_dir": True,
        "device": True,
        "input": True,
        "max_layer_prune": True,
        "keep": True,
        "layer_limits": True,
    }
    older = job.model_dump(mode="json", exclude={**later, "finetune": {"nesterov"}})
    assert fingerprint(job) == hashlib.sha256(json.dumps(older, sort_keys=True, default=str).encode()).hexdigest()
    changed = [
        job.evolve(input=InputSpec(size=(40, 40))), job.evolve(max_layer_prune=0.5), job.evolve(keep=("fc",)),
        job.evolve(finetune=job.finetune.evolve(nesterov=False)),
    ]  # fmt: skip
    assert len({fingerprint(job), *map(fingerprint, changed)}) == 5  # set, they decide the result


def test_a_retry_target_corrects_a_linear_prediction_error_in_one_step():
    """A latency table whose error grows with the cut (measured = 2 + 0.8 * predicted, exact at the
    unpruned 10 ms): the secant retry lands 1% under the goal, where the proportional rule would
    still miss it."""
    from autoprune.prune_step import next_target

    measured = lambda predicted: 2.0 + 0.8 * predicted  # noqa: E731
    goal, target = 6.0, 6.0
    value = next_target(goal, target, unpruned=10.0, predicted=target, reached=measured(target))
    assert measured(value) == pytest.approx(goal * 0.99)
    assert measured(target * goal / measured(target) * 0.99) > goal  # the old, proportional rule


def test_a_retry_target_always_tightens_and_at_most_halves():
    from autoprune.prune_step import next_target

    # a timing above the unpruned model's gives no slope: proportional, then bounded
    assert next_target(5.0, 5.0, unpruned=10.0, predicted=5.0, reached=11.0) == pytest.approx(2.5)
    # a shallow noisy slope would jump far: at most halve
    assert next_target(5.0, 5.0, unpruned=10.0, predicted=5.0, reached=9.9) == 2.5
    # barely over: still a real step down
    assert next_target(0.5, 0.5, unpruned=1.0, predicted=0.5, reached=0.5001) <= 0.5 * 0.99


def test_batchnorm_statistics_are_reestimated_after_the_cut_and_after_fine_tuning(tmp_path, trained_resnet20):
    """A cut leaves BN with the unpruned layer's statistics; the pipeline re-estimates them.

    The exported model's running statistics are exactly the plain average over the spec's
    calibration batches (a second re-estimate changes nothing), and both the cut model and the
    briefly fine-tuned one are well above chance.
    """
    from autoprune.adaptive_bn import batch_norms
    from autoprune.prune_step import calibration, reestimate_bn

    three_steps = FinetuneConfig(epochs=1, max_steps_per_epoch=3, lr=0.01)  # a gentle nudge, not a recipe
    s = spec(tmp_path, trained_resnet20, method="uniform", finetune=three_steps, calibration_batches=3, exports=())
    report = run(s)
    assert report["bn_reestimation_batches"] == 3
    # inherited statistics gave 0.10 and 0.10 here (chance: 10 classes); re-estimated 0.33 and 0.50
    assert report["accuracy_pruned"] > 0.2 and report["accuracy_after"] > 0.3, report
    out = tmp_path / "out"
    model = load_pruned(out / "spec.json", out / "model.safetensors")
    exported = [(m.running_mean.clone(), m.running_var.clone()) for m in batch_norms(model)]
    reestimate_bn(model, calibration(load_data("digits"), 3, s.seed), torch.device("cpu"))
    for (mean, var), bn in zip(exported, batch_norms(model), strict=True):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
