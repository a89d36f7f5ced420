"""MACs/params of known models against their published values; latency measurement sanity."""

from __future__ import annotations

import pytest
import torch
from conftest import build

from autoprune.measure import count_cost, torch_latency_ms
from autoprune.models import create_model


def test_resnet56_cifar_matches_the_papers():
    report = count_cost(build("resnet56"), torch.zeros(1, 3, 32, 32))
    assert 125e6 <= report.macs <= 127e6
    assert 0.85e6 <= report.params <= 0.87e6


def test_resnet18_imagenet_is_1_82_gmacs():
    model = create_model("resnet18", num_classes=1000)
    report = count_cost(model, torch.zeros(1, 3, 224, 224))
    assert report.macs == pytest.approx(1.82e9, rel=0.01)
    assert report.params == 11_689_512


def test_per_layer_costs_add_up_and_match_a_direct_count():
    model = build("resnet20")
    report = count_cost(model, torch.zeros(1, 3, 32, 32))
    assert report.macs == sum(layer.macs for layer in report.layers)
    conv1 = report.layer("conv1")
    assert conv1.macs == 32 * 32 * 16 * 3 * 9 and conv1.out_channels == 16
    fc = report.layer("fc")
    assert fc.macs == 64 * 10


def test_macs_are_per_sample_whatever_the_batch():
    model = build("resnet20")
    assert count_cost(model, torch.zeros(4, 3, 32, 32)).macs == count_cost(model, torch.zeros(1, 3, 32, 32)).macs


def test_torch_latency_is_a_positive_median_and_restores_threads():
    threads = torch.get_num_threads()
    ms = torch_latency_ms(build("resnet20"), (3, 32, 32), repeats=5, warmup=1, threads=1)
    assert 0 < ms < 1000
    assert torch.get_num_threads() == threads
