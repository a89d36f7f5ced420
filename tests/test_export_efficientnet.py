"""torchvision's EfficientNet-B0, pruned, exports to ONNX (issue 20, case 10).

``prune --arch efficientnet_b0 --data digits --budget flops=0.6 --method global --criterion l1
--finetune-epochs 0`` failed with "onnxruntime output differs from torch by 42.1". Neither the
surgery nor the exporter was wrong: the unpruned model fails the same way once its BatchNorms
are re-estimated on digits. On 32x32 inputs the last stages see 1x1 maps, some depthwise
channels are constant over the data, and their BN variances come out ~1e-12, far below eps:
each such layer multiplies float32 rounding by ~300, so torch float32 itself is ~15 off its own
float64 output at logits of ~4500. The export check now compares both runtimes with the float64
output: onnxruntime passes when it is as exact as torch's float32, and a faulty graph still fails.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.adaptive_bn import recalibrate
from autoprune.data import iterate_batches, load_data
from autoprune.export.bundle import _within_rounding_noise, export_onnx
from autoprune.graph import PruneGraph
from autoprune.models import create_model
from autoprune.surgery import PruningPlan, apply_plan, make_plan

EXAMPLE = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def pruned() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=10).eval()
    graph = PruneGraph(model, EXAMPLE, ignore=["classifier.1"])  # the output layer is never cut
    keep = {g.id: max(g.blocks, int(g.channels * 0.6) // g.blocks * g.blocks) for g in graph.groups}
    scores = {g.id: np.arange(g.channels, 0, -1, dtype=np.float64) for g in graph.groups}  # keep the first
    plan: PruningPlan = make_plan(graph, scores, keep)
    small = apply_plan(model, EXAMPLE, plan)
    batches = [b for _, b in zip(range(4), iterate_batches(load_data("digits"), "train", 64), strict=False)]
    recalibrate(small, batches)  # as the pipeline does after a cut
    return small


def test_pruned_efficientnet_b0_exports_to_onnx(pruned, tmp_path: Path):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        noise = (pruned(x).double() - copy.deepcopy(pruned).double()(x.double())).abs().max().item()
        scale = pruned(x).abs().max().item()
    assert noise > 1e-4 * max(1.0, scale)  # the regime the old check failed in: rounding alone is over it
    export_onnx(pruned, tmp_path / "model.onnx", EXAMPLE)


def test_a_faulty_export_of_the_same_model_is_still_refused(pruned):
    """A graph that computes something else is far further from float64 than torch's rounding."""
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = pruned(x).numpy()
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert not _within_rounding_noise(pruned, x, expected, expected + 100.0, tolerance)
    assert _within_rounding_noise(pruned, x, expected, expected.copy(), tolerance)
