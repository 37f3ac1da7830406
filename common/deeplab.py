"""DeepLabV3+ with cheap atrous blocks, KSAC and Compressed ASPP, as in source 004 (Kowalski, "Efficient compression
of semantic segmentation neural networks").

The base network is DeepLabV3+ (Chen et al., 2018) as built by the code the thesis started from, VainF's
DeepLabV3Plus-Pytorch (its reference [Fang, 2019], Section 4.1.1): a ResNet-50/101 or MobileNetV2 backbone, an ASPP
module (a 1x1 branch, three 3x3 atrous branches, image pooling, a 1x1 projection) and a decoder that fuses the
4x-upsampled ASPP output with the backbone's low-level features. On top of it the thesis varies:

* the block of the three atrous branches and of the decoder's 3x3 conv (Section 5.1.1): ``ST`` standard conv,
  ``DS`` depthwise separable conv (Section 2.3.3), ``BTN`` bottleneck (Section 2.3.4);
* ``ksac``: Kernel-Sharing Atrous Convolution (Section 2.2.5), one kernel for all three rates;
* Compressed ASPP ``CASPP-n`` (Sections 4.2.3, 5.3.1): a chain of n bottlenecks per atrous branch.

The layout below reproduces the parameter counts and multiply-adds of Tables 5.1, 5.4, A.1 and A.2 (see
tests/test_deeplab.py and the project notes on DeepLabV3+). Counting conventions that the layout must respect:
ptflops counts modules through hooks only, so the ReLUs inside a bottleneck and between CASPP layers are functional
(the thesis's figures do not count them) while each branch's last ReLU is a module; upsampling is functional.

Our choices where the thesis is silent: atrous rates (24, 48, 72) at output stride 4 (rates scale with 1/OS as in
DeepLabV3; rates change no count); every layer of a CASPP branch uses the branch's rate.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from common.errors import UserError
from common.atrous import AtrousConv2d
from common.weight_files import fetch_torchvision_weights, published_file_name, read_weights_file

BACKBONES = ("resnet50", "resnet101", "mobilenet_v2")
ASPP_KINDS = ("ST", "DS", "BTN", "CASPP-1", "CASPP-2", "CASPP-3", "CASPP-4")  # "CASPP-1" is the same network as "BTN"
OUTPUT_STRIDES = (4, 8, 16, 32)

ASPP_CHANNELS = 256  # N_out of every ASPP branch (Section 4.2.3)
LOW_LEVEL_CHANNELS = 48  # the decoder's 1x1 projection of the low-level features (DeepLabV3+)

# Section 5.3.1: per atrous branch, the output widths of its chain of blocks (N_out = 256).
_BRANCH_WIDTHS = {"CASPP-1": (256,), "CASPP-2": (512, 256), "CASPP-3": (1024, 512, 256),
                  "CASPP-4": (1024, 512, 256, 256)}

# Rates 6, 12, 18 at OS 16 (and, as in the thesis's tables, also at OS 32), doubled at OS 8 (DeepLabV3).
# Our choice: OS 4 doubles them again; the thesis gives no rates for OS 4.
_ATROUS_RATES = {4: (24, 48, 72), 8: (12, 24, 36), 16: (6, 12, 18), 32: (6, 12, 18)}

def default_atrous_rates(output_stride: int) -> tuple[int, int, int]:
    """The three atrous rates a ``DeepLabV3Plus`` of ``output_stride`` uses unless told others (see above)."""
    return _ATROUS_RATES[output_stride]


# ImageNet weights of the versions the reference code used (torchvision's "V1" files).
_IMAGENET_WEIGHTS = {
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
    "mobilenet_v2": torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
}


def _weights_file_name(backbone: str) -> str:
    return published_file_name(_IMAGENET_WEIGHTS[backbone])


# --------------------------------------------------------------------------------------------------------- backbones
class ResNetBackbone(nn.Module):
    """torchvision's ResNet without avgpool and fc; keeps torchvision's parameter names (conv1, bn1, layer1..4)."""

    low_channels, high_channels = 256, 2048

    def __init__(self, depth: int, output_stride: int) -> None:
        super().__init__()
        # Section 4.1: each halving of the output stride below 32 swaps one stride-2 stage for dilation.
        dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True],
                  4: [True, True, True]}[output_stride]
        build = torchvision.models.resnet50 if depth == 50 else torchvision.models.resnet101
        resnet = build(weights=None, replace_stride_with_dilation=dilate)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(low-level features from layer1, high-level features from layer4)."""
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))


