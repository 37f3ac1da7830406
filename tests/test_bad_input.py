"""Bad input, as a hostile user would give it, to every script: each case ends with exit status 2 and one line
``error: ...`` naming the flag or file at fault, before any training, and leaves nothing behind -- no run folder
and no file outside it (the one thing a failed run may keep is --cache-dir's record of data files that passed
their check, ``common.filecheck.VERDICTS_FILE``).

Each reader's own bad files are tested beside it (test_voc.py, test_roads.py, test_cifar.py, test_em_data.py);
flag ranges in test_flags.py; crafted weight files in test_security.py. Here the scripts are run whole, in process
through ``run_main`` as the command line runs them (a subprocess each would cost seconds of import).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import reproduce_fcn_kd
import reproduce_intra_kd
import reproduce_qkd
from common.filecheck import VERDICTS_FILE
from common.runs import run_main, save_weights
from common.unet import UNet
from script_runs import SCRIPT_MODULES, SMALLEST_RUNS, tiny, without

SCRIPTS = {name: (SCRIPT_MODULES[name], flags) for name, flags in SMALLEST_RUNS.items()}


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def fails_cleanly(name: str, extra: list[str], tmp_path: Path, capsys, monkeypatch, *needles: str,
                  out: str = "run") -> str:
    """Run script ``name`` with ``extra`` flags from inside ``tmp_path`` (so a stray default run folder would show
    up there); assert exit status 2, one line holding every needle, no run folder and no new file; return it."""
    script, small = SCRIPTS[name]
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    if "--data-root" in extra:   # the synthetic data's sizes are refused beside real data
        small = without(small, "--train-images", "--val-images", "--image-size")
    if "--teacher-checkpoint" in extra:   # and the teacher's training settings beside a trained teacher
        small = without(small, "--teacher-iterations")
    argv = extra if "--resume" in extra else tiny(tmp_path, *small, *extra, out=out)
    with pytest.raises(SystemExit) as excinfo:
        run_main(lambda: script.main(argv))
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    new = {p for p in files_under(tmp_path) - before if p.name != VERDICTS_FILE}
    assert not new, sorted(map(str, new))
    if "--resume" not in extra and out == "run":
        assert not (tmp_path / "run").exists()
    return lines[0]


# ------------------------------------------------------------------------------- the run folder, every script
@pytest.mark.parametrize("name", SCRIPTS)
def test_out_that_is_a_file(name, tmp_path, capsys, monkeypatch):
    (tmp_path / "taken").write_text("mine")
    fails_cleanly(name, [], tmp_path, capsys, monkeypatch, "--out", "is a file", out="taken")
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("name", SCRIPTS)
def test_out_that_holds_other_files(name, tmp_path, capsys, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    fails_cleanly(name, [], tmp_path, capsys, monkeypatch, "--out", "not a run folder", out="mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", SCRIPTS)
def test_out_that_holds_a_run(name, tmp_path, capsys, monkeypatch):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    fails_cleanly(name, [], tmp_path, capsys, monkeypatch, "already holds a run", f"--resume {tmp_path / 'old'}",
                  out="old")


@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_of_what_is_not_a_run(name, tmp_path, capsys, monkeypatch):
    fails_cleanly(name, ["--resume", str(tmp_path / "nowhere")], tmp_path, capsys, monkeypatch, "--resume",
                  "no such folder")
    (tmp_path / "empty").mkdir()
    fails_cleanly(name, ["--resume", str(tmp_path / "empty")], tmp_path, capsys, monkeypatch, "--resume",
                  "not a run folder")


@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_with_other_settings(name, tmp_path, capsys, monkeypatch):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    fails_cleanly(name, ["--resume", str(tmp_path / "old"), "--seed", "3"], tmp_path, capsys, monkeypatch,
                  "--seed", "--resume")


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_missing_data_root(name, tmp_path, capsys, monkeypatch):
    fails_cleanly(name, ["--data-root", str(tmp_path / "nothing")], tmp_path, capsys, monkeypatch, "--data-root",
                  str(tmp_path / "nothing"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that is not there")
@pytest.mark.parametrize("name", SCRIPTS)
def test_a_gpu_that_is_not_there(name, tmp_path, capsys, monkeypatch):
    script, small = SCRIPTS[name]
    argv = [a for a in tiny(tmp_path, *small) if a not in ("--device", "cpu")] + ["--device", "cuda"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as excinfo:
        run_main(lambda: script.main(argv))
    assert excinfo.value.code == 2
    assert "--device cpu" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_two_runs_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    from common.runs import RunDir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "20261130-120000")
    first, second = RunDir.create("s", None), RunDir.create("s", None)
    assert first.path != second.path and first.path.is_dir() and second.path.is_dir()
    assert second.path.name == "20261130-120000-2"


def test_a_user_error_after_the_run_folder_exists_removes_it(tmp_path, capsys, monkeypatch):
    """A check that can only run once the run has started (here: the teacher's weights, fetched when the teacher is
    built) still leaves no half-made folder."""
    def no_network(*args, **kwargs):
        raise OSError("no network in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    fails_cleanly("intra", ["--teacher-backbone", "imagenet"], tmp_path, capsys, monkeypatch,
                  "resnet50-0676ba61.pth", "--teacher-backbone PATH")   # the default teacher's backbone


# ------------------------------------------------------------------------------- data, through the scripts
@pytest.mark.parametrize("name, extra", [
    ("deeplab", ["--backbone", "mobilenet_v2", "--backbone-init", "scratch"]),
    ("fcn", ["--backbone-init", "scratch"]),
    ("qkd", []),
])
def test_a_bad_voc_mask_anywhere_stops_before_training(name, extra, tmp_path, capsys, monkeypatch, write_tiny_voc):
    write_tiny_voc(tmp_path / "voc", bad_label=50)    # every val mask holds a 50
    line = fails_cleanly(name, ["--data-root", str(tmp_path / "voc"), *extra], tmp_path, capsys, monkeypatch,
                         "2008_000001.png", "2008_000002.png")
    assert "50" in line


def test_epfl_masks_with_other_labels(tmp_path, capsys, monkeypatch, write_epfl):
    write_epfl(tmp_path / "epfl", (0, 7, 255))
    fails_cleanly("unet", ["--data-root", str(tmp_path / "epfl")], tmp_path, capsys, monkeypatch,
                  "training_groundtruth.tif")


def test_voc_given_to_experiment_a_is_named(tmp_path, capsys, monkeypatch, write_tiny_voc):
    write_tiny_voc(tmp_path / "voc")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run_main(lambda: reproduce_fcn_kd.main(tiny(tmp_path, "--experiment", "A", "--data-root",
                                                    str(tmp_path / "voc"))))
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "looks like PASCAL VOC 2012" in line and "--experiment B" in line
    assert not (tmp_path / "run").exists()


def test_a_library_message_is_cut_at_a_word():
    from common.errors import one_line

    text = "Weights only load failed.\n" + " ".join(["Unsupported global: GLOBAL builtins.open"] * 9)
    cut = one_line(text, 100)
    assert "\n" not in cut and len(cut) <= 104 and cut.endswith(" ...")
    assert text.replace("\n", " ").startswith(cut[:-4]) and text.replace("\n", " ")[len(cut) - 4] == " "
    assert one_line("short\ntext") == "short text"


def test_exit_on_user_error_is_one_line_status_2_and_cleans_up_only_then(capsys):
    from common.errors import UserError, exit_on_user_error

    cleaned = []

    def fails() -> None:
        raise UserError("--crop 30: must be a positive multiple of 16.")

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(fails, cleanup=lambda: cleaned.append(True))
    assert exit_info.value.code == 2 and cleaned == [True]
    assert capsys.readouterr().err == "error: --crop 30: must be a positive multiple of 16.\n"
    exit_on_user_error(lambda: None, cleanup=lambda: cleaned.append(True))   # success: nothing to clean
    with pytest.raises(ZeroDivisionError):   # a bug is not a user mistake: its traceback stays
        exit_on_user_error(lambda: 1 / 0, cleanup=lambda: cleaned.append(True))
    assert cleaned == [True]


@pytest.mark.parametrize("name, extra, looks_like", [
    ("intra", ["--dataset", "apolloscape"], "CULane"),
    ("deeplab", ["--backbone-init", "scratch"], "CULane"),
    ("unet", [], "CULane"),
])
def test_the_data_of_another_script_is_named(name, extra, looks_like, tmp_path, capsys, monkeypatch):
    culane = tmp_path / "culane"
    (culane / "list").mkdir(parents=True)
    (culane / "list" / "train_gt.txt").write_text("/driver_23_30frame/a.MP4/00000.jpg /laneseg_label_w16/a.png\n")
    fails_cleanly(name, ["--data-root", str(culane), *extra], tmp_path, capsys, monkeypatch,
                  f"looks like {looks_like}", "reproduce_intra_kd.py --dataset culane")


# ------------------------------------------------------------------------------- weights files
@pytest.mark.parametrize("name, extra", [
    ("unet", []), ("fcn", []), ("qkd", []), ("intra", []),
    ("deeplab", ["--table", "5.2", "--rows", "1"]),
])
def test_a_teacher_checkpoint_that_is_not_a_checkpoint(name, extra, tmp_path, capsys, monkeypatch):
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"not a checkpoint at all")
    line = fails_cleanly(name, ["--teacher-checkpoint", str(path), *extra], tmp_path, capsys, monkeypatch,
                         str(path))
    assert "train again" not in line     # the user's own file: deleting it is no advice


def test_a_teacher_checkpoint_of_another_architecture(tmp_path, capsys, monkeypatch):
    save_weights(tmp_path / "unet8.pt", UNet(8))
    fails_cleanly("unet", ["--teacher-checkpoint", str(tmp_path / "unet8.pt"), "--teacher", "64"], tmp_path,
                  capsys, monkeypatch, str(tmp_path / "unet8.pt"), "different architecture")


def test_a_relative_cache_dir_is_stored_absolute(tmp_path, monkeypatch):
    """--resume from another working folder finds the same cache (and data, and teacher file)."""
    monkeypatch.chdir(tmp_path)
    cfg, _ = reproduce_qkd.parse_args(["--cache-dir", "cache", "--data-root", "data"])
    assert cfg.cache_dir == str(tmp_path / "cache") and cfg.data_root == str(tmp_path / "data")


def test_a_bad_file_list_is_one_line_per_run_not_per_file(tmp_path):
    """Many bad files: the line names the first ten and counts the rest."""
    from common.errors import UserError
    from common.filecheck import check_files

    paths = [(tmp_path / f"f{i}",) for i in range(13)]
    with pytest.raises(UserError) as excinfo:
        check_files(paths, _always_bad, what="test files", progress=False)
    message = str(excinfo.value)
    assert message.startswith("13 of 13 test files failed") and "and 3 more" in message and "\n" not in message
    assert str(tmp_path / "f9") in message and str(tmp_path / "f10") not in message


def _always_bad(path: Path) -> None:
    from common.errors import UserError

    raise UserError(f"{path} is bad")


# ------------------------------------------------------------------------------- every suggestion works
SUGGESTION = re.compile(r"(--[a-z][a-z0-9-]*)(?: (coco|imagenet|PATH|FILE))?")


def weight_messages(script, tmp_path: Path, monkeypatch, class_counts=(21, 8)) -> list[str]:
    """The errors a script's weight flags can produce: a garbage file given to each, and each download offline."""
    from common.errors import UserError
    from common.segmentation_models import build_segmenter

    def no_network(*args, **kwargs):
        raise OSError("no network in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"garbage")
    calls = [dict(weights=garbage), dict(weights="coco")]
    if script is not reproduce_qkd:   # its teacher is whole-network weights or trained from scratch: no backbone flag
        calls += [dict(backbone_weights=garbage), dict(backbone_weights="imagenet"),
                  dict(weights=garbage, backbone_weights=garbage)]
    messages = []
    for num_classes in class_counts:
        for kwargs in calls:
            with pytest.raises(UserError) as excinfo:
                build_segmenter("deeplabv3_resnet101", num_classes, flags=script.FLAGS, **kwargs)
            messages.append(str(excinfo.value))
    return messages


@pytest.mark.parametrize("script", [reproduce_fcn_kd, reproduce_qkd, reproduce_intra_kd],
                         ids=["fcn", "qkd", "intra"])
def test_every_flag_a_weights_error_suggests_is_one_the_script_takes(script, tmp_path, monkeypatch):
    classes = {reproduce_fcn_kd: (21,), reproduce_qkd: (21,), reproduce_intra_kd: (8, 36)}[script]  # VOC; roads
    for message in weight_messages(script, tmp_path, monkeypatch, classes):
        for flag, value in SUGGESTION.findall(message):
            path = str(tmp_path / "w.pth")
            tries = [[flag, path if value in ("PATH", "FILE") else value]] if value else [[flag], [flag, path]]
            if not any(_parses(script, argv) for argv in tries):
                pytest.fail(f"{script.__name__} does not take {' '.join(tries[0])!r}, which it names: {message}")


def _parses(script, argv: list[str]) -> bool:
    try:
        script.parse_args(argv)
    except SystemExit:
        return False
    return True


def test_intra_never_suggests_coco_files_for_its_road_classes(tmp_path, monkeypatch):
    """Its classes are ApolloScape's 36 or CULane's 5 (8 on the synthetic roads); COCO's 21-class file fits none."""
    messages = weight_messages(reproduce_intra_kd, tmp_path, monkeypatch, class_counts=(8, 36))
    suggestions = [m.split("pass ", 1)[-1] for m in messages if "COCO weights for" not in m]
    assert suggestions and not any("coco" in s.lower() for s in suggestions), suggestions


# ------------------------------------------------------------------------------- flags the run would ignore
@pytest.mark.parametrize("name, extra, flag", [
    ("fcn", ["--data-root", "DATA", "--train-images", "8"], "--train-images"),
    ("deeplab", ["--data-root", "DATA", "--image-size", "96"], "--image-size"),
    ("qkd", ["--data-root", "DATA", "--val-images", "3"], "--val-images"),
    ("intra", ["--data-root", "DATA", "--train-images", "8"], "--train-images"),
    ("deeplab", ["--backbone-init", "scratch", "--pretrain-iterations", "5"], "--pretrain-iterations"),
    ("qkd", ["--int8-iterations", "3"], "--int8-iterations"),             # its small flags hold --no-int8
    ("unet", ["--teacher-checkpoint", "TEACHER", "--teacher-iterations", "5"], "--teacher-iterations"),
    ("fcn", ["--teacher-checkpoint", "TEACHER", "--teacher-lr", "0.1"], "--teacher-lr"),
    ("qkd", ["--teacher-weights", "coco", "--teacher-iterations", "5"], "--teacher-iterations"),
    ("intra", ["--teacher-checkpoint", "TEACHER", "--teacher-iterations", "5"], "--teacher-iterations"),
])
def test_a_flag_the_run_would_ignore_is_refused(name, extra, flag, tmp_path, capsys, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "teacher.pt").write_bytes(b"never read")
    places = {"DATA": str(tmp_path / "data"), "TEACHER": str(tmp_path / "teacher.pt")}
    line = fails_cleanly(name, [places.get(word, word) for word in extra], tmp_path, capsys, monkeypatch, flag,
                         "drop")
    assert line.startswith(f"error: {flag} ")
