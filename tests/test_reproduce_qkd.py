"""reproduce_qkd.py (source 000): Section 3.1's loss against hand computations, the student against Buda et al.'s
published size, --help, a tiny end-to-end run without int8 (the fast tier), one with every row (the int8 one
included) and a resume (slow), and bad input."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import reproduce_qkd as script
from common.errors import UserError
from common.segmentation_models import build_segmenter
from common.runs import save_weights
from script_runs import read_results, tiny, without


# ----------------------------------------------------------------------------------------------- Section 3.1
def one_pixel_case() -> tuple[torch.Tensor, ...]:
    """One image, 2 classes, a 1x2 map: pixel 0 labelled 0, pixel 1 ignored (255). Student logits [0, 0] at both
    pixels; teacher logits [ln 3, 0] -> p_T = [3/4, 1/4]. Features 1x2 with patch 1: two nodes per image, the
    student's orthogonal (cosine 0), the teacher's equal (cosine 1)."""
    student = torch.zeros(1, 2, 1, 2)
    teacher = torch.zeros(1, 2, 1, 2)
    teacher[0, 0] = math.log(3)
    target = torch.tensor([[[0, 255]]])
    s_feat = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])          # nodes (1, 0) and (0, 1): cosine 0
    t_feat = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])   # nodes (1,0,0) twice: cosine 1
    return student, s_feat, teacher, t_feat, target


def test_distillation_loss_by_hand() -> None:
    student, s_feat, teacher, t_feat, target = one_pixel_case()
    loss, parts = script.distillation_loss(student, s_feat, teacher, t_feat, target, pixel_weight=10.0,
                                           pair_weight=2.0, T=1.0, patch=1)
    ce = math.log(2)                                              # -ln(1/2) at the one labelled pixel
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_T || p_S) at that pixel only
    pair = (0 - 1) ** 2 * 2 / 4                                   # two off-diagonal pairs differ by 1, of 4
    assert parts["train_ce"].item() == pytest.approx(ce, abs=1e-6)
    assert parts["train_pixel_kl"].item() == pytest.approx(kl, abs=1e-6)
    assert parts["train_pair"].item() == pytest.approx(pair, abs=1e-6)
    assert loss.item() == pytest.approx(ce + 10 * kl + 2 * pair, abs=1e-5)


def test_temperature_scales_the_pixel_term_by_t_squared() -> None:
    student, s_feat, teacher, t_feat, target = one_pixel_case()
    loss, parts = script.distillation_loss(student, s_feat, teacher, t_feat, target, 1.0, 0.0, T=2.0, patch=1)
    p_t = F.softmax(torch.tensor([math.log(3), 0.0]) / 2, 0)      # [sqrt 3, 1] / (sqrt 3 + 1)
    kl = float((p_t * (p_t / 0.5).log()).sum())
    assert parts["train_pixel_kl"].item() == pytest.approx(kl, abs=1e-6)
    assert loss.item() == pytest.approx(math.log(2) + 4 * kl, abs=1e-6)


def test_zero_weights_leave_the_cross_entropy_and_the_teacher_gets_no_gradient() -> None:
    torch.manual_seed(0)
    student = torch.randn(2, 4, 8, 8, requires_grad=True)
    s_feat = torch.randn(2, 5, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 4, 8, 8, requires_grad=True)
    t_feat = torch.randn(2, 7, 4, 4, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    alone, parts = script.distillation_loss(student, s_feat, teacher, t_feat, target, 0.0, 0.0)
    assert set(parts) == {"train_ce"}
    assert alone.item() == pytest.approx(F.cross_entropy(student, target).item(), rel=1e-6)
    both, _ = script.distillation_loss(student, s_feat, teacher, t_feat, target, 10.0, 10.0)
    both.backward()
    assert student.grad.abs().sum() > 0 and s_feat.grad.abs().sum() > 0
    assert teacher.grad is None and t_feat.grad is None


def test_the_student_is_buda_et_als_unet_with_21_classes() -> None:
    cfg, _ = script.parse_args([])
    student = script.new_student(cfg)
    assert sum(p.numel() for p in student.parameters()) == 7_763_041 + 20 * 33   # Buda's 3-in/1-out count + 20 classes
    logits, feat = script.student_outputs(student.eval(), torch.randn(1, 3, 64, 64))
    assert student.down[1][0].weight.is_contiguous(memory_format=torch.channels_last)   # trains faster so
    assert logits.shape == (1, 21, 64, 64) and feat.shape == (1, 256, 8, 8)    # the teacher head's stride and width


def test_the_recipe_is_the_reports() -> None:
    cfg, _ = script.parse_args([])
    assert (cfg.lr, cfg.beta1) == (1e-4, 0.8)
    optimizer, scheduler = script.adam([torch.nn.Parameter(torch.zeros(1))], cfg)
    assert optimizer.defaults["betas"] == (0.8, 0.999) and scheduler.mode == "min"   # "a momentum of 0.8", "min mode"
    paper, _ = script.parse_args(["--preset", "paper"])
    epoch = 1464 // paper.batch_size                     # VOC 2012 train, the last incomplete batch dropped
    assert (paper.pretrain_iterations, paper.iterations) == (1000 * epoch, 20 * epoch)   # Section 4's epochs
    assert paper.co_study_teacher == "all"
    assert script.parse_bits("8,4,2") == (8, 4, 2)
    assert paper.teacher_arch == "deeplabv3_resnet101" == script.TEACHER_ARCH     # the report's teacher (Section 3)
    assert cfg.teacher_arch == "deeplabv3_resnet50"                               # the default's stand-in (docstring)
    assert script.teacher_label(paper) == "DeepLabV3-ResNet101 (teacher)"
    assert "the report's is ResNet-101" in script.teacher_label(cfg)
    given, _ = script.parse_args(["--teacher-weights", "coco"])                    # given weights: the report's
    assert given.teacher_arch == "deeplabv3_resnet101"
    chosen, _ = script.parse_args(["--teacher-weights", "coco", "--teacher-arch", "deeplabv3_resnet50"])
    assert chosen.teacher_arch == "deeplabv3_resnet50"


# ----------------------------------------------------------------------------------------------- the check (issue 16)
@pytest.mark.parametrize("teacher, alone, value, passed", [
    (0.30, 0.20, 10.0, True),       # 10 points above: a teacher with something to teach
    (0.24, 0.20, 4.0, False),       # above, but by less than 5 points
    (0.035, 0.16, -12.5, False),    # the README's 2026-12-04 teacher (3.5) below its student (16.0)
    (0.0, 0.0, 0.0, False),         # degenerate: both predict nothing
])
def test_teacher_check_in_points(teacher, alone, value, passed) -> None:
    check = script.teacher_check(teacher, alone)
    assert check.value == pytest.approx(value) and check.passed is passed and check.required == ">= 5"
    assert "teacher" in check.check and "alone (continued)" in check.check    # names the student row it uses
    assert check.about == script.TABLE


def test_a_teacher_check_with_nothing_measured_fails() -> None:
    assert not script.teacher_check(math.nan, 0.2).passed
    assert not script.teacher_check(0.5, math.nan).passed


def test_help_shows_each_default_once(capsys) -> None:
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())          # argparse wraps lines
    assert "Adam learning rate, the report's (default 0.0001)" in text
    assert "(default 150; paper preset 91,000)" in text       # --pretrain-iterations
    assert "(default 8,4)" in text and "(default 512)" in text and "(default 100; paper preset 910)" in text
    assert "default default" not in text and "(default None" not in text and "h('" not in text


# ----------------------------------------------------------------------------------------------- Section 3.2, Fig. 1
def test_quantizer_flag_and_the_weight_levels_it_shows() -> None:
    cfg, _ = script.parse_args([])
    assert (cfg.quantizer, cfg.bucket_size) == ("polino", 256)        # Section 2.3's [9] is the default
    assert script.precision(cfg, 2) == "W2A32 (4-level weights)"       # Polino: 2^b levels, float activations
    qkd, _ = script.parse_args(["--quantizer", "qkd"])
    assert script.precision(qkd, 2) == "W2A2 (3-level weights)"        # the symmetric grid is ternary at 2 bits
    assert script.bits_cell(qkd, 4) == "4/4, 15 weight levels"
    assert script.bits_cell(cfg, 4) == "4/32, 16 levels per 256 weights"
    paper, _ = script.parse_args(["--preset", "paper"])               # the quantized rows as long as the fp32 rows
    assert paper.self_study + paper.co_study + paper.tutor == paper.iterations == 20 * (1464 // paper.batch_size)


def phase_recorder(cfg) -> tuple[script.Experiment, list]:
    """An Experiment whose training jobs only record their (name, start step, iterations): QKD's phase logic."""
    from common.training import Trained

    calls = []
    exp = object.__new__(script.Experiment)
    exp.cfg, exp.session = cfg, type("S", (), {"say": staticmethod(lambda text: None)})()
    exp.quantized_copy = lambda model, bits: torch.nn.Conv2d(1, 1, 1)

    def job(name, start, iterations):
        calls.append((name, start, iterations))
        return Trained(name, "", None, {"miou": 0.5}, [1.0] * iterations)

    exp.self_study = lambda name, student, start, iterations: job(name, start, iterations)
    exp.co_study = lambda name, student, teacher, start: job(name, start, cfg.co_study)
    exp.tutoring = lambda session, name, student, tutor, start, iterations, memo=False: job(name, start, iterations)
    return exp, calls


