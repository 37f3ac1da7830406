"""ERFNet (Romera et al. 2017, "ERFNet: Efficient Residual Factorized ConvNet for Real-time Semantic Segmentation"),
the student of source 003 (Hou, IntRA-KD and SAD; the talk's "ERFNet [Romera et al. 2017]").

The layers follow the paper's Table I and the authors' public PyTorch code:

    layer   type                               out-F  out-res (of a 512x1024 input)
    1       downsampler block                   16    256x512     (3x3 conv stride 2 ++ 2x2 max-pool, BN, ReLU)
    2       downsampler block                   64    128x256
    3-7     5 x non-bottleneck-1D               64    128x256     (dropout 0.03)
    8       downsampler block                  128     64x128
    9-16    2 x non-bt-1D, dilations 2,4,8,16  128     64x128     (dropout 0.3)
    17      deconvolution (upsampling)          64    128x256     (3x3 transposed conv stride 2, BN, ReLU)
    18-19   2 x non-bottleneck-1D               64    128x256
    20      deconvolution (upsampling)          16    256x512
    21-22   2 x non-bottleneck-1D               16    256x512
    23      deconvolution (2x2, the classifier)  C    512x1024

A non-bottleneck-1D block factorises each 3x3 convolution of a ResNet basic block into a 3x1 and a 1x3 one (ReLU
between them), the second pair dilated; every convolution has a bias, BatchNorm uses eps 1e-3 as in the authors'
code. With 20 classes (Cityscapes' 19 + void, the paper's setting) the network has 2,064,256 parameters. The
authors' encoder also holds a 1x1 classifier (128 x 20 + 20 = 2,580 parameters) used only when the encoder is
pre-trained alone; counted in, it gives 2,066,836, the "2.07 M" usually quoted. It is not part of the segmentation
network and is left out here.

``forward(x, return_features=True)`` also returns the encoder's blocks for distillation (source 003):
"block1" (layer 1, 16 ch, stride 2), "block2" (layers 2-7, 64 ch, stride 4), "block3" (layers 8-12, 128 ch, stride 8,
the first four dilated blocks), "block4" (layers 13-16, 128 ch, stride 8: the encoder's output).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.atrous import AtrousConv2d

BN_EPS = 1e-3  # the authors' code


class DownsamplerBlock(nn.Module):
    """A 3x3 stride-2 convolution (out - in channels) concatenated with a 2x2 max-pool of the input, BN, ReLU
    (ENet's initial block, used at every downsampling in ERFNet)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv(x)
        # Under bf16 autocast the convolution gives bf16 and the pool keeps its input's float32 (the image, in
        # layer 1); torch.cat would promote both to float32, and so would every residual sum after it, leaving the
        # whole encoder's activations in float32 with a cast before each convolution. In the convolution's dtype
        # they stay bf16 (a no-op in float32).
        pooled = self.pool(x).to(conv.dtype)
        if pooled.shape[-2:] != conv.shape[-2:]:   # odd sides: the convolution rounds up, the pool down
            pooled = F.pad(pooled, (0, conv.shape[-1] - pooled.shape[-1], 0, conv.shape[-2] - pooled.shape[-2]))
        return F.relu(self.bn(torch.cat([conv, pooled], dim=1)))


class NonBottleneck1D(nn.Module):
    """The paper's non-bottleneck-1D residual block (Fig. 2c): 3x1, ReLU, 1x3, BN, ReLU, then the same pair
    dilated by ``dilation``, BN, dropout, and ReLU(output + input). The dilated pair are ``AtrousConv2d``: where
    the dilation reaches past the map (8 and 16 on the 8x16 maps of source 003's default 64x128 scenes) their
    off-centre taps read only zero padding and are left out, exactly."""

    def __init__(self, channels: int, dropout: float, dilation: int) -> None:
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        dilated = AtrousConv2d if dilation > 1 else nn.Conv2d
        self.conv3x1_2 = dilated(channels, channels, (3, 1), padding=(dilation, 0), dilation=(dilation, 1), bias=True)
        self.conv1x3_2 = dilated(channels, channels, (1, 3), padding=(0, dilation), dilation=(1, dilation), bias=True)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.dropout(self.bn2(self.conv1x3_2(out)))
        return F.relu(out + x)


class UpsamplerBlock(nn.Module):
    """A 3x3 transposed convolution with stride 2 (doubles each side), BN, ReLU (Table I's "deconvolution")."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1,
                                       bias=True)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ERFNet(nn.Module):
    """ERFNet with ``num_classes`` outputs (Table I). Inputs need sides divisible by 8 for the logits to come out at
    the input's size (three stride-2 stages, three 2x upsamplings); other sizes are resized back bilinearly."""

    def __init__(self, num_classes: int = 20, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.in_channels = num_classes, in_channels
        self.block1 = DownsamplerBlock(in_channels, 16)                                         # layer 1
        self.block2 = nn.Sequential(DownsamplerBlock(16, 64),                                    # layers 2-7
                                    *[NonBottleneck1D(64, 0.03, 1) for _ in range(5)])
        self.block3 = nn.Sequential(DownsamplerBlock(64, 128),                                  # layers 8-12
                                    *[NonBottleneck1D(128, 0.3, d) for d in (2, 4, 8, 16)])
        self.block4 = nn.Sequential(*[NonBottleneck1D(128, 0.3, d) for d in (2, 4, 8, 16)])    # layers 13-16
        self.decoder = nn.Sequential(UpsamplerBlock(128, 64), NonBottleneck1D(64, 0, 1), NonBottleneck1D(64, 0, 1),
                                     UpsamplerBlock(64, 16), NonBottleneck1D(16, 0, 1), NonBottleneck1D(16, 0, 1))
        self.classifier = nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=True)           # layer 23

    def config(self) -> dict:
        """What identifies this network in a checkpoint (common.runs.save_weights / load_weights)."""
        return {"arch": "erfnet", "num_classes": self.num_classes, "in_channels": self.in_channels}

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict]:
        """Logits (N, num_classes, H, W); with ``return_features`` also the encoder blocks {"block1".."block4"}."""
        b1 = self.block1(x)
        b2 = self.block2(b1)
        b3 = self.block3(b2)
        b4 = self.block4(b3)
        logits = self.classifier(self.decoder(b4))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if return_features:
            return logits, {"block1": b1, "block2": b2, "block3": b3, "block4": b4}
        return logits
