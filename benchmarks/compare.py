#!/usr/bin/env python
"""Side by side, in one process: our models against the implementations users would pick instead, our training
step in each precision and memory format, and what this machine can attain.

Every candidate is timed interleaved with the others of its table (round r times candidate 1, 2, 3, ... once each),
so that a machine that speeds up or slows down during the run moves every candidate alike; a figure is the median
over the rounds. Speeds are measurements, not tests: run this alone on the machine.

What is compared (training step = forward, cross-entropy, backward, SGD with momentum; batch 2 x 3 x 256 x 256 by
default, the thesis's crop, source 004 Section 4.1.1):

- attainable: a large 3x3 convolution (forward + backward), the machine's attainable multiply-adds per second in
  fp32 and in bf16, in both memory formats (the best of each precision is its "attainable").
- DeepLabV3+ ResNet-50 OS16 (common/deeplab.py; ST and DS ASPP) against segmentation-models-pytorch's
  ``DeepLabV3Plus`` (ResNet-50 encoder, no pretrained weights) as its users run it (fp32, eager, contiguous), with
  its defaults (separable ASPP, rates 12/24/36) and configured as our ST row (standard convolutions, rates 6/12/18).
- FCN and DeepLabV3 on ResNet-50 / 101 (common/segmentation_models.py) against torchvision's own models.
- Each of ours in fp32, bf16 autocast (where the CPU computes bf16 natively, or any GPU), channels-last, and both.
- small: the scripts' small networks (source 000's U-Nets, reproduce_qkd.py's U-Net, ERFNet) at their default
  presets' batch and crop, in the same four forms.
- distillation, for every script at its default preset's shapes (DeepLabV3+ at the size above): the student's plain
  step, the frozen teacher's forward pass (no_grad) and the student's distillation step with that forward inside,
  in the scripts' precision (bf16 where native): the budget is plain + teacher forward + 10%.
- int8 (x86 CPUs): reproduce_qkd.py's U-Net student at batch 1, fp32 eager and compiled (torch.compile) against
  its int8 model (common/int8.py) lowered to oneDNN and compiled by Inductor with freezing (``CompiledInt8``).

MAC/s: 3 x the forward pass's multiply-adds (forward, gradient of the input, gradient of the weights) per second,
forward MACs counted by ptflops (common/profiler.py, source 004's convention). "of attainable" divides by the
attainable rate of the precision the step runs in.

    pip install -r benchmarks/requirements.txt      # segmentation-models-pytorch, for the comparison only
    python benchmarks/compare.py                    # everything (about 10 minutes on a 2-core CPU)
    python benchmarks/compare.py --only deeplab --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))   # the per-script benchmarks' steps
from common.deeplab import DeepLabV3Plus  # noqa: E402
from common.devices import cpu_supports_bf16, pick_device  # noqa: E402
from common.errors import check_flags, exit_on_user_error  # noqa: E402
from common.profiler import count_macs  # noqa: E402
from common.segmentation_models import ARCHITECTURES, TorchvisionSegmenter  # noqa: E402
from timing import apply_run_options, check_batch, device_name  # noqa: E402

NUM_CLASSES = 21
TABLES = ("attainable", "deeplab", "distill", "torchvision", "small", "int8")


# ----------------------------------------------------------------------------------------------- one candidate
@dataclass
class Candidate:
    label: str
    step: Callable[[], None]
    precision: str          # "fp32" or "bf16"/"fp16": the attainable rate it is measured against
    macs: int | None        # multiply-adds of one call (None: not counted)
    seconds: list[float]


def precision_context(device: torch.device, precision: str):
    """fp32: nothing; bf16 / fp16: autocast on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def low_precision(device: torch.device) -> str | None:
    """The reduced precision this device computes natively (None: none, e.g. a CPU without AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else None


def train_step(model: nn.Module, shape: tuple[int, int, int, int], device: torch.device, precision: str,
               channels_last: bool, logits_of: Callable = lambda out: out, classes: int = NUM_CLASSES,
               fused: bool = False) -> Callable[[], None]:
    """One SGD step of ``model`` on a random batch of ``shape`` (N, C, H, W) with labels of ``classes`` classes;
    ``logits_of`` picks the logits from the model's output. ``fused``: SGD as the scripts build it (one kernel for
    all parameters); False: torch.optim.SGD's defaults, as a peer library's users build it."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    x = torch.randn(*shape, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, classes, (shape[0], *shape[2:]), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4,
                                fused=True if fused else None)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    def step() -> None:
        with precision_context(device, precision):
            loss = F.cross_entropy(logits_of(model(x)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def inference_step(model: nn.Module, batch: int, size: int, device: torch.device, precision: str,
                   channels_last: bool) -> Callable[[], None]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)

    def step() -> None:
        with torch.inference_mode(), precision_context(device, precision):
            model(x)
    return step


def interleaved(candidates: list[Candidate], device: torch.device, warmup: int, repeats: int,
                settle: int = 0) -> None:
    """Fill each candidate's ``seconds``: ``warmup`` untimed calls each, then ``repeats`` rounds; in a round each
    candidate makes ``settle`` untimed calls right before its one timed call. With ``settle`` a small network is timed
    as a training run's consecutive steps run it: timed straight after the other candidates' steps (a 64-UNet's, an
    ERFNet's), the 2-UNet's step took 34-45 ms against 11 ms in consecutive steps (2-core AMD EPYC, 2026-12-07)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for c in candidates:
        for _ in range(warmup):
            c.step()
    for _ in range(repeats):
        for c in candidates:
            for _ in range(settle):
                c.step()
            sync()
            start = time.perf_counter()
            c.step()
            sync()
            c.seconds.append(time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- the tables
def attainable_candidates(device: torch.device, precisions: list[str], size: int) -> list[Candidate]:
    """A 256 -> 256 channel 3x3 convolution on 8 x 256 x ``size/4`` x ``size/4`` (a ResNet stage-3-sized map),
    forward and backward: large enough that the library runs it at the machine's attainable rate."""
    side = max(size // 4, 16)
    conv_macs = 8 * side * side * 256 * 256 * 9
    out = []
    for precision in precisions:
        for channels_last in (False, True):
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device, memory_format=memory_format)
            x = torch.randn(8, 256, side, side, device=device, requires_grad=True)
            x = x.detach().contiguous(memory_format=memory_format).requires_grad_()

            def step(conv=conv, x=x, precision=precision) -> None:
                with precision_context(device, precision):
                    y = conv(x)
                y.float().sum().backward()
            fmt = "channels-last" if channels_last else "contiguous"
            out.append(Candidate(f"conv 3x3 256->256, {precision}, {fmt}", step, precision, 3 * conv_macs, []))
    return out


def our_variants(label: str, build: Callable[[], nn.Module], macs: int, args, device: torch.device,
                 precisions: list[str], logits_of: Callable = lambda out: out) -> list[Candidate]:
    """Our model in every precision x memory format this device offers."""
    out = []
    for precision in precisions:
        for channels_last in (False, True):
            fmt = ", channels-last" if channels_last else ""
            step = train_step(build(), square(args), device, precision, channels_last, logits_of, fused=True)
            out.append(Candidate(f"{label}, ours, {precision}{fmt}", step, precision, 3 * macs * args.batch_size, []))
    return out


def square(args) -> tuple[int, int, int, int]:
    """The benchmark's batch: ``args.batch_size`` RGB images of ``args.size`` squared."""
    return args.batch_size, 3, args.size, args.size


def forward_macs(model: nn.Module, size: int | tuple[int, int, int]) -> int:
    """Multiply-adds of one forward pass on one image of ``size`` (side of an RGB square, or (C, H, W))."""
    return count_macs(model.cpu(), (1, *size) if isinstance(size, tuple) else (1, 3, size, size))


def small_candidates(device: torch.device, precisions: list[str]) -> list[Candidate]:
    """The scripts' own small students (and source 000's teacher) at their default presets' batch and crop, in
    every precision x memory format: where channels-last and bf16 pay for a small network on small crops."""
    from common.erfnet import ERFNet
    from common.unet import UNet
    from reproduce_intra_kd import Config as IntraConfig
    from reproduce_qkd import Config as QkdConfig
    from reproduce_unet_kd import Config as UNetConfig
    from common.synthetic_roads import SyntheticRoads

    unet, qkd, intra = UNetConfig(), QkdConfig(), IntraConfig()
    models = {   # label: (build, (N, C, H, W), classes)
        f"{unet.k}-UNet (reproduce_unet_kd.py)": (lambda: UNet(unet.k, batch_norm=True),
                                                  (unet.batch_size, 1, unet.crop, unet.crop), 2),
        f"{unet.teacher}-UNet teacher (reproduce_unet_kd.py)": (lambda: UNet(unet.teacher,
                                                                             batch_norm=unet.teacher_bn),
                                                                (unet.batch_size, 1, unet.crop, unet.crop), 2),
        f"U-Net k={qkd.student_width} (reproduce_qkd.py)": (
            lambda: UNet(k=qkd.student_width, in_channels=3, num_classes=NUM_CLASSES, batch_norm=True,
                         conv_bias=False), (qkd.batch_size, 3, qkd.crop, qkd.crop), NUM_CLASSES),
        "ERFNet (reproduce_intra_kd.py)": (lambda: ERFNet(SyntheticRoads.num_classes),
                                           (intra.batch_size, 3, intra.height, intra.width),
                                           SyntheticRoads.num_classes)}
    out = []
    for label, (build, shape, classes) in models.items():
        macs = forward_macs(build(), tuple(shape[1:]))
        for precision in precisions:
            for channels_last in (False, True):
                fmt = ", channels-last" if channels_last else ""
                step = train_step(build(), shape, device, precision, channels_last, classes=classes)
                out.append(Candidate(f"{label}, {precision}{fmt}", step, precision, 3 * macs * shape[0], []))
    return out


def deeplab_candidates(args, device: torch.device, precisions: list[str]
                       ) -> tuple[list[Candidate], list[Candidate]]:
    """(training steps, inference steps)."""
    import segmentation_models_pytorch as smp   # benchmarks/requirements.txt

    out = []
    for aspp in ("ST", "DS"):
        def build(aspp=aspp) -> nn.Module:
            return DeepLabV3Plus("resnet50", NUM_CLASSES, 16, aspp)
        out += our_variants(f"DeepLabV3+ R50 OS16 {aspp}", build, forward_macs(build(), args.size), args, device,
                            precisions)
    # What the scripts' fused SGD is worth: our fastest ST form with torch.optim.SGD's defaults, as the peers run.
    best = precisions[-1]
    step = train_step(DeepLabV3Plus("resnet50", NUM_CLASSES, 16, "ST"), square(args), device, best, True)
    out.append(Candidate(f"DeepLabV3+ R50 OS16 ST, ours, {best}, channels-last, SGD unfused (as the peers)", step,
                         best, out[0].macs, []))
    peers = {"smp DeepLabV3Plus R50 (its defaults: separable ASPP, rates 12/24/36)": {},
             "smp DeepLabV3Plus R50 (as our ST: standard ASPP, rates 6/12/18)":
                 dict(decoder_aspp_separable=False, decoder_atrous_rates=(6, 12, 18))}
    for label, options in peers.items():
        def build_peer(options=options) -> nn.Module:
            return smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=NUM_CLASSES, **options)
        macs = forward_macs(build_peer(), args.size)
        step = train_step(build_peer(), square(args), device, "fp32", False)
        out.append(Candidate(f"{label}, fp32", step, "fp32", 3 * macs * args.batch_size, []))
    inference = []
    for precision in precisions:
        for channels_last in (False, True):
            fmt = ", channels-last" if channels_last else ""
            step = inference_step(DeepLabV3Plus("resnet50", NUM_CLASSES, 16, "ST"), args.batch_size, args.size,
                                  device, precision, channels_last)
            inference.append(Candidate(f"DeepLabV3+ R50 OS16 ST inference, ours, {precision}{fmt}", step, precision,
                                       None, []))
    step = inference_step(smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=NUM_CLASSES), args.batch_size,
                          args.size, device, "fp32", False)
    inference.append(Candidate("smp DeepLabV3Plus R50 inference (its defaults), fp32", step, "fp32", None, []))
    return out, inference


