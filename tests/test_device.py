"""Batches follow the model: every stage that feeds data runs on the device of the model's parameters.

A second device needs no GPU: torch's TorchScript lazy-tensor backend (``torch._lazy``, part of
every torch build) is a real device, "lazy", that computes on the CPU and refuses CPU inputs, so a
stage that forgot to move a batch fails here. The backend has gaps, and the tests stay out of
them: no view op may run under ``inference_mode`` (the nets evaluated there end in a mean, not a
flatten), and in-place updates of batch-norm running statistics are lost (so only parameters and
scores are compared, not BN buffers after training or recalibration). A CUDA test compares the
same stages with the CPU where a GPU is present.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from nets import TinyResNeXt
from torch import nn

from autoprune.adaptive_bn import make_evaluator
from autoprune.catalog import criterion_names
from autoprune.compensate import compensated_cut
from autoprune.data import ImageData, iterate_batches
from autoprune.device import check_device_name, model_device, on_device, resolve_device
from autoprune.errors import BudgetError
from autoprune.finetune import evaluate, finetune
from autoprune.graph import build_graph
from autoprune.importance import get_criterion
from autoprune.importance.hsic import layer_importance
from autoprune.importance.kfac import KFAC, kfac_factors, kfac_layers
from autoprune.spec import FinetuneConfig
from autoprune.surgery import make_plan

EXAMPLE = torch.zeros(1, 3, 32, 32)
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def lazy() -> torch.device:
    """The lazy-tensor device; its backend can be initialised once per process."""
    ts_backend = pytest.importorskip("torch._lazy.ts_backend")
    ts_backend.init()
    return torch.device("lazy", 0)


class MeanHeadNet(nn.Module):
    """conv-BN-ReLU ×2 → 1×1 conv classifier → spatial mean: no view op, so it runs under inference_mode on lazy."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x))).mean((2, 3))


def mean_head_net() -> MeanHeadNet:
    torch.manual_seed(0)
    return MeanHeadNet().eval()


def resnext() -> TinyResNeXt:
    torch.manual_seed(0)
    return TinyResNeXt().eval()


def calibration(data: ImageData):
    def batches():
        return iterate_batches(data, "train", 16, shuffle=True, generator=torch.Generator().manual_seed(0), limit=2)

    return batches


def moved(model: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(device)


def assert_same_parameters(a: nn.Module, b: nn.Module, **tolerance: float) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), msg=name, **tolerance)


# --- naming the device ----------------------------------------------------------------------


