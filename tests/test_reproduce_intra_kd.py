"""reproduce_intra_kd.py (source 003): the student's loss assembled from its terms, the teacher's memoised outputs,
the recipe and its --help, a tiny end-to-end run with every row (synthetic; slow tier: on ApolloScape files in the
published layout, and its resume), and bad input."""
from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch

import reproduce_intra_kd as script
from common.errors import UserError
from common.losses import (attention_transfer_loss, intra_affinity_loss, kd_kl_div, self_attention_distillation_loss,
                           weighted_cross_entropy)
from common.runs import save_weights
from common.erfnet import ERFNet
from common.segmentation_models import build_segmenter
from common.teachers import OutputMemo, freeze
from common.roads import ROAD_CLASSES
from common.synthetic_roads import SyntheticRoads
from common.training import Trained
from script_runs import read_results, tiny, without

WEIGHTS = {"kd": 0.5, "T": 2.0, "at": 3.0, "sad": 0.1, "sad_size": "input", "intra": (1.0, 0.5, 0.25),
           "intra_masks": "area"}


def random_case(seed: int = 0) -> tuple:
    torch.manual_seed(seed)
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    feats = {"block2": torch.randn(2, 6, 4, 4, requires_grad=True), "block3": torch.randn(2, 8, 2, 2),
             "block4": torch.randn(2, 8, 2, 2, requires_grad=True)}
    target = torch.randint(0, 4, (2, 16, 16))
    target[0, 0] = 255
    t_logits, t_feat = torch.randn(2, 4, 16, 16, requires_grad=True), torch.randn(2, 5, 2, 2, requires_grad=True)
    return logits, feats, target, t_logits, t_feat


def test_the_student_loss_is_the_segmentation_loss_plus_each_rows_terms() -> None:
    logits, feats, target, t_logits, t_feat = random_case()
    w = script.class_weights_for(4, 0.05)
    assert w.tolist() == pytest.approx([0.05, 1.0, 1.0, 1.0])
    seg = weighted_cross_entropy(logits, target, w)
    terms = {"kd": 0.5 * 4 * kd_kl_div(logits, t_logits, 2.0, valid_mask=target != 255),
             "at": 3.0 * attention_transfer_loss([feats["block4"]], [t_feat]),
             "sad": 0.1 * self_attention_distillation_loss([feats["block2"], feats["block3"], feats["block4"]],
                                                           size=(16, 16)),                # the input size
             "intra": intra_affinity_loss(feats["block4"], t_feat, target, 4, weights=(1.0, 0.5, 0.25))}
    for row in (("kd",), ("at",), ("sad",), ("intra",), ("intra", "kd")):
        loss, logs = script.student_loss(row, logits, feats, target, w, 4, t_logits, t_feat, WEIGHTS, sad_on=True)
        assert loss.item() == pytest.approx((seg + sum(terms[k] for k in row)).item(), rel=1e-5)
        assert set(logs) == {"train_seg", *(f"train_{k}" for k in row)}
    before, logs = script.student_loss(("sad",), logits, feats, target, w, 4, None, None, WEIGHTS, sad_on=False)
    assert before.item() == pytest.approx(seg.item(), rel=1e-6) and "train_sad" not in logs   # SAD not yet on
    loss, _ = script.student_loss(("intra", "kd", "at"), logits, feats, target, w, 4, t_logits, t_feat, WEIGHTS,
                                  sad_on=True)
    loss.backward()
    assert logits.grad.abs().sum() > 0 and feats["block4"].grad.abs().sum() > 0
    assert t_logits.grad is None and t_feat.grad is None                                    # the teacher is frozen


def test_the_figures_affinity_graphs_are_the_ones_the_loss_compares() -> None:
    torch.manual_seed(3)
    student, teacher = torch.randn(1, 5, 8, 8), torch.randn(1, 7, 8, 8)
    labels = torch.randint(0, 4, (1, 16, 16))
    for masks in ("area", "nearest"):
        classes, s_graphs = script.affinity_graphs(student, labels[0], 4, masks)
        assert classes == [0, 1, 2, 3] and s_graphs[0].shape == (4, 4)
        _, t_graphs = script.affinity_graphs(teacher, labels[0], 4, masks)
        expected = sum(float(((s - t) ** 2).mean()) for s, t in zip(s_graphs, t_graphs))
        loss = intra_affinity_loss(student, teacher, labels, 4, masks=masks)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
    one_marking = torch.zeros(16, 16, dtype=torch.long)
    one_marking[5, 5] = 2                          # one pixel of 16x16: nearest resizing to 8x8 loses it
    assert script.affinity_graphs(student, one_marking, 4, "nearest")[0] == [0]
    assert script.affinity_graphs(student, one_marking, 4, "area")[0] == [0, 2]