@pytest.mark.parametrize("phases, expected", [
    ((2, 3, 4), [("qkd4_1_self", 10, 2), ("qkd4_2_co", 12, 3), ("qkd4_3_tutor", 15, 4)]),
    ((0, 0, 5), [("qkd4_3_tutor", 10, 5)]),                              # Section 3.2 as written: tutoring only
    ((3, 0, 2), [("qkd4_1_self", 10, 3), ("qkd4_3_tutor", 13, 2)]),
    ((0, 4, 0), [("qkd4_2_co", 10, 4)]),
])
def test_zero_length_qkd_phases_are_skipped(phases, expected) -> None:
    flags = ["--self-study", str(phases[0]), "--co-study", str(phases[1]), "--tutor", str(phases[2])]
    cfg, args = script.parse_args([*flags, "--no-int8"])
    script.check_config(cfg, args)                                      # 0 is allowed
    exp, calls = phase_recorder(cfg)
    pretrained = type("P", (), {"model": None})()
    final, _ = exp.train_qkd(4, pretrained, torch.nn.Conv2d(1, 1, 1), 10)
    assert calls == expected
    assert len(final.train_loss) == sum(phases) and final.start_step == 10
    assert final.metrics["phase_ends"] == [sum(c[2] for c in calls[:i + 1]) for i in range(len(calls) - 1)]


