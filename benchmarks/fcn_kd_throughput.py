#!/usr/bin/env python
"""Training throughput of reproduce_fcn_kd.py's models: images/s of one training step.

Experiment B (Section III.B): FCN-ResNet50 student with the cross-entropy alone, the same student with Section II's
loss (the FCN-ResNet101 teacher's forward on every batch), and the teacher's own training step; SGD with the
report's head/backbone rates. Experiment A (Section III.A, --experiment A): the CIFAR ResNet-18, the 5-layer CNN
alone and distilled, Adam. Precision as the script trains: bf16 autocast on a CPU with native bf16, AMP on a GPU
(--no-amp: float32); the segmenters' weights channels-last (``build_segmenter``). Speeds are measurements, not tests.

    python benchmarks/fcn_kd_throughput.py                            # B at the default preset's crop, batch 8
    python benchmarks/fcn_kd_throughput.py --crop 480                  # the paper preset's crop
    python benchmarks/fcn_kd_throughput.py --experiment A --batch-size 128
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.devices import autocast  # noqa: E402
from common.errors import check_flags, exit_on_user_error, refuse_ignored  # noqa: E402
from common.segmentation_models import build_segmenter  # noqa: E402
from common.teachers import freeze  # noqa: E402
from reproduce_fcn_kd import (PRESETS, CifarResNet18, Config, FiveLayerCNN, job_loss,  # noqa: E402
                              student_optimizer)
from timing import add_run_options, check_batch, setup, time_steps  # noqa: E402

DEFAULT, PAPER = Config(), Config(**PRESETS["paper"])   # the script's settings: T, alpha, rates, crop, batch sizes


def make_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool, teacher=None,
              cpu_bf16: bool = False):
    """One training step of the script's objective (``job_loss``): Section II's loss with the teacher's forward
    pass on every batch, or the cross-entropy alone without a teacher; ``cpu_bf16``: bf16 autocast on CPUs with
    native bf16, as the script trains."""
    loss_fn = job_loss(model, teacher, lambda step: (x, y), DEFAULT)

    def step() -> None:
        with autocast(device, amp, cpu_bf16):
            loss, _ = loss_fn(0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def steps_b(args, device: torch.device) -> list:
    """Section III.B's SGD at the report's rates (the paper preset: the backbone trains too)."""
    x = torch.randn(args.batch_size, 3, args.crop, args.crop, device=device)
    y = torch.randint(0, 21, (args.batch_size, args.crop, args.crop), device=device)
    teacher = build_segmenter("fcn_resnet101", 21).to(device)
    student = build_segmenter("fcn_resnet50", 21).to(device)
    frozen = freeze(build_segmenter("fcn_resnet101", 21).to(device))
    sgd = lambda m: student_optimizer(m, PAPER)  # noqa: E731
    step = lambda model, teacher=None: make_step(model, sgd(model), x, y, device, args.amp, teacher,  # noqa: E731
                                                 cpu_bf16=True)
    return [("FCN-ResNet101 teacher, cross-entropy", step(teacher)),
            ("FCN-ResNet50 student, cross-entropy", step(student)),
            ("FCN-ResNet50 student, KD (teacher fwd)", step(student, frozen))]


def steps_a(args, device: torch.device) -> list:
    """Section III.A's Adam, in float32 on the CPU as the script trains it (GPU: AMP)."""
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    teacher, student = CifarResNet18().to(device), FiveLayerCNN().to(device)
    frozen = freeze(CifarResNet18().to(device))
    adam = lambda m: torch.optim.Adam(m.parameters(), lr=DEFAULT.a_lr, fused=True)  # noqa: E731
    return [("ResNet-18 teacher, cross-entropy", make_step(teacher, adam(teacher), x, y, device, args.amp)),
            ("5-layer CNN, cross-entropy", make_step(student, adam(student), x, y, device, args.amp)),
            ("5-layer CNN, KD (teacher fwd)", make_step(student, adam(student), x, y, device, args.amp, frozen))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", choices=["A", "B"], default="B",
                   help="B: FCN segmentation (Section III.B); A: CIFAR-10 classification (III.A) (default: B)")
    p.add_argument("--crop", type=int, default=None,
                   help=f"B's crop (default: the default preset's, {DEFAULT.crop}; paper {PAPER.crop})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default: {DEFAULT.batch_size} for B, {DEFAULT.a_batch_size} for A (the report's)")
    add_run_options(p, repeats=5)
    args = p.parse_args()
    if args.experiment == "A":
        refuse_ignored(args, {"--crop": "crop"}, "sets experiment B's crop; experiment A's CIFAR images are "
                       "32 x 32: leave it out with --experiment A.")
    elif args.crop is None:
        args.crop = DEFAULT.crop
    if args.batch_size is None:
        args.batch_size = DEFAULT.batch_size if args.experiment == "B" else DEFAULT.a_batch_size
    check_batch(args)
    check_flags({"--crop": args.crop}, "must be >= 32 (the FCN's output stride is 8)", lambda v: v >= 32)
    size = f"{args.crop} x {args.crop}" if args.experiment == "B" else "32 x 32"
    device = setup(args, f"batch {args.batch_size} x 3 x {size}")
    print(f"{'step':40s} {'ms/step':>9s} {'images/s':>9s}")
    for label, step in (steps_b if args.experiment == "B" else steps_a)(args, device):
        seconds = time_steps(step, device, 2, args.repeats)
        print(f"{label:40s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}", flush=True)


if __name__ == "__main__":
    exit_on_user_error(main)
