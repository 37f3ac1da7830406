"""Tests for common/losses.py against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.losses import (attention_map, attention_transfer_loss, class_prior_loss, kd_kl_div,
                           pairwise_similarity_loss, soft_cross_entropy, weighted_cross_entropy)

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


def test_attention_loss_resizes_the_teacher_bilinearly_to_the_student():
    # teacher at 4x4 (output stride 16), student at 2x2 (output stride 32)
    torch.manual_seed(0)
    teacher = torch.rand(1, 4, 4, 4)
    resized = F.interpolate(attention_map(teacher)[:, None], size=(2, 2), mode="bilinear", align_corners=False)
    student = resized.sqrt()  # one channel whose attention map equals the resized teacher map
    assert attention_transfer_loss([student], [teacher]).item() == pytest.approx(0, abs=1e-6)
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


def test_pairwise_partial_patches_and_resized_teacher():
    # 5x5 maps, patch 2: ceil mode gives 3x3 = 9 nodes; a teacher at 10x10 is resized to 5x5 first
    torch.manual_seed(3)
    s, t_ = torch.rand(1, 2, 5, 5), torch.rand(1, 3, 10, 10)
    resized = F.interpolate(t_, size=(5, 5), mode="bilinear", align_corners=False)
    assert pairwise_similarity_loss(s, t_).item() == pytest.approx(pairwise_similarity_loss(s, resized).item())
    with pytest.raises(ValueError, match="batch"):
        pairwise_similarity_loss(torch.rand(2, 2, 4, 4), torch.rand(1, 2, 4, 4))
