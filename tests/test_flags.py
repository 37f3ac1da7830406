"""Hostile command lines, checked in-process (parse_args, then check_config; no training, no subprocess):

  * a value out of range is one line that names exactly the flag at fault (and not the flags checked beside it);
  * a flag the chosen mode ignores is an error that says so, never a silent no-op;
  * --preset paper on the built-in synthetic data prints one note saying so;
  * --help shows every option's default (appended by common.runs.help_formatter), and the numbers it shows are
    Config's and PRESETS["paper"]'s;
  * every flag (and choice) an error message suggests exists in that script's parser.
"""
from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

import reproduce_deeplab_caspp as deeplab
import reproduce_fcn_kd as fcn
import reproduce_intra_kd as intra
import reproduce_qkd as qkd
import reproduce_unet_kd as unet
from common.errors import UserError

SCRIPTS = {"unet": unet, "deeplab": deeplab, "fcn": fcn, "qkd": qkd, "intra": intra}


def message_of(script, argv: list[str]) -> str:
    """The UserError that ``argv`` earns from parse_args or check_config; it must be one line."""
    with pytest.raises(UserError) as error:
        cfg, args = script.parse_args(argv)
        script.check_config(cfg, args)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def names(message: str, flag: str) -> bool:
    """``flag`` appears as a whole flag (--crop is not named by --crop-height)."""
    return re.search(rf"{re.escape(flag)}(?![\w-])", message) is not None


def group(script: str, flags: list[str], value: str, *extra: str) -> list[tuple]:
    """One case per flag of a check that used to report them all at once: ``flag value`` alone must name ``flag``
    and none of the others."""
    return [(script, [*extra, flag, value], flag, tuple(f for f in flags if f != flag)) for flag in flags]