def test_all_qkd_phases_zero_is_a_user_error() -> None:
    cfg, args = script.parse_args(["--self-study", "0", "--co-study", "0", "--tutor", "0", "--no-int8"])
    with pytest.raises(UserError, match="--tutor"):
        script.check_config(cfg, args)


def test_the_continuation_goes_on_with_the_pretrainings_optimizer_and_scheduler(tmp_path) -> None:
    """Figure 1's '20 more epochs': Adam's moments and step count and the plateau scheduler continue (3 + 2 steps),
    four rows can start from the same state without sharing tensors, and a resumed run reads the same state."""
    import dataclasses

    from common.runs import RunDir
    from common.training import Session

    cfg, _ = script.parse_args(tiny(tmp_path, *SMOKE, "--eval-every", "1", "--plateau-patience", "0"))
    cfg = dataclasses.replace(cfg, student_width=2, progress=False)
    exp = script.Experiment(cfg, torch.device("cpu"))
    exp.run = RunDir(tmp_path / "run")
    exp.session = Session(exp.run, torch.device("cpu"), cfg)
    pretrained = exp.train_fp32("student_pretrain", "", script.new_student(cfg), 0, 3, None, False, False)
    scheduler = pretrained.info["scheduler"]
    handoff = exp.pretraining_end(pretrained)
    saved = {k: v.clone() for k, v in handoff["optimizer"]["state"][0].items()}
    rows = [exp.train_fp32(f"row{i}", "", copy.deepcopy(pretrained.model), 3, 2, None, False, False, handoff)
            for i in range(2)]
    for row in rows:
        state = row.info["optimizer"].state_dict()["state"][0]
        assert float(state["step"]) == 3 + 2
        assert row.info["scheduler"].last_epoch == scheduler.last_epoch + 2        # one plateau check per eval
        assert row.info["optimizer"].param_groups[0]["lr"] <= pretrained.info["optimizer"].param_groups[0]["lr"]
    assert all(torch.equal(saved[k], handoff["optimizer"]["state"][0][k]) for k in saved)   # not trained in place
    quantized = exp.quantized_copy(pretrained.model, 4)    # fake-quantized rows compute as before: contiguous
    assert all(p.is_contiguous() for p in quantized.parameters())
    fresh = exp.train_fp32("fresh", "", copy.deepcopy(pretrained.model), 3, 2, None, False, False)
    assert float(fresh.info["optimizer"].state_dict()["state"][0]["step"]) == 2
    reread = exp.pretraining_end(pretrained)                                   # a resumed run: from the file
    assert torch.equal(reread["optimizer"]["state"][0]["exp_avg"], saved["exp_avg"])
    assert reread["scheduler"]["last_epoch"] == scheduler.last_epoch


