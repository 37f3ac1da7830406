"""Losses for training segmentation networks with and without knowledge distillation.

Each loss is one self-contained function (torch only) that can be copied into another project; where it needs a
helper from this file, its docstring says so ("copy it too").

| function | paper | equation | reduction | T^2 |
| --- | --- | --- | --- | --- |
| ``soft_cross_entropy`` | Hinton et al. 2015; Mangalam 2018 (source 002) | H(P_T^tau, P_S^tau), the soft term of L_KD | sum over classes, mean over valid pixels | caller |
| ``kd_kl_div`` | Hinton et al. 2015; Karli (source 001, Section II) | KL(P_T^tau || P_S^tau) | sum over classes, mean over valid pixels | caller |
| ``weighted_cross_entropy`` | Mangalam 2018 (source 002) | H(y_true, P_S), class-weighted | weighted mean over non-ignored pixels | - |
| ``class_prior_loss`` | Mangalam 2018, Table 3 | H(f, f) of the class prior | a float, not a loss to train | - |
| ``attention_map`` | Zagoruyko & Komodakis 2017, Section 3.1; Kowalski 2021 (004), Eq. 4.7 | (1/C) sum_c A_c^2 | mean over channels | - |
| ``attention_transfer_loss`` | Zagoruyko & Komodakis 2017; Kowalski 2021, Eq. 4.8 | sum_i of the L2 norm of normalised map differences | per image, summed over layers, mean over batch | - (caller: beta) |
| ``pairwise_similarity_loss`` | Liu et al. 2019 (CVPR); Palchuri & Chakraborty (000), Section 3.1 | l_pa over patch-node cosine affinities | mean over N x M^2 | - |
| ``intra_affinity_graphs`` | Hou et al. 2020 (CVPR), Section 3 | mean / variance / skewness graphs C(i, k) | per image | - |
| ``intra_affinity_loss`` | Hou et al. 2020; Hou's talk (003) | sum_m w_m (1/n^2) sum (C^S - C^T)^2 | per image over present regions, mean over batch | - |
| ``sad_attention`` | Hou et al. 2019 (ICCV), Section 3.1 | Psi(A) = spatial softmax of sum_c A_c^2 | per image | - |
| ``self_attention_distillation_loss`` | Hou et al. 2019; Hou's talk (003) | sum_m MSE(Psi(A_m), Psi(A_m+1)) | mean over positions and images, summed over block pairs | - |

Logits are (N, C, H, W) for segmentation or (N, C) for classification; the class dimension is dim 1.
``valid_mask`` is a boolean (N, H, W) or (N,) tensor, ``None`` meaning every pixel counts.
"Averaged over the valid pixels": the per-class terms are summed per pixel, then averaged over the pixels where
``valid_mask`` is True (Hinton et al. 2015 treat each sample -- here each pixel -- as one example). With no valid
pixel the loss is a zero that still has a grad_fn. No T^2 factor is applied inside ("caller" above): the callers
multiply by whatever factor their paper uses: Hinton et al. multiply by T^2 (sources 001, and 002 as one reading);
source 004 by 2 alpha T^2 (Eq. 4.6).

Attention transfer, pair-wise distillation, IntRA-KD and SAD work on feature maps, not logits.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["soft_cross_entropy", "kd_kl_div", "weighted_cross_entropy", "class_prior_loss", "attention_map",
           "attention_transfer_loss", "pairwise_similarity_loss", "intra_affinity_graphs", "intra_affinity_loss",
           "sad_attention", "self_attention_distillation_loss"]


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0,
                       valid_mask: torch.Tensor | None = None,
                       class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy between the teacher's and the student's softened class distributions (Hinton, Vinyals & Dean
    2015, "Distilling the Knowledge in a Neural Network", Section 2; Mangalam 2018, "Compressing U-Net using
    Knowledge Distillation", EPFL, the soft term of its L_KD in 'The Distillation Procedure'):

        H(P_T^tau, P_S^tau) = -sum_c w_c p_T,c log p_S,c,   p = softmax(logits / T) over classes,

    summed over classes and averaged over the valid pixels (w_c = 1 without ``class_weights``); no T^2 inside.
    Mangalam's objective is L_KD = H(y_true, P_S) + lambda * H(P_T^tau, P_S^tau). The teacher side is detached: no
    gradient flows into the teacher.

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
    """Kullback-Leibler divergence of the student's softened distribution from the teacher's (Hinton, Vinyals &
    Dean 2015, Section 2; the D_KL term of Karli's L = alpha T^2 D_KL + (1 - alpha) CE, "Shallow Networks for
    Semantic Segmentation", Koc University, Section II, taken with the teacher as target):

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
    if valid_mask.shape != per_pixel.shape:
        raise ValueError(f"valid_mask {tuple(valid_mask.shape)} must have the pixels' shape {tuple(per_pixel.shape)}")
    valid_mask = valid_mask.bool()   # a mean over the valid pixels, 0 if there are none (no indexing: no sync)
    return torch.where(valid_mask, per_pixel, 0).sum() / valid_mask.sum().clamp_min(1)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                           ignore_index: int = 255) -> torch.Tensor:
    """Hard-label cross-entropy H(y_true, P_S) (Mangalam 2018, EPFL, 'Performance Metrics' and the hard term of
    L_KD in 'The Distillation Procedure'), with optional class weights.

    Target is (N, H, W) or (N,) int64; pixels equal to ``ignore_index`` are excluded. Convention: the weighted mean

        L = sum_i w_{y_i} * (-log p_{i, y_i}) / sum_i w_{y_i}   over the non-ignored pixels i,

    exactly ``F.cross_entropy(logits, target, weight=class_weights, ignore_index=ignore_index)`` (w = 1 without
    ``class_weights``, giving the plain mean). If every pixel is ignored, returns a zero with a grad_fn, not NaN.
    """
    if not (target != ignore_index).any():
        return (logits * 0).sum()
    weight = None if class_weights is None else class_weights.to(logits)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def class_prior_loss(class_frequencies: Sequence[float] | torch.Tensor) -> float:
    """Cross-entropy (nats) of the constant predictor that outputs the class prior f for every pixel (the barrier
    a network stuck at the prior sits at; Mangalam 2018, EPFL, 'Initialization Matters', Table 3).

    Evaluated on data with those same frequencies it equals the entropy of the prior:

        H(f, f) = -sum_c f_c ln f_c      (frequencies are normalised to sum 1; 0 ln 0 = 0).

    Mangalam says a network stuck at this class-prior predictor has test loss 0.48, with the prior 0.947 / 0.053.
    The entropy of 0.947 / 0.053 is 0.207 nats (0.299 bits), so the source's 0.48 does not follow from its own
    prior; we compute the barrier from the data in use instead. Accepts anything ``torch.as_tensor`` does (a list,
    a numpy array, a tensor).
    """
    if isinstance(class_frequencies, torch.Tensor):
        f = class_frequencies.detach().cpu().double().flatten()
    else:
        f = torch.as_tensor(class_frequencies, dtype=torch.float64).flatten()
    if f.numel() == 0 or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"class frequencies must be non-negative with a positive sum, got {f.tolist()}")
    f = f / f.sum()
    return float(-torch.xlogy(f, f).sum())


