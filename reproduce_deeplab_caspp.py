#!/usr/bin/env python
"""Reproduce Kowalski, "Efficient compression of semantic segmentation neural networks" (Edinburgh MInf, 2021).

Source: ../shared/seeds/004_aec6fe3e1fb53c58.txt ("the thesis"). DeepLabV3+ (common/deeplab.py) on PASCAL VOC 2012
aug, compressed three ways:

  1. Cheap convolutions in the ASPP and decoder (Section 4.2.1): depthwise-separable (DS) or bottleneck (BTN)
     blocks instead of the standard 3x3 atrous convolutions (ST), with or without Kernel-Sharing Atrous
     Convolution (KSAC, Section 2.2.5), at output stride 16 or 32.                        Tables 5.1, A.1
  2. Distillation (Section 4.2.2) from the thesis's best model, ResNet-50 / OS16 / KSAC / ST (74.38 IoU):
         KD (Eq. 4.6):  L_KD = (1 - alpha) L_S + 2 alpha T^2 L_T,   L_T = CE(softmax(t/T), softmax(s/T)),
                        alpha = 0.9, T = 4;
         AT (Eq. 4.9):  L_AT = L_S + beta L_A,  L_A = Eq. 4.8 over the chosen layers, beta = 1000;
                        "Output" = the ASPP output, "Atrous" = each atrous branch, "All" = both.   Tables 5.2, 5.3
  3. Compressed ASPP (Section 4.2.3, 5.3.1): CASPP-n, a chain of n bottleneck blocks per atrous rate.
                                                                                          Tables 5.4, A.2

The recipe (Section 4.1.1): SGD, lr 0.01 (backbone 0.001 when pre-trained), the "poly" schedule of Eq. 4.1 stepped
every iteration; normalisation, random scale [0.5, 2], horizontal flip, random 256 crop (common/voc.py); every
experiment run twice and the better model kept (Chapter 5): --repeats 2. IoU = 100 x mIoU over the 21 classes
(Eq. 3.1), on whole validation images at a single scale. Params and MAdds as the thesis counts them (Section 4.3:
flops-counter.pytorch, i.e. ptflops, on a 1x3x256x256 input; common/profiler.py); latency is ours.

Readings of the thesis we had to choose (the notes under each table repeat the ones that shape it):
  * Batch size, iteration count, momentum and weight decay are not given. Paper preset: batch 16, 30,000
    iterations (about 45 epochs of the 10,582 trainaug images), momentum 0.9, weight decay 1e-4 (the defaults of
    the reference code, Fang 2019, that the thesis built on).
  * Which model the table reports (last epoch or best validation epoch) is not said; we report the final model,
    since picking the best epoch on the validation set would overstate the validation IoU.
  * Loss scale (--loss-scale). The thesis prints Eq. 4.6 and 4.8, but says its distillation code "has been
    adopted from" Crowley et al. 2019 (pytorch-moonshine) and takes beta = 1000 "based on the choice by" that
    work. The two differ in their reductions, not their terms:
      printed (default): KD's L_S and L_T averaged over the labelled pixels (255 excluded in both); L_A the sum
        over layers of the L2 norm (Eq. 4.8) per image, averaged over the batch;
      moonshine: the code's reductions exactly (``moonshine_kd_loss``, ``moonshine_at_loss``): F.kl_div's old
        default mean over N x C x H x W (21x smaller than per pixel), and per layer the mean over N x H x W of
        the squared difference, beta scaled by 3 / N_L. At beta = 1000 the printed beta * L_A was 11-41x the
        moonshine one in our 64-px runs (more at 256-px crops: the mean of squares divides by the positions),
        so a beta chosen for one is not the other's; README gives Table 5.2's rows 3-4 both ways.
  * AT: attention of "Atrous" pairs each of the student's three branches with the teacher's branch of the same
    rate. The teacher's layers (activations) are resized bilinearly to the student's before the attention map
    (Section 4.2.2), which matters only for students at output stride 32.
  * ImageNet weights cannot be downloaded on the machines this default runs on. The default preset therefore
    starts every row from one backbone trained once on the synthetic training scenes (cached; --pretrain-crop
    96-px crops, a stand-in for ImageNet's 224-px images), a stand-in for the shared ImageNet backbone: as in the
    thesis, every row shares the same starting backbone. --backbone-init imagenet (the default with --data-root)
    uses torchvision's ImageNet weights, or --backbone-weights FILE. To fit a CPU, the default preset sets the
    backbone's lower rate to 0: the backbone, trained on these very scenes, stays fixed (eval-mode BatchNorm), and
    since every row sees the same batch at the same step, its features are computed once per input and shared by
    every row and the teacher (``FrozenBackboneFeatures``); the paper preset trains it at the thesis's 0.001.
  * Atrous rates (--rate-divisor). Section 4.1.1 trains on 256-px crops "against the findings of [Chen et al.,
    2017] which showed that the large receptive field of the atrous convolution required a non-padded image",
    and says its outcomes "should be directly transferable to the larger, 513 x 513 crop" of DeepLabV3. At 256 px
    and OS16 the ASPP sees 16x16 maps, where only 16% of the rate-12 branch's off-centre taps read features and
    none of the rate-18 branch's (the table notes print this): those branches, and what KSAC shares between them,
    are 1x1 convolutions in disguise. The paper preset keeps that recipe (rates 6, 12, 18; its mechanism checks
    then fail, atop the tables). The default preset keeps the 256-px crop and halves the rates to (3, 6, 9): on
    16x16 maps they read features exactly as (6, 12, 18) do on the 32x32 maps of a 512-px crop, the geometry the
    thesis says its results transfer to (rate-6 branch 74%, rate-12 50.8%, rate-18 31% of off-centre taps); the
    rates change no parameter and no multiply-add. Keeping the thesis's rates instead would need 512-px crops,
    4x the compute per image, which a 2-core CPU cannot train in minutes. OS32 rows would need 1024-px crops for
    their rate-12 branch (8x8 maps at 256 px), so the default preset trains the six OS16 rows of a table
    (--strides 16; the paper preset: 16,32).
  * Table 5.2 prints identical KD columns for its OS16 and OS32 halves (Table 5.3 does not); we print them as
    given.

How the default miniature is scaled from the thesis, and why (issue 16: the mechanism must be alive in it): synthetic
21-class scenes of 256 px (384 training, 48 validation) instead of VOC's 10,582 / 1,449 images of ~500 px; the
thesis's 256-px crops and random scale [0.5, 2]; atrous rates halved (above) so that the atrous branches read
features; the six OS16 rows of Table 5.1 (the OS32 rows' 8x8 maps leave their rate-12 branch, run at 6, 16% of its
taps, and rate 18 none); batch 8 and 60 iterations per row (thesis: our reading 16 x 30,000) on a fixed stand-in
backbone whose features are computed once; bf16 autocast on CPUs with native bf16 (--no-amp: fp32). The run measures
its mechanism checks (checks.csv / checks.md, printed at the end): per output stride and atrous branch, the share of
off-centre taps reading features on the training maps (rates 6 and 12 at least half, rate 18 some), and, where it
distils (Tables 5.2, 5.3), the teacher's IoU at least 5 points above each student-alone row. A failed check is stated
atop the table it undermines. The distillation teacher (Tables 5.2, 5.3) trains 240 iterations (--teacher-iterations,
4x a student's): the thesis trains it as a Table 5.1 row, but trained as briefly as its students here it scored below
the MobileNetV2 students of Table 5.3 (24.6 against 38.1 mIoU), and Table 5.2's first student is its own
architecture, whose margin is then zero by construction.

Scale: one process on a CPU or a GPU (AMP on GPUs; bf16 autocast on CPUs with native bf16), or several GPUs with
    torchrun --nproc_per_node=N reproduce_deeplab_caspp.py ...      (DistributedDataParallel; --sync-bn)
Rows are independent runs, so a sweep can also run as one job per row (--rows K; see README for a Slurm array).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from common.checks import Check, at_least, atrous_tap_fraction, failed_lines, teacher_margin, write_checks
from common.deeplab import (ASPP_KINDS, BACKBONES, DeepLabV3Plus, OUTPUT_STRIDES, build_deeplabv3plus,
                            default_atrous_rates, load_backbone_weights, upsample_logits)
from common.devices import autocast, init_distributed, shutdown_distributed
from common.errors import UserError, check_flags, refuse_ignored
from common.filecheck import VERDICTS_FILE
from common.images import IGNORE_INDEX, normalize
from common.losses import attention_map, attention_transfer_loss, soft_cross_entropy, weighted_cross_entropy
from common.metrics import evaluate_segmentation, predict_segmentation
from common.profiler import count_macs, count_parameters, profile
from common.results import ResultsCSV, Table, plot_curves, plot_panel, plot_scatter
from common.runs import (RunOptions, add_run_arguments, check_run_options, config_from_args, help_formatter,
                         load_weights, resume_or_check, run_folder, run_main)
from common.synthetic_scenes import SyntheticScenes
from common.teachers import OutputMemo, cache_path, freeze, load_or_train
from common.training import Session, Trained, make_scheduler, seed_everything, train, training_batches
from common.voc import NUM_CLASSES, augmented_item, colorize, voc_dataset

MACS_INPUT = (1, 3, 256, 256)  # the thesis's training crop: the input of its Params/MAdds columns (Section 4.3)
METHODS = ("none", "at-output", "at-atrous", "at-all", "kd")
METHOD_COLUMNS = {"none": "None", "at-output": "AT Output", "at-atrous": "AT Atrous", "at-all": "AT All",
                  "kd": "KD"}


# =============================================================================================== the objective
LOSS_SCALES = ("printed", "moonshine")


def caspp_objective(method: str, logits: torch.Tensor, feats: dict | None, teacher_logits: torch.Tensor | None,
                    teacher_feats: dict | None, target: torch.Tensor, alpha: float, beta: float,
                    T: float, loss_scale: str = "printed") -> tuple[torch.Tensor, dict]:
    """The training loss of a student of Section 4.2.2 (objective ``method``, one of METHODS) and its logged parts.

    loss_scale "printed" (the default) follows the thesis's equations:
        none:  L_S = CE(y, s)                                                     (Eq. 4.4)
        kd:    L_KD = (1 - alpha) L_S + 2 alpha T^2 L_T,  L_T = CE(t/T, s/T)       (Eq. 4.6, Eq. 4.5)
        at-*:  L_AT = L_S + beta L_A,  L_A = sum_i || f(A_i^t)/||f(A_i^t)|| - f(A_i^s)/||f(A_i^s)|| ||_2
                                                                                  (Eq. 4.9, Eq. 4.8; f: Eq. 4.7)
    with L_S and L_T means over the labelled pixels. loss_scale "moonshine" keeps the same terms but the reductions
    of the code the thesis says it adopted (``moonshine_kd_loss``, ``moonshine_at_loss``).

    ``logits`` / ``teacher_logits``: (N, 21, H, W) of student s and teacher t; ``feats`` / ``teacher_feats``: their
    ``return_features`` dicts (attention transfer only: ``features_for`` picks the layers); ``target`` (N, H, W)
    with 255 = unlabelled. In both readings the teacher's layers are resized to the student's before f
    (Section 4.2.2; inside ``attention_transfer_loss`` and ``moonshine_at_loss``).
    """
    if loss_scale not in LOSS_SCALES:
        raise ValueError(f"loss_scale must be one of {LOSS_SCALES}, got {loss_scale!r}")
    hard = weighted_cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)                     # Eq. 4.4
    if method == "none":
        return hard, {}
    if method == "kd":
        if loss_scale == "moonshine":
            loss, soft = moonshine_kd_loss(logits.float(), teacher_logits.float(), target, alpha, T)
            return loss, {"train_hard": hard.detach(), "train_soft": soft.detach()}
        soft = soft_cross_entropy(logits.float(), teacher_logits.float(), T, valid_mask=target != IGNORE_INDEX)
        loss = (1 - alpha) * hard + 2 * alpha * T ** 2 * soft                                          # Eq. 4.6
        return loss, {"train_hard": hard.detach(), "train_soft": soft.detach()}
    student = [f.float() for f in features_for(method, feats)]
    teacher = [f.float() for f in features_for(method, teacher_feats)]
    if loss_scale == "moonshine":
        at = moonshine_at_loss(student, teacher)
    else:
        at = attention_transfer_loss(student, teacher)                                                   # Eq. 4.8
    return hard + beta * at, {"train_hard": hard.detach(), "train_at": at.detach()}                      # Eq. 4.9


def moonshine_kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, alpha: float,
                      T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """KD with the reductions of the code the thesis adopted (Section 4.2.2: "The code for distillation has been
    adopted from" [Crowley et al., 2019a]: Crowley, Gray & Storkey, "Moonshine: Distilling with Cheap
    Convolutions", NeurIPS 2018; its repository BayesWatch/pytorch-moonshine, funcs.py, ``distillation``):

        F.kl_div(F.log_softmax(y/T, dim=1), F.softmax(teacher_scores/T, dim=1)) * (T*T * 2. * alpha)
            + F.cross_entropy(y, labels) * (1. - alpha)

    F.kl_div's default reduction in the PyTorch of that code ('elementwise_mean' / size_average=True) divides the
    summed KL by the number of *elements*, here N x C x H x W, so exactly:

        L = 2 alpha T^2 * (1 / (N C H W)) sum_{n,c,h,w} p_t log(p_t / q_s)  +  (1 - alpha) L_S,
        p_t = softmax(t / T), q_s = softmax(s / T) over the C classes (dim 1),

    L_S the cross-entropy averaged over the labelled pixels (the segmentation code must pass ignore_index=255; a
    255 label would crash F.cross_entropy otherwise). The KL term has no mask: F.kl_div sees every pixel,
    unlabelled ones included. Compared with Eq. 4.6 read per labelled pixel, the soft term is C = 21 times smaller
    (and it is a KL, which differs from Eq. 4.5's cross-entropy by the teacher's entropy: same gradient).
    Returns (L, the KL term before its weight 2 alpha T^2).
    """
    log_q = F.log_softmax(logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits / T, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum() / logits.numel()          # sum over all elements / N C H W
    hard = weighted_cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    return 2 * alpha * T ** 2 * kl + (1 - alpha) * hard, kl


def moonshine_at_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """L_A with the reductions of the code the thesis adopted for attention transfer and for its beta = 1000
    (Crowley et al. 2019, BayesWatch/pytorch-moonshine: funcs.py ``at`` and ``at_loss``, main.py
    ``adjusted_beta = (args.beta*3)/len(ints_student)``):

        at(x)        = F.normalize(x.pow(2).mean(1).view(x.size(0), -1))    # Eq. 4.7, L2-normalised per image
        at_loss(x, y) = (at(x) - at(y)).pow(2).mean()                       # mean over N x H*W of the squares

    so that beta * this function is main.py's AT term, exactly:

        L_A = (3 / N_L) sum_{i=1}^{N_L} (1 / (N H_i W_i)) sum_{n,p} (a^s_{i,n,p} - a^t_{i,n,p})^2,
        a_{i,n} = f(A_{i,n}) / ||f(A_{i,n})||_2,

    against Eq. 4.8's sum_i of the per-image L2 norm (not squared, not divided by the positions) averaged over the
    batch. A teacher layer of another size is first resized bilinearly to its student's, as in
    ``attention_transfer_loss`` (Section 4.2.2; moonshine's own pairs share their sizes). F.normalize's eps
    (1e-12) as in the original; the teacher side is detached (moonshine's teacher is not trained either).
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"need the same, non-zero number of student and teacher layers, "
                         f"got {len(student_feats)} and {len(teacher_feats)}")
    at = lambda x: F.normalize(x.pow(2).mean(1).flatten(1))  # noqa: E731  (moonshine's ``at``)
    teacher_feats = [t.detach() if t.shape[-2:] == s.shape[-2:] else
                     F.interpolate(t.detach(), size=s.shape[-2:], mode="bilinear", align_corners=False)
                     for s, t in zip(student_feats, teacher_feats)]
    total = sum((at(s) - at(t)).pow(2).mean() for s, t in zip(student_feats, teacher_feats))
    return 3 / len(student_feats) * total


def features_for(method: str, features: dict) -> list[torch.Tensor]:
    """The layers attention transfer compares (Section 5.2.1): Output = the ASPP output, Atrous = each atrous
    branch, All = both."""
    if method == "at-output":
        return [features["aspp"]]
    if method == "at-atrous":
        return list(features["atrous"])
    return [*features["atrous"], features["aspp"]]


# =============================================================================================== the tables
@dataclass(frozen=True)
class Row:
    """One architecture of a table: backbone, output stride, ASPP block, kernel sharing."""

    backbone: str
    output_stride: int
    aspp: str
    ksac: bool

    @property
    def label(self) -> str:
        short = {"resnet50": "R50", "resnet101": "R101", "mobilenet_v2": "MNv2"}[self.backbone]
        return f"{short} OS{self.output_stride} {'KSAC ' if self.ksac else ''}{self.aspp}"

    @property
    def slug(self) -> str:
        return self.label.lower().replace(" ", "_").replace("-", "")


# The thesis's rows, in its order, with its printed numbers: (OS, KSAC, block, IoU, Params M, MAdds G).
# Tables 5.1 / A.1 name the block by the columns ST, DS, BTN; Tables 5.4 / A.2 by the decoder name, where ASPP is ST.
_T51 = [(16, 1, "ST", 74.38, 30.32, 14.94), (16, 0, "ST", 73.99, 39.63, 14.94), (16, 1, "DS", 73.81, 25.53, 9.21),
        (16, 0, "DS", 73.88, 26.61, 9.21), (16, 1, "BTN", 73.48, 25.09, 8.72), (16, 0, "BTN", 73.21, 25.39, 8.72),
        (32, 1, "ST", 73.14, 30.32, 9.29), (32, 0, "ST", 72.89, 39.63, 9.29), (32, 1, "DS", 72.21, 25.53, 5.95),
        (32, 0, "DS", 72.26, 26.61, 5.95), (32, 1, "BTN", 71.75, 25.09, 5.69), (32, 0, "BTN", 71.63, 25.39, 5.69)]
_TA1 = [(16, 1, "ST", 69.17, 3.75, 4.29), (16, 0, "ST", 69.34, 5.23, 4.29), (16, 1, "DS", 67.73, 2.48, 1.25),
        (16, 0, "DS", 68.12, 2.65, 1.25), (16, 1, "BTN", 67.64, 2.39, 1.03), (16, 0, "BTN", 68.15, 2.46, 1.03),
        (32, 1, "ST", 68.00, 3.75, 3.50), (32, 0, "ST", 68.20, 5.23, 3.50), (32, 1, "DS", 66.38, 2.48, 0.83),
        (32, 0, "DS", 66.44, 2.65, 0.83), (32, 1, "BTN", 66.31, 2.39, 0.64), (32, 0, "BTN", 66.41, 2.46, 0.64)]
_T54 = [(16, 1, "ST", 74.38, 30.32, 14.94), (16, 0, "ST", 73.99, 39.76, 14.94),
        (16, 1, "CASPP-1", 73.48, 25.09, 8.72), (16, 0, "CASPP-1", 73.21, 25.39, 8.72),
        (16, 1, "CASPP-2", 73.42, 25.43, 8.89), (16, 0, "CASPP-2", 74.25, 26.08, 8.89),
        (16, 1, "CASPP-3", 73.49, 26.49, 9.40), (16, 0, "CASPP-3", 73.48, 28.07, 9.40),
        (16, 1, "CASPP-4", 73.79, 26.59, 9.43), (16, 0, "CASPP-4", 73.64, 28.17, 9.43),
        (32, 1, "ST", 73.14, 30.32, 9.29), (32, 0, "ST", 72.89, 39.76, 9.29),
        (32, 1, "CASPP-1", 71.75, 25.09, 5.69), (32, 0, "CASPP-1", 71.63, 25.39, 5.69),
        (32, 1, "CASPP-2", 72.13, 25.43, 5.74), (32, 0, "CASPP-2", 72.29, 26.08, 5.74),
        (32, 1, "CASPP-3", 72.16, 26.49, 5.86), (32, 0, "CASPP-3", 71.85, 28.07, 5.86),
        (32, 1, "CASPP-4", 71.52, 26.59, 5.87), (32, 0, "CASPP-4", 71.57, 28.17, 5.87)]
_TA2 = [(16, 1, "ST", 69.17, 3.75, 4.29), (16, 0, "ST", 69.34, 5.23, 4.29),
        (16, 1, "CASPP-1", 67.64, 2.39, 1.03), (16, 0, "CASPP-1", 68.15, 2.46, 1.03),
        (16, 1, "CASPP-2", 68.41, 2.61, 1.12), (16, 0, "CASPP-2", 68.75, 2.83, 1.12),
        (16, 1, "CASPP-3", 68.73, 3.45, 1.46), (16, 0, "CASPP-3", 68.63, 4.15, 1.46),
        (16, 1, "CASPP-4", 67.65, 3.55, 1.49), (16, 0, "CASPP-4", 68.09, 4.25, 1.49),
        (32, 1, "ST", 68.00, 3.75, 3.50), (32, 0, "ST", 68.20, 5.23, 3.50),
        (32, 1, "CASPP-1", 66.31, 2.39, 0.64), (32, 0, "CASPP-1", 66.41, 2.46, 0.64),
        (32, 1, "CASPP-2", 67.39, 2.61, 0.67), (32, 0, "CASPP-2", 67.68, 2.83, 0.67),
        (32, 1, "CASPP-3", 67.59, 3.45, 0.75), (32, 0, "CASPP-3", 67.65, 4.15, 0.75),
        (32, 1, "CASPP-4", 66.10, 3.55, 0.76), (32, 0, "CASPP-4", 66.06, 4.25, 0.76)]
# Tables 5.2 / 5.3: the student rows of 5.1 / A.1 and the IoU of None, AT Output, AT Atrous, AT All, KD.
_T52 = [(74.38, 74.45, 74.16, 74.33, 70.46), (73.99, 74.36, 74.18, 74.28, 70.39), (73.81, 74.05, 73.90, 73.96, 68.25),
        (73.88, 74.12, 74.08, 74.22, 68.14), (73.48, 73.49, 73.63, 73.57, 68.45), (73.21, 73.49, 73.71, 73.91, 68.15),
        (73.14, 72.04, 72.78, 72.69, 70.46), (72.89, 72.12, 73.08, 72.84, 70.39), (72.21, 72.00, 72.57, 72.45, 68.25),
        (72.26, 72.05, 72.37, 72.36, 68.14), (71.75, 71.81, 72.02, 71.72, 68.45), (71.63, 71.66, 72.25, 72.07, 68.15)]
_T53 = [(69.17, 69.19, 69.38, 69.55, 65.84), (69.34, 69.32, 69.24, 69.28, 65.83), (67.73, 67.65, 68.32, 67.82, 64.34),
        (68.12, 67.79, 68.20, 67.77, 64.12), (67.64, 67.94, 68.42, 68.74, 63.91), (68.15, 67.65, 68.23, 68.08, 64.02),
        (68.00, 66.99, 66.92, 67.26, 64.89), (68.20, 66.47, 67.29, 67.36, 64.99), (66.38, 65.60, 66.37, 66.20, 63.12),
        (66.44, 65.45, 66.04, 66.17, 62.92), (66.31, 65.64, 66.12, 66.27, 62.59), (66.41, 65.97, 66.32, 66.55, 62.78)]


@dataclass(frozen=True)
class TableSpec:
    name: str                 # "5.1"
    title: str
    backbone: str
    rows: list                # (OS, KSAC, block, IoU, Params M, MAdds G) as printed
    block_header: str         # "columns" (ST / DS / BTN check marks) or "Decoder" (Tables 5.4, A.2)
    distill: list | None = None   # Tables 5.2, 5.3: the printed IoU per method

    def architectures(self) -> list[Row]:
        return [Row(self.backbone, os_, block, bool(ksac)) for os_, ksac, block, *_ in self.rows]


TABLES = {
    "5.1": TableSpec("5.1", "Table 5.1: DeepLabV3+ with the ResNet50 backbone", "resnet50", _T51, "columns"),
    "A.1": TableSpec("A.1", "Table A.1: DeepLabV3+ with the MobileNetV2 backbone", "mobilenet_v2", _TA1, "columns"),
    "5.4": TableSpec("5.4", "Table 5.4: ResNet50 backbone and variable ASPP modules", "resnet50", _T54, "Decoder"),
    "A.2": TableSpec("A.2", "Table A.2: MobileNetV2 backbone and variable ASPP modules", "mobilenet_v2", _TA2,
                     "Decoder"),
    "5.2": TableSpec("5.2", "Table 5.2: distilled DeepLabV3+ students with the ResNet50 backbone", "resnet50", _T51,
                     "columns", _T52),
    "5.3": TableSpec("5.3", "Table 5.3: distilled DeepLabV3+ students with the MobileNetV2 backbone",
                     "mobilenet_v2", _TA1, "columns", _T53),
}
TEACHER = Row("resnet50", 16, "ST", True)   # Section 5.2: "ResNet50, output stride 16, KSAC, standard ASPP"
PAPER_TEACHER_IOU = 74.38
MISPRINTS = {("5.1", 16, False, "ST"): "39.63M is a misprint of 39.76M (Table 5.4 prints 39.76M for this model)",
             ("5.1", 32, False, "ST"): "39.63M is a misprint of 39.76M (Table 5.4 prints 39.76M for this model)",
             ("5.1", 16, True, "DS"): "9.21G: this model computes to 9.198G (the reference code agrees)",
             ("5.1", 16, False, "DS"): "9.21G: this model computes to 9.198G (the reference code agrees)",
             ("A.2", 16, True, "CASPP-4"): "3.55M: this model computes to 3,555,893 (3.56M), the KSAC saving the "
                                           "thesis prints for CASPP-3; we read a rounding slip",
             ("A.2", 32, True, "CASPP-4"): "3.55M: this model computes to 3,555,893 (3.56M), the KSAC saving the "
                                           "thesis prints for CASPP-3; we read a rounding slip"}


# =============================================================================================== configuration
@dataclass
class Config(RunOptions):
    """The run's settings (the run options --seed, --device, --cache-dir, ... come from ``RunOptions``)."""

    table: str = "5.1"
    rows: tuple = ()                  # 1-based row numbers of the table; () = all rows
    # one model instead of a table (--backbone/--output-stride/--aspp/--ksac/--method)
    backbone: str | None = None
    output_stride: int = 16
    aspp: str = "ST"
    ksac: bool = False
    method: str = "none"
    profile_only: bool = False
    # distillation (Section 4.2.2)
    alpha: float = 0.9
    T: float = 4.0
    beta: float = 1000.0
    loss_scale: str = "printed"       # printed: Eq. 4.6, 4.8 as printed; moonshine: the adopted code's reductions
    # data
    data_root: str | None = None
    train_images: int = 384           # synthetic scenes (VOC: 10,582 trainaug)
    val_images: int = 48              # synthetic scenes (VOC: 1,449 val)
    image_size: int = 256             # synthetic scene side (VOC images are about 500 x 375)
    crop: int = 256                   # thesis: 256 (Section 4.1.1)
    scale: tuple = (0.5, 2.0)
    rate_divisor: int = 2             # atrous rates = the thesis's (6, 12, 18) / this; thesis 1 (docstring)
    strides: str = "16"               # output strides of the table rows trained (unless --rows); thesis "16,32"
    # optimisation (Section 4.1.1)
    batch_size: int = 8
    iterations: int = 60
    lr: float = 0.01
    backbone_lr: float = 0.0          # for a pre-trained backbone; thesis 0.001 (paper preset); 0 = frozen
    momentum: float = 0.9
    weight_decay: float = 1e-4
    backbone_init: str = "auto"       # imagenet | synthetic (stand-in, see the docstring) | scratch | auto:
    #                                   synthetic on the synthetic scenes, imagenet with --data-root
    backbone_weights: str | None = None
    pretrain_iterations: int = 300    # the synthetic stand-in's backbone training
    pretrain_crop: int = 96           # its crop (a stand-in for ImageNet's 224-px images; cheaper than --crop)
    repeats: int = 1                  # thesis: 2 ("run twice, keep the better")
    teacher_checkpoint: str | None = None
    teacher_iterations: int = 240     # the distillation teacher trained here (thesis: a Table 5.1 row, trained as the
    #                                   students are; 4x theirs in the default preset, so that it leads them: issue 16)
    # evaluation and cost
    eval_every: int = 0               # 0: evaluate once, at the end
    latency_repeats: int = 3
    panel_images: int = 4
    # run
    sync_bn: bool = False
    checkpoint_every: int = 200


PRESETS = {
    # A 2-core CPU: the 6 output-stride-16 rows of Table 5.1 at the thesis's 256-px crops with the atrous rates
    # halved (so that the rate-6 and rate-12 branches read features; docstring), heads trained on a fixed backbone
    # whose features are computed once per input (see the docstring): 7.5 minutes alone with an empty cache in bf16,
    # 11.0 with --no-amp (2-core AMD EPYC, Zen 4, 2026-12-07, commit a325519; README).
    "default": {},
    # The thesis's settings where it gives them; batch, iterations, weight decay are our choices (docstring).
    "paper": dict(crop=256, batch_size=16, iterations=30_000, backbone_init="imagenet", backbone_lr=0.001, repeats=2,
                  eval_every=2_000, checkpoint_every=1_000, latency_repeats=10, workers=8, rate_divisor=1,
                  teacher_iterations=30_000, strides="16,32"),
}


# =============================================================================================== data
def load_data(cfg: Config) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset, str]:
    """(training set, validation set, description): VOC 2012 trainaug / val with --data-root, else the synthetic
    21-class scenes (common/voc.py)."""
    if cfg.data_root:
        checked = dict(verdicts=Path(cfg.cache_dir) / VERDICTS_FILE, progress=cfg.progress)  # every file, up front
        return (voc_dataset(cfg.data_root, "trainaug", **checked), voc_dataset(cfg.data_root, "val", **checked),
                "VOC 2012 trainaug / val")
    train_set = SyntheticScenes("train", cfg.train_images, cfg.image_size, cfg.seed)
    val = SyntheticScenes("val", cfg.val_images, cfg.image_size, cfg.seed)
    return train_set, val, f"synthetic scenes {cfg.image_size}x{cfg.image_size} ({cfg.train_images} / {cfg.val_images})"


# =============================================================================================== models
def build(row: Row, rate_divisor: int = 1) -> DeepLabV3Plus:
    """``row``'s network, its atrous rates the thesis's divided by ``rate_divisor`` (--rate-divisor; docstring).

    Its weights are in channels-last memory format, so its convolutions run in NHWC (the inputs follow): measured
    faster on the 2-core AMD EPYC, 2026-12-05 (benchmarks/compare.py, and the default preset's step: batch 8 of
    256 px, frozen backbone, bf16): R50 ST 0.90-0.92x the time of a contiguous step, MNv2 ST 0.90x, R50 DS 1.00x;
    inference 0.80x. The numbers are those of a contiguous network up to float rounding."""
    model = build_deeplabv3plus(row.backbone, NUM_CLASSES, row.output_stride, row.aspp, row.ksac,
                                atrous_rates=run_rates(row.output_stride, rate_divisor))
    return model.to(memory_format=torch.channels_last)


def run_rates(output_stride: int, rate_divisor: int = 1) -> tuple[int, int, int]:
    """The atrous rates a run uses at ``output_stride``: the thesis's (6, 12, 18 at OS16 and OS32) / ``rate_divisor``.
    """
    return tuple(r // rate_divisor for r in default_atrous_rates(output_stride))


# =============================================================================================== frozen features
FEATURE_MEMO_BYTES = 3 << 30   # backbone features kept for reuse (3 GiB; beyond it they are computed, not kept)


class FrozenBackboneFeatures:
    """A frozen backbone's (low, high) features, computed once per input and reused by every row.

    With --backbone-lr 0 (the default preset) every row starts from the same stand-in backbone and never changes it,
    and every row sees the same batch at the same step (``training_batches`` is a function of the seed and step):
    the backbone's features of a batch are the same for all rows, and for the teacher, which shares that backbone.
    ``serve(model)`` makes ``model.backbone`` answer from this memo (keyed by its weights, its output stride and the
    input's bytes), running it in eval mode: a frozen backbone uses its BatchNorm statistics, not the batch's. The
    features are computed under bf16 autocast where the CPU has bf16 (``common.devices.autocast``; any GPU with
    --amp), kept in that precision and handed out as float32, so a feature is the same whether it was computed now
    or kept, and serves callers inside autocast (training) and outside it (the figures) alike: a resumed run,
    or a row run alone (--rows K), sees what the table's run saw. Only the backbone's forward pass is replaced; the
    trained head is unchanged, and the model is restored after training (so Params/MAdds count the whole network).
    """

    def __init__(self, device: torch.device, amp: bool, max_bytes: int = FEATURE_MEMO_BYTES) -> None:
        self.device, self.amp, self.max_bytes, self.bytes = device, amp, max_bytes, 0
        self.kept: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    @staticmethod
    def digest(*tensors: torch.Tensor) -> str:
        h = hashlib.blake2b(digest_size=16)
        for t in tensors:
            t = t.detach().contiguous().cpu()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def features(self, backbone: torch.nn.Module, prefix: tuple, compute, x: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (*prefix, self.digest(x))
        if key in self.kept:
            self.hits += 1
            return tuple(t.to(x.device, torch.float32) for t in self.kept[key])
        self.misses += 1
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad(), autocast(x.device, self.amp, cpu_bf16=True):
            low, high = compute(x)
        backbone.train(was_training)
        dtype = low.dtype if low.dtype == high.dtype else torch.float32
        low, high = low.to(dtype), high.to(dtype)
        size = low.numel() * low.element_size() + high.numel() * high.element_size()
        if self.bytes + size <= self.max_bytes:
            self.kept[key] = (low.cpu(), high.cpu())
            self.bytes += size
        return low.float(), high.float()   # float32 (exact): a caller outside autocast (the figures) gets its dtype

    @contextlib.contextmanager
    def serve(self, model: DeepLabV3Plus):
        """Within the block ``model.backbone`` returns the memo's features (see the class docstring)."""
        backbone = model.backbone
        prefix = (model.backbone_name, model.output_stride, self.digest(*backbone.state_dict().values()))
        compute = backbone.forward
        backbone.forward = lambda x: self.features(backbone, prefix, compute, x)
        try:
            yield model
        finally:
            del backbone.forward   # the class's forward again


def teacher_outputs(teacher: DeepLabV3Plus, x: torch.Tensor, memo: OutputMemo) -> tuple[torch.Tensor, dict]:
    """The frozen teacher's logits and features for batch ``x`` (Section 5.2), computed once per input for all
    students: every row sees the same batch at the same step (``training_batches``), so the first student computes
    them and the others reuse them from ``memo``, keyed by the input's bytes. Kept at the decoder's quarter
    resolution (``DeepLabV3Plus.decode``) and upsampled here, so a reused output is bit-identical to a new one."""
    def compute() -> tuple[torch.Tensor, ...]:
        small, feats = teacher.decode(x)
        return (small, *feats["atrous"], feats["aspp"])

    with torch.no_grad():
        small, *atrous, aspp = memo(FrozenBackboneFeatures.digest(x), compute, x.device)
        return upsample_logits(small, x.shape[-2:]), {"atrous": atrous, "aspp": aspp}


@functools.lru_cache(maxsize=None)
def imagenet_backbone(backbone: str) -> dict:
    """torchvision's ImageNet weights (Section 2.2.2) for ``backbone``, fetched once; common.deeplab turns a failed
    download into one line saying where to place the file."""
    return build_deeplabv3plus(backbone, NUM_CLASSES, 16, "DS", pretrained_backbone=True).backbone.state_dict()


def backbones_to_train(cfg: Config) -> set[str]:
    """The backbones this run trains: the table's (or the one model's), and ResNet-50 for a teacher to train."""
    needed = {cfg.backbone or TABLES[cfg.table].backbone}
    if (TABLES[cfg.table].distill or cfg.method != "none") and not cfg.teacher_checkpoint:
        needed.add(TEACHER.backbone)
    return needed


# =============================================================================================== the lab
class Lab:
    """The thesis's procedure: each row trained with its recipe and objective, the teacher, the starting backbone.
    ``trained`` holds the rows' ``Trained`` (info: the ``Row`` and the method)."""

    def __init__(self, cfg: Config, session: Session, train_set, val, data_name: str) -> None:
        self.cfg, self.session, self.train_set, self.val, self.data_name = cfg, session, train_set, val, data_name
        self.run, self.device, self.ddp, self.say = session.run, session.device, session.ddp, session.say
        self.results = ResultsCSV(self.run.path / "results.csv")
        self.trained: list[Trained] = []
        self.checks: list[Check] = []   # mechanism checks (common.checks), written to checks.csv/md at the end
        self._teacher: Trained | None = None
        self._backbones: dict[str, dict] = {}
        self.frozen = FrozenBackboneFeatures(self.device, cfg.amp)
        self.teacher_memo = OutputMemo()   # the teacher's outputs per input, shared by the students (teacher_outputs)
        self._teacher_frozen = contextlib.ExitStack()   # the teacher's backbone served from ``frozen``, for good

    # ------------------------------------------------------------------ one model
    def train_row(self, row: Row, method: str = "none", tag: str = "", iterations: int | None = None) -> Trained:
        """Train ``row`` with the thesis's recipe (Section 4.1.1) and objective ``method`` for ``iterations``
        (default --iterations); with --repeats R, R runs with seeds seed, seed+1, ... and keep the one with the
        higher validation mIoU (Chapter 5)."""
        runs = [self._train_once(row, method, self.cfg.seed + r, f"{tag}{row.slug}_{method}"
                                 + (f"_r{r + 1}" if self.cfg.repeats > 1 else ""), iterations or self.cfg.iterations)
                for r in range(self.cfg.repeats)]
        best = max(runs, key=lambda t: t.metrics["miou"])
        self.trained.append(best)
        return best

    def _train_once(self, row: Row, method: str, seed: int, name: str, iterations: int) -> Trained:
        cfg, device = self.cfg, self.device
        seed_everything(seed)
        model = build(row, cfg.rate_divisor).to(device)
        pretrained = self.init_backbone(model)
        teacher = self.teacher().model if method != "none" else None
        net = self.wrap(model)
        load = functools.partial(augmented_item, self.train_set, cfg.crop, tuple(cfg.scale))
        batch = training_batches(load, len(self.train_set), iterations, batch_size=cfg.batch_size,
                                 session=self.session, seed=seed)

        def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
            x, y = batch(step)
            logits, feats = net(x, return_features=True) if method.startswith("at") else (net(x), None)
            t_logits, t_feats = teacher_outputs(teacher, x, self.teacher_memo) if teacher is not None else (None, None)
            return caspp_objective(method, logits, feats, t_logits, t_feats, y, cfg.alpha, cfg.beta, cfg.T,
                                   cfg.loss_scale)

        head_lr, backbone_lr = cfg.lr, (cfg.backbone_lr if pretrained else cfg.lr)
        groups = [{"params": model.head_parameters(), "lr": head_lr}]
        if backbone_lr > 0:
            groups.append({"params": model.backbone.parameters(), "lr": backbone_lr})
        else:  # lr 0: a frozen backbone, its features computed once per input for every row (FrozenBackboneFeatures)
            model.backbone.requires_grad_(False)
        optimizer = torch.optim.SGD(groups, lr=head_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    fused=True)
        scheduler = make_scheduler(optimizer, "poly", iterations)         # Eq. 4.1, every iteration
        frozen = self.frozen.serve(model) if backbone_lr == 0 else contextlib.nullcontext()
        with frozen:
            trained = train(model, optimizer, loss_fn, iterations, session=self.session, name=name,
                            label=f"{row.label} {METHOD_COLUMNS[method]}", evaluate=lambda: evaluate_segmentation(
                                model, self.val, device, NUM_CLASSES, amp=cfg.amp, cpu_bf16=True, ddp=self.ddp),
                            eval_every=cfg.eval_every, scheduler=scheduler,
                            reseed=False,            # seeded above: dropout draws on from where the set-up left it
                            best_key=None,           # the final model, not the best validation one (docstring)
                            diverge_above=math.inf,  # only a non-finite loss: beta * L_A alone can exceed 1000
                            cpu_bf16=True)           # bf16 autocast where the CPU has it (--no-amp: fp32)
        trained.info.update(row=row, method=method)
        self.say(f"  {name}: IoU {100 * trained.metrics['miou']:.2f}  (val loss {trained.metrics['val_loss']:.3f})")
        return trained

    def wrap(self, model: DeepLabV3Plus) -> torch.nn.Module:
        """DistributedDataParallel under torchrun (SyncBatchNorm with --sync-bn), else the model itself."""
        if not self.ddp.enabled:
            return model
        if self.cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ------------------------------------------------------------------ backbone initialisation
    def init_backbone(self, model: DeepLabV3Plus) -> bool:
        """Load the starting backbone; True if it is pre-trained (then it trains at --backbone-lr, Section 4.1.1)."""
        cfg = self.cfg
        if cfg.backbone_weights:
            load_backbone_weights(model, cfg.backbone_weights)
            return True
        if cfg.backbone_init == "scratch":
            return False
        name = model.config()["backbone"]
        if name not in self._backbones:   # the same starting weights for every row (loaded once)
            with torch.random.fork_rng():  # fetching them must not move the row's random stream: a row trains
                #                            the same alone (--rows K) as in its table
                self._backbones[name] = (imagenet_backbone(name) if cfg.backbone_init == "imagenet"
                                         else self.synthetic_backbone(name))
        model.backbone.load_state_dict(self._backbones[name])
        return True

    def synthetic_backbone(self, backbone: str) -> dict:
        """The stand-in for ImageNet weights: a backbone trained once on the synthetic training scenes inside a
        DeepLabV3+ (OS16, DS; our choice), cached under --cache-dir by its whole configuration."""
        cfg = self.cfg
        key = {"what": "synthetic backbone", "backbone": backbone, "iterations": cfg.pretrain_iterations,
               "data": self.data_name, "crop": cfg.pretrain_crop, "batch": cfg.batch_size, "lr": cfg.lr,
               "seed": cfg.seed, "rates": run_rates(16, cfg.rate_divisor), "amp": cfg.amp}
        path = cache_path(cfg.cache_dir, f"deeplab_backbone_{backbone}", key)
        row = Row(backbone, 16, "DS", False)

        def pretrain(model: DeepLabV3Plus) -> bool:
            self.say(f"pre-training the {backbone} backbone on the synthetic scenes ({cfg.pretrain_iterations} "
                     f"iterations; cached in {path})")
            sub = replace(cfg, iterations=cfg.pretrain_iterations, crop=cfg.pretrain_crop, backbone_init="scratch",
                          backbone_weights=None, repeats=1)
            lab = Lab(sub, Session(self.run, self.device, sub, self.ddp), self.train_set, self.val, self.data_name)
            model.load_state_dict(lab._train_once(row, "none", cfg.seed + 1000,
                                                  f"pretrain_{backbone}_backbone", sub.iterations).model.state_dict())
            return True

        model = build(row, cfg.rate_divisor).to(self.device)
        load_or_train(model, path, pretrain, what="cached backbone", extra={"key": json.dumps(key)}, ddp=self.ddp)
        return model.backbone.state_dict()

    # ------------------------------------------------------------------ the teacher (Section 5.2)
    def teacher(self) -> Trained:
        """ResNet-50 / OS16 / KSAC / ST: from --teacher-checkpoint, from the cache, or trained now (as a Table 5.1
        row, with the same recipe and repeats) and cached."""
        if self._teacher is not None:
            return self._teacher
        cfg = self.cfg
        model = build(TEACHER, cfg.rate_divisor).to(self.device)
        if cfg.teacher_checkpoint:
            load_weights(model, cfg.teacher_checkpoint, what="--teacher-checkpoint")
            source = cfg.teacher_checkpoint
        else:
            key = {"what": "teacher", "row": asdict(TEACHER), "iterations": cfg.teacher_iterations,
                   "data": self.data_name,
                   "crop": cfg.crop, "batch": cfg.batch_size, "lr": cfg.lr, "backbone_lr": cfg.backbone_lr,
                   "init": cfg.backbone_init, "weights": cfg.backbone_weights, "repeats": cfg.repeats,
                   "pretrain": cfg.pretrain_iterations, "seed": cfg.seed, "rates": run_rates(16, cfg.rate_divisor),
                   "pretrain_crop": cfg.pretrain_crop, "amp": cfg.amp}
            path = cache_path(cfg.cache_dir, "deeplab_teacher", key)

            def train_teacher(model: DeepLabV3Plus) -> bool:
                self.say(f"training the teacher {TEACHER.label}, {cfg.teacher_iterations} iterations (cached in "
                         f"{path})")
                trained = self.train_row(TEACHER, "none", tag="teacher_", iterations=cfg.teacher_iterations)
                self.trained.remove(trained)
                model.load_state_dict(trained.model.state_dict())
                return True

            load_or_train(model, path, train_teacher, ddp=self.ddp)
            source = str(path)
        freeze(model)
        if cfg.backbone_lr == 0:   # a frozen teacher: its backbone's features from the memo the students fill
            self._teacher_frozen.enter_context(self.frozen.serve(model))
        metrics = evaluate_segmentation(model, self.val, self.device, NUM_CLASSES, amp=cfg.amp, cpu_bf16=True,
                                        ddp=self.ddp)
        self._teacher = Trained("teacher", TEACHER.label, model, metrics, info={"row": TEACHER, "method": "none"})
        self.say(f"teacher {TEACHER.label} from {source}: IoU {100 * self._teacher.metrics['miou']:.2f} "
                 f"(thesis: {PAPER_TEACHER_IOU})")
        return self._teacher

    # ------------------------------------------------------------------ records
    def record(self, experiment: str, trained: Trained, cost: dict) -> None:
        if self.ddp.is_main:
            self.results.add(experiment=experiment, model=trained.label, params=cost["params"], macs=cost["macs"],
                             loss=round(trained.metrics["val_loss"], 5), iou=round(trained.metrics["miou"], 5),
                             iterations=len(trained.train_loss),
                             notes=f"best of {self.cfg.repeats}" + ("; diverged" if trained.diverged else ""))


# =============================================================================================== experiments
def selected(spec: TableSpec, cfg: Config) -> list[tuple[int, tuple]]:
    """(1-based row number, printed row) of the rows --rows selects, else those at the output strides --strides
    names (the default preset: OS16 only, the paper preset: every row)."""
    numbered = list(enumerate(spec.rows, start=1))
    if not cfg.rows:
        return [(i, r) for i, r in numbered if r[0] in parse_strides(cfg.strides)]
    return [(i, r) for i, r in numbered if i in cfg.rows]


# =============================================================================================== mechanism checks
MOST = 0.5   # "most off-centre taps read features" (issue 16), read as: at least half of them, over all positions


@functools.lru_cache(maxsize=None)
def training_map_size(backbone: str, output_stride: int, crop: int) -> tuple[int, int]:
    """(height, width) of the high-level feature map the ASPP sees for a ``crop`` x ``crop`` training crop, measured
    on the backbone itself (ResNet gives ceil(crop / OS); MobileNetV2's unpadded stem one less at some sizes)."""
    model = build_deeplabv3plus(backbone, NUM_CLASSES, output_stride, "DS").backbone.eval()
    with torch.no_grad():
        _, high = model(torch.zeros(1, 3, crop, crop))
    return tuple(high.shape[-2:])


def atrous_checks(rows: list[Row], crop: int, rate_divisor: int, about: str, prefix: str = "") -> list[Check]:
    """Section 2.2.1 / 4.1: an atrous branch enlarges the field of view only where its off-centre taps read
    features; on a map smaller than its rate they read zero padding and the branch is a 1x1 convolution in
    disguise (and KSAC then shares only a centre tap). Per output stride of ``rows`` and per branch, the fraction
    of off-centre taps that read features on the training crop's feature map (``common.checks.atrous_tap_fraction``):
    the branches of the thesis's rates 6 and 12 must read features with MOST of them; the third (rate 18) must read
    some (at the thesis's own 256-px crops its rate 18 reads none: ``thesis_geometry_note``)."""
    checks = []
    for output_stride in sorted({r.output_stride for r in rows}):
        height, width = training_map_size(rows[0].backbone, output_stride, crop)
        pairs = zip(default_atrous_rates(output_stride), run_rates(output_stride, rate_divisor))
        for branch, (thesis_rate, rate) in enumerate(pairs):
            name = (f"{prefix}off-centre taps reading features, OS{output_stride} rate-{thesis_rate} branch (rate "
                    f"{rate}, {height}x{width} training maps)")
            fraction = atrous_tap_fraction(height, width, rate)
            checks.append(at_least(name, fraction, MOST, about) if branch < 2 else
                          Check(name, fraction, "> 0", fraction > 0, about))
    return checks


def thesis_geometry_note(crop: int = 256) -> str:
    """What the thesis's own recipe gives: its 256-px crops with rates (6, 12, 18) at OS16 and OS32."""
    parts = []
    for output_stride in (16, 32):
        side = crop // output_stride
        shares = ", ".join(f"rate {r} {atrous_tap_fraction(side, side, r):.2f}" for r in default_atrous_rates(
            output_stride))
        parts.append(f"OS{output_stride} ({side}x{side} maps): {shares}")
    return (f"atrous geometry of the thesis's own recipe ({crop}-px crops, rates 6, 12, 18; Section 4.1.1 admits the "
            f"atrous layers then read zero padding) -- share of off-centre taps reading features: "
            f"{'; '.join(parts)}. DeepLabV3 chose these rates for 513-px crops (33x33 maps at OS16).")


def teacher_checks(teacher: Trained, alone: list[Trained], about: str) -> list[Check]:
    """The teacher's validation mIoU above each student-alone row's ("None" column), by at least 5 points: a
    teacher that is not clearly better has nothing to teach (issue 16). Table 5.2's first student is the teacher's
    own architecture, so that row cannot pass unless the teacher trained longer than its student."""
    return [replace(teacher_margin(teacher.metrics["miou"], t.metrics["miou"], about=about),
                    check=f"teacher mIoU above the student alone (points), {t.info['row'].label}") for t in alone]


def cell_cols(spec: TableSpec, row: Row) -> list:
    """The architecture columns as the thesis prints them."""
    tick = lambda b: "✓" if b else ""  # noqa: E731
    if spec.block_header == "Decoder":
        return [row.output_stride, tick(row.ksac), "ASPP" if row.aspp == "ST" else row.aspp]
    return [row.output_stride, tick(row.ksac), tick(row.aspp == "ST"), tick(row.aspp == "DS"),
            tick(row.aspp == "BTN")]


def arch_header(spec: TableSpec) -> list[str]:
    return ["OS", "KSAC", "Decoder"] if spec.block_header == "Decoder" else ["OS", "KSAC", "ST", "DS", "BTN"]


def fmt_m(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def fmt_g(n: int) -> str:
    return f"{n / 1e9:.2f}G"


def protocol_notes(lab: Lab, trained: bool = True, paper: bool = True) -> list[str]:
    c = lab.cfg
    notes = ["paper columns: the thesis's printed numbers (PASCAL VOC 2012 val, ImageNet backbone, 256 crops); "
             "ours: measured by this run."] if paper else []
    notes.append("Params and MAdds: ptflops on 1x3x256x256 (Section 4.3); latency: ours, median of "
                 f"{c.latency_repeats} forward passes of one 256x256 image on {lab.device}"
                 f"{f' ({torch.get_num_threads()} threads)' if lab.device.type == 'cpu' else ''}.")
    if trained:
        notes.append(f"ours: {lab.data_name}, preset '{c.preset}', batch {c.batch_size}, crop {c.crop}, scale "
                     f"{tuple(c.scale)}, {c.iterations} iterations, SGD lr {c.lr} (backbone {c.backbone_lr} when "
                     f"pre-trained{'; 0 = frozen' if c.backbone_lr == 0 else ''}), momentum {c.momentum}, "
                     f"weight decay {c.weight_decay}, poly (Eq. 4.1); backbone "
                     f"init '{c.backbone_init}'; best of {c.repeats} run(s); final model; IoU on whole validation "
                     f"images at a single scale (100 x mIoU, 21 classes); atrous rates "
                     f"{', '.join(map(str, run_rates(16, c.rate_divisor)))} at OS16 and OS32 (the thesis's 6, 12, 18"
                     f"{f' / {c.rate_divisor}, --rate-divisor' if c.rate_divisor > 1 else ''}).")
    if c.backbone_init == "synthetic" and trained:
        notes.append("backbone: trained once on the synthetic training scenes and shared by every row, a stand-in "
                     "for the thesis's ImageNet weights (which cannot be downloaded here)"
                     + ("; fixed (eval-mode BatchNorm), its features computed once per input for every row."
                        if c.backbone_lr == 0 else "."))
    return notes


def run_architecture_table(lab: Lab, spec: TableSpec) -> None:
    """Tables 5.1, A.1, 5.4, A.2: train each architecture; IoU, Params, MAdds beside the thesis's."""
    cfg = lab.cfg
    share_cols = ["ASPP % of Params (ours)", "ASPP % of MAdds (ours)"] if cfg.profile_only else []
    table = Table(spec.title, arch_header(spec) + ["IoU (paper)", "IoU (ours)", "Params (paper)", "Params (ours)",
                                                   "MAdds (paper)", "MAdds (ours)", "latency ms (ours)"]
                  + share_cols)
    points, stem = [], f"table{spec.name.replace('.', '_')}"
    if not cfg.profile_only:
        lab.checks += atrous_checks([Row(spec.backbone, r[0], r[2], bool(r[1])) for _, r in selected(spec, cfg)],
                                    cfg.crop, cfg.rate_divisor, stem)
    for number, (os_, ksac, block, iou, params, madds) in selected(spec, cfg):
        row = Row(spec.backbone, os_, block, bool(ksac))
        trained = None if cfg.profile_only else lab.train_row(row)
        cost = profile(trained.model if trained else build(row, cfg.rate_divisor), MACS_INPUT, lab.device, warmup=1,
                       repeats=cfg.latency_repeats)   # Params, MAdds as the thesis counts them (Section 4.3)
        if trained:
            lab.record(f"table{spec.name}", trained, cost)
            points.append((row, trained.metrics["miou"], cost["macs"]))
        table.add(*cell_cols(spec, row), f"{iou:.2f}", iou_cell(trained) if trained else "-",
                  f"{params:.2f}M", fmt_m(cost["params"]), f"{madds:.2f}G", fmt_g(cost["macs"]),
                  f"{1000 * cost['latency_s']:.1f}",
                  *([f"{100 * f:.1f}%" for f in aspp_share(build(row), cost)] if cfg.profile_only else []))
        lab.say(f"row {number} {row.label}: Params {fmt_m(cost['params'])} (paper {params:.2f}M), MAdds "
                f"{fmt_g(cost['macs'])} (paper {madds:.2f}G)")
    table.notes = protocol_notes(lab, trained=not cfg.profile_only) + misprint_notes(spec, cfg)
    if cfg.profile_only:
        table.notes.append(ASPP_SHARE_NOTE)
    finish_table(lab, table, stem)
    if points:
        plot_iou_vs_madds(lab, spec, points)


ASPP_SHARE_NOTE = ("ASPP %: the ASPP module's share of the whole model's Params and MAdds (1x3x256x256, ptflops). "
                   "Section 4.2.3 says the ASPP \"can be responsible for up to 50% of the total parameters and "
                   "about 25% of the MAdds in a standard DeepLabV3+ model\" (read: the row OS16, ST, no KSAC); "
                   "its Figure 4.3 (MobileNetV2, CASPP-4, unshared) prints 56.326% and 39.789%, which this count "
                   "gives for that model.")


def aspp_share(model: DeepLabV3Plus, cost: dict) -> tuple[float, float]:
    """(Params, MAdds) of the ASPP module as fractions of ``cost`` (the whole model's, from ``profile`` on
    MACS_INPUT): Section 4.2.3's "up to 50% of the total parameters and about 25% of the MAdds". The ASPP's MAdds
    are counted the same way (ptflops hooks) on the backbone's high-level output for MACS_INPUT."""
    device, was_training = next(model.parameters()).device, model.training
    with torch.no_grad():
        _, high = model.eval().backbone(torch.zeros(MACS_INPUT, device=device))
    model.train(was_training)
    return (count_parameters(model.aspp) / cost["params"],
            count_macs(model.aspp, (1, *high.shape[1:])) / cost["macs"])


def iou_cell(trained: Trained) -> str:
    return f"{100 * trained.metrics['miou']:.2f}" + (" (diverged)" if trained.diverged else "")


def misprint_notes(spec: TableSpec, cfg: Config | None = None) -> list[str]:
    """The thesis's misprints among the rows this run shows (all of the table's without ``cfg``)."""
    shown = {(r[0], bool(r[1]), r[2]) for _, r in selected(spec, cfg)} if cfg else None
    return [f"{'OS' + str(os_)} {'KSAC ' if ksac else ''}{block}: {text}"
            for (name, os_, ksac, block), text in MISPRINTS.items()
            if name == spec.name and (shown is None or (os_, ksac, block) in shown)]


def run_distillation_table(lab: Lab, spec: TableSpec) -> None:
    """Tables 5.2, 5.3: each student trained alone (None), with AT on Output / Atrous / All, and with KD."""
    cfg = lab.cfg
    header = arch_header(spec)
    for column in METHOD_COLUMNS.values():
        header += [f"{column} (paper)", f"{column} (ours)"]
    table, stem = Table(spec.title, header), f"table{spec.name.replace('.', '_')}"
    students = [Row(spec.backbone, r[0], r[2], bool(r[1])) for _, r in selected(spec, cfg)]
    lab.checks += atrous_checks(students, cfg.crop, cfg.rate_divisor, stem)
    if TEACHER.output_stride not in {r.output_stride for r in students} or spec.backbone != TEACHER.backbone:
        lab.checks += atrous_checks([TEACHER], cfg.crop, cfg.rate_divisor, stem,   # the maps the source trained on
                                    prefix="distillation source R50: ")
    teacher, alone = lab.teacher(), []
    for (number, (os_, ksac, block, *_)) in selected(spec, cfg):
        row = Row(spec.backbone, os_, block, bool(ksac))
        printed = spec.distill[number - 1]
        cells = cell_cols(spec, row)
        cost = None
        for method, paper_iou in zip(METHODS, printed):
            trained = lab.train_row(row, method)
            cost = cost or profile(trained.model, MACS_INPUT, lab.device, warmup=1, repeats=cfg.latency_repeats)
            lab.record(f"table{spec.name}", trained, cost)
            cells += [f"{paper_iou:.2f}", iou_cell(trained)]
            alone += [trained] if method == "none" else []
        table.add(*cells)
    lab.checks += teacher_checks(teacher, alone, stem)
    table.notes = protocol_notes(lab) + [
        f"teacher {TEACHER.label}: IoU (ours) {100 * teacher.metrics['miou']:.2f}, thesis {PAPER_TEACHER_IOU}.",
        *distillation_notes(cfg)]
    if spec.name == "5.2":
        table.notes.append("the thesis's KD columns are identical for its OS16 and OS32 rows; printed as given.")
    finish_table(lab, table, stem)
    plot_attention(lab, teacher)


def distillation_notes(cfg: Config) -> list[str]:
    """What the KD and AT columns optimised, in the reading --loss-scale chose."""
    if cfg.loss_scale == "moonshine":
        return [f"--loss-scale moonshine (the reductions of the code the thesis adopted, Crowley et al. 2019, "
                f"pytorch-moonshine funcs.py): KD = 2 alpha T^2 KL summed / (N x C x H x W), every pixel, + "
                f"(1 - alpha) CE over labelled pixels, alpha {cfg.alpha}, T {cfg.T}; AT: L_S + beta (3 / N_L) "
                f"sum_i mean over N x H x W of the squared difference of L2-normalised attention maps, beta "
                f"{cfg.beta}; teacher layers resized bilinearly to the student's before the attention map."]
    return [f"KD: Eq. 4.6 as printed, alpha {cfg.alpha}, T {cfg.T}, both terms averaged over labelled pixels; AT: "
            f"Eq. 4.8-4.9 as printed, beta {cfg.beta}, L2 norm of the difference of L2-normalised attention maps "
            f"(--loss-scale printed); teacher layers resized bilinearly to the student's before the attention map "
            f"(Section 4.2.2)."]


def run_one_model(lab: Lab) -> None:
    """--backbone/--output-stride/--aspp/--ksac[/--method]: one architecture, trained (or only profiled)."""
    cfg = lab.cfg
    row = Row(cfg.backbone, cfg.output_stride, cfg.aspp, cfg.ksac)
    if not cfg.profile_only:
        lab.checks += atrous_checks([row], cfg.crop, cfg.rate_divisor, "one_model")
    trained = None if cfg.profile_only else lab.train_row(row, cfg.method)
    cost = profile(trained.model if trained else build(row, cfg.rate_divisor), MACS_INPUT, lab.device, warmup=1,
                   repeats=cfg.latency_repeats)
    table = Table(f"One model: {row.label}, {METHOD_COLUMNS[cfg.method]}",
                  ["model", "method", "IoU (ours)", "Params", "MAdds", "latency ms", "weights MB"])
    table.add(row.label, METHOD_COLUMNS[cfg.method], iou_cell(trained) if trained else "-",
              fmt_m(cost["params"]), fmt_g(cost["macs"]), f"{1000 * cost['latency_s']:.1f}",
              f"{cost['size_bytes'] / 1e6:.1f}")
    table.notes = protocol_notes(lab, trained=trained is not None, paper=False)
    if trained and cfg.method != "none":
        table.notes += distillation_notes(cfg)
    if trained:
        lab.record("one_model", trained, cost)
    finish_table(lab, table, "one_model")


def finish_table(lab: Lab, table: Table, stem: str) -> None:
    """Write the table (failed mechanism checks that undermine it atop it) and print it."""
    table.warnings = failed_lines(lab.checks, stem)
    if lab.checks:
        table.notes.append(thesis_geometry_note())
    if lab.ddp.is_main:
        table.write(lab.run.path, stem)
        print("\n" + table.markdown())


# =============================================================================================== figures
def plot_iou_vs_madds(lab: Lab, spec: TableSpec, points: list) -> None:
    """IoU against MAdds for every trained row, ours beside the thesis's."""
    if not lab.ddp.is_main:
        return
    paper = {Row(spec.backbone, o, b, bool(k)): (iou, g) for o, k, b, iou, _, g in spec.rows}
    plot_scatter(lab.run.figures / f"iou_vs_madds_{spec.name.replace('.', '_')}.png",
                 {"ours": ([m / 1e9 for _, _, m in points], [100 * i for _, i, _ in points],
                           [r.label.split(" ", 1)[1] for r, _, _ in points]),
                  "thesis (VOC)": ([paper[r][1] for r, _, _ in points], [paper[r][0] for r, _, _ in points],
                                   [r.label.split(" ", 1)[1] for r, _, _ in points])},
                 f"{spec.title}: IoU against MAdds (1x3x256x256)", "GMAdds", "IoU")


def plot_predictions(lab: Lab) -> None:
    """Figures 5.1 / 5.3: validation images, their ground truth and each trained model's prediction."""
    if not lab.ddp.is_main or not lab.trained:
        return
    models = ([lab._teacher] if lab._teacher else []) + lab.trained
    models = models[:7]
    rows = []
    for i in range(min(lab.cfg.panel_images, len(lab.val))):
        image, mask = lab.val[i]
        cells = [("image", image.permute(1, 2, 0).numpy()), ("ground truth", colorize(mask))]
        for t in models:
            title = t.label if t.info["method"] != "none" else t.info["row"].label
            cells.append((title, colorize(predict_segmentation(t.model, image))))
        rows.append(cells)
    plot_panel(lab.run.figures / "predictions.png", rows, "validation images: ground truth and predictions")


def plot_attention(lab: Lab, trained: Trained) -> None:
    """Figure 5.2: the attention maps (Eq. 4.7) of each atrous branch and of the ASPP output."""
    if not lab.ddp.is_main:
        return
    rates = trained.model.atrous_rates
    rows = []
    for i in range(min(lab.cfg.panel_images, len(lab.val))):
        image, mask = lab.val[i]
        model = trained.model.eval()
        with torch.no_grad():
            _, feats = model(normalize(image)[None].to(lab.device), return_features=True)
        maps = [attention_map(f.float())[0].cpu().numpy() for f in [*feats["atrous"], feats["aspp"]]]
        rows.append([("image", image.permute(1, 2, 0).numpy()), ("ground truth", colorize(mask))]
                    + [(f"rate {r}", m) for r, m in zip(rates, maps)] + [("ASPP-out", maps[-1])])
    plot_panel(lab.run.figures / "attention_maps.png", rows, f"attention maps of {trained.info['row'].label}",
               cmap="magma")


def plot_training_curves(lab: Lab) -> None:
    if not lab.ddp.is_main or not lab.trained:
        return
    curves = {t.label: (list(range(1, len(t.train_loss) + 1)), t.train_loss) for t in lab.trained}
    plot_curves(lab.run.figures / "training_loss.png", curves, "training loss", ylabel="loss")


# =============================================================================================== command line
def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description="Reproduce Kowalski (2021), 'Efficient compression of semantic segmentation neural networks': "
                    "DeepLabV3+ with cheap convolutions (DS, BTN), kernel sharing (KSAC), Compressed ASPP, and "
                    "distillation (KD, attention transfer). Without --data-root it trains on built-in synthetic "
                    "21-class scenes; everything goes to a run folder (see README).",
        epilog="examples:\n  python reproduce_deeplab_caspp.py                       # Table 5.1, reduced, CPU\n"
               "  python reproduce_deeplab_caspp.py --profile-only --table 5.4\n"
               "  python reproduce_deeplab_caspp.py --table 5.2 --rows 3,4\n"
               "  python reproduce_deeplab_caspp.py --backbone mobilenet_v2 --aspp CASPP-2 --ksac\n"
               "  python reproduce_deeplab_caspp.py --preset paper --data-root data/voc --table 5.4\n"
               "  torchrun --nproc_per_node=4 reproduce_deeplab_caspp.py --preset paper --data-root data/voc\n"
               "  python reproduce_deeplab_caspp.py --resume runs/reproduce_deeplab_caspp/20261121-120000",
        formatter_class=help_formatter(Config, PRESETS))   # appends each flag's default
    p.add_argument("--table", choices=list(TABLES), help="which table to reproduce")
    p.add_argument("--rows", metavar="LIST", help="row numbers of the table as printed, e.g. 1,3,5 (default all)")
    p.add_argument("--profile-only", action="store_const", const=True,
                   help="only the Params, MAdds and latency columns, no training (seconds)")
    one = p.add_argument_group("one model instead of a table")
    one.add_argument("--backbone", choices=BACKBONES,
                     help="train this one architecture, with the flags below (default: the table's rows)")
    one.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES, help="output stride")
    one.add_argument("--aspp", choices=ASPP_KINDS, help="ASPP block: ST, DS, BTN or CASPP-1..4")
    one.add_argument("--ksac", action="store_const", const=True, help="kernel-sharing atrous convolution")
    one.add_argument("--method", choices=METHODS, help="distillation from the thesis's teacher")
    d = p.add_argument_group("distillation (Section 4.2.2)")
    d.add_argument("--alpha", type=float, help="KD weight alpha of Eq. 4.6, in [0, 1]")
    d.add_argument("--T", type=float, help="KD temperature of Eq. 4.5")
    d.add_argument("--beta", type=float, help="attention-transfer weight beta of Eq. 4.9")
    d.add_argument("--loss-scale", choices=LOSS_SCALES,
                   help="printed: KD and AT as Eq. 4.6 and 4.8 print them (KD per labelled pixel, L_A a norm); "
                        "moonshine: the reductions of the code the thesis adopted (Crowley et al. 2019, "
                        "pytorch-moonshine: KL over N x C x H x W, L_A the mean of squares, beta x 3 / N_L)")
    d.add_argument("--teacher-checkpoint", metavar="FILE",
                   help="teacher weights (ResNet-50, OS16, KSAC, ST; a file this script cached) instead of training "
                        "(default: train one, or reuse the cached one)")
    d.add_argument("--teacher-iterations", type=int, metavar="N",
                   help="iterations of a teacher trained here: 4x a student's in the reduced preset, so that it "
                        "leads them; the thesis trains it as a Table 5.1 row")
    t = p.add_argument_group("training")
    t.add_argument("--preset", choices=sorted(PRESETS),
                   help="default (the default): reduced, for a CPU; paper: the thesis's")
    t.add_argument("--iterations", type=int, metavar="N", help="training iterations of each model")
    t.add_argument("--batch-size", type=int, metavar="N", help="images per batch, over all processes")
    t.add_argument("--crop", type=int, metavar="PIXELS", help="training crop side (the thesis's: 256, Section 4.1.1)")
    t.add_argument("--rate-divisor", type=int, metavar="N",
                   help="atrous rates = the thesis's (6, 12, 18 at OS16 and OS32) divided by N: 2 keeps the geometry "
                        "DeepLabV3 chose them for (513-px crops) at 256-px crops (see the docstring)")
    t.add_argument("--strides", metavar="LIST",
                   help="output strides of the table's rows to train, e.g. 16,32 (--rows picks rows instead)")
    t.add_argument("--lr", type=float, help="SGD learning rate")
    t.add_argument("--backbone-lr", type=float, metavar="LR",
                   help="rate of a pre-trained backbone, 0 = frozen; the thesis's in the paper preset")
    t.add_argument("--weight-decay", type=float, metavar="WD", help="SGD weight decay")
    t.add_argument("--backbone-init", choices=["auto", "imagenet", "synthetic", "scratch"],
                   help="imagenet: torchvision's weights; synthetic: one backbone trained on the synthetic scenes, "
                        "a stand-in; scratch: random; auto: synthetic without --data-root, else imagenet")
    t.add_argument("--backbone-weights", metavar="FILE",
                   help="a local torchvision ImageNet file for the backbone (default: as --backbone-init says)")
    t.add_argument("--pretrain-iterations", type=int, metavar="N", help="iterations of the synthetic backbone")
    t.add_argument("--pretrain-crop", type=int, metavar="PIXELS", help="training crop of the synthetic backbone")
    t.add_argument("--repeats", type=int, metavar="R",
                   help="runs per model, keeping the best; the thesis's in the paper preset")
    t.add_argument("--sync-bn", action="store_const", const=True, help="SyncBatchNorm across torchrun's GPUs")
    t.add_argument("--eval-every", type=int, metavar="N", help="iterations between validations, 0 = only at the end")
    io = p.add_argument_group("data")
    io.add_argument("--data-root", metavar="FOLDER",
                    help="folder holding VOCdevkit/VOC2012 (and SegmentationClassAug or benchmark_RELEASE for "
                         "trainaug); default: synthetic scenes")
    io.add_argument("--train-images", type=int, metavar="N", help="synthetic training scenes")
    io.add_argument("--val-images", type=int, metavar="N", help="synthetic validation scenes")
    io.add_argument("--image-size", type=int, metavar="PIXELS", help="synthetic scene side")
    add_run_arguments(p, "reproduce_deeplab_caspp")
    args = p.parse_args(argv)
    parsed = {"rows": parse_rows(args.rows)} if args.rows is not None else {}
    cfg = config_from_args(args, Config, PRESETS, **parsed)
    if cfg.backbone_init == "auto":
        cfg.backbone_init = "imagenet" if cfg.data_root else "synthetic"
    return cfg, args


def parse_rows(text: str) -> tuple:
    try:
        rows = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UserError(f"--rows {text!r}: give row numbers separated by commas, e.g. --rows 1,3,5.") from None
    if not rows:
        raise UserError("--rows is empty: give row numbers separated by commas, e.g. --rows 1,3,5.")
    return rows


def parse_strides(text: str) -> tuple:
    """--strides "16,32" -> (16, 32); anything but 16 and 32 is a user error."""
    try:
        strides = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        strides = ()
    if not strides or not set(strides) <= {16, 32}:
        raise UserError(f"--strides {text!r}: the tables' rows have output strides 16 and 32; give 16, 32 or 16,32.")
    return strides


def check_config(cfg: Config, args: argparse.Namespace) -> None:
    """Impossible flag combinations are user errors, reported before any work starts."""
    one_model = [f for f in ("backbone", "output_stride", "aspp", "ksac", "method") if getattr(args, f) is not None]
    if one_model and args.backbone is None:
        raise UserError(f"--{one_model[0].replace('_', '-')} describes one model: also give --backbone "
                        f"({', '.join(BACKBONES)}).")
    if args.backbone is not None and (args.table is not None or args.rows is not None or args.strides is not None):
        raise UserError("--backbone trains one model; --table/--rows/--strides pick a table's rows. Use one or the "
                        "other.")
    if args.rows is not None and args.strides is not None:
        raise UserError("--rows picks rows by number, --strides by output stride: give one of them.")
    parse_strides(cfg.strides)
    divisors = [d for d in range(1, 7) if all(r % d == 0 for s in OUTPUT_STRIDES for r in default_atrous_rates(s))]
    if cfg.rate_divisor not in divisors:
        raise UserError(f"--rate-divisor {cfg.rate_divisor}: the thesis's rates (6, 12, 18) divide only by "
                        f"{', '.join(map(str, divisors))}.")
    spec = TABLES[cfg.table]
    bad = [r for r in cfg.rows if not 1 <= r <= len(spec.rows)]
    if bad:
        raise UserError(f"--rows {','.join(map(str, bad))}: Table {cfg.table} has rows 1 to {len(spec.rows)}.")
    if cfg.profile_only and (cfg.table in ("5.2", "5.3") and cfg.backbone is None):
        raise UserError(f"--profile-only lists Params/MAdds/latency; Table {cfg.table}'s rows are those of Table "
                        f"{'5.1' if cfg.table == '5.2' else 'A.1'}: profile that table instead.")
    if not 0 <= cfg.alpha <= 1:
        raise UserError(f"--alpha must lie in [0, 1] (Eq. 4.6); got {cfg.alpha}.")
    if not 0 < cfg.T < math.inf:   # NaN fails too
        raise UserError(f"--T must be positive (the softmax divides the logits by it); got {cfg.T}.")
    check_flags({"--iterations": cfg.iterations, "--repeats": cfg.repeats,
                 "--pretrain-iterations": cfg.pretrain_iterations, "--val-images": cfg.val_images,
                 "--teacher-iterations": cfg.teacher_iterations}, "must be >= 1",
                lambda v: v >= 1)
    check_flags({"--batch-size": cfg.batch_size}, "must be >= 2 (BatchNorm needs more than one image per batch to "
                "train)", lambda v: v >= 2)
    check_flags({"--crop": cfg.crop, "--image-size": cfg.image_size, "--pretrain-crop": cfg.pretrain_crop},
                "must be >= 32 (DeepLabV3+ downsamples up to 32 times)", lambda v: v >= 32)
    check_flags({"--eval-every": cfg.eval_every}, "must be >= 0", lambda v: v >= 0)
    check_flags({"--lr": cfg.lr}, "must be positive", lambda v: 0 < v < math.inf)
    check_flags({"--backbone-lr": cfg.backbone_lr}, "must be non-negative (0 freezes the backbone)",
                lambda v: 0 <= v < math.inf)
    check_flags({"--weight-decay": cfg.weight_decay, "--beta": cfg.beta}, "must be non-negative",
                lambda v: 0 <= v < math.inf)
    check_run_options(cfg)   # --seed, --workers, --checkpoint-every
    if not cfg.data_root:   # VOC's sizes are known only once it is read
        check_flags({"--train-images": cfg.train_images}, f"must hold at least one batch (--batch-size "
                    f"{cfg.batch_size})", lambda v: v >= cfg.batch_size)
    # Flags this run would ignore: silently, they would change nothing.
    if cfg.profile_only:
        training = ["iterations", "batch_size", "crop", "lr", "backbone_lr", "weight_decay", "backbone_init",
                    "backbone_weights", "pretrain_iterations", "pretrain_crop", "repeats", "eval_every",
                    "checkpoint_every", "workers",
                    "method", "alpha", "T", "beta", "loss_scale", "teacher_checkpoint", "teacher_iterations"]
        given = [name for name in training if getattr(args, name) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is ignored by --profile-only, which trains nothing: "
                            f"drop one of them.")
    methods = set(METHODS) if TABLES[cfg.table].distill and not cfg.backbone else {cfg.method}
    for flag, value, prefix, loss in (("--alpha", args.alpha, "kd", "KD"), ("--T", args.T, "kd", "KD"),
                                      ("--beta", args.beta, "at-", "attention transfer")):
        if value is not None and not any(m.startswith(prefix) for m in methods):
            raise UserError(f"{flag} sets the {loss} loss, and this run trains no {loss} student: drop it, or use "
                            f"--table 5.2 or 5.3, or --method {'kd' if prefix == 'kd' else 'at-all'} (with "
                            f"--backbone).")
    if args.loss_scale is not None and methods <= {"none"}:
        raise UserError("--loss-scale sets the reductions of the KD and attention-transfer losses, and this run "
                        "trains no distilled student: drop it, or use --table 5.2 or 5.3, or --method (with "
                        "--backbone).")
    if cfg.backbone_init == "synthetic" and cfg.data_root:
        raise UserError("--backbone-init synthetic pre-trains on the synthetic scenes, which --data-root replaces; "
                        "use --backbone-init imagenet (or scratch) with real data.")
    if cfg.data_root:   # sizes of the synthetic data, which the real data set replaces
        refuse_ignored(args, {"--train-images": "train_images", "--val-images": "val_images",
                              "--image-size": "image_size"},
                       "sizes the synthetic data, which --data-root replaces: drop it.")
    if cfg.backbone_init != "synthetic":
        refuse_ignored(args, {"--pretrain-iterations": "pretrain_iterations", "--pretrain-crop": "pretrain_crop"},
                       f"trains the synthetic stand-in backbone, and --backbone-init {cfg.backbone_init} uses none: "
                       f"drop it, or use --backbone-init synthetic.")
    if cfg.teacher_checkpoint and not (cfg.table in ("5.2", "5.3") or cfg.method != "none"):
        raise UserError("--teacher-checkpoint is the distillation teacher: use it with --table 5.2/5.3 or --method.")
    if args.teacher_iterations is not None and not (cfg.table in ("5.2", "5.3") or cfg.method != "none"):
        raise UserError("--teacher-iterations trains the distillation teacher: use it with --table 5.2/5.3 or "
                        "--method.")
    if cfg.teacher_checkpoint:
        refuse_ignored(args, {"--teacher-iterations": "teacher_iterations"},
                       "trains a teacher here, and --teacher-checkpoint gives a trained one: drop it.")
    if cfg.sync_bn and not torch.cuda.is_available():
        raise UserError("--sync-bn synchronises BatchNorm across GPUs; PyTorch sees no GPU here. Drop --sync-bn.")
    for name in ("data_root", "backbone_weights", "teacher_checkpoint"):
        value = getattr(cfg, name)
        if value and not Path(value).exists():
            raise UserError(f"--{name.replace('_', '-')} {value}: no such file or folder.")
    import os   # torchrun's RANK: under it every process checks the config, one says so
    if cfg.preset == "paper" and not cfg.data_root and os.environ.get("RANK", "0") == "0":
        print("note: --preset paper without --data-root: the thesis's hyper-parameters on the built-in synthetic "
              "21-class scenes (no VOC data is read).")


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    cfg, run = resume_or_check(args, cfg, Config, check_config)
    ddp, device = init_distributed(cfg.device)
    try:
        train_set, val, data_name = load_data(cfg)     # bad data stops us before a run folder exists
        if cfg.backbone_init == "imagenet" and not cfg.backbone_weights and not cfg.profile_only:
            for name in sorted(backbones_to_train(cfg)):   # so does a download that cannot happen
                imagenet_backbone(name)
        with run_folder(run, "reproduce_deeplab_caspp", cfg, ddp) as run:
            lab = Lab(cfg, Session(run, device, cfg, ddp), train_set, val, data_name)
            lab.say(f"data: {data_name}; device {device}{f'; {ddp.world_size} processes' if ddp.enabled else ''}")
            if cfg.backbone:
                run_one_model(lab)
            elif TABLES[cfg.table].distill:
                run_distillation_table(lab, TABLES[cfg.table])
            else:
                run_architecture_table(lab, TABLES[cfg.table])
            if lab.checks and lab.ddp.is_main:
                write_checks(lab.run.path, lab.checks)
            plot_predictions(lab)
            plot_training_curves(lab)
            if not TABLES[cfg.table].distill and not cfg.profile_only and lab.trained and not cfg.backbone:
                # Figure 5.2 shows the best model; we prefer output stride 16, whose maps have 4x the positions
                plot_attention(lab, max(lab.trained, key=lambda t: (t.info["row"].output_stride <= 16,
                                                                    t.metrics["miou"])))
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    run_main(main)