@pytest.mark.parametrize("co_study_teacher", ["head", "all"])
def test_the_fixed_backbone_runs_once_a_step_for_every_co_studied_teacher(tmp_path, co_study_teacher) -> None:
    """Under --co-study-teacher head the tutors keep the teacher's backbone: its output for a co-studying or
    tutoring step is computed once and serves every copy, with the teacher's own numbers; other steps, and every
    step under 'all' (the backbone trains), compute it each time."""
    import dataclasses

    from common.devices import autocast
    from common.segmentation_models import build_segmenter
    from common.teachers import freeze

    cfg, _ = script.parse_args(tiny(tmp_path, *SMOKE, "--co-study-teacher", co_study_teacher))
    cfg = dataclasses.replace(cfg, pretrain_iterations=3, self_study=2, co_study=1, tutor=1)
    exp = script.Experiment(cfg, torch.device("cpu"))
    teacher = freeze(build_segmenter("deeplabv3_resnet50", 21))
    calls = []
    teacher.backbone.register_forward_pre_hook(lambda module, args: calls.append(1))   # copies keep the hook
    tutors = [copy.deepcopy(teacher) for _ in range(2)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), autocast(x.device, cfg.amp, cpu_bf16=True):     # the precision of a frozen teacher
        logits, features = teacher(x, return_features=True)
    for step in range(3, 8):                         # co-studying and tutoring: steps 5 and 6
        before = len(calls)
        outputs = [exp.frozen_outputs(model, x, step) for model in (teacher, *tutors)]
        kept = co_study_teacher == "head" and step in (5, 6)
        assert len(calls) - before == (1 if kept else 3)
        for t_logits, t_head in outputs:
            assert torch.equal(t_logits, logits.float()) and torch.equal(t_head, features["head"].float())
    assert len(exp.backbone_memo._kept) == (2 if co_study_teacher == "head" else 0)
    before = len(calls)
    alone = script.teacher_outputs(teacher, x, cfg.amp)              # no backbone output given: the whole teacher
    assert len(calls) - before == 1
    assert torch.equal(alone[0], logits.float()) and torch.equal(alone[1], features["head"].float())


# ----------------------------------------------------------------------------------------------- end to end
SMALL = ["--image-size", "32", "--crop", "32", "--train-images", "4", "--val-images", "2", "--batch-size", "2",
         "--pretrain-iterations", "2", "--iterations", "2", "--eval-every", "1", "--self-study", "1",
         "--co-study", "1", "--tutor", "1", "--int8-iterations", "1", "--teacher-iterations", "1",
         "--profile-size", "32", "--no-compile"]
TINY = [*SMALL, "--bits", "8,4"]
NO_INT8 = [*without(SMALL, "--int8-iterations"), "--bits", "4", "--no-int8"]   # one bit width, no int8 row
SMOKE = [*without(NO_INT8, "--train-images", "--val-images", "--pretrain-iterations", "--iterations"),
         "--train-images", "2", "--val-images", "1", "--pretrain-iterations", "1", "--iterations", "1"]


