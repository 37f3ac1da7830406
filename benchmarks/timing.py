"""What every benchmark here shares: the timing loop, the machine's name, the precision a script's steps run in
and the command-line options for device, threads, repeats and precision (checked: a mistake is a UserError, which
each benchmark's ``exit_on_user_error(main)`` prints as one line). Speeds are measurements, not tests."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.devices import cpu_supports_bf16, pick_device  # noqa: E402
from common.errors import check_flags  # noqa: E402


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of one call of ``step`` after ``warmup`` untimed calls."""
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


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU's model name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


def precision_label(device: torch.device, amp: bool) -> str:
    """What the scripts' mixed precision (``common.devices.autocast``) amounts to on ``device``."""
    if not amp:
        return "float32 (--no-amp)"
    if device.type == "cuda":
        return f"AMP ({'bf16' if torch.cuda.is_bf16_supported() else 'fp16'})"
    if cpu_supports_bf16():
        return "bf16 autocast where the script uses it (this CPU has native bf16; --no-amp: float32)"
    return "float32 (this CPU has no native bf16)"


def add_run_options(parser: argparse.ArgumentParser, repeats: int) -> None:
    """--device, --threads, --repeats and --no-amp (``args.amp``), the same in every per-script benchmark."""
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"timed steps per row, after 2 untimed ones; the median is printed (default: {repeats})")
    parser.add_argument("--no-amp", dest="amp", action="store_false",
                        help="float32 throughout (default: the script's precision: bf16 autocast on a CPU with "
                             "native bf16, AMP on a GPU)")


def apply_run_options(args: argparse.Namespace) -> None:
    """Check --repeats and --threads (a UserError naming the flag) and apply --threads."""
    check_flags({"--repeats": args.repeats, "--threads": args.threads}, "must be >= 1", lambda v: v >= 1)
    if args.threads:
        torch.set_num_threads(args.threads)


def check_batch(args: argparse.Namespace) -> None:
    """--batch-size >= 2, as the scripts require: their networks' BatchNorm needs two images to train."""
    check_flags({"--batch-size": args.batch_size}, "must be >= 2 (BatchNorm needs two images per batch to train)",
                lambda v: v >= 2)


def setup(args: argparse.Namespace, shapes: str) -> torch.device:
    """Check and apply --threads and --repeats, pick --device, seed, and print the header line: machine, threads,
    torch, precision and the batch ``shapes``. Returns the device."""
    apply_run_options(args)
    device = pick_device(args.device)
    torch.manual_seed(0)
    print(f"device: {device} ({device_name(device)}), {torch.get_num_threads()} CPU threads, {os.cpu_count()} "
          f"cores, torch {torch.__version__}; {precision_label(device, args.amp)}; {shapes}")
    return device
