"""Tests for common/profiler.py: hand-counted MACs in ptflops's convention (module hooks only)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.profiler import count_macs, count_parameters, measure_latency, profile, weights_size_bytes


def test_count_parameters_includes_frozen():
    conv = nn.Conv2d(1, 2, 3)  # 2 * 1 * 3 * 3 weights + 2 biases
    assert count_parameters(conv) == 20
    conv.bias.requires_grad_(False)
    assert count_parameters(conv) == 20


def test_conv_macs_without_and_with_bias():
    # 3*3*1 MACs per output position and output channel: 9 * 2 channels * 16 positions = 288
    assert count_macs(nn.Conv2d(1, 2, 3, padding=1, bias=False), (1, 1, 4, 4)) == 288
    # bias adds one per output element: 2 * 16 = 32
    assert count_macs(nn.Conv2d(1, 2, 3, padding=1, bias=True), (1, 1, 4, 4)) == 320


def test_conv_bn_relu_stack():
    # conv 288 + BN 2 per element (2 * 32) + ReLU 1 per element (32) = 384
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU())
    assert count_macs(model, (1, 1, 4, 4)) == 384


class _FunctionalReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)) + 1.0


def test_functional_calls_not_counted():
    assert count_macs(_FunctionalReLU(), (1, 1, 4, 4)) == 288


def test_batch_must_be_one():
    with pytest.raises(ValueError, match="per image"):
        count_macs(nn.Conv2d(1, 2, 3), (2, 1, 4, 4))


def test_count_macs_restores_mode_and_prints_nothing(capsys):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    model.train()
    count_macs(model, (1, 1, 8, 8))
    assert model.training and model[1].training
    model.eval()
    count_macs(model, (1, 1, 8, 8))
    assert not model.training
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert not hasattr(model, "start_flops_count")


def test_measure_latency_positive_and_restores_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    latency = measure_latency(model, (1, 1, 16, 16), "cpu", warmup=1, repeats=3)
    assert isinstance(latency, float) and latency > 0
    assert model.training


def test_weights_size_grows_with_parameters():
    small, big = nn.Linear(9, 1), nn.Linear(999, 1)  # 10 and 1000 float32 parameters
    assert weights_size_bytes(big) >= 4000
    assert weights_size_bytes(big) - weights_size_bytes(small) >= 4 * 990


def test_profile_keys():
    model = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    result = profile(model, (1, 1, 4, 4), latency=False)
    assert set(result) == {"params", "macs", "latency_s", "size_bytes"}
    assert result["params"] == 18 and result["macs"] == 288 and result["latency_s"] is None
    assert profile(model, (1, 1, 4, 4))["latency_s"] > 0


def test_unet_macs_grow_with_width():
    unet = pytest.importorskip("common.unet")
    small = count_macs(unet.UNet(k=2), (1, 1, 64, 64))
    assert isinstance(small, int) and small > 0
    assert count_macs(unet.UNet(k=4), (1, 1, 64, 64)) > small


class CountsCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x)


def test_measure_latency_runs_warmup_then_repeats():
    model = CountsCalls()
    measure_latency(model, (1, 1, 4, 4), "cpu", warmup=2, repeats=5)
    assert model.calls == 2 + 5
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, (1, 1, 4, 4), "cpu", repeats=0)


def test_profile_passes_warmup_and_repeats_and_skips_latency_if_asked(monkeypatch):
    model, timed = CountsCalls(), []
    monkeypatch.setattr("common.profiler.measure_latency",
                        lambda m, shape, device, warmup, repeats: timed.append((shape, device, warmup, repeats)) or 0.5)
    result = profile(model, (1, 1, 4, 4), "cpu", warmup=1, repeats=4)
    assert timed == [((1, 1, 4, 4), "cpu", 1, 4)] and result["latency_s"] == 0.5
    assert result["params"] == 18 and result["macs"] == 288 and result["size_bytes"] == weights_size_bytes(model)
    assert profile(model, (1, 1, 4, 4), latency=False)["latency_s"] is None and len(timed) == 1