def test_a_tiny_run_without_int8(tmp_path, capsys, monkeypatch) -> None:
    """The fast tier's one end-to-end run (one iteration a job): teacher, pre-training, the fp32 rows, QAT and QKD
    at 4 bits. On a CPU with native bf16 (forced here) the float students train under bf16 autocast and the
    fake-quantized ones in float32 (bf16 would move their weights off the b-bit grid: test_polino_quantizer.py)."""
    from common import devices
    from common.quantization import QuantConv2d
    from common.unet import UNet

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(script, "cpu_supports_bf16", lambda: True)
    autocast_in_training = {"float": set(), "fake-quantized": set()}
    forward = UNet.forward

    def recording(self, *args, **kwargs):
        if self.training:
            kind = "fake-quantized" if any(isinstance(m, QuantConv2d) for m in self.modules()) else "float"
            autocast_in_training[kind].add(torch.is_autocast_enabled("cpu"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "forward", recording)
    script.main(tiny(tmp_path, *SMOKE))
    assert autocast_in_training == {"float": {True}, "fake-quantized": {False}}
    run = tmp_path / "run"
    names = [r["model"] for r in read_results(run)]
    assert names[0].startswith("DeepLabV3-ResNet50 (teacher") and len(names) == 2 + 4 + 3
    assert names[-3:] == ["U-Net QAT W4A32 (16-level weights), no teacher",
                          "U-Net W4A32 (16-level weights) + pixel-wise + pair-wise, frozen teacher (Section 3.2)",
                          "U-Net QKD W4A32 (16-level weights)"]
    assert "int8: skipped" in (run / "table_qkd.md").read_text()
    assert (run / "figures" / "predictions.png").stat().st_size > 0
    config = json.loads((run / "config.json").read_text())
    assert config["bits"] == [4] and config["int8"] is False and config["checkpoint_every"] == 100
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"teacher", "student_pretrain", "student_both", "qat4", "report4", "qkd4_1_self", "qkd4_2_co",
            "qkd4_3_tutor"} <= {r.get("job") for r in logged}
    assert (run / "checkpoints" / "student_pretrain_optimizer.pt").is_file()   # Figure 1's continuation state
    out = capsys.readouterr().out
    assert f"run folder: {run}" in out and "done in" in out
    assert_checks_written(run, out)


