#!/usr/bin/env python
"""Reproduce Hou, "Improving Deep Network Performance via Model Compression" (CUHK talk): inter-region affinity
distillation (IntRA-KD, Hou et al. CVPR 2020) for road-marking segmentation, against logit KD, attention transfer
and self-attention distillation (SAD, Hou et al. ICCV 2019), with an ERFNet student and a ResNet-101 teacher.

Source: ../shared/seeds/003_eeafccd6d19bb3db.txt ("the talk"). What it says, and where this script does it:

  'Inter-Region Affinity Distillation'  road marking segmentation is hard for a small model: "tiny road elements,
        poor lighting, occlusions by vehicles, sparsity" of the ground truth. Data: ApolloScape (--data-root with
        --dataset apolloscape), CULane (--dataset culane), or by default synthetic road scenes made to have
        these difficulties (common/synthetic_roads.py: markings in perspective, vehicles, shadows, lighting), scaled
        so that the mechanism lives at 64x128 (below: wider paint, the lane lines only).
  'Motivation'  "a road scene typically exhibits consistent configuration ... The structural relationship is crucial
        ... especially for small networks, to combat against the sparsity of supervision."
  'Method'  "Knowledge on scene structure is represented as inter-region affinity graphs. Through graph matching, a
        distillation loss on graph consistency is generated to update the student network": per class region of
        the labels, the mean, variance and skewness of the features; one cosine affinity graph per moment over the
        regions; the student matches the teacher's graphs (common.losses.intra_affinity_loss, whose graphs
        common.losses.intra_affinity_graphs computes: Hou et al. 2020, CVPR, Sec. 3).
  'Self Attention Distillation'  "attention maps derived from different layers of a well-trained network capture
        diverse and rich contextual information": each encoder block's attention map mimics the next deeper one's,
        switched on late in training (common.losses.self_attention_distillation_loss).
  'Qualitative Results' / 'Visualization of the Affinity Graph'  predictions of ERFNet and ERFNet-IntRA-KD, and
        the affinity graphs of teacher and students ("a closer feature structure between the student model and the
        ResNet-101 teacher"): figures/predictions.png, figures/affinity_graphs.png, figures/sad_attention.png.
  Models  the student ERFNet [Romera et al. 2017] (common/erfnet.py, 2.06 M parameters), from random weights or
        --student-checkpoint FILE; the teacher ResNet-101: torchvision's DeepLabV3-ResNet101 with the task's
        classes (--teacher-arch deeplabv3_resnet101, the paper preset's; the default preset's is a ResNet-50, below),
        trained here first and cached, or --teacher-checkpoint FILE.

Out of scope: the talk's other parts -- heterogeneous auxiliary-network feature mimicking for steering (AAAI 2019),
PEEL pruning by resource reallocation (the ICCV 2021 submission, its FLOPs-accuracy spectra and channel-variance
plots), the t-SNE embeddings of 'Visualization of deep feature embeddings' (the IntRA-KD repository points to a
separate t-SNE script), and the ERFNet / ERFNet-BiFPN slide scored by F1 -- are not reproduced here.

The table (table_intra_kd.md/.csv): ERFNet alone, + KD, + AT, + SAD, + IntRA-KD, + IntRA-KD + KD, and the teacher;
mIoU and per-class IoU, parameters, multiply-adds and latency. The talk itself shows no numbers. Beside ours, in a
column labelled as theirs, the ApolloScape test mIoU that the IntRA-KD repository's README gives for its trained
models (ResNet-101 46.63, ERFNet 43.48): a PSPNet-ResNet-101 teacher (test_pspnet_multi_scale.sh), 37 classes,
scored by ApolloScape's server on predictions of a multi-scale test; ours are a DeepLabV3 (ResNet-50 or -101)
teacher and students scored on our validation split at a single scale, one pass over whole images, over the classes
present. They are not comparable numbers; the column says what the paper's setting reaches. CULane, like the
literature, would be scored by its F1 lane metric (lanes as 30-pixel-wide curves matched at IoU 0.5), not by the
mIoU this script prints; with --dataset culane the table says so.

Readings we had to choose (repeated under the table; the talk shows figures only):
  * Every student is trained from the same initial weights on the same batches; each distillation term is added
    to the same segmentation loss: cross-entropy with the background weighted 0.05 and every marking 1, against the
    sparsity of markings (the IntRA-KD repository's ApolloScape training of ERFNet, train_erfnet_vanilla.py).
  * Features: the student's encoder output (ERFNet block 4: 128 channels, stride 8) against the teacher's DeepLab
    head after ASPP and its 3x3 conv (256 channels, stride 8) -- the same pair for AT and IntRA-KD, so that those
    rows differ by the loss only.
  * IntRA-KD: moment weights (1, 1, 1); central moments computed two-pass (a one-pixel or constant region has
    variance and skewness exactly 0; the one-pass raw moments used before turned rounding noise into unit skewness
    vectors of random direction: on a default batch at initialisation the skewness term's gradient norm was 15,315,
    two-pass 20.2, the mean term's 3.6; benchmarks/intra_kd_throughput.py --moments). Areas of interest
    (--intra-masks): "area" (default), the one-hot labels average-pooled to the feature size and used as weights
    in the moments -- our reading of the paper's smoothing of the label map, not checked against its text here --
    or "nearest", hard masks of the nearest-resized labels. Measured on the 8-class scenes at real widths (512
    scenes, stride 8, --paint 1 --road-classes all): nearest keeps 620 of the 1,371 marking regions (45%), 61% of
    those of one cell (no variance, no skewness); area keeps all, median 7 cells with weight. On the default
    scenes (--paint 4, lines): median 15 / 10 / 15 cells with area masks, 4 / 2 / 5 with nearest ones (256
    scenes). A class absent from an image is dropped from its graph; ignore pixels belong to no region
    (common.losses). "+ IntRA-KD + KD": both terms, the paper's best setting.
  * KD: T^2 KL(p_T || p_S) at T = 1 and weight 1 (Hinton et al.; our choice of weight). AT: source 004's form of
    Zagoruyko & Komodakis (common.losses.attention_transfer_loss), weight 1 (our choice).
  * SAD: blocks 2 -> 3 -> 4 of the encoder (strides 4, 8, 8), weight 0.1, from 2/3 of training on (the SAD paper's
    40k of 60k iterations); the deeper map is the target and is detached. Both maps are bilinearly resized to the
    input size before the spatial softmax (--sad-size input, the default: our reading of the paper's AT-GEN, B then
    Phi), or to the shallower block's size (--sad-size block, as a public PyTorch port, InhwanBae/ENet-SAD_Pytorch,
    does).
  * Recipe (not in the talk; --preset paper): the IntRA-KD repository's ERFNet training on ApolloScape
    (train_erfnet_vanilla.py/.sh): SGD 0.01, momentum 0.9, weight decay 1e-4, poly schedule, frames at half scale,
    random 496x1488 crops (its random rotation of +-10 degrees is left out). The default preset trains with Adam
    (lr 2e-3) instead, which gets further in the few hundred iterations a CPU allows. That script also starts
    ERFNet from pretrained weights (--resume path/to/pretrained_model in train_erfnet_vanilla.sh); no such file
    ships with either preset, so both start from random weights unless --student-checkpoint FILE is given.
  * mIoU is the mean over the classes present in the validation labels or predictions; the IntRA-KD repository
    averages over all 37 (absent ones count 0), which only matters on subsets where classes are missing.

How the default miniature is scaled from the paper, and why (issue 16: a miniature must keep the mechanism alive):
  * The paper: ApolloScape frames at half scale (1355x1692, random 496x1488 crops), 36 classes, an ImageNet
    ResNet-101 teacher trained to convergence, ERFNet for 24 epochs, on GPUs. Here: 512 synthetic road scenes of
    64x128 (the students' cost: six rows must train in minutes on a 2-core CPU), 240 student iterations.
  * Markings 4x as wide as real ones (--paint 4; --preset paper: 1) and only the three longitudinal lines
    (--road-classes lines: background, solid, dashed, double yellow; the stop line, zebra and arrows are not painted;
    --preset paper: all 8). Why: IntRA-KD computes a mean, a variance and a skewness of the features over each class
    region at the feature stride (8). With real widths at 64x128 a line is 1-3 px wide, and with nearest masks most
    marking regions are one cell (no variance, no skewness); the arrows are 2-3 cells at any width we can afford. At
    paint 4 the median region over the training scenes is 15 / 10 / 15 cells (solid / dashed / double yellow, area
    masks), against the MIN_REGION_CELLS = 9 we require (a 3x3 neighbourhood's worth; with area masks a cell counts
    when the class covers any part of it, as its weight in the moments is then above 0, so most of these cells are
    partly covered). And the stride-8 DeepLabV3 teacher can only draw a line about a cell wide: at real widths it
    could not beat ERFNet, which predicts at full resolution, on any line.
  * The teacher is a DeepLabV3-ResNet50 (--teacher-arch; the paper preset's is the talk's ResNet-101), trained 350
    iterations here (1.5x the students'), bf16 autocast on CPUs that have it natively (about 1.7x as fast), from
    random weights (no ImageNet offline), cached. The paper's teacher is far ahead of its student by pretraining and
    schedule; ours only by capacity and a longer schedule. The ResNet-101 did not get there in CPU minutes: at 350
    iterations it ended 2.4 points above ERFNet alone (34.5 against 32.1 mIoU, README, 2026-12-05) and below it on the
    solid line, while the ResNet-50, at about two thirds of its cost per iteration on this CPU (the whole default run:
    11.0 against 13.6 min alone), ended 8.5 points above ERFNet alone and above it on every line class (40.6 mIoU; IoU
    85.6 / 22.5 / 20.5 / 33.5 against 84.4 / 16.7 / 0.2 / 27.0). Whether the default teacher suffices is measured, not
    assumed: the run checks that the teacher's mIoU is at least 5 points above ERFNet alone's and its IoU above ERFNet
    alone's on every line class, and that the median region has at least 9 cells (checks.csv / checks.md; a failed
    check is printed atop both tables).
  * Timing (README): the whole default run, teacher included, took 6.3 minutes alone on a 2-core Intel Xeon with
    AMX in bf16 autocast (10.3 with --no-amp, float32; 2026-12-06, commit b608c3f), 4.5 on a 2-core AMD EPYC of
    family 26 (6.4 with --no-amp; 2026-12-07, commits e5890be / 6b74533), 9.0 on one of family 25 (13.2 with
    --no-amp; 2026-12-07, commit a325519), 11.0 on a 2-core AMD EPYC before the students, the fused optimizers and
    the ASPP's padding taps were changed (2026-12-05).

Run: python reproduce_intra_kd.py [--preset paper] [--data-root DIR --dataset apolloscape|culane]  (see --help)
"""
from __future__ import annotations

