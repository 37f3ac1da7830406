"""The run folder and the command line every script shares: ``RunDir`` (config.json, metrics.jsonl, checkpoints/,
figures/), atomic checkpoints and weight files that know their architecture, ``--resume``, the run options, and
``run_main`` (a user error is one line and exit status 2)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from common.devices import Distributed, broadcast_from_main
from common.errors import UserError, check_flags, exit_on_user_error, one_line


# ------------------------------------------------------------------------------------------------ run folder
_NEW_RUNS: list[Path] = []   # run folders this process created; run_main removes those a user error left empty


class RunDir:
    """``runs/<script>/<time>/`` (or ``--out``): config.json, metrics.jsonl, checkpoints/, figures/, tables."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.figures = self.path / "figures"
        for folder in (self.path, self.checkpoints, self.figures):
            folder.mkdir(parents=True, exist_ok=True)
        self.metrics_file = self.path / "metrics.jsonl"

    @classmethod
    def create(cls, script: str, out: str | None) -> "RunDir":
        """A new run folder, claimed atomically: ``--out`` (a new or empty folder), else ``runs/<script>/<time>``
        with ``-2``, ``-3``, ... appended when another run started in the same second."""
        path = _claim_out_folder(Path(out)) if out else _claim_timestamped_folder(Path("runs") / script)
        _NEW_RUNS.append(path)
        return cls(path)

    @classmethod
    def open_existing(cls, path: str | Path) -> "RunDir":
        if not Path(path).is_dir():
            raise UserError(f"--resume {path}: no such folder; give the run folder that the interrupted run printed "
                            f"(runs/<script>/<time>).")
        if not (Path(path) / "config.json").is_file():
            raise UserError(f"--resume {path}: no config.json there, so it is not a run folder of this repository.")
        return cls(path)

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.path / "config.json", json.dumps(config, indent=2, sort_keys=True, default=str))

    def read_config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    def log(self, record: dict) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def outputs(self) -> str:
        """What the run wrote for the reader, as the closing line names it: its tables and figures/."""
        files = sorted(p.name for p in self.path.iterdir() if p.is_file() and p.suffix in (".csv", ".md"))
        if self.figures.is_dir() and any(self.figures.iterdir()):
            files.append("figures/")
        return ", ".join(files) or "config.json, metrics.jsonl"

    def logged(self, job: str, event: str) -> bool:
        """Whether metrics.jsonl already holds ``event`` of ``job`` (a resumed run must not log it twice)."""
        if not self.metrics_file.exists():
            return False
        return any((r := json.loads(line)).get("job") == job and r.get("event") == event
                   for line in self.metrics_file.read_text().splitlines())

    def forget_after(self, job: str, step: int) -> None:
        """On resume: drop the job's log lines written after its last checkpoint, which the rerun writes again."""
        if not self.metrics_file.exists():
            return
        keep = [line for line in self.metrics_file.read_text().splitlines()
                if not ((r := json.loads(line)).get("job") == job and r.get("iteration", 0) > step)]
        atomic_write_text(self.metrics_file, "".join(line + "\n" for line in keep))


def _claim_out_folder(path: Path) -> Path:
    """``--out``: a folder that does not exist yet, or an empty one. Claimed by creating its ``checkpoints/``,
    which only one process can do, so two runs given the same ``--out`` cannot both write into it."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder; give a new folder path to --out.")
    if path.is_dir() and (path / "config.json").is_file():
        raise UserError(f"--out {path} already holds a run; continue it with --resume {path}, or give another --out.")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"--out {path} holds other files (it is not a run folder); give a new or empty folder "
                        f"to --out.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "checkpoints").mkdir()
    except FileExistsError:
        raise UserError(f"--out {path} was just taken by another run; give another --out.") from None
    except OSError as e:
        raise UserError(f"cannot create the run folder --out {path} ({e.strerror}); give a folder you can write "
                        f"to.") from None
    return path


def _claim_timestamped_folder(parent: Path) -> Path:
    """``parent/<YYYYmmdd-HHMMSS>[-n]``, created with an exclusive mkdir: unique even for runs started at once."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {parent} ({e.strerror}); run from a folder you can write to, or give "
                        f"--out FOLDER.") from None
    for n in range(1, 1000):
        path = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"{parent} holds 999 runs started in the same second; give --out FOLDER.")