def torchvision_candidates(args, device: torch.device, precisions: list[str]) -> list[Candidate]:
    """Ours (common/segmentation_models.py wraps torchvision's networks; the difference is how we run them) against
    torchvision's model run as its reference scripts' users do (fp32, contiguous)."""
    builders = {"fcn_resnet50": torchvision.models.segmentation.fcn_resnet50,
                "fcn_resnet101": torchvision.models.segmentation.fcn_resnet101,
                "deeplabv3_resnet50": torchvision.models.segmentation.deeplabv3_resnet50,
                "deeplabv3_resnet101": torchvision.models.segmentation.deeplabv3_resnet101}
    out = []
    for arch in args.archs:
        def build(arch=arch) -> nn.Module:
            return TorchvisionSegmenter(arch, NUM_CLASSES)
        macs = forward_macs(build(), args.size)
        ours = our_variants(arch, build, macs, args, device, precisions)
        peer = builders[arch](weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)
        step = train_step(peer, square(args), device, "fp32", False, logits_of=lambda out: out["out"])
        out += [*ours, Candidate(f"{arch}, torchvision, fp32", step, "fp32", 3 * macs * args.batch_size, [])]
    return out


def distill_groups(args, device: torch.device, precision: str) -> dict[str, list[Candidate]]:
    """Per script, in the script's precision: the plain student step, the frozen teacher's forward pass as the
    script computes it (no_grad, eval mode) and the student's distillation step(s) with that forward inside, each
    with the script's objective and optimizer (the per-script benchmarks' ``make_step``). The scripts themselves
    compute the teacher's outputs once per batch and share or memoise them, so this is a distillation step's worst
    case. Shapes: the default presets' batch and crop, DeepLabV3+ at ``args.size`` (the thesis's 256 px)."""
    amp = precision != "fp32"
    return {"reproduce_unet_kd.py": unet_budget(device, amp, precision),
            "reproduce_fcn_kd.py (experiment B)": fcn_budget(device, amp, precision),
            "reproduce_deeplab_caspp.py (Table 5.2)": deeplab_budget(args, device, amp, precision),
            "reproduce_qkd.py": qkd_budget(device, amp, precision),
            "reproduce_intra_kd.py": intra_budget(device, amp, precision)}


