"""The results writer: tables in Markdown and CSV with the paper's numbers beside ours, results.csv, figures."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from common.results import RESULTS_COLUMNS, ResultsCSV, Table, format_cell, plot_curves, plot_panel, plot_scatter


def test_table_markdown_and_csv_hold_the_same_cells(tmp_path):
    table = Table("Table 2", ["T", "Test loss (paper)", "Test loss (ours)"], notes=["our note"])
    table.add(1, 0.111, 0.09876543)
    table.add(0.1, None, "Div.")
    table.write(tmp_path, "table2")
    md = (tmp_path / "table2.md").read_text().splitlines()
    assert md[0] == "### Table 2"
    assert md[2] == "| T | Test loss (paper) | Test loss (ours) |"
    assert md[4] == "| 1 | 0.1110 | 0.0988 |"
    assert md[5] == "| 0.1000 | - | Div. |"
    assert md[-1] == "- our note"
    rows = list(csv.reader(open(tmp_path / "table2.csv")))
    assert rows == [["T", "Test loss (paper)", "Test loss (ours)"], ["1", "0.1110", "0.0988"],
                    ["0.1000", "-", "Div."]]


def test_table_rejects_a_row_of_the_wrong_length():
    with pytest.raises(ValueError):
        Table("t", ["a", "b"]).add(1)


def test_format_cell():
    assert format_cell(31042434) == "31,042,434"
    assert format_cell(float("nan")) == "-" and format_cell(None) == "-"
    assert format_cell(True) == "yes" and format_cell(np.float32(0.5)) == "0.5000"
    assert format_cell(1234.5) == "1,234"


def test_results_csv_has_one_row_per_model_and_rejects_unknown_columns(tmp_path):
    results = ResultsCSV(tmp_path / "results.csv")
    results.add(experiment="headline", model="2-UNet", params=30902, loss=0.1, iou=0.7)
    results.add(experiment="headline", model="2-UNet", params=30902, loss=0.05, iou=0.8)  # a rerun replaces it
    results.add(experiment="headline", model="64-UNet", params=31042434, loss=0.03, iou=0.85)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert list(rows[0]) == RESULTS_COLUMNS
    assert [(r["model"], r["iou"]) for r in rows] == [("2-UNet", "0.8"), ("64-UNet", "0.85")]
    with pytest.raises(ValueError, match="unknown"):
        results.add(experiment="x", model="y", accuracy=1.0)


def test_figures_are_written(tmp_path):
    plot_curves(tmp_path / "c.png", {"ours": ([0.1, 1, 4], [None, 0.2, 0.1])}, "sweep", logx=True, marker="o",
                hline=(0.2, "barrier"))
    plot_panel(tmp_path / "p.png", [[("image", np.zeros((8, 8), np.uint8) + 100),
                                     ("mask", np.eye(8, dtype=np.uint8))]])
    # colour images and colourised masks (H, W, 3), heat maps (float H, W); IoU against MAdds
    plot_panel(tmp_path / "h.png", [[("rgb", np.zeros((8, 8, 3), np.uint8)), ("heat", np.random.rand(8, 8))]],
               cmap="magma")
    plot_scatter(tmp_path / "s.png", {"ours": ([1.0, 2.0], [30.0, 40.0], ["a", "b"])}, "IoU", "GMAdds", "IoU")
    for name in ("c.png", "p.png", "h.png", "s.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert not list(tmp_path.glob("*.tmp*"))


def test_running_mean_averages_the_last_window_values():
    from common.results import running_mean

    assert running_mean([1.0, 2.0, 3.0, 4.0], window=2) == [1.0, 1.5, 2.5, 3.5]
    assert running_mean([], window=3) == []
