"""reproduce_unet_kd.py end to end at toy scale: what lands in the run folder, the teacher cache, and a run killed
with SIGKILL mid-training that, resumed, ends with exactly the numbers of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
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
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["job"] for r in records} == {"teacher_k4_bn", "headline_k2_alone", "headline_k2_soft",
                                           "headline_k2_mixed"}
    for name in ("headline_test_loss.png", "headline_predictions.png"):
        assert (out / "figures" / name).stat().st_size > 10_000
    assert (out / "cost.md").exists() and (out / "headline.csv").exists()
    assert "foreground IoU on the test slices: teacher" in first.stdout

    second = run(command(tmp_path / "run2", cache))
    assert "reusing" in second.stdout and "trained and cached" not in second.stdout
    assert read_results(tmp_path / "run2") == rows  # the same teacher and seeds give the same numbers


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
    evals = [(r["job"], r["iteration"]) for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
             if "test_loss" in r]
    assert len(evals) == len(set(evals)), "a resumed job logged an evaluation twice"
    finals = [r["job"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
              if r.get("event") == "final"]
    assert len(finals) == len(set(finals)), "a job finished before the kill logged its final line again"


def test_tiled_prediction_equals_whole_image_prediction_for_a_pointwise_model():
    import numpy as np
    import torch

    from common.datasets import normalize
    from reproduce_unet_kd import predict_tiled

    model = torch.nn.Conv2d(1, 2, kernel_size=1)  # no context: tiles must reproduce the whole-image output exactly
    images = np.random.default_rng(0).integers(0, 256, (2, 100, 130), dtype=np.uint8)
    tiled = predict_tiled(model, images, torch.device("cpu"), tile=64)
    assert tiled.shape == (2, 2, 100, 130)
    assert torch.allclose(tiled, model(normalize(images)[:, None]), atol=1e-6)
