#!/usr/bin/env python
"""Reproduce Palchuri & Chakraborty, "Compression techniques for Semantic Segmentation" (NYU Tandon).

Source: ../shared/seeds/000_75d86e3d662be989.txt ("the report"). A U-Net student learns PASCAL VOC 2012 from a
DeepLabV3-ResNet101 teacher, by structured knowledge distillation (Section 3.1, after Liu et al. 2019 [7]) and by
quantization-aware knowledge distillation (Section 3.2; Section 1: "similar to the work done in [6]", QKD, Kim et al.
2019), with the quantization functions of Polino et al. 2018 [9] (Section 2.3):

  Section 3    the student is Buda et al.'s U-Net [1] (32 features, BatchNorm, bias-free 3x3 convolutions; here 3
               input channels and VOC's 21 classes: 7,763,701 parameters, common/unet.py); the teacher is PyTorch's
               pretrained DeepLabV3-ResNet101 (torchvision, COCO with the VOC classes: --teacher-weights coco).
               "We start by ... train[ing] this network for semantic segmentation task, then we quantize this
               network ... After this, we perform knowledge distillation on the pretrained student model".
  Section 3.1  pixel-wise distillation: the KL divergence between the teacher's and the student's per-pixel class
               distributions; pair-wise distillation: squared differences of the two networks' similarities between
               local pixel areas (common.losses.pairwise_similarity_loss). "The main objective of the student
               network is to reduce the pixelwise and pairwise distillation loss along with the classification
               loss": L = CE + w_pi T^2 KL(p_T || p_S) + w_pa l_pa            (``distillation_loss`` below).
  Section 2.3  "The quantization functions used in our work is explained in detail here [9]": Polino et al.'s
               uniform quantization with scaling -- per bucket of k consecutive weights, (w - min) / (max - min)
               rounded to 2^b levels, scaled back; straight-through gradients (common/quantization.py,
               ``polino_quantize``; --quantizer polino, the default).
  Section 3.2  "We have a 'fake' quantization module that is present during knowledge distillation: all the
               computations are still made using higher precision, but the grouping of weights is done during
               training": the pretrained student fake-quantized and distilled from the frozen teacher with Section
               3.1's loss (the "Section 3.2" rows). The report names no phases; QKD [6] (Kim et al. 2019), which
               Section 1 calls similar, has three, run as the QKD rows: self-studying (the quantized student
               alone), co-studying (teacher and quantized student train together, so the teacher adapts to the
               quantized student), tutoring (teacher frozen, student distilled).
  Section 4    VOC 2012; Adam, lr 1e-4, "a momentum of 0.8", a learning-rate scheduler in min mode. The report's
               only results are statements: after 1000 epochs the training loss "saturates at 50" (Figure 1, with
               20 more epochs to show it), and "knowledge distillation is not working well" (Figure 2).

What this script runs (each row of table_qkd.md; every compressed student starts from the same pretrained student,
as Section 3 says):
  1. the teacher: torchvision's COCO weights, --teacher-checkpoint FILE, or one trained here and cached (the default
     preset's: a DeepLabV3-ResNet50, see "How the default miniature is scaled" below);
  2. the student pre-trained alone (Figure 1's "1000 epochs"), then continued alone (its "20 more epochs");
  3. from the pretrained student: + pixel-wise, + pair-wise, + both (Figure 2);
  4. at each of --bits, from the pretrained student fake-quantized: quantization-aware training without a teacher;
     Section 3.2 as written (distilled from the frozen teacher); QKD [6] (its three phases; --self-study,
     --co-study, --tutor, any of them 0 to skip it). All three train the same number of iterations;
  5. int8: the 8-bit QKD student (or, without 8 in --bits, the '+ both' student) converted to a real int8 model for
     x86 CPUs with torchao's PT2E path (common/int8.py) after a short tutoring under the backend's own quantizer,
     and evaluated as converted -- every 3x3 and 1x1 convolution runs as a oneDNN int8 kernel.

Readings of the report we had to choose (repeated under the table):
  * "Adam ... with a momentum of 0.8": Adam's first-moment coefficient beta1 = 0.8 (beta2 0.999, torch's default).
    The scheduler "operating in min mode": ReduceLROnPlateau(mode="min") on the validation loss at each evaluation
    (factor 0.1, torch's default; patience 2 evaluations in the default preset, 10 in the paper preset).
  * Loss weights and temperature are not given: Liu et al.'s lambda = 10 for both distillation terms (their pixel
    term averaged over pixels, as here), T = 1 (Liu et al.). Pixels labelled 255 are left out of CE and KL.
  * Pair-wise features (not given): the teacher's DeepLab head after ASPP and its 3x3 conv (256 channels, stride 8:
    Liu et al.'s "after the context module") and the student's decoder at the same stride (the first decoder stage,
    8 x 32 = 256 channels), 2x2 patches max-pooled into nodes (Liu et al.'s reading; common.losses).
  * The quantizer: Section 2.3 names Polino et al. [9], so --quantizer polino is the default: weights only (their
    code quantizes parameters, not activations), buckets of 256 consecutive weights (their experiments' bucket
    size; --bucket-size), each scaled by its own min and max to s = 2^b levels, round to nearest (their training
    loop's deterministic rounding), straight-through gradients. Section 3.2's "grouping of weights" is read as this:
    the weights grouped into buckets and onto 2^b levels. --quantizer qkd is QKD's [6]: weights symmetric per
    output channel on a narrow grid of 2^b - 1 levels (2 bits: 3 levels, ternary -- the table says so), activations
    (every convolution's input) asymmetric per tensor with 2^b levels, learned clipping ranges (--ranges tracked:
    moving min/max). Both: first and last layer at 8 bits (Polino et al.'s runs leave them in float, the usual
    low-bit practice keeps 8), BatchNorm float.
  * Figure 1's "20 more epochs" continue the pre-training: its Adam moments and plateau scheduler go on (saved in
    checkpoints/student_pretrain_optimizer.pt); the fp32 distillation rows start from that state too, so that
    Figure 2 compares like with like. The quantized rows start a fresh Adam (new parameters, a new phase).
  * QKD's co-studying in the default preset trains the teacher's head only (its backbone stays fixed, which spares a
    ResNet backward pass on a CPU); --co-study-teacher all (the paper preset) trains the whole teacher.
  * "1000 epochs" and "20 more epochs" are iteration budgets here (--pretrain-iterations, --iterations): the default
    preset runs minutes on a CPU, so its students are far from converged; the paper preset runs the report's epochs.
    The quantized rows train --self-study + --co-study + --tutor iterations, as many as the fp32 rows in both presets
    (default 20 + 20 + 20 = 60; paper 455 + 455 + 910 = 1,820, 20 epochs); the table says when they differ.
  * The report's loss of 50 is not a per-pixel mean cross-entropy with 21 classes (a uniform prediction scores
    ln 21 = 3.04 per pixel), but its reduction is not given: a sum instead of a mean reaches 50 easily (16
    near-uniform pixels already sum to 16 ln 21 = 48.7; a sum over a batch, an image or an epoch more). We report
    per-pixel means and cannot compare the 50 with them.

How the default miniature is scaled from the report, and why (issue 16: the mechanism must be alive in it):
  * Data: without --data-root, 256 training and 32 validation synthetic VOC-like 21-class scenes of 64x64
    (common/synthetic_scenes.py) instead of VOC 2012's 1,464 / 1,449 images of ~500 px; the students pre-train 150
    iterations and every row trains 60 more, instead of 1000 + 20 epochs: minutes on a 2-core CPU, and students far
    from converged (they learn the frequent classes).
  * The teacher: the report's is pretrained (--teacher-weights coco and --teacher-checkpoint load a
    DeepLabV3-ResNet101 unless --teacher-arch says otherwise); no weights can be downloaded here, so the run trains
    its own from scratch, once, and caches it. Distillation can only be tested if that teacher is clearly better
    than its student; the run measures this (``teacher_check``, checks.csv: teacher mIoU at least 5 points above
    "U-Net fp32, alone (continued)") and states a failure atop the table. The report's DeepLabV3-ResNet101 does
    not get there in CPU minutes: 150 SGD iterations (rate 0.01, poly) left it predicting background (3.5 to 6.2
    mIoU against the student's 16 to 22 in the README's earlier runs); in an exploration on a GPU with this data,
    these batches and these networks (2026-12-04), SGD at 0.05 for 600 iterations still gave 5.5, Adam 1e-3 (poly)
    17.6 after 600 and 41.8 after 1,000 iterations, which would take about 16 minutes at 2 threads on the 2-core
    CPU (estimated from its 150 iterations' share of the old default run), more than the whole run may take.
    The DeepLabV3-ResNet50 (the same ASPP head at output stride 8; 39.6M parameters against 58.6M) learns faster
    per iteration and, in bfloat16 autocast on a CPU that has it natively (AMX / AVX512-BF16; fp32 elsewhere),
    costs 0.4-0.55x the CPU time of the ResNet-101's fp32 iteration (measured on the shared 2-core CPU): 1,000 Adam
    iterations in bf16 autocast gave 50.4 / 36.1 / 33.9 mIoU for seeds 0 / 1 / 2 in that exploration, against
    16.9 / 21.6 / 19.2 for the student alone (600 fp32 iterations were not enough: 19.2 against 19.2 for seed 2).
    So the default preset's teacher is a DeepLabV3-ResNet50 trained 800 iterations (Adam 1e-3, poly, batch 8, bf16
    where native; 1,000 made the whole default run 15.6 min alone on the 2-core CPU, over its 15-minute budget, of
    which 10.2 min the teacher, and 46.7 mIoU against 15.6 for the student alone); it is still a network of 5x the
    student's parameters, and a teacher stronger than its student is what distillation needs. --teacher-arch
    deeplabv3_resnet101 (the paper preset's) is the report's architecture; --teacher-weights coco its pretrained
    weights, where you can download them.

Run: python reproduce_qkd.py [--preset paper] [--data-root DIR] [--bits 8,4,2]   (see --help, README)
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import itertools
import math
import os
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.checks import Check, failed_lines, teacher_margin, write_checks
from common.devices import autocast, cpu_supports_bf16, pick_device
from common.errors import UserError, check_flags, refuse_ignored
from common.filecheck import VERDICTS_FILE
from common.images import IGNORE_INDEX
from common.int8 import (CompiledInt8, convert_reference, count_int8_convolutions, int8_weight_bytes, lower_int8,
                         prepare_int8_qat)
from common.losses import kd_kl_div, pairwise_similarity_loss, weighted_cross_entropy
from common.metrics import evaluate_segmentation, predict_segmentation
from common.profiler import measure_latency, profile
from common.quantization import fake_quantize_model, quantized_weight_bytes, strip_fake_quantization, weight_levels
from common.results import ResultsCSV, Table, plot_curve_panels, plot_curves, plot_panel, running_mean
from common.runs import (RunDir, RunOptions, add_run_arguments, check_run_options, config_from_args, help_formatter,
                         load_checkpoint, resume_or_check, run_folder, run_main, save_checkpoint)
from common.segmentation_models import WeightFlags, build_segmenter
from common.synthetic_scenes import SyntheticScenes
from common.teachers import OutputMemo, cache_path, freeze, load_or_train
from common.training import Session, Trained, make_scheduler, train, training_batches
from common.unet import UNet
from common.voc import NUM_CLASSES, augmented_item, colorize, voc_dataset

TEACHER_ARCH = "deeplabv3_resnet101"   # the report's teacher (Section 3); --teacher-arch, the paper preset's
TEACHER_ARCHS = ("deeplabv3_resnet50", TEACHER_ARCH)   # the default preset's is the ResNet-50 (module docstring)
TABLE = "table_qkd"
FLAGS = WeightFlags(network_file="--teacher-checkpoint", network_download="--teacher-weights coco")  # named in errors
# What the report says of each row (Section 4); it prints no table and no mIoU.
SOURCE_SAYS = {
    "teacher": "PyTorch's pretrained DeepLabV3-ResNet101 (Section 3); no score given",
    "alone": "training loss 'saturates at 50' after 1000 epochs, flat over 20 more (Section 4, Fig. 1); no mIoU",
    "kd": "'knowledge distillation is not working well' (Section 4, Fig. 2); no mIoU",
    "qat": "not reported",
    "report": "the report's procedure (Section 3.2); no result reported",
    "qkd": "QKD [6], 'similar to' the report's (Section 1); no result reported",
    "int8": "not in the report",
}
KD_ROWS = {"pixel": (True, False), "pair": (False, True), "both": (True, True)}   # (pixel-wise, pair-wise)
QUANT_ROWS = ("qat", "report", "qkd")   # no teacher; Section 3.2 as written (frozen teacher); QKD [6]


def precision(cfg: Config, bits: int) -> str:
    """A quantized row's precision, with the weight levels its quantizer really allows: the qkd quantizer's
    symmetric grid has 2^b - 1 (2 bits: 3, ternary), Polino et al.'s 2^b per bucket; Polino's leaves activations
    in float (A32)."""
    levels = weight_levels(bits, cfg.quantizer)
    act = 32 if cfg.quantizer == "polino" else bits
    return f"W{bits}A{act} ({levels}-level weights)"


def bits_cell(cfg: Config, bits: int) -> str:
    """The table's W/A column of a quantized row."""
    if cfg.quantizer == "polino":
        return f"{bits}/32, {2 ** bits} levels per {cfg.bucket_size} weights"
    return f"{bits}/{bits}, {weight_levels(bits, 'qkd')} weight levels"


