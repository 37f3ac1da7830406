"""The k-UNet against source 002's own parameter counts ('64-Unet (31,042,434 parameters)', '2-Unet (30,902)')."""
from __future__ import annotations

import pytest
import torch

from common.profiler import count_parameters
from common.unet import UNet


def on_meta(**kwargs) -> UNet:
    """A UNet of shapes only: counts without the time a 31M-parameter initialisation takes (the CPU counts the same:
    test_every_width_matches_the_hand_count builds small ones there)."""
    with torch.device("meta"):
        return UNet(**kwargs)


def test_64_unet_with_batch_norm_has_the_sources_31_042_434_parameters():
    assert count_parameters(on_meta(k=64, in_channels=1, num_classes=2, batch_norm=True)) == 31_042_434


def test_2_unet_with_batch_norm_has_the_sources_30_902_parameters():
    assert count_parameters(UNet(k=2, in_channels=1, num_classes=2, batch_norm=True)) == 30_902


def test_64_unet_without_batch_norm_has_31_030_658_parameters():
    # the source labels its teacher "without BN", but prints the with-BN count above
    assert count_parameters(on_meta(k=64, batch_norm=False)) == 31_030_658


def hand_count(k: int, cin: int = 1, classes: int = 2, bn: bool = True) -> int:
    """Two 3x3 convs (with bias) per stage, BN affine 2 per channel, 2x2 up-convs, 1x1 head."""
    conv = lambda a, b: 9 * a * b + b + (2 * b if bn else 0)  # noqa: E731
    widths = [k, 2 * k, 4 * k, 8 * k, 16 * k]
    total, a = 0, cin
    for w in widths:
        total += conv(a, w) + conv(w, w)
        a = w
    for w in widths[:-1]:
        total += 4 * 2 * w * w + w + conv(2 * w, w) + conv(w, w)
    return total + k * classes + classes


@pytest.mark.parametrize("k", [1, 4, 8, 16, 32])
@pytest.mark.parametrize("bn", [True, False])
def test_every_width_matches_the_hand_count(k, bn):
    assert count_parameters(UNet(k=k, batch_norm=bn)) == hand_count(k, bn=bn)


def test_output_has_the_input_size_and_one_channel_per_class():
    model = UNet(k=2, in_channels=3, num_classes=5).eval()
    assert model(torch.zeros(2, 3, 48, 80)).shape == (2, 5, 48, 80)


def test_input_not_a_multiple_of_16_is_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        UNet(k=1)(torch.zeros(1, 1, 50, 64))


def test_config_identifies_the_architecture():
    assert UNet(k=4, batch_norm=False).config() == {"name": "UNet", "k": 4, "in_channels": 1, "num_classes": 2,
                                                    "batch_norm": False}


# ---- source 000's student: Buda et al.'s U-Net (32 features, BatchNorm, bias-free convolutions, RGB input) -------

def test_buda_unet_has_the_published_7_763_041_parameters():
    # brain-segmentation-pytorch's UNet(in_channels=3, out_channels=1, init_features=32): 7,763,041 parameters
    assert count_parameters(on_meta(k=32, in_channels=3, num_classes=1, conv_bias=False)) == 7_763_041


def test_buda_unet_with_21_classes_adds_20_head_filters():
    # the 1x1 head gains 20 x (32 weights + 1 bias) = 660 parameters for VOC's 21 classes
    assert count_parameters(on_meta(k=32, in_channels=3, num_classes=21, conv_bias=False)) == 7_763_041 + 660


def test_bias_free_convolutions_drop_one_parameter_per_3x3_filter():
    with_bias = count_parameters(UNet(k=2, in_channels=3, num_classes=4))
    without = count_parameters(UNet(k=2, in_channels=3, num_classes=4, conv_bias=False))
    filters = 2 * (2 + 4 + 8 + 16 + 32) + 2 * (16 + 8 + 4 + 2)   # encoder and decoder 3x3 convs
    assert with_bias - without == filters


def test_bias_free_needs_batch_norm():
    with pytest.raises(ValueError, match="batch_norm"):
        UNet(k=2, batch_norm=False, conv_bias=False)


def test_return_features_gives_the_decoder_at_each_stride_from_the_same_pass():
    model = UNet(k=2, in_channels=3, num_classes=5, conv_bias=False).eval()
    x = torch.randn(2, 3, 32, 48)
    logits, feats = model(x, return_features=True)
    assert torch.equal(logits, model(x))
    assert feats["bottleneck"].shape == (2, 32, 2, 3)
    assert feats["stride8"].shape == (2, 16, 4, 6)
    assert feats["stride1"].shape == (2, 2, 32, 48)
    assert torch.allclose(model.head(feats["stride1"]), logits)


def test_config_names_bias_free_convolutions_only_when_set():
    assert "conv_bias" not in UNet(k=2).config()    # checkpoints of source 002's runs keep loading
    assert UNet(k=2, conv_bias=False).config()["conv_bias"] is False
