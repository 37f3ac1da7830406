"""Losses for training segmentation networks with and without knowledge distillation.

Each loss is one self-contained function (torch only) that can be copied into another project.
Logits are (N, C, H, W) for segmentation or (N, C) for classification; the class dimension is dim 1.
``valid_mask`` is a boolean (N, H, W) or (N,) tensor, ``None`` meaning every pixel counts.
"Averaged over the valid pixels": the per-class terms are summed per pixel, then averaged over the pixels where
``valid_mask`` is True (Hinton et al. 2015 treat each sample -- here each pixel -- as one example). With no valid
pixel the loss is a zero that still has a grad_fn. No T^2 factor is applied inside: the callers multiply by
whatever factor their paper uses: Hinton et al. multiply by T^2 (source 001, 002); source 004 by 2 alpha T^2.

Attention transfer (source 004, Eq. 4.7-4.9; Zagoruyko & Komodakis 2017) works on feature maps, not logits:
``attention_map`` and ``attention_transfer_loss`` below; so do the pair-wise distillation of source 000
(Liu et al. 2019), ``pairwise_similarity_loss``, and source 003's inter-region affinity distillation (IntRA-KD,
``intra_affinity_loss``) and self-attention distillation (SAD, ``self_attention_distillation_loss``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0,
                       valid_mask: torch.Tensor | None = None,
                       class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy between the teacher's and the student's softened class distributions.

        H(P_T^tau, P_S^tau) = -sum_c w_c p_T,c log p_S,c,   p = softmax(logits / T) over classes,

    summed over classes and averaged over the valid pixels (w_c = 1 without ``class_weights``). This is the soft
    term of source 002, 'The Distillation Procedure': L_KD = H(y_true, P_S) + lambda * H(P_T^tau, P_S^tau);
    Hinton et al. 2015. The teacher side is detached: no gradient flows into the teacher.

    ``class_weights`` (C,) is our reading of source 002's "class weights" for soft training ('Making It Work:
    Batch Normalization & Class weights'); the source does not define it.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ")
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits.detach() / T, dim=1)
    terms = -p_t * log_p_s
    if class_weights is not None:
        shape = (1, -1) + (1,) * (terms.dim() - 2)
        terms = terms * class_weights.to(terms).reshape(shape)
    per_pixel = terms.sum(dim=1)
    if valid_mask is None:
        return per_pixel.mean()
    valid_mask = valid_mask.bool()
    if not valid_mask.any():
        return (per_pixel * 0).sum()
    return per_pixel[valid_mask].mean()


def kd_kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0,
              valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Kullback-Leibler divergence of the student's softened distribution from the teacher's (Hinton et al. 2015).

        KL(P_T^tau || P_S^tau) = sum_c p_T,c (log p_T,c - log p_S,c),   p = softmax(logits / T) over classes,

    summed over classes and averaged over the valid pixels; no T^2 inside; the teacher is detached. It differs from
    ``soft_cross_entropy`` only by the teacher's entropy, a constant, so the gradient is the same. Both sides use
    log_softmax: where p_T,c underflows to 0 the term is 0 * finite = 0, never NaN.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ")
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=1)
    per_pixel = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    if valid_mask is None:
        return per_pixel.mean()
    valid_mask = valid_mask.bool()
    if not valid_mask.any():
        return (per_pixel * 0).sum()
    return per_pixel[valid_mask].mean()


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                           ignore_index: int = 255) -> torch.Tensor:
    """Hard-label cross-entropy H(y_true, P_S) (source 002, 'Performance Metrics' and 'The Distillation Procedure').

    Target is (N, H, W) or (N,) int64; pixels equal to ``ignore_index`` are excluded. Convention: the weighted mean

        L = sum_i w_{y_i} * (-log p_{i, y_i}) / sum_i w_{y_i}   over the non-ignored pixels i,

    exactly ``F.cross_entropy(logits, target, weight=class_weights, ignore_index=ignore_index)`` (w = 1 without
    ``class_weights``, giving the plain mean). If every pixel is ignored, returns a zero with a grad_fn, not NaN.
    """
    if not (target != ignore_index).any():
        return (logits * 0).sum()
    weight = None if class_weights is None else class_weights.to(logits)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def class_prior_loss(class_frequencies: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """Cross-entropy (nats) of the constant predictor that outputs the class prior f for every pixel.

    Evaluated on data with those same frequencies it equals the entropy of the prior:

        H(f, f) = -sum_c f_c ln f_c      (frequencies are normalised to sum 1; 0 ln 0 = 0).

    Source 002 ('Initialization Matters', Table 3) says a network stuck at this class-prior predictor has test loss
    0.48, with the prior 0.947 / 0.053. The entropy of 0.947 / 0.053 is 0.207 nats (0.299 bits), so the source's
    0.48 does not follow from its own prior; we compute the barrier from the data in use instead.
    """
    if isinstance(class_frequencies, torch.Tensor):
        f = class_frequencies.detach().cpu().double().flatten()
    else:
        f = torch.as_tensor(np.asarray(class_frequencies, dtype=np.float64)).flatten()
    if f.numel() == 0 or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"class frequencies must be non-negative with a positive sum, got {f.tolist()}")
    f = f / f.sum()
    return float(-torch.xlogy(f, f).sum())


def attention_map(feat: torch.Tensor) -> torch.Tensor:
    """Spatial attention map of an activation A (N, C, H, W): source 004, Eq. 4.7,

        f(A) = (1 / C) sum_c A_c^2          -> (N, H, W),

    the mean over channels of the squared activations (Eq. 2.2 with p = 2, divided by the channel count). Not
    normalised here: ``attention_transfer_loss`` normalises it (Eq. 4.8); figures (004, Figure 5.2) show it raw.
    """
    if feat.dim() != 4:
        raise ValueError(f"attention_map expects (N, C, H, W) features, got shape {tuple(feat.shape)}")
    return feat.pow(2).mean(dim=1)


def attention_transfer_loss(student_feats: Sequence[torch.Tensor],
                            teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention-transfer distance between paired layers of a student and a teacher: source 004, Eq. 4.8,

        L_A = sum_i || f(A_i^t) / ||f(A_i^t)||_2  -  f(A_i^s) / ||f(A_i^s)||_2 ||_2 ,

    f = ``attention_map`` (Eq. 4.7), each map flattened per image and L2-normalised, the L2 norm (not squared) of
    the difference taken per image, summed over the N_L layer pairs and averaged over the batch ("averaged across
    all data items", Eq. 4.9). The student's loss is then L_AT = L_S + beta * L_A with beta = 1000 (Eq. 4.9).

    - Channel counts of a pair may differ: the maps average over channels.
    - Where a pair's spatial sizes differ (e.g. teacher at output stride 16, student at 32), the teacher's map is
      bilinearly resized to the student's size (004, Section 4.2.2), before normalising.
    - The teacher side is detached: no gradient flows into the teacher.
    - Moonshine's code (Crowley et al. 2019), which 004 adopted, takes the mean of the *squared* difference over
      positions instead; this function follows the thesis's equation.
    """
    if len(student_feats) != len(teacher_feats) or len(student_feats) == 0:
        raise ValueError(f"need the same, non-zero number of student and teacher layers, "
                         f"got {len(student_feats)} and {len(teacher_feats)}")
    total = student_feats[0].new_zeros(())
    for s_feat, t_feat in zip(student_feats, teacher_feats):
        if s_feat.shape[0] != t_feat.shape[0]:
            raise ValueError(f"batch sizes differ: student {s_feat.shape[0]}, teacher {t_feat.shape[0]}")
        s_map = attention_map(s_feat)
        t_map = attention_map(t_feat.detach())
        if t_map.shape[-2:] != s_map.shape[-2:]:
            t_map = F.interpolate(t_map[:, None], size=s_map.shape[-2:], mode="bilinear",
                                  align_corners=False)[:, 0]
        s_vec = F.normalize(s_map.flatten(1), p=2, dim=1)
        t_vec = F.normalize(t_map.flatten(1), p=2, dim=1)
        total = total + (s_vec - t_vec).norm(p=2, dim=1).mean()
    return total