def frozen_forward(teacher: nn.Module, x: torch.Tensor, amp: bool, **call) -> Callable[[], None]:
    """A frozen teacher's forward pass as the scripts run it: no_grad, bf16 where native when ``amp``; ``call``:
    keyword arguments of the call (e.g. ``return_features=True``)."""
    from common.devices import autocast

    def step() -> None:
        with torch.no_grad(), autocast(x.device, amp, cpu_bf16=True):
            teacher(x, **call)
    return step


def unet_budget(device: torch.device, amp: bool, precision: str) -> list[Candidate]:
    """Source 000: the 2-UNet student's hard and soft steps, the 64-UNet teacher's forward (channels-last, as the
    script holds them; the script itself computes the teacher's logits once per training slice)."""
    from common.teachers import freeze
    from common.unet import UNet
    from unet_kd_throughput import DEFAULTS, make_step

    x = torch.randn(DEFAULTS.batch_size, 1, DEFAULTS.crop, DEFAULTS.crop, device=device)
    y = torch.randint(0, 2, (DEFAULTS.batch_size, DEFAULTS.crop, DEFAULTS.crop), device=device)
    new = lambda k, bn: UNet(k, batch_norm=bn).to(device, memory_format=torch.channels_last)  # noqa: E731
    teacher = freeze(new(DEFAULTS.teacher, DEFAULTS.teacher_bn))
    return [Candidate("2-UNet, plain (hard) step", make_step(new(DEFAULTS.k, True), x, y, device, amp,
                                                             cpu_bf16=True), precision, None, []),
            Candidate("64-UNet teacher, forward", frozen_forward(teacher, x, amp), precision, None, []),
            Candidate("2-UNet, soft step (teacher forward inside)",
                      make_step(new(DEFAULTS.k, True), x, y, device, amp, teacher=teacher, cpu_bf16=True),
                      precision, None, [])]