def test_students_start_from_the_given_checkpoint_and_a_foreign_one_is_refused(tmp_path) -> None:
    cfg, _ = script.parse_args(["--seed", "3"])
    pretrained = ERFNet(20)                        # e.g. Cityscapes classes: the output layer cannot fit 8
    with torch.no_grad():
        for p in pretrained.parameters():
            p.add_(1.0)                            # unlike any seed's initial weights
    save_weights(tmp_path / "erfnet.pt", pretrained)
    cfg.student_checkpoint = str(tmp_path / "erfnet.pt")
    student = script.new_student(cfg, 8)
    own, given = student.state_dict(), pretrained.state_dict()
    assert all(torch.equal(own[k], given[k]) for k in own if not k.startswith("classifier."))
    assert own["classifier.weight"].shape[1] == 8
    assert student.classifier.weight.is_contiguous(memory_format=torch.channels_last)   # trains faster so
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    cfg.student_checkpoint = str(tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not fit"):
        script.new_student(cfg, 8)


def test_the_teachers_logits_are_recomputed_from_its_memoised_head_features() -> None:
    torch.manual_seed(0)
    teacher = freeze(build_segmenter(script.TEACHER_ARCH, 4))
    x = torch.randn(1, 3, 16, 24)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    memo = OutputMemo()
    logits, feat = script.teacher_outputs(teacher, x, memo, 7, amp=False)
    with torch.no_grad():
        own_logits, own_feats = teacher(x, return_features=True)
    assert len(calls) == 2
    assert torch.allclose(logits, own_logits, atol=1e-5) and torch.equal(feat, own_feats["head"])
    again, feat_again = script.teacher_outputs(teacher, x, memo, 7, amp=False)     # a later student, same step
    assert len(calls) == 2 and torch.equal(again, logits) and torch.equal(feat_again, feat)
    kept = memo.bytes
    script.teacher_outputs(teacher, x, memo, None, amp=False)                       # step None: never kept
    assert len(calls) == 3 and memo.bytes == kept == 4 * feat.numel()


def test_the_presets_and_their_help(capsys) -> None:
    cfg, _ = script.parse_args([])
    assert cfg.methods == ("alone", "kd", "at", "sad", "intra", "intra_kd")
    assert (cfg.sad_weight, cfg.sad_start, cfg.intra_weights) == (0.1, 2 / 3, (1.0, 1.0, 1.0))
    assert (cfg.sad_size, cfg.intra_masks, cfg.student_checkpoint) == ("input", "area", None)
    paper, _ = script.parse_args(["--preset", "paper"])
    assert (paper.optimizer, paper.lr, paper.iterations) == ("sgd", 0.01, 60_000)
    assert round(paper.sad_start * paper.iterations) == 40_000            # the SAD paper's 40k of 60k
    assert (paper.background_weight, paper.crop_height, paper.crop_width) == (0.05, 496, 1488)   # IntRA-KD's code
    assert paper.student_checkpoint is None             # no pretrained ERFNet ships: random unless given
    assert (cfg.paint, cfg.road_classes, paper.paint, paper.road_classes) == (4.0, "lines", 1.0, "all")
    # the talk's ResNet-101 teacher in the paper preset; the default's ResNet-50 leads ERFNet in CPU minutes
    assert (cfg.teacher_arch, paper.teacher_arch) == ("deeplabv3_resnet50", "deeplabv3_resnet101")
    assert (cfg.teacher_iterations, cfg.height, cfg.width) == (350, 64, 128)
    assert script.parse_methods("intra, alone") == ("intra", "alone")
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default 240; paper preset 60,000)", "(default 4; paper preset 1)",
                  "(default lines; paper preset all)", "(default 1,1,1)", "(default 0.05)", "(default area)",
                  "(default input)",
                  "(default runs/teacher_cache)", "(default all)", "(default 100; paper preset 2,000)"):
        assert shown in text, shown


