#!/usr/bin/env python
"""Training throughput of reproduce_deeplab_caspp.py's models: images/s of one training step per table row.

One step = forward, cross-entropy, backward, SGD (the thesis's recipe, Section 4.1.1), on a batch of random
crops; with --distill also the distillation steps of Table 5.2 (the ResNet-50 / OS16 / KSAC / ST teacher's forward
on every batch, then KD or attention transfer on all layers). On a GPU it uses AMP (bf16 where supported) as the
script does. Speeds are measurements, not tests.

    python benchmarks/deeplab_throughput.py                         # Table 5.1's rows, CPU or the GPU
    python benchmarks/deeplab_throughput.py --table 5.4 --crop 256 --batch-size 16 --distill
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.devices import autocast, pick_device  # noqa: E402
from common.teachers import freeze  # noqa: E402
from reproduce_deeplab_caspp import TABLES, TEACHER, Config, Row, build, caspp_objective  # noqa: E402
from unet_kd_throughput import cpu_name, time_steps  # noqa: E402


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
    p.add_argument("--table", choices=["5.1", "A.1", "5.4", "A.2"], default="5.1", help="whose rows to time")
    p.add_argument("--crop", type=int, default=Config.crop, help="default: the default preset's crop (thesis: 256)")
    p.add_argument("--batch-size", type=int, default=Config.batch_size, help="default: the default preset's batch")
    p.add_argument("--distill", action="store_true", help="also time KD and AT-all steps with the teacher")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-amp", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    amp = not args.no_amp and device.type == "cuda"
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.crop, args.crop, device=device)
    y = torch.randint(0, 21, (args.batch_size, args.crop, args.crop), device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({name}), {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, AMP {'on' if amp else 'off'}; batch {args.batch_size} x 3 x {args.crop} x {args.crop}")
    print(f"{'step':34s} {'ms/step':>9s} {'images/s':>9s}")
    spec = TABLES[args.table]
    for row in spec.architectures():
        seconds = time_steps(make_step(build(row).to(device), x, y, device, amp), device, 2, args.repeats)
        print(f"{row.label:34s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}", flush=True)
    if args.distill:
        teacher = freeze(build(TEACHER).to(device))
        student = Row(spec.backbone, 16, "DS", False)
        for method in ("kd", "at-all"):
            step = make_step(build(student).to(device), x, y, device, amp, method, teacher)
            seconds = time_steps(step, device, 2, args.repeats)
            print(f"{student.label + ' ' + method:34s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