def discard_unfinished_runs() -> list[Path]:
    """Remove the run folders this process created that hold no checkpoint yet (a user error stopped the run
    before any job saved anything: nothing there is worth resuming); return them."""
    removed = []
    for path in _NEW_RUNS:
        checkpoints = path / "checkpoints"
        if path.is_dir() and not (checkpoints.is_dir() and any(checkpoints.iterdir())):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    _NEW_RUNS.clear()
    return removed


@dataclass
class RunOptions:
    """The run options every script's ``Config`` inherits (the flags ``add_run_arguments`` declares). A script
    whose runs differ (deeplab checkpoints every 200 iterations, unet every 500) redeclares the field."""

    preset: str = "default"             # a key of the script's PRESETS
    seed: int = 0                       # data, initialisation, batches
    seeds: int = 1                      # --seeds N: N whole runs, seed, seed + 1, ... (common/seeds.py)
    device: str = "auto"                # auto: the GPU when there is one
    amp: bool = True                    # mixed precision: GPUs, CPUs with native bf16 (common.devices)
    workers: int = 0                    # DataLoader worker processes that prepare batches ahead
    cache_dir: str = "runs/teacher_cache"   # trained teachers and stand-in backbones, shared by runs
    out: str | None = None              # the run folder (default runs/<script>/<time>)
    checkpoint_every: int = 100         # iterations between checkpoints of the job in training
    progress: bool = True               # progress bars


def add_run_arguments(parser, script: str, *, workers: bool = True,
                      device_help: str = "auto, cpu or cuda: auto takes the GPU when there is one"):
    """The ``RunOptions`` flags, the same in every script, as one argument group "run" of ``parser``: --seed,
    --device, --no-amp, --workers (unless ``workers`` is False: a script that loads no files in the background),
    --cache-dir, --checkpoint-every, --out, --resume and --no-progress. argparse's None means "not given" (see
    ``config_from_args``); ``help_formatter`` appends each default. Returns the group, for a script's own run
    switches."""
    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, help="random seed: data, initialisation and batches")
    group.add_argument("--seeds", type=int, metavar="N",
                       help="run N seeds (--seed, --seed+1, ...), each a whole run in <run folder>/seed-<s>/, then "
                            "results_over_seeds.md/.csv (mean ± std, which differences exceed the spread) and "
                            "checks_over_seeds.md/.csv")
    group.add_argument("--device", help=device_help)
    group.add_argument("--no-amp", dest="amp", action="store_const", const=False,
                       help="float32 throughout: no bf16 autocast on CPUs that compute bf16 natively (AVX512-BF16, "
                            "AMX), no mixed precision on GPUs")
    if workers:
        group.add_argument("--workers", type=int, metavar="N", help="data-loading worker processes")
    group.add_argument("--cache-dir", metavar="FOLDER",
                       help="trained teachers and stand-in backbones, reused by later runs")
    group.add_argument("--checkpoint-every", type=int, metavar="N", help="iterations between checkpoints")
    group.add_argument("--out", metavar="FOLDER", help=f"run folder (default runs/{script}/<time>)")
    group.add_argument("--resume", metavar="RUN_FOLDER", help="continue an interrupted run with its saved config")
    group.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bars")
    return group


def check_run_options(cfg: RunOptions) -> None:
    """The run options every script shares: a seed NumPy accepts, no negative worker count (a traceback
    otherwise, deep in NumPy or the DataLoader), and a checkpoint interval of at least one iteration."""
    check_flags({"--workers": cfg.workers}, "must be >= 0", lambda v: v >= 0)
    check_flags({"--seed": cfg.seed}, "must lie in [0, 2**31) (NumPy's seed range)", lambda v: 0 <= v < 2 ** 31)
    check_flags({"--seeds": cfg.seeds}, "must be >= 1", lambda v: v >= 1)
    check_flags({"--checkpoint-every": cfg.checkpoint_every}, "must be >= 1", lambda v: v >= 1)