# ----------------------------------------------------------------------------------------------- mechanism checks
def test_region_cells_read_the_labels_as_the_loss_does() -> None:
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :, 7:9] = 1                     # a 2-pixel vertical line across the boundary of two cell columns
    labels[0, 12, 0] = 2                      # one pixel of class 2 in the bottom-left cell
    labels[0, 0:2, 0:2] = 255                 # ignored pixels belong to no region
    area = script.region_cells(labels, 3, "area")
    assert area.tolist() == [[4, 4, 1]]       # every cell a class touches has weight > 0 (average pooling)
    nearest = script.region_cells(labels, 3, "nearest")
    # nearest-resized to 2x2 reads pixels (0, 0), (0, 8), (8, 0), (8, 8): the line keeps its right column only,
    # the one-pixel region vanishes, and the ignored (0, 0) is no region's
    assert nearest.tolist() == [[1, 2, 0]]
    onehot = torch.nn.functional.one_hot(torch.where(labels == 255, 3, labels), 4)[..., :3]   # ignore: no class
    weights = torch.nn.functional.interpolate(onehot.permute(0, 3, 1, 2).double(), size=(2, 2), mode="area")
    assert ((weights[0, 1] > 0).sum().item(), (weights[0, 2] > 0).sum().item()) == (4, 1)   # as the loss pools


def test_line_classes() -> None:
    assert script.line_classes(script.LINE_CLASSES) == [1, 2, 3]
    assert script.line_classes(ROAD_CLASSES) == [1, 2, 3]              # not the stop line, zebra or arrows
    assert script.line_classes(("background", "lane 1", "lane 2")) == [1, 2]   # a real data set: every marking


def fake_trained(miou: float, ious: list) -> Trained:
    return Trained("x", "x", torch.nn.Identity(), {"miou": miou, "iou_per_class": ious})


def test_mechanism_checks_teacher_margin_line_classes_and_regions() -> None:
    exp = SimpleNamespace(class_names=script.LINE_CLASSES, cfg=SimpleNamespace(intra_masks="area"))
    teacher = fake_trained(0.40, [0.95, 0.30, None, 0.10])
    rows = {"alone": fake_trained(0.30, [0.95, 0.20, None, 0.12])}
    checks = script.mechanism_checks(exp, teacher, rows, [100.0, 12.0, float("nan"), 8.0])
    got = {c.check: (round(c.value, 6), c.passed) for c in checks}
    assert got == {"teacher mIoU above the student alone (points)": (10.0, True),
                   "teacher IoU above ERFNet alone's on 'solid white line' (points)": (10.0, True),
                   "teacher IoU above ERFNet alone's on 'double yellow line' (points)": (-2.0, False),
                   "median cells of a 'solid white line' region at stride 8 (area masks)": (12.0, True),
                   "median cells of a 'double yellow line' region at stride 8 (area masks)": (8.0, False)}
    assert all("teacher" in c.check for c in checks[:3])          # the dashed line is absent: no check
    assert all(c.about == script.TABLES for c in checks)
    margin = script.mechanism_checks(exp, teacher, {"alone": fake_trained(0.36, [0.9, 0.2, None, 0.1])}, None)
    assert not margin[0].passed and margin[0].value == pytest.approx(4.0)   # 4 points: below the 5 required
    assert script.mechanism_checks(exp, teacher, {"kd": rows["alone"]}, None) == []   # no student-alone row


def test_synthetic_scenes_with_wider_paint_and_lines_only() -> None:
    plain, same = SyntheticRoads("train", 6, (32, 64), 1), SyntheticRoads("train", 6, (32, 64), 1, paint=1.0)
    assert all(torch.equal(plain[i][0], same[i][0]) for i in range(6))            # paint 1 is the default
    wide = SyntheticRoads("train", 6, (32, 64), 1, paint=3.0)
    marked = [sum(int((d[i][1] > 0).sum()) for i in range(6)) for d in (plain, wide)]
    assert marked[1] > 2 * marked[0]                                             # 3x as wide: far more pixels
    lines = SyntheticRoads("train", 24, (32, 64), 1, lines_only=True)
    assert (lines.num_classes, lines.class_names) == (4, script.LINE_CLASSES)
    assert max(int(lines[i][1].max()) for i in range(24)) <= 3                 # no stop line, zebra or arrow
    full = SyntheticRoads("train", 24, (32, 64), 1)
    assert max(int(full[i][1].max()) for i in range(24)) > 3 and full.num_classes == 8
    with pytest.raises(ValueError):
        SyntheticRoads("train", 2, paint=0.0)


