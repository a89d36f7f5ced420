"""Checkpoint resume: an interrupted run, resumed, ends exactly where an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from autoprune.checkpoint import CheckpointDir
from autoprune.errors import CancelledError
from autoprune.pipeline import run as run_job
from autoprune.spec import Budget, FinetuneConfig, JobSpec


def run(*args, **kwargs) -> dict:
    """The report as report.json holds it."""
    return run_job(*args, **kwargs).to_dict()


def spec(tmp_path, weights, name: str, **changes) -> JobSpec:
    base = JobSpec(
        arch="resnet20",
        weights=str(weights),
        data="digits",
        budget=Budget(kind="flops", value=0.5),
        method="uniform",
        finetune=FinetuneConfig(epochs=3, max_steps_per_epoch=3, augment=True),
        latency_repeats=2,
        exports=(),
        ensure_faster=False,
        out_dir=str(tmp_path / name),
    )
    return base.evolve(**changes)


def stop_after(checks: int):
    """A should_stop that turns True on its ``checks``-th call (fine-tune asks once per batch)."""
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls >= checks

    return should_stop


def weights_of(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def assert_same_weights(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


# should_stop is asked after intake, at each step's start and once per fine-tune batch: the stop
# lands in epoch 2 of 3 (oneshot), or in epoch 2 of step 2 (iterative: 1 + 2 epochs of 3 batches)
# should_stop is asked before each stage, at each step, and once per fine-tune batch: stop in
# the second epoch of the (last) fine-tune
@pytest.mark.parametrize(("schedule", "stop_at"), [("oneshot", 9), ("iterative", 13)])
def test_an_interrupted_run_resumes_to_the_same_model(tmp_path, trained_resnet20, schedule, stop_at):
    changes = {"schedule": schedule, "iterative_steps": 2}
    reference = run(spec(tmp_path, trained_resnet20, "whole", **changes))
    ckpt = tmp_path / "ckpt"
    interrupted = spec(tmp_path, trained_resnet20, "attempt-1", **changes)
    with pytest.raises(CancelledError):
        run(interrupted, checkpoint_dir=ckpt, should_stop=stop_after(stop_at))
    saved = CheckpointDir(ckpt, interrupted).load()
    assert saved is not None and saved.training is not None

    stages: list[str] = []
    resumed = run(
        spec(tmp_path, trained_resnet20, "attempt-2", **changes),
        checkpoint_dir=ckpt,
        progress=lambda s, f, m: stages.append(s),
    )
    assert resumed["resumed"] == {"cuts_done": len(saved.plans), "epochs_done": saved.epochs_done}
    assert resumed["resumed"]["cuts_done"] == (1 if schedule == "oneshot" else 2)
    assert resumed["resumed"]["epochs_done"] == 1
    assert "importance" not in stages and "allocation" not in stages  # the cuts come from the checkpoint
    assert_same_weights(weights_of(tmp_path / "whole"), weights_of(tmp_path / "attempt-2"))
    assert resumed["accuracy_after"] == reference["accuracy_after"]
    assert resumed["finetune"]["history"] == reference["finetune"]["history"]
    assert resumed["allocation"] == reference["allocation"]


def test_a_checkpoint_of_another_spec_or_a_corrupt_one_is_ignored(tmp_path, trained_resnet20):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(CancelledError):
        run(spec(tmp_path, trained_resnet20, "a"), checkpoint_dir=ckpt, should_stop=stop_after(6))
    assert (ckpt / "checkpoint.pt").is_file()
    other = run(spec(tmp_path, trained_resnet20, "b", seed=1, finetune=FinetuneConfig(epochs=1, max_steps_per_epoch=2)),
                checkpoint_dir=ckpt)  # fmt: skip
    assert other["resumed"] is None

    (ckpt / "checkpoint.pt").write_bytes(b"\x80\x04not a checkpoint")
    again = run(spec(tmp_path, trained_resnet20, "c", finetune=FinetuneConfig(epochs=1, max_steps_per_epoch=2)),
                checkpoint_dir=ckpt)  # fmt: skip
    assert again["resumed"] is None
