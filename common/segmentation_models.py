"""torchvision's FCN and DeepLabV3 segmentation networks, built the same way for every script that uses them.

``reproduce_fcn_kd.py`` distils ``fcn_resnet101`` into ``fcn_resnet50``; ``reproduce_qkd.py`` and
``reproduce_intra_kd.py`` use ``deeplabv3_resnet101`` as teacher. This module wraps torchvision's builders (the
networks are not reimplemented) and handles their weights:

* whole-network weights: torchvision's COCO-with-VOC-labels weights (``"coco"``, kept in torch.hub's checkpoints
  folder and read by ``common.weight_files``, hash-checked and tensors-only), a checkpoint written by this
  repository's ``save_weights``, or a raw torchvision state dict file such as the COCO file itself;
* backbone weights: torchvision's ImageNet ResNet weights (``"imagenet"``) or a local ResNet state dict file.

Every file is checked against the network before it is loaded, so a wrong file is a one-line ``UserError`` that says
what the file looks like and what is needed. The networks are built without torchvision's auxiliary head: the
scripts' losses have no auxiliary term, so it would only add parameters and multiply-adds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import segmentation

from common.atrous import AtrousConv2d
from common.errors import UserError
from common.runs import load_weights
from common.weight_files import fetch_torchvision_weights, published_file_name, read_weights_file

ARCHITECTURES = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")
COCO_CLASSES = 21  # torchvision's COCO weights predict background and the 20 Pascal VOC categories

_BUILDERS = {
    "fcn_resnet50": segmentation.fcn_resnet50,
    "fcn_resnet101": segmentation.fcn_resnet101,
    "deeplabv3_resnet50": segmentation.deeplabv3_resnet50,
    "deeplabv3_resnet101": segmentation.deeplabv3_resnet101,
}
_COCO_WEIGHTS = {
    "fcn_resnet50": segmentation.FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
    "fcn_resnet101": segmentation.FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
    "deeplabv3_resnet50": segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
    "deeplabv3_resnet101": segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
}
# ImageNet weights of the backbones: torchvision's "V1" files, the ones its segmentation models were trained from.
_IMAGENET_WEIGHTS = {
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
}


def _published(weights: torchvision.models.WeightsEnum) -> dict:
    metrics = weights.meta["_metrics"]["COCO-val2017-VOC-labels"]
    return {"miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"], "num_params": weights.meta["num_params"],
            "gmacs": weights.meta["_ops"]}


# torchvision's published numbers for its COCO-with-VOC-labels weights. The metrics are measured on COCO val2017
# restricted to the 20 VOC categories, not on Pascal VOC val. "num_params" and "gmacs" (torchvision's "_ops", GMACs
# of one 520x520 image) include the auxiliary FCN head, which our networks leave out. Source 001's teacher mIoU,
# 63.7, is exactly torchvision's number for fcn_resnet101's COCO weights.
PUBLISHED = {arch: _published(weights) for arch, weights in _COCO_WEIGHTS.items()}


def _resnet_of(arch: str) -> str:
    return arch.split("_")[1]


def _check_arguments(arch: str, num_classes: int) -> None:
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an integer >= 2 (background and at least one class), got "
                        f"{num_classes!r}")


# ------------------------------------------------------------------------------------------------------------ model
class TorchvisionSegmenter(nn.Module):
    """One of torchvision's FCN / DeepLabV3 networks (``.net``) without its auxiliary head, with the interface the
    scripts share with common.deeplab: ``backbone``, ``head_parameters()``, ``config()`` and features from the
    same forward pass for distillation."""

    def __init__(self, arch: str, num_classes: int = 21) -> None:
        super().__init__()
        _check_arguments(arch, num_classes)
        self.arch, self.num_classes = arch, num_classes
        # aux_loss=False: no auxiliary FCN head on layer3, since the scripts' losses have no auxiliary term.
        self.net = _BUILDERS[arch](weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        if arch.startswith("deeplabv3"):   # ASPP: [1x1 conv, three atrous branches, image pooling]
            for branch in self.net.classifier[0].convs[1:-1]:
                branch[0] = AtrousConv2d.like(branch[0])     # the same parameters and state-dict keys
        # channels-last weights: the convolutions run in NHWC (the inputs follow), which trained FCN-ResNet50/101
        # and DeepLabV3-ResNet50/101 at 0.95-0.78x the time in fp32 and 0.94-0.84x in bf16 (benchmarks/compare.py,
        # 2-core AMD EPYC, 2026-12-05); the numbers are a contiguous network's up to float rounding.
        self.net.to(memory_format=torch.channels_last)

    @property
    def backbone(self) -> nn.Module:
        """The dilated ResNet (output stride 8) as torchvision's IntermediateLayerGetter: its state-dict keys are
        ResNet's without ``fc.``, so ImageNet files load into it directly."""
        return self.net.backbone

    def head_parameters(self) -> list[nn.Parameter]:
        """The classifier's parameters (FCN head or DeepLab head): everything outside the backbone."""
        return list(self.net.classifier.parameters())

    def config(self) -> dict:
        """What identifies this network in a checkpoint (common.runs.save_weights / load_weights)."""
        return {"arch": self.arch, "num_classes": self.num_classes}

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, dict]:
        """Logits (N, num_classes, H, W) at the input size, exactly torchvision's ``net(x)["out"]``.

        With ``return_features`` also, from the same pass, {"backbone": layer4's output, "head": the classifier's
        output before its last 1x1 conv} (for DeepLabV3: after ASPP and the 3x3 conv; for FCN: after the 3x3 conv
        and, in training mode, its dropout).
        """
        backbone_out = self.net.backbone(x)["out"]
        logits, head_out = self.head_forward(backbone_out, x.shape[-2:])
        if return_features:
            return logits, {"backbone": backbone_out, "head": head_out}
        return logits

    def head_forward(self, backbone_out: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The classifier on layer4's output ``backbone_out``: (logits upsampled to ``size``, the head's features
        before its last 1x1 conv), as ``forward`` computes them; for a fixed backbone whose output is computed once
        and reused (reproduce_qkd.py's co-studied teachers)."""
        head_out = backbone_out
        *head, last = self.net.classifier  # slicing FCNHead / DeepLabHead would call their constructors
        for layer in head:
            head_out = layer(head_out)
        return F.interpolate(last(head_out), size=size, mode="bilinear", align_corners=False), head_out


# ------------------------------------------------------------------------------------------------ reading weights
@lru_cache(maxsize=None)
def _expected_shapes(arch: str, num_classes: int) -> dict[str, torch.Size]:
    """Key -> shape of the network's state dict, from a copy on the meta device (shapes only, built in a blink), so
    a wrong file fails before the real network is built. BatchNorm's num_batches_tracked is left out (older files
    lack it)."""
    with torch.device("meta"):
        state = TorchvisionSegmenter(arch, num_classes).net.state_dict()
    return {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _backbone_shapes(arch: str) -> dict[str, torch.Size]:
    return {k[len("backbone."):]: v for k, v in _expected_shapes(arch, COCO_CLASSES).items()
            if k.startswith("backbone.")}


def _fits(state_dict: dict, expected: dict[str, torch.Size]) -> bool:
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    return given.keys() == expected.keys() and all(v.shape == expected[k] for k, v in given.items())


def _is_state_dict(state: object) -> bool:
    return isinstance(state, dict) and bool(state) and all(isinstance(v, Tensor) for v in state.values())


def _is_repository_checkpoint(state: object) -> bool:
    """A file of common.runs.save_weights: {"arch": config, "model": state dict, ...}."""
    return isinstance(state, dict) and "model" in state


# ------------------------------------------------------------------------------------- what a weights file looks like
_RESNETS = {(True, 6): "resnet50", (True, 23): "resnet101", (True, 36): "resnet152", (False, 2): "resnet18",
            (False, 6): "resnet34"}


def _resnet_name(keys: set[str], prefix: str = "") -> str:
    """The ResNet depth from the number of layer3 blocks and whether they are bottlenecks (conv3)."""
    blocks = {k[len(prefix):].split(".")[1] for k in keys if k.startswith(prefix + "layer3.")}
    bottleneck = f"{prefix}layer1.0.conv3.weight" in keys
    return _RESNETS.get((bottleneck, len(blocks)), f"resnet with {len(blocks)} blocks in layer3")


def _head_name(state_dict: dict) -> str:
    """DeepLabHead starts with ASPP (classifier.0.convs...); FCNHead with a 3x3 conv 2048 -> 512."""
    if any(k.startswith("classifier.0.convs.") for k in state_dict):
        return "deeplabv3"
    first = state_dict.get("classifier.0.weight")
    return "fcn" if first is not None and tuple(first.shape) == (512, 2048, 3, 3) else "unknown-head"


def _class_count(state_dict: dict) -> int | None:
    """Output channels of the classifier's last layer (classifier.4 in both torchvision heads)."""
    layers = [int(m.group(1)) for k in state_dict if (m := re.fullmatch(r"classifier\.(\d+)\.weight", k))]
    return state_dict[f"classifier.{max(layers)}.weight"].shape[0] if layers else None


def _describe(state: object) -> str:
    """A short guess at what a loaded weights file holds, for error messages."""
    if _is_repository_checkpoint(state):
        return f"a checkpoint of this repository for {state.get('arch')}"
    if not _is_state_dict(state):
        return "no state dict of tensors"
    keys = set(state)
    if "layer1.0.conv1.weight" in keys:
        return f"a {_resnet_name(keys)} classification network"
    if "backbone.layer1.0.conv1.weight" in keys:
        network = f"{_head_name(state)}_{_resnet_name(keys, 'backbone.')}"
        classes = _class_count(state)
        return network if classes is None else f"{network} with {classes} classes"
    return "no torchvision ResNet or segmentation network"


# ------------------------------------------------------------------------------------------------ loading weights
def _network_state_dict(arch: str, num_classes: int, state: object, source: str, wanted: str) -> dict:
    """The file's state dict without ``aux_classifier.*`` (we build no auxiliary head), checked against the network."""
    if not _is_state_dict(state):
        raise UserError(f"{source} is not a state dict of tensors (it looks like {_describe(state)}): pass {wanted}")
    network = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    if not _fits(network, _expected_shapes(arch, num_classes)):
        raise UserError(f"{source} does not hold {arch} weights with {num_classes} classes (it looks like "
                        f"{_describe(state)}): pass {wanted} (or change the flags to match the file)")
    return network


@dataclass(frozen=True)
class WeightFlags:
    """How the calling script takes weights on its command line, so that every error names a flag it really has.

    ``network_file``: the flag that takes a whole-network file; ``network_download``: the exact words that fetch
    torchvision's COCO weights (e.g. "--teacher-weights coco"), None where the script offers none;
    ``backbone_file`` and ``backbone_download``: likewise for ImageNet backbone weights.
    """

    network_file: str = "--teacher-checkpoint"
    network_download: str | None = None
    backbone_file: str = "--backbone-weights"
    backbone_download: str | None = None


def _coco_state_dict(arch: str, num_classes: int, flags: WeightFlags) -> dict:
    file_name = published_file_name(_COCO_WEIGHTS[arch])
    if num_classes != COCO_CLASSES:
        instead = flags.backbone_download or f"{flags.backbone_file} FILE"
        raise UserError(f"torchvision's COCO weights for {arch} predict {COCO_CLASSES} classes (background and the "
                        f"20 VOC categories), not {num_classes}: use {COCO_CLASSES} classes with them, or start from "
                        f"ImageNet backbone weights ({instead})")
    state = fetch_torchvision_weights(_COCO_WEIGHTS[arch], "COCO weights", flags.network_file)
    return _network_state_dict(arch, num_classes, state, f"torchvision's COCO weights {file_name}",
                               f"torchvision's {file_name}")


def _network_wanted(arch: str, num_classes: int, flags: WeightFlags) -> str:
    """What a whole-network file must be; torchvision's COCO file only where it fits (21 classes)."""
    wanted = f"a checkpoint of {arch} with {num_classes} classes written by this repository"
    if num_classes != COCO_CLASSES:
        return wanted
    coco = f"torchvision's {published_file_name(_COCO_WEIGHTS[arch])}"
    if flags.network_download:
        return f"{wanted}, {coco}, or {flags.network_download} to download it"
    return f"{wanted} or {coco}"


def _with_network_weights(arch: str, num_classes: int, weights: str | Path,
                          flags: WeightFlags) -> TorchvisionSegmenter:
    if weights == "coco":
        state_dict = _coco_state_dict(arch, num_classes, flags)
    else:
        path, wanted = Path(weights), _network_wanted(arch, num_classes, flags)
        state = read_weights_file(path, flags.network_file, wanted)
        if _is_repository_checkpoint(state):  # load_weights reads it again and checks "arch" against config()
            model = TorchvisionSegmenter(arch, num_classes)
            load_weights(model, path, what=flags.network_file)
            return model
        state_dict = _network_state_dict(arch, num_classes, state, f"{flags.network_file} {path}", wanted)
    model = TorchvisionSegmenter(arch, num_classes)
    model.net.load_state_dict(state_dict, strict=False)  # strict=False: only num_batches_tracked may be missing
    return model


def _backbone_state_dict(arch: str, backbone_weights: str | Path, flags: WeightFlags) -> dict:
    """An ImageNet ResNet state dict without ``fc.*``, checked against the network's backbone."""
    resnet = _resnet_of(arch)
    file_name = published_file_name(_IMAGENET_WEIGHTS[resnet])
    wanted = f"torchvision's ImageNet file for {resnet} ({file_name})"
    if flags.backbone_download:
        wanted += f", or {flags.backbone_download} to download it"
    if backbone_weights == "imagenet":
        state = fetch_torchvision_weights(_IMAGENET_WEIGHTS[resnet], "ImageNet weights", flags.backbone_file)
        source = f"torchvision's ImageNet weights {file_name}"
    else:
        path = Path(backbone_weights)
        state, source = read_weights_file(path, flags.backbone_file, wanted), f"{flags.backbone_file} {path}"
    if not _is_state_dict(state):
        raise UserError(f"{source} is not a state dict of tensors (it looks like {_describe(state)}): pass {wanted}")
    weights = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if not _fits(weights, _backbone_shapes(arch)):
        raise UserError(f"{source} does not hold {resnet} weights (it looks like {_describe(state)}): pass "
                        f"{wanted} (or change the flags to match the file)")
    return weights


def build_segmenter(arch: str, num_classes: int = 21, weights: str | Path | None = None,
                    backbone_weights: str | Path | None = None,
                    flags: WeightFlags = WeightFlags()) -> TorchvisionSegmenter:
    """One of ``ARCHITECTURES`` with ``num_classes`` outputs, randomly initialised unless told otherwise.

    ``weights``: the whole network's weights: ``"coco"`` (torchvision's COCO-with-VOC-labels weights, 21 classes,
    downloaded once into torch.hub's checkpoints folder) or the path of a checkpoint written by ``save_weights`` or
    of a torchvision state dict file. ``backbone_weights``: ``"imagenet"`` (torchvision's ImageNet weights) or the
    path of a torchvision ResNet state dict file; the head stays random. ``flags``: the script's flags, named in
    error messages. Files are checked before the network is built, and read tensors-only (``weights_only``).
    """
    _check_arguments(arch, num_classes)
    if weights is not None and backbone_weights is not None:
        raise UserError(f"pass either {flags.network_file} (the whole network) or {flags.backbone_file} (the "
                        f"backbone only), not both: whole-network weights already hold a backbone")
    if weights is not None:
        return _with_network_weights(arch, num_classes, weights, flags)
    backbone_state = None
    if backbone_weights is not None:
        backbone_state = _backbone_state_dict(arch, backbone_weights, flags)
    model = TorchvisionSegmenter(arch, num_classes)
    if backbone_state is not None:
        model.backbone.load_state_dict(backbone_state, strict=False)  # only num_batches_tracked may be missing
    return model
