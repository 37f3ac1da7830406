"""Tests for common/losses.py against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.losses import (attention_map, attention_transfer_loss, class_prior_loss, intra_affinity_loss, kd_kl_div,
                           pairwise_similarity_loss, sad_attention, self_attention_distillation_loss,
                           soft_cross_entropy, weighted_cross_entropy)

LN3 = math.log(3.0)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ---- soft_cross_entropy ---------------------------------------------------------------------------------------

def test_soft_ce_hand_value():
    # teacher [0, ln 3] -> p_T = [1/4, 3/4]; student [0, 0] -> p_S = [1/2, 1/2]; H = -(1/4 + 3/4) ln(1/2) = ln 2
    loss = soft_cross_entropy(t([[0.0, 0.0]]), t([[0.0, LN3]]))
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_soft_ce_temperature_divides_logits():
    # at T = 2: teacher [0, 2 ln 3] -> [0, ln 3] -> p_T = [1/4, 3/4]; student [0, 2] -> [0, 1]
    # -> p_S = [1/(1+e), e/(1+e)]; H = -(1/4 ln(1/(1+e)) + 3/4 ln(e/(1+e))) = ln(1+e) - 3/4
    loss = soft_cross_entropy(t([[0.0, 2.0]]), t([[0.0, 2 * LN3]]), T=2.0)
    assert loss.item() == pytest.approx(math.log(1 + math.e) - 0.75, abs=1e-6)
    # and at T = 1 the same logits give a different value: -(1/10 ln(1/(1+e^2)) + 9/10 ln(e^2/(1+e^2)))
    loss1 = soft_cross_entropy(t([[0.0, 2.0]]), t([[0.0, 2 * LN3]]), T=1.0)
    assert loss1.item() == pytest.approx(math.log(1 + math.e ** 2) - 0.9 * 2, abs=1e-6)


def _two_pixel_pair() -> tuple[torch.Tensor, torch.Tensor]:
    # (N=1, C=2, H=1, W=2): pixel 0 is the ln 2 example, pixel 1 is wildly different (loss ~ 200)
    student = t([[[[0.0, 100.0]], [[0.0, -100.0]]]])
    teacher = t([[[[0.0, -50.0]], [[LN3, 50.0]]]])
    return student, teacher


def test_soft_ce_valid_mask_excludes_pixels():
    student, teacher = _two_pixel_pair()
    masked = soft_cross_entropy(student, teacher, valid_mask=torch.tensor([[[True, False]]]))
    assert masked.item() == pytest.approx(math.log(2.0), abs=1e-5)
    # pixel 1 alone: p_T ~ [e^-100, 1], log p_S = [0, -200] -> H ~ 200; unmasked mean = (ln 2 + 200) / 2
    unmasked = soft_cross_entropy(student, teacher)
    assert unmasked.item() == pytest.approx((math.log(2.0) + 200.0) / 2, rel=1e-5)


def test_soft_ce_no_valid_pixel_is_zero_with_grad():
    student, teacher = _two_pixel_pair()
    student.requires_grad_(True)
    loss = soft_cross_entropy(student, teacher, valid_mask=torch.zeros(1, 1, 2, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.count_nonzero(student.grad) == 0


def test_soft_ce_class_weights():
    # -(2 * 1/4 ln(1/2) + 4 * 3/4 ln(1/2)) = 3.5 ln 2
    loss = soft_cross_entropy(t([[0.0, 0.0]]), t([[0.0, LN3]]), class_weights=t([2.0, 4.0]))
    assert loss.item() == pytest.approx(3.5 * math.log(2.0), abs=1e-6)


def test_soft_ce_no_gradient_into_teacher():
    student = t([[0.3, -0.2], [1.0, 0.5]]).requires_grad_(True)
    teacher = t([[0.0, LN3], [2.0, 0.0]]).requires_grad_(True)
    soft_cross_entropy(student, teacher, T=2.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.count_nonzero(student.grad) > 0


# ---- kd_kl_div ------------------------------------------------------------------------------------------------

def test_kl_hand_value():
    # KL([1/4, 3/4] || [1/2, 1/2]) = 1/4 ln(1/2) + 3/4 ln(3/2) = ln 2 - H([1/4, 3/4])
    kl = kd_kl_div(t([[0.0, 0.0]]), t([[0.0, LN3]]))
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl.item() == pytest.approx(expected, abs=1e-6)
    teacher_entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert expected == pytest.approx(math.log(2.0) - teacher_entropy)


def test_kl_is_soft_ce_minus_teacher_entropy():
    torch.manual_seed(0)
    s, te = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    p_t = torch.softmax(te / 3.0, dim=1)
    entropy = -(p_t * p_t.log()).sum(dim=1).mean()
    expected = soft_cross_entropy(s, te, T=3.0) - entropy
    assert kd_kl_div(s, te, T=3.0).item() == pytest.approx(expected.item(), abs=1e-5)


def test_kl_zero_for_identical_logits():
    x = torch.randn(2, 3, 4, 4)
    assert kd_kl_div(x, x.clone(), T=4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_finite_when_teacher_probability_underflows():
    # p_T = [e^-200 -> 0 in float32, 1]; KL = 1 * (0 - ln 1/2) = ln 2
    student = t([[0.0, 0.0]]).requires_grad_(True)
    kl = kd_kl_div(student, t([[0.0, 200.0]]))
    assert math.isfinite(kl.item()) and kl.item() == pytest.approx(math.log(2.0), abs=1e-6)
    kl.backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[0].tolist() == pytest.approx([0.5, -0.5], abs=1e-6)  # (p_S - p_T) / N


def test_kl_matches_torch_kl_div_per_pixel():
    torch.manual_seed(1)
    s, te, T = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), 3.0
    ref = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(te / T, dim=1), log_target=True,
                   reduction="sum") / (2 * 4 * 5)
    assert kd_kl_div(s, te, T=T).item() == pytest.approx(ref.item(), abs=1e-6)


def test_kl_valid_mask():
    student, teacher = _two_pixel_pair()
    kl = kd_kl_div(student, teacher, valid_mask=torch.tensor([[[True, False]]]))
    assert kl.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-5)


def test_kl_with_no_valid_pixel_is_zero_with_a_zero_gradient_and_a_mask_of_another_shape_is_refused():
    student, teacher = _two_pixel_pair()
    student = student.clone().requires_grad_()
    kl = kd_kl_div(student, teacher, valid_mask=torch.zeros(1, 1, 2, dtype=torch.bool))
    kl.backward()
    assert kl.item() == 0.0 and student.grad.abs().max().item() == 0.0
    with pytest.raises(ValueError, match="valid_mask"):
        kd_kl_div(student, teacher, valid_mask=torch.ones(1, 2, dtype=torch.bool))


# ---- weighted_cross_entropy -----------------------------------------------------------------------------------

def _ce_example() -> tuple[torch.Tensor, torch.Tensor]:
    # (1, 2, 1, 3): pixel 0 logits [0, ln 3], target 1 -> -ln(3/4); pixel 1 [0, 0], target 0 -> ln 2;
    # pixel 2 ignored
    logits = t([[[[0.0, 0.0, 5.0]], [[LN3, 0.0, -5.0]]]])
    target = torch.tensor([[[1, 0, 255]]])
    return logits, target


def test_weighted_ce_hand_value_with_ignore():
    logits, target = _ce_example()
    plain = weighted_cross_entropy(logits, target)
    assert plain.item() == pytest.approx((-math.log(0.75) + math.log(2.0)) / 2, abs=1e-6)
    weighted = weighted_cross_entropy(logits, target, class_weights=t([1.0, 3.0]))
    expected = (3 * -math.log(0.75) + 1 * math.log(2.0)) / (3 + 1)
    assert weighted.item() == pytest.approx(expected, abs=1e-6)
    ref = F.cross_entropy(logits, target, weight=t([1.0, 3.0]), ignore_index=255)
    assert ref.item() == pytest.approx(expected, abs=1e-6)


def test_weighted_ce_all_ignored_is_zero_not_nan():
    logits, _ = _ce_example()
    logits.requires_grad_(True)
    loss = weighted_cross_entropy(logits, torch.full((1, 1, 3), 255), class_weights=t([1.0, 3.0]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


# ---- class_prior_loss -----------------------------------------------------------------------------------------

def test_class_prior_loss_source_prior():
    expected = -(0.947 * math.log(0.947) + 0.053 * math.log(0.053))
    assert class_prior_loss([0.947, 0.053]) == pytest.approx(expected, rel=1e-12)
    assert class_prior_loss([0.947, 0.053]) == pytest.approx(0.2073, abs=1e-4)  # not the source's 0.48


def test_class_prior_loss_normalises_and_accepts_types():
    assert class_prior_loss(np.array([5, 5])) == pytest.approx(math.log(2.0))
    assert class_prior_loss(torch.tensor([3.0, 1.0])) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert class_prior_loss([1.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        class_prior_loss([0.5, -0.1])


# ---- attention transfer (source 004, Eq. 4.7-4.8) -------------------------------------------------------------

def test_attention_map_is_the_channel_mean_of_squares():
    # Eq. 4.7 with C = 2: f = (a_1^2 + a_2^2) / 2 at each position
    feat = t([[[[1, 2], [3, 4]], [[1, 0], [1, 0]]]])
    assert torch.equal(attention_map(feat), t([[[1, 2], [5, 8]]]))


def test_attention_loss_hand_value_sums_layers_and_averages_the_batch():
    # image 0, layer 1: student map [1,0,0,0], teacher map [0,4,0,0] -> unit vectors e1, e2 -> ||e1 - e2|| = sqrt 2
    # image 1, layer 1 and both images, layer 2: identical maps -> 0.  Sum over layers, mean over 2 images: sqrt2/2
    s1 = t([[[[1, 0], [0, 0]]], [[[1, 1], [1, 1]]]])
    t1 = t([[[[0, 2], [0, 0]]], [[[5, 5], [5, 5]]]])
    same = torch.rand(2, 3, 2, 2)
    loss = attention_transfer_loss([s1, same], [t1, same.clone()])
    assert loss.item() == pytest.approx(math.sqrt(2) / 2, abs=1e-6)


def test_attention_loss_is_a_norm_not_a_squared_norm():
    # maps [1, 0] and [0.6, 0.8] (unit): difference (0.4, -0.8), norm sqrt(0.8); squared would be 0.8
    s = t([[[[1.0, 0.0]]]])
    teacher = t([[[[math.sqrt(0.6), math.sqrt(0.8)]]]])
    assert attention_transfer_loss([s], [teacher]).item() == pytest.approx(math.sqrt(0.8), abs=1e-6)


def test_attention_loss_ignores_scale_and_channel_count():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 8, 5, 5), torch.randn(2, 32, 5, 5)
    base = attention_transfer_loss([student], [teacher])
    assert attention_transfer_loss([3 * student], [0.5 * teacher]).item() == pytest.approx(base.item(), rel=1e-5)
    # a teacher with the same attention in 4x as many channels (the map is a channel mean) gives zero
    assert attention_transfer_loss([student], [student.repeat(1, 4, 1, 1)]).item() == pytest.approx(0, abs=1e-6)


def test_attention_loss_resizes_the_teachers_layer_bilinearly_to_the_student():
    # teacher at 4x4 (output stride 16), student at 2x2 (output stride 32): Kowalski 2021, Section 4.2.2 resizes the
    # teacher's layer before the attention map, so a student equal to the resized layer matches it exactly
    torch.manual_seed(0)
    teacher = torch.rand(1, 4, 4, 4)
    student = F.interpolate(teacher, size=(2, 2), mode="bilinear", align_corners=False)
    assert attention_transfer_loss([student], [teacher]).item() == pytest.approx(0, abs=1e-6)
    # a student matching the resized *map* instead does not (the mean of squares is not the square of the mean)
    map_first = F.interpolate(attention_map(teacher)[:, None], size=(2, 2), mode="bilinear", align_corners=False)
    assert attention_transfer_loss([map_first.sqrt()], [teacher]).item() > 1e-4
    assert attention_transfer_loss([torch.rand(1, 4, 2, 2)], [teacher]).item() > 0.01


def test_attention_loss_gradient_reaches_the_student_only_and_is_finite_at_zero():
    student = torch.rand(2, 4, 3, 3, requires_grad=True)
    teacher = torch.rand(2, 6, 3, 3, requires_grad=True)
    attention_transfer_loss([student], [teacher]).backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0
    same = torch.rand(1, 2, 3, 3, requires_grad=True)
    attention_transfer_loss([same], [same.detach().clone()]).backward()
    assert torch.isfinite(same.grad).all()


def test_attention_loss_rejects_unpaired_layers():
    with pytest.raises(ValueError):
        attention_transfer_loss([torch.rand(1, 2, 3, 3)], [])


# ---- pairwise_similarity_loss (source 000, Section 3.1; Liu et al. 2019) -------------------------------------------

def test_pairwise_hand_value_two_nodes():
    # student (1, 2, 2, 4), patch 2 -> two nodes, maxima (1, 0) and (0, 1): affinities [[1, 0], [0, 1]]
    student = torch.zeros(1, 2, 2, 4)
    student[0, 0, 0, 0] = 1.0          # node 1 (columns 0-1), channel 0
    student[0, 1, 1, 3] = 1.0          # node 2 (columns 2-3), channel 1
    # teacher with 3 channels: nodes (1, 0, 0) and (1, 1, 0) -> a_12 = 1 / sqrt 2
    teacher = torch.zeros(1, 3, 2, 4)
    teacher[0, 0, 1, 1] = 1.0
    teacher[0, 0, 0, 2] = 1.0
    teacher[0, 1, 0, 3] = 1.0
    # off-diagonal squared differences (0 - 1/sqrt 2)^2 = 1/2 twice, diagonals 0: mean over 4 pairs = 1/4
    assert pairwise_similarity_loss(student, teacher, patch=2).item() == pytest.approx(0.25, abs=1e-6)


def test_pairwise_max_pools_each_patch_and_ignores_node_length():
    # each node is the channel-wise max of its 2x2 patch; scaling a node (or adding smaller values inside
    # its patch) changes nothing, since affinities are cosines of the pooled vectors
    torch.manual_seed(0)
    feat = torch.rand(2, 5, 4, 4)
    teacher = torch.rand(2, 7, 4, 4)
    scaled = feat.clone()
    scaled[:, :, :2, :2] *= 3.0
    assert pairwise_similarity_loss(scaled, teacher).item() == pytest.approx(
        pairwise_similarity_loss(feat, teacher).item(), abs=1e-6)


def test_pairwise_matches_an_explicit_loop():
    torch.manual_seed(1)
    s, t_ = torch.randn(2, 3, 4, 6), torch.randn(2, 8, 4, 6)
    total, count = 0.0, 0
    for n in range(2):
        s_nodes = [s[n, :, i:i + 2, j:j + 2].amax(dim=(1, 2)) for i in (0, 2) for j in (0, 2, 4)]
        t_nodes = [t_[n, :, i:i + 2, j:j + 2].amax(dim=(1, 2)) for i in (0, 2) for j in (0, 2, 4)]
        for a in range(6):
            for b in range(6):
                a_s = F.cosine_similarity(s_nodes[a], s_nodes[b], dim=0)
                a_t = F.cosine_similarity(t_nodes[a], t_nodes[b], dim=0)
                total += float((a_s - a_t) ** 2)
                count += 1
    assert pairwise_similarity_loss(s, t_, patch=2).item() == pytest.approx(total / count, rel=1e-5)


def test_pairwise_identical_structure_gives_zero_and_gradient_reaches_the_student_only():
    torch.manual_seed(2)
    feat = torch.rand(1, 4, 6, 6)
    assert pairwise_similarity_loss(feat, 2.0 * feat).item() == pytest.approx(0.0, abs=1e-10)
    student = torch.rand(1, 4, 6, 6, requires_grad=True)
    teacher = torch.rand(1, 16, 6, 6, requires_grad=True)
    pairwise_similarity_loss(student, teacher).backward()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_pairwise_computes_in_float32_inside_bf16_autocast():
    # autocast would run the affinity matmul in bf16 (3 significant digits); the loss switches it off
    torch.manual_seed(4)
    s, t_ = torch.rand(2, 8, 6, 6), torch.rand(2, 5, 6, 6)
    plain = pairwise_similarity_loss(s, t_)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = pairwise_similarity_loss(s, t_)
    assert cast.dtype == torch.float32
    assert cast.item() == pytest.approx(plain.item(), rel=1e-6)


def test_pairwise_partial_patches_and_resized_teacher():
    # 5x5 maps, patch 2: ceil mode gives 3x3 = 9 nodes; a teacher at 10x10 is resized to 5x5 first
    torch.manual_seed(3)
    s, t_ = torch.rand(1, 2, 5, 5), torch.rand(1, 3, 10, 10)
    resized = F.interpolate(t_, size=(5, 5), mode="bilinear", align_corners=False)
    assert pairwise_similarity_loss(s, t_).item() == pytest.approx(pairwise_similarity_loss(s, resized).item())
    with pytest.raises(ValueError, match="batch"):
        pairwise_similarity_loss(torch.rand(2, 2, 4, 4), torch.rand(1, 2, 4, 4))


# ---- intra_affinity_loss (IntRA-KD, source 003) ------------------------------------------------------------------

def two_row_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels [[0, 0], [1, 1]]: region 0 = top row, region 1 = bottom row.
    Student (2 channels): top (1,0), (3,0) -> mean (2,0), var (1,0), skew (0,0); bottom (0,2), (0,2) -> mean (0,2),
    var (0,0), skew (0,0). Graphs: mean [[1,0],[0,1]], var [[1,0],[0,0]] (a zero vector has cosine 0), skew zeros.
    Teacher (3 channels): top (1,1,0) twice -> mean (1,1,0), var 0; bottom (1,0,0), (3,0,0) -> mean (2,0,0),
    var (1,0,0). Graphs: mean [[1, 1/sqrt 2], [1/sqrt 2, 1]], var [[0,0],[0,1]], skew zeros.
    So L_mean = 2 (1/sqrt 2)^2 / 4 = 0.25, L_var = (1 + 1) / 4 = 0.5, L_skew = 0."""
    labels = torch.tensor([[[0, 0], [1, 1]]])
    student = t([[[[1, 3], [0, 0]], [[0, 0], [2, 2]]]])
    teacher = t([[[[1, 1], [1, 3]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]]])
    return student, teacher, labels


