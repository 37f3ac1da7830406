"""reproduce_deeplab_caspp.py end to end at toy scale: the profile-only table, one trained model with its files,
a distillation table, --resume of a finished run, two processes under torchrun, and its user errors.

Smoke tier: one tiny in-process run and the user errors; the rest is marked slow."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import math

import pytest
import torch
import torch.nn.functional as F

import reproduce_deeplab_caspp as script
from common.deeplab import build_deeplabv3plus
from common.checks import read_checks
from common.errors import UserError
from common.training import Trained
from common.runs import run_main, save_weights
from common.teachers import OutputMemo
from script_runs import read_results, without

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "reproduce_deeplab_caspp.py"
TOY = ["--iterations", "3", "--batch-size", "4", "--crop", "64", "--train-images", "8", "--val-images", "2",
       "--image-size", "64", "--pretrain-iterations", "2", "--device", "cpu", "--no-progress"]
TOY_NO_STAND_IN = without(TOY, "--pretrain-iterations")   # --backbone-init scratch/imagenet: no stand-in


def run_script(*args: str, timeout: float = 300, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [SCRIPT, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert_one_error_line(result.stderr, *needles)


def assert_one_error_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def run_in_process(argv: list[str], capsys) -> str:
    """``main(argv)`` as the command line runs it (``run_main``), for a user error: exit status 2; its stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_main(lambda: script.main(argv))
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_one_model_trains_and_writes_its_run_folder(tmp_path):
    """The smoke tier's one end-to-end run, at the smallest sizes the flags allow: MobileNetV2 from scratch, one
    iteration on two 32-pixel scenes."""
    out = tmp_path / "run"
    script.main(["--backbone", "mobilenet_v2", "--aspp", "DS", "--ksac", "--output-stride", "32",
                 "--backbone-init", "scratch", "--iterations", "1", "--batch-size", "2", "--crop", "32",
                 "--train-images", "2", "--val-images", "1", "--image-size", "32", "--device", "cpu", "--no-progress",
                 "--out", str(out)])
    rows = read_results(out)
    assert [r["model"] for r in rows] == ["MNv2 OS32 KSAC DS None"]
    assert 0 <= float(rows[0]["iou"]) <= 1
    assert round(int(rows[0]["params"]) / 1e6, 2) == 2.48   # Table A.1, OS32 KSAC DS
    for name in ("config.json", "metrics.jsonl", "one_model.md", "one_model.csv", "figures/predictions.png",
                 "figures/training_loss.png", "checkpoints/mnv2_os32_ksac_ds_none.pt", "checks.md"):
        assert (out / name).exists(), name
    # 32-px crops at OS32: a 1x1 map, where every off-centre tap of every branch reads padding; said atop the table
    checks = read_checks(out)
    assert list(checks[0]) == ["check", "value", "required", "passed"]
    assert [c["passed"] for c in checks] == ["no", "no", "no"] and all(float(c["value"]) == 0 for c in checks)
    assert "OS32 rate-12 branch (rate 6, 1x1 training maps)" in checks[1]["check"]
    assert (out / "one_model.md").read_text().count("CHECK FAILED") == 3


@pytest.mark.slow
def test_profile_only_prints_the_thesis_columns_beside_ours(tmp_path):
    result = run_script("--profile-only", "--table", "A.2", "--rows", "1,6", "--out", str(tmp_path / "run"),
                        "--device", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "run" / "tableA_2.md").read_text()
    assert "Params (paper)" in table and "Params (ours)" in table and "latency ms (ours)" in table
    # row 1: OS16 KSAC ASPP, 3.75M / 4.29G in the thesis; row 6: OS16 CASPP-2, 2.83M / 1.12G
    assert "| 3.75M | 3.75M | 4.29G | 4.29G |" in table
    assert "| 2.83M | 2.83M | 1.12G | 1.12G |" in table
    assert "ASPP % of Params (ours)" in table and "up to 50% of the total parameters" in table
    assert not (tmp_path / "run" / "results.csv").exists()  # nothing was trained


