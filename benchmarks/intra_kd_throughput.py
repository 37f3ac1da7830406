#!/usr/bin/env python
"""Speed of reproduce_intra_kd.py's training steps (images/s): the ERFNet student with each row's loss, and the
DeepLabV3 teacher (the default preset's ResNet-50; --teacher-arch deeplabv3_resnet101 the talk's), in fp32 and (on
CPUs with native bfloat16) in bf16. The students train as the script trains them: bf16 autocast on CPUs with native
bf16 (AMP on a GPU; --no-amp: float32), channels-last.

Each student step is forward + backward + Adam of ERFNet with the script's ``student_loss``, optimizer and loss
weights (its default preset's ``Config``); the teacher's head features (the script's ``teacher_outputs``) are either
computed on every batch or, as the script does, once per batch for all students (then only its last 1x1 conv and
upsampling run per step). Speeds are measurements, not tests.

    python benchmarks/intra_kd_throughput.py                    # the default preset: batch 8 of 64x128
    python benchmarks/intra_kd_throughput.py --height 384 --width 768 --batch-size 12 \
        --teacher-arch deeplabv3_resnet101                      # the paper preset's shapes, on a GPU
    python benchmarks/intra_kd_throughput.py --moments [--teacher-checkpoint FILE]

``--moments`` measures IntRA-KD's inputs instead of speed, on the default synthetic data (512 scenes of 64x128,
features at stride 8): how many marking regions nearest-resized masks keep against area-weighted ones, and the
parameter-gradient norm of each moment term on the first 8 scenes (ERFNet at initialisation, the teacher at
initialisation or from FILE), with the two-pass moments of common.losses and with the one-pass raw moments used
before 2026-12-04 (``one_pass_skewness_loss``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.devices import autocast, cpu_supports_bf16  # noqa: E402
from common.errors import UserError, check_flags, exit_on_user_error, refuse_ignored  # noqa: E402
from common.images import IGNORE_INDEX  # noqa: E402
from common.images import normalize  # noqa: E402
from common.losses import intra_affinity_loss, weighted_cross_entropy  # noqa: E402
from common.runs import load_weights  # noqa: E402
from common.segmentation_models import build_segmenter  # noqa: E402
from common.synthetic_roads import SyntheticRoads  # noqa: E402
from common.teachers import OutputMemo, freeze  # noqa: E402
from reproduce_intra_kd import (METHODS, TEACHER_ARCHS, TEACHER_TERMS, Config, class_weights_for,  # noqa: E402
                                distillation_weights, new_student, optimizer_for, student_loss, teacher_outputs)
from timing import add_run_options, apply_run_options, check_batch, setup, time_steps  # noqa: E402

CLASSES = SyntheticRoads.num_classes
CFG = Config()   # the default preset's recipe and loss weights


def make_step(x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool, terms: tuple,
              teacher: torch.nn.Module | None = None, memo: OutputMemo | None = None, online: bool = True,
              cpu_bf16: bool = False):
    """One step of a new ERFNet student with the script's loss terms ``terms`` (``student_loss``) and optimizer.
    The teacher's head features come from ``memo``'s "step 0" (the script shares them across students), or, when
    ``online``, from a teacher forward inside the step. ``cpu_bf16``: bf16 autocast on CPUs with native bf16, as the
    script trains."""
    class_weights = class_weights_for(CLASSES, CFG.background_weight).to(device)
    weights = distillation_weights(CFG)
    memo = memo if memo is not None else OutputMemo()
    student = new_student(CFG, CLASSES).to(device)
    optimizer, _ = optimizer_for(CFG, student.parameters(), CFG.lr, CFG.iterations)

    def step() -> None:
        with autocast(device, amp, cpu_bf16):
            logits, feats = student(x, return_features=True)
            t_logits = t_feat = None
            if set(TEACHER_TERMS) & set(terms):   # online: step None, the memo keeps nothing
                t_logits, t_feat = teacher_outputs(teacher, x, memo, None if online else 0, amp)
            loss, _ = student_loss(terms, logits.float(), feats, y, class_weights, CLASSES, t_logits, t_feat,
                                   weights, sad_on=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def student_steps(args, device: torch.device, teacher: torch.nn.Module) -> list:
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    y = torch.randint(0, CLASSES, (args.batch_size, args.height, args.width), device=device)
    memo = OutputMemo()
    teacher_outputs(teacher, x, memo, 0, args.amp)   # the head features of "step 0", kept for every student

    def step_of(terms: tuple, online: bool):
        return make_step(x, y, device, args.amp, terms, teacher, memo, online, cpu_bf16=True)

    rows = [(label if terms else "ERFNet, cross-entropy", step_of(terms, online=False))
            for label, terms in METHODS.values()]
    rows.append(("ERFNet + IntRA-KD + KD, teacher fwd every batch", step_of(METHODS["intra_kd"][1], online=True)))
    return rows


def teacher_steps(args, device: torch.device) -> list:
    x = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    y = torch.randint(0, CLASSES, (args.batch_size, args.height, args.width), device=device)
    class_weights = class_weights_for(CLASSES, CFG.background_weight).to(device)

    def step_of(bf16: bool):
        teacher = build_segmenter(args.teacher_arch, CLASSES).to(device)
        optimizer, _ = optimizer_for(CFG, teacher.parameters(), CFG.teacher_lr, CFG.teacher_iterations)

        def step() -> None:
            with autocast(device, args.amp or bf16, cpu_bf16=bf16):
                loss = weighted_cross_entropy(teacher(x).float(), y, class_weights, IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    label = f"{args.teacher_arch} teacher, cross-entropy"
    rows = [(label, step_of(False))]
    if device.type == "cpu" and cpu_supports_bf16():
        rows.append((f"{label}, CPU bf16", step_of(True)))
    return rows


def one_pass_skewness_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, num_classes: int,
                           eps: float = 1e-6) -> torch.Tensor:
    """IntRA-KD's skewness term as common.losses computed it before 2026-12-04, for comparison only: nearest masks,
    one-pass raw moments (m3 - 3 m1 m2 + 2 m1^3) / (var + eps)^1.5 in float64, absent classes dropped."""
    def graph(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        small = torch.nn.functional.interpolate(labels[:, None].float(), size=feat.shape[-2:], mode="nearest")
        masks = torch.nn.functional.one_hot(small[:, 0].long().flatten(1), num_classes).transpose(1, 2).double()
        x = feat.double().flatten(2).transpose(1, 2)
        count = masks.sum(-1, keepdim=True).clamp_min(1)
        m1, m2, m3 = (masks @ x.pow(p) / count for p in (1, 2, 3))
        var = (m2 - m1.pow(2)).clamp_min(0)
        unit = torch.nn.functional.normalize((m3 - 3 * m1 * m2 + 2 * m1.pow(3)) / (var + eps).pow(1.5), dim=-1)
        return unit @ unit.transpose(1, 2), masks.sum(-1) > 0

    (s_graph, s_present), (t_graph, t_present) = graph(student), graph(teacher.detach())
    present = s_present & t_present
    pairs = (present[:, :, None] & present[:, None, :]).double()
    return ((pairs * (s_graph - t_graph).pow(2)).sum((1, 2)) / present.sum(-1).double().pow(2).clamp_min(1)).mean()


def moments_report(teacher_arch: str, teacher_file: str | None) -> None:
    """``--moments``: the regions each mask reading keeps, and the gradient norm of each IntRA-KD term."""
    data = SyntheticRoads("train", 512, (CFG.height, CFG.width), 0)
    labels = torch.stack([data[i][1] for i in range(len(data))]).long()
    size = (CFG.height // 8, CFG.width // 8)
    small = torch.nn.functional.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    one_hot = torch.nn.functional.one_hot(labels, CLASSES).permute(0, 3, 1, 2).double()
    area = torch.nn.functional.interpolate(one_hot, size=size, mode="area")
    markings = [(n, k) for n in range(len(data)) for k in range(1, CLASSES) if (labels[n] == k).any()]
    kept = [int((small[n] == k).sum()) for n, k in markings if (small[n] == k).any()]
    cells = sorted(int((area[n, k] > 0).sum()) for n, k in markings)
    print(f"marking regions (scene x marking class): {len(markings)}; nearest masks at {size[0]}x{size[1]} keep "
          f"{len(kept)} ({100 * len(kept) / len(markings):.0f}%), median {sorted(kept)[len(kept) // 2]} cell(s), "
          f"{100 * sum(c == 1 for c in kept) / len(kept):.0f}% of them one cell; area weights keep all, median "
          f"{cells[len(cells) // 2]} cells of non-zero weight")
    torch.manual_seed(0)
    student = new_student(CFG, CLASSES)
    teacher = build_segmenter(teacher_arch, CLASSES).eval()
    if teacher_file:
        load_weights(teacher, teacher_file, what="--teacher-checkpoint")
    x = torch.stack([normalize(data[i][0]) for i in range(CFG.batch_size)])
    y = labels[:CFG.batch_size]
    with torch.no_grad():
        t_feat = teacher(x, return_features=True)[1]["head"].float()
    s_feat = student(x, return_features=True)[1]["block4"]
    params = list(student.parameters())

    def norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return float(sum(g.double().pow(2).sum() for g in grads if g is not None).sqrt())

    print(f"gradient norms at initialisation, teacher {teacher_file or 'at initialisation'}: mean / variance / "
          f"skewness term")
    one_pass = norm(one_pass_skewness_loss(s_feat, t_feat, y, CLASSES))
    print(f"  one-pass, nearest (before 2026-12-04): skewness {one_pass:.1f}")
    for masks in ("nearest", "area"):
        terms = [norm(intra_affinity_loss(s_feat, t_feat, y, CLASSES, weights=w, masks=masks))
                 for w in ((1, 0, 0), (0, 1, 0), (0, 0, 1))]
        print(f"  two-pass, {masks}: " + " / ".join(f"{v:.1f}" for v in terms))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, help=f"crop height, a multiple of 8 (default: {CFG.height})")
    p.add_argument("--width", type=int, help=f"crop width, a multiple of 8 (default: {CFG.width})")
    p.add_argument("--batch-size", type=int, help=f"images per step (default: {CFG.batch_size})")
    p.add_argument("--teacher-arch", choices=TEACHER_ARCHS, default=CFG.teacher_arch,
                   help=f"the teacher (default: the default preset's, {CFG.teacher_arch}; paper preset "
                        f"{TEACHER_ARCHS[-1]})")
    add_run_options(p, repeats=5)
    p.add_argument("--moments", action="store_true", help="IntRA-KD's regions and gradient norms instead of speed")
    p.add_argument("--teacher-checkpoint", metavar="FILE", help="with --moments: the teacher's weights")
    args = p.parse_args()
    if args.moments:   # on the default preset's data and shapes, on the CPU, in float32
        refuse_ignored(args, {"--height": "height", "--width": "width", "--batch-size": "batch_size"},
                       f"is not used by --moments (it measures the default preset's {CFG.height} x {CFG.width} "
                       "scenes): leave it out.")
        apply_run_options(args)
        moments_report(args.teacher_arch, args.teacher_checkpoint)
        return
    if args.teacher_checkpoint:
        raise UserError("--teacher-checkpoint is read only with --moments (the speed rows time untrained "
                        "networks): add --moments or leave it out.")
    for name in ("height", "width", "batch_size"):   # None until here, so that --moments can tell them given
        if getattr(args, name) is None:
            setattr(args, name, getattr(CFG, name))
    check_batch(args)
    check_flags({"--height": args.height, "--width": args.width}, "must be one of the multiples of 8 from 16 up "
                "(ERFNet downsamples three times, DeepLabV3 to stride 8)", lambda v: v >= 16 and v % 8 == 0)
    device = setup(args, f"batch {args.batch_size} x 3 x {args.height} x {args.width}")
    print(f"{'step':52s} {'ms/step':>9s} {'images/s':>9s}")
    teacher = freeze(build_segmenter(args.teacher_arch, CLASSES).to(device))
    for label, step in student_steps(args, device, teacher) + teacher_steps(args, device):
        seconds = time_steps(step, device, 2, args.repeats)
        print(f"{label:52s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}", flush=True)


if __name__ == "__main__":
    exit_on_user_error(main)
