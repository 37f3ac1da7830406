"""The command line of reproduce_unet_kd.py: user mistakes end with status 2 and one ``error:`` line, no traceback.

Every case runs twice: in process, through ``run_main`` as the command line runs ``main`` (the smoke tier), and as
a real subprocess (the slow tier: a few seconds each, mostly importing torch). Every case fails before any
training starts.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "reproduce_unet_kd.py"


@pytest.fixture(params=["in_process", pytest.param("subprocess", marks=pytest.mark.slow)])
def run_script(request, capsys, monkeypatch, tmp_path):
    """``run_script(*args)``: ``reproduce_unet_kd.py --no-progress *args`` -> a CompletedProcess (status, stdout,
    stderr), run in a subprocess or in this process (from inside ``tmp_path``, so a stray run folder shows there)."""
    def in_subprocess(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, SCRIPT, "--no-progress", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)

    def in_process(*args: str) -> subprocess.CompletedProcess:
        import reproduce_unet_kd
        from common.runs import run_main

        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        try:
            run_main(lambda: reproduce_unet_kd.main(["--no-progress", *args]))
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else int(e.code is not None)
        out = capsys.readouterr()
        return subprocess.CompletedProcess([SCRIPT, *args], status, out.out, out.err)

    return in_subprocess if request.param == "subprocess" else in_process


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Status 2 and exactly one stderr line ``error: ...`` that contains every needle; returns that line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    line = lines[0]
    assert line.startswith("error:"), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def test_help(run_script):
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    assert "--data-root" in result.stdout and "--preset" in result.stdout and "--resume" in result.stdout


def test_missing_data_root(tmp_path, run_script):
    missing = tmp_path / "no_epfl_here"
    result = run_script("--data-root", str(missing), "--out", str(tmp_path / "run"), "--cache-dir",
                        str(tmp_path / "cache"))
    assert_user_error(result, str(missing), "not a folder")


def test_data_root_with_wrong_label_values(tmp_path, write_epfl, run_script):
    write_epfl(tmp_path / "epfl", (1, 2))
    result = run_script("--data-root", str(tmp_path / "epfl"), "--out", str(tmp_path / "run"), "--cache-dir",
                        str(tmp_path / "cache"))
    assert_user_error(result, "training_groundtruth.tif", "label values", "[1, 2]")


def test_data_root_with_truncated_stack(tmp_path, write_epfl, run_script):
    write_epfl(tmp_path / "epfl", (0, 255))
    stack = tmp_path / "epfl" / "training.tif"
    data = stack.read_bytes()
    stack.write_bytes(data[:len(data) // 2])
    result = run_script("--data-root", str(tmp_path / "epfl"), "--out", str(tmp_path / "run"), "--cache-dir",
                        str(tmp_path / "cache"))
    assert_user_error(result, str(stack), "not a readable TIFF")


def test_crop_not_a_multiple_of_16(tmp_path, run_script):
    result = run_script("--crop", "50", "--out", str(tmp_path / "run"))
    assert_user_error(result, "multiple of 16", "50")
    assert not (tmp_path / "run").exists()  # rejected before the run folder is made


def test_teacher_checkpoint_of_another_width(tmp_path, run_script):
    import torch  # noqa: F401  (the test process writes the file with the repository's own helper)

    from common.runs import save_weights
    from common.unet import UNet

    checkpoint = tmp_path / "teacher_k2.pt"
    save_weights(checkpoint, UNet(k=2))
    result = run_script("--teacher-checkpoint", str(checkpoint), "--iterations", "1",
                        "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu")
    line = assert_user_error(result, str(checkpoint), "k=2", "64")
    assert "different architecture" in line


def test_resume_folder_without_config(tmp_path, run_script):
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "notes.txt").write_text("hello")
    result = run_script("--resume", str(tmp_path / "not_a_run"))
    assert_user_error(result, "config.json", str(tmp_path / "not_a_run"))


def test_out_folder_that_already_holds_files(tmp_path, run_script):
    out = tmp_path / "used"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    result = run_script("--out", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert_user_error(result, str(out), "holds other files")  # not a run (no config.json): nothing to resume
    assert (out / "metrics.jsonl").read_text() == "{}\n"  # nothing overwritten
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize("args, needle", [(("--k", "0"), "--k"), (("--T", "0"), "--T"),
                                          (("--iterations", "0"), "--iterations"),
                                          (("--experiment", "table2", "--teacher-checkpoint", "x.pt"),
                                           "--teacher-checkpoint")])
def test_impossible_flags_in_process(tmp_path, args, needle, capsys):
    # the same checks in-process (fast): main() raises UserError before making the run folder
    sys.path.insert(0, str(ROOT))
    try:
        import reproduce_unet_kd as script
    finally:
        sys.path.remove(str(ROOT))
    from common.errors import UserError

    with pytest.raises(UserError, match=needle):
        script.main([*args, "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_paper_preset_carries_the_sources_averaging_and_flags_override_presets():
    from reproduce_unet_kd import parse_args

    cfg, _ = parse_args(["--preset", "paper"])
    assert (cfg.alpha_t, cfg.beta_t, cfg.n_t) == (5000, 25, 500)   # Table 1's caption
    assert cfg.small_teacher_iterations == 300_000                  # Table 2's caption: 4-Unet, 300,000 iterations
    cfg, _ = parse_args(["--preset", "paper", "--iterations", "7", "--T", "2"])
    assert (cfg.iterations, cfg.T, cfg.alpha_t) == (7, 2.0, 5000)
    default, _ = parse_args([])
    assert (default.k, default.teacher, default.teacher_bn, default.experiment) == (2, 64, True, "headline")


def test_resume_with_other_settings_is_refused(tmp_path, run_script):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    line = assert_user_error(run_script("--resume", str(folder), "--iterations", "5"), "--iterations")
    assert "saved config" in line


def test_resume_of_a_config_from_another_version_is_a_clear_error(tmp_path, run_script):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text('{"k": 2, "warp_factor": 9}')
    assert_user_error(run_script("--resume", str(folder)), "warp_factor")
