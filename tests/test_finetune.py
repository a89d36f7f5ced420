"""Fine-tuning: distillation loss, determinism, cancellation, and recovery of a pruned model."""

from __future__ import annotations

import pytest
import torch
from conftest import build

from autoprune.allocate import ProblemInputs, allocate
from autoprune.errors import CancelledError
from autoprune.finetune import distillation_loss, evaluate, finetune
from autoprune.graph import build_graph
from autoprune.importance import get_criterion
from autoprune.models import load_weights
from autoprune.spec import Budget, FinetuneConfig
from autoprune.surgery import apply_plan, make_plan


def test_distillation_loss_is_t2_scaled_kl():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    p_t = torch.softmax(t / 3, 1)
    expected = (p_t * (torch.log(p_t) - torch.log_softmax(s / 3, 1))).sum(1).mean() * 9
    assert torch.allclose(distillation_loss(s, t, 3.0), expected, atol=1e-6)
    assert distillation_loss(t, t, 3.0).abs() < 1e-6


def test_finetuning_is_deterministic_under_a_seed(digits):
    cfg = FinetuneConfig(epochs=1, max_steps_per_epoch=3, batch_size=32)
    a, b = build("resnet20"), build("resnet20")
    teacher = build("resnet20")
    finetune(a, digits, cfg, teacher=teacher, seed=7)
    finetune(b, digits, cfg, teacher=teacher, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_cancel_stops_at_the_next_step(digits):
    calls = []
    with pytest.raises(CancelledError):
        finetune(
            build("resnet20"), digits, FinetuneConfig(epochs=1), should_stop=lambda: calls.append(1) or len(calls) > 2
        )
    assert len(calls) == 3


def test_finetuning_recovers_accuracy_of_a_pruned_model(digits, trained_resnet20):
    model = build("resnet20")
    load_weights(model, trained_resnet20)
    x = torch.zeros(1, 3, 32, 32)
    graph = build_graph(model, x)
    scores = get_criterion("l1").score(graph)
    allocation = allocate("uniform", ProblemInputs.measure(model, graph, scores, x), Budget(kind="flops", value=0.3))
    pruned = apply_plan(model, x, make_plan(graph, scores, allocation.keep))
    before = evaluate(pruned, digits).accuracy
    progress = []
    history = finetune(
        pruned,
        digits,
        FinetuneConfig(epochs=2, lr=0.02, batch_size=64, distill=True),  # distillation's path, from the teacher
        teacher=model,
        seed=0,
        on_progress=lambda f, m: progress.append(f),
    )
    after = evaluate(pruned, digits).accuracy
    assert after > before + 0.05 and after > 0.6
    assert len(history) == 2 and progress[-1] == pytest.approx(1.0)
