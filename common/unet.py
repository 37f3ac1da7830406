"""The k-channel U-Net of source 002 (Mangalam, "Compressing U-Net using Knowledge Distillation").

A k-UNet is Ronneberger et al.'s U-Net with k channels at the top stage: five stages of k, 2k, 4k, 8k, 16k
channels, two 3x3 convolutions per stage (each optionally followed by BatchNorm, "the BLUE operations" of the
source's architecture figure), 2x2 max-pool down, 2x2 transposed-convolution up, skip concatenation, 1x1 head.

Parameter counts (1 input channel, 2 classes) -- the source's own figures, tested in tests/test_unet.py:
    k=64 with BatchNorm: 31,042,434 ("64-Unet : Over 31 Million parameters", "31,042,434 parameters")
    k=2  with BatchNorm:     30,902 ("2-Unet: ~30,900 parameter", "30,902 parameters")
These figures pin the layout: the 3x3 convolutions keep their bias even when BatchNorm follows (without bias the
counts would be 31,036,546 and 30,718). Without BatchNorm the 64-UNet has 31,030,658 parameters.

Source 000 (Palchuri & Chakraborty) takes its student from its reference [1], Buda et al. 2019
(github.com/mateuszbuda/brain-segmentation-pytorch): the same layout with k = 32 ("init_features"), 3 input
channels, BatchNorm and *bias-free* 3x3 convolutions (BatchNorm's shift makes a bias redundant):
``UNet(k=32, in_channels=3, num_classes=1, conv_bias=False)`` has Buda's 7,763,041 parameters (tested); with 21
classes, 7,763,701.

Our choice (the source does not say): convolutions are "same"-padded, so the output has the input's size and any
input whose sides are multiples of 16 works. The original U-Net used unpadded convolutions; padding changes no
parameter count.
"""
from __future__ import annotations

import torch
from torch import nn


def _double_conv(in_channels: int, out_channels: int, batch_norm: bool, bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (in_channels, out_channels):
        layers.append(nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=bias))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """k-UNet: ``UNet(k=64)`` is the original 64-UNet, ``UNet(k=2)`` source 002's 2-UNet student, and
    ``UNet(k=32, in_channels=3, num_classes=21, conv_bias=False)`` source 000's student (Buda et al.'s U-Net)."""

    def __init__(self, k: int = 64, in_channels: int = 1, num_classes: int = 2, batch_norm: bool = True,
                 conv_bias: bool = True) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"U-Net width k must be >= 1, got {k}")
        if not (conv_bias or batch_norm):
            raise ValueError("conv_bias=False needs batch_norm=True: without either a convolution has no offset")
        self.k, self.in_channels, self.num_classes, self.batch_norm = k, in_channels, num_classes, batch_norm
        self.conv_bias = conv_bias
        widths = [k, 2 * k, 4 * k, 8 * k, 16 * k]
        self.down = nn.ModuleList()
        c_in = in_channels
        for w in widths:
            self.down.append(_double_conv(c_in, w, batch_norm, conv_bias))
            c_in = w
        self.pool = nn.MaxPool2d(2)
        # Decoder, deepest first: up-convolution halves the channels, the skip concatenation doubles them back.
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * w, w, kernel_size=2, stride=2) for w in reversed(widths[:-1]))
        self.up_conv = nn.ModuleList(_double_conv(2 * w, w, batch_norm, conv_bias) for w in reversed(widths[:-1]))
        self.head = nn.Conv2d(k, num_classes, kernel_size=1)

    def config(self) -> dict:
        """What identifies this architecture in a checkpoint (see common.runs.load_weights)."""
        config = {"name": "UNet", "k": self.k, "in_channels": self.in_channels,
                  "num_classes": self.num_classes, "batch_norm": self.batch_norm}
        if not self.conv_bias:   # only when set, so checkpoints written before this option still load
            config["conv_bias"] = False
        return config

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (N, num_classes, H, W). With ``return_features`` also, from the same pass, the decoder's output
        at each stride, {"stride8": (N, 8k, H/8, W/8), "stride4", "stride2", "stride1"}, and "bottleneck"
        (N, 16k, H/16, W/16): feature maps for distillation losses."""
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"U-Net input sides must be multiples of 16 (four 2x poolings), got {tuple(x.shape[-2:])}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        features = {"bottleneck": x}
        for stride, up, conv in zip((8, 4, 2, 1), self.up, self.up_conv):
            x = conv(torch.cat([skips.pop(), up(x)], dim=1))
            features[f"stride{stride}"] = x
        logits = self.head(x)
        return (logits, features) if return_features else logits