def fcn_budget(device: torch.device, amp: bool, precision: str) -> list[Candidate]:
    """Source 001, experiment B: FCN-ResNet50 with the default preset's fixed backbone, FCN-ResNet101 teacher."""
    from common.segmentation_models import build_segmenter
    from common.teachers import freeze
    from fcn_kd_throughput import DEFAULT, make_step
    from reproduce_fcn_kd import student_optimizer

    x = torch.randn(DEFAULT.batch_size, 3, DEFAULT.crop, DEFAULT.crop, device=device)
    y = torch.randint(0, NUM_CLASSES, (DEFAULT.batch_size, DEFAULT.crop, DEFAULT.crop), device=device)
    teacher = freeze(build_segmenter("fcn_resnet101", NUM_CLASSES).to(device))

    def student_step(with_teacher: bool) -> Callable[[], None]:
        student = build_segmenter("fcn_resnet50", NUM_CLASSES).to(device)
        return make_step(student, student_optimizer(student, DEFAULT), x, y, device, amp,
                         teacher if with_teacher else None, cpu_bf16=True)
    return [Candidate("FCN-ResNet50, plain step", student_step(False), precision, None, []),
            Candidate("FCN-ResNet101 teacher, forward", frozen_forward(teacher, x, amp), precision, None, []),
            Candidate("FCN-ResNet50, KD step (teacher forward inside)", student_step(True), precision, None, [])]


