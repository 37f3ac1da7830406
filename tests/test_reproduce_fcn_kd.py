"""reproduce_fcn_kd.py (source 001): the loss of Section II against hand computations and the general form, the
two classification models against their published sizes, the jobs' objective and optimizer, --help, tiny
end-to-end runs, and bad input. Tier: the default run is fast (one tiny experiment-A run in process); -m slow adds
the runs that write full-size FCN checkpoints, the cache and --resume checks."""
from __future__ import annotations

import json
import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F

import reproduce_fcn_kd as script
from common.errors import UserError
from common.losses import soft_cross_entropy
from common.checks import CHECK_COLUMNS, read_checks
from common.segmentation_models import build_segmenter
from common.runs import save_weights
from common.teachers import OutputMemo
from common.training import Trained
from script_runs import read_results, tiny, without


# ----------------------------------------------------------------------------------------------- Section II
def test_loss_by_hand_with_an_ignored_sample() -> None:
    """Two samples, the second labelled 255. T = 2: the teacher's [2 ln 3, 0] softens to [3/4, 1/4], the student's
    [0, 0] to [1/2, 1/2], so D_KL = 3/4 ln(3/2) + 1/4 ln(1/2); the hard term at T = 1 is -ln(1/2) = ln 2."""
    student = torch.tensor([[0.0, 0.0], [5.0, -3.0]])
    teacher = torch.tensor([[2 * math.log(3), 0.0], [-4.0, 9.0]])
    target = torch.tensor([0, 255])
    loss, parts = script.distillation_loss(student, teacher, target, T=2.0, alpha=0.5)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert parts["train_kl"].item() == pytest.approx(kl, abs=1e-6)
    assert parts["train_ce"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * 4 * kl + 0.5 * math.log(2), abs=1e-6)


def test_loss_is_the_general_form_per_pixel() -> None:
    """Segmentation logits: the loss equals alpha T^2 (H(p_T, p_S) - H(p_T)) + (1 - alpha) CE, built from
    common.losses' soft cross-entropy and computed pixel by pixel, over the labelled pixels only."""
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 4, 3), 3 * torch.randn(2, 5, 4, 3)
    target = torch.randint(0, 5, (2, 4, 3))
    target[0, 0, :] = 255
    target[1, 3, 2] = 255
    T, alpha = 20.0, 0.9
    loss, _ = script.distillation_loss(student, teacher, target, T, alpha)

    valid = target != 255
    p_t = F.softmax(teacher / T, dim=1)
    teacher_entropy = -(p_t * p_t.log()).sum(1)[valid].mean()
    general = (alpha * T ** 2 * (soft_cross_entropy(student, teacher, T, valid_mask=valid) - teacher_entropy)
               + (1 - alpha) * F.cross_entropy(student, target, ignore_index=255))
    assert loss.item() == pytest.approx(general.item(), rel=1e-5)

    per_pixel = []
    for n, i, j in valid.nonzero().tolist():
        log_p_s = F.log_softmax(student[n, :, i, j] / T, 0)
        log_p_t = F.log_softmax(teacher[n, :, i, j] / T, 0)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
        ce = -F.log_softmax(student[n, :, i, j], 0)[target[n, i, j]]
        per_pixel.append(alpha * T ** 2 * kl + (1 - alpha) * ce)
    assert loss.item() == pytest.approx(torch.stack(per_pixel).mean().item(), rel=1e-5)


def test_ignored_pixels_get_no_gradient_and_the_teacher_none() -> None:
    torch.manual_seed(1)
    student = torch.randn(1, 4, 3, 3, requires_grad=True)
    teacher = torch.randn(1, 4, 3, 3, requires_grad=True)
    target = torch.randint(0, 4, (1, 3, 3))
    target[0, 1, 1] = 255
    loss, _ = script.distillation_loss(student, teacher, target, T=4.0, alpha=0.9)
    loss.backward()
    assert student.grad[0, :, 1, 1].abs().max() == 0
    assert student.grad[0, :, 0, 0].abs().max() > 0
    assert teacher.grad is None