import argparse
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.checks import (Check, at_least, cells_per_class, failed_lines, median_cells, teacher_margin,
                           write_checks)
from common.devices import autocast, pick_device
from common.erfnet import ERFNet
from common.errors import UserError, check_flags, refuse_ignored
from common.filecheck import VERDICTS_FILE
from common.images import IGNORE_INDEX, normalize
from common.losses import (attention_transfer_loss, intra_affinity_graphs, intra_affinity_loss, kd_kl_div,
                           self_attention_distillation_loss, weighted_cross_entropy)
from common.metrics import evaluate_segmentation, predict_segmentation
from common.profiler import profile
from common.results import ResultsCSV, Table, plot_curves, plot_panel, running_mean
from common.roads import colorize_roads, road_dataset
from common.runs import (RunDir, RunOptions, add_run_arguments, check_run_options, config_from_args, help_formatter,
                         load_checkpoint, resume_or_check, run_folder, run_main)
from common.segmentation_models import WeightFlags, build_segmenter
from common.synthetic_roads import LINE_CLASSES, SyntheticRoads
from common.teachers import OutputMemo, cache_path, freeze, load_or_train
from common.training import Session, Trained, make_scheduler, train, training_batches

TEACHER_ARCH = "deeplabv3_resnet101"                     # the talk's ResNet-101; --teacher-arch, the paper preset's
TEACHER_ARCHS = ("deeplabv3_resnet50", TEACHER_ARCH)     # the default preset's is the ResNet-50 (module docstring)
# the teacher's weights on the command line (named in errors); torchvision's COCO weights have 21 VOC classes, not
# the road classes, so this script offers no download of them
FLAGS = WeightFlags(network_file="--teacher-checkpoint", backbone_file="--teacher-backbone",
                    backbone_download="--teacher-backbone imagenet")
# The ApolloScape test mIoU the IntRA-KD repository's README gives for its trained PSPNet-ResNet-101 and ERFNet
# (multi-scale test, 37 classes, ApolloScape's server; project notes); the talk has no table.
PUBLISHED = {"teacher": 46.63, "alone": 43.48}
PUBLISHED_COLUMN = "mIoU % (IntRA-KD repo: PSPNet-R101 / ERFNet, ApolloScape test, multi-scale)"
METHODS = {   # row -> (label, distillation terms)
    "alone": ("ERFNet", ()),
    "kd": ("ERFNet + KD", ("kd",)),
    "at": ("ERFNet + AT", ("at",)),
    "sad": ("ERFNet + SAD", ("sad",)),
    "intra": ("ERFNet + IntRA-KD", ("intra",)),
    "intra_kd": ("ERFNet + IntRA-KD + KD", ("intra", "kd")),
}
SAD_BLOCKS = ("block2", "block3", "block4")
FEATURE_STRIDE = 8          # student block 4 and the teacher's head: where IntRA-KD computes its moments
# The fewest feature cells a class region should have for a variance and a skewness worth matching: a 3x3
# neighbourhood's worth (our choice). The skewness of n samples is fixed by n - 1 free deviations; from 2-3 cells it
# is a sign or a coin toss (one cell: exactly 0), and its sampling spread falls as sqrt(6 / n): 0.8 at 9 cells.
MIN_REGION_CELLS = 9
TABLES = "table_intra_kd table_intra_kd_per_class"   # the tables a failed check undermines (common.checks.failed_lines)
TEACHER_TERMS = ("kd", "at", "intra")   # the distillation terms that need the teacher's outputs


# =============================================================================================== the losses
def teacher_name(cfg: "Config") -> str:
    """ResNet-50 or ResNet-101: the teacher's backbone (--teacher-arch)."""
    return "ResNet-101" if cfg.teacher_arch == TEACHER_ARCH else "ResNet-50"


def teacher_label(cfg: "Config") -> str:
    """The teacher's row: the talk's DeepLabV3-ResNet101, or the default preset's ResNet-50, named so."""
    if cfg.teacher_arch == TEACHER_ARCH:
        return "DeepLabV3-ResNet101 (teacher)"
    return "DeepLabV3-ResNet50 (teacher; the talk's is ResNet-101)"


def uses_intra(methods: tuple) -> bool:
    return any("intra" in METHODS[m][1] for m in methods)