def deeplab_budget(args, device: torch.device, amp: bool, precision: str) -> list[Candidate]:
    """Source 004, Table 5.2: an R50 OS16 DS student, the R50 OS16 KSAC ST teacher, KD (Eq. 4.6) and AT on all
    layers (Eq. 4.9)."""
    from deeplab_throughput import make_step
    from reproduce_deeplab_caspp import TEACHER, Row, build
    from common.teachers import freeze

    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size, args.size, args.size), device=device)
    teacher = freeze(build(TEACHER).to(device))
    student = Row("resnet50", 16, "DS", False)
    steps = [Candidate(f"{student.label} student, plain step", make_step(build(student).to(device), x, y, device,
                                                                       amp, cpu_bf16=True), precision, None, []),
             Candidate(f"{TEACHER.label} teacher, forward", frozen_forward(teacher, x, amp, return_features=True),
                       precision, None, [])]
    for method in ("kd", "at-all"):
        step = make_step(build(student).to(device), x, y, device, amp, method, teacher, cpu_bf16=True)
        steps.append(Candidate(f"{student.label} student, {method} step (teacher forward inside)", step, precision,
                               None, []))
    return steps


def qkd_budget(device: torch.device, amp: bool, precision: str) -> list[Candidate]:
    """Source 003, Section 3.1: the fp32-row U-Net student (bf16 autocast where native, channels-last, as the script
    trains it), the frozen DeepLabV3-ResNet50 teacher's logits and head features (``teacher_outputs``)."""
    from qkd_throughput import make_step
    from reproduce_qkd import Config, new_student, teacher_outputs
    from common.segmentation_models import build_segmenter
    from common.teachers import freeze

    cfg = Config()
    x = torch.randn(cfg.batch_size, 3, cfg.crop, cfg.crop, device=device)
    y = torch.randint(0, NUM_CLASSES, (cfg.batch_size, cfg.crop, cfg.crop), device=device)
    teacher = freeze(build_segmenter(cfg.teacher_arch, NUM_CLASSES).to(device))   # the default preset's
    return [Candidate("U-Net fp32 row, plain step", make_step(new_student(cfg).to(device), x, y, device, amp,
                                                              float_row=True),
                      precision, None, []),
            Candidate(f"{cfg.teacher_arch} teacher, forward", lambda: teacher_outputs(teacher, x, amp), precision,
                      None, []),
            Candidate("U-Net fp32 row, pixel + pair KD step (teacher forward inside)",
                      make_step(new_student(cfg).to(device), x, y, device, amp, teacher, float_row=True), precision,
                      None, [])]


