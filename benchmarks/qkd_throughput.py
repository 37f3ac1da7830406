#!/usr/bin/env python
"""Speed of reproduce_qkd.py's models: training steps (images/s) and inference latency, fp32 against int8.

Training (batch of crops, forward + backward + Adam as Section 4): the U-Net student of the float rows with the
cross-entropy and with Section 3.1's loss (the teacher's forward on every batch: the default preset's
DeepLabV3-ResNet50, --teacher-arch deeplabv3_resnet101 the report's), fake-quantized at 8 and 4 bits
(common/quantization.py: Polino et al.'s bucketed weights, the script's default, and the qkd quantizer's weights
and activations), QKD's co-studying step (teacher head trained too), and the int8 backend's QAT step (torchao
PT2E, common/int8.py). Precision as the script trains: the float rows and the teacher in bf16 autocast on a CPU
with native bf16 (AMP on a GPU; --no-amp: float32), the fake-quantized rows in float32. Inference (batch 1, CPU,
this process's threads, float32): the float student eager and compiled (torch.compile), fake-quantized (it runs in
float), and the converted int8 model lowered to oneDNN and compiled by Inductor (``CompiledInt8``, the script's
latency). int8 speed-ups need VNNI/AMX-class CPUs; compare int8 with compiled fp32. Speeds are measurements, not
tests.

    python benchmarks/qkd_throughput.py                       # the default preset's crop 64, batch 8; latency at 256
    python benchmarks/qkd_throughput.py --size 512 --no-train # latency at the paper preset's size
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.devices import autocast  # noqa: E402
from common.errors import check_flags, exit_on_user_error  # noqa: E402
from common.images import IGNORE_INDEX  # noqa: E402
from common.int8 import (CompiledInt8, convert_reference, count_int8_convolutions, lower_int8,  # noqa: E402
                         prepare_int8_qat)
from common.losses import weighted_cross_entropy  # noqa: E402
from common.profiler import measure_latency  # noqa: E402
from common.quantization import fake_quantize_model  # noqa: E402
from common.segmentation_models import ARCHITECTURES, build_segmenter  # noqa: E402
from common.teachers import freeze  # noqa: E402
from common.voc import NUM_CLASSES  # noqa: E402
from reproduce_qkd import (PRESETS, Config, LogitsAndFeature, adam, co_study_loss,  # noqa: E402
                           distillation_loss, new_student, student_outputs, teacher_outputs)
from timing import add_run_options, check_batch, setup, time_steps  # noqa: E402


def make_step(model, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool, teacher=None,
              co_study: bool = False, cfg: Config | None = None, float_row: bool = False):
    """One step of ``model`` with the script's objective and optimizer (Adam, Section 4): cross-entropy without a
    teacher, else Section 3.1's pixel + pair loss against the frozen teacher's outputs computed now
    (``teacher_outputs``: bf16 on CPUs with native bf16 when ``amp``); with ``co_study`` the teacher's head trains
    too (QKD's co-studying, ``co_study_loss``; the teacher in bf16 where native when ``amp``). ``float_row``: the
    student's forward in the run's mixed precision when ``amp`` (bf16 autocast on CPUs with native bf16, AMP on a
    GPU), as the script trains its fp32 rows; False: in float32 on any device, as it trains its fake-quantized and
    int8-QAT rows (``amp=False``). ``cfg``: the script's settings (default: its default preset)."""
    cfg = cfg or Config()
    params = [p for p in model.parameters() if p.requires_grad]
    if co_study:
        params += [p.requires_grad_(True) for p in teacher.head_parameters()]
    optimizer, _ = adam(params, cfg)

    def step() -> None:
        with autocast(device, amp and float_row, cpu_bf16=True):
            logits, feat = student_outputs(model, x)
            if teacher is None:
                loss = weighted_cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)
            elif co_study:
                with autocast(device, amp, cpu_bf16=True):
                    t_logits, t_feats = teacher(x, return_features=True)
                loss, _ = co_study_loss(logits.float(), feat.float(), t_logits.float(), t_feats["head"].float(),
                                        y, cfg)
            else:
                t_logits, t_feat = teacher_outputs(teacher, x, amp)
                loss, _ = distillation_loss(logits.float(), feat.float(), t_logits, t_feat, y, cfg.pixel_weight,
                                            cfg.pair_weight, cfg.T, cfg.patch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def training_steps(args, device: torch.device) -> list:
    cfg = Config()       # the script's default settings: Section 4's optimizer, Section 3.1's weights
    x = torch.randn(args.batch_size, 3, args.crop, args.crop, device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size, args.crop, args.crop), device=device)
    teacher = freeze(build_segmenter(args.teacher_arch, NUM_CLASSES).to(device))

    def step_of(model, teacher=None, float_row=False, co_study=False):
        return make_step(model, x, y, device, args.amp, teacher, co_study, cfg, float_row=float_row)

    def quantized(bits: int, quantizer: str = cfg.quantizer) -> torch.nn.Module:   # as the script's copies
        return fake_quantize_model(new_student(cfg), bits, mode=cfg.ranges, quantizer=quantizer,
                                   bucket_size=cfg.bucket_size).to(device, memory_format=torch.contiguous_format)

    steps = [("U-Net float row, cross-entropy", step_of(new_student(cfg).to(device), float_row=True)),
             ("U-Net float row, pixel + pair KD (teacher fwd)", step_of(new_student(cfg).to(device), teacher, True))]
    for bits in cfg.bits:   # the script's default quantizer, then the other
        steps.append((f"U-Net fake-quant W{bits} (Polino, buckets of {cfg.bucket_size}), CE",
                      step_of(quantized(bits, "polino"))))
    for bits in cfg.bits:
        steps.append((f"U-Net fake-quant W{bits}A{bits} (qkd quantizer), CE", step_of(quantized(bits, "qkd"))))
    steps.append((f"QKD co-study W{cfg.bits[-1]} ({cfg.quantizer}; teacher head trains)",
                  step_of(quantized(cfg.bits[-1]), teacher, co_study=True)))
    if device.type == "cpu":
        student = new_student(cfg).to(memory_format=torch.contiguous_format)
        prepared = prepare_int8_qat(LogitsAndFeature(student), x, multiple=16)
        steps.append(("U-Net int8 QAT (PT2E, x86 quantizer), CE", step_of(prepared)))
    return steps