# ----------------------------------------------------------------------------------------------- end to end
TEACHER_LABEL = "DeepLabV3-ResNet50 (teacher; the talk's is ResNet-101)"   # the default preset's teacher
SMALL = ["--height", "16", "--width", "32", "--train-images", "4", "--val-images", "2", "--batch-size", "2",
         "--iterations", "2", "--eval-every", "1", "--teacher-iterations", "1"]
REAL_DATA = without(SMALL, "--train-images", "--val-images")   # the synthetic data's sizes


def test_end_to_end_every_row(tmp_path) -> None:
    script.main(tiny(tmp_path, *SMALL))
    run = tmp_path / "run"
    rows = read_results(run)
    assert [r["model"] for r in rows] == [TEACHER_LABEL, "ERFNet", "ERFNet + KD", "ERFNet + AT",
                                          "ERFNet + SAD", "ERFNet + IntRA-KD", "ERFNet + IntRA-KD + KD"]
    assert all(0 <= float(r["iou"]) <= 1 for r in rows)
    assert rows[1]["params"] == str(2_064_256 - 16 * 16 * 4 - 16)      # ERFNet with 4 classes (lines), not 20
    table = (run / "table_intra_kd.md").read_text()
    assert "46.63" in table and "43.48" in table and "(ours)" in table and "IntRA-KD repo: PSPNet-R101" in table
    assert "multi-scale test" in table and "--intra-masks area" in table and "input's size" in table
    per_class = (run / "table_intra_kd_per_class.md").read_text()
    assert "double yellow line" in per_class and "zebra crossing" not in per_class   # the default: lines only
    with open(run / "checks.csv") as f:
        checks = list(csv.DictReader(f))
    assert list(checks[0]) == ["check", "value", "required", "passed"]
    names = [c["check"] for c in checks]
    assert names[0] == "teacher mIoU above the student alone (points)"
    assert any("median cells of a 'solid white line' region at stride 8" in n for n in names)
    failed = [c["check"] for c in checks if c["passed"] == "no"]
    for table in ("table_intra_kd.md", "table_intra_kd_per_class.md"):   # failures stated atop both tables
        assert all(f"CHECK FAILED: {name}" in (run / table).read_text() for name in failed)
    assert (run / "checks.md").is_file()
    for name in ("training_loss.png", "val_miou.png", "predictions.png", "affinity_graphs.png",
                 "sad_attention.png"):
        assert (run / "figures" / name).stat().st_size > 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for job, term in (("student_kd", "train_kd"), ("student_at", "train_at"), ("student_sad", "train_sad"),
                      ("student_intra", "train_intra")):
        assert any(term in r for r in logged if r.get("job") == job), job
    assert list((tmp_path / "cache").glob("intra_kd_teacher_*.pt"))            # trained once, cached


@pytest.mark.slow
def test_a_run_interrupted_in_a_student_resumes_to_the_same_numbers(tmp_path, monkeypatch) -> None:
    flags = [*SMALL, "--methods", "alone,intra_kd"]
    script.main(tiny(tmp_path, *flags, out="whole"))
    real = script.Experiment.train_student

    def interrupted(self, name, teacher):
        if name == "intra_kd":
            raise KeyboardInterrupt
        return real(self, name, teacher)

    monkeypatch.setattr(script.Experiment, "train_student", interrupted)
    with pytest.raises(KeyboardInterrupt):
        script.main(tiny(tmp_path, *flags, out="cut"))
    assert not (tmp_path / "cut" / "results.csv").exists()
    monkeypatch.setattr(script.Experiment, "train_student", real)
    script.main(["--resume", str(tmp_path / "cut"), "--no-progress"])
    whole, cut = read_results(tmp_path / "whole"), read_results(tmp_path / "cut")
    assert [(r["model"], r["iou"], r["loss"]) for r in cut] == [(r["model"], r["iou"], r["loss"]) for r in whole]
    checks = [(tmp_path / folder / "checks.csv").read_text() for folder in ("whole", "cut")]
    assert checks[0] == checks[1] and "teacher mIoU above the student alone" in checks[0]   # written on resume too