def teacher_label(cfg: Config) -> str:
    """The teacher's row: the report's DeepLabV3-ResNet101, or the default preset's smaller stand-in, named so."""
    if cfg.teacher_arch == TEACHER_ARCH:
        return "DeepLabV3-ResNet101 (teacher)"
    return "DeepLabV3-ResNet50 (teacher; the report's is ResNet-101)"


# ================================================================================= the mechanism check (issue 16)
def teacher_check(teacher_miou: float, alone_miou: float) -> Check:
    """Whether this run can test distillation at all: the teacher's validation mIoU at least 5 points above the
    student alone, measured by this run. "The student alone" is the row every fp32 distillation row is compared
    with: "U-Net fp32, alone (continued)", the pretrained student trained on the labels for as many iterations as
    the distilled rows, from the same start (Figure 2's baseline; not the pre-training's end, which trained less).
    A teacher below that row can only pull its students down (Section 3.1's KL term pulls towards its predictions),
    as the README's 2026-12-04 run showed. ``*_miou`` in [0, 1]; the check's value is in points."""
    return replace(teacher_margin(teacher_miou, alone_miou, about=TABLE),
                   check="teacher mIoU above the student alone (U-Net fp32, alone (continued); points)")


# ========================================================================== the objectives (Sections 3.1, 3.2, 4)
def distillation_loss(student_logits: torch.Tensor, student_feat: torch.Tensor, teacher_logits: torch.Tensor,
                      teacher_feat: torch.Tensor, target: torch.Tensor, pixel_weight: float, pair_weight: float,
                      T: float = 1.0, patch: int = 2) -> tuple[torch.Tensor, dict]:
    """L = CE(y, p_S) + pixel_weight T^2 KL(p_T || p_S) + pair_weight l_pa       (Section 3.1, Liu et al. 2019).

    CE and the pixel-wise KL are averaged over the pixels not labelled 255; l_pa is
    common.losses.pairwise_similarity_loss on (student_feat, teacher_feat) with ``patch`` x ``patch`` nodes. A zero
    weight leaves its term out. The teacher's tensors are not differentiated. Returns the loss and its terms.
    """
    ce = weighted_cross_entropy(student_logits, target, ignore_index=IGNORE_INDEX)
    loss, logs = ce, {"train_ce": ce.detach()}
    if pixel_weight:
        kl = kd_kl_div(student_logits, teacher_logits, T, valid_mask=target != IGNORE_INDEX)
        loss = loss + pixel_weight * T ** 2 * kl
        logs["train_pixel_kl"] = kl.detach()
    if pair_weight:
        pair = pairwise_similarity_loss(student_feat, teacher_feat, patch)
        loss = loss + pair_weight * pair
        logs["train_pair"] = pair.detach()
    return loss, logs


def co_study_loss(student_logits: torch.Tensor, student_feat: torch.Tensor, teacher_logits: torch.Tensor,
                  teacher_feat: torch.Tensor, target: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, dict]:
    """QKD's co-studying (Section 3.2, Kim et al. 2019): the quantized student's ``distillation_loss`` plus the
    teacher's own, CE(y, p_T) + T^2 KL(p_S || p_T), the student as its target, so that the teacher becomes
    quantization-friendly. Both networks are differentiated here."""
    s_loss, logs = distillation_loss(student_logits, student_feat, teacher_logits, teacher_feat, target,
                                     cfg.pixel_weight, cfg.pair_weight, cfg.T, cfg.patch)
    t_ce = weighted_cross_entropy(teacher_logits, target, ignore_index=IGNORE_INDEX)
    t_kl = kd_kl_div(teacher_logits, student_logits, cfg.T, valid_mask=target != IGNORE_INDEX)
    logs.update(teacher_ce=t_ce.detach(), teacher_kl=t_kl.detach())
    return s_loss + t_ce + cfg.T ** 2 * t_kl, logs


def adam(params, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau]:
    """Section 4: Adam, lr 1e-4, 'momentum' 0.8 (beta1), and a plateau scheduler in min mode. Fused: one kernel
    updates every parameter (the U-Net's Adam step on the CPU: 26 -> 7 ms)."""
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, 0.999), fused=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=cfg.plateau_patience)
    return optimizer, scheduler


# =============================================================================================== configuration
@dataclass
class Config(RunOptions):
    """The run: common.runs.RunOptions (seed, device, amp, workers, cache_dir, out, checkpoint_every, progress) and
    the settings of the report's procedure below."""
    # ----- Section 4's recipe
    lr: float = 1e-4
    beta1: float = 0.8                  # "a momentum of 0.8"
    batch_size: int = 8                 # not given
    plateau_patience: int = 2           # evaluations without improvement before the rate drops (torch: 10)
    pretrain_iterations: int = 150      # Figure 1's "1000 epochs"
    iterations: int = 60                # Figure 1's "20 more epochs"; the fp32 distillation rows
    eval_every: int = 20
    # ----- Section 3.1
    T: float = 1.0
    pixel_weight: float = 10.0
    pair_weight: float = 10.0
    patch: int = 2
    student_width: int = 32             # Buda et al.'s init_features
    # ----- Section 3.2 (QKD)
    bits: tuple = (8, 4)
    quantizer: str = "polino"           # polino (Section 2.3's [9]) | qkd (QKD's [6] learned/tracked ranges)
    bucket_size: int = 256              # Polino et al.'s bucket of consecutive weights sharing one min/max
    ranges: str = "learned"             # learned | tracked (the qkd quantizer)
    self_study: int = 20                # QKD phase lengths (iterations, 0 skips one); QAT without a teacher and the
                                        # report's row (fake-quant + distillation) train their sum
    co_study: int = 20
    tutor: int = 20
    co_study_teacher: str = "head"      # head | all
    int8_iterations: int = 20           # tutoring under the int8 backend's quantizer before conversion
    # ----- the teacher
    teacher_arch: str = "deeplabv3_resnet50"   # the report's is deeplabv3_resnet101 (the paper preset's); the
    #                                            default's ResNet-50 learns the scenes in CPU minutes (docstring)
    teacher_weights: str | None = None  # "coco": torchvision's pretrained weights, the report's teacher
    teacher_checkpoint: str | None = None
    teacher_iterations: int = 800       # a teacher trained here (no weights given; docstring)
    teacher_lr: float = 1e-3            # its Adam rate (our choice; poly schedule)
    # ----- data
    data_root: str | None = None
    train_images: int = 256             # synthetic scenes (VOC 2012 train: 1,464)
    val_images: int = 32                # synthetic scenes (VOC 2012 val: 1,449)
    image_size: int = 64                # synthetic scene side
    crop: int = 64                      # training crop side
    scale: tuple = (0.5, 2.0)
    eval_size: int = 512                # VOC: validation images are padded to this square (the int8 model's input)
    profile_size: int = 256             # the cost columns at 1x3xSxS
    # ----- costs and rows
    latency_repeats: int = 5
    compile: bool = True                # time the fp32 and int8 students compiled (torch.compile; int8: CompiledInt8)
    int8: bool = True                   # the int8 row (x86 CPUs, torchao)
    panel_images: int = 3


