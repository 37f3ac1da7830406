"""Tests for common/runs.py's command line and run folder, on a toy script: ``RunOptions`` inherited by a Config,
``add_run_arguments``, ``help_formatter``, ``config_from_args``, ``check_run_options``, ``resume_or_check`` and
``run_folder``. (Checkpoints and weight files: test_training.py; each script's own flags: test_flags.py.)"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass

import pytest

from common.errors import UserError
from common.runs import (RunDir, RunOptions, add_run_arguments, check_run_options, config_from_args, help_formatter,
                         resume_or_check, run_folder)


@dataclass
class Config(RunOptions):
    """A script's Config: RunOptions' fields, one redeclared with the script's own default, and its own."""

    checkpoint_every: int = 200
    lr: float = 0.01
    iterations: int = 100
    name: str = "x"
    sizes: tuple = (1, 2)
    data_root: str | None = None


PRESETS = {"default": {}, "paper": {"iterations": 30_000, "lr": 0.001, "seed": 5}}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reproduce_x.py", formatter_class=help_formatter(Config, PRESETS))
    p.add_argument("--preset", choices=sorted(PRESETS), help="settings of a source")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--iterations", type=int, help="training steps")
    p.add_argument("--name", help="the run's name (default: the script's)")
    p.add_argument("--data-root", help="the real data set's folder")
    add_run_arguments(p, "reproduce_x")
    return p


def parse(argv: list[str]):
    args = parser().parse_args(argv)
    return config_from_args(args, Config, PRESETS), args


def help_of(flag: str) -> str:
    """The help text of ``flag`` as --help prints it, on one line."""
    text = " ".join(parser().format_help().split()).split(" options: ", 1)[1]     # past the usage line
    match = re.search(rf"{re.escape(flag)}(?: [A-Z_]+| {{[a-z,]+}})? (.*?)(?= --[a-z]| run:|$)", text)
    assert match, (flag, text)
    return match.group(1)


# ---- --help ------------------------------------------------------------------------------------------------------
def test_help_appends_the_default_and_the_paper_presets_value():
    assert help_of("--lr") == "learning rate (default 0.01; paper preset 0.001)"
    assert help_of("--iterations") == "training steps (default 100; paper preset 30,000)"
    assert help_of("--seed") == "random seed: data, initialisation and batches (default 0; paper preset 5)"
    assert help_of("--checkpoint-every") == "iterations between checkpoints (default 200)"   # the Config's own
    assert help_of("--workers") == "data-loading worker processes (default 0)"
    assert help_of("--preset") == "settings of a source (default default)"


def test_help_leaves_switches_unset_defaults_and_texts_that_say_their_default_alone():
    assert help_of("--no-amp").startswith("float32 throughout: no bf16 autocast on CPUs") and "(default" not in \
        help_of("--no-amp")
    assert help_of("--no-progress") == "no progress bars"
    assert help_of("--data-root") == "the real data set's folder"              # default None
    assert help_of("--out") == "run folder (default runs/reproduce_x/<time>)"    # None, and says it itself
    assert help_of("--name") == "the run's name (default: the script's)"       # says it itself


def test_add_run_arguments_is_one_group_and_workers_optional():
    p = argparse.ArgumentParser()
    add_run_arguments(p, "reproduce_x", workers=False, device_help="cpu only")
    group, = [g for g in p._action_groups if g.title == "run"]
    flags = [a.option_strings[0] for a in group._group_actions]
    assert flags == ["--seed", "--seeds", "--device", "--no-amp", "--cache-dir", "--checkpoint-every", "--out",
                     "--resume", "--no-progress"]
    assert [a.help for a in group._group_actions if a.dest == "device"] == ["cpu only"]
    assert vars(p.parse_args([])) == dict.fromkeys(["seed", "seeds", "device", "amp", "cache_dir", "checkpoint_every",
                                                    "out", "resume", "progress"])    # None: not given


