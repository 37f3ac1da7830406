"""``--seeds N`` (common/seeds.py): the tables over seeds from written run folders, the command-line reading, and one
real run of a script with two seeds (slow tier)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.checks import at_least, teacher_margin, write_checks
from common.errors import UserError
from common.results import ResultsCSV
from common.seeds import first_student, seeds_request, summarize_seeds

ROOT = Path(__file__).resolve().parents[1]


def write_seed(folder: Path, teacher: float, alone: float, kd: float, rate_fraction: float) -> None:
    folder.mkdir(parents=True)
    results = ResultsCSV(folder / "results.csv")
    for model, iou in (("Net (teacher)", teacher), ("Net, alone", alone), ("Net + KD", kd)):
        results.add(experiment="B", model=model, iou=iou, loss=1 - iou)
    write_checks(folder, [teacher_margin(teacher, alone), at_least("rate-6 taps reading features", rate_fraction,
                                                                     0.5)], echo=False)


def rows_of(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_summary_means_spreads_and_effects(tmp_path):
    write_seed(tmp_path / "seed-0", 0.90, 0.50, 0.60, 0.6)
    write_seed(tmp_path / "seed-1", 0.92, 0.52, 0.62, 0.6)
    write_seed(tmp_path / "seed-2", 0.94, 0.54, 0.50, 0.4)
    text = summarize_seeds(tmp_path, [0, 1, 2])
    rows = {r["model"]: r for r in rows_of(tmp_path / "results_over_seeds.csv")}
    assert rows["Net, alone"]["iou"] == "0.5200 ± 0.0200" and rows["Net, alone"]["seeds"] == "3"
    assert rows["Net (teacher)"]["iou - baseline"] == "+0.4000" and rows["Net (teacher)"]["effect"] == "yes"
    # KD: mean 0.5733 (std 0.0643) vs 0.52 (std 0.02): +0.0533 is inside 0.0843, so not an effect
    assert rows["Net + KD"]["iou - baseline"] == "+0.0533"
    assert rows["Net + KD"]["effect"] == "no (within the spread)"
    assert rows["Net, alone"]["effect"] == "" and rows["Net, alone"]["baseline"] == "Net, alone"
    checks = {r["check"]: r for r in rows_of(tmp_path / "checks_over_seeds.csv")}
    assert checks["teacher mIoU above the student alone (points)"]["passed"] == "yes"
    assert checks["rate-6 taps reading features"]["passed"] == "NO (2 of 3 seeds)"
    # the failed check heads the results table
    results_md = (tmp_path / "results_over_seeds.md").read_text().splitlines()
    assert "CHECK FAILED" in results_md[2] and "rate-6" in results_md[2]
    assert "Mechanism checks over the seeds" in text


def test_one_seed_has_no_spread(tmp_path):
    write_seed(tmp_path / "seed-5", 0.9, 0.5, 0.6, 0.6)
    summarize_seeds(tmp_path, [5])
    rows = {r["model"]: r for r in rows_of(tmp_path / "results_over_seeds.csv")}
    assert rows["Net + KD"]["iou"] == "0.6000" and rows["Net + KD"]["effect"] == "- (one seed)"


def test_first_student_skips_teachers():
    assert first_student("B", ["FCN (teacher)", "FCN alone", "FCN + KD"]) == "FCN alone"
    assert first_student("B", ["Teacher net"]) is None
    assert first_student("h", ["64-UNet, hard", "2-UNet, hard (no teacher)", "2-UNet, soft"]) == \
        "2-UNet, hard (no teacher)"
    assert first_student("B", ["FCN (teacher)", "FCN + KD", "FCN alone"]) == "FCN alone"


def test_seeds_request_reads_only_several_seeds(tmp_path):
    assert seeds_request(["--k", "2"]) is None
    assert seeds_request(["--seeds", "1", "--k", "2"]) is None
    assert seeds_request(["--seeds", "3", "--help"]) is None
    request = seeds_request(["--seeds", "3", "--seed", "4", "--k", "2", "--out", "x"])
    assert (request.seeds, request.seed, request.out, request.rest) == (3, 4, "x", ["--k", "2"])
    with pytest.raises(UserError, match="--seeds 0"):
        seeds_request(["--seeds", "0"])
    (tmp_path / "seeds.json").write_text("{}")
    assert seeds_request(["--resume", str(tmp_path)]).resume == str(tmp_path)
    assert seeds_request(["--resume", str(tmp_path / "elsewhere")]) is None   # a one-seed run's folder


@pytest.mark.slow
def test_two_seeds_of_the_unet_script_end_to_end(tmp_path):
    """Two whole toy runs in seed-0/ and seed-1/, the tables over them, and --resume of the finished seeds."""
    out = tmp_path / "run"
    toy = ["--teacher", "4", "--teacher-iterations", "10", "--iterations", "10", "--eval-every", "5",
           "--checkpoint-every", "5", "--no-progress", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "reproduce_unet_kd.py", *toy, "--seeds", "2", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "seeds.json").read_text())["finished"] == [0, 1]
    for seed in (0, 1):
        assert json.loads((out / f"seed-{seed}" / "config.json").read_text())["seed"] == seed
        assert (out / f"seed-{seed}" / "checks.csv").is_file()
    rows = rows_of(out / "results_over_seeds.csv")
    assert [r["seeds"] for r in rows] == ["2"] * 4 and "±" in rows[1]["iou"]
    assert "teacher" in rows_of(out / "checks_over_seeds.csv")[0]["check"]
    again = subprocess.run([sys.executable, "reproduce_unet_kd.py", "--resume", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0 and "=== seed" not in again.stdout and "results over 2 seeds" in again.stdout
    bad = subprocess.run([sys.executable, "reproduce_unet_kd.py", "--resume", str(out), "--k", "3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--resume" in bad.stderr
