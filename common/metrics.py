"""Segmentation metrics from a confusion matrix: IoU per class, mean IoU, foreground IoU, pixel accuracy.

Source 002 reports "Intersection Over Union score" for the final binary (background / mitochondria) models
('Performance Metrics', 'Making It Work'); for a binary task we read it as the IoU of the foreground class 1.
The confusion matrix has rows = true class, columns = predicted class; pixels whose target is ``ignore_index``
are left out.
"""
from __future__ import annotations

import torch


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