def intra_budget(device: torch.device, amp: bool, precision: str) -> list[Candidate]:
    """Source 002: ERFNet, the DeepLabV3 teacher's head features (``teacher_outputs``), IntRA-KD + KD, on the first
    batch of the default run's synthetic road scenes: IntRA-KD's moments cost the size of each class region, so
    random labels (every class in every cell) would time a case that no road scene is."""
    from intra_kd_throughput import CFG, CLASSES, make_step
    from reproduce_intra_kd import METHODS, road_sample, teacher_outputs
    from common.segmentation_models import build_segmenter
    from common.synthetic_roads import SyntheticRoads
    from common.teachers import OutputMemo, freeze

    scenes = SyntheticRoads("train", CFG.batch_size, (CFG.height, CFG.width), CFG.seed, paint=CFG.paint,
                            lines_only=CFG.road_classes == "lines")
    batch = [road_sample(scenes, None, i, torch.Generator()) for i in range(CFG.batch_size)]
    x = torch.stack([image for image, _ in batch]).to(device)
    y = torch.stack([torch.as_tensor(mask) for _, mask in batch]).long().to(device)
    teacher = freeze(build_segmenter(CFG.teacher_arch, CLASSES).to(device))   # the default preset's
    return [Candidate("ERFNet, plain step", make_step(x, y, device, amp, METHODS["alone"][1], cpu_bf16=True),
                      precision, None, []),
            Candidate(f"{CFG.teacher_arch} teacher, forward",
                      lambda: teacher_outputs(teacher, x, OutputMemo(), None, amp),
                      precision, None, []),
            Candidate("ERFNet, IntRA-KD + KD step (teacher forward inside)",
                      make_step(x, y, device, amp, METHODS["intra_kd"][1], teacher, online=True, cpu_bf16=True),
                      precision, None, [])]


def print_distillation_budget(steps: list[Candidate]) -> None:
    plain, teacher, *distilled = (median_ms(c) for c in steps)
    budget = 1.1 * (plain + teacher)
    print(f"\nbudget (plain + teacher forward + 10%): {budget:.1f} ms; " + ", ".join(
        f"{c.label.split(', ', 1)[1].split(' step')[0]} {ms:.1f} ms ({ms / budget:.2f} of it: "
        f"{'within' if ms <= budget else 'OVER'})" for c, ms in zip(steps[2:], distilled)))


def int8_candidates(args) -> list[Candidate]:
    """Inference latency, batch 1, on the CPU: the fp32 student as users deploy it (compiled) against its int8
    model, QAT-prepared (observers fed one batch; the weights' values do not change the speed) and converted."""
    from common.int8 import CompiledInt8, convert_reference, lower_int8, prepare_int8_qat
    from reproduce_qkd import Config, LogitsAndFeature, new_student

    x = torch.randn(1, 3, args.size, args.size)
    student = new_student(Config()).eval()
    prepared = prepare_int8_qat(LogitsAndFeature(new_student(Config())), torch.randn(2, 3, 64, 64), multiple=16)
    prepared(torch.randn(2, 3, 64, 64))
    reference = convert_reference(prepared)
    models = {"U-Net fp32, eager": student, "U-Net fp32, torch.compile": torch.compile(student),
              "U-Net int8, lowered to oneDNN (lower_int8)": lower_int8(reference, x),
              "U-Net int8, Inductor with freezing (CompiledInt8)": CompiledInt8(reference)}

    def forward(model: nn.Module) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode():
                model(x)
        return step
    return [Candidate(label, forward(model), "int8" if "int8" in label else "fp32", None, [])
            for label, model in models.items()]


# ----------------------------------------------------------------------------------------------- printing
def median_ms(c: Candidate) -> float:
    return 1e3 * statistics.median(c.seconds)


