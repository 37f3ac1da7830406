#!/usr/bin/env python
"""Speed of reproduce_intra_kd.py's training steps (images/s): the ERFNet student with each row's loss, and the
DeepLabV3-ResNet101 teacher, in fp32 and (on CPUs with native bfloat16) in bf16.

Each student step is forward + backward + Adam of ERFNet with the script's ``student_loss``, optimizer and loss
weights (its default preset's ``Config``); the teacher's head features (the script's ``teacher_outputs``) are either
computed on every batch or, as the script does, once per batch for all students (then only its last 1x1 conv and
upsampling run per step). Speeds are measurements, not tests.

    python benchmarks/intra_kd_throughput.py                    # the default preset: batch 8 of 64x128
    python benchmarks/intra_kd_throughput.py --height 384 --width 768 --batch-size 12   # paper preset, on a GPU
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.devices import autocast, cpu_supports_bf16, pick_device  # noqa: E402
from common.images import IGNORE_INDEX  # noqa: E402
from common.losses import weighted_cross_entropy  # noqa: E402
from common.segmentation_models import build_segmenter  # noqa: E402
from common.synthetic_roads import SyntheticRoads  # noqa: E402
from common.teachers import OutputMemo, freeze  # noqa: E402
from reproduce_intra_kd import (METHODS, TEACHER_ARCH, TEACHER_TERMS, Config, class_weights_for,  # noqa: E402
                                distillation_weights, new_student, optimizer_for, student_loss, teacher_outputs)
from unet_kd_throughput import cpu_name, time_steps  # noqa: E402

CLASSES = SyntheticRoads.num_classes
CFG = Config()   # the default preset's recipe and loss weights


def student_steps(args, device: torch.device, teacher: torch.nn.Module) -> list:
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    y = torch.randint(0, CLASSES, (args.batch_size, args.height, args.width), device=device)
    class_weights = class_weights_for(CLASSES, CFG.background_weight).to(device)
    weights = distillation_weights(CFG)
    memo = OutputMemo()
    teacher_outputs(teacher, x, memo, 0, args.amp)   # the head features of "step 0", kept for every student

    def step_of(terms: tuple, online: bool):
        student = new_student(CFG, CLASSES).to(device)
        optimizer, _ = optimizer_for(CFG, student.parameters(), CFG.lr, CFG.iterations)

        def step() -> None:
            with autocast(device, args.amp):
                logits, feats = student(x, return_features=True)
                t_logits = t_feat = None
                if set(TEACHER_TERMS) & set(terms):   # online: step None, the memo keeps nothing
                    t_logits, t_feat = teacher_outputs(teacher, x, memo, None if online else 0, args.amp)
                loss, _ = student_loss(terms, logits.float(), feats, y, class_weights, CLASSES, t_logits, t_feat,
                                       weights, sad_on=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    rows = [(label if terms else "ERFNet, cross-entropy", step_of(terms, online=False))
            for label, terms in METHODS.values()]
    rows.append(("ERFNet + IntRA-KD + KD, teacher fwd every batch", step_of(METHODS["intra_kd"][1], online=True)))
    return rows


def teacher_steps(args, device: torch.device) -> list:
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    y = torch.randint(0, CLASSES, (args.batch_size, args.height, args.width), device=device)
    class_weights = class_weights_for(CLASSES, CFG.background_weight).to(device)

    def step_of(bf16: bool):
        teacher = build_segmenter(TEACHER_ARCH, CLASSES).to(device)
        optimizer, _ = optimizer_for(CFG, teacher.parameters(), CFG.teacher_lr, CFG.teacher_iterations)

        def step() -> None:
            with autocast(device, args.amp or bf16, cpu_bf16=bf16):
                loss = weighted_cross_entropy(teacher(x).float(), y, class_weights, IGNORE_INDEX)
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
    p.add_argument("--height", type=int, default=CFG.height)
    p.add_argument("--width", type=int, default=CFG.width)
    p.add_argument("--batch-size", type=int, default=CFG.batch_size)
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
    teacher = freeze(build_segmenter(TEACHER_ARCH, CLASSES).to(device))
    for label, step in student_steps(args, device, teacher) + teacher_steps(args, device):
        seconds = time_steps(step, device, 2, args.repeats)
        print(f"{label:50s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}", flush=True)


if __name__ == "__main__":
    main()