# ----------------------------------------------------------------------------------------------- range errors
RANGE_CASES = [
    *group("unet", ["--k", "--teacher", "--iterations", "--teacher-iterations", "--batch-size", "--eval-every",
                    "--checkpoint-every"], "0"),
    ("unet", ["--crop", "0"], "--crop", ()),         # passed `% 16` and crashed in training
    ("unet", ["--crop", "-16"], "--crop", ()),
    ("unet", ["--crop", "40"], "--crop", ()),
    ("unet", ["--crop", "208"], "--crop", ()),       # larger than the 192-pixel synthetic slices
    *group("unet", ["--T", "--lr", "--teacher-lr"], "0"),
    *group("unet", ["--T", "--lr", "--teacher-lr"], "nan"),
    ("unet", ["--T", "inf"], "--T", ()),
    *group("unet", ["--lambda", "--class-weight-power"], "-0.5"),
    ("unet", ["--seed", "-1"], "--seed", ()),

    ("deeplab", ["--alpha", "1.5"], "--alpha", ()),
    ("deeplab", ["--alpha", "nan"], "--alpha", ()),
    ("deeplab", ["--T", "0"], "--T", ("--beta",)),
    *group("deeplab", ["--iterations", "--repeats", "--checkpoint-every", "--pretrain-iterations", "--val-images"],
           "0"),
    ("deeplab", ["--batch-size", "1"], "--batch-size", ("--iterations", "--repeats")),
    *group("deeplab", ["--crop", "--image-size"], "16"),
    *group("deeplab", ["--eval-every", "--workers"], "-1"),
    ("deeplab", ["--lr", "0"], "--lr", ("--backbone-lr",)),
    *group("deeplab", ["--backbone-lr", "--weight-decay", "--beta"], "-1"),
    ("deeplab", ["--seed", "-1"], "--seed", ()),
    ("deeplab", ["--train-images", "4"], "--train-images", ()),

    ("fcn", ["--alpha", "1.5"], "--alpha", ()),
    ("fcn", ["--T", "0"], "--T", ()),
    *group("fcn", ["--epochs", "--teacher-iterations", "--pretrain-iterations", "--eval-every-epochs", "--val-images"],
           "0"),
    *group("fcn", ["--a-epochs", "--a-teacher-epochs", "--a-test-images"], "0", "--experiment", "A"),
    ("fcn", ["--batch-size", "1"], "--batch-size", ("--a-batch-size", "--a-teacher-batch-size")),
    *group("fcn", ["--a-batch-size", "--a-teacher-batch-size"], "1", "--experiment", "A"),
    *group("fcn", ["--train-images", "--pretrain-images"], "4"),
    ("fcn", ["--experiment", "A", "--a-train-images", "100"], "--a-train-images", ()),
    *group("fcn", ["--head-lr", "--teacher-lr", "--pretrain-lr"], "0"),
    ("fcn", ["--experiment", "A", "--a-lr", "0"], "--a-lr", ("--head-lr", "--teacher-lr", "--pretrain-lr")),
    *group("fcn", ["--backbone-lr", "--weight-decay"], "-1"),
    *group("fcn", ["--crop", "--image-size", "--profile-size"], "16"),
    ("fcn", ["--workers", "-1"], "--workers", ()),   # a traceback from the DataLoader before
    ("fcn", ["--seed", "-1"], "--seed", ()),

    *group("qkd", ["--pretrain-iterations", "--iterations", "--eval-every", "--int8-iterations", "--val-images",
                   "--teacher-iterations", "--patch", "--bucket-size"], "0"),
    *group("qkd", ["--plateau-patience", "--workers", "--self-study", "--co-study", "--tutor"], "-1"),
    ("qkd", ["--self-study", "0", "--co-study", "0", "--tutor", "0"], "--tutor", ()),   # all three 0: nothing trains
    ("qkd", ["--batch-size", "1"], "--batch-size", ()),
    *group("qkd", ["--lr", "--teacher-lr", "--T"], "0"),
    ("qkd", ["--beta1", "1"], "--beta1", ("--lr", "--teacher-lr")),
    *group("qkd", ["--pixel-weight", "--pair-weight"], "-1", "--T", "2"),
    *group("qkd", ["--crop", "--eval-size", "--profile-size"], "40"),
    ("qkd", ["--image-size", "8"], "--image-size", ()),
    ("qkd", ["--train-images", "4"], "--train-images", ()),
    ("qkd", ["--seed", "-1"], "--seed", ()),

    *group("intra", ["--iterations", "--eval-every", "--val-images", "--teacher-iterations"], "0"),
    ("intra", ["--batch-size", "1"], "--batch-size", ()),
    *group("intra", ["--lr", "--teacher-lr", "--T"], "0"),
    *group("intra", ["--kd-weight", "--at-weight", "--sad-weight", "--background-weight"], "-1"),
    ("intra", ["--sad-start", "1.5"], "--sad-start", ("--kd-weight", "--at-weight", "--sad-weight")),
    *group("intra", ["--height", "--width"], "30"),
    ("intra", ["--crop-height", "96", "--crop-width", "64"], "--crop-height", ("--crop-width",)),
    ("intra", ["--crop-height", "32", "--crop-width", "20"], "--crop-width", ("--crop-height",)),
    ("intra", ["--crop-top", "1"], "--crop-top", ()),
    ("intra", ["--workers", "-1"], "--workers", ()),
    ("intra", ["--train-images", "4"], "--train-images", ()),
    ("intra", ["--seed", "-1"], "--seed", ()),
    ("intra", ["--intra-weights", "nan,1,1"], "--intra-weights", ()),
]

