"""Tests for common/metrics.py on a hand-built example."""
from __future__ import annotations

import math

import pytest
import torch

from common.metrics import (ConfusionMatrix, confusion_matrix, foreground_iou, iou_per_class, mean_iou,
                            pixel_accuracy)

# Non-ignored (true, pred) pairs: (0,0) (0,1) (1,1) (1,0) (1,1) -> [[1, 1], [1, 2]]
TARGET = torch.tensor([[0, 0, 1], [1, 255, 1]])
PRED = torch.tensor([[0, 1, 1], [0, 1, 1]])
EXPECTED = [[1, 1], [1, 2]]


def test_confusion_matrix_exact():
    conf = confusion_matrix(PRED, TARGET, num_classes=2)
    assert conf.dtype == torch.int64
    assert conf.tolist() == EXPECTED


def test_metrics_hand_values():
    conf = torch.tensor(EXPECTED)
    # IoU_0 = 1 / (1 + 1 + 1), IoU_1 = 2 / (2 + 1 + 1)
    assert iou_per_class(conf).tolist() == pytest.approx([1 / 3, 1 / 2])
    assert iou_per_class(conf).dtype == torch.float64
    assert mean_iou(conf) == pytest.approx(5 / 12)
    assert foreground_iou(conf) == pytest.approx(1 / 2)
    assert pixel_accuracy(conf) == pytest.approx(3 / 5)


def test_absent_class_is_nan_and_skipped():
    conf = confusion_matrix(PRED, TARGET, num_classes=3)
    assert conf.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]
    iou = iou_per_class(conf)
    assert math.isnan(iou[2].item())
    assert mean_iou(conf) == pytest.approx(5 / 12)


def test_streaming_equals_single_update():
    cm = ConfusionMatrix(num_classes=2)
    cm.update(PRED[0], TARGET[0])
    cm.update(PRED[1], TARGET[1])
    assert cm.matrix.tolist() == EXPECTED
    assert cm.miou == pytest.approx(5 / 12)
    assert cm.foreground_iou == pytest.approx(1 / 2)
    assert cm.pixel_accuracy == pytest.approx(3 / 5)
    assert cm.iou_per_class().tolist() == pytest.approx([1 / 3, 1 / 2])
    cm.reset()
    assert cm.matrix.sum().item() == 0


def test_out_of_range_label_raises():
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 2]), num_classes=2)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, -1]), num_classes=2)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), num_classes=2)


def test_foreground_iou_needs_binary():
    with pytest.raises(ValueError):
        foreground_iou(torch.eye(3, dtype=torch.int64))
