"""Segmentation metrics from a confusion matrix (IoU per class, mean IoU, foreground IoU, pixel accuracy), and the
one evaluation (``evaluate_segmentation``) and prediction (``predict_segmentation``) of a network on whole images
that every VOC-style script uses.

Source 002 reports "Intersection Over Union score" for the final binary (background / mitochondria) models
('Performance Metrics', 'Making It Work'); for a binary task we read it as the IoU of the foreground class 1.
The confusion matrix has rows = true class, columns = predicted class; pixels whose target is ``ignore_index``
are left out.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.devices import Distributed, all_reduce_sum, autocast
from common.images import IGNORE_INDEX, normalize


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(C, C) int64 counts: entry [t, p] = number of pixels with true class t predicted as p.

    ``pred`` and ``target`` are integer class ids of equal shape. Raises ValueError if a non-ignored target (or a
    prediction) lies outside [0, num_classes), rather than silently counting it in the wrong cell.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("pred and target must be integer class ids (did you pass logits? take argmax(dim=1))")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    for name, t in (("target", target), ("pred", pred)):
        bad = (t < 0) | (t >= num_classes)
        if bad.any():
            raise ValueError(f"{name} values must lie in [0, {num_classes}) (or be ignore_index={ignore_index} "
                             f"in target); found {t[bad].unique()[:10].tolist()}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(conf: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP / (TP + FP + FN) per class, float64; NaN for a class absent from both target and prediction."""
    conf = conf.double()
    tp = conf.diagonal()
    return tp / (conf.sum(dim=0) + conf.sum(dim=1) - tp)


def mean_iou(conf: torch.Tensor) -> float:
    """Mean of the per-class IoUs over the classes that occur (NaN classes are skipped)."""
    return float(torch.nanmean(iou_per_class(conf)))


def foreground_iou(conf: torch.Tensor) -> float:
    """IoU of class 1 for a binary task (2x2 confusion matrix)."""
    if tuple(conf.shape) != (2, 2):
        raise ValueError(f"foreground_iou needs a 2x2 confusion matrix, got {tuple(conf.shape)}")
    return float(iou_per_class(conf)[1])


def pixel_accuracy(conf: torch.Tensor) -> float:
    """Correctly classified pixels / all non-ignored pixels = trace(conf) / sum(conf)."""
    conf = conf.double()
    return float(conf.diagonal().sum() / conf.sum())


class ConfusionMatrix:
    """Streaming confusion matrix: call ``update(pred, target)`` per batch, read the metrics at the end."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu()

    def iou_per_class(self) -> torch.Tensor:
        return iou_per_class(self.matrix)

    @property
    def miou(self) -> float:
        return mean_iou(self.matrix)

    @property
    def foreground_iou(self) -> float:
        return foreground_iou(self.matrix)

    @property
    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)


# ------------------------------------------------------------------------------------------------ whole images
def logits_of(output: torch.Tensor | tuple | list) -> torch.Tensor:
    """The logits of a network's output: the output itself, or its first element (an exported graph that also
    returns features, say)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _network_input(image: torch.Tensor, pad_to: int | None) -> torch.Tensor:
    """uint8 (3, H, W) -> normalised (1, 3, H, W); ``pad_to`` S: zeros (the mean colour) right and below, to S x S."""
    x = normalize(image)[None]
    if pad_to is None:
        return x
    h, w = image.shape[-2:]
    if h > pad_to or w > pad_to:
        raise ValueError(f"a {h}x{w} image does not fit the {pad_to}x{pad_to} input it is to be padded to")
    return F.pad(x, (0, pad_to - w, 0, pad_to - h))


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset, device: torch.device, num_classes: int, *, amp: bool = False,
                          cpu_bf16: bool = False, pad_to: int | None = None,
                          ddp: Distributed = Distributed()) -> dict:
    """mIoU, pixel accuracy, per-class IoU and cross-entropy of ``model`` on the whole images of ``dataset``
    (items ``(image uint8 (3, H, W), mask int64 (H, W))``), at a single scale, pixels labelled 255 left out.

    Inputs are ImageNet-normalised (``common.images.normalize``); ``pad_to`` S pads each one to S x S (a network
    that needs sides divisible by 16, or a lowered int8 graph of one input shape) and crops the logits back. The
    summed loss stays on the device (no host sync per image). Under torchrun each process takes every N-th image
    and the confusion matrices and sums are added up, so every rank returns the same numbers.

    Returns {"miou", "pixel_accuracy", "val_loss" (mean over labelled pixels), "iou_per_class" (None for a class
    absent from both labels and predictions)}. ``amp`` / ``cpu_bf16``: see ``common.devices.autocast``.
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    sums = torch.zeros(2, dtype=torch.float64, device=device)    # summed cross-entropy, labelled pixels
    for i in range(ddp.rank, len(dataset), ddp.world_size):
        image, mask = dataset[i]
        h, w = mask.shape
        x, y = _network_input(image, pad_to).to(device), mask[None].to(device)
        with autocast(device, amp, cpu_bf16):
            logits = logits_of(model(x))[..., :h, :w].float()
        sums[0] += F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")
        sums[1] += (y != IGNORE_INDEX).sum()
        cm.update(logits.argmax(1), y)
    model.train(was_training)
    totals = all_reduce_sum(torch.cat([cm.matrix.flatten().double().to(device), sums]), ddp).cpu()
    cm.matrix = totals[:-2].round().long().reshape(num_classes, num_classes)
    return {"miou": cm.miou, "val_loss": float(totals[-2] / max(float(totals[-1]), 1.0)),
            "pixel_accuracy": cm.pixel_accuracy,
            "iou_per_class": [None if math.isnan(v) else v for v in cm.iou_per_class().tolist()]}


@torch.no_grad()
def predict_segmentation(model: nn.Module, image: torch.Tensor, *, pad_to: int | None = None) -> np.ndarray:
    """(H, W) class ids that ``model`` predicts for one uint8 (3, H, W) image, in eval mode, on the model's device
    (the CPU for a graph without parameters); ``pad_to``: as in ``evaluate_segmentation``. For figures."""
    h, w = image.shape[-2:]
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    logits = logits_of(model(_network_input(image, pad_to).to(device)))[..., :h, :w]
    model.train(was_training)
    return logits.argmax(1)[0].cpu().numpy()