def pairwise_similarity_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Pair-wise distillation of structured knowledge (source 000, Section 3.1 'Pairwise Distillation'; Liu et al.
    2019, 'Structured knowledge distillation for semantic segmentation'):

        l_pa = 1 / (N M^2) sum_n sum_{i,j} (a^S_ij - a^T_ij)^2 ,   a_ij = f_i . f_j / (||f_i||_2 ||f_j||_2),

    where each feature map (N, C, H, W) is max-pooled over ``patch`` x ``patch`` patches into M nodes (a partial
    last patch counts as a node: ceil mode), f_i is node i's channel vector, and the affinities a_ij are taken between
    all M x M node pairs of an image (the diagonal included, as in Liu et al.'s code: it is 1 on both sides).

    - Channel counts may differ between student and teacher: each side compares its own nodes with each other.
    - The spatial sizes must give the same nodes: where they differ, the teacher's map is bilinearly resized to the
      student's first (our choice; Liu et al.'s networks share the output stride).
    - Nodes of all-zero features (e.g. after a ReLU) have affinity 0 with every node (F.normalize's epsilon).
    - The teacher is detached. Liu et al.'s official code pools with a kernel of half the feature map (4 nodes),
      which its author says is not what the paper means; this follows the paper's patches.
    """
    if student_feat.dim() != 4 or teacher_feat.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) feature maps, got {tuple(student_feat.shape)} and "
                         f"{tuple(teacher_feat.shape)}")
    if student_feat.shape[0] != teacher_feat.shape[0]:
        raise ValueError(f"batch sizes differ: student {student_feat.shape[0]}, teacher {teacher_feat.shape[0]}")
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    teacher_feat = teacher_feat.detach()
    if teacher_feat.shape[-2:] != student_feat.shape[-2:]:
        teacher_feat = F.interpolate(teacher_feat, size=student_feat.shape[-2:], mode="bilinear",
                                     align_corners=False)

    def affinity(feat: torch.Tensor) -> torch.Tensor:             # (N, M, M) cosine similarities
        nodes = F.max_pool2d(feat, kernel_size=patch, stride=patch, ceil_mode=True).flatten(2)   # (N, C, M)
        nodes = F.normalize(nodes, p=2, dim=1)
        return nodes.transpose(1, 2) @ nodes

    return (affinity(student_feat.float()) - affinity(teacher_feat.float())).pow(2).mean()


def intra_affinity_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor,
                        num_classes: int, ignore_index: int = 255,
                        weights: Sequence[float] = (1.0, 1.0, 1.0), eps: float = 1e-6) -> torch.Tensor:
    """Inter-region affinity distillation, IntRA-KD (source 003, 'Inter-Region Affinity Distillation'; Hou et al.
    CVPR 2020, Sec. 3): the student's inter-region affinity graphs must match the teacher's.

    1. Areas of interest: one binary mask per class present in the image's labels, the labels nearest-resized to
       each feature map's size (so teacher and student may have different strides). Pixels labelled
       ``ignore_index`` belong to no region.
    2. Moment pooling per region k and channel j over the region's pixels:
           mu_k(j) = mean F_j,   sigma^2_k(j) = mean (F_j - mu_k(j))^2,
           gamma_k(j) = mean ((F_j - mu_k(j)) / sqrt(sigma^2_k(j) + eps))^3      (skewness).
    3. One affinity graph per moment m over the n regions present: C_m(i, j) = cosine(m_i, m_j) over channels, so
       the channel counts of teacher and student need not match.
    4. L = sum_m weights[m] * (1 / n^2) sum_ij (C_m^S(i, j) - C_m^T(i, j))^2, averaged over the images.

    Our readings (the paper leaves them open; see also the project notes): a class absent from an image (at
    either feature resolution) is *dropped* from that image's graph, not zero-filled; an image with fewer than two
    regions contributes 0 (its 1x1 graphs are both 1); ``eps`` inside the square root of the variance; hard
    (nearest) masks. The teacher's features carry no gradient. Labels outside [0, num_classes) other than
    ``ignore_index`` are a ValueError.
    """
    if student_feat.dim() != 4 or teacher_feat.dim() != 4 or labels.dim() != 3:
        raise ValueError(f"expected (N, C, H, W) features and (N, H, W) labels, got {tuple(student_feat.shape)}, "
                         f"{tuple(teacher_feat.shape)} and {tuple(labels.shape)}")
    if not student_feat.shape[0] == teacher_feat.shape[0] == labels.shape[0]:
        raise ValueError(f"batch sizes differ: student {student_feat.shape[0]}, teacher {teacher_feat.shape[0]}, "
                         f"labels {labels.shape[0]}")
    if len(weights) != 3:
        raise ValueError(f"weights are (mean, variance, skewness), got {tuple(weights)}")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(f"labels must lie in [0, {num_classes}) or be {ignore_index}; found "
                         f"{labels[bad].unique()[:10].tolist()}")

    def region_masks(feat: torch.Tensor) -> torch.Tensor:            # (N, K, h*w) one-hot, ignore -> no region
        small = F.interpolate(labels[:, None].float(), size=feat.shape[-2:], mode="nearest")[:, 0].long()
        small = torch.where(small == ignore_index, num_classes, small)
        return F.one_hot(small.flatten(1), num_classes + 1)[..., :num_classes].transpose(1, 2).float()

    def moment_graphs(feat: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:   # 3 x (N, K, K)
        # raw moments E[x], E[x^2], E[x^3] per region by matrix products (no (N, K, C, h*w) tensor), in float64
        # so that the central moments below lose nothing to cancellation
        flat = feat.double().flatten(2).transpose(1, 2)                                 # (N, h*w, C)
        masks = masks.double()
        count = masks.sum(-1, keepdim=True).clamp_min(1)                                # (N, K, 1)
        m1, m2, m3 = (masks @ flat.pow(p) / count for p in (1, 2, 3))                   # (N, K, C) each
        var = (m2 - m1.pow(2)).clamp_min(0)
        skew = (m3 - 3 * m1 * m2 + 2 * m1.pow(3)) / (var + eps).pow(1.5)
        graphs = []
        for moment in (m1, var, skew):
            unit = F.normalize(moment, p=2, dim=-1)
            graphs.append((unit @ unit.transpose(1, 2)).float())
        return graphs

    s_masks, t_masks = region_masks(student_feat), region_masks(teacher_feat)
    present = (s_masks.sum(-1) > 0) & (t_masks.sum(-1) > 0)                              # (N, K)
    pairs = (present[:, :, None] & present[:, None, :]).float()                         # (N, K, K)
    n_sq = present.sum(-1).float().pow(2).clamp_min(1)                                  # (N,)
    s_graphs = moment_graphs(student_feat, s_masks)
    with torch.no_grad():
        t_graphs = moment_graphs(teacher_feat.detach(), t_masks)
    total = student_feat.new_zeros((), dtype=torch.float32)
    for weight, s_graph, t_graph in zip(weights, s_graphs, t_graphs):
        if weight:
            per_image = (pairs * (s_graph - t_graph).pow(2)).sum((1, 2)) / n_sq
            total = total + weight * per_image.mean()
    return total


def sad_attention(feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Psi(A) of self-attention distillation (source 003, 'Self Attention Distillation'; Hou et al. ICCV 2019):
    G(A) = sum_c A_c^2 (N, H, W), bilinearly resized to ``size``, then a softmax over all spatial positions
    -> (N, h * w), each row summing to 1."""
    if feat.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) features, got shape {tuple(feat.shape)}")
    energy = feat.float().pow(2).sum(dim=1, keepdim=True)
    if energy.shape[-2:] != tuple(size):
        energy = F.interpolate(energy, size=size, mode="bilinear", align_corners=False)
    return F.softmax(energy.flatten(1), dim=1)


def self_attention_distillation_loss(block_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Self-attention distillation, SAD (source 003; Hou et al. ICCV 2019, Eq. 2): each encoder block's attention
    map mimics the next deeper block's,

        L_distill = sum_{m=1}^{M-1} MSE(Psi(A_m), Psi(A_{m+1})),      Psi = ``sad_attention``,

    both maps at the shallower block's (larger) size, the MSE averaged over positions and images. The deeper map is
    the target and is detached (our reading: it plays the teacher; the paper does not say). The paper weighs this
    term by 0.1 and switches it on late in training (after 40k of 60k iterations); the caller does both.
    """
    if len(block_feats) < 2:
        raise ValueError(f"SAD needs at least two blocks, got {len(block_feats)}")
    total = block_feats[0].new_zeros((), dtype=torch.float32)
    for shallow, deep in zip(block_feats[:-1], block_feats[1:]):
        if shallow.shape[0] != deep.shape[0]:
            raise ValueError(f"batch sizes differ: {shallow.shape[0]} and {deep.shape[0]}")
        size = tuple(shallow.shape[-2:])
        total = total + (sad_attention(shallow, size) - sad_attention(deep.detach(), size)).pow(2).mean()
    return total