def inference_latencies(args) -> list:
    """Median CPU latency (common.profiler.measure_latency) of each form of the student, batch 1."""
    cfg = Config()
    shape = (1, 3, args.size, args.size)
    time_it = lambda model: measure_latency(model, shape, "cpu", warmup=2, repeats=args.repeats)  # noqa: E731
    student = new_student(cfg).eval()
    rows = [("U-Net fp32, eager", time_it(student))]
    if args.compile:
        rows.append(("U-Net fp32, torch.compile", time_it(torch.compile(student))))
    quantized = fake_quantize_model(student, 8, mode=cfg.ranges, quantizer=cfg.quantizer, bucket_size=cfg.bucket_size)
    rows.append((f"U-Net fake-quant W8 ({cfg.quantizer}; runs in float)", time_it(quantized)))
    prepared = prepare_int8_qat(LogitsAndFeature(new_student(cfg)), torch.randn(2, 3, 64, 64), multiple=16)
    prepared(torch.randn(2, 3, 64, 64))          # the observers see one batch
    reference = convert_reference(prepared)
    int8 = lower_int8(reference, torch.randn(shape))
    rows.append((f"U-Net int8, oneDNN ({count_int8_convolutions(int8)} int8 convs)", time_it(int8)))
    if args.compile:
        rows.append(("U-Net int8, Inductor with freezing", time_it(CompiledInt8(reference))))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    paper = PRESETS["paper"]
    p.add_argument("--crop", type=int, default=Config.crop,
                   help=f"training crop side (default {Config.crop}; paper preset {paper['crop']})")
    p.add_argument("--batch-size", type=int, default=Config.batch_size,
                   help=f"images per training step (default {Config.batch_size}; paper preset {paper['batch_size']})")
    p.add_argument("--size", type=int, default=Config.profile_size,
                   help=f"inference image side (default {Config.profile_size}; paper preset {paper['profile_size']})")
    p.add_argument("--teacher-arch", choices=ARCHITECTURES, default=Config.teacher_arch,
                   help=f"the teacher (default: the default preset's, {Config.teacher_arch}; paper preset "
                        f"{paper['teacher_arch']})")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile (~30 s)")
    p.add_argument("--no-train", dest="train", action="store_false", help="inference latency only")
    add_run_options(p, repeats=Config.latency_repeats)
    args = p.parse_args()
    check_batch(args)
    check_flags({"--crop": args.crop, "--size": args.size},
                "must be one of the positive multiples of 16 (the U-Net pools four times)",
                lambda v: v >= 16 and v % 16 == 0)
    device = setup(args, "training steps on --device, inference on the CPU")
    if args.train:
        print(f"\ntraining, batch {args.batch_size} x 3 x {args.crop} x {args.crop}")
        print(f"{'step':50s} {'ms/step':>9s} {'images/s':>9s}")
        for label, step in training_steps(args, device):
            seconds = time_steps(step, device, 2, args.repeats)
            print(f"{label:50s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}", flush=True)
    print(f"\ninference on the CPU, batch 1 x 3 x {args.size} x {args.size}, median of {args.repeats}")
    print(f"{'model':50s} {'ms':>9s}")
    for label, seconds in inference_latencies(args):
        print(f"{label:50s} {seconds * 1e3:9.1f}", flush=True)


if __name__ == "__main__":
    exit_on_user_error(main)