def attention_map(feat: torch.Tensor) -> torch.Tensor:
    """Spatial attention map of an activation A (N, C, H, W): Zagoruyko & Komodakis 2017 (ICLR), "Paying More
    Attention to Attention", Section 3.1, the mapping F^p_sum(A) = sum_c |A_c|^p with p = 2, divided by the channel
    count as in Kowalski 2021 (source 004), Eq. 4.7, and in their code (``at``: ``x.pow(2).mean(1)``):

        f(A) = (1 / C) sum_c A_c^2          -> (N, H, W).

    Not normalised here: ``attention_transfer_loss`` normalises it (004, Eq. 4.8); figures (004, Figure 5.2) show
    it raw.
    """
    if feat.dim() != 4:
        raise ValueError(f"attention_map expects (N, C, H, W) features, got shape {tuple(feat.shape)}")
    return feat.pow(2).mean(dim=1)


def attention_transfer_loss(student_feats: Sequence[torch.Tensor],
                            teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention-transfer distance between paired layers of a student and a teacher (Zagoruyko & Komodakis 2017,
    ICLR, "Paying More Attention to Attention", Section 3.1, the attention term of L_AT with p = 2, without its
    beta / 2) as Kowalski 2021 (source 004) prints it, Eq. 4.8:

        L_A = sum_i || f(A_i^t) / ||f(A_i^t)||_2  -  f(A_i^s) / ||f(A_i^s)||_2 ||_2 ,

    f = ``attention_map`` (Eq. 4.7; this function needs it), each map flattened per image and L2-normalised, the
    L2 norm (not squared) of the difference taken per image, summed over the N_L layer pairs and averaged over the
    batch ("averaged across all data items", Eq. 4.9). The student's loss is then L_AT = L_S + beta * L_A with beta = 1000 (Eq. 4.9).

    - Channel counts of a pair may differ: the maps average over channels.
    - Where a pair's spatial sizes differ, the teacher's *layer* A_i^t is bilinearly resized (align_corners=False;
      the thesis does not say which corners) to the student's size before f, as Kowalski 2021 (Section 4.2.2) says:
      "the teacher layers are bilinearly scaled to match the resolution of student layers". Resizing the map after
      f would differ: the bilinear mean of squares is not the square of the bilinear mean.
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
        t_feat = t_feat.detach()
        if t_feat.shape[-2:] != s_feat.shape[-2:]:          # the teacher's layer, not its map (004, Section 4.2.2)
            t_feat = F.interpolate(t_feat, size=s_feat.shape[-2:], mode="bilinear", align_corners=False)
        s_map, t_map = attention_map(s_feat), attention_map(t_feat)
        s_vec = F.normalize(s_map.flatten(1), p=2, dim=1)
        t_vec = F.normalize(t_map.flatten(1), p=2, dim=1)
        total = total + (s_vec - t_vec).norm(p=2, dim=1).mean()
    return total


def pairwise_similarity_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Pair-wise distillation of structured knowledge (Liu et al. 2019, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR, its pair-wise loss l_pa; Palchuri & Chakraborty, "Compression techniques for Semantic
    Segmentation", NYU, Section 3.1 'Pairwise Distillation'):

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

    # in float32 even inside bf16/fp16 autocast, which would round the cosines (and their differences) to 3 digits
    with torch.autocast(student_feat.device.type, enabled=False):
        return (affinity(student_feat.float()) - affinity(teacher_feat.float())).pow(2).mean()


def intra_affinity_graphs(feat: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255,
                          masks: str = "area", eps: float = 1e-6) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The inter-region affinity graphs of one feature map: Hou et al. 2020, "Inter-Region Affinity Distillation for
    Road Marking Segmentation" (CVPR), Sec. 3: the areas of interest, AOI-grounded moment pooling (mean mu,
    variance sigma^2, skewness gamma) and the inter-region affinity C(i, k) (source 003, 'Method'; the equations
    by name: their numbers were not checked against the paper's text). What ``intra_affinity_loss`` compares, and
    what a figure of it should show.

    1. Areas of interest, one per class k (Sec. 3.1): a weight w_k(p) for every feature pixel p. ``masks="nearest"``:
       the labels nearest-resized to the feature size, w in {0, 1}. ``masks="area"``: the one-hot labels average-pooled
       to the feature size (F.interpolate mode "area"), w_k(p) = the fraction of p's cell labelled k, so a marking
       thinner than the stride keeps its pixels (our reading of the paper's smoothing of the label map with an
       average kernel). Pixels
       labelled ``ignore_index`` belong to no region. A class is present where its weights sum above 0.
    2. Moment pooling per region k and channel j (mu, sigma^2, gamma), weighted by w_k and centred two-pass (the
       region's mean first, then the mean of the powers of the deviations), in float64:
           mu_k(j) = sum_p w F_j / sum_p w,   sigma^2_k(j) = sum_p w (F_j - mu_k(j))^2 / sum_p w,
           gamma_k(j) = sum_p w (F_j - mu_k(j))^3 / sum_p w / (sigma^2_k(j) + eps)^1.5      (skewness).
       A region of one pixel, or of one repeated value, gets variance and skewness exactly 0 (each region is
       shifted by one of its own values first, since a sum of n equal floats can round), whatever the magnitude
       of the features: one-pass raw moments (E[x^3] - 3 E[x] E[x^2] + 2 E[x]^3) leave rounding noise there that
       the cosine below would blow up into a unit vector of random direction. ``eps`` inside the power of the
       variance.
    3. One graph per moment, the inter-region affinity: C(i, k) = cosine over channels of the moment vectors of
       regions i and k; a vector of zeros (e.g. the skewness of a one-pixel region) has cosine 0 with every region.

    feat (N, C, h, w), labels (N, H, W) int with values in [0, num_classes) or ``ignore_index`` -> ``present`` (N, K)
    bool and the mean, variance and skewness graphs, each (N, K, K) float32 over all K = ``num_classes`` classes
    (rows and columns of absent classes are 0; select them with ``present``). Torch only; no helper needed.
    """
    if feat.dim() != 4 or labels.dim() != 3:
        raise ValueError(f"expected (N, C, H, W) features and (N, H, W) labels, got {tuple(feat.shape)} and "
                         f"{tuple(labels.shape)}")
    if feat.shape[0] != labels.shape[0]:
        raise ValueError(f"batch sizes differ: features {feat.shape[0]}, labels {labels.shape[0]}")
    if masks not in ("area", "nearest"):
        raise ValueError(f"masks is 'area' or 'nearest', got {masks!r}")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(f"labels must lie in [0, {num_classes}) or be {ignore_index}; found "
                         f"{labels[bad].unique()[:10].tolist()}")
    size = feat.shape[-2:]
    if masks == "nearest":
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    labels = torch.where(labels == ignore_index, num_classes, labels.long())       # ignore -> an extra, dropped class
    weights = F.one_hot(labels, num_classes + 1)[..., :num_classes].permute(0, 3, 1, 2).double()
    if masks == "area":
        weights = F.interpolate(weights, size=size, mode="area")                     # average pooling to (h, w)
    weights = weights.flatten(2)                                                     # (N, K, h*w)
    area = weights.sum(-1)                                                           # (N, K)
    present = area > 0
    x = feat.double().flatten(2)                                                     # (N, C, h*w)
    # each region is first shifted by the value of one of its pixels (exact; detached: a shift changes no central
    # moment), so a one-pixel or constant region is exactly 0 after the shift, and so are its deviations below
    ref_index = weights.argmax(-1)[:, None, :].expand(-1, x.shape[1], -1)            # (N, C, K)
    ref = torch.gather(x, 2, ref_index).detach()                                     # (N, C, K)
    means, variances, skews = [], [], []
    for k in range(num_classes):     # one region at a time: never an (N, K, C, h*w) tensor
        # only the cells the region covers in some image of the batch: a cell of weight 0 adds exactly 0 to every
        # sum below, and a small region (a marking) then costs its own size, not the map's
        cells = weights[:, k].gt(0).any(0).nonzero()[:, 0]
        whole = len(cells) == weights.shape[-1]
        w = weights[:, k, None, :] if whole else weights[:, k, None, cells]         # (N, 1, cells)
        norm = area[:, k, None].clamp_min(1e-300)                                    # (N, 1)
        shifted = (x if whole else x[..., cells]) - ref[:, :, k, None]               # (N, C, cells)
        offset = (w * shifted).sum(-1) / norm                                        # mean - ref, (N, C)
        dev = shifted - offset[..., None]                                            # F_j - mu_k(j)
        weighted_sq = w * dev * dev
        var = weighted_sq.sum(-1) / norm
        skew = (weighted_sq * dev).sum(-1) / norm / (var + eps).pow(1.5)
        means.append(ref[:, :, k] + offset), variances.append(var), skews.append(skew)
    graphs = []
    for moment in (means, variances, skews):
        moments = torch.stack(moment, dim=1) * present[..., None]                    # absent regions: 0
        unit = F.normalize(moments, p=2, dim=-1)                                     # (N, K, C)
        graphs.append((unit @ unit.transpose(1, 2)).float())
    return present, graphs


def intra_affinity_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor,
                        num_classes: int, ignore_index: int = 255, weights: Sequence[float] = (1.0, 1.0, 1.0),
                        eps: float = 1e-6, masks: str = "area") -> torch.Tensor:
    """Inter-region affinity distillation, IntRA-KD: Hou et al. 2020, "Inter-Region Affinity Distillation for Road
    Marking Segmentation" (CVPR), Sec. 3, the distillation loss L_m over the affinity graphs (source 003,
    'Inter-Region Affinity Distillation'): the student's
    inter-region affinity graphs must match the teacher's,

        L = sum_m weights[m] * (1 / n^2) sum_{i,k} (C_m^S(i, k) - C_m^T(i, k))^2 ,   m = mean, variance, skewness,

    over the n regions present in both feature maps, averaged over the images. Needs the helper
    ``intra_affinity_graphs`` (copy it too): areas of interest, two-pass moment pooling and the cosine graphs
    (Eqs. 1-4), with ``masks`` "area" (average-pooled one-hot labels as weights) or "nearest" (nearest-resized hard
    masks), and ``eps`` in the skewness's denominator (sigma^2 + eps)^1.5.

    Our readings (the paper leaves them open): a class absent from an image (at either feature resolution) is
    *dropped* from that image's graph, not zero-filled; an image with fewer than two regions contributes 0 (its 1x1
    graphs are both 1); teacher and student may have different strides and channel counts. The teacher's features
    carry no gradient. Labels outside [0, num_classes) other than ``ignore_index`` are a ValueError.
    """
    if student_feat.dim() != 4 or teacher_feat.dim() != 4 or labels.dim() != 3:
        raise ValueError(f"expected (N, C, H, W) features and (N, H, W) labels, got {tuple(student_feat.shape)}, "
                         f"{tuple(teacher_feat.shape)} and {tuple(labels.shape)}")
    if not student_feat.shape[0] == teacher_feat.shape[0] == labels.shape[0]:
        raise ValueError(f"batch sizes differ: student {student_feat.shape[0]}, teacher {teacher_feat.shape[0]}, "
                         f"labels {labels.shape[0]}")
    if len(weights) != 3:
        raise ValueError(f"weights are (mean, variance, skewness), got {tuple(weights)}")
    s_present, s_graphs = intra_affinity_graphs(student_feat, labels, num_classes, ignore_index, masks, eps)
    with torch.no_grad():
        t_present, t_graphs = intra_affinity_graphs(teacher_feat.detach(), labels, num_classes, ignore_index, masks,
                                                    eps)
    present = s_present & t_present                                                      # (N, K)
    pairs = (present[:, :, None] & present[:, None, :]).float()                         # (N, K, K)
    n_sq = present.sum(-1).float().pow(2).clamp_min(1)                                  # (N,)
    total = student_feat.new_zeros((), dtype=torch.float32)
    for weight, s_graph, t_graph in zip(weights, s_graphs, t_graphs):
        if weight:
            per_image = (pairs * (s_graph - t_graph).pow(2)).sum((1, 2)) / n_sq
            total = total + weight * per_image.mean()
    return total


def sad_attention(feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Psi(A) of self-attention distillation: Hou et al. 2019, "Learning Lightweight Lane Detection CNNs by Self
    Attention Distillation" (ICCV), Sec. 3.1, the attention map Psi of the AT-GEN (source 003, 'Self Attention
    Distillation'): G(A) = sum_c A_c^2 (N, H, W), bilinearly resized to ``size`` (B in the paper), then a softmax
    over all spatial positions (Phi) -> (N, size[0] * size[1]), each row summing to 1. Torch only; no helper."""
    if feat.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) features, got shape {tuple(feat.shape)}")
    energy = feat.float().pow(2).sum(dim=1, keepdim=True)
    if energy.shape[-2:] != tuple(size):
        energy = F.interpolate(energy, size=tuple(size), mode="bilinear", align_corners=False)
    return F.softmax(energy.flatten(1), dim=1)


