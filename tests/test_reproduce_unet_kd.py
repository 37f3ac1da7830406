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
from common.checks import read_checks
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
    assert set(logs) == {"train_hard", "train_soft", "train_soft_t2", "train_soft_kl"}
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
    # the mechanism check: teacher minus student-alone IoU in points, from this run's own rows (issue 16)
    check, = read_checks(run)
    assert "teacher" in check["check"] and check["required"] == ">= 5"
    assert float(check["value"]) == pytest.approx(100 * (float(rows[0]["iou"]) - float(rows[1]["iou"])), abs=0.01)
    headline = (run / "headline.md").read_text()
    assert ("CHECK FAILED" in headline) == (check["passed"] == "no") and "Mechanism checks" in out
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


# ----------------------------------------------------------------------------------------------- readings of issue 15
def test_kd_objective_tau_squared_reading():
    """--no-tau-squared trains the printed H(P_T^tau, P_S^tau); the default multiplies it by tau^2. Table 5's
    reported terms (x T^2) are logged the same under both readings. Degenerate case: tau = 1 makes them equal."""
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    T, lam = 3.0, 0.5
    h = -(F.softmax(teacher / T, 1) * F.log_softmax(student / T, 1)).sum(1).mean()
    plain, plain_logs = script.kd_objective("soft", student, target, teacher, T, lam, tau_squared=False)
    scaled, scaled_logs = script.kd_objective("soft", student, target, teacher, T, lam, tau_squared=True)
    assert torch.allclose(plain, h) and torch.allclose(scaled, T * T * h)
    for key in ("train_soft_t2", "train_soft_kl"):
        assert torch.allclose(plain_logs[key], scaled_logs[key])
    assert torch.allclose(plain_logs["train_soft_t2"], T * T * h)
    mixed, _ = script.kd_objective("mixed", student, target, teacher, T, lam, tau_squared=False)
    assert torch.allclose(mixed, F.cross_entropy(student, target) + lam * h)
    one_plain, _ = script.kd_objective("soft", student, target, teacher, 1.0, lam, tau_squared=False)
    one_scaled, _ = script.kd_objective("soft", student, target, teacher, 1.0, lam, tau_squared=True)
    assert torch.equal(one_plain, one_scaled)
    assert script.Config().tau_squared is script.Config.tau_squared   # the default is the dataclass field
    cfg, _ = script.parse_args(["--no-tau-squared"])
    assert cfg.tau_squared is False and script.parse_args(["--tau-squared"])[0].tau_squared is True


def test_trial_seeds_table3_fixes_batches_table4_varies_both():
    assert [script.trial_seeds("table3", 7, t) for t in (1, 2, 3)] == [(8, 7), (9, 7), (10, 7)]
    assert [script.trial_seeds("table4", 7, t) for t in (1, 2)] == [(8, 8), (9, 9)]
    with pytest.raises(ValueError):
        script.trial_seeds("table2", 0, 1)


def _first_batches_and_weights(tmp_path, monkeypatch, experiment: str) -> list[tuple]:
    """Two trials of ``experiment`` through Lab.train_model, with training stubbed: each trial's first two
    batches and the student's initial weights."""
    from common.runs import RunDir

    cfg = script.Config(**{**TINY_DATA, "crop": 32, "batch_size": 2, "device": "cpu"})
    train_data, test_data = script.load_data(cfg)
    lab = script.Lab(cfg, RunDir(tmp_path / experiment), torch.device("cpu"), train_data, test_data)
    seen = []

    def fake_train(model, optimizer, loss_fn, iterations, **kwargs):
        weights = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        batches = []
        monkeypatch.setattr(script, "kd_objective", lambda obj, s, y, *a, **k: (s.sum(), {"y": y.clone()}))
        for step in range(2):
            batches.append(loss_fn(step)[1]["y"])
        seen.append((weights, batches))
        return None

    monkeypatch.setattr(script, "train", fake_train)
    for trial in (1, 2):
        weight_seed, batch_seed = script.trial_seeds(experiment, cfg.seed, trial)
        lab.train_model(f"{experiment}_{trial}", 1, "hard", bn=False, iterations=2, seed=weight_seed,
                        batch_seed=batch_seed)
    return seen


def test_table3_trials_share_batches_and_differ_in_weights(tmp_path, monkeypatch):
    (w1, b1), (w2, b2) = _first_batches_and_weights(tmp_path, monkeypatch, "table3")
    assert not torch.equal(w1, w2)
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))


def test_table4_reruns_differ_in_weights_and_batches(tmp_path, monkeypatch):
    (w1, b1), (w2, b2) = _first_batches_and_weights(tmp_path, monkeypatch, "table4")
    assert not torch.equal(w1, w2)
    assert not any(torch.equal(x, y) for x, y in zip(b1, b2))


