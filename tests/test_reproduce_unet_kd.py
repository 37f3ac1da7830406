"""reproduce_unet_kd.py: the source's objective L_KD, and the script end to end at toy scale: what lands in the run
folder, the teacher cache, and a run killed with SIGKILL mid-training that, resumed, ends with exactly the numbers
of an uninterrupted run. The subprocess runs are marked slow; one tiny in-process run stays in the fast tier."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reproduce_unet_kd as script
from script_runs import read_results

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--teacher", "4", "--teacher-iterations", "30", "--iterations", "60", "--eval-every", "10",
       "--checkpoint-every", "10", "--no-progress"]


def command(out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "reproduce_unet_kd.py", *TOY, "--out", str(out), "--cache-dir", str(cache), *extra]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- the objective
def test_kd_objective_is_the_sources_L_KD():
    """hard: H(y, P_S); soft: tau^2 H(P_T^tau, P_S^tau); mixed: hard + lambda * soft; the KL logged beside."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 2, 8, 8, generator=g)
    target = torch.randint(0, 2, (2, 8, 8), generator=g)
    T, lam, w = 4.0, 0.5, torch.tensor([0.8, 3.0])

    hard, logs = script.kd_objective("hard", student, target, None, T, lam, w)
    expected_hard = F.cross_entropy(student, target, weight=w)   # weighted mean over pixels
    assert torch.allclose(hard, expected_hard) and set(logs) == {"train_hard"}

    soft, logs = script.kd_objective("soft", student, target, teacher, T, lam)
    p_t, log_p_s = F.softmax(teacher / T, 1), F.log_softmax(student / T, 1)
    expected_soft = T * T * -(p_t * log_p_s).sum(1).mean()
    assert torch.allclose(soft, expected_soft)                   # lambda applies to "mixed" only
    entropy = T * T * -(p_t * p_t.log()).sum(1).mean()
    assert torch.allclose(logs["train_soft_kl"], expected_soft - entropy, atol=1e-5)   # KL = H - H(P_T)

    mixed, logs = script.kd_objective("mixed", student, target, teacher, T, lam, w)
    assert torch.allclose(mixed, expected_hard + lam * expected_soft)
    assert set(logs) == {"train_hard", "train_soft", "train_soft_kl"}
    assert torch.allclose(logs["train_soft"], expected_soft)    # the soft term as trained, before lambda

    with pytest.raises(ValueError, match="objective"):
        script.kd_objective("sequential", student, target, teacher, T, lam)


# ----------------------------------------------------------------------------------------------- the averaged loss
def test_moving_average_min_window_2():
    # windows of 2: [2, 1.5, 3.5, 2.5, 0] -> 0.0, window ending at index 5
    value, index = script.moving_average_min([3, 1, 2, 5, 0, 0], 2)
    assert value == 0.0 and index == 5


def test_moving_average_min_window_3():
    # windows of 3: [2, 8/3, 7/3, 5/3] -> 5/3, window ending at index 5
    value, index = script.moving_average_min([3, 1, 2, 5, 0, 0], 3)
    assert value == pytest.approx(5 / 3) and index == 5


def test_moving_average_min_interior_minimum():
    # windows of 2: [4, 3, 1.5, 3] -> 1.5, window [2, 1] ending at index 3
    value, index = script.moving_average_min([4, 4, 2, 1, 5], 2)
    assert value == pytest.approx(1.5) and index == 3


def test_moving_average_min_short_and_empty():
    value, index = script.moving_average_min([1.0, 2.0, 6.0], 5)
    assert value == pytest.approx(3.0) and index == 2
    value, index = script.moving_average_min([1.0, 2.0, 6.0], 3)  # exactly one window
    assert value == pytest.approx(3.0) and index == 2
    value, index = script.moving_average_min([], 3)
    assert math.isnan(value) and index == -1


def test_tiled_prediction_equals_whole_image_prediction_for_a_pointwise_model():
    from common.em_data import normalize

    model = torch.nn.Conv2d(1, 2, kernel_size=1)  # no context: tiles must reproduce the whole-image output exactly
    images = np.random.default_rng(0).integers(0, 256, (2, 100, 130), dtype=np.uint8)
    tiled = script.predict_tiled(model, images, torch.device("cpu"), tile=64)
    assert tiled.shape == (2, 2, 100, 130)
    assert torch.allclose(tiled, model(normalize(images)[:, None]), atol=1e-6)


# ----------------------------------------------------------------------------------------------- end to end
# a toy data set (the default preset's fields that no flag sets), so that the in-process run takes seconds
TINY_DATA = dict(train_slices=4, test_slices=2, slice_size=64, n_t=4, eval_tile=64, alpha_t=4, beta_t=2)
TINY_FLAGS = ["--teacher", "2", "--k", "1", "--teacher-iterations", "4", "--iterations", "4", "--eval-every", "2",
              "--checkpoint-every", "2", "--batch-size", "2", "--crop", "32", "--no-progress", "--device", "cpu"]