def self_attention_distillation_loss(block_feats: Sequence[torch.Tensor],
                                     size: tuple[int, int] | None = None) -> torch.Tensor:
    """Self-attention distillation, SAD: Hou et al. 2019, "Learning Lightweight Lane Detection CNNs by Self Attention
    Distillation" (ICCV), Sec. 3.1, the distillation loss L_distill (source 003): each encoder block's attention map
    mimics the next deeper block's,

        L_distill = sum_{m=1}^{M-1} MSE(Psi(A_m), Psi(A_{m+1})),      Psi = ``sad_attention`` (copy it too),

    both maps at ``size`` -- the network's input size, our reading of the paper's AT-GEN (bilinear upsampling B,
    then the spatial softmax), which reproduce_intra_kd.py passes -- or, with
    ``size=None``, at the shallower block's (larger) size of each pair; the MSE averaged over positions and images.
    The deeper map is the target and is detached (our reading: it plays the teacher; the paper does not say). The
    paper weighs this term by 0.1 and switches it on late in training (after 40k of 60k iterations); the caller
    does both.
    """
    if len(block_feats) < 2:
        raise ValueError(f"SAD needs at least two blocks, got {len(block_feats)}")
    total = block_feats[0].new_zeros((), dtype=torch.float32)
    for shallow, deep in zip(block_feats[:-1], block_feats[1:]):
        if shallow.shape[0] != deep.shape[0]:
            raise ValueError(f"batch sizes differ: {shallow.shape[0]} and {deep.shape[0]}")
        pair_size = tuple(shallow.shape[-2:]) if size is None else tuple(size)
        total = total + (sad_attention(shallow, pair_size) - sad_attention(deep.detach(), pair_size)).pow(2).mean()
    return total