def print_table(title: str, candidates: list[Candidate], attainable: dict[str, float], reference: str | None) -> None:
    """``reference``: the label whose time the "vs" column divides by (the peer as its users run it)."""
    ref = next((c for c in candidates if c.label == reference), None)
    print(f"\n### {title}\n")
    print("| step | ms (median) | spread (IQR) | vs " + (reference or "-") + " | GMAC/s | of attainable |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in candidates:
        ms = median_ms(c)
        q = statistics.quantiles(c.seconds, n=4) if len(c.seconds) > 1 else [c.seconds[0]] * 3
        rate = c.macs / (ms / 1e3) / 1e9 if c.macs else None
        share = f"{100 * rate / attainable[c.precision]:.0f}%" if rate and c.precision in attainable else "-"
        vs = f"{ms / median_ms(ref):.2f}" if ref else "-"
        print(f"| {c.label} | {ms:.1f} | {1e3 * (q[2] - q[0]):.1f} | {vs} | "
              f"{f'{rate:.1f}' if rate else '-'} | {share} |")


def machine_line(device: torch.device) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"{datetime.date.today()}, {device_name(device)}, {torch.get_num_threads()} threads of "
            f"{os.cpu_count()} cores, torch {torch.__version__}, commit {commit}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=TABLES, nargs="+", default=list(TABLES), help="tables to run (default: all)")
    p.add_argument("--size", type=int, default=256, help="crop side in pixels (default: 256, the thesis's)")
    p.add_argument("--batch-size", type=int, default=2, help="images per step (default: 2)")
    p.add_argument("--archs", nargs="+", choices=ARCHITECTURES,
                   default=["fcn_resnet50", "deeplabv3_resnet50", "fcn_resnet101", "deeplabv3_resnet101"],
                   help="torchvision networks for the torchvision table (default: all four)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default: 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate first (default: 2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--fp32-only", action="store_true", help="leave out the reduced precision (as on a CPU without "
                   "native bf16)")
    args = p.parse_args()
    check_batch(args)
    check_flags({"--size": args.size}, "must be one of the multiples of 16 from 32 up (DeepLabV3+ downsamples 32 "
                "times, the int8 table's U-Net pools four times)", lambda v: v >= 32 and v % 16 == 0)
    check_flags({"--warmup": args.warmup}, "must be >= 0", lambda v: v >= 0)
    apply_run_options(args)   # checks --threads and --repeats, applies --threads
    device = pick_device(args.device)
    reduced = None if args.fp32_only else low_precision(device)
    precisions = ["fp32", *([reduced] if reduced else [])]
    torch.manual_seed(0)
    print(f"# benchmarks/compare.py: {machine_line(device)}")
    print(f"training steps on {args.batch_size} x 3 x {args.size} x {args.size}; medians of {args.repeats} "
          f"interleaved rounds; precisions {', '.join(precisions)}")

    attainable_set = attainable_candidates(device, precisions, args.size)
    interleaved(attainable_set, device, args.warmup, args.repeats)
    attainable: dict[str, float] = {}
    for c in attainable_set:
        rate = c.macs / statistics.median(c.seconds) / 1e9
        attainable[c.precision] = max(attainable.get(c.precision, 0.0), rate)
    if "attainable" in args.only:
        print_table("attainable: a large convolution", attainable_set, attainable, None)
        print("\nattainable GMAC/s: " + ", ".join(f"{k} {v:.1f}" for k, v in attainable.items()))
    if "deeplab" in args.only:
        training, inference = deeplab_candidates(args, device, precisions)
        interleaved(training + inference, device, args.warmup, args.repeats)
        print_table("DeepLabV3+ R50, training", training, attainable,
                    "smp DeepLabV3Plus R50 (its defaults: separable ASPP, rates 12/24/36), fp32")
        print_table("DeepLabV3+ R50, inference", inference, attainable,
                    "smp DeepLabV3Plus R50 inference (its defaults), fp32")
    if "distill" in args.only:
        for script, candidates in distill_groups(args, device, precisions[-1]).items():
            interleaved(candidates, device, args.warmup, args.repeats)
            print_table(f"{script}: distillation, {precisions[-1]}", candidates, attainable, None)
            print_distillation_budget(candidates)
    if "torchvision" in args.only:
        for arch in args.archs:
            candidates = torchvision_candidates(argparse.Namespace(**{**vars(args), "archs": [arch]}), device,
                                                precisions)
            interleaved(candidates, device, args.warmup, args.repeats)
            print_table(f"{arch}, training", candidates, attainable, f"{arch}, torchvision, fp32")
    if "small" in args.only:
        candidates = small_candidates(device, precisions)
        interleaved(candidates, device, args.warmup, args.repeats, settle=1)
        print_table("the scripts' small networks at their default shapes, training", candidates, attainable, None)
    if "int8" in args.only and device.type != "cpu":
        print("\n(int8 table left out: its oneDNN int8 kernels run on the CPU; add --only int8 --device cpu)")
    elif "int8" in args.only:
        candidates = int8_candidates(args)
        interleaved(candidates, device, args.warmup, args.repeats)
        print_table(f"int8 inference, 1 x 3 x {args.size} x {args.size}", candidates, attainable,
                    "U-Net fp32, torch.compile")


if __name__ == "__main__":
    exit_on_user_error(main)
