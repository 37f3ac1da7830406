"""The GPU path (issue 17: "machines with CUDA take their own fastest path"). Skipped where PyTorch sees no GPU, as
in CI; on a machine with one, ``pytest tests/test_cuda.py`` runs each script's whole run at toy size
(``QUICK_RUNS``) on it and checks that its networks ran there under mixed precision -- bf16 autocast where the GPU
computes bf16, else fp16 with the gradient scaler of ``common.training`` -- and that ``--no-amp`` leaves them in
float32; and that ``benchmarks/compare.py`` runs its small-network and distillation tables on the GPU, and each
per-script benchmark its steps, under the GPU's mixed precision. The CPU's
own fallback (no native bf16: float32) is tested in test_training.py and test_reproduce_unet_kd.py."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from common.devices import autocast
from script_runs import BENCHMARK_TOY_RUNS, SCRIPT_MODULES, SMALLEST_RUNS, read_results, tiny, without

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (PyTorch sees none)")
ROOT = Path(__file__).resolve().parents[1]

# Each script's whole run in seconds: every phase at one or two steps (the sizes of its own end-to-end test).
QUICK_RUNS = {
    "unet": SMALLEST_RUNS["unet"],
    "fcn": ["--image-size", "32", "--crop", "32", "--train-images", "4", "--val-images", "2", "--batch-size", "2",
            "--epochs", "1", "--teacher-iterations", "2", "--pretrain-iterations", "2", "--pretrain-images", "4",
            "--eval-every-epochs", "1", "--profile-size", "64"],
    "deeplab": [*SMALLEST_RUNS["deeplab"], "--pretrain-iterations", "2"],
    "qkd": [*SMALLEST_RUNS["qkd"], "--pretrain-iterations", "1", "--iterations", "1", "--eval-every", "1",
            "--self-study", "1", "--co-study", "1", "--tutor", "1", "--teacher-iterations", "1", "--profile-size",
            "32", "--no-compile", "--bits", "4"],
    "intra": [*without(SMALLEST_RUNS["intra"], "--height", "--width"), "--height", "16", "--width", "32",
              "--iterations", "2", "--eval-every", "1", "--teacher-iterations", "1"],
}


def gpu_dtype() -> torch.dtype:
    """The reduced precision ``common.devices.autocast`` should pick on this GPU."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def test_autocast_on_the_gpu_computes_in_its_reduced_precision() -> None:
    gpu = torch.device("cuda")
    conv, x = nn.Conv2d(3, 4, 3).to(gpu), torch.randn(2, 3, 8, 8, device=gpu)
    with autocast(gpu, True):
        assert conv(x).dtype == gpu_dtype()
    with autocast(gpu, True, cpu_bf16=True):      # the CPU's switch does not change the GPU's choice
        assert conv(x).dtype == gpu_dtype()
    with autocast(gpu, False):
        assert conv(x).dtype == torch.float32


def autocasts_seen(monkeypatch) -> list[tuple[str, torch.dtype | None]]:
    """Record every ``torch.autocast`` that switches mixed precision on, from now on, as (device type, dtype); the
    regions that switch it off (a loss computed in float32, common/losses.py) are left out."""
    seen, real = [], torch.autocast

    def recording(device_type, *args, **kwargs):
        if kwargs.get("enabled", True):
            seen.append((device_type, kwargs.get("dtype")))
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", recording)
    return seen


def gradient_scalers_seen(monkeypatch) -> list[bool]:
    """Record whether each ``torch.amp.GradScaler`` made from now on is enabled."""
    seen, real = [], torch.amp.GradScaler

    def recording(*args, **kwargs):
        seen.append(kwargs.get("enabled", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", recording)
    return seen


def every_number_finite(rows: list[dict]) -> bool:
    numbers = []
    for row in rows:
        for value in row.values():
            try:
                numbers.append(float(value))
            except (TypeError, ValueError):
                continue
    return bool(numbers) and all(math.isfinite(v) for v in numbers)


@pytest.mark.parametrize("amp", [True, False], ids=["amp", "no-amp"])
@pytest.mark.parametrize("name", QUICK_RUNS)
def test_a_whole_run_on_the_gpu(name, amp, tmp_path, monkeypatch) -> None:
    argv = [a for a in tiny(tmp_path, *QUICK_RUNS[name]) if a not in ("--device", "cpu")] + ["--device", "cuda"]
    seen, scalers = autocasts_seen(monkeypatch), gradient_scalers_seen(monkeypatch)
    SCRIPT_MODULES[name].main(argv + ([] if amp else ["--no-amp"]))
    run = tmp_path / "run"
    assert every_number_finite(read_results(run))
    assert json.loads((run / "config.json").read_text())["amp"] is amp
    gpu_autocasts = [dtype for device, dtype in seen if device == "cuda"]
    if amp:
        assert gpu_autocasts and set(gpu_autocasts) == {gpu_dtype()}
    else:
        assert not gpu_autocasts
    assert not [device for device, _ in seen if device == "cpu"]   # nothing fell back to the CPU's path
    assert scalers and any(scalers) == (amp and gpu_dtype() == torch.float16)   # fp16 needs its loss scaled


def test_the_benchmark_runs_on_the_gpu() -> None:
    result = subprocess.run([sys.executable, "benchmarks/compare.py", "--only", "small", "distill", "--size", "64",
                             "--repeats", "1", "--warmup", "1", "--device", "cuda"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.cuda.get_device_name() in result.stdout.splitlines()[0]
    assert result.stdout.count("budget (plain + teacher forward + 10%)") == len(QUICK_RUNS)


@pytest.mark.parametrize("script", sorted(BENCHMARK_TOY_RUNS))
def test_each_per_script_benchmark_runs_on_the_gpu_in_amp(script: str) -> None:
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *BENCHMARK_TOY_RUNS[script], "--device", "cuda"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    header = result.stdout.splitlines()[0]
    assert header.startswith("device: cuda") and torch.cuda.get_device_name() in header
    assert f"AMP ({'bf16' if gpu_dtype() == torch.bfloat16 else 'fp16'})" in header
