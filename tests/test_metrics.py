"""Tests for common/metrics.py on hand-built examples: the confusion-matrix metrics, and the evaluation and prediction
of a network on whole images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.images import IMAGENET_MEAN, IMAGENET_STD
from common.metrics import (ConfusionMatrix, confusion_matrix, evaluate_segmentation, foreground_iou, iou_per_class,
                            logits_of, mean_iou, pixel_accuracy, predict_segmentation)

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


# ---- whole images: evaluate_segmentation, predict_segmentation, logits_of -------------------------------------------
# A conv-free network whose logits are known: pixel logits = TABLE[k], k = the pixel's red value / 50 (0, 50 or 100),
# read back from the ImageNet-normalised input. Zero padding (the mean colour, red 124) reads as k = 2.
TABLE = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [0.0, 0.0, 3.0]])


class RedCode(torch.nn.Module):
    def __init__(self, with_features: bool = False) -> None:
        super().__init__()
        self.with_features = with_features

    def forward(self, x: torch.Tensor):
        red = x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]            # back to [0, 1]
        k = (red * 255 / 50).round().long().clamp(0, 2)                # (N, H, W)
        logits = TABLE[k].permute(0, 3, 1, 2)                          # (N, 3, H, W)
        return (logits, {"k": k}) if self.with_features else logits


def image_of(codes: list[list[int]]) -> torch.Tensor:
    """uint8 (3, H, W) whose red channel is 50 x code; green and blue are arbitrary."""
    red = torch.tensor(codes, dtype=torch.uint8) * 50
    return torch.stack([red, torch.full_like(red, 7), torch.full_like(red, 200)])


# image 1 predicts [[0, 1, 2], [2, 0, 1]], image 2 [[0, 0]]
DATASET = [(image_of([[0, 1, 2], [2, 0, 1]]), torch.tensor([[0, 1, 1], [2, 255, 1]])),
           (image_of([[0, 0]]), torch.tensor([[0, 1]]))]
# labelled (true, predicted): (0,0) (1,1) (1,2) (2,2) (1,1) | (0,0) (1,0) -> rows true, columns predicted:
# [[2, 0, 0], [1, 2, 1], [0, 0, 1]]: IoU 2/3, 2/4, 1/2; 5 of 7 pixels right
LABELLED = [(0, 0), (1, 1), (1, 2), (2, 2), (1, 1), (0, 0), (1, 0)]


def test_evaluate_segmentation_by_hand():
    model = RedCode().train()
    result = evaluate_segmentation(model, DATASET, torch.device("cpu"), 3)
    assert model.training                                             # the mode is restored
    assert result["iou_per_class"] == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert result["miou"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    assert result["pixel_accuracy"] == pytest.approx(5 / 7)
    logits = torch.stack([TABLE[k] for _, k in LABELLED])             # the 7 labelled pixels; 255 left out
    target = torch.tensor([t for t, _ in LABELLED])
    assert result["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)


def test_evaluate_segmentation_reports_none_for_an_absent_class():
    result = evaluate_segmentation(RedCode(), DATASET, torch.device("cpu"), 4)   # class 3: never labelled nor predicted
    assert result["iou_per_class"][:3] == pytest.approx([2 / 3, 1 / 2, 1 / 2]) and result["iou_per_class"][3] is None
    assert result["miou"] == pytest.approx(5 / 9)


def test_evaluate_segmentation_padded_and_cropped_back_equals_unpadded():
    plain = evaluate_segmentation(RedCode(), DATASET, torch.device("cpu"), 3)
    assert evaluate_segmentation(RedCode(), DATASET, torch.device("cpu"), 3, pad_to=4) == plain
    with pytest.raises(ValueError, match="2x3 image does not fit"):
        evaluate_segmentation(RedCode(), DATASET, torch.device("cpu"), 3, pad_to=2)


def test_logits_of_takes_the_first_of_a_tuple_and_evaluation_uses_it():
    x = torch.zeros(1)
    assert logits_of(x) is x and logits_of((x, "features")) is x and logits_of([x, 1]) is x
    assert (evaluate_segmentation(RedCode(with_features=True), DATASET, torch.device("cpu"), 3)
            == evaluate_segmentation(RedCode(), DATASET, torch.device("cpu"), 3))


def test_predict_segmentation():
    model = RedCode(with_features=True).train()
    for pad_to in (None, 8):
        prediction = predict_segmentation(model, DATASET[0][0], pad_to=pad_to)
        assert isinstance(prediction, np.ndarray) and prediction.tolist() == [[0, 1, 2], [2, 0, 1]]
    assert model.training
