"""Helpers the end-to-end tests of the reproduce_*.py scripts share."""
from __future__ import annotations

import csv
from pathlib import Path

import reproduce_deeplab_caspp
import reproduce_fcn_kd
import reproduce_intra_kd
import reproduce_qkd
import reproduce_unet_kd

SCRIPT_MODULES = {"unet": reproduce_unet_kd, "fcn": reproduce_fcn_kd, "deeplab": reproduce_deeplab_caspp,
                  "qkd": reproduce_qkd, "intra": reproduce_intra_kd}

# Each script's command line at small sizes (images, crops, batch; unet and deeplab at one iteration a job): what
# the bad-input tests add their one wrong flag to. Not all are quick whole runs: qkd, fcn and intra keep their
# default iteration counts.
SMALLEST_RUNS = {
    "unet": ["--iterations", "1", "--teacher-iterations", "1", "--batch-size", "2"],
    "fcn": ["--image-size", "32", "--crop", "32", "--train-images", "4", "--val-images", "2", "--batch-size", "2",
            "--pretrain-images", "4", "--profile-size", "32"],
    "deeplab": ["--iterations", "1", "--batch-size", "2", "--crop", "64", "--train-images", "2", "--val-images", "1",
                "--image-size", "64"],
    "qkd": ["--image-size", "32", "--crop", "32", "--train-images", "4", "--val-images", "2", "--batch-size", "2",
            "--no-int8"],
    "intra": ["--height", "32", "--width", "64", "--train-images", "4", "--val-images", "2", "--batch-size", "2"],
}

# Each per-script benchmark (benchmarks/) at toy shapes, one timed step per row.
BENCHMARK_TOY_RUNS = {
    "unet_kd_throughput.py": ["--crop", "16", "--batch-size", "2", "--repeats", "1"],
    "deeplab_throughput.py": ["--crop", "32", "--batch-size", "2", "--distill", "--repeats", "1"],
    "fcn_kd_throughput.py": ["--crop", "32", "--batch-size", "2", "--repeats", "1"],
    "qkd_throughput.py": ["--crop", "32", "--batch-size", "2", "--size", "64", "--no-compile", "--repeats", "1"],
    "intra_kd_throughput.py": ["--height", "32", "--width", "64", "--batch-size", "2", "--repeats", "1"],
}


def tiny(tmp_path: Path, *args: str, out: str = "run") -> list[str]:
    """A script's command line for a test: ``args``, its own run folder and cache under ``tmp_path``, on the CPU."""
    return [*args, "--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--device", "cpu"]


def without(argv: list[str], *flags: str) -> list[str]:
    """``argv`` less each of ``flags`` and its value."""
    kept, skip = [], False
    for word in argv:
        if skip or word in flags:
            skip = not skip
            continue
        kept.append(word)
    return kept


def read_results(folder: Path) -> list[dict]:
    """The rows of a run folder's results.csv."""
    with open(folder / "results.csv") as f:
        return list(csv.DictReader(f))
