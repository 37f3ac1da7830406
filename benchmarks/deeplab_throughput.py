#!/usr/bin/env python
"""Training throughput of reproduce_deeplab_caspp.py's models: images/s of one training step per table row.

One step = forward, cross-entropy, backward, SGD (the thesis's recipe, Section 4.1.1), on a batch of random
crops; with --distill also the distillation steps of Table 5.2 (the ResNet-50 / OS16 / KSAC / ST teacher's forward
on every batch, then KD or attention transfer on all layers). Precision and memory format as the script trains:
bf16 autocast on a CPU with native bf16, AMP on a GPU (--no-amp: float32), channels-last weights (``build``).
Speeds are measurements, not tests.

    python benchmarks/deeplab_throughput.py                         # Table 5.1's rows, CPU or the GPU
    python benchmarks/deeplab_throughput.py --table 5.4 --crop 256 --batch-size 16 --distill
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
from reproduce_deeplab_caspp import TABLES, TEACHER, Config, Row, build, caspp_objective  # noqa: E402
from timing import add_run_options, check_batch, setup, time_steps  # noqa: E402


def make_step(model, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool, method: str = "none",
              teacher=None, cpu_bf16: bool = False):
    """One training step of the script: its objective (``caspp_objective``, with the default alpha, beta, T) and
    its SGD settings; ``cpu_bf16``: bf16 autocast on CPUs with native bf16, as the script trains."""
    cfg = Config()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          fused=True)

    def step() -> None:
        with autocast(device, amp, cpu_bf16):
            logits, feats = model(x, return_features=True) if method.startswith("at") else (model(x), None)
            t_logits = t_feats = None
            if teacher is not None:
                with torch.no_grad():
                    t_logits, t_feats = teacher(x, return_features=True)
            loss, _ = caspp_objective(method, logits, feats, t_logits, t_feats, y, cfg.alpha, cfg.beta, cfg.T)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", choices=["5.1", "A.1", "5.4", "A.2"], default="5.1",
                   help="whose rows to time (default: 5.1)")
    p.add_argument("--crop", type=int, default=Config.crop,
                   help=f"crop side (default: the default preset's, {Config.crop}; the thesis's 256)")
    p.add_argument("--batch-size", type=int, default=Config.batch_size,
                   help=f"images per step (default: the default preset's, {Config.batch_size})")
    p.add_argument("--distill", action="store_true", help="also time KD and AT-all steps with the teacher")
    add_run_options(p, repeats=5)
    args = p.parse_args()
    check_batch(args)
    check_flags({"--crop": args.crop}, "must be >= 32 (DeepLabV3+ downsamples up to 32 times)", lambda v: v >= 32)
    device = setup(args, f"batch {args.batch_size} x 3 x {args.crop} x {args.crop}")
    amp = args.amp
    x = torch.randn(args.batch_size, 3, args.crop, args.crop, device=device)
    y = torch.randint(0, 21, (args.batch_size, args.crop, args.crop), device=device)
    print(f"{'step':34s} {'ms/step':>9s} {'images/s':>9s}")
    spec = TABLES[args.table]
    for row in spec.architectures():
        step = make_step(build(row).to(device), x, y, device, amp, cpu_bf16=True)
        seconds = time_steps(step, device, 2, args.repeats)
        print(f"{row.label:34s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}", flush=True)
    if args.distill:
        teacher = freeze(build(TEACHER).to(device))
        student = Row(spec.backbone, 16, "DS", False)
        for method in ("kd", "at-all"):
            step = make_step(build(student).to(device), x, y, device, amp, method, teacher, cpu_bf16=True)
            seconds = time_steps(step, device, 2, args.repeats)
            print(f"{student.label + ' ' + method:34s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}",
                  flush=True)


if __name__ == "__main__":
    exit_on_user_error(main)