def test_alpha_one_is_pure_distillation_and_zero_pure_cross_entropy() -> None:
    torch.manual_seed(2)
    student, teacher, target = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    hard, _ = script.distillation_loss(student, teacher, target, T=20.0, alpha=0.0)
    assert hard.item() == pytest.approx(F.cross_entropy(student, target).item(), rel=1e-6)
    soft, parts = script.distillation_loss(student, student, target, T=20.0, alpha=1.0)
    assert soft.item() == pytest.approx(0.0, abs=1e-6)   # a student equal to its teacher has nothing to learn


def test_a_jobs_objective_is_section_ii_with_a_teacher_and_the_cross_entropy_without() -> None:
    """``job_loss`` (every training job's loss_fn): the student's logits on batch ``step`` against the teacher's, or,
    without a teacher (the teachers, the pre-training, the 'alone' students), the hard cross-entropy only."""
    torch.manual_seed(3)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 255, 1, 1])
    seen = []
    batches = lambda step: (seen.append(step), (x, y))[1]  # noqa: E731
    cfg = script.Config(T=4.0, alpha=0.7)
    loss, logs = script.job_loss(student, teacher, batches, cfg)(7)
    expected, parts = script.distillation_loss(student(x), teacher(x), y, 4.0, 0.7)
    assert seen == [7] and torch.equal(loss, expected) and set(logs) == set(parts) == {"train_kl", "train_ce"}
    loss.backward()
    assert teacher.weight.grad is None   # the teacher runs without gradients
    alone, logs = script.job_loss(student, None, batches, cfg)(0)
    assert logs == {} and alone.item() == pytest.approx(F.cross_entropy(student(x), y, ignore_index=255).item())


def test_students_share_the_teachers_logits_of_a_step() -> None:
    """With a memo, the frozen teacher runs once per step however many students distil from it, and each student's
    loss is the one computed from the teacher directly."""
    torch.manual_seed(4)
    teacher, x, y = torch.nn.Linear(4, 3), torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    calls = []
    teacher.register_forward_hook(lambda module, inputs, output: calls.append(1))
    memo, cfg = OutputMemo(), script.Config()
    for student in (torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)):
        for step in (0, 1):
            loss, _ = script.job_loss(student, teacher, lambda s: (x + s, y), cfg, memo=memo)(step)
            expected, _ = script.distillation_loss(student(x + step), teacher(x + step), y, cfg.T, cfg.alpha)
            assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert len(calls) == 2 + 4   # once per step through the memo (2), plus the 4 direct calls of this test


def trained_with(**metrics) -> Trained:
    return Trained("job", "label", torch.nn.Identity(), metrics)


def test_teacher_check_is_the_margin_over_the_student_alone_in_points() -> None:
    """Issue 16's check: teacher minus student-alone, x 100, at least 5 points; in A accuracy, in B mIoU; no check
    without an 'alone' row to compare with."""
    [check] = script.teacher_checks(trained_with(miou=0.30), trained_with(miou=0.2), "miou", about="B")
    assert "teacher" in check.check and "mIoU" in check.check
    assert check.value == pytest.approx(10.0) and check.passed and check.required == ">= 5"
    [check] = script.teacher_checks(trained_with(accuracy=0.80), trained_with(accuracy=0.77), "accuracy", "A")
    assert "accuracy" in check.check and check.value == pytest.approx(3.0) and not check.passed
    assert script.teacher_checks(trained_with(miou=0.26), trained_with(miou=0.20), "miou", "B")[0].passed
    assert not script.teacher_checks(trained_with(miou=0.24), trained_with(miou=0.20), "miou", "B")[0].passed
    [check] = script.teacher_checks(trained_with(miou=0.1), trained_with(miou=0.3), "miou", "B")
    assert check.value == pytest.approx(-20.0) and not check.passed   # a teacher below its student
    assert script.teacher_checks(trained_with(miou=0.5), None, "miou", "B") == []


