"""IntRA-KD's moment graphs and SAD's resizing (source 003; common.losses): the two-pass moments on degenerate
regions, shift invariance, the loss against a per-region loop, area-weighted against nearest masks, and SAD at the
input size. The older tests of these losses are in test_losses.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.losses import intra_affinity_graphs, intra_affinity_loss, self_attention_distillation_loss


def degenerate_case() -> tuple[torch.Tensor, torch.Tensor]:
    """One image, 4 channels of magnitude ~1e3 (float64) on 2x4 pixels: class 1 = one pixel, class 2 = three pixels
    of one repeated, inexact value (1000.1 summed three times rounds), class 0 = the rest, with random values."""
    torch.manual_seed(0)
    feat = 1e3 + torch.randn(1, 4, 2, 4, dtype=torch.float64)
    labels = torch.tensor([[[0, 1, 2, 2], [0, 0, 2, 0]]])
    value = torch.tensor([1000.1, -999.7, 1234.5678, 1e3 / 3], dtype=torch.float64)
    for y, x in ((0, 2), (0, 3), (1, 2)):
        feat[0, :, y, x] = value
    return feat, labels


@pytest.mark.parametrize("masks", ["nearest", "area"])
def test_one_pixel_and_constant_regions_have_exactly_zero_variance_and_skewness(masks):
    feat, labels = degenerate_case()
    present, (mean, var, skew) = intra_affinity_graphs(feat, labels, 3, masks=masks)
    assert present.tolist() == [[True, True, True]]
    # a zero moment vector has cosine 0 with every region, itself included: rows 1 and 2 of both graphs are
    # exactly 0 only if both moments are exactly 0 in every channel (F.normalize keeps any non-zero noise)
    for graph in (var, skew):
        assert graph[0, 1:].abs().max().item() == 0.0 and graph[0, :, 1:].abs().max().item() == 0.0
    assert var[0, 0, 0].item() == pytest.approx(1.0) and skew[0, 0, 0].item() == pytest.approx(1.0)
    assert mean[0].diagonal().tolist() == pytest.approx([1.0, 1.0, 1.0])          # means are not degenerate


def test_the_one_pass_raw_moments_would_not_give_zero_there():
    # why the moments are centred first: E[x^3] - 3 E[x] E[x^2] + 2 E[x]^3 over three copies of 1000.1 is not 0
    x = torch.full((3,), 1000.1, dtype=torch.float64)
    m1, m2, m3 = x.mean(), x.pow(2).mean(), x.pow(3).mean()
    one_pass = m3 - 3 * m1 * m2 + 2 * m1 ** 3
    assert one_pass.item() != 0.0 and abs(one_pass.item() / 1e-6 ** 1.5) > 1e-3   # over (0 + eps)^1.5: not tiny


@pytest.mark.parametrize("masks", ["nearest", "area"])
def test_adding_a_constant_leaves_the_variance_and_skewness_graphs_unchanged(masks):
    torch.manual_seed(1)
    feat = torch.randn(2, 6, 4, 8, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 8, 16))
    labels[0, 0, :3] = 255
    _, (_, var, skew) = intra_affinity_graphs(feat, labels, 4, masks=masks)
    _, (_, var_shifted, skew_shifted) = intra_affinity_graphs(feat + 1e3, labels, 4, masks=masks)
    assert torch.allclose(var, var_shifted, atol=1e-6) and torch.allclose(skew, skew_shifted, atol=1e-6)


def loop_reference(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   eps: float = 1e-6) -> list[float]:
    """The three terms of the loss by a plain loop over images and regions, features and labels of the same size
    (so both mask readings agree): torch.mean / var / the skewness formula on each region's pixels."""
    terms = [0.0, 0.0, 0.0]
    for n in range(labels.shape[0]):
        regions = [k for k in range(num_classes) if (labels[n] == k).any()]
        graphs = []
        for feat in (student[n].double(), teacher[n].double()):
            moments = [[], [], []]
            for k in regions:
                pixels = feat[:, labels[n] == k]                          # (C, count)
                mean = pixels.mean(1)
                var = pixels.var(1, unbiased=False)
                skew = ((pixels - mean[:, None]) ** 3).mean(1) / (var + eps) ** 1.5
                for m, value in enumerate((mean, var, skew)):
                    moments[m].append(value)
            graphs.append([F.normalize(torch.stack(m), dim=1) @ F.normalize(torch.stack(m), dim=1).T
                           for m in moments])
        for m in range(3):
            terms[m] += float(((graphs[0][m] - graphs[1][m]) ** 2).mean()) / labels.shape[0]
    return terms


def test_the_loss_equals_a_per_region_loop():
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 0], [2, 0, 0, 0]],
                           [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 2, 1]]])   # class 2: one pixel here
    expected = loop_reference(student, teacher, labels, 3)
    for masks in ("nearest", "area"):
        for m in range(3):
            weights = [0.0, 0.0, 0.0]
            weights[m] = 1.0
            loss = intra_affinity_loss(student, teacher, labels, 3, weights=weights, masks=masks)
            assert loss.item() == pytest.approx(expected[m], abs=1e-6), (masks, m)
    assert intra_affinity_loss(student, teacher, labels, 3).item() == pytest.approx(sum(expected), abs=1e-6)


