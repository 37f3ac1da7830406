"""The k-UNet against source 002's own parameter counts ('64-Unet (31,042,434 parameters)', '2-Unet (30,902)')."""
from __future__ import annotations

import pytest
import torch

from common.profiler import count_parameters
from common.unet import UNet


def test_64_unet_with_batch_norm_has_the_sources_31_042_434_parameters():
    assert count_parameters(UNet(k=64, in_channels=1, num_classes=2, batch_norm=True)) == 31_042_434


def test_2_unet_with_batch_norm_has_the_sources_30_902_parameters():
    assert count_parameters(UNet(k=2, in_channels=1, num_classes=2, batch_norm=True)) == 30_902


def test_64_unet_without_batch_norm_has_31_030_658_parameters():
    # the source labels its teacher "without BN", but prints the with-BN count above
    assert count_parameters(UNet(k=64, batch_norm=False)) == 31_030_658


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