# ----------------------------------------------------------------------------------------------- ignored flags
MODE_CASES = [
    *[("unet", ["--experiment", "table2", *flag], flag[0], ()) for flag in
      (["--k", "2"], ["--teacher", "64"], ["--no-teacher-bn"], ["--T", "4"], ["--iterations", "5"],
       ["--teacher-iterations", "5"], ["--teacher-checkpoint", "x.pt"], ["--class-weight-power", "0.5"],
       ["--teacher-lr", "0.001"])],
    ("unet", ["--experiment", "table1", "--lambda", "1"], "--lambda", ()),
    ("unet", ["--experiment", "table1", "--batch-size", "4"], "--batch-size", ()),
    ("unet", ["--experiment", "table4", "--online-teacher"], "--online-teacher", ()),
    ("unet", ["--bn"], "--bn", ()),                                     # the headline always uses BatchNorm

    ("deeplab", ["--profile-only", "--iterations", "5"], "--iterations", ()),
    ("deeplab", ["--alpha", "0.5"], "--alpha", ()),                     # Table 5.1 distils nothing
    ("deeplab", ["--T", "2"], "--T", ()),
    ("deeplab", ["--backbone", "resnet50", "--method", "kd", "--beta", "10"], "--beta", ()),
    ("deeplab", ["--aspp", "DS"], "--aspp", ()),
    ("deeplab", ["--backbone", "resnet50", "--table", "5.4"], "--backbone", ()),
    ("deeplab", ["--rows", "13"], "--rows", ()),
    ("deeplab", ["--profile-only", "--table", "5.2"], "--profile-only", ()),
    ("deeplab", ["--teacher-checkpoint", "x.pt"], "--teacher-checkpoint", ()),

    ("fcn", ["--experiment", "A", "--teacher-weights", "coco"], "--teacher-weights", ()),
    ("fcn", ["--experiment", "A", "--teacher-checkpoint", "x.pt"], "--teacher-checkpoint", ()),
    ("fcn", ["--a-epochs", "3"], "--a-epochs", ()),                     # experiment B by default
    ("fcn", ["--experiment", "A", "--no-cifar-md5"], "--no-cifar-md5", ()),
    ("fcn", ["--teacher-weights", "coco", "--teacher-checkpoint", "x.pt"], "--teacher-checkpoint", ()),
    ("fcn", ["--data-root", "/no/such/folder"], "--data-root", ()),

    ("qkd", ["--eval-size", "64"], "--eval-size", ()),
    ("qkd", ["--teacher-weights", "coco", "--teacher-checkpoint", "x.pt"], "--teacher-checkpoint", ()),

    ("intra", ["--dataset", "culane"], "--dataset", ()),
    ("intra", ["--dataset", "apolloscape"], "--dataset", ()),
    ("intra", ["--crop-top", "0.1"], "--crop-top", ()),
    ("intra", ["--crop-height", "32"], "--crop-height", ()),
    ("intra", ["--methods", "alone,at", "--kd-weight", "2"], "--kd-weight", ()),
    ("intra", ["--methods", "alone,at", "--T", "2"], "--T", ()),
    ("intra", ["--methods", "alone,kd", "--at-weight", "2"], "--at-weight", ()),
    ("intra", ["--methods", "alone,intra", "--sad-weight", "0.2"], "--sad-weight", ()),
    ("intra", ["--methods", "alone,intra", "--sad-start", "0.5"], "--sad-start", ()),
    ("intra", ["--methods", "alone,sad", "--intra-weights", "1,1,0"], "--intra-weights", ()),
    ("intra", ["--teacher-checkpoint", "x.pt", "--teacher-backbone", "imagenet"], "--teacher-backbone", ()),
]

CASES = RANGE_CASES + MODE_CASES


def case_id(case: tuple) -> str:
    return f"{case[0]}:{' '.join(case[1])}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_each_error_is_one_line_naming_the_flag_at_fault(case):
    script, argv, at_fault, others = case
    message = message_of(SCRIPTS[script], argv)
    assert names(message, at_fault), message
    assert not [flag for flag in others if names(message, flag)], message