@pytest.mark.slow
def test_one_model_on_the_command_line_resumes_without_retraining(tmp_path):
    out = tmp_path / "run"
    result = run_script("--backbone", "mobilenet_v2", "--aspp", "DS", "--ksac", "--output-stride", "32",
                        "--backbone-init", "scratch", "--out", str(out), *TOY_NO_STAND_IN)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_results(out)
    assert [r["model"] for r in rows] == ["MNv2 OS32 KSAC DS None"]
    assert (out / "checkpoints" / "mnv2_os32_ksac_ds_none.pt").exists()
    again = run_script("--resume", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_results(out) == rows   # the finished job is loaded, not retrained


@pytest.mark.slow
def test_distillation_table_trains_teacher_and_every_method(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    result = run_script("--table", "5.3", "--rows", "5", "--cache-dir", str(cache), "--out", str(out),
                        "--teacher-iterations", "4", *TOY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training the teacher R50 OS16 KSAC ST, 4 iterations" in result.stdout   # not the students' 3
    models = [r["model"] for r in read_results(out)]
    assert models == [f"MNv2 OS16 KSAC BTN {m}" for m in ("None", "AT Output", "AT Atrous", "AT All", "KD")]
    # beta * L_A is over 1000 by construction (Eq. 4.8-4.9): a large loss is not a divergence
    assert not [r for r in read_results(out) if "diverged" in r["notes"]]
    table = (out / "table5_3.md").read_text()
    assert "| 67.64 |" in table and "| 63.91 |" in table   # the thesis's None and KD for this row
    assert (out / "figures" / "attention_maps.png").exists()
    assert "--loss-scale printed" in table
    assert len(list(cache.glob("deeplab_teacher_*.pt"))) == 1
    # issue 16: the teacher's margin over the student alone, and the atrous geometry of student and teacher
    checks = {c["check"]: c for c in read_checks(out)}
    margin = checks["teacher mIoU above the student alone (points), MNv2 OS16 KSAC BTN"]
    rows = {r["model"]: float(r["iou"]) for r in read_results(out)}
    assert margin["required"] == ">= 5"
    teacher = float(re.search(r"teacher R50 OS16 KSAC ST: IoU \(ours\) ([0-9.]+)", table).group(1))
    assert float(margin["value"]) == pytest.approx(teacher - 100 * rows["MNv2 OS16 KSAC BTN None"], abs=0.01)
    assert any(c.startswith("distillation source R50: ") for c in checks)
    assert (margin["passed"] == "yes") == ("CHECK FAILED: teacher" not in table)
    # the cached teacher is reused by the next run (no teacher job in its log)
    second = run_script("--table", "5.3", "--rows", "5", "--cache-dir", str(cache), "--out", str(tmp_path / "r2"),
                        "--teacher-iterations", "4", *TOY)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "teacher_" not in (tmp_path / "r2" / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = run_script("--backbone", "mobilenet_v2", "--aspp", "BTN", "--backbone-init", "scratch",
                        "--out", str(out), *TOY_NO_STAND_IN, launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stdout
    rows = read_results(out)
    assert len(rows) == 1 and rows[0]["model"] == "MNv2 OS16 BTN None"
    logged = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"event": "final"' in line]
    assert len(logged) == 1  # rank 0 alone writes


# ------------------------------------------------------------------------------------------ user errors
@pytest.mark.parametrize("args, needles", [
    (["--alpha", "1.5"], ["--alpha", "[0, 1]"]),
    (["--T", "0"], ["--T must be positive"]),
    (["--rows", "13"], ["Table 5.1 has rows 1 to 12"]),
    (["--rows", "a,b"], ["--rows"]),
    (["--aspp", "DS"], ["--aspp", "--backbone"]),
    (["--backbone", "resnet50", "--table", "5.4"], ["one model"]),
    (["--data-root", "/no/such/voc"], ["--data-root", "no such"]),
    (["--teacher-checkpoint", "x.pt"], ["--teacher-checkpoint"]),
    (["--teacher-iterations", "5"], ["--teacher-iterations", "--table 5.2/5.3"]),
    (["--table", "5.3", "--teacher-checkpoint", "x.pt", "--teacher-iterations", "5"],
     ["--teacher-iterations", "--teacher-checkpoint"]),
    (["--table", "5.3", "--teacher-iterations", "0"], ["--teacher-iterations", ">= 1"]),
    (["--batch-size", "1"], ["--batch-size"]),
    (["--backbone-lr", "-1"], ["--backbone-lr"]),
    (["--loss-scale", "moonshine"], ["--loss-scale", "no distilled student"]),
    (["--backbone", "resnet50", "--loss-scale", "moonshine"], ["--loss-scale", "--method"]),
    (["--profile-only", "--table", "5.4", "--loss-scale", "printed"], ["--loss-scale", "--profile-only"]),
    (["--strides", "8"], ["--strides", "16, 32"]),
    (["--strides", "16", "--rows", "1"], ["--rows", "--strides"]),
    (["--backbone", "resnet50", "--strides", "16"], ["--strides", "one model"]),
    (["--rate-divisor", "4"], ["--rate-divisor", "1, 2, 3, 6"]),
    (["--backbone-init", "scratch", "--pretrain-crop", "64"], ["--pretrain-crop", "--backbone-init synthetic"]),
])
def test_bad_flags_are_user_errors_before_any_work(args, needles, tmp_path):
    with pytest.raises(UserError) as caught:
        script.main([*args, "--out", str(tmp_path / "run"), "--no-progress"])
    for needle in needles:
        assert needle in str(caught.value), (needle, str(caught.value))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_user_error_is_one_line_on_the_command_line(tmp_path):
    assert_user_error(run_script("--alpha", "2", "--out", str(tmp_path / "run"), "--no-progress"), "--alpha")


def test_an_empty_data_root_names_the_missing_layout(tmp_path, capsys):
    (tmp_path / "voc").mkdir()
    stderr = run_in_process(["--data-root", str(tmp_path / "voc"), "--backbone-init", "scratch",
                             "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert_one_error_line(stderr, "VOC")
    assert not (tmp_path / "run").exists()  # no run folder for a run that cannot start


def test_a_teacher_checkpoint_of_another_architecture_is_refused(tmp_path, capsys):
    other = build_deeplabv3plus("mobilenet_v2", 21, 16, "ST", ksac=True)
    save_weights(tmp_path / "mnv2.pt", other)
    stderr = run_in_process(["--table", "5.3", "--rows", "1", "--teacher-checkpoint", str(tmp_path / "mnv2.pt"),
                             "--out", str(tmp_path / "run"), *TOY], capsys)
    assert_one_error_line(stderr, "--teacher-checkpoint", "backbone")


# ------------------------------------------------------------------------------------------ real data layout
@pytest.mark.slow
def test_trains_on_the_voc_layout(tmp_path, write_tiny_voc):
    write_tiny_voc(tmp_path / "voc")
    out = tmp_path / "run"
    script.main(["--data-root", str(tmp_path / "voc"), "--backbone", "mobilenet_v2", "--aspp", "DS",
                 "--backbone-init", "scratch", "--iterations", "2", "--batch-size", "2", "--crop", "64",
                 "--device", "cpu", "--no-progress", "--out", str(out)])
    assert "VOC 2012 trainaug / val" in (out / "one_model.md").read_text()
    assert read_results(out)[0]["model"] == "MNv2 OS16 DS None"


def test_a_wrong_label_value_in_voc_names_the_file(tmp_path, write_tiny_voc):
    write_tiny_voc(tmp_path / "voc", bad_label=30)
    with pytest.raises(UserError, match="2008_000001"):
        script.main(["--data-root", str(tmp_path / "voc"), "--backbone", "mobilenet_v2", "--aspp", "DS",
                     "--backbone-init", "scratch", "--iterations", "1", "--batch-size", "2", "--crop", "64",
                     "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")])


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    """Stop a run mid-training after its checkpoint at step 2, --resume it, and compare with an uninterrupted run."""
    args = ["--backbone", "mobilenet_v2", "--aspp", "BTN", "--backbone-init", "scratch", "--checkpoint-every", "2",
            *TOY_NO_STAND_IN]
    script.main([*args, "--out", str(tmp_path / "whole")])
    real, calls = script.augmented_item, {"n": 0}

    def interrupted_in_step_3(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2 * 4:   # batches of 4: the ninth sample belongs to step 3
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(script, "augmented_item", interrupted_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        script.main([*args, "--out", str(tmp_path / "cut")])
    assert not (tmp_path / "cut" / "results.csv").exists()
    monkeypatch.setattr(script, "augmented_item", real)
    script.main(["--resume", str(tmp_path / "cut"), "--no-progress"])
    assert read_results(tmp_path / "cut") == read_results(tmp_path / "whole")


@pytest.mark.slow
def test_a_row_trains_the_same_alone_as_in_its_table(tmp_path):
    """Rows are independent runs (one Slurm job per row gives the table): row 2 alone = row 2 after row 1."""
    common = ["--table", "A.1", "--cache-dir", str(tmp_path / "cache"), *TOY]
    script.main([*common, "--rows", "1,2", "--out", str(tmp_path / "both")])
    script.main([*common, "--rows", "2", "--out", str(tmp_path / "alone")])
    both, alone = read_results(tmp_path / "both"), read_results(tmp_path / "alone")
    assert [r["model"] for r in both] == ["MNv2 OS16 KSAC ST None", "MNv2 OS16 ST None"]
    assert alone == both[1:]


def test_imagenet_weights_that_cannot_be_fetched_stop_before_the_run_folder(tmp_path, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    script.imagenet_backbone.cache_clear()
    with pytest.raises(UserError, match="--backbone-weights"):
        script.main(["--backbone", "mobilenet_v2", "--backbone-init", "imagenet", "--out", str(tmp_path / "run"),
                     *TOY_NO_STAND_IN])
    assert not (tmp_path / "run").exists()


def test_help_names_the_tables_and_flags_with_their_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")   # each flag's help on one line, whatever the terminal
    with pytest.raises(SystemExit) as stopped:
        script.parse_args(["--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--table", "--rows", "--profile-only", "--backbone", "--method", "--repeats", "--data-root",
                 "--resume", "--sync-bn"):
        assert flag in text, flag
    # the defaults are read from Config and PRESETS, not typed into the help
    assert f"training iterations of each model (default {script.Config.iterations}; paper preset 30,000)" in text
    assert "(default 2; paper preset 1)" in text and "(default 16; paper preset 16,32)" in text
    assert "iterations between checkpoints (default 200; paper preset 1,000)" in text
    assert "KD weight alpha of Eq. 4.6, in [0, 1] (default 0.9)" in text


# ------------------------------------------------------------------------------------------ the objective
@pytest.mark.parametrize("at_loss", ["attention_transfer_loss", "moonshine_at_loss"])
def test_teacher_layers_are_resized_before_the_attention_map(at_loss):
    """Section 4.2.2 resizes the teacher's *layers*. A channel alternating +1 / -1 across a 2x2 map resizes
    (bilinear, to 1x1) to its mean 0, so its attention is 0 and matches a silent student exactly (loss 0);
    resizing the attention map (all ones) instead would give a unit vector against the student's zero (loss > 0)."""
    teacher = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]])
    student = torch.zeros(1, 3, 1, 1)
    map_first = F.interpolate(script.attention_map(teacher)[:, None], size=(1, 1), mode="bilinear",
                              align_corners=False)
    assert map_first.item() == 1.0
    assert getattr(script, at_loss)([student], [teacher]).item() == 0.0


def test_moonshine_kd_hand_value_divides_the_kl_by_every_element():
    """One image, C = 2 classes, 1x2 pixels, T = 1, alpha = 0.9. Teacher uniform; student q = (3/4, 1/4) at pixel
    0 (label 0) and uniform at pixel 1 (label 255, unlabelled). KL at pixel 0 = 0.5 ln(2/3) + 0.5 ln 2 = 0.5 ln(4/3),
    0 at pixel 1; / (N C H W = 4) -> ln(4/3) / 8. CE over the labelled pixel: -ln(3/4) = ln(4/3).
    L = 2 * 0.9 * ln(4/3) / 8 + 0.1 * ln(4/3) = 0.325 ln(4/3)."""
    student = torch.tensor([[[[math.log(3), 0.0]], [[0.0, 0.0]]]])
    teacher = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 255]]])
    loss, kl = script.moonshine_kd_loss(student, teacher, target, alpha=0.9, T=1.0)
    assert kl.item() == pytest.approx(math.log(4 / 3) / 8, abs=1e-7)
    assert loss.item() == pytest.approx(0.325 * math.log(4 / 3), abs=1e-7)


def test_moonshine_kd_is_the_adopted_code_formula_with_t_squared_and_no_mask():
    """funcs.py: F.kl_div(log_softmax(y/T), softmax(t/T)) * (T*T * 2. * alpha) + F.cross_entropy(y, labels) *
    (1 - alpha), with the old default reduction: the mean over all elements (today's reduction='mean')."""
    torch.manual_seed(0)
    s, t = torch.randn(2, 21, 3, 4), torch.randn(2, 21, 3, 4)
    y = torch.randint(0, 21, (2, 3, 4))
    y[0, 0] = 255
    T, alpha = 4.0, 0.9
    with pytest.warns(UserWarning):   # today's 'mean' warns that it divides by every element, as the old one did
        kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="mean")
    expected = kl * (T * T * 2.0 * alpha) + F.cross_entropy(s, y, ignore_index=255) * (1.0 - alpha)
    loss, _ = script.moonshine_kd_loss(s, t, y, alpha, T)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # unlabelled pixels still count in the KL (F.kl_div has no mask): all-unlabelled leaves the soft term
    all_ignored = torch.full_like(y, 255)
    loss_ignored, _ = script.moonshine_kd_loss(s, t, all_ignored, alpha, T)
    assert loss_ignored.item() == pytest.approx((kl * (T * T * 2.0 * alpha)).item(), rel=1e-5)


def test_moonshine_at_hand_value_mean_of_squares_times_three_over_layers():
    """Student map (1, 0) and teacher map (0, 1) (one channel, 1x2): normalised e1 and e2, squared difference
    (1, 1), mean over N x H x W = 2 -> 1; one layer: beta factor 3 / 1 -> 3 (Eq. 4.8 would give sqrt 2).
    With a second, identical layer pair: 3 / 2 * (1 + 0) = 1.5."""
    s, t = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 1.0]]]])
    assert script.moonshine_at_loss([s], [t]).item() == pytest.approx(3.0, abs=1e-6)
    assert script.attention_transfer_loss([s], [t]).item() == pytest.approx(math.sqrt(2), abs=1e-6)
    same = torch.rand(1, 4, 1, 2)
    assert script.moonshine_at_loss([s, same], [t, same.clone()]).item() == pytest.approx(1.5, abs=1e-6)


