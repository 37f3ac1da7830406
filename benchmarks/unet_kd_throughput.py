#!/usr/bin/env python
"""Training throughput of reproduce_unet_kd.py's models on this machine, and what distillation costs.

Prints images/s for one training step (forward, backward, Adam) of the teacher and of the student, and the
student's distillation step in two forms: with the teacher run on every batch (--online-teacher) and with the
teacher's logits cached once per slice (the script's default). The networks, the objective (``kd_objective``),
the learning rates and the defaults are the script's (its headline: teacher and students with BatchNorm).
Speeds are measurements, not tests.

    python benchmarks/unet_kd_throughput.py                  # CPU or the GPU if there is one
    python benchmarks/unet_kd_throughput.py --threads 2 --crop 64 --batch-size 8
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.devices import autocast, pick_device
from common.teachers import freeze
from common.unet import UNet
from reproduce_unet_kd import Config, kd_objective, learning_rate, trains_in_bf16

DEFAULTS = Config()   # the script's default preset


def time_steps(step, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of one call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


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
    p.add_argument("--teacher", type=int, default=DEFAULTS.teacher, help="teacher width k (default: the script's)")
    p.add_argument("--k", type=int, default=DEFAULTS.k, help="student width k (default: the script's)")
    p.add_argument("--crop", type=int, default=DEFAULTS.crop, help="default: the default preset's crop")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="default: the default preset's batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-amp", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    amp = not args.no_amp and device.type == "cuda"
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 1, args.crop, args.crop, device=device)
    y = torch.randint(0, 2, (args.batch_size, args.crop, args.crop), device=device)
    teacher = UNet(args.teacher, batch_norm=DEFAULTS.teacher_bn).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({name}), {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, AMP {'on' if amp else 'off'}; batch {args.batch_size} x 1 x {args.crop} x {args.crop}")

    rows = []
    teacher_step = make_step(teacher, x, y, device, amp)
    rows.append((f"teacher {args.teacher}-UNet, hard step",
                 time_steps(teacher_step, device, 2, max(3, args.repeats // 3))))
    student = UNet(args.k, batch_norm=True).to(device)   # the headline's students
    rows.append((f"student {args.k}-UNet, hard step", time_steps(make_step(student, x, y, device, amp), device, 3,
                                                                  args.repeats)))
    freeze(teacher)   # as the script uses its teacher
    with torch.no_grad():
        cached = teacher(x)
    rows.append(("student, soft step, cached teacher logits", time_steps(
        make_step(student, x, y, device, amp, cached=cached), device, 3, args.repeats)))
    rows.append(("student, soft step, teacher forward each batch", time_steps(
        make_step(student, x, y, device, amp, teacher=teacher), device, 2, args.repeats)))
    base = rows[1][1]
    print(f"{'step':48s} {'ms/step':>9s} {'images/s':>9s} {'vs hard student':>16s}")
    for label, sec in rows:
        print(f"{label:48s} {sec * 1e3:9.1f} {args.batch_size / sec:9.1f} {sec / base:15.1f}x")


if __name__ == "__main__":
    main()