def test_intra_hand_value_per_moment():
    student, teacher, labels = two_row_case()
    assert intra_affinity_loss(student, teacher, labels, 2, weights=(1, 0, 0)).item() == pytest.approx(0.25, abs=1e-6)
    assert intra_affinity_loss(student, teacher, labels, 2, weights=(0, 1, 0)).item() == pytest.approx(0.5, abs=1e-6)
    assert intra_affinity_loss(student, teacher, labels, 2, weights=(0, 0, 1)).item() == pytest.approx(0.0, abs=1e-6)
    assert intra_affinity_loss(student, teacher, labels, 2).item() == pytest.approx(0.75, abs=1e-6)
    assert intra_affinity_loss(student, teacher, labels, 2, weights=(2, 0, 5)).item() == pytest.approx(0.5, abs=1e-6)


def test_intra_skewness_graph_by_hand():
    # one channel that matters: region 0 holds (0, 0, 3): mean 1, var 2, skew ((-1)^3 + (-1)^3 + 2^3) / 3 / 2^1.5
    # = +1/sqrt 2; region 1 holds (0, 3, 3): mean 2, var 2, skew (-8 + 1 + 1) / 3 / 2^1.5 = -1/sqrt 2. The student's
    # skewness vectors point opposite ways (cosine -1), the teacher's (both regions (0, 0, 3)) the same way (+1):
    # L_skew = 2 (-1 - 1)^2 / 4 = 2.
    labels = torch.tensor([[[0, 0, 0, 1, 1, 1]]])
    student = t([[[[0, 0, 3, 0, 3, 3]], [[5, 5, 5, 5, 5, 5]]]])
    teacher = t([[[[0, 0, 3, 0, 0, 3]]]])
    loss = intra_affinity_loss(student, teacher, labels, 2, weights=(0, 0, 1))   # the constant channel: skew 0
    assert loss.item() == pytest.approx(2.0, abs=1e-6)