def test_tiny_headline_in_process(tmp_path, monkeypatch, capsys):
    """The default command at toy scale, in this process: every file of the run folder, the teacher cached and
    then reused, and the "final" log line of each job (its test metrics and averaged losses, no prediction)."""
    monkeypatch.setitem(script.PRESETS, "default", TINY_DATA)
    cache = tmp_path / "cache"
    script.main([*TINY_FLAGS, "--out", str(tmp_path / "run"), "--cache-dir", str(cache)])
    out = capsys.readouterr().out
    assert "teacher 2-UNet: trained and cached" in out and "foreground IoU on the test slices: teacher" in out
    assert "run folder:" in out and "done in" in out
    run = tmp_path / "run"
    rows = read_results(run)
    assert [r["model"] for r in rows] == ["2-UNet with BN, hard", "1-UNet BN+CW, hard (no teacher)",
                                          "1-UNet BN, soft T=4.0", "1-UNet BN+CW, mixed T=4.0 lambda=1.0"]
    assert all(r["iterations"] == "4" and int(r["params"]) > 0 and int(r["macs"]) > 0 for r in rows)
    assert json.loads((run / "config.json").read_text())["slice_size"] == 64
    finals = [r for r in records(run) if r.get("event") == "final"]
    assert [r["job"] for r in finals] == ["teacher_k2_bn", "headline_k1_alone", "headline_k1_soft",
                                          "headline_k1_mixed"]
    for r in finals:
        assert {"loss", "iou", "pixel_accuracy", "train_loss_avg", "test_loss_avg", "test_loss_min",
                "iteration_at_min", "iterations_run", "diverged", "stuck"} <= set(r)
        assert "prediction" not in r
    logged = {k for r in records(run) if r.get("job") == "headline_k1_mixed" for k in r}
    assert {"train_hard", "train_soft", "train_soft_kl", "test_loss"} <= logged
    for name in ("cost.md", "cost.csv", "headline.md", "headline.csv", "figures/headline_test_loss.png",
                 "figures/headline_predictions.png"):
        assert (run / name).is_file(), name
    assert len(list(cache.glob("unet_k2_bn_*.pt"))) == 1

    script.main([*TINY_FLAGS, "--out", str(tmp_path / "run2"), "--cache-dir", str(cache)])
    out = capsys.readouterr().out
    assert "teacher 2-UNet: reusing" in out and "trained and cached" not in out
    assert read_results(tmp_path / "run2") == rows   # the same teacher and seeds give the same numbers


@pytest.mark.slow
def test_headline_writes_the_run_folder_and_reuses_the_cached_teacher(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    first = run(command(out, cache))
    assert "trained and cached" in first.stdout
    rows = read_results(out)
    assert [r["model"].split(",")[0] for r in rows] == ["4-UNet with BN", "2-UNet BN+CW", "2-UNet BN",
                                                        "2-UNet BN+CW"]
    assert {"model", "params", "loss", "iou"} <= set(rows[0])
    assert rows[0]["params"] == "122394" and rows[1]["params"] == "30902"
    for r in rows:
        assert 0.0 <= float(r["iou"]) <= 1.0 and float(r["loss"]) > 0
    table = (out / "headline.md").read_text()
    assert "IoU (paper)" in table and "IoU (ours)" in table and "0.7520" in table  # the source's soft-training IoU
    assert json.loads((out / "config.json").read_text())["teacher"] == 4
    assert {r["job"] for r in records(out)} == {"teacher_k4_bn", "headline_k2_alone", "headline_k2_soft",
                                                "headline_k2_mixed"}
    for name in ("headline_test_loss.png", "headline_predictions.png"):
        assert (out / "figures" / name).stat().st_size > 10_000
    assert (out / "cost.md").exists() and (out / "headline.csv").exists()
    assert "foreground IoU on the test slices: teacher" in first.stdout

    second = run(command(tmp_path / "run2", cache))
    assert "reusing" in second.stdout and "trained and cached" not in second.stdout
    assert read_results(tmp_path / "run2") == rows  # the same teacher and seeds give the same numbers


@pytest.mark.slow
def test_run_killed_mid_training_resumes_to_the_same_numbers(tmp_path):
    cache = tmp_path / "cache"
    run(command(tmp_path / "uninterrupted", cache))          # also fills the teacher cache
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(killed, cache), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    checkpoint = killed / "checkpoints" / "headline_k2_soft.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the run ended before its first checkpoint of the soft student"
    assert not (killed / "results.csv").exists() or len(read_results(killed)) < 4  # it really was cut short

    resumed = run([sys.executable, "reproduce_unet_kd.py", "--resume", str(killed), "--no-progress"])
    assert "resuming" in resumed.stdout
    assert read_results(killed) == read_results(tmp_path / "uninterrupted")
    evals = [(r["job"], r["iteration"]) for r in records(killed) if "test_loss" in r]
    assert len(evals) == len(set(evals)), "a resumed job logged an evaluation twice"
    finals = [r["job"] for r in records(killed) if r.get("event") == "final"]
    assert len(finals) == len(set(finals)), "a job finished before the kill logged its final line again"
