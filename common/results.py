"""Writing results: tables in the paper's layout (Markdown + CSV, the paper's numbers beside ours),
``results.csv`` (one row per trained model, the same shape in every script), and matplotlib figures.
"""
from __future__ import annotations

import csv
import math
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.runs import atomic_write_text

RESULTS_COLUMNS = ["experiment", "model", "params", "macs", "loss", "iou", "iterations", "notes"]


@dataclass
class Table:
    """A table as the paper prints it. Columns holding the paper's numbers say "(paper)", ours "(ours)"."""

    title: str
    header: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # failed mechanism checks (common.checks), atop the Markdown;
    #                                                     the CSV stays machine-readable (checks.csv has them)

    def add(self, *cells) -> None:
        if len(cells) != len(self.header):
            raise ValueError(f"row has {len(cells)} cells, header {len(self.header)}")
        self.rows.append(list(cells))

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""] + [f"**{w}**" for w in self.warnings] + ([""] if self.warnings else [])
        lines += ["| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(format_cell(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.header)
        writer.writerows([[format_cell(c) for c in row] for row in self.rows])
        return buf.getvalue()

    def write(self, folder: Path, stem: str) -> None:
        atomic_write_text(folder / f"{stem}.md", self.markdown())
        atomic_write_text(folder / f"{stem}.csv", self.csv())


def format_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return str(value)


class ResultsCSV:
    """``results.csv``: one row per trained model (columns RESULTS_COLUMNS), rewritten after every model."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []

    def add(self, **row) -> None:
        unknown = set(row) - set(RESULTS_COLUMNS)
        if unknown:
            raise ValueError(f"unknown results.csv columns {sorted(unknown)}")
        self.rows = [r for r in self.rows if (r["experiment"], r["model"]) != (row["experiment"], row["model"])]
        self.rows.append({c: row.get(c, "") for c in RESULTS_COLUMNS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, RESULTS_COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


# ------------------------------------------------------------------------------------------------ figures
def running_mean(values: Sequence[float], window: int = 10) -> list[float]:
    """The mean of the last ``window`` values at each position (fewer at the start): smooths loss curves."""
    c = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    return [(c[i + 1] - c[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]


def plot_curves(path: Path, curves: dict[str, tuple[Sequence[float], Sequence[float | None]]], title: str,
                xlabel: str = "iteration", ylabel: str = "cross-entropy", hline: tuple[float, str] | None = None,
                logx: bool = False, logy: bool = False, marker: str | None = None) -> None:
    """Line plot of named (x, y) curves (None in y leaves a gap), optionally with a labelled horizontal line
    such as a loss barrier. With ``marker="o"`` it serves sweeps, e.g. ours against the paper's loss over T."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (x, y) in curves.items():
        ax.plot(x, np.array([np.nan if v is None else v for v in y], dtype=float), label=label, lw=1.4,
                marker=marker)
    if hline is not None:
        ax.axhline(hline[0], color="k", ls="--", lw=1, label=hline[1])
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_panel(path: Path, rows: list[list[tuple[str, np.ndarray]]], title: str = "", cmap: str = "gray") -> None:
    """A grid of images: each row a list of (caption, array). (H, W, 3) arrays are shown in colour (images,
    colourised masks); small-integer (H, W) arrays as masks in a fixed map; other (H, W) arrays in ``cmap``, each
    with its own scale (grey images, or heat maps such as attention maps with ``cmap="magma"``)."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.6 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                caption, array = row[c]
                if array.ndim == 3:
                    ax.imshow(array, interpolation="nearest")
                else:
                    is_mask = np.issubdtype(array.dtype, np.integer) and array.max() < 32
                    ax.imshow(array, cmap="viridis" if is_mask else cmap, interpolation="nearest",
                              vmin=0 if is_mask else None, vmax=1 if is_mask else None)
                ax.set_title(caption, fontsize=9)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_curve_panels(path: Path, panels: list[tuple[str, tuple[Sequence[float], Sequence[float]]]], title: str,
                      shared: dict[str, tuple[Sequence[float], Sequence[float]]],
                      ylabel: str = "training loss (mean of 10)",
                      shared_title: str = "validation cross-entropy (comparable)",
                      shared_ylabel: str = "val CE") -> None:
    """One panel per (label, (x, y)) curve, each with its own y axis -- for curves of different objectives, whose
    values are not comparable -- and a last panel with the ``shared`` curves on one axis (a quantity all of them
    are measured by, e.g. the validation cross-entropy)."""
    n = len(panels) + 1
    cols = min(3, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.6 * cols, 3.4 * math.ceil(n / cols)),
                             squeeze=False)
    for ax, (label, (x, y)) in zip(axes.flat, panels):
        ax.plot(x, y, lw=1.2)
        ax.set_title(label, fontsize=7.5)
        ax.set(xlabel="iteration", ylabel=ylabel)
        ax.grid(alpha=0.3)
    ax = axes.flat[len(panels)]
    for label, (x, y) in shared.items():
        ax.plot(x, y, marker="o", lw=1.2, label=label)
    ax.set_title(shared_title, fontsize=8)
    ax.set(xlabel="iteration", ylabel=shared_ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    for extra in list(axes.flat)[n:]:
        extra.axis("off")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def plot_scatter(path: Path, series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[str]]],
                 title: str, xlabel: str, ylabel: str) -> None:
    """Named point sets (x, y, point labels), each point annotated with its label: e.g. IoU against MAdds."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for (name, (xs, ys, labels)), marker in zip(series.items(), "osD^v"):
        ax.scatter(xs, ys, label=name, marker=marker, s=28)
        for x, y, text in zip(xs, ys, labels):
            ax.annotate(text, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
