#!/usr/bin/env python
"""Speed of reproduce_intra_kd.py's training steps (images/s): the ERFNet student with each row's loss, and the
DeepLabV3-ResNet101 teacher, in fp32 and (on CPUs with native bfloat16) in bf16.

Each student step is forward + backward + Adam of ERFNet with ``student_loss``; the teacher's head features are
either computed on every batch or, as the script does, once per batch for all students (then only its last 1x1
conv and upsampling run per step). Speeds are measurements, not tests.

    python benchmarks/intra_kd_throughput.py                    # the default preset: batch 8 of 64x128
    python benchmarks/intra_kd_throughput.py --height 384 --width 768 --batch-size 12   # paper preset, on a GPU
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.erfnet import ERFNet  # noqa: E402
from common.segmentation_models import build_segmenter  # noqa: E402
from common.training import autocast, cpu_supports_bf16, pick_device  # noqa: E402
from reproduce_intra_kd import METHODS, student_loss  # noqa: E402
from unet_kd_throughput import cpu_name, time_steps  # noqa: E402

CLASSES = 8
WEIGHTS = {"kd": 1.0, "T": 1.0, "at": 1.0, "sad": 0.1, "intra": (1.0, 1.0, 1.0)}


def student_steps(args, device: torch.device, teacher: torch.nn.Module) -> list:
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    y = torch.randint(0, CLASSES, (args.batch_size, args.height, args.width), device=device)
    class_weights = torch.ones(CLASSES, device=device)
    with torch.no_grad():
        _, cached = teacher(x, return_features=True)
    cached = cached["head"].float()

    def step_of(terms: tuple, online: bool):
        student = ERFNet(CLASSES).to(device)
        optimizer = torch.optim.Adam(student.parameters(), lr=2e-3)

        def step() -> None:
            with autocast(device, args.amp):
                logits, feats = student(x, return_features=True)
                t_logits = t_feat = None
                if terms:
                    with torch.no_grad():
                        t_feat = teacher(x, return_features=True)[1]["head"].float() if online else cached
                        t_logits = F.interpolate(teacher.net.classifier[-1](t_feat), size=x.shape[-2:],
                                                 mode="bilinear", align_corners=False)
                loss, _ = student_loss(terms, logits.float(), feats, y, class_weights, CLASSES, t_logits, t_feat,
                                       WEIGHTS, sad_on=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    rows = [(label if terms else "ERFNet, cross-entropy", step_of(terms, online=False))
            for label, terms in METHODS.values()]
    rows.append(("ERFNet + IntRA-KD + KD, teacher fwd every batch", step_of(("intra", "kd"), online=True)))
    return rows


def teacher_steps(args, device: torch.device) -> list:
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    y = torch.randint(0, CLASSES, (args.batch_size, args.height, args.width), device=device)

    def step_of(bf16: bool):
        teacher = build_segmenter("deeplabv3_resnet101", CLASSES).to(device)
        optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-3)

        def step() -> None:
            with autocast(device, args.amp or bf16, cpu_bf16=bf16):
                loss = F.cross_entropy(teacher(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    rows = [("DeepLabV3-R101 teacher, cross-entropy", step_of(False))]
    if device.type == "cpu" and cpu_supports_bf16():
        rows.append(("DeepLabV3-R101 teacher, cross-entropy, CPU bf16", step_of(True)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-amp", dest="amp", action="store_false")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.amp = args.amp and device.type == "cuda"
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({name}), {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, AMP {'on' if args.amp else 'off'}")
    print(f"\ntraining, batch {args.batch_size} x 3 x {args.height} x {args.width}")
    print(f"{'step':50s} {'ms/step':>9s} {'images/s':>9s}")
    teacher = build_segmenter("deeplabv3_resnet101", CLASSES).to(device).eval().requires_grad_(False)
    for label, step in student_steps(args, device, teacher) + teacher_steps(args, device):
        seconds = time_steps(step, device, 2, args.repeats)
        print(f"{label:50s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}", flush=True)


if __name__ == "__main__":
    main()