def region_cells(labels: torch.Tensor, num_classes: int, masks: str, stride: int = FEATURE_STRIDE) -> torch.Tensor:
    """(N, num_classes) feature cells in each class's region of the (N, H, W) labels (H, W multiples of
    ``stride``), read as common.losses.intra_affinity_graphs reads them: masks "area", every cell the class covers
    any part of (its weight is above 0); "nearest", the cells whose nearest-resized label is the class."""
    if masks == "nearest":
        size = (labels.shape[-2] // stride, labels.shape[-1] // stride)
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        return cells_per_class(labels, 1, num_classes, ignore_index=IGNORE_INDEX)
    return cells_per_class(labels, stride, num_classes, ignore_index=IGNORE_INDEX)


def line_classes(class_names: tuple) -> list[int]:
    """The classes the teacher must draw better than ERFNet alone (the talk's 'tiny road elements'): the
    longitudinal lines of the synthetic scenes; of a real data set every class but the background."""
    if tuple(class_names[:4]) == LINE_CLASSES:
        return [1, 2, 3]
    return list(range(1, len(class_names)))


def mechanism_checks(exp: "Experiment", teacher: Trained, rows: dict, medians: list[float] | None) -> list[Check]:
    """Whether this run can show the paper's mechanism (issue 16; common.checks): the teacher clearly above ERFNet
    alone in mIoU (5 points) and on every line class it holds, and the marking regions IntRA-KD's moments are
    computed on at least MIN_REGION_CELLS feature cells (median over the training images holding the class)."""
    checks = []
    if "alone" in rows:
        alone = rows["alone"].metrics
        checks.append(teacher_margin(teacher.metrics["miou"], alone["miou"], about=TABLES))
        for k in line_classes(exp.class_names):
            t, s = teacher.metrics["iou_per_class"][k], alone["iou_per_class"][k]
            if t is None and s is None:   # absent from the validation labels and both predictions
                continue
            gain = 100 * ((t or 0.0) - (s or 0.0))
            checks.append(Check(f"teacher IoU above ERFNet alone's on '{exp.class_names[k]}' (points)", gain, "> 0",
                                gain > 0, TABLES))
    if medians is not None:
        for name, median in zip(exp.class_names[1:], medians[1:]):
            if not math.isnan(median):
                checks.append(at_least(f"median cells of a '{name}' region at stride {FEATURE_STRIDE} "
                                       f"({exp.cfg.intra_masks} masks)", median, MIN_REGION_CELLS, TABLES))
    return checks


def student_loss(terms: tuple, logits: torch.Tensor, feats: dict, target: torch.Tensor, class_weights: torch.Tensor,
                 num_classes: int, teacher_logits: torch.Tensor | None, teacher_feat: torch.Tensor | None,
                 weights: dict, sad_on: bool) -> tuple[torch.Tensor, dict]:
    """L = L_seg + the row's distillation terms:

        kd:    weights["kd"] T^2 KL(p_T || p_S)                 (Hinton et al.; pixels labelled 255 left out)
        at:    weights["at"] L_A(student block 4, teacher head)  (common.losses.attention_transfer_loss)
        sad:   weights["sad"] sum_m MSE(Psi(A_m), Psi(A_m+1))    (blocks 2 -> 3 -> 4; only once ``sad_on``;
               maps at the input size, or each pair's shallower block's with weights["sad_size"] "block")
        intra: sum_m alpha_m L_m(student block 4, teacher head)  (the talk's 'Method'; common.losses; areas of
               interest weights["intra_masks"]: "area" or "nearest")

    L_seg is the class-weighted cross-entropy. The teacher's tensors are not differentiated. Returns the loss and
    its terms for the log.
    """
    logits = logits.float()      # bf16 under autocast; each feature map is cast where a term uses it
    seg = weighted_cross_entropy(logits, target, class_weights, ignore_index=IGNORE_INDEX)
    loss, logs = seg, {"train_seg": seg.detach()}
    if "kd" in terms:
        kl = kd_kl_div(logits, teacher_logits, weights["T"], valid_mask=target != IGNORE_INDEX)
        loss = loss + weights["kd"] * weights["T"] ** 2 * kl
        logs["train_kd"] = kl.detach()
    if "at" in terms:
        at = attention_transfer_loss([feats["block4"].float()], [teacher_feat])
        loss = loss + weights["at"] * at
        logs["train_at"] = at.detach()
    if "sad" in terms and sad_on:
        size = tuple(logits.shape[-2:]) if weights.get("sad_size", "input") == "input" else None
        sad = self_attention_distillation_loss([feats[name].float() for name in SAD_BLOCKS], size)
        loss = loss + weights["sad"] * sad
        logs["train_sad"] = sad.detach()
    if "intra" in terms:
        intra = intra_affinity_loss(feats["block4"].float(), teacher_feat, target, num_classes, IGNORE_INDEX,
                                    weights["intra"], masks=weights.get("intra_masks", "area"))
        loss = loss + intra
        logs["train_intra"] = intra.detach()
    return loss, logs


def teacher_outputs(teacher: nn.Module, x: torch.Tensor, memo: OutputMemo, step: int | None,
                    amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen teacher's (logits, head features) for batch ``step``. Every student sees the same batch at the
    same step, so the head features (stride 8) are computed once and kept in ``memo`` (step None: never kept); the
    logits are the head's last 1x1 conv and bilinear upsampling of them, exactly as the teacher's own forward pass."""
    def head() -> tuple[torch.Tensor]:
        with torch.no_grad(), autocast(x.device, amp, cpu_bf16=True):
            return (teacher(x, return_features=True)[1]["head"].float(),)

    (feat,) = memo(step, head, x.device)
    with torch.no_grad():
        logits = F.interpolate(teacher.net.classifier[-1](feat), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
    return logits, feat


def distillation_weights(cfg: Config) -> dict:
    """``student_loss``'s ``weights`` from the run's settings."""
    return {"kd": cfg.kd_weight, "T": cfg.T, "at": cfg.at_weight, "sad": cfg.sad_weight, "sad_size": cfg.sad_size,
            "intra": tuple(cfg.intra_weights), "intra_masks": cfg.intra_masks}


def class_weights_for(num_classes: int, background_weight: float) -> torch.Tensor:
    """Cross-entropy weights: ``background_weight`` for class 0 (background), 1 for every marking class. The IntRA-KD
    repository trains ERFNet on ApolloScape with 0.05 (train_erfnet_vanilla.py); SAD's CULane code uses 0.4."""
    weights = torch.ones(num_classes)
    weights[0] = background_weight
    return weights


# =============================================================================================== configuration
@dataclass
class Config(RunOptions):
    # ----- recipe (students)
    optimizer: str = "adam"              # adam | sgd (momentum 0.9, weight decay 1e-4)
    lr: float = 2e-3
    batch_size: int = 8
    iterations: int = 240
    eval_every: int = 60
    background_weight: float = 0.05      # the IntRA-KD repository's (SAD's CULane code: 0.4)
    # ----- distillation
    kd_weight: float = 1.0
    T: float = 1.0
    at_weight: float = 1.0
    sad_weight: float = 0.1
    sad_start: float = 2 / 3             # fraction of training after which SAD is on
    sad_size: str = "input"              # input | block: where SAD compares the maps
    intra_weights: tuple = (1.0, 1.0, 1.0)   # mean, variance, skewness
    intra_masks: str = "area"            # area | nearest: IntRA-KD's areas of interest at the feature size
    methods: tuple = tuple(METHODS)
    student_checkpoint: str | None = None    # ERFNet weights every student starts from (default: random)
    # ----- the teacher
    teacher_arch: str = "deeplabv3_resnet50"   # the talk's: deeplabv3_resnet101 (paper preset; docstring)
    teacher_checkpoint: str | None = None
    teacher_backbone: str | None = None  # "imagenet" or a ResNet file of --teacher-arch's depth, to train one
    teacher_iterations: int = 350
    teacher_lr: float = 1e-3
    # ----- data
    data_root: str | None = None
    dataset: str = "apolloscape"         # with --data-root: apolloscape | culane
    train_images: int = 512              # synthetic scenes
    val_images: int = 48
    paint: float = 4.0                   # synthetic scenes: width factor of every painted marking (1: real widths)
    road_classes: str = "lines"          # synthetic scenes: lines (background + 3 lane lines) | all (8 classes)
    height: int = 64                     # network input (synthetic scene size; real images are resized)
    width: int = 128
    crop_top: float = 0.0                # the fraction of each frame's top left out
    crop_height: int = 0                 # training crops (0: whole images)
    crop_width: int = 0
    # ----- outputs (the run options: common.runs.RunOptions)
    latency_repeats: int = 5
    panel_images: int = 3


PRESETS = {
    # A 2-core CPU, 64x128 synthetic scenes with 4x wide lane lines (see the docstring for why); time: README.
    "default": {},
    # The IntRA-KD repository's ERFNet training on ApolloScape (train_erfnet_vanilla.sh, options.py): SGD 0.01,
    # momentum 0.9, weight decay 1e-4, poly, batch 8; frames at half scale (1355x1692, here 1352x1688, multiples of
    # 8), random crops of 496x1488. It trains 24 epochs; 60k iterations with SAD from 40k (the SAD paper's) and an
    # ImageNet ResNet-101 under the teacher are our choices.
    "paper": dict(optimizer="sgd", lr=0.01, batch_size=8, iterations=60_000, eval_every=5_000,
                  teacher_arch=TEACHER_ARCH, teacher_iterations=60_000, teacher_lr=0.01, teacher_backbone="imagenet",
                  height=1352, width=1688, crop_height=496, crop_width=1488, paint=1.0, road_classes="all",
                  latency_repeats=20, checkpoint_every=2_000, workers=8),
}


# =============================================================================================== data and models
def road_sample(dataset, crop: tuple[int, int] | None, index: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One training sample, normalised, randomly cropped to ``crop`` (height, width) if given (the IntRA-KD
    repository's GroupRandomCropRatio); no flips (they would swap left and right turn arrows)."""
    image, mask = dataset[index]
    if crop:
        h, w = mask.shape
        top = int(torch.randint(0, h - crop[0] + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - crop[1] + 1, (1,), generator=generator))
        image, mask = image[:, top:top + crop[0], left:left + crop[1]], mask[top:top + crop[0], left:left + crop[1]]
    return normalize(image), mask


def new_student(cfg: Config, num_classes: int) -> ERFNet:
    """ERFNet with the task's classes; its initial weights depend on the seed only, or come from
    --student-checkpoint, so every row starts alike. In channels-last memory format: with bf16 autocast its
    training step at the default shape takes 0.8x the time of the contiguous one (benchmarks/compare.py --only
    small)."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        student = ERFNet(num_classes)
    if cfg.student_checkpoint:
        load_student_weights(student, cfg.student_checkpoint)
    return student.to(memory_format=torch.channels_last)


def load_student_weights(student: ERFNet, path: str) -> list[str]:
    """Start ``student`` from the ERFNet weights in ``path`` (the IntRA-KD repository starts from pretrained
    weights: ``--resume`` in train_erfnet_vanilla.sh): a file this repository wrote (``{"model": ...}``) or a plain
    state dict with common/erfnet.py's parameter names (a "module." prefix of DataParallel is dropped). Every tensor
    must fit except the output layer's (``classifier``), which keeps its random weights where the file has another
    class count, as when fine-tuning from Cityscapes. Returns the names left random."""
    flag = "--student-checkpoint"
    state = load_checkpoint(path, flag, "pass ERFNet weights with common/erfnet.py's parameter names")
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{flag} {path} holds no state dict of tensors: pass ERFNet weights.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = student.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fitting]
    if any(not k.startswith("classifier.") for k in missing):
        raise UserError(f"{flag} {path} does not fit common/erfnet.py's ERFNet: {len(missing)} of {len(own)} tensors "
                        f"missing or of another shape (first: {missing[0]}); pass weights with its parameter names.")
    own.update(fitting)
    student.load_state_dict(own)
    return missing


def optimizer_for(cfg: Config, params, lr: float, iterations: int):
    """Adam (default preset), or SGD with momentum 0.9 and weight decay 1e-4 (paper preset); poly schedule."""
    if cfg.optimizer == "sgd":   # fused: one kernel for all parameters (ERFNet's Adam step on the CPU 11 -> 2.5 ms)
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4, fused=True)
    else:
        optimizer = torch.optim.Adam(params, lr=lr, fused=True)
    return optimizer, make_scheduler(optimizer, "poly", iterations)


class Experiment:
    """The talk's comparison on ApolloScape / CULane (--data-root) or synthetic road scenes: the teacher first,
    then one ERFNet per row of METHODS, from the same initial weights on the same batches (common.training)."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        size = (cfg.height, cfg.width)
        if cfg.data_root:
            checked = dict(crop_top=cfg.crop_top, verdicts=Path(cfg.cache_dir) / VERDICTS_FILE,
                           progress=cfg.progress)   # every file is checked now, before training
            self.train_set = road_dataset(cfg.dataset, cfg.data_root, "train", size, **checked)
            self.val_set = road_dataset(cfg.dataset, cfg.data_root, "val", size, **checked)
        else:
            scenes = dict(paint=cfg.paint, lines_only=cfg.road_classes == "lines")
            self.train_set = SyntheticRoads("train", cfg.train_images, size, cfg.seed, **scenes)
            self.val_set = SyntheticRoads("val", cfg.val_images, size, cfg.seed, **scenes)
        self.data_name = f"{self.train_set.name} / {self.val_set.name}"
        self.num_classes, self.class_names = self.train_set.num_classes, self.train_set.class_names
        if len(self.train_set) < cfg.batch_size:
            raise UserError(f"{len(self.train_set)} training images are fewer than one batch of {cfg.batch_size}; "
                            f"raise --train-images or lower --batch-size.")
        self.load = functools.partial(road_sample, self.train_set,
                                      (cfg.crop_height, cfg.crop_width) if cfg.crop_height else None)
        self.given_teacher = None
        if cfg.teacher_checkpoint:
            try:
                self.given_teacher = build_segmenter(cfg.teacher_arch, self.num_classes,
                                                     weights=cfg.teacher_checkpoint, flags=FLAGS)
            except UserError as error:   # name the flag that picks the architecture the file is read as
                raise UserError(f"{error} (--teacher-arch: {' or '.join(TEACHER_ARCHS)}; this run reads it as "
                                f"{cfg.teacher_arch})") from None
        self.class_weights = class_weights_for(self.num_classes, cfg.background_weight).to(device)
        self.memo = OutputMemo()   # the teacher's head features by step, shared by the students
        self.run: RunDir | None = None
        self.session: Session | None = None
        self.results: ResultsCSV | None = None

    # ------------------------------------------------------------------ the whole run
    def run_all(self, run: RunDir) -> None:
        cfg = self.cfg
        self.run, self.results = run, ResultsCSV(run.path / "results.csv")
        self.session = Session(run, self.device, cfg)
        self.session.say(f"data: {self.data_name}; {self.num_classes} classes; device {self.device}; student "
                         f"ERFNet, teacher {cfg.teacher_arch}")
        if cfg.data_root and cfg.dataset == "culane":
            self.session.say("note: the mIoU printed below is pixel mIoU; the literature scores CULane by its F1 "
                             "lane metric, so these numbers are not comparable to published CULane results")
        medians = self.region_medians() if uses_intra(cfg.methods) else None
        teacher = self.teacher()
        rows = {name: self.train_student(name, teacher.model) for name in cfg.methods}
        shape = (1, 3, cfg.height, cfg.width)
        self.session.say(f"measuring parameters, multiply-adds and latency at {shape} on {self.device}")
        costs = {who: profile(model, shape, self.device, size=False, warmup=1, repeats=cfg.latency_repeats)
                 for who, model in (("student", next(iter(rows.values())).model), ("teacher", teacher.model))}
        checks = mechanism_checks(self, teacher, rows, medians)
        write_tables(self, teacher, rows, costs, checks)
        plot_figures(self, teacher, rows)
        write_checks(run.path, checks)   # checks.csv / checks.md, printed; failures also atop the tables

    # ------------------------------------------------------------------ the regions IntRA-KD sees
    def region_medians(self, most: int = 512) -> list[float]:
        """Per class, the median number of feature cells (stride 8) of its region in the training images that hold
        it, as the IntRA-KD loss reads the labels (--intra-masks); at most ``most`` images, evenly spaced."""
        cfg, n = self.cfg, len(self.train_set)
        picks = sorted(set(np.linspace(0, n - 1, min(n, most)).round().astype(int).tolist()))
        labels = torch.stack([self.train_set[i][1] for i in picks])
        medians = median_cells(region_cells(labels, self.num_classes, cfg.intra_masks))
        shown = ", ".join(f"{name} {m:g}" for name, m in zip(self.class_names[1:], medians[1:]) if not math.isnan(m))
        self.session.say(f"IntRA-KD regions at stride {FEATURE_STRIDE} ({cfg.intra_masks} masks), median cells per "
                         f"image holding the class, {len(picks)} training images: {shown}")
        return medians

    # ------------------------------------------------------------------ the teacher
    def teacher(self) -> Trained:
        """The DeepLabV3 (--teacher-arch): --teacher-checkpoint, or trained here first on the training set, once,
        and cached; frozen."""
        cfg, label = self.cfg, teacher_label(self.cfg)
        trained = None
        if self.given_teacher is not None:
            model, source = self.given_teacher.to(self.device), cfg.teacher_checkpoint
        else:
            key = {"what": "intra_kd teacher", "arch": cfg.teacher_arch, "data": self.data_name, "size": [cfg.height,
                   cfg.width], "iterations": cfg.teacher_iterations, "lr": cfg.teacher_lr, "optimizer": cfg.optimizer,
                   "batch": cfg.batch_size, "background_weight": cfg.background_weight, "seed": cfg.seed,
                   "backbone": cfg.teacher_backbone, "amp": cfg.amp}   # a --no-amp run trains its own teacher
            path = cache_path(cfg.cache_dir, "intra_kd_teacher", key)
            with torch.random.fork_rng():      # initial weights from the seed alone: a rerun trains the same teacher
                torch.manual_seed(cfg.seed)
                model = build_segmenter(cfg.teacher_arch, self.num_classes, backbone_weights=cfg.teacher_backbone,
                                        flags=FLAGS)
            model = model.to(self.device)
            trained = load_or_train(model, path, lambda model: self.train_teacher(model, label, path))
            source = (f"the cache ({path})" if trained is None else
                      f"training by this run ({cfg.teacher_iterations} iterations; cached)")
        if trained is None:   # given or cached: evaluated as trained, in bfloat16 where the CPU has it natively
            trained = Trained("teacher", label, model, evaluate_segmentation(
                model, self.val_set, self.device, self.num_classes, amp=cfg.amp, cpu_bf16=True))
        trained.metrics["source"] = source
        freeze(trained.model)
        self.session.say(f"  teacher from {source}: mIoU {100 * trained.metrics['miou']:.1f}")
        return trained

    def train_teacher(self, model: nn.Module, label: str, path: Path) -> Trained:
        """Supervised training of the teacher with the students' segmentation loss (in bfloat16 on CPUs that have
        it natively: a ResNet trains about twice as fast)."""
        cfg = self.cfg
        self.session.say(f"training the {cfg.teacher_arch} teacher ({cfg.teacher_iterations} iterations; cached in "
                         f"{path})")
        optimizer, scheduler = optimizer_for(cfg, model.parameters(), cfg.teacher_lr, cfg.teacher_iterations)
        stream = training_batches(self.load, len(self.train_set), cfg.teacher_iterations, batch_size=cfg.batch_size,
                                  session=self.session)

        def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
            x, y = stream(step)
            return weighted_cross_entropy(model(x).float(), y, self.class_weights, IGNORE_INDEX), {}

        return train(model, optimizer, loss_fn, cfg.teacher_iterations, session=self.session, name="teacher",
                     label=label, scheduler=scheduler, eval_every=cfg.eval_every, cpu_bf16=True,
                     evaluate=lambda: evaluate_segmentation(model, self.val_set, self.device, self.num_classes,
                                                            amp=cfg.amp, cpu_bf16=True))

    # ------------------------------------------------------------------ the students
    def train_student(self, name: str, teacher: nn.Module) -> Trained:
        """One row: ERFNet trained with ``student_loss`` of the row's terms, in bfloat16 autocast on CPUs that have
        it natively (--no-amp: float32), evaluated in the same precision.

        Every row, AT included: from commit 743f2e5 to 6b74533 the AT row's student trained in float32, because
        with ERFNet's encoder left in float32 by a max-pool (common.erfnet.DownsamplerBlock) its bf16 runs had
        ended 3.1-4.6 mIoU below float32 in three seed pairs. With the encoder in bf16 the AT row's bf16 student
        scored 44.5 / 45.0 / 42.7 over seeds 0-2 against 40.1 / 45.1 / 41.7 in float32 (2026-12-07, README)."""
        cfg = self.cfg
        label, terms = METHODS[name]
        student = new_student(cfg, self.num_classes).to(self.device)
        optimizer, scheduler = optimizer_for(cfg, student.parameters(), cfg.lr, cfg.iterations)
        stream = training_batches(self.load, len(self.train_set), cfg.iterations, batch_size=cfg.batch_size,
                                  session=self.session)
        sad_from = round(cfg.sad_start * cfg.iterations)
        weights = distillation_weights(cfg)

        def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
            x, y = stream(step)
            logits, feats = student(x, return_features=True)
            t_logits = t_feat = None
            if set(TEACHER_TERMS) & set(terms):
                t_logits, t_feat = teacher_outputs(teacher, x, self.memo, step, cfg.amp)
            return student_loss(terms, logits, feats, y, self.class_weights, self.num_classes, t_logits,
                                t_feat, weights, sad_on=step >= sad_from)

        trained = train(student, optimizer, loss_fn, cfg.iterations, session=self.session, name=f"student_{name}",
                        label=label, scheduler=scheduler, eval_every=cfg.eval_every, cpu_bf16=True,
                        evaluate=lambda: evaluate_segmentation(student, self.val_set, self.device, self.num_classes,
                                                               amp=cfg.amp, cpu_bf16=True))
        self.session.say(f"  {label}: mIoU {100 * trained.metrics['miou']:.1f}")
        return trained


# =============================================================================================== the tables
def miou_cell(trained: Trained) -> str:
    return f"{100 * trained.metrics['miou']:.2f}" + (" (diverged)" if trained.diverged else "")


def iou_cells(trained: Trained) -> list[str]:
    return ["-" if v is None else f"{100 * v:.1f}" for v in trained.metrics["iou_per_class"]]


def findings(teacher: Trained, rows: dict) -> list[str]:
    """What this run measured, in words (computed here, not written beforehand)."""
    lines = []
    if "alone" in rows:
        alone = rows["alone"].metrics["miou"]
        gains = ", ".join(f"{METHODS[name][0].replace('ERFNet ', '')} {100 * (r.metrics['miou'] - alone):+.2f}"
                          for name, r in rows.items() if name != "alone")
        if gains:
            lines.append(f"mIoU points against ERFNet alone (same initial weights and batches): {gains}; one seed, "
                         f"so differences of a point or two are within run-to-run spread.")
        collapsed = [r.label for r in (teacher, *rows.values())
                     if all((v or 0) == 0 for v in r.metrics["iou_per_class"][1:])]
        if collapsed:
            lines.append(f"{', '.join(collapsed)}: IoU 0 on every marking class (background predicted everywhere).")
        relation = "above" if teacher.metrics["miou"] > alone else "below"
        lines.append(f"the teacher scores {relation} the student trained alone ({100 * teacher.metrics['miou']:.2f} "
                     f"against {100 * alone:.2f} mIoU).")
    return lines


def write_tables(exp: Experiment, teacher: Trained, rows: dict, costs: dict, checks: list[Check] = ()) -> None:
    """``costs``: common.profiler.profile of the student and of the teacher; failed ``checks`` atop both tables."""
    cfg = exp.cfg
    table = Table(f"IntRA-KD and baselines: ERFNet student, {teacher_name(cfg)} teacher (ApolloScape in the paper)",
                  ["Model", "mIoU % (ours)", PUBLISHED_COLUMN, "pixel acc. % (ours)", "params",
                   "MAdds", f"latency ms (ours, {exp.device.type})"])

    def add(key: str, trained: Trained, who: str) -> None:
        m, cost = trained.metrics, costs[who]
        published = PUBLISHED.get(key)
        table.add(trained.label, miou_cell(trained), "-" if published is None else f"{published:.2f}",
                  f"{100 * m['pixel_accuracy']:.1f}", f"{cost['params']:,}", f"{cost['macs'] / 1e9:.2f}G",
                  f"{1000 * cost['latency_s']:.1f}")
        exp.results.add(experiment="intra_kd", model=trained.label, params=cost["params"], macs=cost["macs"],
                        loss=round(m["val_loss"], 5), iou=round(m["miou"], 5), iterations=len(trained.train_loss),
                        notes="diverged" if trained.diverged else "")

    add("teacher", teacher, "teacher")
    for name, trained in rows.items():
        add(name, trained, "student")
    weights = ", ".join(f"{w:g}" for w in cfg.intra_weights)
    recipe = (f"Adam, lr {cfg.lr}" if cfg.optimizer == "adam" else
              f"SGD, lr {cfg.lr}, momentum 0.9, weight decay 1e-4")
    culane = cfg.data_root and cfg.dataset == "culane"
    table.notes = findings(teacher, rows) + (
        ["CULane: the literature (SCNN, SAD, IntRA-KD) scores CULane by its F1 lane metric (lanes drawn 30 px wide, "
         "matched at IoU 0.5), not by the pixel mIoU shown here; these numbers are not comparable to published CULane "
         "results."] if culane else []) + [
        f"the IntRA-KD repository's column: the ApolloScape test mIoU its README gives for its trained "
        f"PSPNet-ResNet-101 teacher and ERFNet (37 classes, multi-scale test, ApolloScape's server); the talk "
        f"(source 003) shows figures only. Ours: {exp.data_name}, a DeepLabV3 {teacher_name(cfg)} teacher, measured "
        f"by this run on our validation split, single scale, whole images, final model, one seed, mIoU over the "
        f"classes present: not comparable.",
        f"teacher: {teacher.metrics['source']}.",
        f"students: ERFNet (Romera et al. 2017) from "
        f"{cfg.student_checkpoint or 'random weights (the IntRA-KD repository starts from pretrained ones)'}, "
        f"{recipe}, poly schedule, batch {cfg.batch_size}, {cfg.iterations} "
        f"iterations, the same initial weights and batches for every row; L_seg = cross-entropy with the "
        f"background weighted {cfg.background_weight:g} and every marking 1 (the IntRA-KD repository: 0.05).",
        f"KD: {cfg.kd_weight:g} T^2 KL(p_T || p_S), T = {cfg.T:g}. AT: {cfg.at_weight:g} x source 004's Eq. 4.8 "
        f"between student block 4 and the teacher's head. SAD: {cfg.sad_weight:g} x sum of MSEs of spatial-softmax "
        f"attention maps at the {'input' if cfg.sad_size == 'input' else 'shallower block'}'s size, blocks 2 -> 3 -> "
        f"4, on from iteration {round(cfg.sad_start * cfg.iterations)}. IntRA-KD: "
        f"moment weights ({weights}) between student block 4 (128 channels, stride 8) and the teacher's head (256 "
        f"channels, stride 8); two-pass central moments; areas of interest "
        f"{'average-pooled one-hot labels as weights' if cfg.intra_masks == 'area' else 'nearest-resized hard masks'}"
        f" (--intra-masks {cfg.intra_masks}), absent classes dropped (our readings).",
        f"cost columns: parameters; MAdds (ptflops, module hooks) and latency (median of {cfg.latency_repeats}, "
        f"batch 1, {torch.get_num_threads()} threads) at {cfg.height}x{cfg.width}."]
    table.warnings = failed_lines(checks, "table_intra_kd")
    table.write(exp.run.path, "table_intra_kd")
    print("\n" + table.markdown(), flush=True)

    per_class = Table("Per-class IoU % (ours; '-' = class absent from the validation labels and predictions)"
                      + ("; pixel IoU, not CULane's F1 lane metric" if culane else ""),
                      ["Model", *exp.class_names])
    for trained in (teacher, *rows.values()):
        per_class.add(trained.label, *iou_cells(trained))
    per_class.warnings = failed_lines(checks, "table_intra_kd_per_class")
    per_class.write(exp.run.path, "table_intra_kd_per_class")
    print(per_class.markdown(), flush=True)


# =============================================================================================== figures
def affinity_graphs(feat: torch.Tensor, mask: torch.Tensor, num_classes: int,
                    masks: str = "area") -> tuple[list[int], list[np.ndarray]]:
    """The regions present and the three moment graphs (mean, variance, skewness) of one image's features (1, C, h, w)
    and labels (H, W) for the figure: common.losses.intra_affinity_graphs, exactly what intra_affinity_loss
    compares, restricted to the classes present."""
    present, graphs = intra_affinity_graphs(feat, mask[None], num_classes, IGNORE_INDEX, masks)
    classes = present[0].nonzero().flatten().tolist()
    return classes, [graph[0][classes][:, classes].numpy() for graph in graphs]


@torch.no_grad()
def features_of(model: nn.Module, image: torch.Tensor) -> dict:
    """The features of one uint8 image, in eval mode on the model's device: the student's encoder blocks or the
    teacher's head (the figures' affinity graphs and attention maps)."""
    was_training = model.training
    model.eval()
    _, feats = model(normalize(image)[None].to(next(model.parameters()).device), return_features=True)
    model.train(was_training)
    return feats


def plot_affinity_figure(path: Path, exp: Experiment, models: list[tuple[str, nn.Module, str]]) -> None:
    """The talk's 'Visualization of the Affinity Graph': the graphs of teacher and students on one image."""
    import matplotlib.pyplot as plt

    index = max(range(min(16, len(exp.val_set))), key=lambda i: len(exp.val_set[i][1].unique()))
    image, mask = exp.val_set[index]
    fig, axes = plt.subplots(3, len(models), figsize=(3.2 * len(models), 9), squeeze=False)
    for col, (caption, model, key) in enumerate(models):
        feats = features_of(model, image)
        classes, graphs = affinity_graphs(feats[key].float().cpu(), mask, exp.num_classes, exp.cfg.intra_masks)
        names = [exp.class_names[c] for c in classes]
        for row, (moment, graph) in enumerate(zip(("mean", "variance", "skewness"), graphs)):
            ax = axes[row][col]
            ax.imshow(graph, cmap="magma", vmin=-1, vmax=1)
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
            ax.set_yticks(range(len(names)), names, fontsize=6)
            ax.set_title(f"{caption}: {moment}", fontsize=8)
    fig.suptitle(f"Inter-region affinity graphs (cosine similarity of region moments; areas of interest: "
                 f"{exp.cfg.intra_masks}), one validation image")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_figures(exp: Experiment, teacher: Trained, rows: dict) -> None:
    cfg, figures = exp.cfg, exp.run.figures
    plot_curves(figures / "training_loss.png",
                {r.label: (list(range(1, len(r.train_loss) + 1)), running_mean(r.train_loss)) for r in rows.values()},
                "Training loss (segmentation + distillation terms)", ylabel="loss (running mean of 10)")
    plot_curves(figures / "val_miou.png",
                {r.label: ([e["iteration"] for e in r.evals], [100 * e["miou"] for e in r.evals])
                 for r in [teacher, *rows.values()] if r.evals}, "Validation mIoU during training",
                ylabel="mIoU %", marker="o")
    shown = [("teacher", teacher.model)] + [(METHODS[k][0], rows[k].model) for k in ("alone", "intra", "intra_kd")
                                            if k in rows]
    samples = [exp.val_set[i] for i in range(min(cfg.panel_images, len(exp.val_set)))]
    plot_panel(figures / "predictions.png",
               [[("image", image.permute(1, 2, 0).numpy()), ("ground truth", colorize_roads(mask))]
                + [(name, colorize_roads(predict_segmentation(model, image)))
                   for name, model in shown] for image, mask in samples],
               "Validation predictions ('Qualitative Results')")
    graphs = [("teacher", teacher.model, "head")] + [(METHODS[k][0], rows[k].model, "block4")
                                                    for k in ("alone", "intra") if k in rows]
    plot_affinity_figure(figures / "affinity_graphs.png", exp, graphs)
    attention_rows = []
    image = samples[0][0]
    for key in ("alone", "sad"):
        if key in rows:
            feats = features_of(rows[key].model, image)
            attention_rows.append([(f"{METHODS[key][0]}: {block}", feats[block].pow(2).sum(1)[0].cpu().numpy())
                                   for block in SAD_BLOCKS])
    if attention_rows:   # G itself: its spatial softmax Psi is nearly one-hot on unnormalised activations
        plot_panel(figures / "sad_attention.png", attention_rows,
                   "Attention energy G(A_m) = sum_c A_c^2 of encoder blocks (SAD mimics its spatial softmax)",
                   cmap="magma")


# =============================================================================================== command line
def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description="Reproduce Hou, 'Improving Deep Network Performance via Model Compression': an ERFNet student "
                    "learns road-marking segmentation from a DeepLabV3 teacher (the talk's: ResNet-101) by "
                    "inter-region affinity distillation (IntRA-KD), compared with logit KD, attention transfer and "
                    "self-attention distillation (SAD). Without --data-root it runs on built-in synthetic road "
                    "scenes; everything goes to a run folder.",
        epilog="examples:\n  python reproduce_intra_kd.py                          # reduced, CPU, ~6-11 min\n"
               "  python reproduce_intra_kd.py --methods alone,intra --iterations 400\n"
               "  python reproduce_intra_kd.py --preset paper --data-root data/apolloscape --dataset apolloscape\n"
               "  python reproduce_intra_kd.py --resume runs/reproduce_intra_kd/20261121-120000",
        formatter_class=help_formatter(Config, PRESETS))
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="default (the default): reduced, for a CPU; paper: the lane codebases' recipe at full scale")
    r = p.add_argument_group("training (every student row)")
    r.add_argument("--methods", metavar="LIST",
                   help=f"rows to train, comma-separated, from {','.join(METHODS)} (default all)")
    r.add_argument("--optimizer", choices=["adam", "sgd"], help="the students' optimizer")
    r.add_argument("--lr", type=float, metavar="LR", help="students' learning rate")
    r.add_argument("--batch-size", type=int, metavar="N", help="images per batch")
    r.add_argument("--iterations", type=int, metavar="N", help="iterations per student")
    r.add_argument("--eval-every", type=int, metavar="N", help="iterations between validations")
    r.add_argument("--student-checkpoint", metavar="FILE",
                   help="ERFNet weights every student starts from, with common/erfnet.py's parameter names (the "
                        "output layer may have another class count; it then starts random). The IntRA-KD "
                        "repository starts from pretrained weights (default: none, random weights, in both presets)")
    r.add_argument("--background-weight", type=float, metavar="W",
                   help="cross-entropy weight of the background, every marking 1; the IntRA-KD repository's code "
                        "uses 0.05, SAD's CULane code 0.4")
    d = p.add_argument_group("distillation")
    d.add_argument("--kd-weight", type=float, metavar="W", help="weight of T^2 KL(p_T || p_S)")
    d.add_argument("--T", type=float, help="KD temperature")
    d.add_argument("--at-weight", type=float, metavar="W", help="weight of attention transfer")
    d.add_argument("--sad-weight", type=float, metavar="W", help="weight of SAD, as in the SAD paper")
    d.add_argument("--sad-start", type=float, metavar="F",
                   help="fraction of training after which SAD is on, in [0, 1]; the SAD paper's: 40k of 60k "
                        "iterations")
    d.add_argument("--sad-size", choices=["input", "block"],
                   help="where SAD compares two blocks' attention maps: resized to the input size (our reading of "
                        "the SAD paper's AT-GEN) or to the shallower block's size")
    d.add_argument("--intra-weights", metavar="A,B,C",
                   help="IntRA-KD weights of the mean, variance and skewness graphs")
    d.add_argument("--intra-masks", choices=["area", "nearest"],
                   help="IntRA-KD's areas of interest at the feature size: area = the one-hot labels average-pooled, "
                        "used as weights in the moments (our reading of the paper's smoothing of the labels); "
                        "nearest = hard masks of the nearest-resized labels (at stride 8 they lose about half of the "
                        "synthetic scenes' marking regions)")
    t = p.add_argument_group("the teacher (the talk's: ResNet-101)")
    t.add_argument("--teacher-arch", choices=TEACHER_ARCHS,
                   help="the teacher network: the talk's deeplabv3_resnet101, or the ResNet-50, which leads ERFNet "
                        "after a few CPU minutes of training (see the docstring)")
    t.add_argument("--teacher-checkpoint", metavar="FILE",
                   help="--teacher-arch's weights with the task's classes: a file this script cached, or a "
                        "torchvision state dict (default: train one here, once, and cache it)")
    t.add_argument("--teacher-backbone", metavar="imagenet|FILE",
                   help=f"ImageNet ResNet weights (of --teacher-arch's depth) under a teacher trained here (default: "
                        f"none, random; paper preset {PRESETS['paper']['teacher_backbone']})")
    t.add_argument("--teacher-iterations", type=int, metavar="N", help="iterations of a teacher trained here")
    t.add_argument("--teacher-lr", type=float, metavar="LR", help="its learning rate")
    g = p.add_argument_group("data")
    g.add_argument("--data-root", metavar="FOLDER", help="the real data set's folder (default: synthetic scenes)")
    g.add_argument("--dataset", choices=["apolloscape", "culane"], help="which real data set --data-root holds")
    g.add_argument("--train-images", type=int, metavar="N", help="synthetic training scenes")
    g.add_argument("--val-images", type=int, metavar="N", help="synthetic validation scenes")
    g.add_argument("--paint", type=float, metavar="F",
                   help="synthetic scenes: every painted marking F times as wide as a real one (lines, stop line, "
                        "zebra stripes, arrows), so that its regions have cells at stride 8")
    g.add_argument("--road-classes", choices=["lines", "all"],
                   help="synthetic scenes: lines = background and the three longitudinal lines (solid, dashed, "
                        "double yellow; the rare markings are not painted), all = the 8 classes of ROAD_CLASSES")
    g.add_argument("--height", type=int, metavar="PIXELS", help="input height, a multiple of 8")
    g.add_argument("--width", type=int, metavar="PIXELS", help="input width, a multiple of 8")
    g.add_argument("--crop-top", type=float, metavar="F",
                   help="the fraction of each real frame's top left out, in [0, 1)")
    g.add_argument("--crop-height", type=int, metavar="PIXELS",
                   help="training crops' height, a multiple of 8, 0 = whole images")
    g.add_argument("--crop-width", type=int, metavar="PIXELS",
                   help="training crops' width, a multiple of 8, 0 = whole images")
    add_run_arguments(p, "reproduce_intra_kd")
    args = p.parse_args(argv)
    parsed = {}
    if args.methods is not None:
        parsed["methods"] = parse_methods(args.methods)
    if args.intra_weights is not None:
        parsed["intra_weights"] = parse_intra_weights(args.intra_weights)
    return config_from_args(args, Config, PRESETS, **parsed), args


def parse_methods(text: str) -> tuple:
    methods = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {text!r}: choose from {', '.join(METHODS)} (comma-separated).")
    return methods


def parse_intra_weights(text: str) -> tuple:
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise UserError(f"--intra-weights {text!r}: give three numbers, e.g. 1,1,1") from None
    if len(weights) != 3 or not all(0 <= w < math.inf for w in weights):   # NaN fails too
        raise UserError(f"--intra-weights {text!r}: give three non-negative numbers (mean, variance, skewness), "
                        f"e.g. 1,1,1")
    return weights


def check_config(cfg: Config, args: argparse.Namespace) -> None:
    """Impossible settings are user errors, reported before any work starts. ``args`` are the flags as given (None:
    not given), to tell a flag the user set from a default or a preset."""
    check_flags({"--iterations": cfg.iterations, "--eval-every": cfg.eval_every, "--val-images": cfg.val_images,
                 "--teacher-iterations": cfg.teacher_iterations}, "must be >= 1", lambda v: v >= 1)
    check_flags({"--batch-size": cfg.batch_size}, "must be >= 2 (BatchNorm needs two images per batch to train)",
                lambda v: v >= 2)
    check_flags({"--lr": cfg.lr, "--teacher-lr": cfg.teacher_lr, "--T": cfg.T, "--paint": cfg.paint},
                "must be positive", lambda v: 0 < v < math.inf)   # NaN fails too
    check_flags({"--kd-weight": cfg.kd_weight, "--at-weight": cfg.at_weight, "--sad-weight": cfg.sad_weight,
                 "--background-weight": cfg.background_weight}, "must be non-negative", lambda v: 0 <= v < math.inf)
    check_flags({"--sad-start": cfg.sad_start}, "must lie in [0, 1] (a fraction of training)", lambda v: 0 <= v <= 1)
    check_flags({"--height": cfg.height, "--width": cfg.width}, "must be one of the multiples of 8 from 16 up "
                "(ERFNet downsamples three times, DeepLabV3 to stride 8)", lambda v: v >= 16 and v % 8 == 0)
    for flag, crop, side, side_flag in (("--crop-height", cfg.crop_height, cfg.height, "--height"),
                                        ("--crop-width", cfg.crop_width, cfg.width, "--width")):
        check_flags({flag: crop or None}, f"must be a multiple of 8, at least 16 and at most {side_flag} {side} "
                    f"(0: whole images)", lambda v: 16 <= v <= side and v % 8 == 0)
    if bool(cfg.crop_height) != bool(cfg.crop_width):
        given, missing = ("--crop-height", "--crop-width") if cfg.crop_height else ("--crop-width", "--crop-height")
        raise UserError(f"{given} {cfg.crop_height or cfg.crop_width} without {missing}: a training crop needs "
                        f"both sides; give {missing} too, or neither for whole images.")
    check_flags({"--crop-top": cfg.crop_top}, "must lie in [0, 1) (a fraction of the frame)", lambda v: 0 <= v < 1)
    if not cfg.data_root:   # the real data sets' sizes are known only once they are read
        check_flags({"--train-images": cfg.train_images}, f"must hold at least one batch (--batch-size "
                    f"{cfg.batch_size})", lambda v: v >= cfg.batch_size)
    check_run_options(cfg)   # --seed, --workers, --checkpoint-every
    # Flags this run would ignore: silently, they would change nothing.
    for flag, value in (("--dataset", args.dataset), ("--crop-top", args.crop_top)):
        if value is not None and not cfg.data_root:
            raise UserError(f"{flag} describes the real data set of --data-root; without --data-root the synthetic "
                            f"road scenes are used: give --data-root, or drop {flag}.")
    terms = {term for method in cfg.methods for term in METHODS[method][1]}
    for flag, value, term in (("--kd-weight", args.kd_weight, "kd"), ("--T", args.T, "kd"),
                              ("--at-weight", args.at_weight, "at"), ("--sad-weight", args.sad_weight, "sad"),
                              ("--sad-start", args.sad_start, "sad"), ("--sad-size", args.sad_size, "sad"),
                              ("--intra-weights", args.intra_weights, "intra"),
                              ("--intra-masks", args.intra_masks, "intra")):
        if value is not None and term not in terms:
            rows = [method for method, (_, used) in METHODS.items() if term in used]
            raise UserError(f"{flag} sets the {METHODS[term][0].removeprefix('ERFNet + ')} term, and --methods "
                            f"{','.join(cfg.methods)} trains no row with it: drop it, or add {' or '.join(rows)} to "
                            f"--methods.")
    if cfg.teacher_checkpoint and args.teacher_backbone is not None:   # a preset's --teacher-backbone just goes unused
        raise UserError("--teacher-checkpoint (a trained teacher) and --teacher-backbone (weights to train one "
                        "from) both name the teacher: give one.")
    if cfg.data_root:   # sizes of the synthetic data, which the real data set replaces
        refuse_ignored(args, {"--train-images": "train_images", "--val-images": "val_images", "--paint": "paint",
                              "--road-classes": "road_classes"},
                       "sizes the synthetic data, which --data-root replaces: drop it.")
    if cfg.teacher_checkpoint:   # a given teacher is not trained here
        refuse_ignored(args, {"--teacher-iterations": "teacher_iterations", "--teacher-lr": "teacher_lr"},
                       "sets how a teacher is trained here, and --teacher-checkpoint gives a trained one: drop it.")
    for name in ("data_root", "teacher_checkpoint", "student_checkpoint"):
        value = getattr(cfg, name)
        if value and not Path(value).exists():
            raise UserError(f"--{name.replace('_', '-')} {value}: no such file or folder.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("this script trains on one device (ERFNet students); run it with python, not torchrun.")
    if cfg.preset == "paper" and not cfg.data_root:
        print("note: --preset paper without --data-root: the IntRA-KD repository's hyper-parameters on the built-in "
              "synthetic road scenes (no ApolloScape or CULane data is read).")


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    cfg, run = resume_or_check(args, cfg, Config, check_config)
    device = pick_device(cfg.device)
    experiment = Experiment(cfg, device)          # missing data, bad labels or a wrong teacher file stop us here
    with run_folder(run, "reproduce_intra_kd", cfg) as run:
        experiment.run_all(run)


if __name__ == "__main__":
    run_main(main)