class TwoPartNet(torch.nn.Module):
    """The two parameter groups of a TorchvisionSegmenter, in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    def head_parameters(self):
        return self.head.parameters()


def test_student_optimizer_is_section_iii_b_sgd_and_its_variants() -> None:
    paper = script.Config(**script.PRESETS["paper"])
    optimizer = script.student_optimizer(TwoPartNet(), paper)
    assert [g["lr"] for g in optimizer.param_groups] == [2e-3, 2e-4]   # head, backbone: the report's rates
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in optimizer.param_groups)
    assert all(g["weight_decay"] == 0 and g["momentum"] == 0.9
               for g in script.student_optimizer(TwoPartNet(), paper, "no-weight-decay").param_groups)
    assert all(g["momentum"] == 0 and g["weight_decay"] == 5e-4
               for g in script.student_optimizer(TwoPartNet(), paper, "no-momentum").param_groups)
    net = TwoPartNet()   # the default preset: backbone rate 0, a fixed backbone (no backward pass through it)
    optimizer = script.student_optimizer(net, script.Config())
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == script.Config.head_lr
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in net.head.parameters())


# ----------------------------------------------------------------------------------------------- Section III.A models
def test_decay_shrinkage_by_hand() -> None:
    """1 - prod_t (1 - lr_t wd / (1 - momentum)), lr_t = lr (1 - t / n)^0.9: computed by hand for n = 1 and 2."""
    assert script.decay_shrinkage(0.1, 0.5, 0.0, 1) == pytest.approx(0.05)
    second = 0.1 * 0.5 ** 0.9 * 0.5 / 0.5          # momentum 0.5 doubles the decay of each step
    assert script.decay_shrinkage(0.1, 0.5, 0.5, 2) == pytest.approx(1 - (1 - 0.1) * (1 - second))
    assert script.decay_shrinkage(0.0, 5e-4, 0.9, 120) == 0.0                     # a fixed backbone never shrinks
    assert script.decay_shrinkage(0.02, 5e-4, 0.9, 120) == pytest.approx(0.0063, abs=1e-4)   # the default preset


def test_cifar_resnet18_has_the_cifar_variants_size() -> None:
    """torchvision's ResNet-18 (11,181,642 with 10 classes) with a 3x3 stem instead of 7x7: 9,408 - 1,728 fewer."""
    model = script.CifarResNet18()
    assert sum(p.numel() for p in model.parameters()) == 11_181_642 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 == 11_173_962
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_five_layer_cnn_layers_and_size() -> None:
    model = script.FiveLayerCNN()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 3 and len(linears) == 2   # "5-layer": three convolutional, two fully connected
    by_hand = (3 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + 2 * (32 + 64 + 128) \
        + (2048 * 128 + 128) + 2 * 128 + (128 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == by_hand == 357_514
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


# ----------------------------------------------------------------------------------------------- end to end
TINY_A = ["--experiment", "A", "--a-train-images", "16", "--a-test-images", "10", "--a-batch-size", "8",
          "--a-teacher-batch-size", "8",
          "--a-epochs", "1", "--a-teacher-epochs", "1"]
TINY_B = ["--image-size", "32", "--crop", "32", "--train-images", "4", "--val-images", "2", "--batch-size", "2",
          "--epochs", "1", "--teacher-iterations", "2", "--pretrain-iterations", "2", "--pretrain-images", "4",
          "--eval-every-epochs", "1", "--profile-size", "64"]
GIVEN_TEACHER_B = without(TINY_B, "--teacher-iterations")   # a given teacher is not trained: no settings for that


SMOKE_A = ["--experiment", "A", "--a-train-images", "4", "--a-test-images", "2", "--a-batch-size", "2",
           "--a-teacher-batch-size", "2", "--a-epochs", "1", "--a-teacher-epochs", "1"]


def test_experiment_a_end_to_end(tmp_path, capsys) -> None:
    """The fast tier's one run of the whole script (experiment A at its smallest): rows, table, figures, config."""
    script.main(tiny(tmp_path, *SMOKE_A))
    run = tmp_path / "run"
    rows = read_results(run)
    assert [r["experiment"] for r in rows] == ["A", "A", "A"]
    assert rows[0]["params"] == "11173962" and rows[1]["params"] == "357514"
    assert [r["iterations"] for r in rows] == ["2", "2", "2"]   # 4 images in batches of 2, one epoch each
    table = (run / "table_A.md").read_text()
    assert "95%" in table and "80%" in table and "(paper" in table and "teacher: trained by this run" in table
    for name in ("A_training_loss.png", "A_test_accuracy.png"):
        assert (run / "figures" / name).stat().st_size > 0
    config = json.loads((run / "config.json").read_text())
    assert config["T"] == 20.0 and config["alpha"] == 0.9 and config["a_lr"] == 1e-3
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train_kl" in r for r in logged if r.get("job") == "student_kd")
    assert not any("train_kl" in r for r in logged if r.get("job") == "student_alone")
    out = capsys.readouterr().out
    assert "ResNet-18 teacher" in out and f"run folder: {run}" in out and "done in" in out
    assert_teacher_check(run, "accuracy", rows[0], rows[1], "table_A.md")
    assert "Mechanism checks" in out


def assert_teacher_check(run, metric: str, teacher_row: dict, alone_row: dict, table: str) -> None:
    """checks.csv has issue 16's columns and the teacher-margin row, computed from the run's own results; a failed
    check stands atop the table it undermines, a passed one does not."""
    assert (run / "checks.csv").read_text().splitlines()[0] == ",".join(CHECK_COLUMNS)
    [check] = [c for c in read_checks(run) if "teacher" in c["check"] and metric in c["check"]]
    measured = {"accuracy": lambda r: float(r["notes"].split()[-1]), "mIoU": lambda r: float(r["iou"])}[metric]
    assert float(check["value"]) == pytest.approx(100 * (measured(teacher_row) - measured(alone_row)), abs=0.02)
    assert check["passed"] == ("yes" if float(check["value"]) >= 5 else "no")
    top = (run / table).read_text().split("| Network")[0]
    assert ("CHECK FAILED: " + check["check"] in top) == (check["passed"] == "no")
    assert (run / "checks.md").is_file()


@pytest.mark.slow
def test_experiment_a_reuses_its_cached_teacher_and_resumes(tmp_path, capsys) -> None:
    script.main(tiny(tmp_path, *TINY_A))
    first, first_checks = read_results(tmp_path / "run"), read_checks(tmp_path / "run")
    # the teacher is cached: a second run loads it instead of training it
    script.main(tiny(tmp_path, *TINY_A, out="run2"))
    assert "cached in" in (tmp_path / "run2" / "table_A.md").read_text()
    assert "training the ResNet-18 teacher" not in capsys.readouterr().out.split("run folder:")[-1]
    # --resume of a finished run, in the same folder: the students reload from their checkpoints, the same rows; the
    # teacher now comes from the cache, the same weights (its row no longer counts the iterations it trained)
    script.main(["--resume", str(tmp_path / "run"), "--no-progress"])
    resumed = read_results(tmp_path / "run")
    assert resumed[1:] == first[1:] and resumed[0]["loss"] == first[0]["loss"]
    assert read_checks(tmp_path / "run") == first_checks and len(first_checks) == 1   # rewritten, the same
    assert f"run folder: {tmp_path / 'run'}" in capsys.readouterr().out


@pytest.mark.slow
def test_experiment_b_end_to_end(tmp_path) -> None:
    script.main(tiny(tmp_path, *TINY_B, "--variants", "alone,no-weight-decay,40-epochs"))
    run = tmp_path / "run"
    rows = read_results(run)
    assert [r["notes"] for r in rows] == ["teacher", "kd", "alone", "no-weight-decay", "40-epochs"]
    assert int(rows[-1]["iterations"]) == 2 * int(rows[1]["iterations"]) == 4   # 40 epochs: twice the 20
    assert all(0 <= float(r["iou"]) <= 1 for r in rows)
    table = (run / "table_B.md").read_text()
    for paper in ("63.7", "57.9", "54.2", "61.4"):
        assert paper in table
    assert "w/o momentum" in table and "Without Weight Decay" in table
    assert "not a reproduction of the report's 'no significant effect'" in table and "not FastFCN's" in table
    for name in ("figure1_train_images.png", "figure2_before_training.png", "figure3_val_images.png",
                 "figure4_after_training.png", "B_training_loss.png", "B_val_miou.png"):
        assert (run / "figures" / name).stat().st_size > 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train_kl" in r for r in logged if r.get("job") == "B_student_kd")
    assert_teacher_check(run, "mIoU", rows[0], rows[2], "table_B.md")


def test_students_differ_only_in_their_recipe(tmp_path) -> None:
    """Every student starts from the same backbone and the same head (Figure 2's student)."""
    cfg, _ = script.parse_args(tiny(tmp_path, *TINY_B, "--backbone-init", "scratch"))
    experiment = script.SegmentationExperiment(cfg, torch.device("cpu"))
    a, b = experiment.new_student(), experiment.new_student()
    torch.manual_seed(123)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_deepened_teacher_computes_what_the_resnet50_computes() -> None:
    """The synthetic stand-in teacher starts as the pre-trained FCN-ResNet50 deepened to ResNet-101: 17 identity
    blocks in layer3, the same outputs (in eval mode) before it trains on."""
    torch.manual_seed(0)
    fcn50 = build_segmenter("fcn_resnet50", 21)
    with torch.no_grad():   # BatchNorm statistics that are not the defaults, so that copying them matters
        for module in fcn50.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    deep = script.deepen_to_resnet101(fcn50.eval()).eval()
    assert len(deep.backbone.layer3) == 23 and deep.config() == {"arch": "fcn_resnet101", "num_classes": 21}
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(deep(x), fcn50(x), atol=1e-5)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags, words", [
    (["--alpha", "1.5"], "--alpha must lie in [0, 1]"),
    (["--alpha", "-0.1"], "--alpha must lie in [0, 1]"),
    (["--T", "0"], "--T must be positive"),
    (["--T", "-2"], "--T must be positive"),
    (["--data-root", "/no/such/folder"], "no such file or folder"),
    (["--variants", "momentum"], "choose from"),
    (["--teacher-weights", "coco", "--teacher-checkpoint", "x.pt"], "give one"),
])
def test_bad_flags_are_one_clear_line(tmp_path, flags, words) -> None:
    with pytest.raises(UserError, match=None) as error:
        script.main(tiny(tmp_path, *flags))
    assert words in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_missing_data_in_data_root(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    for experiment in ("A", "B"):
        with pytest.raises(UserError) as error:
            script.main(tiny(tmp_path, "--experiment", experiment, "--data-root", str(tmp_path / "data")))
        assert str(tmp_path / "data") in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_teacher_checkpoint_of_another_architecture(tmp_path) -> None:
    path = tmp_path / "fcn_resnet50.pt"
    save_weights(path, build_segmenter("fcn_resnet50", 21))
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, *GIVEN_TEACHER_B, "--teacher-checkpoint", str(path)))
    assert "fcn_resnet50" in str(error.value) and "fcn_resnet101" in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_teacher_checkpoint_of_another_class_count(tmp_path) -> None:
    path = tmp_path / "fcn_resnet101_10_classes.pt"
    torch.save(build_segmenter("fcn_resnet101", 10).net.state_dict(), path)   # a raw torchvision state dict
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, *GIVEN_TEACHER_B, "--teacher-checkpoint", str(path)))
    assert "10" in str(error.value) and "21" in str(error.value)