def test_moonshine_at_is_the_adopted_code_formula():
    """funcs.py: at(x) = F.normalize(x.pow(2).mean(1).view(x.size(0), -1)); at_loss = (at(x) - at(y)).pow(2).mean();
    main.py: adjusted_beta = beta * 3 / len(ints_student), summed over the layers."""
    torch.manual_seed(1)
    pairs = [(torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4)), (torch.randn(2, 3, 2, 2), torch.randn(2, 5, 2, 2))]
    at = lambda x: F.normalize(x.pow(2).mean(1).view(x.size(0), -1))  # noqa: E731
    beta = 1000.0
    expected = sum(beta * 3 / len(pairs) * (at(s) - at(t)).pow(2).mean() for s, t in pairs)
    got = beta * script.moonshine_at_loss([s for s, _ in pairs], [t for _, t in pairs])
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert script.moonshine_at_loss([pairs[0][0]], [pairs[0][0].clone()]).item() == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("loss_scale", script.LOSS_SCALES)
def test_objective_resizes_the_teacher_layers_and_picks_the_reduction(loss_scale):
    """An OS32 student (2x2 maps) against an OS16 teacher (4x4): the objective compares the student with the
    teacher's *layers* resized, in both readings, and weighs the reading's L_A by beta."""
    torch.manual_seed(2)
    logits, target = torch.randn(2, 21, 8, 8), torch.randint(0, 21, (2, 8, 8))
    feats = {"aspp": torch.randn(2, 6, 2, 2), "atrous": [torch.randn(2, 6, 2, 2) for _ in range(3)]}
    t_feats = {"aspp": torch.randn(2, 6, 4, 4), "atrous": [torch.randn(2, 6, 4, 4) for _ in range(3)]}
    loss, logged = script.caspp_objective("at-all", logits, feats, None, t_feats, target, 0.9, 1000.0, 4.0,
                                          loss_scale)
    student = script.features_for("at-all", feats)
    teacher = [F.interpolate(t, size=(2, 2), mode="bilinear", align_corners=False)
               for t in script.features_for("at-all", t_feats)]
    at_fn = script.moonshine_at_loss if loss_scale == "moonshine" else script.attention_transfer_loss
    assert logged["train_at"].item() == pytest.approx(at_fn(student, teacher).item(), rel=1e-6)
    hard = F.cross_entropy(logits, target)
    assert loss.item() == pytest.approx(hard.item() + 1000.0 * logged["train_at"].item(), rel=1e-6)
    kd, _ = script.caspp_objective("kd", logits, None, torch.randn(2, 21, 8, 8), None, target, 0.9, 1000.0, 4.0,
                                   loss_scale)
    assert torch.isfinite(kd)
    with pytest.raises(ValueError):
        script.caspp_objective("none", logits, None, None, None, target, 0.9, 1000.0, 4.0, "other")