def _fixed_padding(dilation: int) -> tuple[int, int, int, int]:
    """F.pad amounts that make a 3x3 conv with ``dilation`` and no padding keep the input size."""
    total = 2 * dilation
    return (total // 2, total - total // 2, total // 2, total - total // 2)


class PaddedInvertedResidual(nn.Module):
    """A torchvision MobileNetV2 block run the reference code's way: the input is padded once (F.pad, not counted)
    before the 1x1 expansion and the depthwise conv pads nothing. The 1x1 expansion then runs on the padded map,
    which is what makes the MobileNet MAdds of Tables A.1/A.2 come out exactly (the project notes)."""

    def __init__(self, block: nn.Module, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = block.conv  # torchvision's submodule names, so ImageNet state dicts load unchanged
        depthwise = next(m for m in self.conv.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
        depthwise.stride, depthwise.dilation, depthwise.padding = (stride, stride), (dilation, dilation), (0, 0)
        first, last = self.conv[0], self.conv[-2]
        in_channels = (first[0] if isinstance(first, nn.Sequential) else first).in_channels
        self.use_res_connect = stride == 1 and in_channels == last.out_channels
        self.input_padding = _fixed_padding(dilation)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.pad(x, self.input_padding))
        return x + out if self.use_res_connect else out


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 ``features[:-1]`` (the 1280-channel conv dropped), laid out like the reference code.

    Low-level features = ``features[:4]`` (24 channels, stride 4), high-level = the rest (320 channels). Padding
    follows the reference code: no conv pads (the stem included) and each block pads its input instead.
    """

    low_channels, high_channels = 24, 320
    _LOW_LEVEL_END = 4

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        features = torchvision.models.mobilenet_v2(weights=None).features[:-1]
        stem_conv = features[0][0]
        stem_conv.padding = (0, 0)
        for index, (stride, dilation) in enumerate(self._block_strides_and_dilations(features, output_stride), 1):
            features[index] = PaddedInvertedResidual(features[index], stride, dilation)
        self.features = features

    @staticmethod
    def _block_strides_and_dilations(features: nn.Sequential, output_stride: int) -> list[tuple[int, int]]:
        """The reference code's rule: once the stride reached ``output_stride``, a stage's stride s becomes
        dilation *= s; the stage's first block keeps the previous dilation."""
        current_stride, dilation, result = 2, 1, []  # the stem already halved the input
        stages: list[list[int]] = []  # block indices grouped by stage (a stage starts where the width changes)
        for index in range(1, len(features)):
            block = features[index]
            if index == 1 or block.out_channels != features[index - 1].out_channels:
                stages.append([])
            stages[-1].append(index)
        for stage in stages:
            stage_stride = features[stage[0]].stride
            previous_dilation = dilation
            if current_stride == output_stride:
                first_stride, dilation = 1, dilation * stage_stride
            else:
                first_stride, current_stride = stage_stride, current_stride * stage_stride
            result.append((first_stride, previous_dilation))
            result.extend((1, dilation) for _ in stage[1:])
        return result

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(low-level features from features[:4], high-level features from the rest)."""
        low = self.features[:self._LOW_LEVEL_END](x)
        return low, self.features[self._LOW_LEVEL_END:](low)


def _build_backbone(name: str, output_stride: int) -> nn.Module:
    if name == "mobilenet_v2":
        return MobileNetV2Backbone(output_stride)
    return ResNetBackbone(50 if name == "resnet50" else 101, output_stride)


# ----------------------------------------------------------------------------------------------------------- blocks
def _conv_at_rate(conv: nn.Conv2d, x: Tensor, rate: int) -> Tensor:
    """Run a 3x3 conv with dilation and padding ``rate``.

    KSAC (Section 2.2.5) applies one kernel at several rates. Calling the conv module itself, with its rate set for
    this call, rather than F.conv2d on its weight, lets a hook-based counter (ptflops) see one run per rate, so the
    shared kernel's multiply-adds are counted three times, as in the thesis's tables. The 3x3 convs are
    ``AtrousConv2d``: at a rate as large as the map (the rate-18 branch on the 16x16 maps of the thesis's 256-px
    crops) they leave out the taps that read only zero padding, exactly.
    """
    conv.dilation = conv.padding = (rate, rate)
    return conv(x)


class StandardConv(nn.Module):
    """ST: one 3x3 (atrous) conv, no bias (Section 5.1.1)."""

    def __init__(self, in_channels: int, out_channels: int, rate: int = 1) -> None:
        super().__init__()
        self.conv = AtrousConv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False)

    def forward(self, x: Tensor, rate: int, inner_norms: nn.ModuleList) -> Tensor:
        return _conv_at_rate(self.conv, x, rate)


class SeparableConv(nn.Module):
    """DS: depthwise 3x3 (atrous) conv then pointwise 1x1, nothing between, no bias (Sections 2.3.3, 4.2.1;
    DeepLabV3+'s AtrousSeparableConvolution)."""

    def __init__(self, in_channels: int, out_channels: int, rate: int = 1) -> None:
        super().__init__()
        self.depthwise = AtrousConv2d(in_channels, in_channels, 3, padding=rate, dilation=rate,
                                      groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor, rate: int, inner_norms: nn.ModuleList) -> Tensor:
        return self.pointwise(_conv_at_rate(self.depthwise, x, rate))


class Bottleneck(nn.Module):
    """BTN (Section 2.3.4): 1x1 to out/4, BN, ReLU; depthwise 3x3 (atrous) on out/4, BN, ReLU; 1x1 to out.

    Depthwise, although Section 2.3.4's prose describes the ResNet bottleneck with "a full 3x3 convolution": the
    printed counts force it. A full 3x3 on the 64 channels of a 256-wide bottleneck has 64*64*9 = 36,864 weights
    against the depthwise 64*9 = 576, so each of the four bottlenecks of Table 5.1's unshared BTN model (three
    atrous branches and the decoder) would add 36,288: 25,532,341 (25.53M) instead of 25,387,189 (the printed
    25.39M), and MAdds would grow likewise. With the depthwise 3x3 every BTN and CASPP row of Tables 5.1, 5.4, A.1
    and A.2 matches to the printed digits (tests/test_deeplab.py).

    Only the convs live here; the two BatchNorms are passed in (``inner_norms``) because under KSAC they stay per
    rate: Table 5.1's 25,091,125 parameters for BTN+KSAC leave exactly the two BNs of each rate unshared. The ReLUs
    are functional, so ptflops does not count them (the thesis's MAdds do not).
    """

    def __init__(self, in_channels: int, out_channels: int, rate: int = 1) -> None:
        super().__init__()
        width = out_channels // 4
        self.reduce = nn.Conv2d(in_channels, width, 1, bias=False)
        self.depthwise = AtrousConv2d(width, width, 3, padding=rate, dilation=rate, groups=width, bias=False)
        self.expand = nn.Conv2d(width, out_channels, 1, bias=False)

    @staticmethod
    def norms(out_channels: int) -> nn.ModuleList:
        return nn.ModuleList([nn.BatchNorm2d(out_channels // 4), nn.BatchNorm2d(out_channels // 4)])

    def forward(self, x: Tensor, rate: int, inner_norms: nn.ModuleList) -> Tensor:
        x = F.relu(inner_norms[0](self.reduce(x)))
        x = F.relu(inner_norms[1](_conv_at_rate(self.depthwise, x, rate)))
        return self.expand(x)


_BLOCKS = {"ST": StandardConv, "DS": SeparableConv, "BTN": Bottleneck}


def _block_kind(aspp: str) -> str:
    """The block of the atrous branches and of the decoder: CASPP-n chains bottlenecks (Section 5.3.1)."""
    return "BTN" if aspp.startswith("CASPP") else aspp


def _branch_widths(aspp: str) -> tuple[int, ...]:
    return _BRANCH_WIDTHS.get(aspp, (ASPP_CHANNELS,))


def _inner_norms(kind: str, out_channels: int) -> nn.ModuleList:
    return Bottleneck.norms(out_channels) if kind == "BTN" else nn.ModuleList()


class BlockLayer(nn.Module):
    """block -> BN, with the block's own BatchNorms; the caller applies the ReLU.

    Under KSAC the block itself is shared and owned by the ASPP module (``block`` is None here): a shared module
    must be the child of exactly one module, or a hook-based counter would hook it, and count it, several times.
    """

    def __init__(self, kind: str, in_channels: int, out_channels: int, rate: int, owns_block: bool = True) -> None:
        super().__init__()
        self.block = _BLOCKS[kind](in_channels, out_channels, rate) if owns_block else None
        self.inner_norms = _inner_norms(kind, out_channels)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, rate: int, shared_block: nn.Module | None = None) -> Tensor:
        block = self.block if self.block is not None else shared_block
        if block is None:
            raise RuntimeError("this layer's block is shared: pass the ASPP module's shared_block")
        return self.norm(block(x, rate, self.inner_norms))


class AtrousBranch(nn.Module):
    """One atrous rate of the ASPP: a chain of blocks (one for ST/DS/BTN, n for CASPP-n), each followed by BN and
    ReLU. The ReLUs between CASPP layers are functional; the branch's last ReLU is a module (ptflops counts it,
    as the thesis's figures do for the ASPP's ReLUs)."""

    def __init__(self, kind: str, in_channels: int, widths: tuple[int, ...], rate: int,
                 first_block_shared: bool) -> None:
        super().__init__()
        self.rate = rate
        channels = (in_channels, *widths)
        self.layers = nn.ModuleList(
            BlockLayer(kind, c_in, c_out, rate, owns_block=not (i == 0 and first_block_shared))
            for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, shared_block: nn.Module | None = None) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rate, shared_block if i == 0 else None)
            x = self.relu(x) if i == len(self.layers) - 1 else F.relu(x)
        return x


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv, BN, ReLU, bilinear upsample (DeepLabV3)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = _conv_bn_relu(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.conv(self.pool(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (Section 4.1) with the atrous branches of ``aspp`` (Sections 5.1.1, 5.3.1).

    With ``ksac`` one block is shared by the three rates (Section 2.2.5): the whole atrous block for ST/DS/BTN, the
    first block of each branch for CASPP-n; BatchNorms stay per rate.

    KSAC on the first CASPP block only is what the printed counts give, not what the text says was run: Section
    5.3.2 only *proposes* it as future work ("Presumably, sharing only the first layer can be the best of both
    worlds"). Table 5.4's KSAC savings are exactly two copies of the first block: CASPP-2 26.08M - 25.43M = 0.65M
    = 2 x 328,832 (the 2048 -> 512 bottleneck), CASPP-3 28.07M - 26.49M = 1.58M = 2 x 788,736 (2048 -> 1024);
    sharing every layer would save 2 x 49,728 more for CASPP-2 (its 512 -> 256 layer), 0.75M in all.
    """

    def __init__(self, in_channels: int, rates: tuple[int, int, int], aspp: str, ksac: bool) -> None:
        super().__init__()
        kind, widths = _block_kind(aspp), _branch_widths(aspp)
        self.pointwise = _conv_bn_relu(in_channels, ASPP_CHANNELS)
        self.shared_block = _BLOCKS[kind](in_channels, widths[0]) if ksac else None
        self.atrous = nn.ModuleList(AtrousBranch(kind, in_channels, widths, rate, first_block_shared=ksac)
                                    for rate in rates)
        self.pooling = ImagePooling(in_channels, ASPP_CHANNELS)
        self.project = nn.Sequential(nn.Conv2d(5 * ASPP_CHANNELS, ASPP_CHANNELS, 1, bias=False),
                                     nn.BatchNorm2d(ASPP_CHANNELS), nn.ReLU(inplace=True), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(the projected output, the three atrous branches' outputs)."""
        atrous = [branch(x, self.shared_block) for branch in self.atrous]
        out = self.project(torch.cat([self.pointwise(x), *atrous, self.pooling(x)], dim=1))
        return out, atrous


class Decoder(nn.Module):
    """DeepLabV3+'s decoder: low-level features 1x1 -> 48, concat with the upsampled ASPP output (304 channels),
    one 3x3 block 304 -> 256 + BN + ReLU, 1x1 classifier with bias.

    The 3x3 block is the ASPP's block kind (Section 4.2.1: the cheap block replaces the 3x3 convs "in the added
    decoder module and ASPP"); CASPP-n uses a bottleneck, which is what Tables 5.4 and A.2 count. KSAC does not
    touch it: it has a single rate, and Table 5.1's KSAC savings are exactly two atrous blocks.
    """

    def __init__(self, low_channels: int, num_classes: int, kind: str) -> None:
        super().__init__()
        self.project = _conv_bn_relu(low_channels, LOW_LEVEL_CHANNELS)
        self.fuse = BlockLayer(kind, LOW_LEVEL_CHANNELS + ASPP_CHANNELS, ASPP_CHANNELS, rate=1)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)

    def forward(self, low: Tensor, aspp_out: Tensor) -> Tensor:
        low = self.project(low)
        up = F.interpolate(aspp_out, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.relu(self.fuse(torch.cat([low, up], dim=1), rate=1)))


# ------------------------------------------------------------------------------------------------------------ model
def _check_arguments(backbone: str, num_classes: int, output_stride: int, aspp: str) -> None:
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")
    if aspp not in ASPP_KINDS:
        raise UserError(f"unknown ASPP kind {aspp!r}: choose one of {', '.join(ASPP_KINDS)}")
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"output stride {output_stride!r} is not supported: choose one of "
                        f"{', '.join(map(str, OUTPUT_STRIDES))}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an integer >= 2 (background and at least one class), got "
                        f"{num_classes!r}")


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ of source 004. All backbone parameters live under ``.backbone`` (Section 4.1.1: the backbone
    trains with a 10x lower learning rate); ``head_parameters()`` are the rest."""

    def __init__(self, backbone: str = "resnet50", num_classes: int = 21, output_stride: int = 16,
                 aspp: str = "ST", ksac: bool = False, atrous_rates: tuple[int, int, int] | None = None) -> None:
        """``atrous_rates``: the three rates of the atrous branches; None = the thesis's for ``output_stride``
        (``_ATROUS_RATES``). Rates change no parameter and no multiply-add, only where the taps read."""
        super().__init__()
        _check_arguments(backbone, num_classes, output_stride, aspp)
        rates = _ATROUS_RATES[output_stride] if atrous_rates is None else tuple(int(r) for r in atrous_rates)
        if len(rates) != 3 or min(rates) < 1:
            raise UserError(f"atrous_rates must be three rates >= 1, got {atrous_rates!r}")
        self.backbone_name, self.num_classes, self.output_stride = backbone, num_classes, output_stride
        self.aspp_kind, self.ksac = aspp, bool(ksac)
        self._custom_rates = rates != _ATROUS_RATES[output_stride]
        self.backbone = _build_backbone(backbone, output_stride)
        self.aspp = ASPP(self.backbone.high_channels, rates, aspp, self.ksac)
        self.decoder = Decoder(self.backbone.low_channels, num_classes, _block_kind(aspp))
        self._init_head()

    def _init_head(self) -> None:
        """As the reference code's DeepLabHeadV3Plus: Kaiming-normal convs, BN weight 1 and bias 0."""
        for module in [*self.aspp.modules(), *self.decoder.modules()]:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def atrous_rates(self) -> tuple[int, int, int]:
        return tuple(branch.rate for branch in self.aspp.atrous)

    def config(self) -> dict:
        """What identifies this architecture in a checkpoint (``DeepLabV3Plus(**without "arch")`` rebuilds it)."""
        config = {"arch": "deeplabv3plus", "backbone": self.backbone_name, "num_classes": self.num_classes,
                  "output_stride": self.output_stride, "aspp": self.aspp_kind, "ksac": self.ksac}
        if self._custom_rates:   # only when not the thesis's: checkpoints of the thesis's rates stay as they were
            config["atrous_rates"] = list(self.atrous_rates)
        return config

    def head_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the backbone (ASPP, decoder, classifier)."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, dict]:
        """Logits (N, num_classes, H, W) at the input size; with ``return_features`` also, from the same pass,
        {"atrous": the three atrous branches' outputs, "aspp": the ASPP output} (attention transfer, Section 5.2.1)."""
        small, features = self.decode(x)
        logits = upsample_logits(small, x.shape[-2:])
        return (logits, features) if return_features else logits

    def decode(self, x: Tensor) -> tuple[Tensor, dict]:
        """The decoder's logits at a quarter of the input size (before the final upsampling; ``upsample_logits``
        gives ``forward``'s) and the ``return_features`` dict: a sixteenth of the memory, for memoising a teacher."""
        low, high = self.backbone(x)
        aspp_out, atrous = self.aspp(high)
        return self.decoder(low, aspp_out), {"atrous": atrous, "aspp": aspp_out}


def upsample_logits(logits: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """The decoder's logits bilinearly resized to the input's ``size`` (DeepLabV3+'s final x4 upsampling)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------- backbone weights
def _guess_backbone(keys: set[str]) -> str:
    if "features.0.0.weight" in keys:
        return "mobilenet_v2"
    if "layer1.0.conv1.weight" in keys:
        return "resnet101" if "layer3.6.conv1.weight" in keys else "resnet50"
    return "no known backbone"


def _is_classifier_key(key: str) -> bool:
    """ImageNet-classifier weights that DeepLabV3+ drops: ResNet's fc, MobileNetV2's classifier and last conv."""
    return key.startswith(("fc.", "classifier.", "features.18."))


def _compared_keys(state_dict: dict) -> set[str]:
    """Keys a weights file must match; BatchNorm's num_batches_tracked is left out (older files lack it)."""
    return {k for k in state_dict if not k.endswith("num_batches_tracked")}


def _load_backbone_state_dict(model: DeepLabV3Plus, state_dict: object, source: str) -> None:
    expected_file = _weights_file_name(model.backbone_name)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{source} is not a state dict of tensors: pass torchvision's ImageNet weights file for "
                        f"{model.backbone_name} ({expected_file})")
    weights = {k: v for k, v in state_dict.items() if not _is_classifier_key(k)}
    expected = model.backbone.state_dict()
    given, wanted = _compared_keys(weights), _compared_keys(expected)
    wrong_shape = [k for k in given & wanted if weights[k].shape != expected[k].shape]
    if given != wanted or wrong_shape:
        raise UserError(f"{source} does not hold {model.backbone_name} weights (it looks like "
                        f"{_guess_backbone(set(state_dict))}): pass torchvision's ImageNet file for "
                        f"{model.backbone_name} ({expected_file}) or build the model with the file's backbone")
    model.backbone.load_state_dict(weights, strict=False)


def load_backbone_weights(model: DeepLabV3Plus, path: str | Path) -> None:
    """Load a torchvision ImageNet state dict file (e.g. resnet50-0676ba61.pth, mobilenet_v2-b0353104.pth) into
    ``model.backbone``, dropping the classifier weights. A missing, unreadable or other-backbone file: UserError."""
    path = Path(path)
    wanted = (f"the path of torchvision's ImageNet weights for {model.backbone_name} "
              f"({_weights_file_name(model.backbone_name)})")
    state_dict = read_weights_file(path, "backbone weights file", wanted)
    _load_backbone_state_dict(model, state_dict, f"backbone weights file {path}")


def _load_imagenet_weights(model: DeepLabV3Plus) -> None:
    """torchvision's ImageNet weights, kept in torch.hub's checkpoints folder (see ``common.weight_files``)."""
    state_dict = fetch_torchvision_weights(_IMAGENET_WEIGHTS[model.backbone_name], "ImageNet weights",
                                           "--backbone-weights")
    _load_backbone_state_dict(model, state_dict, f"ImageNet weights {_weights_file_name(model.backbone_name)}")


def build_deeplabv3plus(backbone: str = "resnet50", num_classes: int = 21, output_stride: int = 16,
                        aspp: str = "ST", ksac: bool = False, pretrained_backbone: bool = False,
                        backbone_weights: str | Path | None = None,
                        atrous_rates: tuple[int, int, int] | None = None) -> DeepLabV3Plus:
    """DeepLabV3+ of source 004; see ``BACKBONES``, ``ASPP_KINDS``, ``OUTPUT_STRIDES``.

    ``pretrained_backbone`` loads torchvision's ImageNet weights (downloading them if needed);
    ``backbone_weights`` loads them from a local file instead. ``atrous_rates``: see ``DeepLabV3Plus``.
    """
    if pretrained_backbone and backbone_weights is not None:
        raise UserError("pass either pretrained_backbone (download the ImageNet weights) or backbone_weights "
                        "(a local file), not both")
    model = DeepLabV3Plus(backbone, num_classes, output_stride, aspp, ksac, atrous_rates)
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    elif pretrained_backbone:
        _load_imagenet_weights(model)
    return model