def test_resolve_device_names():
    assert resolve_device("cpu") == CPU
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else CPU
    assert resolve_device("auto") == expected


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:0:1", "cuda0", " cpu", "cpu:0", "", None])
def test_malformed_device_names_are_refused(name):
    with pytest.raises(BudgetError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(name)
    with pytest.raises(BudgetError):
        check_device_name(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused_clearly(name):
    check_device_name(name)  # well formed: a machine that only checks the job accepts it
    with pytest.raises(BudgetError, match=f"'{name}' was asked for, but this machine has no usable CUDA GPU"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_machine_is_refused():
    with pytest.raises(BudgetError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_model_device(lazy):
    assert model_device(nn.ReLU()) == CPU
    assert model_device(nn.Sequential(nn.ReLU(), nn.Linear(2, 2))) == CPU
    assert model_device(nn.Linear(2, 2).to(lazy)) == lazy


def test_on_device_moves_for_the_block_and_back(lazy):
    model = mean_head_net()
    with on_device(model, lazy) as inside:
        assert inside is model and model_device(model) == lazy
    assert all(t.device == CPU for t in model.state_dict().values())
    with pytest.raises(KeyError), on_device(model, lazy):
        raise KeyError("a failing stage")
    assert model_device(model) == CPU


def test_the_second_device_refuses_cpu_batches(lazy):
    """What makes the tests below able to fail: a lazy model fed a CPU batch raises."""
    with pytest.raises(RuntimeError, match="lazy"):
        moved(mean_head_net(), lazy)(EXAMPLE)


# --- each stage on the lazy device, against the CPU --------------------------------------------


def test_evaluate_follows_the_model(digits, lazy):
    model = mean_head_net()
    assert evaluate(moved(model, lazy), digits) == evaluate(model, digits)


def test_finetune_follows_the_model(digits, lazy):
    cfg = FinetuneConfig(epochs=1, max_steps_per_epoch=2, batch_size=32, distill=False)
    on_cpu, on_lazy = resnext(), moved(resnext(), lazy)
    cpu_states, lazy_states = [], []
    history = finetune(on_lazy, digits, cfg, seed=3, on_epoch=lazy_states.append)
    assert history == finetune(on_cpu, digits, cfg, seed=3, on_epoch=cpu_states.append)
    assert model_device(on_lazy) == lazy
    assert_same_parameters(on_lazy, on_cpu, rtol=1e-5, atol=1e-6)
    # the optimizer state taken on the lazy device resumes a CPU model as the CPU's own state does
    resumed = [copy.deepcopy(on_cpu) for _ in range(2)]
    for model, states in zip(resumed, (cpu_states, lazy_states), strict=True):
        finetune(model, digits, cfg.evolve(epochs=2), seed=3, resume=states[-1])
    assert_same_parameters(*resumed, rtol=1e-5, atol=1e-6)


def test_finetune_teacher_follows_the_student(digits, lazy):
    """A teacher elsewhere is copied to the student's device; the caller's teacher stays put."""
    cfg = FinetuneConfig(epochs=1, max_steps_per_epoch=2, batch_size=32)
    teacher = moved(resnext(), lazy)
    student, reference = mean_head_net(), mean_head_net()
    history = finetune(student, digits, cfg, teacher=teacher, seed=1)
    assert model_device(teacher) == lazy
    assert history == finetune(reference, digits, cfg, teacher=resnext(), seed=1)
    assert_same_parameters(student, reference, rtol=0, atol=0)


@pytest.mark.parametrize("name", criterion_names())
def test_every_criterion_follows_the_model(name, digits, lazy):
    """Scores on the lazy device (graph traced on the CPU, then the model moved) equal the CPU's."""
    criterion = get_criterion(name)
    batches = calibration(digits) if criterion.needs_data else None
    expected = criterion.score(build_graph(resnext(), EXAMPLE), batches)
    graph = build_graph(resnext(), EXAMPLE)
    graph.model.to(lazy)
    got = criterion.score(graph, batches)
    assert set(got) == set(expected)
    for gid, scores in expected.items():
        assert isinstance(got[gid], np.ndarray)
        # 1e-4: K-FAC's inverted factors differed by 1.04e-5 relative with one thread (float32 order)
        np.testing.assert_allclose(got[gid], scores, rtol=1e-4, atol=1e-12 * np.abs(scores).max())


def test_kfac_factors_stay_on_the_model_device(digits, lazy):
    cpu_graph = build_graph(resnext(), EXAMPLE)
    graph = build_graph(resnext(), EXAMPLE)
    graph.model.to(lazy)
    expected = kfac_factors(cpu_graph.model, kfac_layers(cpu_graph), calibration(digits))
    got = kfac_factors(graph.model, kfac_layers(graph), calibration(digits))
    names = {m: n for n, m in graph.model.named_modules()}
    cpu_modules = dict(cpu_graph.model.named_modules())
    assert len(got) == len(expected)
    for module, factors in got.items():
        assert factors.A.device == lazy and factors.G.device == lazy
        reference = expected[cpu_modules[names[module]]]
        # float32 sums in another order (one thread vs two) differ by ~1e-6 relative
        torch.testing.assert_close(factors.A.cpu(), reference.A, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(factors.G.cpu(), reference.G, rtol=1e-5, atol=1e-12)


def test_layer_importance_follows_the_model(digits, lazy):
    expected = layer_importance(build_graph(resnext(), EXAMPLE), calibration(digits), max_examples=20)
    graph = build_graph(resnext(), EXAMPLE)
    graph.model.to(lazy)
    got = layer_importance(graph, calibration(digits), max_examples=20)
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-9)


def test_adaptive_bn_evaluator_follows_the_model(digits, lazy):
    """Candidates are cut from the lazy model (example input moved there) and scored there."""
    model = mean_head_net()
    graph = build_graph(model, EXAMPLE)
    scores = get_criterion("l1").score(graph)
    keep = {g.id: g.channels // 2 for g in graph.groups}
    options = dict(eval_examples=100, batch_size=32, seed=0)
    vanilla = make_evaluator(model, graph, scores, digits, calibration_batches=0, **options)
    adaptive = make_evaluator(model, graph, scores, digits, calibration_batches=2, **options)
    expected = vanilla(keep)
    with on_device(model, lazy):
        assert vanilla(keep) == expected
        assert 0.0 <= adaptive(keep) <= 1.0  # runs; lazy loses the recalibrated statistics, so no comparison


def test_compensated_cut_runs_on_the_model_device(digits, lazy):
    model = mean_head_net()
    graph = build_graph(model, EXAMPLE)
    plan = make_plan(graph, get_criterion("l1").score(graph), {g.id: g.channels // 2 for g in graph.groups})
    batches = calibration(digits)
    criterion = KFAC()
    expected = compensated_cut(model, graph, criterion.factors(graph, batches), plan, EXAMPLE)
    with on_device(model, lazy):
        factors = criterion.factors(graph, batches)
        pruned = compensated_cut(model, graph, factors, plan, EXAMPLE)
    assert model_device(pruned) == lazy
    assert_same_parameters(pruned, expected, rtol=1e-5, atol=1e-6)
    # factors left on another device than the model: the update is made where the weights are
    assert_same_parameters(compensated_cut(model, graph, factors, plan, EXAMPLE), expected, rtol=1e-5, atol=1e-6)


# --- CUDA ----------------------------------------------------------------------------------------


@pytest.fixture
def exact_cuda():
    """No TF32 in convolutions or matmuls, so CUDA can be compared with the CPU in float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield torch.device("cuda", torch.cuda.current_device())
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stages_on_cuda_match_the_cpu(digits, exact_cuda):
    cuda = exact_cuda
    assert resolve_device("cuda") == cuda
    cfg = FinetuneConfig(epochs=1, max_steps_per_epoch=1, batch_size=32)
    on_cpu, on_cuda = resnext(), moved(resnext(), cuda)
    states = []
    cpu_history = finetune(on_cpu, digits, cfg, teacher=mean_head_net(), seed=2)
    cuda_history = finetune(on_cuda, digits, cfg, teacher=mean_head_net(), seed=2, on_epoch=states.append)
    assert cuda_history[0].loss == pytest.approx(cpu_history[0].loss, rel=1e-4)
    for (name, a), b in zip(on_cpu.state_dict().items(), on_cuda.state_dict().values(), strict=True):
        assert b.device == cuda, name
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5, msg=name)
    # a state saved from CUDA loads on the CPU and resumes a CPU model
    buffer = io.BytesIO()
    torch.save(states[-1], buffer)
    buffer.seek(0)
    finetune(
        on_cpu, digits, cfg.evolve(epochs=2), seed=2, resume=torch.load(buffer, map_location="cpu", weights_only=True)
    )

    model = resnext()
    cpu_eval, cuda_eval = evaluate(model, digits), evaluate(moved(model, cuda), digits)
    assert cuda_eval.loss == pytest.approx(cpu_eval.loss, rel=1e-4)
    assert abs(cuda_eval.accuracy - cpu_eval.accuracy) <= 1 / len(digits.test_y)

    batches = calibration(digits)
    for name in criterion_names():
        criterion = get_criterion(name)
        expected = criterion.score(build_graph(resnext(), EXAMPLE), batches if criterion.needs_data else None)
        graph = build_graph(resnext(), EXAMPLE)
        with on_device(graph.model, cuda):
            got = criterion.score(graph, batches if criterion.needs_data else None)
        for gid, scores in expected.items():
            np.testing.assert_allclose(got[gid], scores, rtol=1e-3, atol=1e-4 * np.abs(scores).max(), err_msg=name)

    graph = build_graph(model, EXAMPLE)
    scores = get_criterion("l1").score(graph)
    keep = {g.id: g.channels // 2 for g in graph.groups}
    evaluator = make_evaluator(model, graph, scores, digits, calibration_batches=2, eval_examples=100, batch_size=32)
    expected = evaluator(keep)
    with on_device(model, cuda):
        assert abs(evaluator(keep) - expected) <= 2 / 100
        factors = KFAC().factors(graph, batches)
        assert all(f.A.device == cuda and f.G.device == cuda for f in factors.values())