def test_aspp_share_matches_figure_4_3():
    """Figure 4.3, the thesis's ptflops output for MobileNetV2 with CASPP-4 (unshared, 4,248,629 parameters), prints
    the ASPP at "2.393 M, 56.326% Params, ... 39.789% MACs": ``aspp_share`` counts the same. (Section 4.2.3's
    "up to 50% of the total parameters and about 25% of the MAdds" is then read off the --profile-only table.)"""
    with torch.device("meta"):   # shapes only: the counts are the CPU's (tests/test_deeplab.py), faster
        model = build_deeplabv3plus("mobilenet_v2", 21, 16, "CASPP-4", False)
    cost = {"params": sum(p.numel() for p in model.parameters()),
            "macs": script.count_macs(model, script.MACS_INPUT)}
    params_share, macs_share = script.aspp_share(model, cost)
    assert round(100 * params_share, 3) == 56.326 and round(100 * macs_share, 3) == 39.789
    assert model.training   # the count leaves the model's mode as it found it


# ------------------------------------------------------------------------------------------ mechanism checks (issue 16)
def test_rates_are_the_thesis_s_divided_and_change_no_count():
    row = script.Row("mobilenet_v2", 16, "BTN", True)
    halved, thesis = script.build(row, 2), script.build(row, 1)
    assert halved.atrous_rates == (3, 6, 9) and thesis.atrous_rates == (6, 12, 18)
    assert script.run_rates(32, 2) == (3, 6, 9) and script.run_rates(8, 3) == (4, 8, 12)
    assert halved.config()["atrous_rates"] == [3, 6, 9] and "atrous_rates" not in thesis.config()
    assert sum(p.numel() for p in halved.parameters()) == sum(p.numel() for p in thesis.parameters())


