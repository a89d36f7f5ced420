"""The command line: every flag documented, every bad input a clear error (exit 2), no traceback."""

from __future__ import annotations

import pickle
import re

import pytest
import torch

from autoprune.cli import build_parser, main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_help_documents_every_flag():
    parser = build_parser()
    prune = parser._subparsers._group_actions[0].choices["prune"]  # type: ignore[union-attr]
    for action in prune._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"
    text = prune.format_help()
    for name in ("uniform", "global", "nap", "itpruner", "evolution", "halp", "kfac", "chip", "attribution"):
        assert name in text
    for flag in (
        "--arch",
        "--weights",
        "--data",
        "--budget",
        "--method",
        "--criterion",
        "--finetune-epochs",
        "--seed",
        "--out",
        "--runtime",
    ):
        assert flag in text


@pytest.fixture
def base(tmp_path):
    return [
        "prune",
        "--arch",
        "resnet20",
        "--data",
        "digits",
        "--budget",
        "flops=0.5",
        "--finetune-epochs",
        "0",
        "--exports",
        "none",
        "--no-ensure-faster",
        "--latency-repeats",
        "2",
        "--out",
        str(tmp_path / "o"),
    ]


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--arch", "resnet5", "did you mean"),
        ("--budget", "flops=1.5", "(0, 1)"),
        ("--budget", "flops=0", "(0, 1)"),
        ("--budget", "flops=-0.2", "(0, 1)"),
        ("--budget", "speed=2", "budget kind"),
        ("--budget", "flops=abc", "not a number"),
        ("--budget", "flops=0.001", "cannot be met"),
        ("--budget", "latency_ms=-1", "positive"),
        ("--method", "magic", "unknown allocator"),
        ("--criterion", "magic", "unknown criterion"),
        ("--data", "nosuchdata", "digits"),
        ("--data", "npz:/nonexistent", "nonexistent"),
        ("--weights", "/nonexistent.safetensors", "nonexistent"),
    ],
)
def test_bad_input_is_a_clear_error(capsys, base, flag, value, message):
    code, output = run_cli(capsys, *with_flag(base, flag, value))
    assert code == 2
    assert message.lower() in output.lower()
    assert "Traceback" not in output


@pytest.mark.parametrize("budget", ["latency_ms=2", "latency=0.7"])
def test_a_method_without_latency_support_refuses_a_latency_budget(capsys, base, budget):
    code, output = run_cli(capsys, *with_flag(with_flag(base, "--method", "global"), "--budget", budget))
    kind = budget.partition("=")[0]
    assert code == 2 and f"does not take {kind} budgets" in output and "Traceback" not in output


def test_weights_for_another_architecture_name_the_parameter(capsys, base, tmp_path):
    from safetensors.torch import save_file

    from autoprune.models import create_model

    path = tmp_path / "w.safetensors"
    save_file(create_model("resnet32").state_dict(), str(path))
    code, output = run_cli(capsys, *with_flag(base, "--weights", str(path)))
    assert code == 2 and "layer" in output


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_is_refused_and_never_runs(capsys, base, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"conv1.weight": Payload(str(marker))}, f, pickle_module=pickle)
    code, output = run_cli(capsys, *with_flag(base, "--weights", str(path)))
    assert code == 2 and "refuse" in output.lower()
    assert not marker.exists()


def test_a_pt2_file_is_refused_as_input(capsys, base, tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"PK\x03\x04")
    code, output = run_cli(capsys, *with_flag(base, "--weights", str(path)))
    assert code == 2 and ".pt2" in output


def test_a_prune_in_a_log_prints_each_stage_as_it_goes_and_a_summary(capsys, base, tmp_path):
    """Output that is not a terminal (CI, nohup) gets timestamped stage lines while the run goes:
    rich's bars would print only once, at the end. Each step of an iterative schedule shows."""
    argv = with_flag(with_flag(with_flag(base, "--method", "uniform"), "--schedule", "iterative"), "--steps", "2")
    code, output = run_cli(capsys, *argv)
    assert code == 0, output
    lines = [line.split() for line in output.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\] \w+ +\d+\.\d%", line)]
    stages = list(dict.fromkeys(line[1] for line in lines))
    assert stages == ["intake", "baseline", "importance", "allocation", "surgery", "export", "timing"], output
    finished = {stage: sum(line[1] == stage and line[2] == "100.0%" for line in lines) for stage in stages}
    once = {"intake": 1, "baseline": 1, "export": 1, "timing": 1}
    assert finished == {**once, "importance": 2, "allocation": 2, "surgery": 2}, output
    assert len(lines) <= 5 * sum(finished.values())  # a line per quarter at most, not one per update
    assert "MACs (M)" in output and "top-1 (%)" in output and (tmp_path / "o" / "report.json").exists()