def test_intra_identical_features_give_zero_and_only_the_student_gets_a_gradient():
    torch.manual_seed(0)
    feat = torch.randn(2, 6, 8, 8, requires_grad=True)
    labels = torch.randint(0, 4, (2, 16, 16))
    assert intra_affinity_loss(feat, feat, labels, 4).item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.randn(2, 9, 8, 8, requires_grad=True)
    intra_affinity_loss(feat, teacher, labels, 4).backward()
    assert feat.grad.abs().sum() > 0 and teacher.grad is None


def test_intra_is_unchanged_by_renumbering_the_classes():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 5, 8, 8), torch.randn(2, 7, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[0, 0] = 255
    permutation = torch.tensor([2, 0, 3, 1])
    renumbered = torch.where(labels == 255, labels, permutation[labels.clamp_max(3)])
    assert intra_affinity_loss(student, teacher, renumbered, 4).item() == pytest.approx(
        intra_affinity_loss(student, teacher, labels, 4).item(), rel=1e-5)


def test_intra_drops_absent_classes_and_ignored_pixels():
    student, teacher, labels = two_row_case()
    reference = intra_affinity_loss(student, teacher, labels, 2).item()
    # three more classes that occur nowhere: zero-filled nodes would change the graphs and the 1/n^2
    assert intra_affinity_loss(student, teacher, labels, 5).item() == pytest.approx(reference, abs=1e-6)
    # a third column labelled 255 with wild features belongs to no region
    wide_labels = torch.tensor([[[0, 0, 255], [1, 1, 255]]])
    wide_student = torch.cat([student, t([[[[100], [-50]], [[7], [9]]]])], dim=3)
    wide_teacher = torch.cat([teacher, t([[[[-3], [8]], [[40], [1]], [[2], [2]]]])], dim=3)
    assert intra_affinity_loss(wide_student, wide_teacher, wide_labels, 2).item() == pytest.approx(reference, abs=1e-6)


def test_intra_one_region_contributes_zero_and_the_batch_is_averaged():
    student, teacher, labels = two_row_case()
    one_region = torch.zeros_like(labels)
    assert intra_affinity_loss(student, teacher, one_region, 2).item() == 0.0
    batch = intra_affinity_loss(torch.cat([student, student]), torch.cat([teacher, teacher]),
                                torch.cat([labels, one_region]), 2)
    assert batch.item() == pytest.approx(0.75 / 2, abs=1e-6)


def test_intra_different_strides_and_bad_labels():
    torch.manual_seed(2)
    labels = torch.randint(0, 3, (2, 32, 32))
    loss = intra_affinity_loss(torch.randn(2, 4, 16, 16), torch.randn(2, 8, 4, 4), labels, 3)
    assert torch.isfinite(loss) and loss.item() > 0
    with pytest.raises(ValueError, match="labels must lie in"):
        intra_affinity_loss(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.tensor([[[0, 7], [1, 1]]]), 3)


# ---- self-attention distillation (SAD, source 003) ---------------------------------------------------------------

def test_sad_attention_is_a_spatial_softmax_of_the_summed_squares():
    feat = t([[[[1, 0]], [[1, 0]]]])                       # G = [2, 0] -> softmax [e^2, 1] / (e^2 + 1)
    psi = sad_attention(feat, (1, 2))
    e2 = math.exp(2)
    assert psi.tolist()[0] == pytest.approx([e2 / (e2 + 1), 1 / (e2 + 1)], abs=1e-6)


def test_sad_hand_value_and_the_deeper_block_is_the_detached_target():
    shallow = torch.zeros(1, 1, 1, 2, requires_grad=True)   # G = [0, 0] -> [1/2, 1/2]
    deep = t([[[[1, 0]]]]).requires_grad_()                  # G = [1, 0] -> [e, 1] / (e + 1)
    loss = self_attention_distillation_loss([shallow, deep])
    d = math.e / (math.e + 1) - 0.5
    assert loss.item() == pytest.approx(d ** 2, abs=1e-7)    # the mean of d^2 and (-d)^2
    loss.backward()
    assert shallow.grad is not None and deep.grad is None


def test_sad_resizes_the_deeper_map_to_the_shallower_and_sums_over_pairs():
    a = t([[[[1, 3]]]])                                      # G = [1, 9]
    b = t([[[[2]]]])                                         # G = [4], upsampled to [4, 4] -> uniform
    c = t([[[[0]], [[0]]]])                                  # G = [0] -> uniform
    p = 1 / (1 + math.exp(8))                                # softmax([1, 9])[0]
    ab = ((p - 0.5) ** 2 + (0.5 - p) ** 2) / 2
    assert self_attention_distillation_loss([a, b]).item() == pytest.approx(ab, abs=1e-7)
    assert self_attention_distillation_loss([a, b, c]).item() == pytest.approx(ab + 0.0, abs=1e-7)
    with pytest.raises(ValueError, match="at least two"):
        self_attention_distillation_loss([a])


# ---- the file as a copyable whole ---------------------------------------------------------------------------------
def test_losses_module_is_torch_only_and_lists_every_loss():
    """Each loss is meant to be copied: the module imports torch and nothing else of third parties, and its
    ``__all__`` and header table name every public function."""
    import ast
    import inspect

    import common.losses as losses
    tree = ast.parse(inspect.getsource(losses))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "collections", "torch"}, imported
    public = {name for name, f in inspect.getmembers(losses, inspect.isfunction)
              if f.__module__ == losses.__name__ and not name.startswith("_")}
    assert set(losses.__all__) == public
    assert all(f"``{name}``" in losses.__doc__ for name in public)
