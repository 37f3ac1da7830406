#!/usr/bin/env python
"""Training throughput of reproduce_fcn_kd.py's models: images/s of one training step.

Experiment B (Section III.B): FCN-ResNet50 student with the cross-entropy alone, the same student with Section II's
loss (the FCN-ResNet101 teacher's forward on every batch), and the teacher's own training step; SGD with the
report's head/backbone rates. Experiment A (Section III.A, --experiment A): the CIFAR ResNet-18, the 5-layer CNN
alone and distilled, Adam. On a GPU it uses AMP (bf16 where supported) as the script does. Speeds are
measurements, not tests.

    python benchmarks/fcn_kd_throughput.py                            # B at the default preset's crop, batch 8
    python benchmarks/fcn_kd_throughput.py --crop 480                  # the paper preset's crop
    python benchmarks/fcn_kd_throughput.py --experiment A --batch-size 128
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.devices import autocast, pick_device  # noqa: E402
from common.segmentation_models import build_segmenter  # noqa: E402
from common.teachers import freeze  # noqa: E402
from reproduce_fcn_kd import (PRESETS, CifarResNet18, Config, FiveLayerCNN, job_loss,  # noqa: E402
                              student_optimizer)
from unet_kd_throughput import cpu_name, time_steps  # noqa: E402

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
    return [("FCN-ResNet101 teacher, cross-entropy", make_step(teacher, sgd(teacher), x, y, device, args.amp)),
            ("FCN-ResNet50 student, cross-entropy", make_step(student, sgd(student), x, y, device, args.amp)),
            ("FCN-ResNet50 student, KD (teacher fwd)", make_step(student, sgd(student), x, y, device, args.amp,
                                                                  frozen))]


def steps_a(args, device: torch.device) -> list:
    """Section III.A's Adam."""
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
    p.add_argument("--experiment", choices=["A", "B"], default="B")
    p.add_argument("--crop", type=int, default=DEFAULT.crop,
                   help=f"B's crop (default: the default preset's, {DEFAULT.crop}; paper {PAPER.crop})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default: {DEFAULT.batch_size} for B, {DEFAULT.a_batch_size} for A (the report's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-amp", dest="amp", action="store_false")
    args = p.parse_args()
    args.batch_size = args.batch_size or (DEFAULT.batch_size if args.experiment == "B" else DEFAULT.a_batch_size)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.amp = args.amp and device.type == "cuda"
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    size = f"{args.crop} x {args.crop}" if args.experiment == "B" else "32 x 32"
    print(f"device: {device} ({name}), {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, AMP {'on' if args.amp else 'off'}; batch {args.batch_size} x 3 x {size}")
    print(f"{'step':40s} {'ms/step':>9s} {'images/s':>9s}")
    for label, step in (steps_b if args.experiment == "B" else steps_a)(args, device):
        seconds = time_steps(step, device, 2, args.repeats)
        print(f"{label:40s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}", flush=True)


if __name__ == "__main__":
    main()
