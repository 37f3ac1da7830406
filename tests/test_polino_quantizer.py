"""common/quantization.py's Polino et al. (2018) quantizer, the one source 000 cites for its quantization functions
(Section 2.3, [9]): per bucket of k consecutive weights, v -> (v - min) / (max - min), rounded to s = 2^b levels,
scaled back; straight-through gradient. Checked on small tensors computed by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common.quantization import (PolinoWeightQuantizer, QuantConv2d, fake_quantize_model, polino_quantize,
                                 quantized_weight_bytes, strip_fake_quantization, weight_levels)


def test_two_bits_give_four_levels_between_the_bucket_min_and_max() -> None:
    # one bucket, min 0, max 3: levels 0, 1, 2, 3 (s = 4, step (3 - 0) / 3 = 1)
    w = torch.tensor([0.0, 0.4, 0.6, 1.49, 1.51, 2.2, 3.0])
    assert polino_quantize(w, 2, bucket_size=7).tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0]
    assert weight_levels(2, "polino") == 4 and weight_levels(2, "qkd") == 3   # the qkd grid is ternary at 2 bits


def test_levels_are_two_to_the_bits() -> None:
    w = torch.linspace(-1.0, 1.0, 1000)
    for bits in (2, 3, 4, 8):
        q = polino_quantize(w, bits, bucket_size=1000)
        assert q.unique().numel() == 2 ** bits
        step = 2.0 / (2 ** bits - 1)                      # (max - min) / (s - 1)
        assert (q - w).abs().max() <= step / 2 + 1e-6     # rounding moves a weight by at most half a step
        assert q.min() == -1.0 and q.max() == 1.0         # min and max are levels themselves


def test_each_bucket_has_its_own_min_and_max() -> None:
    # buckets of 3: [0, 1, 3] (min 0, max 3) and [10, 14, 12] (min 10, max 14) with one bit above ternary (2 bits)
    w = torch.tensor([0.0, 1.0, 3.0, 10.0, 14.0, 12.0])
    # bucket 1: step 1 -> 0, 1, 3; bucket 2: step 4/3 -> levels 10, 11.33, 12.67, 14: 12 rounds to 12.67
    expected = torch.tensor([0.0, 1.0, 3.0, 10.0, 14.0, 10.0 + 2 * 4.0 / 3])
    assert torch.allclose(polino_quantize(w, 2, bucket_size=3), expected)


def test_a_short_last_bucket_uses_its_own_values() -> None:
    # 5 weights, buckets of 4: the last bucket holds 7 alone (their padding repeats the last value): unchanged
    w = torch.tensor([0.0, 0.2, 0.9, 1.0, 7.0])
    assert polino_quantize(w, 2, bucket_size=4).tolist() == pytest.approx([0.0, 1 / 3, 1.0, 1.0, 7.0])


def test_a_constant_bucket_is_returned_unchanged() -> None:
    w = torch.full((8,), 0.37)
    assert torch.equal(polino_quantize(w, 2, bucket_size=4), w)
    assert torch.equal(polino_quantize(torch.zeros(5), 4), torch.zeros(5))


def test_the_shape_is_kept_and_buckets_run_over_the_flattened_weight() -> None:
    w = torch.arange(12.0).reshape(3, 2, 2)               # buckets of 6 in memory order: 0..5 and 6..11
    q = polino_quantize(w, 2, bucket_size=6)              # step 5/3: 0, 1.67, 3.33, 5 in the first bucket
    assert q.shape == w.shape
    assert q.reshape(-1)[:6].tolist() == pytest.approx([0, 5 / 3, 5 / 3, 10 / 3, 10 / 3, 5])


def test_the_gradient_is_straight_through() -> None:
    w = torch.tensor([0.0, 0.4, 2.2, 3.0], requires_grad=True)
    (polino_quantize(w, 2, bucket_size=4) * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert w.grad.tolist() == [1.0, 2.0, 3.0, 4.0]       # identity: min and max get no gradient of their own


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        polino_quantize(torch.ones(3), 1)
    with pytest.raises(ValueError):
        polino_quantize(torch.ones(3), 4, bucket_size=0)
    with pytest.raises(ValueError):
        fake_quantize_model(nn.Sequential(nn.Conv2d(1, 1, 1)), 4, quantizer="lsq")


def test_fake_quantize_model_with_polino_quantizes_weights_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 2, 1))
    q = fake_quantize_model(model, 2, quantizer="polino", bucket_size=16)
    middle = q[1]
    assert isinstance(middle, QuantConv2d) and isinstance(middle.weight_quantizer, PolinoWeightQuantizer)
    assert isinstance(middle.input_quantizer, nn.Identity)            # activations stay float
    assert q[0].bits == 8 and q[2].bits == 8 and middle.bits == 2     # first and last layer at 8 bits
    weights = middle.weight_quantizer(middle.weight).detach().reshape(-1)
    for bucket in weights.split(16):
        assert bucket.unique().numel() <= 4
    assert sum(p.numel() for p in q.parameters()) == sum(p.numel() for p in model.parameters())   # no new parameters
    x = torch.randn(1, 2, 8, 8)
    assert q(x).shape == model(x).shape
    assert isinstance(strip_fake_quantization(q)[1], nn.Conv2d)
    # bytes: 144 weights at 2 bits = 36 bytes, 9 buckets of 16 x (min, max) x 4 bytes = 72, bias 16
    assert quantized_weight_bytes(nn.Sequential(q[1])) == 36 + 72 + 16


# ------------------------------------------------------------------------- why the fake-quantized rows stay float32
def bf16_error_in_steps(w: torch.Tensor, bits: int, bucket_size: int = 256) -> torch.Tensor:
    """|bf16(q) - q| of Polino et al.'s quantized weights q, in units of each bucket's step (max - min) / (2^b - 1):
    how far bf16 autocast, which casts a convolution's weight to bf16, would move a weight off its b-bit level."""
    q = polino_quantize(w, bits, bucket_size).detach().reshape(-1)
    flat = w.detach().reshape(-1)
    buckets = torch.cat([flat, flat[-1:].expand(-flat.numel() % bucket_size)]).reshape(-1, bucket_size)
    step = ((buckets.amax(1) - buckets.amin(1)) / (2 ** bits - 1)).repeat_interleave(bucket_size)[:flat.numel()]
    return (q.bfloat16().float() - q).abs() / step


