"""Tests for benchmarks/compare.py: the distillation budget's arithmetic and verdicts (smoke tier), and that its
distillation table runs for all five scripts and prints a verdict for each (slow tier: a subprocess building
every script's teacher and student). Speeds themselves are not tested: they are the benchmark's output."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

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