PRESETS = {
    # A 2-core CPU: 10.5-11.8 minutes alone on synthetic 64x64 scenes with an empty teacher cache in bf16, 13.5-14.6
    # with --no-amp (AMD EPYC, Zen 4, 2026-12-07, commit 64cbad8, two runs each; README), most of it the ResNet-50
    # teacher's 800 iterations.
    # The students' budgets are tiny next to the report's 1000 epochs; they learn the frequent classes only.
    "default": {},
    # The report's settings (Section 4); batch, weights, phase lengths and patience are our choices (docstring). The
    # QKD phases sum to the fp32 rows' 20 epochs (455 + 455 + 910 = 1,820 iterations), so every row after
    # pre-training trains as long.
    "paper": dict(batch_size=16, plateau_patience=10, pretrain_iterations=91_000, iterations=1_820, eval_every=910,
                  self_study=455, co_study=455, tutor=910, co_study_teacher="all", int8_iterations=910,
                  teacher_arch=TEACHER_ARCH, teacher_iterations=9_100, crop=320, profile_size=512, latency_repeats=20,
                  checkpoint_every=910, workers=8),
}


# =============================================================================================== data and models
def new_student(cfg: Config) -> UNet:
    """Buda et al.'s U-Net [1]: k = 32, BatchNorm, bias-free 3x3 convolutions; 3 input channels, 21 classes. Its
    initial weights depend on the seed only (not on whether the teacher was trained or read from the cache). In
    channels-last memory format, where its bf16 training step takes 0.8x the contiguous one's time
    (benchmarks/compare.py --only small); the fake-quantized copies go back to the contiguous format
    (``Experiment.quantized_copy``)."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        student = UNet(k=cfg.student_width, in_channels=3, num_classes=NUM_CLASSES, batch_norm=True, conv_bias=False)
    return student.to(memory_format=torch.channels_last)


class LogitsAndFeature(nn.Module):
    """The student as a function of one tensor returning (logits, the pair-wise feature map): the form torch.export
    needs for the int8 path, so that the same distillation loss trains it."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.unet(x, return_features=True)
        return logits, features["stride8"]


def student_outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pair-wise feature): the decoder at stride 8, the teacher head's stride (module docstring)."""
    if isinstance(model, UNet):
        logits, features = model(x, return_features=True)
        return logits, features["stride8"]
    out = model(x)                 # the int8 path's exported LogitsAndFeature
    return out[0], out[1]


