"""Tests for the benchmarks: compare.py's distillation budget (arithmetic and verdicts) and the precision the
per-script benchmarks announce (smoke tier); that compare.py's distillation table runs for all five scripts and
prints a verdict for each, and that each per-script benchmark runs at toy size in the precision the scripts train
in (slow tier: subprocesses building every script's networks). Speeds themselves are not tested: they are the
benchmarks' output."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from script_runs import BENCHMARK_TOY_RUNS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("reproduce_unet_kd.py", "reproduce_fcn_kd.py", "reproduce_deeplab_caspp.py", "reproduce_qkd.py",
           "reproduce_intra_kd.py")


def load_compare():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def candidate(compare, label: str, seconds: list[float]):
    return compare.Candidate(label, lambda: None, "fp32", None, seconds)


def test_budget_is_plain_plus_teacher_plus_ten_percent(capsys):
    compare = load_compare()
    # plain 100 ms, teacher 50 ms: budget 1.1 * 150 = 165 ms; 160 ms is within, 170 ms over (medians of 3)
    steps = [candidate(compare, "S, plain step", [0.099, 0.100, 0.300]),
             candidate(compare, "T teacher, forward", [0.050, 0.040, 0.060]),
             candidate(compare, "S, kd step (teacher forward inside)", [0.160, 0.150, 0.400]),
             candidate(compare, "S, at-all step (teacher forward inside)", [0.170, 0.170, 0.170])]
    compare.print_distillation_budget(steps)
    line = capsys.readouterr().out.strip()
    assert line.startswith("budget (plain + teacher forward + 10%): 165.0 ms")
    assert "kd 160.0 ms (0.97 of it: within)" in line
    assert "at-all 170.0 ms (1.03 of it: OVER)" in line


@pytest.mark.slow
def test_distillation_table_runs_for_every_script():
    result = subprocess.run([sys.executable, "benchmarks/compare.py", "--only", "distill", "--size", "64",
                             "--repeats", "1", "--warmup", "0", "--fp32-only"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    tables = result.stdout.split("### ")[1:]
    assert [t.split(":")[0].split()[0] for t in tables] == list(SCRIPTS)
    for table in tables:
        assert "budget (plain + teacher forward + 10%)" in table
        assert ("within" in table) or ("OVER" in table)


def load_timing():
    """benchmarks/timing.py, imported as the benchmarks import it (their folder on the path)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import timing
    return timing


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("amp", [True, False])
def test_precision_label_says_what_autocast_computes(monkeypatch, native, amp):
    """The header of every per-script benchmark names the precision the scripts' ``autocast(device, amp,
    cpu_bf16=True)`` really computes in on this CPU (before 2026-12-07 three of them timed float32 on CPUs with
    native bf16 while the scripts trained in bf16)."""
    import common.devices as devices

    timing = load_timing()
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: native)
    monkeypatch.setattr(timing, "cpu_supports_bf16", lambda: native)
    cpu = torch.device("cpu")
    with devices.autocast(cpu, amp, cpu_bf16=True):
        dtype = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype
    label = timing.precision_label(cpu, amp)
    assert ("bf16 autocast" in label) == (dtype == torch.bfloat16)
    assert label.startswith("float32") == (dtype == torch.float32)
    assert ("--no-amp" in label) == (not amp or native)   # names the flag wherever it changes something


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHMARK_TOY_RUNS))
def test_per_script_benchmark_runs_in_the_scripts_precision(script):
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *BENCHMARK_TOY_RUNS[script], "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    header, *rows = result.stdout.splitlines()
    timing = load_timing()
    assert timing.precision_label(torch.device("cpu"), True) in header
    timings = [row for row in rows if re.search(r"\s\d+\.\d\s+\d+\.\d", row)]
    assert len(timings) >= 3, result.stdout


# A mistake in a benchmark's flags: one line naming the flag, exit status 2, before any network is built. Each case
# runs the file's real ``__main__`` block in this process (runpy), so a benchmark that called ``main()`` without
# ``exit_on_user_error`` would fail here with the traceback its users would have seen.
BAD_BENCHMARK_FLAGS = [
    ("compare.py", ["--repeats", "0"], "--repeats 0: must be >= 1"),
    ("compare.py", ["--size", "40"], "--size 40: must be one of the multiples of 16"),
    ("unet_kd_throughput.py", ["--crop", "30"], "--crop 30: must be a positive multiple of 16"),
    ("unet_kd_throughput.py", ["--threads", "0"], "--threads 0: must be >= 1"),
    ("deeplab_throughput.py", ["--batch-size", "1"], "--batch-size 1: must be >= 2"),
    ("fcn_kd_throughput.py", ["--experiment", "A", "--crop", "64"], "--crop sets experiment B's crop"),
    ("fcn_kd_throughput.py", ["--crop", "16"], "--crop 16: must be >= 32"),
    ("qkd_throughput.py", ["--size", "100"], "--size 100: must be one of the positive multiples of 16"),
    ("intra_kd_throughput.py", ["--teacher-checkpoint", "t.pt"], "--teacher-checkpoint is read only with --moments"),
    ("intra_kd_throughput.py", ["--moments", "--height", "32"], "--height is not used by --moments"),
    ("intra_kd_throughput.py", ["--width", "60"], "--width 60: must be one of the multiples of 8"),
]


@pytest.mark.parametrize("script, argv, message", BAD_BENCHMARK_FLAGS)
def test_benchmark_flag_mistake_is_one_line_and_exit_2(monkeypatch, capsys, script, argv, message):
    import runpy

    path = ROOT / "benchmarks" / script
    monkeypatch.setattr(sys, "argv", [str(path), *argv, "--device", "cpu"])
    monkeypatch.setattr(sys, "path", list(sys.path))   # the benchmarks put their folders on it
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {err[len('error: '):].strip()}\n", err   # exactly one line
    assert message in err