def assert_checks_written(run, out: str) -> None:
    """checks.csv has the shared columns and the teacher check, computed from this run's own rows; a failed check
    is stated atop the table it undermines, above the table's header."""
    import csv

    with open(run / "checks.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["check", "value", "required", "passed"]
        checks = list(reader)
    assert len(checks) == 1 and "teacher" in checks[0]["check"] and checks[0]["passed"] in ("yes", "no")
    rows = {r["model"]: float(r["iou"]) for r in read_results(run)}
    teacher = next(v for k, v in rows.items() if "(teacher" in k)
    margin = 100 * (teacher - rows["U-Net fp32, alone (continued)"])
    assert float(checks[0]["value"]) == pytest.approx(margin, abs=0.01)     # results.csv rounds to 5 digits
    assert (checks[0]["passed"] == "yes") == (float(checks[0]["value"]) >= 5)
    table = (run / "table_qkd.md").read_text()
    warned = "CHECK FAILED: teacher mIoU" in table
    assert warned == (checks[0]["passed"] == "no")
    if warned:
        assert table.index("CHECK FAILED") < table.index("| Model |")
    assert (run / "checks.md").read_text() in out                          # printed at the end of the run


@pytest.mark.slow
def test_end_to_end_every_row(tmp_path) -> None:
    script.main(tiny(tmp_path, *TINY))
    run = tmp_path / "run"
    rows = read_results(run)
    names = [r["model"] for r in rows]
    assert names[0].startswith("DeepLabV3-ResNet50 (teacher") and len(rows) == 2 + 4 + 3 * 2 + 1
    assert [n for n in names if "QAT" in n] == ["U-Net QAT W8A32 (256-level weights), no teacher",
                                                "U-Net QAT W4A32 (16-level weights), no teacher"]
    assert [n for n in names if "Section 3.2" in n] == [
        f"U-Net W{b}A32 ({2 ** b}-level weights) + pixel-wise + pair-wise, frozen teacher (Section 3.2)"
        for b in (8, 4)]
    assert [n for n in names if "QKD" in n and "int8" not in n] == ["U-Net QKD W8A32 (256-level weights)",
                                                                    "U-Net QKD W4A32 (16-level weights)"]
    assert names[-1].startswith("U-Net int8") and "QKD W8A32" in names[-1]
    assert all(0 <= float(r["iou"]) <= 1 for r in rows)
    assert rows[1]["params"] == str(7_763_041 + 660)
    table = (run / "table_qkd.md").read_text()
    assert "saturates at 50" in table and "not working well" in table and "(ours)" in table
    int8_line = next(line for line in table.splitlines() if line.startswith("| U-Net int8"))
    assert "oneDNN" in int8_line
    assert "convolutions run as oneDNN int8 kernels" in table
    for name in ("figure1_student_loss.png", "figure2_distillation_loss.png", "qkd_training_loss.png",
                 "val_miou.png", "bits_sweep.png", "predictions.png"):
        assert (run / "figures" / name).stat().st_size > 0
    config = json.loads((run / "config.json").read_text())
    assert config["bits"] == [8, 4] and config["beta1"] == 0.8
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    jobs = {r.get("job") for r in logged}
    assert {"student_pretrain", "student_both", "report8", "qkd4_1_self", "qkd4_2_co", "qkd4_3_tutor",
            "int8"} <= jobs
    assert any("train_pair" in r for r in logged if r.get("job") == "student_both")
    assert any("teacher_kl" in r for r in logged if r.get("job") == "qkd8_2_co")


@pytest.mark.slow
def test_a_run_interrupted_in_co_studying_resumes_to_the_same_numbers(tmp_path, monkeypatch) -> None:
    flags = [*NO_INT8, "--quantizer", "qkd"]   # the qkd quantizer end to end (the default is Polino's)
    script.main(tiny(tmp_path, *flags, out="whole"))
    calls = {"n": 0}
    real = script.Experiment.co_study

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(script.Experiment, "co_study", interrupted)
    with pytest.raises(KeyboardInterrupt):
        script.main(tiny(tmp_path, *flags, out="cut"))
    assert calls["n"] == 1 and not (tmp_path / "cut" / "results.csv").exists()
    monkeypatch.setattr(script.Experiment, "co_study", real)
    script.main(["--resume", str(tmp_path / "cut"), "--no-progress"])
    whole, cut = read_results(tmp_path / "whole"), read_results(tmp_path / "cut")
    assert [(r["model"], r["iou"], r["loss"]) for r in cut] == [(r["model"], r["iou"], r["loss"]) for r in whole]
    assert "int8: skipped" in (tmp_path / "cut" / "table_qkd.md").read_text()
    assert (tmp_path / "cut" / "checks.csv").read_text() == (tmp_path / "whole" / "checks.csv").read_text()


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags, words", [
    (["--bits", "9"], "must lie in 2..8"),
    (["--bits", "8,1"], "must lie in 2..8"),
    (["--bits", "eight"], "whole numbers"),
    (["--data-root", "/no/such/folder"], "no such file or folder"),
    (["--crop", "40"], "multiples of 16"),
    (["--teacher-weights", "coco", "--teacher-checkpoint", "x.pt"], "give one"),
    (["--batch-size", "1"], "BatchNorm"),
    (["--ranges", "tracked"], "--quantizer qkd"),                  # the default quantizer is Polino's
    (["--quantizer", "qkd", "--bucket-size", "64"], "--quantizer polino"),
    (["--tutor", "-1"], "must be >= 0"),
])
def test_bad_flags_are_one_clear_line(tmp_path, flags, words) -> None:
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, *flags))
    assert words in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_missing_voc_in_data_root(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, "--data-root", str(tmp_path / "data")))
    assert str(tmp_path / "data") in str(error.value)
    assert not (tmp_path / "run").exists()


def test_teacher_checkpoint_of_another_architecture(tmp_path) -> None:
    path = tmp_path / "fcn_resnet101.pt"
    save_weights(path, build_segmenter("fcn_resnet101", 21))
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, *without(TINY, "--teacher-iterations"), "--teacher-checkpoint", str(path)))
    assert "fcn_resnet101" in str(error.value) and "deeplabv3_resnet101" in str(error.value)  # the report's teacher
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_voc_images_larger_than_the_evaluation_square_stop_before_training(tmp_path) -> None:
    from test_voc import make_voc   # tiny VOC 2012 files in the published layout (validation images up to 28 px)

    make_voc(tmp_path / "data")
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, "--data-root", str(tmp_path / "data"), "--eval-size", "16", "--crop", "32"))
    assert "--eval-size 16" in str(error.value) and "28 pixels" in str(error.value) and "32" in str(error.value)
    assert not (tmp_path / "run").exists()