def teacher_outputs(teacher: nn.Module, x: torch.Tensor, amp: bool,
                    backbone_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A frozen teacher's (logits, pair-wise feature: its DeepLab head after ASPP and the 3x3 conv) for ``x``,
    computed in the fastest precision (bf16 autocast on CPUs with native bf16, AMP on GPUs; --no-amp: float32) and
    returned in float32 (a weak teacher's logits overflow float16). ``backbone_out``: its backbone's output for
    ``x`` where already computed (``Experiment.fixed_backbone``); without it the whole teacher runs."""
    with torch.no_grad(), autocast(x.device, amp, cpu_bf16=True):
        if backbone_out is None:
            backbone_out = teacher.backbone(x)["out"]
        logits, head = teacher.head_forward(backbone_out, x.shape[-2:])
    return logits.float(), head.float()


# =============================================================================================== the experiment
class Experiment:
    """Sections 3 and 4 on VOC 2012 (--data-root) or synthetic scenes: teacher, pretrained student, the rows."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        if cfg.data_root:
            checked = dict(verdicts=Path(cfg.cache_dir) / VERDICTS_FILE, progress=cfg.progress)  # every file, now
            self.train_set = voc_dataset(cfg.data_root, "train", **checked)
            self.val_set = voc_dataset(cfg.data_root, "val", **checked)
            self.data_name = "VOC 2012 train / val"
            self.eval_side = cfg.eval_size
            check_eval_size(self.val_set.images, cfg.eval_size)
        else:
            self.train_set = SyntheticScenes("train", cfg.train_images, cfg.image_size, cfg.seed)
            self.val_set = SyntheticScenes("val", cfg.val_images, cfg.image_size, cfg.seed)
            self.data_name = (f"synthetic 21-class scenes {cfg.image_size}x{cfg.image_size} "
                              f"({cfg.train_images} / {cfg.val_images})")
            self.eval_side = 16 * math.ceil(cfg.image_size / 16)
        if len(self.train_set) < cfg.batch_size:
            raise UserError(f"{len(self.train_set)} training images are fewer than one batch of {cfg.batch_size}; "
                            f"raise --train-images or lower --batch-size.")
        # the batches of every job (random scale, flip and crop), and the validation: whole images padded to the
        # evaluation square (the U-Net needs sides divisible by 16, the int8 graph its one input shape)
        self.load = functools.partial(augmented_item, self.train_set, cfg.crop, tuple(cfg.scale))
        self.validate = functools.partial(evaluate_segmentation, dataset=self.val_set, num_classes=NUM_CLASSES,
                                          amp=cfg.amp, pad_to=self.eval_side)
        # weights named on the command line are read now: a wrong file stops us before the run folder exists
        given = cfg.teacher_weights or cfg.teacher_checkpoint
        self.given_teacher = (build_segmenter(cfg.teacher_arch, NUM_CLASSES, weights=given, flags=FLAGS) if given
                              else None)
        self.run: RunDir | None = None
        self.results: ResultsCSV | None = None
        self.session: Session | None = None
        self.memo = OutputMemo()     # the frozen teacher's outputs by step, shared by the fp32 distillation rows
        self.backbone_memo = OutputMemo()   # its backbone's, for the co-studied teachers (``fixed_backbone``)

    # ------------------------------------------------------------------ the whole run, as Sections 3-4
    def run_all(self, run: RunDir) -> None:
        cfg = self.cfg
        self.run, self.results = run, ResultsCSV(run.path / "results.csv")
        self.session = Session(run, self.device, cfg)
        self.session.say(f"data: {self.data_name}; device {self.device}; student U-Net k={cfg.student_width}, "
                         f"teacher {cfg.teacher_arch}")
        teacher = self.teacher()
        pretrained = self.train_fp32("student_pretrain", "U-Net, pre-trained alone", new_student(cfg), 0,
                                     cfg.pretrain_iterations, None, False, False)
        start = cfg.pretrain_iterations
        # Figure 1's "20 more epochs" go on with the pre-training's Adam moments and plateau scheduler; the
        # distillation rows start from the same state, so that Figure 2 compares like with like
        handoff = self.pretraining_end(pretrained)
        rows = {"alone": self.train_fp32("student_alone", "U-Net fp32, alone (continued)",
                                         copy.deepcopy(pretrained.model), start, cfg.iterations, None, False, False,
                                         handoff)}
        for name, (pixel, pair) in KD_ROWS.items():
            label = {"pixel": "U-Net fp32 + pixel-wise", "pair": "U-Net fp32 + pair-wise",
                     "both": "U-Net fp32 + pixel-wise + pair-wise"}[name]
            rows[name] = self.train_fp32(f"student_{name}", label, copy.deepcopy(pretrained.model), start,
                                         cfg.iterations, teacher.model, pixel, pair, handoff)
        for bits in cfg.bits:
            rows[f"qat{bits}"] = self.train_qat(bits, pretrained, start)
        for bits in cfg.bits:
            rows[f"report{bits}"] = self.train_report_procedure(bits, pretrained, teacher.model, start)
        tutors = {}
        for bits in cfg.bits:
            rows[f"qkd{bits}"], tutors[bits] = self.train_qkd(bits, pretrained, teacher.model, start)
        if cfg.int8:
            rows["int8"] = self.train_int8(rows, tutors, teacher.model)
        costs = self.costs(teacher.model, rows)
        checks = [teacher_check(teacher.metrics["miou"], rows["alone"].metrics["miou"])]
        write_table(self, teacher, pretrained, rows, costs, checks)
        plot_figures(self, teacher, pretrained, rows)
        write_checks(run.path, checks)

    # ------------------------------------------------------------------ the teacher (Section 3)
    def teacher(self) -> Trained:
        """The report's teacher (given weights), else one trained here from scratch, once, and cached."""
        cfg, session = self.cfg, self.session
        label = teacher_label(cfg)
        if self.given_teacher is not None:
            model = self.given_teacher.to(self.device)
            source = "torchvision's COCO weights" if cfg.teacher_weights else cfg.teacher_checkpoint
            trained = Trained("teacher", label, model, self.validate(model, device=self.device))
        else:
            key = {"what": "qkd teacher", "arch": cfg.teacher_arch, "data": self.data_name,
                   "iterations": cfg.teacher_iterations, "optimizer": "adam", "lr": cfg.teacher_lr,
                   "batch": cfg.batch_size, "crop": cfg.crop, "scale": list(cfg.scale), "seed": cfg.seed,
                   "cpu_bf16": self.teacher_in_bf16()}
            path = cache_path(cfg.cache_dir, "qkd_teacher", key)
            with torch.random.fork_rng():      # initial weights from the seed alone: a rerun trains the same teacher
                torch.manual_seed(cfg.seed)
                model = build_segmenter(cfg.teacher_arch, NUM_CLASSES).to(self.device)
            trained = load_or_train(model, path, lambda model: self.train_teacher(model, label, path))
            if trained is None:
                trained = Trained("teacher", label, model, self.validate(model, device=self.device))
                source = f"the cache ({path})"
            else:
                source = (f"training by this run ({cfg.teacher_iterations} iterations from scratch, Adam lr "
                          f"{cfg.teacher_lr:g}, poly{', bfloat16 autocast' if self.teacher_in_bf16() else ''}; "
                          f"cached)")
        trained.metrics["source"] = source
        freeze(trained.model)
        session.say(f"  teacher from {source}: mIoU {100 * trained.metrics['miou']:.1f}")
        return trained

    def teacher_in_bf16(self) -> bool:
        """Whether a teacher trained here trains in bfloat16 autocast: on a CPU that has it natively (AMX or
        AVX512-BF16; a ResNet trains about 1.6x faster), unless --no-amp. On a GPU --amp's mixed precision applies
        anyway."""
        return self.device.type == "cpu" and self.cfg.amp and cpu_supports_bf16()

    def float_rows_precision(self) -> str:
        """What the fp32 rows' forward passes compute in (``train_fp32``), in words for the table."""
        if self.teacher_in_bf16():
            return "bfloat16 autocast (native on this CPU)"
        return "mixed precision (AMP)" if self.device.type == "cuda" and self.cfg.amp else "float32"

    def train_teacher(self, model: nn.Module, label: str, path: Path) -> Trained:
        """No weights given: the DeepLab teacher (--teacher-arch) trained from scratch on the training set (then
        cached at ``path``). Our recipe (the report uses a pretrained one): Adam (torch's betas), --teacher-lr, poly
        schedule, no weight decay, in bfloat16 autocast on CPUs that have it (``teacher_in_bf16``). Adam, not SGD:
        SGD (momentum 0.9, rate 0.01 or 0.05) left the network predicting background after 150-600 iterations."""
        cfg, session = self.cfg, self.session
        session.say(f"training the {cfg.teacher_arch} teacher ({cfg.teacher_iterations} iterations from scratch"
                    f"{', bfloat16' if self.teacher_in_bf16() else ''}; cached in {path})")
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.teacher_lr, fused=True)
        stream = training_batches(self.load, len(self.train_set), cfg.teacher_iterations,
                                  batch_size=cfg.batch_size, session=session)

        def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
            x, y = stream(step)
            return weighted_cross_entropy(model(x).float(), y, ignore_index=IGNORE_INDEX), {}

        return train(model, optimizer, loss_fn, cfg.teacher_iterations, session=session, name="teacher", label=label,
                     evaluate=lambda: self.validate(model, device=self.device),
                     scheduler=make_scheduler(optimizer, "poly", cfg.teacher_iterations),
                     cpu_bf16=self.teacher_in_bf16())

    # ------------------------------------------------------------------ the float students (Sections 3, 3.1)
    def train_fp32(self, name: str, label: str, student: UNet, start_step: int, iterations: int,
                   teacher: nn.Module | None, pixel: bool, pair: bool, handoff: dict | None = None) -> Trained:
        """A float student: alone (cross-entropy) or distilled with Section 3.1's terms, from ``start_step``: it sees
        the batches the pre-training would have seen next, as every row that starts there. ``handoff``: the
        optimizer and scheduler states to go on from (``pretraining_end``); None: fresh ones. The frozen teacher's
        outputs of a step are computed by the first row that needs them and reused by the others (self.memo). The
        returned row holds its final optimizer and scheduler in ``info``. Mixed precision: float32 weights, the
        forward pass in bfloat16 autocast on CPUs that have it natively (AMP on GPUs; --no-amp: float32); "fp32" in
        the rows' labels is the 32/32 bits of the weights and activations the row keeps, next to the quantized rows,
        which train in float32 under --amp too: autocast would cast their fake-quantized weights to bf16, whose 8
        significant bits move 8-bit levels by up to a step (a bucket spanning [1, 2] keeps 129 of its 256 levels;
        the default student's initial weights move by up to 0.39 of a step, tests/test_polino_quantizer.py), so they
        would no longer be the b-bit grid the rows are named for. Validation runs in float32, as for every row."""
        cfg, session = self.cfg, self.session
        student = student.to(self.device)
        optimizer, scheduler = adam(student.parameters(), cfg)
        if handoff is not None:   # copies: load_state_dict may keep the given tensors, and four rows start here
            optimizer.load_state_dict(copy.deepcopy(handoff["optimizer"]))
            scheduler.load_state_dict(copy.deepcopy(handoff["scheduler"]))
        stream = training_batches(self.load, len(self.train_set), iterations, batch_size=cfg.batch_size,
                                  session=session, first_step=start_step)

        def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
            x, y = stream(step)
            logits, feat = student_outputs(student, x)
            if teacher is None:
                return weighted_cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX), {}
            t_logits, t_feat = self.memo(start_step + step, lambda: self.frozen_outputs(teacher, x, start_step + step),
                                         self.device)
            return distillation_loss(logits.float(), feat.float(), t_logits, t_feat, y,
                                     cfg.pixel_weight if pixel else 0.0, cfg.pair_weight if pair else 0.0, cfg.T,
                                     cfg.patch)

        trained = train(student, optimizer, loss_fn, iterations, session=session, name=name, label=label,
                        evaluate=lambda: self.validate(student, device=self.device), eval_every=cfg.eval_every,
                        scheduler=scheduler, start_step=start_step, cpu_bf16=True)
        trained.info.update(optimizer=optimizer, scheduler=scheduler)
        session.say(f"  {label}: mIoU {100 * trained.metrics['miou']:.1f}")
        return trained

    def pretraining_end(self, pretrained: Trained) -> dict:
        """The pre-training's final Adam and plateau-scheduler states, kept in checkpoints/ (a finished job's
        checkpoint holds no optimizer), so that a resumed run continues from the same state as an uninterrupted
        one. Written once, when the pre-training has just trained; read back by a resumed run."""
        path = self.run.checkpoints / "student_pretrain_optimizer.pt"
        if path.exists():
            return load_checkpoint(path, fix="delete it and checkpoints/student_pretrain.pt; the pre-training "
                                             "trains again")
        optimizer = pretrained.info["optimizer"]
        if not optimizer.state:   # Adam holds no state before its first step: the job was reloaded, not trained
            raise UserError(f"{path} is missing: delete checkpoints/student_pretrain.pt in the run folder to train "
                            f"the pre-training again.")
        state = {"optimizer": optimizer.state_dict(),
                 "scheduler": pretrained.info["scheduler"].state_dict()}
        save_checkpoint(path, state)
        return state

    # ------------------------------------------------------------------ Section 3.2: QAT and QKD
    def quantized_copy(self, pretrained: UNet, bits: int) -> nn.Module:
        """The pretrained student with fake quantization at ``bits`` (common/quantization.py): --quantizer polino,
        Polino et al.'s bucketed min-max weights (Section 2.3's [9]); qkd, QKD's learned (or tracked) ranges."""
        cfg = self.cfg
        quantized = fake_quantize_model(pretrained, bits, mode=cfg.ranges, quantizer=cfg.quantizer,
                                        bucket_size=cfg.bucket_size)
        return quantized.to(self.device, memory_format=torch.contiguous_format)

    def self_study(self, name: str, student: nn.Module, start_step: int, iterations: int) -> Trained:
        """The quantized student trained alone on the labels: QKD's self-studying phase, and QAT without a teacher."""
        cfg, session = self.cfg, self.session
        optimizer, scheduler = adam(student.parameters(), cfg)
        stream = training_batches(self.load, len(self.train_set), iterations, batch_size=cfg.batch_size,
                                  session=session, first_step=start_step)

        def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
            x, y = stream(step)
            return weighted_cross_entropy(student(x).float(), y, ignore_index=IGNORE_INDEX), {}

        return train(student, optimizer, loss_fn, iterations, session=session, name=name,
                     evaluate=lambda: self.validate(student, device=self.device), eval_every=cfg.eval_every,
                     scheduler=scheduler, start_step=start_step, amp=False)

    def train_qat(self, bits: int, pretrained: Trained, start_step: int) -> Trained:
        cfg = self.cfg
        total = cfg.self_study + cfg.co_study + cfg.tutor
        trained = self.self_study(f"qat{bits}", self.quantized_copy(pretrained.model, bits), start_step, total)
        trained.label = f"U-Net QAT {precision(cfg, bits)}, no teacher"
        self.session.say(f"  {trained.label}: mIoU {100 * trained.metrics['miou']:.1f}")
        return trained

    def train_report_procedure(self, bits: int, pretrained: Trained, teacher: nn.Module, start_step: int) -> Trained:
        """Section 3.2 as the report writes it: "a 'fake' quantization module that is present during knowledge
        distillation" -- the pretrained student fake-quantized at ``bits`` and distilled with Section 3.1's loss
        from the frozen teacher (no self-studying, no co-studying), as long as QAT and QKD train. The frozen
        teacher's outputs are those the fp32 rows memoised."""
        cfg = self.cfg
        total = cfg.self_study + cfg.co_study + cfg.tutor
        trained = self.tutoring(self.session, f"report{bits}", self.quantized_copy(pretrained.model, bits), teacher,
                                start_step, total, memo=True)
        trained.label = f"U-Net {precision(cfg, bits)} + pixel-wise + pair-wise, frozen teacher (Section 3.2)"
        self.session.say(f"  {trained.label}: mIoU {100 * trained.metrics['miou']:.1f}")
        return trained

    def train_qkd(self, bits: int, pretrained: Trained, teacher: nn.Module,
                  start_step: int) -> tuple[Trained, nn.Module]:
        """QKD (Kim et al. 2019 [6], which Section 1 names: "similar to the work done in [6]"; the report's Section
        3.2 has no phases) at ``bits``: self-studying, co-studying, tutoring; a phase of 0 iterations is skipped.
        Returns the student and the (co-studied) teacher that tutored it."""
        cfg = self.cfg
        student = self.quantized_copy(pretrained.model, bits)
        tutor = copy.deepcopy(teacher)
        phases, step = [], start_step
        if cfg.self_study:
            phases.append(self.self_study(f"qkd{bits}_1_self", student, step, cfg.self_study))
            step += cfg.self_study
        if cfg.co_study:
            phases.append(self.co_study(f"qkd{bits}_2_co", student, tutor, step))
            step += cfg.co_study
        freeze(tutor)
        if cfg.tutor:
            phases.append(self.tutoring(self.session, f"qkd{bits}_3_tutor", student, tutor, step, cfg.tutor))
        final = phases[-1]
        final.label = f"U-Net QKD {precision(cfg, bits)}"
        final.train_loss = [v for p in phases for v in p.train_loss]
        final.evals = [e for p in phases for e in p.evals]
        final.diverged = any(p.diverged for p in phases)
        final.start_step = start_step
        final.metrics["phase_ends"] = list(itertools.accumulate(len(p.train_loss) for p in phases))[:-1]
        self.session.say(f"  {final.label}: mIoU {100 * final.metrics['miou']:.1f}")
        return final, tutor

    def co_study(self, name: str, student: nn.Module, teacher: nn.Module, start_step: int) -> Trained:
        """QKD's co-studying (``co_study_loss``): student and teacher train together. --co-study-teacher head: the
        teacher's backbone stays fixed (and in eval mode), and its output is the frozen teacher's, computed once
        (``fixed_backbone``). The fake-quantized student computes in float32; the teacher, as in its own training,
        in bfloat16 autocast on CPUs that have it natively (``teacher_in_bf16``)."""
        cfg, session = self.cfg, self.session
        head_only = cfg.co_study_teacher == "head"
        teacher.train().requires_grad_(True)
        if head_only:
            teacher.backbone.requires_grad_(False)
        pair = nn.ModuleDict({"student": student, "teacher": teacher})     # one checkpoint holds both
        optimizer, scheduler = adam([p for p in pair.parameters() if p.requires_grad], cfg)
        stream = training_batches(self.load, len(self.train_set), cfg.co_study, batch_size=cfg.batch_size,
                                  session=session, first_step=start_step)

        def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
            if head_only:
                teacher.backbone.eval()              # fixed backbone: its BatchNorm statistics too
            x, y = stream(step)
            s_logits, s_feat = student_outputs(student, x)
            backbone_out = self.fixed_backbone(teacher, x, start_step + step) if head_only else None
            with autocast(x.device, self.teacher_in_bf16(), cpu_bf16=True):
                if head_only:
                    t_logits, t_head = teacher.head_forward(backbone_out, x.shape[-2:])
                else:
                    t_logits, t_features = teacher(x, return_features=True)
                    t_head = t_features["head"]
            return co_study_loss(s_logits.float(), s_feat.float(), t_logits.float(), t_head.float(), y, cfg)

        return train(pair, optimizer, loss_fn, cfg.co_study, session=session, name=name,
                     evaluate=lambda: self.validate(student, device=self.device), eval_every=cfg.eval_every,
                     scheduler=scheduler, evaluated=student, start_step=start_step, amp=False)

    def tutoring(self, session: Session, name: str, student: nn.Module, tutor: nn.Module, start_step: int,
                 iterations: int, memo: bool = False) -> Trained:
        """QKD's tutoring: the teacher frozen, the quantized student distilled with Section 3.1's loss, on
        ``session``'s device (the int8 row's is the CPU). ``memo``: the tutor is the run's frozen teacher, whose
        outputs self.memo holds; QKD's tutors are not (each bit width has its own co-studied tutor), but under
        --co-study-teacher head their backbone's output is (``fixed_backbone``)."""
        cfg = self.cfg
        optimizer, scheduler = adam(student.parameters(), cfg)
        stream = training_batches(self.load, len(self.train_set), iterations, batch_size=cfg.batch_size,
                                  session=session, first_step=start_step)

        def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
            x, y = stream(step)
            logits, feat = student_outputs(student, x)
            at = start_step + step
            if memo:
                t_logits, t_feat = self.memo(at, lambda: self.frozen_outputs(tutor, x, at), session.device)
            else:
                t_logits, t_feat = self.frozen_outputs(tutor, x, at)
            return distillation_loss(logits.float(), feat.float(), t_logits, t_feat, y, cfg.pixel_weight,
                                     cfg.pair_weight, cfg.T, cfg.patch)

        return train(student, optimizer, loss_fn, iterations, session=session, name=name,
                     evaluate=lambda: self.validate(student, device=session.device), eval_every=cfg.eval_every,
                     scheduler=scheduler, start_step=start_step, amp=False)

    def frozen_outputs(self, teacher: nn.Module, x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``teacher_outputs`` of a frozen teacher (the run's, or a tutor after co-studying) for the batch of
        ``step``, its backbone's part through ``fixed_backbone``."""
        return teacher_outputs(teacher, x, self.cfg.amp, self.fixed_backbone(teacher, x, step))

    def fixed_backbone(self, teacher: nn.Module, x: torch.Tensor, step: int) -> torch.Tensor:
        """layer4's output for the batch ``x`` of ``step``, computed once and reused where it cannot change: a frozen
        part costs one forward pass. Under --co-study-teacher head, QKD's co-studied teachers keep the run's
        teacher's backbone as it is (weights and BatchNorm statistics, eval mode), so for a given batch their
        backbone's output is the frozen teacher's: it is kept for the steps at which they co-study and tutor, the
        same steps as the fp32 rows' (which compute it first), and serves both bit widths: 80 ResNet-50 forwards
        fewer in the default run. Computed, like all of a frozen teacher's work, in the fastest precision (bf16
        autocast on CPUs with native bf16, AMP on GPUs; --no-amp: float32); so on a GPU the co-studied heads read
        an AMP backbone output, as the frozen teacher's head does. Under --co-study-teacher all the backbone trains:
        nothing is kept."""
        cfg = self.cfg
        first = cfg.pretrain_iterations + cfg.self_study
        kept = cfg.co_study_teacher == "head" and first <= step < first + cfg.co_study + cfg.tutor

        def compute() -> tuple[torch.Tensor]:
            with torch.no_grad(), autocast(x.device, cfg.amp, cpu_bf16=True):
                return (teacher.backbone(x)["out"],)

        return self.backbone_memo(step if kept else None, compute, x.device)[0]

    # ------------------------------------------------------------------ a real int8 model
    def train_int8(self, rows: dict, tutors: dict, teacher: nn.Module) -> Trained:
        """The 8-bit QKD student (else the '+ both' student) exported, re-quantized with the x86 backend's own
        scheme (torchao's X86InductorQuantizer: uint8 activations per tensor, int8 weights per channel), tutored for
        --int8-iterations by the same teacher, then converted: BatchNorm folded, every convolution a oneDNN int8
        kernel (transposed convolutions stay float). A job of its own on the CPU: the int8 kernels are x86 ones."""
        cfg = self.cfg
        cpu = torch.device("cpu")
        session = Session(self.run, cpu, cfg)
        source = "qkd8" if "qkd8" in rows else "both"
        tutor = copy.deepcopy(tutors.get(8, teacher)).to(cpu)      # a CPU copy: the run's teacher stays where it is
        float_student = strip_fake_quantization(rows[source].model) if source == "qkd8" else rows[source].model
        float_student = copy.deepcopy(float_student).to("cpu", memory_format=torch.contiguous_format).train()
        example = torch.randn(2, 3, cfg.crop, cfg.crop)
        prepared = prepare_int8_qat(LogitsAndFeature(float_student), example, multiple=16)   # crops, then images
        start = cfg.pretrain_iterations + cfg.self_study + cfg.co_study + cfg.tutor
        trained = self.tutoring(session, "int8", prepared, tutor, start, cfg.int8_iterations)
        trained.metrics["fake_quant_miou"] = trained.metrics["miou"]    # the prepared model, before conversion
        session.say("  converting to int8 (torchao folds BatchNorm by pattern matching: about half a minute)")
        reference = convert_reference(prepared)
        # a lowered graph takes one input shape: one for the validation images, one for the cost columns
        converted = lower_int8(reference, torch.randn(1, 3, self.eval_side, self.eval_side))
        trained.info["profile_graph"] = (converted if cfg.profile_size == self.eval_side else
                                         lower_int8(reference, torch.randn(1, 3, cfg.profile_size, cfg.profile_size)))
        trained.info["reference"] = reference    # compiled for the latency column (costs)
        trained.model = converted
        trained.metrics.update(self.validate(converted, device=cpu))        # the int8 model's own score
        trained.label = f"U-Net int8 (x86 oneDNN), from {rows[source].label}"
        trained.metrics["int8_convolutions"] = count_int8_convolutions(converted)
        trained.metrics["source_row"] = source
        session.say(f"  {trained.label}: mIoU {100 * trained.metrics['miou']:.1f} "
                    f"({trained.metrics['int8_convolutions']} int8 convolutions)")
        return trained

    # ------------------------------------------------------------------ cost columns (common/profiler.py)
    def costs(self, teacher: nn.Module, rows: dict) -> dict:
        """Parameters, MAdds and CPU latency at 1x3xSxS, S = --profile-size, all on the CPU with this process's
        threads: the float student compiled (torch.compile) and the int8 model compiled (Inductor with freezing,
        ``CompiledInt8``; with --no-compile or without a C++ compiler, the graph lowered to oneDNN), so the two are
        compared as deployed; the teacher eager. Fake-quantized rows have no latency of their own: they run in
        float."""
        cfg = self.cfg
        shape = (1, 3, cfg.profile_size, cfg.profile_size)
        threads = torch.get_num_threads()
        self.session.say(f"measuring latency at {shape} on the CPU ({threads} threads)")
        float_student = copy.deepcopy(rows["alone"].model).to("cpu", memory_format=torch.contiguous_format).eval()
        out = {"threads": threads, "shape": shape,
               "teacher": profile(copy.deepcopy(teacher).cpu(), shape, "cpu", warmup=1,
                                  repeats=max(1, cfg.latency_repeats // 2)),
               "student": profile(float_student, shape, "cpu", warmup=2, repeats=cfg.latency_repeats)}
        out["student_latency"], out["compiled"] = out["student"]["latency_s"], False
        if cfg.compile:
            try:
                compiled = torch.compile(float_student)
                out["student_latency"] = measure_latency(compiled, shape, "cpu", warmup=2,
                                                         repeats=cfg.latency_repeats)
                out["compiled"] = True
            except Exception as e:   # no C++ compiler, or inductor unsupported here: say so, keep the eager time
                self.session.say(f"  torch.compile failed ({type(e).__name__}: {str(e)[:80]}); the fp32 latency is "
                                 f"eager")
        if "int8" in rows:
            int8, out["int8_compiled"] = rows["int8"], False
            if cfg.compile:
                try:   # as the fp32 student: compiled (Inductor with freezing, common.int8.CompiledInt8)
                    out["int8_latency"] = measure_latency(CompiledInt8(int8.info["reference"]), shape, "cpu",
                                                          warmup=2, repeats=cfg.latency_repeats)
                    out["int8_compiled"] = True
                except Exception as e:   # as above: say so, time the lowered graph instead
                    self.session.say(f"  torch.compile of the int8 model failed ({type(e).__name__}: "
                                     f"{str(e)[:80]}); its latency is the lowered graph's")
            if not out["int8_compiled"]:
                out["int8_latency"] = measure_latency(int8.info["profile_graph"], shape, "cpu", warmup=2,
                                                      repeats=cfg.latency_repeats)
            out["int8_bytes"] = int8_weight_bytes(int8.model)
        return out


INT8_COMPILED = "compiled (Inductor with freezing: dequantize/quantize fused into the oneDNN int8 kernels)"


def check_eval_size(images: list[Path], side: int) -> None:
    """Every validation image must fit the padded evaluation square: checked from the file headers, before any
    training, so that a too small --eval-size does not stop the run at its first evaluation."""
    largest = max((max(Image.open(path).size) for path in images), default=0)
    if largest > side:
        raise UserError(f"--eval-size {side}: the largest validation image has a side of {largest} pixels; use a "
                        f"multiple of 16 of at least that size (e.g. --eval-size {16 * math.ceil(largest / 16)}).")


# =============================================================================================== the table
def mean_of(values: list, part: slice) -> float:
    chunk = values[part]
    return float(np.mean(chunk)) if chunk else math.nan


def miou_cell(trained: Trained) -> str:
    return f"{100 * trained.metrics['miou']:.1f}" + (" (diverged)" if trained.diverged else "")


def findings(cfg: Config, teacher: Trained, pretrained: Trained, rows: dict, checks: list[Check]) -> list[str]:
    """What we find, next to what the report says (Section 4): measured by this run, computed here."""
    pre = pretrained.train_loss
    window = max(1, min(10, len(pre) // 5))
    alone = rows["alone"]
    lines = [f"Figure 1 (ours): the pre-training loss fell from {mean_of(pre, slice(0, window)):.2f} (first "
             f"{window} iterations) to {mean_of(pre, slice(-window, None)):.2f} (last {window}); continued alone for "
             f"{len(alone.train_loss)} more iterations it ended at "
             f"{mean_of(alone.train_loss, slice(-window, None)):.2f}"
             f" (per-pixel mean cross-entropy; the report's 'saturates at 50' has an unstated reduction: a sum over "
             f"16 near-uniform pixels, 16 ln 21 = 48.7, would read about 50). The continuation goes on with the "
             f"pre-training's Adam and plateau-scheduler state."]
    gains = ", ".join(f"{name} {100 * (rows[name].metrics['miou'] - alone.metrics['miou']):+.1f}"
                      for name in KD_ROWS)
    lines.append(f"Figure 2 (ours): distillation against continuing alone for the same iterations, mIoU points: "
                 f"{gains} (the report: 'not working well'; single seed, see the README for run-to-run spread).")
    lines.append(f"teacher {100 * teacher.metrics['miou']:.1f} against the student alone "
                 f"{100 * alone.metrics['miou']:.1f} mIoU (checks.csv: {checks[0].value:+.1f} points, at least "
                 f"+5 needed).")
    if teacher.metrics["miou"] <= alone.metrics["miou"]:
        lines.append(f"the teacher scores below the student ({100 * teacher.metrics['miou']:.1f} against "
                     f"{100 * alone.metrics['miou']:.1f} mIoU): distilling from it can only pull the student towards "
                     f"worse predictions, so these rows say nothing about distillation from the report's pretrained "
                     f"teacher (--teacher-weights coco).")
    for bits in cfg.bits:
        q, r, k = (rows[f"{kind}{bits}"].metrics["miou"] for kind in QUANT_ROWS)
        lines.append(f"{precision(cfg, bits)}: against QAT without a teacher, the report's procedure (frozen "
                     f"teacher) {100 * (r - q):+.1f} and QKD {100 * (k - q):+.1f} mIoU; QKD against fp32 alone "
                     f"{100 * (k - alone.metrics['miou']):+.1f}.")
    if "int8" in rows:
        int8 = rows["int8"]
        lines.append(f"int8: {int8.metrics['int8_convolutions']} convolutions run as oneDNN int8 kernels; mIoU "
                     f"{100 * int8.metrics['fake_quant_miou']:.1f} fake-quantized (PT2E, before conversion) and "
                     f"{100 * int8.metrics['miou']:.1f} converted.")
    return lines


def quantizer_note(cfg: Config) -> str:
    """What the quantized rows' fake quantization is, under the table (Section 3.2, 'grouping of weights')."""
    if cfg.quantizer == "polino":
        return (f"quantization (Section 2.3: 'the quantization functions ... [9]', Polino et al. 2018): fake-quant of "
                f"the convolution weights only (activations float, as Polino et al.), per bucket of "
                f"{cfg.bucket_size} consecutive weights scaled by its min and max to 2^b levels (b = 2: 4 levels), "
                f"round to nearest, straight-through gradients; Section 3.2's 'grouping of weights' read as this "
                f"bucketing into 2^b levels.")
    return (f"quantization (--quantizer qkd, QKD [6]'s): fake-quant, weights per output channel, symmetric narrow "
            f"grid of 2^b - 1 levels (b = 2: 3 levels, ternary), every convolution's input per tensor with 2^b "
            f"levels, {cfg.ranges} ranges, straight-through gradients; Section 3.2's 'grouping of weights' read as "
            f"the rounding of weights onto these levels.")


def write_table(exp: Experiment, teacher: Trained, pretrained: Trained, rows: dict, costs: dict,
                checks: list[Check]) -> None:
    cfg = exp.cfg
    table = Table("Section 4: the U-Net student, distilled and quantized (VOC 2012 in the report)",
                  ["Model", "W/A bits", "mIoU (ours)", "pixel acc. (ours)", "val CE (ours)", "params",
                   "weights MB", "MAdds", "CPU latency ms (ours)", "the report says"])
    table.warnings = failed_lines(checks, TABLE)      # a teacher not above its student: said atop the table
    teacher_cost, student_cost = costs["teacher"], costs["student"]
    latency = {"fp32": f"{1000 * costs['student_latency']:.1f}" + ("" if costs["compiled"] else " (eager)"),
               "int8": f"{1000 * costs.get('int8_latency', math.nan):.1f}"
                       + ("" if costs.get("int8_compiled", True) else " (lowered, not compiled)")}
    student_macs = f"{student_cost['macs'] / 1e9:.2f}G"

    def add(trained: Trained, bits: str, params: int, size: int, macs: str, lat: str, says: str) -> None:
        m = trained.metrics
        table.add(trained.label, bits, miou_cell(trained), f"{100 * m['pixel_accuracy']:.1f}", f"{m['val_loss']:.3f}",
                  f"{params:,}", f"{size / 1e6:.2f}", macs, lat, says)
        exp.results.add(experiment="qkd", model=trained.label, params=params, macs=student_cost["macs"]
                        if trained is not teacher else teacher_cost["macs"], loss=round(m["val_loss"], 5),
                        iou=round(m["miou"], 5), iterations=len(trained.train_loss),
                        notes="; ".join(filter(None, [bits, "diverged" if trained.diverged else ""])))

    add(teacher, "32/32", teacher_cost["params"], 4 * teacher_cost["params"], f"{teacher_cost['macs'] / 1e9:.1f}G",
        f"{1000 * teacher_cost['latency_s']:.0f} (eager)", SOURCE_SAYS["teacher"])
    params = student_cost["params"]
    add(pretrained, "32/32", params, quantized_weight_bytes(pretrained.model), student_macs, latency["fp32"],
        "start of every row below")
    for name in ("alone", *KD_ROWS):
        add(rows[name], "32/32", params, quantized_weight_bytes(rows[name].model), student_macs, latency["fp32"],
            SOURCE_SAYS["alone" if name == "alone" else "kd"])
    for kind in QUANT_ROWS:
        for bits in cfg.bits:
            trained = rows[f"{kind}{bits}"]
            add(trained, bits_cell(cfg, bits), params, quantized_weight_bytes(trained.model), student_macs,
                "- (fake-quant runs in float)", SOURCE_SAYS[kind])
    if "int8" in rows:
        add(rows["int8"], "8/8", params, costs["int8_bytes"], student_macs, latency["int8"], SOURCE_SAYS["int8"])
    qkd_total = cfg.self_study + cfg.co_study + cfg.tutor
    table.notes = findings(cfg, teacher, pretrained, rows, checks) + [
        f"the report: statements only (Section 4, Figures 1-2), no mIoU; ours: {exp.data_name}, measured by this run, "
        f"100 x mIoU over 21 classes on whole validation images, single scale, final model, one seed.",
        f"teacher: {teacher.metrics['source']}.",
        f"students: Buda et al.'s U-Net (k={cfg.student_width}, bias-free convolutions, BatchNorm); Adam lr {cfg.lr}, "
        f"beta1 {cfg.beta1} (the report's 'momentum of 0.8'), ReduceLROnPlateau(min, factor 0.1, patience "
        f"{cfg.plateau_patience}) on the validation loss every {cfg.eval_every} iterations; batch {cfg.batch_size}, "
        f"crop {cfg.crop}, scale {tuple(cfg.scale)}, flip. Pre-trained {cfg.pretrain_iterations} iterations (the "
        f"report: 1000 epochs); every row below it continues from there: fp32 rows {cfg.iterations} iterations "
        f"(with the pre-training's Adam and scheduler state), the quantized rows {qkd_total} (fresh Adam; QKD: "
        f"self-studying {cfg.self_study}, co-studying {cfg.co_study}, tutoring {cfg.tutor}; phases from QKD [6], "
        f"not from the report)" + ("." if qkd_total == cfg.iterations else
                                   " -- NOT as long as the fp32 rows: compare them with care.") +
        f" fp32 rows: float32 weights, trained in {exp.float_rows_precision()}; quantized rows in float32 "
        f"(bf16 would move 8-bit weight levels by up to a step).",
        f"loss (Section 3.1): CE + {cfg.pixel_weight:g} T^2 KL(p_T || p_S) (pixel-wise) + {cfg.pair_weight:g} l_pa "
        f"(pair-wise), T = {cfg.T:g}; weights and T are Liu et al.'s, the report gives none. Pair-wise on the "
        f"teacher's DeepLab head (ASPP + 3x3 conv, 256 channels, stride 8) and the student's stride-8 decoder "
        f"(256 channels), {cfg.patch}x{cfg.patch} max-pooled nodes.",
        quantizer_note(cfg) + f" First and last layer at 8 bits; BatchNorm float. Co-studying trains the teacher's "
        f"{'head only' if cfg.co_study_teacher == 'head' else 'every layer'} (CE + T^2 KL(p_S || p_T)).",
        (f"int8: {rows['int8'].label.split(', from ')[1]} re-quantized with torchao's X86InductorQuantizer (uint8 "
         f"activations per tensor, int8 weights per channel), tutored {cfg.int8_iterations} iterations on the CPU, "
         f"converted (convert_pt2e, BatchNorm folded) and lowered (oneDNN); the score is the converted model's."
         if "int8" in rows else "int8: skipped (--no-int8)."),
        f"weights MB: float32 tensors 4 bytes, fake-quantized conv weights packed at their bit width (scales and BN "
        f"in float32); int8: the tensors the converted model holds. MAdds: ptflops at 1x3x{cfg.profile_size}x"
        f"{cfg.profile_size} (the same multiply-adds in int8). Latency: median of {cfg.latency_repeats} passes on the "
        f"CPU, {costs['threads']} threads, batch 1 at that size; fp32 "
        f"{'compiled with torch.compile' if costs['compiled'] else 'eager (--no-compile, or compilation failed)'}"
        f" (eager: {1000 * student_cost['latency_s']:.1f} ms), int8 "
        f"{INT8_COMPILED if costs.get('int8_compiled') else 'lowered to oneDNN, op by op'}"
        f", teacher eager."]
    table.write(exp.run.path, TABLE)
    print("\n" + table.markdown(), flush=True)


# =============================================================================================== figures
def loss_curve(trained: Trained) -> tuple[list, list]:
    return (list(range(trained.start_step + 1, trained.start_step + len(trained.train_loss) + 1)),
            running_mean(trained.train_loss))


def val_loss_curves(rows: dict, names: tuple | list) -> dict:
    """Validation cross-entropy during training: the one loss every row is measured by."""
    return {rows[n].label: ([rows[n].start_step + e["iteration"] for e in rows[n].evals],
                            [e["val_loss"] for e in rows[n].evals]) for n in names if rows[n].evals}


def quantizer_levels_text(cfg: Config) -> str:
    if cfg.quantizer == "polino":
        return f"Polino weights, 2^b levels per {cfg.bucket_size}; activations float"
    return "qkd quantizer: weights 2^b - 1 levels (2 bits: 3), activations 2^b"


def plot_figures(exp: Experiment, teacher: Trained, pretrained: Trained, rows: dict) -> None:
    cfg, figures = exp.cfg, exp.run.figures
    plot_curves(figures / "figure1_student_loss.png",
                {"pre-training alone ('1000 epochs')": loss_curve(pretrained),
                 "continued alone ('20 more epochs'; its Adam and scheduler state go on)": loss_curve(rows["alone"])},
                "Figure 1 (ours): the U-Net from scratch", ylabel="cross-entropy (running mean of 10)")
    objectives = {"alone": "CE", "pixel": f"CE + {cfg.pixel_weight:g} T^2 KL",
                  "pair": f"CE + {cfg.pair_weight:g} l_pa",
                  "both": f"CE + {cfg.pixel_weight:g} T^2 KL + {cfg.pair_weight:g} l_pa"}
    plot_curve_panels(figures / "figure2_distillation_loss.png",
                      [(f"{rows[name].label}\n(objective: {objectives[name]})", loss_curve(rows[name]))
                       for name in ("alone", *KD_ROWS)],
                      "Figure 2 (ours): distillation from the pretrained student -- each panel its own objective "
                      "and y scale; the last, validation CE, is comparable", val_loss_curves(rows, ("alone", *KD_ROWS)))
    quant = [f"{kind}{bits}" for bits in cfg.bits for kind in QUANT_ROWS]
    plot_curve_panels(figures / "qkd_training_loss.png",
                      [(rows[name].label, loss_curve(rows[name])) for name in quant],
                      f"QAT (CE), Section 3.2 (CE + KD) and QKD (phases {cfg.self_study} / {cfg.co_study} / "
                      f"{cfg.tutor}, objective changing between them): own y scales", val_loss_curves(rows, quant))
    trained_rows = [pretrained] + [r for k, r in rows.items() if k != "int8"]
    plot_curves(figures / "val_miou.png",
                {r.label: ([r.start_step + e["iteration"] for e in r.evals], [100 * e["miou"] for e in r.evals])
                 for r in trained_rows if r.evals}, "Validation mIoU during training", ylabel="mIoU %", marker="o")
    if len(cfg.bits) > 1:
        bits = sorted(cfg.bits)
        names = {"qat": "QAT, no teacher", "report": "Section 3.2 (frozen teacher)", "qkd": "QKD"}
        plot_curves(figures / "bits_sweep.png",
                    {names[kind]: (bits, [100 * rows[f"{kind}{b}"].metrics["miou"] for b in bits])
                     for kind in QUANT_ROWS},
                    f"mIoU against bit width ({quantizer_levels_text(cfg)})",
                    xlabel="bits", ylabel="mIoU %", marker="o",
                    hline=(100 * rows["alone"].metrics["miou"], "fp32, alone"))
    shown = [("teacher", teacher.model), ("fp32 alone", rows["alone"].model), ("fp32 + both", rows["both"].model)]
    shown += [(f"QKD W{b} ({weight_levels(b, cfg.quantizer)} lev.)", rows[f"qkd{b}"].model) for b in cfg.bits]
    shown += [("int8", rows["int8"].model)] if "int8" in rows else []
    samples = [exp.val_set[i] for i in range(min(cfg.panel_images, len(exp.val_set)))]
    plot_panel(figures / "predictions.png",
               [[("image", image.permute(1, 2, 0).numpy()), ("ground truth", colorize(mask))]
                + [(name, colorize(predict_segmentation(model, image, pad_to=exp.eval_side))) for name, model in shown]
                for image, mask in samples],
               "Validation predictions")


# =============================================================================================== command line
def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description="Reproduce Palchuri & Chakraborty, 'Compression techniques for Semantic Segmentation': a U-Net "
                    "student distilled from DeepLabV3-ResNet101 (pixel-wise and pair-wise, Section 3.1), "
                    "quantization-aware distillation (Section 3.2 as written, and QKD [6]) with Polino et al.'s "
                    "quantizer (Section 2.3) at several bit widths, and a real int8 model. "
                    "Without --data-root it runs on built-in synthetic scenes; everything goes to a run folder.",
        epilog="examples:\n  python reproduce_qkd.py                                   # reduced, CPU, ~8-14 min\n"
               "  python reproduce_qkd.py --bits 8,4,2 --quantizer qkd --ranges tracked\n"
               "  python reproduce_qkd.py --preset paper --data-root data --teacher-weights coco\n"
               "  python reproduce_qkd.py --resume runs/reproduce_qkd/20261121-120000",
        formatter_class=help_formatter(Config, PRESETS))   # appends "(default X; paper preset Y)" to each setting
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="default (the default): reduced, for a CPU; paper: the report's scale")
    r = p.add_argument_group("the report's recipe (Section 4)")
    r.add_argument("--lr", type=float, metavar="LR", help="Adam learning rate, the report's")
    r.add_argument("--beta1", type=float, metavar="B", help="Adam's beta1, the report's 'momentum', in [0, 1)")
    r.add_argument("--batch-size", type=int, metavar="N", help="images per batch")
    r.add_argument("--pretrain-iterations", type=int, metavar="N",
                   help="the student's training alone before any compression: the report's '1000 epochs'")
    r.add_argument("--iterations", type=int, metavar="N",
                   help="iterations of each fp32 row after pre-training: the report's '20 more epochs'")
    r.add_argument("--eval-every", type=int, metavar="N", help="iterations between validations and plateau checks")
    r.add_argument("--plateau-patience", type=int, metavar="N",
                   help="validations without improvement before the rate drops 10x")
    d = p.add_argument_group("distillation (Section 3.1)")
    d.add_argument("--T", type=float, help="temperature of the pixel-wise term")
    d.add_argument("--pixel-weight", type=float, metavar="W", help="weight of the pixel-wise KL")
    d.add_argument("--pair-weight", type=float, metavar="W", help="weight of the pair-wise term")
    d.add_argument("--patch", type=int, metavar="P", help="pair-wise node size, P x P pixels")
    q = p.add_argument_group("quantization-aware distillation (Section 3.2)")
    q.add_argument("--bits", metavar="LIST",
                   help="bit widths, comma-separated, each in 2..8: b bits give 2^b weight levels per bucket with "
                        "--quantizer polino (activations float), 2^b - 1 with qkd (2 bits: 3 levels, ternary; "
                        "activations 2^b)")
    q.add_argument("--quantizer", choices=["polino", "qkd"],
                   help="polino: Polino et al.'s weights-only min-max quantizer in buckets, 2^b levels (Section "
                        "2.3's [9], the report's); qkd: weights (2^b - 1 levels) and activations, --ranges")
    q.add_argument("--bucket-size", type=int, metavar="K",
                   help="--quantizer polino: consecutive weights sharing one min/max scaling (Polino et al.'s 256)")
    q.add_argument("--ranges", choices=["learned", "tracked"],
                   help="--quantizer qkd: learned clipping ranges (QKD's) or moving min/max ranges")
    q.add_argument("--self-study", type=int, metavar="N", help="QKD self-studying iterations (0 skips it)")
    q.add_argument("--co-study", type=int, metavar="N", help="QKD co-studying iterations (0 skips it)")
    q.add_argument("--tutor", type=int, metavar="N",
                   help="QKD tutoring iterations (0 skips it); the three sum to the QAT and Section 3.2 rows' length")
    q.add_argument("--co-study-teacher", choices=["head", "all"], help="what of the teacher co-studying trains")
    q.add_argument("--int8-iterations", type=int, metavar="N",
                   help="tutoring under the int8 backend's quantizer before conversion")
    t = p.add_argument_group("the teacher (the report's: DeepLabV3-ResNet101)")
    t.add_argument("--teacher-arch", choices=TEACHER_ARCHS,
                   help="the teacher network: the report's deeplabv3_resnet101 (also whenever --teacher-weights or "
                        "--teacher-checkpoint is given), or the ResNet-50 one, which a run trains from scratch in "
                        "CPU minutes (see the docstring)")
    t.add_argument("--teacher-weights", choices=["coco"],
                   help="coco: torchvision's pretrained weights (COCO with the VOC classes), the report's teacher "
                        "(default: train one here, or reuse the cached one)")
    t.add_argument("--teacher-checkpoint", metavar="FILE",
                   help="deeplabv3_resnet101 weights (or --teacher-arch's): a file this script cached, or a "
                        "torchvision state dict "
                        "(default: train one here, or reuse the cached one)")
    t.add_argument("--teacher-iterations", type=int, metavar="N",
                   help="iterations of a teacher trained here, without the two flags above")
    t.add_argument("--teacher-lr", type=float, metavar="LR", help="Adam rate of a teacher trained here (poly)")
    g = p.add_argument_group("data")
    g.add_argument("--data-root", metavar="FOLDER",
                   help="folder holding VOCdevkit/VOC2012 (or VOCdevkit/, or VOC2012/); default: synthetic scenes")
    g.add_argument("--train-images", type=int, metavar="N", help="synthetic training scenes")
    g.add_argument("--val-images", type=int, metavar="N", help="synthetic validation scenes")
    g.add_argument("--image-size", type=int, metavar="PIXELS", help="synthetic scene side")
    g.add_argument("--crop", type=int, metavar="PIXELS", help="training crop side, a multiple of 16")
    g.add_argument("--eval-size", type=int, metavar="PIXELS",
                   help="VOC (--data-root): validation images are padded to this square, a multiple of 16")
    g.add_argument("--profile-size", type=int, metavar="PIXELS",
                   help="image side of the params/MAdds/latency columns, a multiple of 16")
    c = p.add_argument_group("costs and rows")
    c.add_argument("--no-int8", dest="int8", action="store_const", const=False,
                   help="skip the int8 row (it needs an x86 CPU and torchao)")
    c.add_argument("--no-compile", dest="compile", action="store_const", const=False,
                   help="time the fp32 student eager and the int8 one as a lowered graph, not compiled (saves "
                        "about 45 s of torch.compile)")
    add_run_arguments(p, "reproduce_qkd",
                      device_help="auto, cpu or cuda (auto takes the GPU when there is one); the int8 model always "
                                  "runs on the CPU")
    args = p.parse_args(argv)
    parsed = {"bits": parse_bits(args.bits)} if args.bits is not None else {}
    if args.teacher_arch is None and (args.teacher_weights or args.teacher_checkpoint):
        parsed["teacher_arch"] = TEACHER_ARCH    # given weights are the report's teacher; the ResNet-50 is a stand-in
    return config_from_args(args, Config, PRESETS, **parsed), args


def parse_bits(text: str) -> tuple:
    try:
        bits = tuple(dict.fromkeys(int(b) for b in text.split(",") if b.strip()))
    except ValueError:
        raise UserError(f"--bits {text!r}: give whole numbers, comma-separated, e.g. --bits 8,4") from None
    bad = [b for b in bits if not 2 <= b <= 8]
    if bad or not bits:
        raise UserError(f"--bits {text!r}: each bit width must lie in 2..8 (fake quantization below 2 bits has no "
                        f"zero level, above 8 it is no longer low-precision); e.g. --bits 8,4,2.")
    return bits


def check_config(cfg: Config, args: argparse.Namespace) -> None:
    """Impossible settings are user errors, reported before any work starts. ``args`` are the flags as given (None:
    not given), to tell a flag the user set from a default."""
    check_flags({"--pretrain-iterations": cfg.pretrain_iterations, "--iterations": cfg.iterations,
                 "--eval-every": cfg.eval_every, "--int8-iterations": cfg.int8_iterations,
                 "--val-images": cfg.val_images, "--teacher-iterations": cfg.teacher_iterations, "--patch": cfg.patch,
                 "--bucket-size": cfg.bucket_size}, "must be >= 1", lambda v: v >= 1)
    check_flags({"--plateau-patience": cfg.plateau_patience, "--self-study": cfg.self_study,
                 "--co-study": cfg.co_study, "--tutor": cfg.tutor}, "must be >= 0", lambda v: v >= 0)
    if cfg.self_study + cfg.co_study + cfg.tutor < 1:
        raise UserError("--self-study, --co-study and --tutor are all 0: the quantized rows would not train; give "
                        "one of them (e.g. --tutor 60) at least 1 iteration.")
    check_flags({"--batch-size": cfg.batch_size}, "must be >= 2 (BatchNorm needs two images per batch to train)",
                lambda v: v >= 2)
    check_flags({"--lr": cfg.lr, "--teacher-lr": cfg.teacher_lr, "--T": cfg.T}, "must be positive",
                lambda v: 0 < v < math.inf)   # NaN fails too
    check_flags({"--beta1": cfg.beta1}, "must lie in [0, 1) (Adam's first-moment coefficient)", lambda v: 0 <= v < 1)
    check_flags({"--pixel-weight": cfg.pixel_weight, "--pair-weight": cfg.pair_weight},
                "must be non-negative (0 leaves the term out)", lambda v: 0 <= v < math.inf)
    check_flags({"--crop": cfg.crop, "--eval-size": cfg.eval_size, "--profile-size": cfg.profile_size},
                "must be one of the positive multiples of 16 (the U-Net pools four times)",
                lambda v: v >= 16 and v % 16 == 0)
    check_flags({"--image-size": cfg.image_size}, "must be >= 16", lambda v: v >= 16)
    if not cfg.data_root:   # VOC's size is known only once it is read
        check_flags({"--train-images": cfg.train_images}, f"must hold at least one batch (--batch-size "
                    f"{cfg.batch_size})", lambda v: v >= cfg.batch_size)
    check_run_options(cfg)   # --seed, --workers, --checkpoint-every
    if args.eval_size is not None and not cfg.data_root:   # the synthetic scenes are evaluated at their own size
        raise UserError("--eval-size pads VOC's validation images, and without --data-root none are read: drop it, "
                        "or give --data-root.")
    if cfg.teacher_weights and cfg.teacher_checkpoint:
        raise UserError("--teacher-weights coco and --teacher-checkpoint FILE both name the teacher: give one.")
    if cfg.data_root:   # sizes of the synthetic data, which the real data set replaces
        refuse_ignored(args, {"--train-images": "train_images", "--val-images": "val_images",
                              "--image-size": "image_size"},
                       "sizes the synthetic data, which --data-root replaces: drop it.")
    if cfg.teacher_weights or cfg.teacher_checkpoint:   # a given teacher is not trained here
        refuse_ignored(args, {"--teacher-iterations": "teacher_iterations", "--teacher-lr": "teacher_lr"},
                       "sets how a teacher is trained here, and --teacher-weights/--teacher-checkpoint give a "
                       "trained one: drop it.")
    if cfg.quantizer == "polino":
        refuse_ignored(args, {"--ranges": "ranges"}, "sets the qkd quantizer's ranges, and --quantizer polino scales "
                       "each bucket by its min and max: drop it, or give --quantizer qkd.")
    else:
        refuse_ignored(args, {"--bucket-size": "bucket_size"}, "sizes Polino et al.'s buckets, and --quantizer qkd "
                       "has none: drop it, or give --quantizer polino.")
    if not cfg.int8:
        refuse_ignored(args, {"--int8-iterations": "int8_iterations"},
                       "sets the int8 row's training, and --no-int8 skips that row: drop one of them.")
    for name in ("data_root", "teacher_checkpoint"):
        value = getattr(cfg, name)
        if value and not Path(value).exists():
            raise UserError(f"--{name.replace('_', '-')} {value}: no such file or folder.")
    if cfg.int8:
        check_int8_support()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("this script trains on one device (a U-Net student; the int8 path is a CPU one); run it "
                        "with python, not torchrun.")
    if cfg.preset == "paper" and not cfg.data_root:
        print("note: --preset paper without --data-root: the report's hyper-parameters on the built-in synthetic "
              "21-class scenes (no VOC data is read).")


def check_int8_support() -> None:
    """The int8 row runs torchao's x86 quantizer and oneDNN's x86 int8 kernels: say so before training, not after."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        raise UserError(f"the int8 row needs an x86 CPU (oneDNN's int8 kernels); this machine is {machine}. Pass "
                        f"--no-int8 to run every other row.")
    if importlib.util.find_spec("torchao") is None:
        raise UserError("the int8 row needs torchao (pip install -r requirements.txt); or pass --no-int8.")


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    cfg, run = resume_or_check(args, cfg, Config, check_config)
    device = pick_device(cfg.device)
    experiment = Experiment(cfg, device)          # missing data or a wrong teacher file stop us here
    with run_folder(run, "reproduce_qkd", cfg) as run:
        experiment.run_all(run)


if __name__ == "__main__":
    run_main(main)
