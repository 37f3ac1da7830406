"""The mechanism checks (common/checks.py): the measurements on hand-computable inputs, and the files they write."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from common.checks import (at_least, atrous_tap_fraction, cells_per_class, failed_lines, median_cells, read_checks,
                           spread, teacher_margin, write_checks)
from common.results import Table


def test_atrous_tap_fraction_on_a_16x16_map_by_hand():
    # rate 6: an edge tap reads inside at 10 of 16 rows (x 16 columns), a corner tap at 10 x 10 of 16 x 16
    assert atrous_tap_fraction(16, 16, 6) == pytest.approx((4 * 10 / 16 + 4 * 100 / 256) / 8)
    assert atrous_tap_fraction(16, 16, 12) == pytest.approx((4 * 4 / 16 + 4 * 16 / 256) / 8)   # 0.156
    assert atrous_tap_fraction(16, 16, 18) == 0.0   # the thesis's 256-px crops at OS16: rate 18 reads only padding
    assert atrous_tap_fraction(4, 4, 6) == 0.0      # 64-px crops at OS16: every atrous rate is a 1x1 convolution


def test_atrous_tap_fraction_rate_one_on_3x3_and_a_wide_map():
    assert atrous_tap_fraction(3, 3, 1) == pytest.approx((4 * 2 / 3 + 4 * 4 / 9) / 8)
    assert atrous_tap_fraction(1000, 1000, 1) == pytest.approx(1.0, abs=2e-3)
    assert atrous_tap_fraction(8, 32, 6) == pytest.approx((2 * 2 / 8 + 2 * 26 / 32 + 4 * (2 / 8) * (26 / 32)) / 8)


def test_cells_per_class_on_a_written_label_map():
    labels = torch.tensor([[[0, 0, 1, 1],
                            [0, 2, 1, 1],
                            [0, 0, 0, 0],
                            [255, 255, 0, 2]]])
    counts = cells_per_class(labels, 2, 3)
    # 2x2 cells: top-left {0,0,0,2}, top-right {1,1,1,1}, bottom-left {0,0,ignored,ignored}, bottom-right {0,0,0,2}
    assert counts.tolist() == [[3, 1, 2]]
    # a class must cover more than half of a cell's labelled pixels: class 2 (1 of 4) no longer counts
    assert cells_per_class(labels, 2, 3, min_share=0.5).tolist() == [[3, 1, 0]]


def test_cells_per_class_of_a_one_pixel_region_and_an_all_ignored_image():
    one_pixel = torch.zeros(1, 8, 8, dtype=torch.long)
    one_pixel[0, 5, 5] = 1
    assert cells_per_class(one_pixel, 4, 2).tolist() == [[4, 1]]
    ignored = torch.full((1, 4, 4), 255)
    assert cells_per_class(ignored, 2, 2).tolist() == [[0, 0]]


def test_median_cells_skips_images_without_the_class():
    counts = torch.tensor([[5, 0], [1, 0], [3, 0], [0, 0]])
    medians = median_cells(counts)
    assert medians[0] == 3.0 and math.isnan(medians[1])


def test_teacher_margin_and_at_least():
    check = teacher_margin(0.70, 0.60, margin=5.0)
    assert "teacher" in check.check and check.value == pytest.approx(10.0) and check.passed
    assert not teacher_margin(0.62, 0.60).passed
    exactly_five = 0.12 + 0.05                       # (exactly_five - 0.12) * 100 is 4.999... in floats
    assert (exactly_five - 0.12) * 100 < 5 and teacher_margin(exactly_five, 0.12).passed
    assert not teacher_margin(0.1699, 0.12).passed
    assert not at_least("x", float("nan"), 0.0).passed   # nothing measured is not a pass
    assert at_least("x", 0.5, 0.5).passed


def test_write_checks_files_and_failed_lines_atop_a_table(tmp_path):
    checks = [teacher_margin(0.9, 0.5, about="table_a"), at_least("rate-12 taps reading features", 0.16, 0.5,
                                                                  about="table_b")]
    text = write_checks(tmp_path, checks, echo=False)
    with open(tmp_path / "checks.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["check", "value", "required", "passed"]
    assert [r["passed"] for r in rows] == ["yes", "no"] and rows[1]["required"] == ">= 0.5"
    assert read_checks(tmp_path) == rows
    assert "FAILED" in text and (tmp_path / "checks.md").read_text() == text
    assert failed_lines(checks, "table_a") == []
    lines = failed_lines(checks, "table_b")
    assert len(lines) == 1 and "rate-12" in lines[0]
    table = Table("Table B", ["model", "mIoU"], warnings=lines)
    table.add("student", 0.5)
    markdown = table.markdown().splitlines()
    assert markdown[0] == "### Table B" and "CHECK FAILED" in markdown[2]
    assert table.csv().splitlines()[0] == "model,mIoU"   # the CSV stays machine-readable


def test_spread():
    assert spread([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    mean, std = spread([4.0])
    assert mean == 4.0 and math.isnan(std)