# ---- the config ----------------------------------------------------------------------------------------------------
def test_config_is_defaults_then_preset_then_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, _ = parse([])
    assert isinstance(cfg, RunOptions) and cfg.preset == "default"
    absolute_cache = str(tmp_path / "runs" / "teacher_cache")
    assert dataclasses.asdict(cfg) == {**dataclasses.asdict(Config()), "cache_dir": absolute_cache}
    assert (cfg.seed, cfg.amp, cfg.workers, cfg.checkpoint_every, cfg.progress) == (0, True, 0, 200, True)

    cfg, _ = parse(["--preset", "paper", "--lr", "0.5", "--no-amp", "--cache-dir", "cache", "--no-progress"])
    assert (cfg.preset, cfg.iterations, cfg.seed) == ("paper", 30_000, 5)     # the preset
    assert (cfg.lr, cfg.amp, cfg.progress) == (0.5, False, False)              # the flags over the preset
    assert cfg.cache_dir == str(tmp_path / "cache")                            # paths are stored absolute
    args = parser().parse_args(["--seed", "3"])
    assert config_from_args(args, Config, PRESETS, sizes=(4, 8), seed=9).sizes == (4, 8)
    assert config_from_args(args, Config, PRESETS, seed=9).seed == 9          # what the script parsed comes last


@pytest.mark.parametrize("field, value, flag", [("workers", -1, "--workers"), ("seed", -1, "--seed"),
                                                ("seed", 2 ** 31, "--seed"),
                                                ("checkpoint_every", 0, "--checkpoint-every")])
def test_check_run_options_names_the_flag_at_fault(field, value, flag):
    check_run_options(Config())
    check_run_options(Config(seed=2 ** 31 - 1, workers=0, checkpoint_every=1))
    with pytest.raises(UserError) as error:
        check_run_options(Config(**{field: value}))
    assert str(error.value).startswith(f"{flag} {value}:")


# ---- resume_or_check and run_folder -------------------------------------------------------------------------------
def test_a_new_run_is_checked_and_has_no_folder_yet(tmp_path):
    cfg, args = parse(["--out", str(tmp_path / "run")])
    checked = []
    assert resume_or_check(args, cfg, Config, lambda c, a: checked.append((c, a))) == (cfg, None)
    assert checked == [(cfg, args)] and not (tmp_path / "run").exists()

    def refuse(c, a):
        raise UserError("--lr is too large")

    with pytest.raises(UserError, match="--lr is too large"):
        resume_or_check(args, cfg, Config, refuse)


def test_run_folder_creates_the_folder_writes_the_config_and_closes_with_a_line(tmp_path, capsys):
    cfg, args = parse(["--out", str(tmp_path / "run"), "--iterations", "7"])
    cfg, run = resume_or_check(args, cfg, Config, lambda c, a: None)
    with run_folder(run, "reproduce_x", cfg) as run:
        assert isinstance(run, RunDir) and run.path == tmp_path / "run"
        assert json.loads((run.path / "config.json").read_text()) == json.loads(json.dumps(dataclasses.asdict(cfg)))
        assert capsys.readouterr().out == f"run folder: {run.path}\n"
        (run.path / "table.md").write_text("| a |\n")
    out = capsys.readouterr().out
    assert out == f"\ndone in 0.0 min; results in {run.path} (table.md)\n"


def test_resume_continues_in_the_same_folder_with_the_saved_config(tmp_path, capsys):
    cfg, args = parse(["--out", str(tmp_path / "run"), "--iterations", "7", "--no-progress"])
    with run_folder(None, "reproduce_x", cfg) as run:
        run.log({"job": "a", "iteration": 1})
    saved = (run.path / "config.json").read_text()

    cfg, args = parse(["--resume", str(run.path)])
    resumed, folder = resume_or_check(args, cfg, Config, lambda c, a: pytest.fail("a resumed run is not checked"))
    assert resumed.iterations == 7 and resumed.sizes == (1, 2) and resumed.progress is False
    assert folder.path == run.path
    capsys.readouterr()
    with run_folder(folder, "reproduce_x", resumed) as again:
        assert again is folder
    assert (run.path / "config.json").read_text() == saved and run.metrics_file.exists()   # nothing rewritten
    assert capsys.readouterr().out.splitlines()[0] == f"run folder: {run.path}"

    _, args = parse(["--resume", str(run.path), "--no-progress"])      # --no-progress alone may be given
    assert resume_or_check(args, cfg, Config, None)[0].progress is False
    _, args = parse(["--resume", str(run.path), "--lr", "1"])
    with pytest.raises(UserError, match="drop the other settings \\(--lr\\)"):
        resume_or_check(args, cfg, Config, None)
