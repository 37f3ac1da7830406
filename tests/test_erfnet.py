"""ERFNet (common/erfnet.py) against Romera et al.'s Table I: the parameter count layer by layer, the published
"2.07 M", shapes and strides of the blocks that source 003's distillation uses."""
from __future__ import annotations

import pytest
import torch

from common.erfnet import ERFNet


def downsampler(cin: int, cout: int) -> int:       # 3x3 conv to cout - cin channels (bias), BN over cout
    return (cout - cin) * cin * 9 + (cout - cin) + 2 * cout


def non_bottleneck_1d(c: int) -> int:              # four 1-D convs (3 taps, bias), two BNs
    return 4 * (3 * c * c + c) + 2 * 2 * c


def upsampler(cin: int, cout: int) -> int:         # 3x3 transposed conv (bias), BN
    return cin * cout * 9 + cout + 2 * cout


def table_one(num_classes: int) -> int:
    encoder = (downsampler(3, 16) + downsampler(16, 64) + 5 * non_bottleneck_1d(64) + downsampler(64, 128)
               + 8 * non_bottleneck_1d(128))
    decoder = upsampler(128, 64) + 2 * non_bottleneck_1d(64) + upsampler(64, 16) + 2 * non_bottleneck_1d(16)
    return encoder + decoder + 16 * num_classes * 2 * 2 + num_classes   # layer 23: 2x2 transposed conv


def test_parameter_count_is_table_one_and_the_published_two_million():
    model = ERFNet(num_classes=20)
    count = sum(p.numel() for p in model.parameters())
    assert count == table_one(20) == 2_064_256
    # the authors' code also holds the encoder's 1x1 classifier (used only to pre-train the encoder alone);
    # with it the count is the "2.07 M" usually quoted
    assert round((count + 128 * 20 + 20) / 1e6, 2) == 2.07


@pytest.mark.parametrize("size", [(64, 128), (40, 72), (30, 50)])
def test_logits_at_the_input_size_and_the_encoder_blocks(size):
    model = ERFNet(num_classes=8).eval()
    logits, feats = model(torch.randn(2, 3, *size), return_features=True)
    assert logits.shape == (2, 8, *size)
    h, w = size
    expected = {"block1": (16, 2), "block2": (64, 4), "block3": (128, 8), "block4": (128, 8)}
    for name, (channels, stride) in expected.items():
        assert feats[name].shape[:2] == (2, channels)
        assert feats[name].shape[-2:] == (-(-h // stride), -(-w // stride))


def test_config_names_the_architecture_and_bad_class_counts_fail():
    assert ERFNet(5).config() == {"arch": "erfnet", "num_classes": 5, "in_channels": 3}
    with pytest.raises(ValueError):
        ERFNet(1)


def test_dilated_convolutions_leave_out_padding_taps_and_change_no_number():
    """On 64x128 inputs the encoder's maps are 8x16: the dilation-8 3x1 and dilation-16 3x1 / 1x3 convolutions read
    only zero padding off their centre tap, and AtrousConv2d leaves those taps out. The logits and every gradient
    are those of the same network with plain nn.Conv2d convolutions."""
    from plain_convolutions import logits_and_gradients, with_plain_convolutions

    torch.manual_seed(0)
    model = ERFNet(num_classes=4).double().train()    # float64: BatchNorm on a batch of 2 amplifies rounding
    plain, swapped = with_plain_convolutions(model)
    assert swapped == 16                                    # the dilated pair of layers 9-16
    x = torch.randn(2, 3, 64, 128, dtype=torch.float64)
    logits, grad = logits_and_gradients(model, x)
    plain_logits, plain_grad = logits_and_gradients(plain, x)
    assert torch.allclose(logits, plain_logits, rtol=0, atol=1e-9)
    assert (grad - plain_grad).norm() <= 1e-9 * plain_grad.norm()
    dilation_16 = model.block4[3].conv3x1_2            # the padding-only taps got no gradient
    assert dilation_16.dilation == (16, 1) and dilation_16.weight.grad is None
    torch.manual_seed(1)
    model(x).square().sum().backward()
    assert dilation_16.weight.grad[:, :, [0, 2]].abs().max() == 0


def test_bf16_autocast_keeps_the_encoder_in_bf16():
    """The image enters layer 1 in float32: its max-pool branch is cast to the convolution's bf16, so that
    torch.cat does not promote the encoder's activations back to float32. Without autocast all stays float32."""
    model = ERFNet(num_classes=4).eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.autocast("cpu", torch.bfloat16):
        logits, feats = model(x, return_features=True)
    assert {name: f.dtype for name, f in feats.items()} == dict.fromkeys(feats, torch.bfloat16)
    assert logits.dtype == torch.bfloat16
    logits, feats = model(x, return_features=True)
    assert logits.dtype == torch.float32 and all(f.dtype == torch.float32 for f in feats.values())
