"""Mechanism checks: whether a run's miniature can show what its paper studies, measured in the run itself.

A miniature is only a reproduction if the mechanism its paper is about is alive in it: a teacher clearly stronger
than its student (else distillation can only pull the student down), atrous convolutions whose off-centre taps read
features rather than zero padding (source 004), class regions large enough at the feature stride for a variance and
a skewness (source 003). Each script measures its preconditions, and ``write_checks`` writes them to the run folder as
``checks.csv`` (columns ``check, value, required, passed``) and ``checks.md``, and prints them. A failed check is
stated at the top of every table it undermines (``failed_lines``, given to ``Table.warnings``), never hidden.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.runs import atomic_write_text

CHECK_COLUMNS = ["check", "value", "required", "passed"]


@dataclass(frozen=True)
class Check:
    """One measured precondition. ``about`` names the table(s) a failure undermines (not written to checks.csv)."""

    check: str
    value: float
    required: str
    passed: bool
    about: str = ""

    def row(self) -> dict:
        return {"check": self.check, "value": _number(self.value), "required": self.required,
                "passed": "yes" if self.passed else "no"}


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def at_least(check: str, value: float, minimum: float, about: str = "") -> Check:
    """``value >= minimum`` (a NaN value fails: nothing was measured)."""
    value = float(value)
    return Check(check, value, f">= {minimum:g}", bool(value >= minimum), about)


def teacher_margin(teacher: float, student: float, *, margin: float = 5.0, metric: str = "mIoU",
                   points: float = 100.0, about: str = "") -> Check:
    """The teacher's metric minus the student-alone row's, in points (``points`` x the metric, which the scripts
    keep in [0, 1]), at least ``margin``: a teacher that is not clearly better has nothing to teach. The margin is
    rounded to 1e-9 points, so that (0.55 - 0.50) x 100 = 4.999... counts as the 5 points it is."""
    return at_least(f"teacher {metric} above the student alone (points)", round((teacher - student) * points, 9),
                    margin, about)


# ------------------------------------------------------------------------------------------------ source 004
def atrous_tap_fraction(height: int, width: int, rate: int, kernel_size: int = 3) -> float:
    """The fraction of the off-centre taps of a ``kernel_size`` convolution with dilation ``rate`` and "same" zero
    padding, over all output positions of a ``height`` x ``width`` map, that read a feature (not padding).

    A tap at offset (dy, dx) x rate reads inside the map at (height - |dy| rate)+ x (width - |dx| rate)+ of the
    height x width positions. At rate >= the map side every off-centre tap reads padding and the convolution is a
    1x1 convolution (its centre tap) in disguise."""
    half = kernel_size // 2
    offsets = range(-half, half + 1)
    inside = 0
    for dy in offsets:
        for dx in offsets:
            if dy == 0 and dx == 0:
                continue
            inside += max(height - abs(dy) * rate, 0) * max(width - abs(dx) * rate, 0)
    return inside / ((kernel_size * kernel_size - 1) * height * width)


# ------------------------------------------------------------------------------------------------ source 003
def cells_per_class(labels: torch.Tensor, stride: int, num_classes: int, *, ignore_index: int = 255,
                    min_share: float = 0.0) -> torch.Tensor:
    """(N, num_classes) counts of the feature-map cells (``stride`` x ``stride`` pixel blocks of the (N, H, W) label
    maps) in which class c covers more than ``min_share`` of the labelled pixels: the support a per-class statistic
    over the feature map (a region's mean, variance, skewness) is computed on. Ignored pixels count for no class."""
    labels = labels.long()
    keep = labels != ignore_index
    onehot = F.one_hot(torch.where(keep, labels, 0), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * keep.unsqueeze(1)
    share = F.avg_pool2d(onehot, stride, stride, ceil_mode=True) * stride * stride
    labelled = F.avg_pool2d(keep.unsqueeze(1).float(), stride, stride, ceil_mode=True) * stride * stride
    share = share / labelled.clamp(min=1)
    return (share > min_share).sum(dim=(2, 3))


def median_cells(counts: torch.Tensor) -> list[float]:
    """Per class, the median of ``cells_per_class`` counts over the images in which the class occurs (NaN for a
    class no image holds)."""
    medians = []
    for column in counts.T:
        present = column[column > 0].double()
        medians.append(float(present.median()) if present.numel() else float("nan"))
    return medians


# ------------------------------------------------------------------------------------------------ the files
def write_checks(folder: Path, checks: Sequence[Check], *, echo: bool = True) -> str:
    """``checks.csv`` and ``checks.md`` in ``folder``; prints the Markdown (unless ``echo`` is False) and returns it."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CHECK_COLUMNS)
    writer.writeheader()
    writer.writerows(c.row() for c in checks)
    atomic_write_text(Path(folder) / "checks.csv", buf.getvalue())
    text = checks_markdown(checks)
    atomic_write_text(Path(folder) / "checks.md", text)
    if echo:
        print("\n" + text, flush=True)
    return text


def checks_markdown(checks: Sequence[Check]) -> str:
    failed = [c for c in checks if not c.passed]
    lines = ["### Mechanism checks (does this miniature test its paper?)", ""]
    if failed:
        lines += [f"**{len(failed)} of {len(checks)} checks FAILED**: the tables they undermine say so at their top.",
                  ""]
    if not checks:
        return "\n".join(lines + ["(no mechanism check applies to the experiments of this run)"]) + "\n"
    lines += ["| check | value | required | passed |", "|---|---|---|---|"]
    lines += [f"| {c.check} | {_number(c.value)} | {c.required} | {'yes' if c.passed else '**NO**'} |" for c in checks]
    return "\n".join(lines) + "\n"


def failed_lines(checks: Iterable[Check], table: str | None = None) -> list[str]:
    """One line per failed check that undermines ``table`` (every failed check when ``table`` is None, or when a
    check names no table), for the top of that table."""
    return [f"CHECK FAILED: {c.check} = {_number(c.value)}, required {c.required}; this table cannot show the "
            f"paper's effect" for c in checks
            if not c.passed and (table is None or not c.about or table in c.about)]


def read_checks(folder: Path) -> list[dict]:
    """The rows of a run folder's checks.csv ([] when the run wrote none)."""
    path = Path(folder) / "checks.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of ``values``; the deviation is NaN for fewer than two values."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else float("nan")