def help_formatter(config_class: type, presets: dict) -> type:
    """An argparse formatter that ends the help of every flag backed by a ``config_class`` field with its default
    (and the paper preset's value where that differs), read from the Config and PRESETS, so that --help cannot
    drift from what a run uses. Switches (--no-amp) and settings whose default is "not given" (None) keep their
    text as written; so does a help text that already says what its default is."""
    names = {f.name for f in dataclasses.fields(config_class)}

    class ConfigDefaults(argparse.RawDescriptionHelpFormatter):
        def _get_help_string(self, action: argparse.Action) -> str:
            text = action.help or ""
            shown = (action.dest in names and action.nargs != 0 and "default" not in text
                     and getattr(config_class, action.dest, None) is not None)
            return f"{text} ({default_text(config_class, presets, action.dest)})" if shown else text

    return ConfigDefaults


# settings that name files or folders; stored absolute, so that --resume from another working folder finds them
PATH_SETTINGS = ("cache_dir", "data_root", "teacher_checkpoint", "backbone_weights", "teacher_backbone")
NAMED_WEIGHTS = ("imagenet", "coco")   # values of those settings that name published weights, not paths


def default_text(config_class: type, presets: dict, name: str) -> str:
    """'default X' (and '; paper preset Y' where that preset changes it) for a flag's --help, read from the script's
    Config and PRESETS so that the help cannot drift from what a run uses."""
    def show(value) -> str:
        if isinstance(value, tuple):
            return ",".join(map(show, value))
        return f"{value:,}" if type(value) is int else f"{value:g}" if isinstance(value, float) else str(value)
    ours = getattr(config_class, name)
    paper = presets["paper"].get(name, ours)
    return f"default {show(ours)}" + (f"; paper preset {show(paper)}" if paper != ours else "")


def config_from_args(args, config_class: type, presets: dict, **parsed):
    """The run's config: the dataclass's defaults, then ``presets[args.preset or "default"]``, then every flag the
    user gave (argparse's None means "not given"), then ``parsed`` (flags the script parsed itself, e.g. lists).
    Paths (``PATH_SETTINGS``) become absolute."""
    preset = args.preset or "default"
    names = {f.name for f in dataclasses.fields(config_class)}
    given = {k: v for k, v in vars(args).items() if k in names and k != "preset" and v is not None}
    config = config_class(**{**dataclasses.asdict(config_class()), **presets[preset], "preset": preset, **given,
                             **parsed})
    for name in PATH_SETTINGS:
        value = getattr(config, name, None)
        if isinstance(value, str) and value and value not in NAMED_WEIGHTS:
            setattr(config, name, str(Path(value).expanduser().absolute()))
    return config


def resume_run(args, config_class: type) -> tuple:
    """(config, run folder) of ``--resume RUN_FOLDER``: the run's saved config, with only ``--no-progress`` on top.

    Any other flag would make a different run, so it is a user error; so is a config.json with settings this
    version does not know. Lists in the JSON come back as tuples, the type the scripts' dataclasses use.
    """
    given = [k for k, v in vars(args).items() if v is not None and k not in ("resume", "progress")]
    if given:
        raise UserError(f"--resume continues a run with its saved config; drop the other settings "
                        f"({', '.join('--' + k.replace('_', '-') for k in given)}) or start a new run.")
    run = RunDir.open_existing(args.resume)
    saved = run.read_config()
    unknown = set(saved) - {f.name for f in dataclasses.fields(config_class)}
    if unknown:
        raise UserError(f"{run.path}/config.json has settings this version does not know "
                        f"({', '.join(sorted(unknown))}); resume it with the version of the script that started it.")
    config = config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    if args.progress is not None:
        config.progress = args.progress
    return config, run


# ------------------------------------------------------------------------------------------------ checkpoints
def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write to ``<path>.tmp``, flush it to disk, then rename: a kill mid-write leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, what: str = "checkpoint",
                    fix: str = "delete it, and the job trains again") -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickled code. ``what``
    names the file in errors (a flag, for a file the user gave) and ``fix`` says what to do about a bad one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: {fix}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, not a checkpoint at all, or one that holds more than tensors
        raise UserError(f"{what} {path} cannot be read ({type(e).__name__}: {one_line(e, 100)}): it is corrupt, not "
                        f"a PyTorch checkpoint, or holds more than tensors; {fix}.") from e