def test_atrous_checks_by_hand_on_16x16_maps():
    """(f + f^2) / 2 of the off-centre taps read features on an s x s map, f = (s - r) / s: on 16x16 maps rate 3
    gives f = 13/16, rate 6 f = 10/16, rate 9 f = 7/16; the thesis's rate 12 f = 4/16 and rate 18 nothing."""
    rows = [script.Row("mobilenet_v2", 16, "DS", False)]
    share = lambda f: (f + f * f) / 2  # noqa: E731
    ours = script.atrous_checks(rows, 256, 2, "table5_1")
    assert [c.value for c in ours] == pytest.approx([share(13 / 16), share(10 / 16), share(7 / 16)])
    assert [c.passed for c in ours] == [True, True, True] and [c.required for c in ours] == [">= 0.5"] * 2 + ["> 0"]
    assert "OS16 rate-12 branch (rate 6, 16x16 training maps)" in ours[1].check
    thesis = script.atrous_checks(rows, 256, 1, "table5_1")
    assert [c.value for c in thesis] == pytest.approx([share(10 / 16), share(4 / 16), 0.0])
    assert [c.passed for c in thesis] == [True, False, False]
    assert len(script.failed_lines(thesis, "table5_1")) == 2 and not script.failed_lines(thesis, "table5_4")
    assert "rate 12 0.16" in script.thesis_geometry_note() and "rate 18 0.00" in script.thesis_geometry_note()


