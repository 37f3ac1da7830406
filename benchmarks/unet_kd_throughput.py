#!/usr/bin/env python
"""Training throughput of reproduce_unet_kd.py's models on this machine, and what distillation costs.

Prints images/s for one training step (forward, backward, Adam) of the teacher and of the student, and the
student's distillation step in two forms: with the teacher run on every batch (--online-teacher) and with the
teacher's logits cached once per slice (the script's default). The networks, the objective (``kd_objective``),
the learning rates and the defaults are the script's (its headline: teacher and students with BatchNorm).
Each network runs as the script runs it: bf16 autocast where the script uses it on a CPU with native bf16 (the
teacher; the 2-UNet students train in float32, ``trains_in_bf16``), AMP on a GPU, float32 with --no-amp; in the
script's memory format (``unet_memory_format``). Speeds are measurements, not tests.

    python benchmarks/unet_kd_throughput.py                  # CPU or the GPU if there is one
    python benchmarks/unet_kd_throughput.py --threads 2 --crop 64 --batch-size 8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.devices import autocast  # noqa: E402
from common.errors import check_flags, exit_on_user_error  # noqa: E402
from common.teachers import freeze  # noqa: E402
from common.unet import UNet  # noqa: E402
from reproduce_unet_kd import Config, kd_objective, learning_rate, trains_in_bf16, unet_memory_format  # noqa: E402
from timing import add_run_options, setup, time_steps  # noqa: E402

DEFAULTS = Config()   # the script's default preset


def make_step(student: UNet, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool,
              teacher: UNet | None = None, cached: torch.Tensor | None = None, T: float = DEFAULTS.T,
              cpu_bf16: bool = False):
    """One training step of the script: "hard" without a teacher, else "soft" (teacher run now, or ``cached``);
    ``cpu_bf16``: bf16 autocast on CPUs with native bf16 as the script trains (the wide U-Nets, ``trains_in_bf16``;
    a teacher's forward always)."""
    opt = torch.optim.Adam(student.parameters(), lr=learning_rate(DEFAULTS, student.k), fused=True)

    def step() -> None:
        with autocast(device, amp, cpu_bf16 and trains_in_bf16(student.k)):
            s = student(x).float()
            if teacher is not None:
                with torch.no_grad(), autocast(device, amp, cpu_bf16):
                    t = teacher(x).float()
            else:
                t = cached
            loss, _ = kd_objective("hard" if t is None else "soft", s, y, t, T, DEFAULTS.lam,
                                   tau_squared=DEFAULTS.tau_squared)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=int, default=DEFAULTS.teacher,
                   help=f"teacher width k (default: the script's, {DEFAULTS.teacher})")
    p.add_argument("--k", type=int, default=DEFAULTS.k, help=f"student width k (default: the script's, {DEFAULTS.k})")
    p.add_argument("--crop", type=int, default=DEFAULTS.crop,
                   help=f"crop side (default: the default preset's, {DEFAULTS.crop})")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help=f"images per step (default: the default preset's, {DEFAULTS.batch_size})")
    add_run_options(p, repeats=10)
    args = p.parse_args()
    check_flags({"--teacher": args.teacher, "--k": args.k, "--batch-size": args.batch_size}, "must be >= 1",
                lambda v: v >= 1)
    check_flags({"--crop": args.crop}, "must be a positive multiple of 16 (the U-Net pools four times)",
                lambda v: v > 0 and v % 16 == 0)
    device = setup(args, f"batch {args.batch_size} x 1 x {args.crop} x {args.crop}")
    amp = args.amp
    x = torch.randn(args.batch_size, 1, args.crop, args.crop, device=device)
    y = torch.randint(0, 2, (args.batch_size, args.crop, args.crop), device=device)
    new = lambda k, bn: UNet(k, batch_norm=bn).to(device, memory_format=unet_memory_format(k, device, amp))  # noqa: E731
    teacher = new(args.teacher, DEFAULTS.teacher_bn)

    rows = []
    teacher_step = make_step(teacher, x, y, device, amp, cpu_bf16=True)
    rows.append((f"teacher {args.teacher}-UNet, hard step",
                 time_steps(teacher_step, device, 2, max(3, args.repeats // 3))))
    student = new(args.k, True)   # the headline's students
    rows.append((f"student {args.k}-UNet, hard step", time_steps(make_step(student, x, y, device, amp, cpu_bf16=True),
                                                                  device, 3, args.repeats)))
    freeze(teacher)   # as the script uses its teacher: its soft targets computed in the script's precision
    with torch.no_grad(), autocast(device, amp, cpu_bf16=True):
        cached = teacher(x).float()
    rows.append(("student, soft step, cached teacher logits", time_steps(
        make_step(student, x, y, device, amp, cached=cached, cpu_bf16=True), device, 3, args.repeats)))
    rows.append(("student, soft step, teacher forward each batch", time_steps(
        make_step(student, x, y, device, amp, teacher=teacher, cpu_bf16=True), device, 2, args.repeats)))
    base = rows[1][1]
    print(f"{'step':48s} {'ms/step':>9s} {'images/s':>9s} {'vs hard student':>16s}")
    for label, sec in rows:
        print(f"{label:48s} {sec * 1e3:9.1f} {args.batch_size / sec:9.1f} {sec / base:15.1f}x")


if __name__ == "__main__":
    exit_on_user_error(main)