def test_area_masks_weight_the_moments_by_the_labelled_fraction_of_each_cell():
    # labels 2x4 -> features 1x2 (stride 2): class 1 covers one pixel of the left cell, which nearest resizing drops
    labels = torch.tensor([[[0, 1, 0, 0], [0, 0, 0, 0]]])
    feat = torch.tensor([[[[2.0, 6.0]], [[1.0, 1.0]]]], dtype=torch.float64)   # channel 0: 2, 6; channel 1: 1, 1
    present, _ = intra_affinity_graphs(feat, labels, 2, masks="nearest")
    assert present.tolist() == [[True, False]]                                  # the marking is lost
    present, (mean, var, skew) = intra_affinity_graphs(feat, labels, 2, masks="area")
    assert present.tolist() == [[True, True]]
    # class 0: weights 3/4 (left cell) and 1 (right cell): mean (0.75 * 2 + 6) / 1.75 = 30/7 in channel 0, 1 in
    # channel 1; variance (0.75 (2 - 30/7)^2 + (6 - 30/7)^2) / 1.75 = 144/49 in channel 0, 0 in channel 1.
    # class 1: only the left cell (weight 1/4): mean (2, 1), variance 0, skewness 0.
    mean0, mean1 = torch.tensor([30 / 7, 1.0]), torch.tensor([2.0, 1.0])
    assert mean[0, 0, 1].item() == pytest.approx(float(F.cosine_similarity(mean0, mean1, dim=0)), abs=1e-6)
    assert var[0, 0, 0].item() == pytest.approx(1.0) and var[0, 1].abs().max().item() == 0.0
    # class 0's skewness in channel 0: (0.75 (-16/7)^3 + (12/7)^3) / 1.75 / (144/49 + 1e-6)^1.5 < 0; a vector
    # (s, 0) has cosine 1 with itself, and class 1's skewness is 0
    assert skew[0, 0, 0].item() == pytest.approx(1.0) and skew[0, 1].abs().max().item() == 0.0


def test_a_constant_regions_gradient_is_finite_and_the_skewness_term_ignores_it():
    feat, labels = degenerate_case()
    student = feat.clone().float().requires_grad_()
    teacher = torch.randn(1, 3, 2, 4)
    intra_affinity_loss(student, teacher, labels, 3, weights=(0, 0, 1)).backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[0, :, 0, 1].abs().max().item() == 0.0                   # the one-pixel region


def test_bad_masks_name():
    with pytest.raises(ValueError, match="area"):
        intra_affinity_graphs(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 2, masks="bilinear")


def test_sad_at_a_given_size_resizes_both_maps_there():
    # shallow (1x2): G = [1, 9]; deep (1x1): G = [4]. At size (1, 4) both are bilinearly upsampled first.
    a = torch.tensor([[[[1.0, 3.0]]]])
    b = torch.tensor([[[[2.0]]]])
    g_a = F.interpolate(torch.tensor([[[[1.0, 9.0]]]]), size=(1, 4), mode="bilinear", align_corners=False)
    psi_a = torch.softmax(g_a.flatten(), 0)
    expected = ((psi_a - 0.25) ** 2).mean().item()                              # the deep map is uniform
    assert self_attention_distillation_loss([a, b], size=(1, 4)).item() == pytest.approx(expected, abs=1e-7)
    p = 1 / (1 + math.exp(8))                                                   # at the shallower size (1, 2)
    assert self_attention_distillation_loss([a, b]).item() == pytest.approx((p - 0.5) ** 2, abs=1e-7)


@pytest.mark.parametrize("masks", ["nearest", "area"])
def test_absent_regions_have_zero_rows_in_every_graph_and_small_regions_match_the_loop(masks):
    # class 3 is absent from image 0 only, class 4 from both; class 2 covers three pixels: the moments of a region
    # are computed on the cells it covers in the batch, which must give the plain loop's terms
    torch.manual_seed(3)
    labels = torch.zeros(2, 4, 6, dtype=torch.long)
    labels[:, 0, 1:4] = 2
    labels[1, 2:, :2] = 3
    labels[0, 3, 5] = 1
    labels[1, 1, 1] = 1
    present, graphs = intra_affinity_graphs(torch.randn(2, 5, 4, 6, dtype=torch.float64), labels, 5, masks=masks)
    assert present.tolist() == [[True, True, True, False, False], [True, True, True, True, False]]
    for graph in graphs:
        absent = ~present
        assert graph[absent].abs().max().item() == 0.0 and graph.transpose(1, 2)[absent].abs().max().item() == 0.0
    student, teacher = torch.randn(2, 5, 4, 6), torch.randn(2, 3, 4, 6)
    expected = loop_reference(student, teacher, labels, 5)
    assert intra_affinity_loss(student, teacher, labels, 5).item() == pytest.approx(sum(expected), abs=1e-6)