@pytest.mark.parametrize("script, argv", [
    ("unet", ["--experiment", "all", "--k", "4", "--T", "2", "--lambda", "0.5", "--bn", "--online-teacher"]),
    ("unet", ["--experiment", "table5", "--lambda", "0.5", "--bn"]),
    ("unet", ["--experiment", "table1", "--teacher-lr", "0.001", "--bn"]),
    ("deeplab", ["--table", "5.2", "--alpha", "0.5", "--T", "2", "--beta", "10"]),
    ("deeplab", ["--backbone", "mobilenet_v2", "--method", "at-all", "--beta", "10"]),
    ("deeplab", ["--profile-only", "--table", "5.4", "--rows", "1,2"]),
    ("fcn", ["--experiment", "all", "--a-epochs", "3", "--epochs", "3"]),
    ("fcn", ["--experiment", "A", "--a-lr", "0.01", "--T", "4", "--workers", "2"]),
    ("qkd", ["--data-root", "{dir}", "--eval-size", "512"]),
    ("intra", ["--methods", "alone,kd", "--kd-weight", "2", "--T", "2", "--crop-height", "32", "--crop-width", "64"]),
    ("intra", ["--preset", "paper", "--teacher-checkpoint", "{file}"]),   # the preset's --teacher-backbone goes unused
])
def test_settings_a_run_uses_are_accepted(script, argv, tmp_path):
    (tmp_path / "teacher.pt").write_bytes(b"")
    argv = [a.replace("{file}", str(tmp_path / "teacher.pt")).replace("{dir}", str(tmp_path)) for a in argv]
    if script == "qkd" and "--no-int8" not in argv:
        argv.append("--no-int8")
    cfg, args = SCRIPTS[script].parse_args(argv)
    SCRIPTS[script].check_config(cfg, args)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_numeric_flag_is_range_checked(name, monkeypatch):
    """-1 (and, for a float, nan) is out of range for every numeric flag: a one-line error naming that flag, never a
    traceback later in the run."""
    for action in parser_of(SCRIPTS[name], monkeypatch)._actions:
        if action.type not in (int, float) or action.choices:
            continue
        for value in ["-1"] + (["nan"] if action.type is float else []):
            message = message_of(SCRIPTS[name], [action.option_strings[0], value])
            assert names(message, action.option_strings[0]), (value, message)


def test_defaults_pass_every_check():
    for name, script in SCRIPTS.items():
        cfg, args = script.parse_args(["--no-int8"] if name == "qkd" else [])
        script.check_config(cfg, args)