def test_coco_teacher_without_network_says_where_to_put_the_file(tmp_path, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, *GIVEN_TEACHER_B, "--teacher-weights", "coco"))
    message = str(error.value)
    assert "fcn_resnet101_coco-7ecb50ca.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--teacher-checkpoint" in message and "\n" not in message
    assert not (tmp_path / "run").exists()


def test_no_momentum_variant_is_named_and_parsed() -> None:
    cfg, _ = script.parse_args(["--variants", "no-momentum,40-epochs"])
    assert cfg.variants == ("no-momentum", "40-epochs")
    assert "w/o momentum" in script.student_label("no-momentum", cfg)
    assert script.parse_args(["--variants", "none"])[0].variants == ()


def test_help_shows_config_defaults_and_the_paper_preset(capsys) -> None:
    """--help appends every setting's default (and the paper preset's value) from Config and PRESETS."""
    with pytest.raises(SystemExit) as done:
        script.parse_args(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")   # argparse wraps lines, also at hyphens
    for shown in ("temperature (default 20)", "student epochs; the paper preset's are the report's (default 8; "
                  "paper preset 30)", "FCN head learning rate; the paper preset's is the report's (default 0.02; "
                  "paper preset 0.002)", "or 'none' (default alone,no-weight-decay,40-epochs)",
                  "iterations between checkpoints (default 100; paper preset 500)", "(default B)"):
        assert shown in text, shown
    assert "default default" not in text and "auto (default): synthetic" in text
