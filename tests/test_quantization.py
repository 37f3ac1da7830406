"""Tests for common/quantization.py (fake quantization for QAT) against hand-computed values."""
from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

from common.quantization import (ActivationQuantizer, QuantConv2d, QuantConvTranspose2d, WeightQuantizer,
                                 fake_quantize_model, quant_range, quantized_weight_bytes, strip_fake_quantization)
from common.unet import UNet


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def tracked_activation(bits: int, first_batch) -> ActivationQuantizer:
    q = ActivationQuantizer(bits, mode="tracked")
    q(t(first_batch))
    return q


# ---- quant_range ----------------------------------------------------------------------------------------------

def test_quant_range_values():
    assert quant_range(2, signed=True) == (-1, 1)
    assert quant_range(4, signed=True) == (-7, 7)
    assert quant_range(8, signed=True) == (-127, 127)
    assert quant_range(2, signed=False) == (0, 3)
    assert quant_range(4, signed=False) == (0, 15)
    assert quant_range(8, signed=False) == (0, 255)


@pytest.mark.parametrize("bits", [1, 9, 0, 16])
def test_quant_range_rejects_unsupported_bits(bits):
    with pytest.raises(ValueError, match=r"\[2, 8\]"):
        quant_range(bits, signed=True)
    with pytest.raises(ValueError, match=r"\[2, 8\]"):
        quant_range(bits, signed=False)


def test_quantizers_reject_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        WeightQuantizer(4, 2, mode="minmax")
    with pytest.raises(ValueError, match="mode"):
        ActivationQuantizer(4, mode="minmax")


# ---- WeightQuantizer ------------------------------------------------------------------------------------------

# (2, 1, 1, 2): channel 0 = [0.3, -0.9], channel 1 = [0.15, 0.2]
W = [[[[0.3, -0.9]]], [[[0.15, 0.2]]]]


@pytest.mark.parametrize("mode", ["tracked", "learned"])
def test_weight_quantizer_2bit_hand_values(mode):
    # 2 bits: levels {-s, 0, s}, s_c = max|w_c| / 1 -> s = [0.9, 0.2]
    # channel 0: 0.3 / 0.9 = 0.33 -> 0, -0.9 -> -1; channel 1: 0.15 / 0.2 = 0.75 -> 1, 0.2 -> 1
    q = WeightQuantizer(2, channels=2, axis=0, mode=mode)
    w = t(W)
    out = q(w)
    assert torch.allclose(q.scale(w), t([0.9, 0.2]))
    assert torch.allclose(out, t([[[[0.0, -0.9]]], [[[0.2, 0.2]]]]), atol=1e-7)


def test_weight_quantizer_transposed_axis_is_dim_1():
    # ConvTranspose2d weights are (in, out, kh, kw): the scales are per dim 1 (3 output channels)
    w = t([[[[1.0]], [[-2.0]], [[0.5]]], [[[-3.0]], [[1.0]], [[0.25]]]])  # (2, 3, 1, 1)
    q = WeightQuantizer(2, channels=3, axis=1, mode="tracked")
    assert torch.allclose(q.scale(w), t([3.0, 2.0, 0.5]))
    # out channel 0 (s=3): 1/3 -> 0, -3 -> -3; channel 1 (s=2): -2 -> -2, 1/2 = 0.5 -> 0 (half to even);
    # channel 2 (s=0.5): 0.5 -> 0.5, 0.25 / 0.5 = 0.5 -> 0
    expected = t([[[[0.0]], [[-2.0]], [[0.5]]], [[[-3.0]], [[0.0]], [[0.0]]]])
    assert torch.allclose(q(w), expected)


@pytest.mark.parametrize("mode", ["tracked", "learned"])
def test_weight_quantizer_4bit_levels_per_channel(mode):
    torch.manual_seed(0)
    w = torch.randn(3, 8, 3, 3)
    q = WeightQuantizer(4, channels=3, mode=mode)
    out = q(w)
    scale = q.scale(w).detach()
    for c in range(3):
        assert out[c].unique().numel() <= 15  # codes -7..7
        codes = out[c] / scale[c]
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 7 + 1e-4


def test_weight_quantizer_zero_channel_does_not_divide_by_zero():
    w = torch.zeros(2, 1, 1, 2)
    for mode in ("tracked", "learned"):
        out = WeightQuantizer(4, channels=2, mode=mode)(w)
        assert torch.isfinite(out).all() and (out == 0).all()