def test_bf16_keeps_only_every_other_8_bit_level_of_a_bucket_in_1_to_2() -> None:
    # reproduce_qkd.py trains its fake-quantized rows in float32 under --amp too. By hand: a bucket spanning [1, 2]
    # has 8-bit levels 1 + k/255; bf16 holds 8 significant bits, so in [1, 2) its spacing is 1/128, about two steps:
    # the 256 levels round onto 129 values (k/255 * 128 rounded: every integer 0..128), some moved by ~1 step
    levels = 1 + torch.arange(256) / 255
    q = polino_quantize(levels, 8, bucket_size=256)
    assert q.unique().numel() == 256 and q.bfloat16().unique().numel() == 129
    assert bf16_error_in_steps(levels, 8).max() > 0.99
    # 4 bits, levels 1 + k/15: 16 values in bf16 too, each at most half a bf16 spacing (1/256 = 15/256 steps) off
    levels = 1 + torch.arange(16) / 15
    assert polino_quantize(levels, 4, bucket_size=16).bfloat16().unique().numel() == 16
    assert bf16_error_in_steps(levels, 4, bucket_size=16).max() <= 15 / 256 + 1e-6


def test_bf16_moves_the_default_students_8_bit_weights_off_their_grid() -> None:
    # source 000's student (Buda et al.'s U-Net, k = 32) as initialised: cast to bf16, its Polino-quantized 3x3
    # weights move by up to ~0.4 of an 8-bit step (about 5% of them by over a quarter), not by 4-bit ones (0.02)
    from common.unet import UNet

    torch.manual_seed(0)
    weights = [p for p in UNet(k=32, in_channels=3, num_classes=21, conv_bias=False).parameters() if p.dim() == 4]
    eight = torch.cat([bf16_error_in_steps(w, 8) for w in weights])
    four = torch.cat([bf16_error_in_steps(w, 4) for w in weights])
    assert eight.max() > 0.3 and (eight > 0.25).float().mean() > 0.02
    assert four.max() < 0.05