def test_teacher_checks_per_student_row_in_points():
    row = script.Row("resnet50", 16, "DS", False)
    trained = lambda miou: Trained("x", "x", None, {"miou": miou}, info={"row": row})  # noqa: E731
    checks = script.teacher_checks(trained(0.60), [trained(0.50), trained(0.58)], "table5_2")
    assert [c.value for c in checks] == pytest.approx([10.0, 2.0]) and [c.passed for c in checks] == [True, False]
    assert all("teacher" in c.check and "R50 OS16 DS" in c.check for c in checks)


def test_strides_select_the_table_rows():
    cfg = script.Config(strides="16")
    assert [n for n, _ in script.selected(script.TABLES["5.1"], cfg)] == [1, 2, 3, 4, 5, 6]
    assert [n for n, _ in script.selected(script.TABLES["5.4"], script.Config(strides="32"))] == list(range(11, 21))
    assert [n for n, _ in script.selected(script.TABLES["5.1"], script.Config(rows=(2, 9)))] == [2, 9]


def test_frozen_features_are_the_eval_backbone_s_computed_once_and_restored():
    torch.manual_seed(0)
    model = build_deeplabv3plus("mobilenet_v2", 21, 32, "DS").train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, expected_other = model.backbone.eval()(x), model.backbone(x + 1)
    model.train()
    memo = script.FrozenBackboneFeatures(torch.device("cpu"), amp=False)
    with memo.serve(model):
        first, again = model.backbone(x), model.backbone(x.clone())
        other = model.backbone(x + 1)
    assert (memo.misses, memo.hits) == (2, 1) and model.backbone.training   # its mode is left as it was
    for a, b, c in zip(first, again, expected):
        assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6)
    assert all(torch.allclose(a, c, atol=1e-6) for a, c in zip(other, expected_other))
    assert "forward" not in vars(model.backbone)                            # the class's forward again
    with memo.serve(build_deeplabv3plus("mobilenet_v2", 21, 32, "DS")):   # other weights: not the same key
        pass
    assert len(memo.kept) == 2
    # kept in bf16 where the CPU has it, handed out as float32: the figures call the model outside autocast
    bf16 = script.FrozenBackboneFeatures(torch.device("cpu"), amp=True)
    with bf16.serve(model.eval()), torch.no_grad():
        logits, again = model(x), model(x)
    assert logits.dtype == torch.float32 and torch.equal(logits, again)


def test_teacher_outputs_are_computed_once_per_input_and_equal_the_teacher_s_forward():
    torch.manual_seed(0)
    teacher = build_deeplabv3plus("mobilenet_v2", 21, 16, "DS").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, expected_feats = teacher(x, return_features=True)
    memo, calls = OutputMemo(), []
    decode = teacher.decode
    teacher.decode = lambda inputs: calls.append(1) or decode(inputs)
    first, feats = script.teacher_outputs(teacher, x, memo)
    again, feats_again = script.teacher_outputs(teacher, x.clone(), memo)   # the same bytes: reused
    other, _ = script.teacher_outputs(teacher, x + 1, memo)
    assert len(calls) == 2 and not first.requires_grad
    assert torch.equal(first, expected) and torch.equal(again, expected) and not torch.equal(other, expected)
    for a, b, c in zip(feats["atrous"] + [feats["aspp"]], feats_again["atrous"] + [feats_again["aspp"]],
                       expected_feats["atrous"] + [expected_feats["aspp"]]):
        assert torch.equal(a, c) and torch.equal(b, c)