def test_weight_quantizer_tracked_gradient_is_identity():
    # tracked scales come from max|w|, so nothing is clipped: the STE passes every gradient unchanged
    w = t(W).requires_grad_(True)
    WeightQuantizer(2, channels=2, mode="tracked")(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_weight_quantizer_learned_clip_gradient_by_hand():
    w = t([[[[0.2, -0.9]]], [[[0.15, 0.2]]]]).requires_grad_(True)
    q = WeightQuantizer(2, channels=2, mode="learned")
    q(w)  # first forward initialises the clip to max|w_c| = [0.9, 0.2]
    assert torch.allclose(q.clip, t([0.9, 0.2]))
    with torch.no_grad():
        q.clip.copy_(t([0.6, 0.1]))
    out = q(w)
    # channel 0, c = s = 0.6: 0.2 / 0.6 = 0.33 -> 0; -0.9 clips to -0.6.  channel 1, c = 0.1: both clip to 0.1
    assert torch.allclose(out, t([[[[0.0, -0.6]]], [[[0.1, 0.1]]]]))
    out.sum().backward()
    # d/dw: 1 inside the clip, 0 outside
    assert torch.equal(w.grad, t([[[[1.0, 0.0]]], [[[0.0, 0.0]]]]))
    # d/dc (qmax = 1): inside (round(v) - v) = 0 - 1/3; clipped below -1; clipped above +1 each
    assert torch.allclose(q.clip.grad, t([-1 / 3 - 1, 2.0]), atol=1e-5)


# ---- ActivationQuantizer --------------------------------------------------------------------------------------

def test_activation_quantizer_tracked_2bit_hand_values():
    # range [-1, 2], 2 bits -> 4 levels, s = 3 / 3 = 1, zero point 1: levels {-1, 0, 1, 2}
    q = ActivationQuantizer(2, mode="tracked")
    out = q(t([-1.0, 0.0, 0.4, 1.6, 2.0]))
    assert q.lo.item() == -1.0 and q.hi.item() == 2.0
    assert torch.equal(out, t([-1.0, 0.0, 0.0, 2.0, 2.0]))


def test_activation_quantizer_zero_is_exact_off_grid():
    # range [-0.4, 2.6]: s = 1, zero point round(0.4) = 0, so the grid is {0, 1, 2, 3}: 0 stays exactly 0
    q = ActivationQuantizer(2, mode="tracked")
    assert torch.allclose(q(t([-0.4, 0.0, 2.6])), t([0.0, 0.0, 3.0]))
    assert q(t([0.0])).item() == 0.0
    # range [-0.6, 2.4]: zero point round(0.6) = 1 (not truncated to 0), grid {-1, 0, 1, 2}
    q = ActivationQuantizer(2, mode="tracked")
    assert torch.allclose(q(t([-0.6, 0.0, 2.4])), t([-1.0, 0.0, 2.0]))


def test_activation_quantizer_range_always_contains_zero():
    q = tracked_activation(4, [0.5, 3.0])  # positive batch: lo = min(0.5, 0) = 0
    assert q.lo.item() == 0.0 and q.hi.item() == 3.0
    q = tracked_activation(4, [-3.0, -1.0])
    assert q.lo.item() == -3.0 and q.hi.item() == 0.0


def test_activation_quantizer_eval_clips_to_tracked_range():
    q = tracked_activation(2, [-1.0, 2.0]).eval()
    out = q(t([-5.0, 5.0, 0.9]))
    assert torch.equal(out, t([-1.0, 2.0, 1.0]))
    assert q.lo.item() == -1.0 and q.hi.item() == 2.0  # eval does not update the range


def test_activation_quantizer_ema_update_by_hand():
    q = tracked_activation(4, [-1.0, 2.0])
    q(t([-3.0, 4.0]))
    assert q.lo.item() == pytest.approx(0.9 * -1.0 + 0.1 * -3.0)
    assert q.hi.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    q(t([1.0, 3.0]))  # batch min clamps to 0 (the range includes 0)
    assert q.lo.item() == pytest.approx(0.9 * -1.2 + 0.1 * 0.0)
    assert q.hi.item() == pytest.approx(0.9 * 2.2 + 0.1 * 3.0)
    state = q.state_dict()
    assert set(state) == {"lo", "hi", "initialised"}
    fresh = ActivationQuantizer(4, mode="tracked")
    fresh.load_state_dict(state)
    assert fresh.lo.item() == q.lo.item() and bool(fresh.initialised)


X_GRAD = [-5.0, -0.4, 0.3, 1.2, 5.0]  # with range [-1, 2]: clipped, three inside, clipped


@pytest.mark.parametrize("mode", ["tracked", "learned"])
def test_activation_ste_gradient_inside_and_clipped(mode):
    q = ActivationQuantizer(2, mode=mode)
    q(t([-1.0, 2.0]))
    x = t(X_GRAD).requires_grad_(True)
    q(x).sum().backward()
    assert torch.equal(x.grad, t([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_activation_learned_range_gradient_by_hand():
    q = ActivationQuantizer(2, mode="learned")
    q(t([-1.0, 2.0]))  # initialises lo = -1, hi = 2 (L = 3 steps, s = 1)
    assert q.lo.item() == -1.0 and q.hi.item() == 2.0
    q(t(X_GRAD)).sum().backward()
    # out = round_ste(v) s + lo, v = (x_c - lo) / s, s = (hi - lo) / L. A clipped-low value gives d/dlo = 1,
    # a clipped-high one d/dhi = 1; an inside value d/dlo = (v - round v) / L and d/dhi = (round v - v) / L.
    # v = 0.6, 1.3, 2.2 -> v - round v = -0.4, 0.3, 0.2, sum 0.1
    assert q.lo.grad.item() == pytest.approx(1 + 0.1 / 3, abs=1e-5)
    assert q.hi.grad.item() == pytest.approx(1 - 0.1 / 3, abs=1e-5)


def test_learned_parameters_move_with_an_optimizer_step():
    act, wq = ActivationQuantizer(4, mode="learned"), WeightQuantizer(4, channels=2, mode="learned")
    # the parameters exist before the first forward, so an optimizer built now sees them
    opt = torch.optim.SGD([*act.parameters(), *wq.parameters()], lr=0.1)
    w = t(W)
    act(t([-1.0, 2.0]))
    wq(w)
    before = [p.detach().clone() for p in (act.lo, act.hi, wq.clip)]
    (act(t(X_GRAD)).sum() + wq(w * 2).sum()).backward()  # 2w: every weight beyond the clip
    opt.step()
    for old, new in zip(before, (act.lo, act.hi, wq.clip)):
        assert not torch.equal(old, new.detach())


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("mode", ["tracked", "learned"])
def test_rounding_error_at_most_half_a_step(bits, mode):
    torch.manual_seed(bits)
    act = ActivationQuantizer(bits, mode=mode)
    x = torch.rand(1000) * 5 - 2  # inside [-2, 3]
    act(t([-2.0, 3.0]))
    err = (act(x) - x).abs().max()
    assert err <= act.scale().item() / 2 + 1e-6
    wq = WeightQuantizer(bits, channels=4, mode=mode)
    w = torch.randn(4, 3, 3, 3)
    err = (wq(w) - w).abs()  # the forward first: it initialises a learned clip
    half_step = wq.scale(w).detach().reshape(4, 1, 1, 1) / 2
    assert (err <= half_step + 1e-6).all()


# ---- fake_quantize_model on a U-Net ---------------------------------------------------------------------------

def small_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(k=2, in_channels=3, num_classes=5)


def conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / (ref.max() - ref.min())).item()


def test_fake_quantize_model_replaces_every_conv():
    model = small_unet()
    reference = copy.deepcopy(model.state_dict())
    q = fake_quantize_model(model, bits=4)
    names = conv_names(model)
    assert len(names) == 5 * 2 + 4 + 4 * 2 + 1  # two 3x3 convs per stage, 4 up-convs, 4 decoder stages, head
    bits = {}
    for name in names:
        module = q.get_submodule(name)
        expected = QuantConvTranspose2d if name.startswith("up.") else QuantConv2d
        assert type(module) is expected
        bits[name] = module.bits
    assert bits.pop("down.0.0") == 8 and bits.pop("head") == 8  # first and last at 8 bits
    assert set(bits.values()) == {4}
    assert all(type(model.get_submodule(n)) in (nn.Conv2d, nn.ConvTranspose2d) for n in names)  # untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())
    assert isinstance(q.down[0][1], nn.BatchNorm2d)  # BatchNorm stays float
    assert q.config() == model.config()  # the copy keeps the class and its methods
    uniform = fake_quantize_model(model, bits=4, first_last_bits=None)
    assert {uniform.get_submodule(n).bits for n in names} == {4}
    assert not any(m.training for m in fake_quantize_model(model.eval(), 4).modules())  # eval stays eval


def test_fake_quantize_model_validates_arguments():
    model = small_unet()
    for kwargs in ({"bits": 1}, {"bits": 9}, {"bits": 4, "first_last_bits": 16}, {"bits": 4, "mode": "ema"}):
        with pytest.raises(ValueError):
            fake_quantize_model(model, **kwargs)
    with pytest.raises(ValueError, match="already"):
        fake_quantize_model(fake_quantize_model(model, 4), 4)


@pytest.mark.parametrize("mode", ["tracked", "learned"])
def test_fake_quantized_output_approaches_float_with_more_bits(mode):
    model = small_unet().eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    errors = {b: rel_error(fake_quantize_model(model, b, mode, first_last_bits=None).eval()(x), ref)
              for b in (2, 4, 8)}
    assert errors[8] < 0.01  # measured ~0.1% of the output range
    assert errors[8] < errors[4] < errors[2]


def test_fake_quantized_unet_forward_features_if_supported():
    model = small_unet().eval()
    q = fake_quantize_model(model, 4).eval()
    x = torch.randn(2, 3, 32, 32)
    assert q(x).shape == model(x).shape == (2, 5, 32, 32)
    if "return_features" not in inspect.signature(UNet.forward).parameters:
        pytest.skip("UNet.forward has no return_features argument yet")
    logits, features = q(x, return_features=True)
    ref_logits, ref_features = model(x, return_features=True)
    assert torch.equal(logits, q(x))
    assert {k: v.shape for k, v in features.items()} == {k: v.shape for k, v in ref_features.items()}


def test_strip_fake_quantization_restores_plain_convs():
    model = small_unet().eval()
    q = fake_quantize_model(model, 4)
    x = torch.randn(1, 3, 32, 32)
    q(x)  # initialise the quantizers
    plain = strip_fake_quantization(q)
    for name in conv_names(model):
        module = plain.get_submodule(name)
        assert type(module) is type(model.get_submodule(name))
        assert torch.equal(module.weight, q.get_submodule(name).weight)
        assert torch.equal(module.bias, model.get_submodule(name).bias)
    assert not any("quantizer" in k for k in plain.state_dict())
    plain.load_state_dict(model.state_dict())  # same keys as the float model
    assert torch.equal(plain.eval()(x), model(x))
    assert type(q.head) is QuantConv2d  # the fake-quantized model is left as it was


@pytest.mark.parametrize("mode", ["tracked", "learned"])
def test_state_dict_round_trip_and_deepcopy(mode):
    q = fake_quantize_model(small_unet(), 4, mode)
    x = torch.randn(2, 3, 32, 32)
    q(x)
    q(x * 2)  # tracked: an EMA update
    q.eval()
    out = q(x)
    fresh = fake_quantize_model(UNet(k=2, in_channels=3, num_classes=5), 4, mode)
    fresh.load_state_dict(q.state_dict())  # strict: the lazily initialised tensors exist from construction
    assert torch.equal(fresh.eval()(x), out)
    assert torch.equal(copy.deepcopy(q)(x), out)


def test_fake_quantized_unet_trains():
    q = fake_quantize_model(small_unet(), 4, "learned")
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)  # built before the first forward
    clips = [p for n, p in q.named_parameters() if n.endswith("clip")]
    assert len(clips) == len(conv_names(q)) and all(any(p is c for p in opt.param_groups[0]["params"])
                                                    for c in clips)
    x, target = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4, 32, 32))
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(q(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert q.head.weight_quantizer.clip.grad is not None and q.head.input_quantizer.lo.grad is not None


# ---- quantized_weight_bytes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["tracked", "learned"])
def test_quantized_weight_bytes_by_hand(mode):
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ConvTranspose2d(3, 2, 2, stride=2))
    # float: conv 6 + 3, BN weight/bias/running_mean/running_var 4 x 3, transposed conv 24 + 2 (x 4 bytes);
    # num_batches_tracked (int64) is not a weight
    assert quantized_weight_bytes(model) == 4 * (9 + 12 + 26)
    q = fake_quantize_model(model, 4, mode, first_last_bits=None)
    q(torch.randn(1, 2, 4, 4))
    conv = 3 + 4 * 3 + 4 * 3 + 4 * 2  # ceil(6 * 4 / 8) weight, 3 bias, 3 scales, input lo/hi
    batch_norm = 4 * 12
    transposed = 12 + 4 * 2 + 4 * 2 + 4 * 2  # 24 x 4 bits, 2 bias, 2 scales (dim 1), lo/hi
    assert quantized_weight_bytes(q) == conv + batch_norm + transposed
    # odd bit count: ceil(3 * 2 / 8) = 1 byte for three 2-bit weights, no bias
    odd = fake_quantize_model(nn.Conv2d(1, 1, (1, 3), bias=False), 2, mode, first_last_bits=None)
    assert quantized_weight_bytes(odd) == 1 + 4 + 8
