#!/usr/bin/env python
"""Speed of reproduce_qkd.py's models: training steps (images/s) and inference latency, fp32 against int8.

Training (batch of crops, forward + backward + Adam as Section 4): the U-Net student with the cross-entropy, with
Section 3.1's loss (the DeepLabV3-ResNet101 teacher's forward on every batch), fake-quantized at 8 and 4 bits
(common/quantization.py), QKD's co-studying step (teacher head trained too), and the int8 backend's QAT step
(torchao PT2E, common/int8.py). Inference (batch 1, CPU, this process's threads): the float student eager and
compiled (torch.compile), fake-quantized (it runs in float), and the converted int8 model lowered to oneDNN.
int8 speed-ups need VNNI/AMX-class CPUs; compare int8 with compiled fp32. Speeds are measurements, not tests.

    python benchmarks/qkd_throughput.py                       # the default preset's crop 64, batch 8; latency at 256
    python benchmarks/qkd_throughput.py --size 512 --no-train # latency at the paper preset's size
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.int8 import convert_reference, count_int8_convolutions, lower_int8, prepare_int8_qat  # noqa: E402
from common.profiler import measure_latency  # noqa: E402
from common.quantization import fake_quantize_model  # noqa: E402
from common.segmentation_models import build_segmenter  # noqa: E402
from common.training import autocast, pick_device  # noqa: E402
from reproduce_qkd import LogitsAndFeature, distillation_loss, new_student, parse_args, student_outputs  # noqa: E402
from unet_kd_throughput import cpu_name, time_steps  # noqa: E402


def training_steps(args, device: torch.device) -> list:
    cfg, _ = parse_args([])
    x = torch.randn(args.batch_size, 3, args.crop, args.crop, device=device)
    y = torch.randint(0, 21, (args.batch_size, args.crop, args.crop), device=device)
    teacher = build_segmenter("deeplabv3_resnet101", 21).to(device).eval().requires_grad_(False)

    def step_of(model, teacher=None, amp=args.amp, co_study=False):
        """One Adam step (Section 4's settings) of ``model``; with ``co_study`` the teacher's head trains too."""
        params = [p for p in model.parameters() if p.requires_grad]
        if co_study:
            params += [p.requires_grad_(True) for p in teacher.head_parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.8, 0.999))

        def step() -> None:
            with autocast(device, amp):
                logits, feat = student_outputs(model, x)
                if teacher is None:
                    loss = F.cross_entropy(logits.float(), y)
                else:
                    with torch.set_grad_enabled(co_study):
                        t_logits, t_feats = teacher(x, return_features=True)
                    loss, _ = distillation_loss(logits.float(), feat.float(), t_logits.float(),
                                                t_feats["head"].float(), y, 10.0, 10.0)
                    if co_study:
                        loss = loss + F.cross_entropy(t_logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    steps = [("U-Net fp32, cross-entropy", step_of(new_student(cfg).to(device))),
             ("U-Net fp32, pixel + pair KD (teacher fwd)", step_of(new_student(cfg).to(device), teacher))]
    for bits in (8, 4):
        quantized = fake_quantize_model(new_student(cfg), bits).to(device)
        steps.append((f"U-Net fake-quant W{bits}A{bits}, CE", step_of(quantized, amp=False)))
    quantized = fake_quantize_model(new_student(cfg), 4).to(device)
    steps.append(("QKD co-study W4A4 (teacher head trains)", step_of(quantized, teacher, amp=False, co_study=True)))
    if device.type == "cpu":
        prepared = prepare_int8_qat(LogitsAndFeature(new_student(cfg)), x, multiple=16)
        steps.append(("U-Net int8 QAT (PT2E, x86 quantizer), CE", step_of(prepared, amp=False)))
    return steps


def inference_latencies(args) -> list:
    """Median CPU latency (common.profiler.measure_latency) of each form of the student, batch 1."""
    cfg, _ = parse_args([])
    shape = (1, 3, args.size, args.size)
    time_it = lambda model: measure_latency(model, shape, "cpu", warmup=2, repeats=args.repeats)  # noqa: E731
    student = new_student(cfg).eval()
    rows = [("U-Net fp32, eager", time_it(student))]
    if args.compile:
        rows.append(("U-Net fp32, torch.compile", time_it(torch.compile(student))))
    rows.append(("U-Net fake-quant W8A8 (runs in float)", time_it(fake_quantize_model(student, 8))))
    prepared = prepare_int8_qat(LogitsAndFeature(new_student(cfg)), torch.randn(2, 3, 64, 64), multiple=16)
    prepared(torch.randn(2, 3, 64, 64))          # the observers see one batch
    int8 = lower_int8(convert_reference(prepared), torch.randn(shape))
    rows.append((f"U-Net int8, oneDNN ({count_int8_convolutions(int8)} int8 convs)", time_it(int8)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crop", type=int, default=64, help="training crop side (default 64; paper preset 320)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="inference image side (default 256; paper preset 512)")
    p.add_argument("--device", default="auto", help="training steps' device; inference is always on the CPU")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile (~30 s)")
    p.add_argument("--no-train", dest="train", action="store_false", help="inference latency only")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.amp = args.amp and device.type == "cuda"
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({name}), {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, AMP {'on' if args.amp else 'off'}")
    if args.train:
        print(f"\ntraining, batch {args.batch_size} x 3 x {args.crop} x {args.crop}")
        print(f"{'step':45s} {'ms/step':>9s} {'images/s':>9s}")
        for label, step in training_steps(args, device):
            seconds = time_steps(step, device, 2, args.repeats)
            print(f"{label:45s} {seconds * 1e3:9.1f} {args.batch_size / seconds:9.1f}", flush=True)
    print(f"\ninference on the CPU, batch 1 x 3 x {args.size} x {args.size}, median of {args.repeats}")
    print(f"{'model':45s} {'ms':>9s}")
    for label, seconds in inference_latencies(args):
        print(f"{label:45s} {seconds * 1e3:9.1f}", flush=True)


if __name__ == "__main__":
    main()
