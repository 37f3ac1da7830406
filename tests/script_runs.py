"""Helpers the end-to-end tests of the reproduce_*.py scripts share."""
from __future__ import annotations

import csv
from pathlib import Path


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