def test_tiny_bncheck_in_process(tmp_path, monkeypatch, capsys):
    """The BatchNorm sanity check at toy scale: two 4-UNets (without, with BN), its table with the source's numbers
    beside ours, and its Fig. 4-like figure."""
    monkeypatch.setitem(script.PRESETS, "default", TINY_DATA)
    run = tmp_path / "run"
    script.main(["--experiment", "bncheck", "--bn-iterations", "4", "--eval-every", "2", "--checkpoint-every", "2",
                 "--batch-size", "2", "--crop", "32", "--no-progress", "--device", "cpu", "--out", str(run),
                 "--cache-dir", str(tmp_path / "cache")])
    capsys.readouterr()
    rows = read_results(run)
    assert [r["model"] for r in rows] == ["4-UNet without BN, hard", "4-UNet with BN, hard"]
    assert int(rows[1]["params"]) > int(rows[0]["params"]) and all(r["iterations"] == "4" for r in rows)
    table = (run / "bncheck.md").read_text()
    assert "0.0930" in table and "0.0727" in table and "21.8%" in table and "5.0x" in table
    assert (run / "bncheck.csv").is_file() and (run / "figures" / "bncheck_test_loss.png").is_file()


@pytest.mark.parametrize("argv, flag", [
    (["--bn-iterations", "0"], "--bn-iterations"),
    (["--experiment", "bncheck", "--bn-iterations", "0"], "--bn-iterations"),
    (["--bn-iterations", "10"], "--bn-iterations"),                          # headline ignores it
    (["--experiment", "bncheck", "--bn"], "--bn"),                          # the sanity check compares both
    (["--experiment", "table1", "--no-tau-squared"], "--no-tau-squared"),   # no soft term in Table 1
    (["--experiment", "table4", "--tau-squared"], "--tau-squared"),
])
def test_new_flags_refused_where_they_mean_nothing(argv, flag):
    from common.errors import UserError

    with pytest.raises(UserError, match=flag):
        cfg, args = script.parse_args(argv)
        script.check_config(cfg, args)


def test_tau_squared_flags_are_exclusive_and_accepted_where_read():
    with pytest.raises(SystemExit):
        script.parse_args(["--tau-squared", "--no-tau-squared"])
    for experiment in ("headline", "table2", "table3", "table5", "table6", "all"):
        cfg, args = script.parse_args(["--experiment", experiment, "--no-tau-squared"])
        script.check_config(cfg, args)
    cfg, args = script.parse_args(["--experiment", "bncheck", "--bn-iterations", "10"])
    script.check_config(cfg, args)
    assert cfg.bn_iterations == 10 and script.parse_args(["--preset", "paper"])[0].bn_iterations == 3_600_000


@pytest.mark.parametrize("k, bf16", [(2, False), (8, False), (16, True), (64, True)])
def test_only_the_wide_unets_train_in_bf16(tmp_path, monkeypatch, k, bf16):
    # trains_in_bf16: the 2-UNet gains nothing from bf16 (slower on a Xeon), the 64-UNet trains in 0.61-0.66x
    from common.runs import RunDir

    cfg = script.Config(**{**TINY_DATA, "crop": 32, "batch_size": 2, "device": "cpu"})
    lab = script.Lab(cfg, RunDir(tmp_path / "run"), torch.device("cpu"), *script.load_data(cfg))
    asked = {}
    monkeypatch.setattr(script, "train", lambda *a, **kwargs: asked.update(kwargs))
    monkeypatch.setattr(script, "UNet", lambda k, batch_norm: torch.nn.Conv2d(1, 2, 1))   # no 64-UNet to build
    lab.train_model("job", k, "hard", bn=False, iterations=1)
    assert asked["cpu_bf16"] is bf16 and script.trains_in_bf16(k) is bf16


def test_soft_targets_come_from_the_teacher_in_its_fastest_precision(tmp_path, monkeypatch):
    # the frozen teacher's logits for the soft targets: under bf16 autocast when the run's --amp is on and the CPU
    # has bf16 natively (forced here), float32 with --no-amp
    from common import devices
    from common.runs import RunDir

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    seen = []

    class Probe(torch.nn.Conv2d):
        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().forward(x)

    for amp in (True, False):
        cfg = script.Config(**{**TINY_DATA, "device": "cpu", "amp": amp})
        lab = script.Lab(cfg, RunDir(tmp_path / f"run{amp}"), torch.device("cpu"), *script.load_data(cfg))
        seen.clear()
        targets = lab.soft_targets(Probe(1, 2, 1))
        assert targets.dtype == torch.float16 and seen and all(s is amp for s in seen)


def test_unet_memory_format_is_channels_last_except_a_wide_unet_in_float32_on_the_cpu(monkeypatch):
    """The --no-amp run, and a CPU without native bf16, train the 64-UNet in the contiguous format (faster there in
    float32); every other case in channels-last."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native_bf16 in (True, False):
        monkeypatch.setattr(script, "cpu_supports_bf16", lambda: native_bf16)
        assert script.unet_memory_format(2, cpu, amp=True) == torch.channels_last
        assert script.unet_memory_format(2, cpu, amp=False) == torch.channels_last
        assert script.unet_memory_format(64, cpu, amp=False) == torch.contiguous_format
        assert script.unet_memory_format(64, cpu, amp=True) == (torch.channels_last if native_bf16
                                                                 else torch.contiguous_format)
        assert script.unet_memory_format(64, cuda, amp=False) == torch.channels_last