def write_apollo_records(apollo_writer, root, bad_id: int | None = None) -> None:
    """Ten frames of 8x12 pixels in ApolloScape's published layout, one record (so every 10th pair is val)."""
    for k in range(10):
        ids = apollo_writer.ids(k)
        if bad_id is not None and k == 0:
            ids[1, 1] = bad_id
        apollo_writer.write(root, "road02", "Record001", 5, f"170927_0638{k:05d}", ids)


@pytest.mark.slow
def test_apollo_scape_files_in_the_published_layout(tmp_path, apollo_writer) -> None:
    write_apollo_records(apollo_writer, tmp_path / "apollo")
    script.main(tiny(tmp_path, *REAL_DATA, "--data-root", str(tmp_path / "apollo"), "--height", "16", "--width", "24",
                     "--methods", "alone,intra"))
    rows = read_results(tmp_path / "run")
    assert [r["model"] for r in rows] == [TEACHER_LABEL, "ERFNet", "ERFNet + IntRA-KD"]
    assert "ApolloScape" in (tmp_path / "run" / "table_intra_kd.md").read_text()
    assert "c_wy_z" in (tmp_path / "run" / "table_intra_kd_per_class.md").read_text()


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags, words", [
    (["--data-root", "/no/such/folder"], "no such file or folder"),
    (["--height", "30"], "multiples of 8"),
    (["--crop-height", "96"], "at most --height 64"),
    (["--methods", "alone,fitnet"], "choose from"),
    (["--intra-weights", "1,1"], "three"),
    (["--methods", "alone,sad", "--intra-masks", "nearest"], "--intra-masks sets the IntRA-KD term"),
    (["--methods", "alone,intra", "--sad-size", "block"], "--sad-size sets the SAD term"),
    (["--student-checkpoint", "/no/such/file.pt"], "no such file or folder"),
    (["--batch-size", "1"], "BatchNorm"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0: must be >= 1"),
    (["--teacher-checkpoint", "x.pt", "--teacher-backbone", "imagenet"], "give one"),
])
def test_bad_flags_are_one_clear_line(tmp_path, flags, words) -> None:
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, *flags))
    assert words in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_label_ids_outside_the_data_sets_range(tmp_path, apollo_writer) -> None:
    write_apollo_records(apollo_writer, tmp_path / "apollo", bad_id=7)
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, *REAL_DATA, "--data-root", str(tmp_path / "apollo"), "--height", "16",
                         "--width", "24"))
    assert "_bin.png" in str(error.value) and "[7]" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_an_empty_data_root(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, "--data-root", str(tmp_path / "data"), "--dataset", "culane"))
    assert str(tmp_path / "data") in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_teacher_checkpoint_of_another_architecture(tmp_path) -> None:
    path = tmp_path / "fcn_resnet101.pt"
    save_weights(path, build_segmenter("fcn_resnet101", 8))
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, *without(SMALL, "--teacher-iterations"), "--teacher-checkpoint", str(path)))
    assert "fcn_resnet101" in str(error.value) and "deeplabv3_resnet101" in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_teacher_checkpoint_of_the_other_depth_names_teacher_arch(tmp_path) -> None:
    """A ResNet-101 teacher file read as the default ResNet-50 one: the error names --teacher-arch; with it, it
    loads."""
    path = tmp_path / "deeplabv3_resnet101.pt"
    save_weights(path, build_segmenter("deeplabv3_resnet101", 4))
    args = [*without(SMALL, "--teacher-iterations"), "--teacher-checkpoint", str(path), "--methods", "alone"]
    with pytest.raises(UserError) as error:
        script.main(tiny(tmp_path, *args))
    assert "--teacher-arch" in str(error.value) and "deeplabv3_resnet50" in str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()
    script.main(tiny(tmp_path, *args, "--teacher-arch", "deeplabv3_resnet101"))
    rows = read_results(tmp_path / "run")
    assert rows[0]["model"] == "DeepLabV3-ResNet101 (teacher)"