# ----------------------------------------------------------------------------------------------- fcn: A against B
def parser_of(script, monkeypatch) -> argparse.ArgumentParser:
    """The script's parser, as parse_args builds it (stopped before it parses)."""
    class Built(Exception):
        pass

    def stop(self, *args, **kwargs):
        raise Built(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", stop)
        with pytest.raises(Built) as built:
            script.parse_args([])
    return built.value.args[0]


def value_for(action: argparse.Action) -> list[str]:
    """A value the parser accepts for ``action`` (none for a switch)."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [list(action.choices)[0]]
    return ["2"] if action.type in (int, float) else ["alone" if action.dest == "variants" else "x.pt"]


def test_each_fcn_experiment_rejects_the_other_experiments_flags(monkeypatch):
    parser = parser_of(fcn, monkeypatch)
    for experiment, other in (("A", "B"), ("B", "A")):
        group, = [g for g in parser._action_groups if g.title.startswith(f"experiment {experiment} ")]
        flags = {a.option_strings[0]: a for a in group._group_actions}
        assert set(flags) == set(fcn.EXPERIMENT_FLAGS[experiment])   # the check's list follows the parser's groups
        for flag, action in flags.items():
            message = message_of(fcn, ["--experiment", other, flag, *value_for(action)])
            assert names(message, flag) and f"--experiment {other}" in message, message


# ----------------------------------------------------------------------------------------------- --preset paper
@pytest.mark.parametrize("name", SCRIPTS)
def test_paper_preset_on_synthetic_data_says_so_in_one_line(name, tmp_path, capsys):
    script = SCRIPTS[name]
    extra = ["--no-int8"] if name == "qkd" else []
    cfg, args = script.parse_args(["--preset", "paper", *extra])
    script.check_config(cfg, args)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: --preset paper without --data-root: "), lines
    assert "synthetic" in lines[0]
    for argv in ([*extra], ["--preset", "paper", "--data-root", str(tmp_path), *extra]):   # no note
        cfg, args = script.parse_args(argv)
        script.check_config(cfg, args)
        assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------------------------- --help
NUMBER = r"(-?[\d.,]+(?:e[-+]?\d+)?)"


def shown_number(pattern: str, text: str) -> float | None:
    match = re.search(pattern + " " + NUMBER, text)
    return float(match.group(1).rstrip(",.").replace(",", "")) if match else None


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_every_default_as_config_and_the_paper_preset_set_it(name, monkeypatch, capsys):
    script = SCRIPTS[name]
    with pytest.raises(SystemExit) as done:
        script.parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    parser = parser_of(script, monkeypatch)
    formatter = parser._get_formatter()     # the script's formatter (common.runs.help_formatter) appends defaults
    config, paper = script.Config(), script.PRESETS["paper"]
    fields = {f.name for f in dataclasses.fields(script.Config)}
    for action in parser._actions:
        flag = action.option_strings[-1]
        assert flag in text
        if flag in ("--help", "--resume", "--out") or action.nargs == 0:   # switches are off by default
            continue
        shown = formatter._get_help_string(action)    # the text --help prints for this flag
        assert "default" in shown and "default default" not in shown, (flag, shown)
        if action.dest not in fields:
            continue
        ours = getattr(config, action.dest)
        if action.type in (int, float):
            assert shown_number("default", shown) == pytest.approx(ours, rel=1e-5), (flag, shown)
        elif isinstance(ours, str) and action.choices:
            assert any(f"{a}{ours}{b}" in shown for a, b in (("default ", ""), ("", " (default)"),
                                                              ("", " (the default)"))), (flag, shown)
        theirs = paper.get(action.dest, ours)
        if theirs == ours:
            assert "paper preset" not in shown, (flag, shown)
        elif isinstance(theirs, (int, float)):
            assert shown_number("paper preset", shown) == pytest.approx(theirs, rel=1e-5), (flag, shown)
        else:
            assert f"paper preset {theirs}" in shown, (flag, shown)


# ----------------------------------------------------------------------------------------------- suggested flags
# words that follow a flag in a message without being its value ("--T must be positive", "--dataset describes ...")
WORDS = {"is", "and", "or", "describes", "without", "checks", "pads", "trains", "sets", "must", "each", "too", "both",
         "lists", "to", "with", "pre-trains", "for", "only", "applies"}
SUGGESTION = re.compile(r"(--[a-z][a-z0-9-]*|--T)(?: ([^\s,;:()]+))?")


def bad_suggestions(parser: argparse.ArgumentParser, message: str) -> list[str]:
    """The flags (and choices: '--flag value') that ``message`` names and ``parser`` would refuse."""
    actions = {s: a for a in parser._actions for s in a.option_strings}
    bad = []
    for flag, value in SUGGESTION.findall(message):
        value = value.rstrip(".")
        if flag not in actions:
            bad.append(flag)
        elif actions[flag].choices and value and value not in WORDS:
            bad += [f"{flag} {choice}" for choice in value.split("/") if choice not in actions[flag].choices]
    return bad


def test_the_suggestion_check_catches_a_flag_or_choice_that_does_not_exist(monkeypatch):
    parser = parser_of(unet, monkeypatch)
    assert bad_suggestions(parser, "--T is ignored by --experiment table2: use --experiment headline or all.") == []
    assert bad_suggestions(parser, "use --experiment headlne, or --temperature 4.") == ["--experiment headlne",
                                                                                      "--temperature"]


def test_every_flag_a_message_suggests_exists(monkeypatch):
    """A message that sends the user to --some-flag (or --some-flag value) must name a flag, and a choice, that the
    script's parser accepts."""
    parsers = {name: parser_of(script, monkeypatch) for name, script in SCRIPTS.items()}
    messages = [(name, message_of(SCRIPTS[name], argv)) for name, argv, _, _ in CASES]
    messages += [(name, message_of(SCRIPTS[name], argv)) for name, argv in (
        ("deeplab", ["--rows", "a,b"]), ("deeplab", ["--rows", ","]), ("fcn", ["--variants", "momentum"]),
        ("qkd", ["--bits", "9"]), ("qkd", ["--bits", "eight"]), ("intra", ["--methods", "alone,fitnet"]),
        ("intra", ["--intra-weights", "1,1"]), ("deeplab", ["--backbone-init", "synthetic", "--data-root", "."]),
        ("fcn", ["--backbone-init", "synthetic", "--data-root", "."]))]
    messages += [("fcn", message_of(fcn, ["--experiment", "A", flag, "2"])) for flag in ("--crop", "--epochs")]
    for name, message in messages:
        assert bad_suggestions(parsers[name], message) == [], (name, message)