def save_weights(path: str | Path, model: nn.Module, extra: dict | None = None) -> None:
    """Model weights plus ``model.config()``, so a later load can tell the architecture apart."""
    save_checkpoint(path, {"arch": model.config(), "model": model.state_dict(), **(extra or {})})


def load_weights(model: nn.Module, path: str | Path, what: str = "checkpoint") -> dict:
    """Load weights saved by ``save_weights`` into ``model``; another architecture is a clear user error. ``what``
    names the file in errors: a flag (``--teacher-checkpoint``) for the user's own file, else one of ours."""
    fix = ("pass a checkpoint written by this repository's scripts" if what.startswith("--")
           else "delete it, and it is trained again")
    state = load_checkpoint(path, what, fix)
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{what} {path} holds no model weights (expected a file written by this repository).")
    expected, found = model.config(), state.get("arch")
    if found is not None and found != expected:
        diff = ", ".join(f"{k}={found.get(k)!r} (need {v!r})" for k, v in expected.items() if found.get(k) != v)
        raise UserError(f"{what} {path} is a different architecture: {diff}. Pass a matching checkpoint or "
                        f"change the flags to match it.")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"{what} {path} does not fit a {expected}: {str(e).splitlines()[0]}") from e
    return state



def run_main(main: Callable[[], None], seed_baseline: Callable | None = None) -> None:
    """Run a script's ``main``; a ``UserError`` prints one line and exits with status 2, not a traceback, and leaves
    no half-made run folder behind (see ``discard_unfinished_runs``). ``--seeds N`` (N > 1) runs the script once per
    seed instead and writes the tables over seeds (common/seeds.py; ``seed_baseline`` picks each experiment's
    baseline row, by default its first row that is not a teacher)."""
    from common import seeds   # imported here: common.seeds builds on this module

    def run() -> None:
        request = seeds.seeds_request(sys.argv[1:])
        if request is not None:
            seeds.run_seeds(Path(sys.argv[0]).resolve(), request, seed_baseline or seeds.first_student)
        else:
            main()
        _NEW_RUNS.clear()

    _NEW_RUNS.clear()
    try:
        exit_on_user_error(run, cleanup=discard_unfinished_runs)
    except KeyboardInterrupt:
        print("\ninterrupted: continue this run with --resume <run folder>", file=sys.stderr)
        raise SystemExit(130)


# ------------------------------------------------------------------------------------------------ a script's main
def resume_or_check(args, cfg: RunOptions, config_class: type,
                    check: Callable[[RunOptions, object], None]) -> tuple[RunOptions, RunDir | None]:
    """``--resume RUN_FOLDER``: that run's saved config and folder (see ``resume_run``). Otherwise ``cfg`` once
    ``check(cfg, args)`` (the script's own rules) has passed, and no folder yet: the script reads its data and
    weights first, so that bad input stops it before a run folder exists."""
    if args.resume:
        return resume_run(args, config_class)
    check(cfg, args)
    return cfg, None


@contextmanager
def run_folder(run: RunDir | None, script: str, cfg: RunOptions, ddp: Distributed = Distributed()) -> Iterator[RunDir]:
    """The run's folder, announced: ``run`` when resuming, else a new one (rank 0 names and creates it and writes
    config.json; every rank of a torchrun job uses it). On leaving, the closing line: time taken and the files
    written."""
    if run is None:
        path = None
        if ddp.is_main:
            run = RunDir.create(script, cfg.out)
            run.write_config(dataclasses.asdict(cfg))
            path = str(run.path)
        run = RunDir(broadcast_from_main(path, ddp))
    say = print if ddp.is_main else (lambda *a, **k: None)
    say(f"run folder: {run.path}", flush=True)
    start = time.time()
    yield run
    say(f"\ndone in {(time.time() - start) / 60:.1f} min; results in {run.path} ({run.outputs()})", flush=True)
