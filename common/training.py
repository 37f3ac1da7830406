"""Training helpers shared by the scripts: seeding, device and AMP, LR schedules, the run folder, atomic
checkpoints with ``--resume``, weight files that know their architecture, and a resumable training loop.

The loop (``fit``) takes the loss as a function of the step number, so each script writes its own objective
(hard, soft, mixed, ...) in a few lines and the loop stays the same everywhere.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from common.errors import UserError, check_flags, one_line


# ------------------------------------------------------------------------------------------------ set-up
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU. Asking for a GPU that is not there is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for a GPU, but PyTorch sees none; use --device cpu (or auto).")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r} is not a device PyTorch knows ({e}); use auto, cpu or cuda.") from e


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX; read from /proc/cpuinfo on Linux). Only
    there does autocasting to bf16 on the CPU pay: elsewhere bf16 is emulated and slower than fp32."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def autocast(device: torch.device, enabled: bool, cpu_bf16: bool = False):
    """Mixed precision on GPUs (bf16 where supported, else fp16). On the CPU plain fp32, where it rarely helps,
    unless ``cpu_bf16`` asks for bf16 and the CPU has it natively (a large network such as a ResNet-101 trains
    about twice as fast)."""
    if enabled and cpu_bf16 and device.type == "cpu" and cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str,
                   iterations: int) -> torch.optim.lr_scheduler.LRScheduler:
    """'constant', or 'poly': lr * (1 - step / iterations) ** 0.9, stepped every iteration (004, Eq. 4.1)."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if kind == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / iterations) ** 0.9)
    raise ValueError(f"unknown schedule {kind!r}: use 'constant' or 'poly'")


# ------------------------------------------------------------------------------------------------ several processes
@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a ``torchrun`` job; the defaults describe a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, logs and progress bars."""
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK), or run alone.

    On GPUs each process takes ``cuda:LOCAL_RANK`` and talks NCCL; on the CPU (or ``--device cpu``) it talks gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), pick_device(device_name)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started more processes per node than there are GPUs "
                            f"({torch.cuda.device_count()}); use --nproc_per_node={torch.cuda.device_count()}.")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return Distributed(rank, world_size, local_rank), device


def all_reduce_sum(tensor: torch.Tensor, ddp: Distributed) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (nothing to do in a single-process run)."""
    if ddp.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ddp: Distributed) -> None:
    if ddp.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_from_main(value, ddp: Distributed):
    """Rank 0's ``value`` (any picklable object) on every rank, e.g. the run folder's name."""
    if not ddp.enabled:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


def add_device_arguments(group, help_default: Callable[[str], str],
                         device_help: str = "auto (default), cpu or cuda") -> None:
    """--seed, --device, --no-amp and --workers, the same in the scripts that share ``Config`` fields of those
    names (``group``: an argparse parser or argument group; argparse's None means "not given", see
    ``config_from_args``). ``help_default(field)``: the script's "default X; paper preset Y" text."""
    group.add_argument("--seed", type=int, help=f"random seed ({help_default('seed')})")
    group.add_argument("--device", help=device_help)
    group.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="no mixed precision on GPU")
    group.add_argument("--workers", type=int, metavar="N",
                       help=f"data-loading worker processes ({help_default('workers')})")


def check_run_options(cfg) -> None:
    """The run options every script shares: a seed NumPy accepts, and no negative worker count (a traceback
    otherwise, deep in NumPy or the DataLoader)."""
    check_flags({"--workers": getattr(cfg, "workers", None)}, "must be >= 0", lambda v: v >= 0)
    check_flags({"--seed": cfg.seed}, "must lie in [0, 2**31) (NumPy's seed range)", lambda v: 0 <= v < 2 ** 31)


def add_run_folder_arguments(group, script: str) -> None:
    """The flags that go with ``RunDir`` and ``resume_run``: --out, --resume and --no-progress, the same in every
    script (``group``: an argparse parser or argument group)."""
    group.add_argument("--out", metavar="FOLDER", help=f"run folder (default runs/{script}/<time>)")
    group.add_argument("--resume", metavar="RUN_FOLDER", help="continue an interrupted run with its saved config")
    group.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bars")


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


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class History:
    """Per-iteration training losses, periodic evaluations, and whether the run diverged."""

    train_loss: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    diverged: bool = False

    def to_state(self) -> dict:
        return {"train_loss": torch.tensor(self.train_loss, dtype=torch.float64),
                "evals": json.dumps(self.evals), "diverged": self.diverged}

    @classmethod
    def from_state(cls, state: dict) -> "History":
        return cls(state["train_loss"].tolist(), json.loads(state["evals"]), bool(state["diverged"]))


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[int], tuple[torch.Tensor, dict]],
        iterations: int, *, name: str, run: RunDir, device: torch.device,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        evaluate: Callable[[], dict] | None = None, eval_every: int = 100, checkpoint_every: int = 500,
        amp: bool = False, best_key: str | None = "test_loss", diverge_above: float = 1e3,
        progress: bool = True, ddp: Distributed = Distributed(), plateau_key: str = "val_loss",
        cpu_bf16: bool = False) -> History:
    """Train ``model`` for ``iterations`` steps of ``loss_fn(step) -> (loss, logs)``; resumable.

    - Every ``eval_every`` steps (and at the end) ``evaluate()`` returns metrics, logged with the step; the model
      state with the lowest ``best_key`` is kept and loaded into ``model`` when training ends (source 002 reports
      its models at the minimum of the test loss).
    - Every ``checkpoint_every`` steps the whole state (model, optimizer, scheduler, history, best weights) goes
      atomically to ``run/checkpoints/<name>.pt``. If that file exists, training continues from it; a finished
      job just loads its result. Batches must be a pure function of the step (see common.datasets.random_crops)
      for a resumed run to match an uninterrupted one exactly.
    - A non-finite loss, or one above ``diverge_above``, stops the job and marks it diverged (Table 2's "Div.").
    - ``scheduler`` steps after every iteration; a ``ReduceLROnPlateau`` instead steps after every evaluation, on
      the evaluation's ``plateau_key`` metric (source 000's scheduler "in min mode").
    - ``amp``: mixed precision on GPUs; on the CPU only with ``cpu_bf16`` (see ``autocast``).
    - Under ``torchrun`` (``ddp.enabled``) every rank runs this loop on its share of each batch, ``loss_fn``
      using the DistributedDataParallel wrapper of ``model``; the logged loss is the mean over ranks, and rank 0
      alone writes logs, checkpoints and the progress bar. ``evaluate`` runs on every rank and must return the
      same metrics on all of them (e.g. confusion matrices summed with ``all_reduce_sum``).
    """
    log = run.log if ddp.is_main else (lambda record: None)
    ckpt_path = run.checkpoints / f"{name}.pt"
    history, best, step = History(), None, 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        history, best, step = History.from_state(state["history"]), state.get("best"), int(state["step"])
        if state.get("done"):
            if best is not None:
                model.load_state_dict(best)
            return history
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if ddp.is_main:
            run.forget_after(name, step)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    best_value = min((e[best_key] for e in history.evals if best_key in e), default=math.inf)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def checkpoint(done: bool = False) -> None:
        if ddp.is_main:
            state = {"model": model.state_dict(), "step": step, "history": history.to_state(), "best": best,
                     "done": done}
            if not done:   # a finished job is only ever reloaded, so it keeps no optimizer state (half the disk)
                state.update(optimizer=optimizer.state_dict(), rng=torch.get_rng_state(),
                             scheduler=scheduler.state_dict() if scheduler else {})
            save_checkpoint(ckpt_path, state)
        barrier(ddp)

    def run_eval() -> None:
        nonlocal best, best_value
        metrics = evaluate()
        history.evals.append({"iteration": step, **metrics})
        log({"job": name, "iteration": step, **metrics})
        if plateau:
            scheduler.step(metrics[plateau_key])
        if best_key and metrics.get(best_key, math.inf) < best_value:
            best_value, best = metrics[best_key], copy.deepcopy(model.state_dict())

    model.train()
    bar = tqdm(total=iterations, initial=step, desc=name, disable=not (progress and ddp.is_main), leave=False,
               dynamic_ncols=True,
               file=sys.stderr)
    while step < iterations:
        with autocast(device, amp, cpu_bf16):
            loss, logs = loss_fn(step)
        value = loss.detach().item() if not ddp.enabled else \
            all_reduce_sum(loss.detach().float().reshape(1).clone(), ddp).item() / ddp.world_size
        if not math.isfinite(value) or value > diverge_above:  # the same decision on every rank
            history.diverged = True
            log({"job": name, "iteration": step + 1, "event": "diverged", "train_loss": value})
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None and not plateau:
            scheduler.step()
        step += 1
        history.train_loss.append(value)
        if step % 10 == 0 or step == iterations:
            log({"job": name, "iteration": step, "train_loss": value,
                     "lr": optimizer.param_groups[0]["lr"], **{k: float(v) for k, v in logs.items()}})
            bar.set_postfix(loss=f"{value:.4f}")
        bar.update(1)
        if evaluate is not None and (step % eval_every == 0 or step == iterations):
            run_eval()
            model.train()
        if step % checkpoint_every == 0 and step < iterations:
            checkpoint()
    bar.close()
    checkpoint(done=True)
    if best is not None:
        model.load_state_dict(best)
    return history


@dataclass
class Trained:
    """A trained model and what its job measured: one row of a script's results table."""

    name: str                          # the job's name in metrics.jsonl and checkpoints/
    label: str                         # the row's name in the table
    model: nn.Module
    metrics: dict                      # the final evaluation (e.g. miou, val_loss)
    train_loss: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    diverged: bool = False
    start_step: int = 0                # the global step the job started at (for curves of continued jobs)


def train_job(model: nn.Module, optimizer: torch.optim.Optimizer,
              loss_fn: Callable[[int], tuple[torch.Tensor, dict]], iterations: int, *, name: str, label: str,
              run: RunDir, device: torch.device, evaluate: Callable[[], dict], eval_every: int,
              checkpoint_every: int, amp: bool, progress: bool, seed: int,
              scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, evaluated: nn.Module | None = None,
              start_step: int = 0, cpu_bf16: bool = False) -> Trained:
    """``fit`` as the scripts run their jobs: seeded, resumable, evaluated every ``eval_every`` iterations and at
    the end, stopped (and marked diverged) only by a non-finite loss; the row's metrics are the *final* evaluation
    (not the best), logged as the job's "final" event. ``evaluated``: the network the row reports, where ``model``
    holds more (e.g. a teacher trained alongside). ``cpu_bf16``: see ``autocast``."""
    seed_everything(seed)
    history = fit(model, optimizer, loss_fn, iterations, name=name, run=run, device=device, scheduler=scheduler,
                  evaluate=evaluate, eval_every=eval_every, checkpoint_every=checkpoint_every, amp=amp,
                  best_key=None, progress=progress, diverge_above=math.inf, cpu_bf16=cpu_bf16)
    metrics = {k: v for k, v in (history.evals[-1] if history.evals else evaluate()).items() if k != "iteration"}
    if not run.logged(name, "final"):   # a resumed run reloads finished jobs: their "final" line is there
        run.log({"job": name, "event": "final", **metrics})
    if history.diverged:
        print(f"  {name}: the loss became non-finite; its row is marked 'diverged' (try a lower rate)", flush=True)
    return Trained(name, label, evaluated if evaluated is not None else model, metrics, history.train_loss,
                   history.evals, history.diverged, start_step)


def cache_path(cache_dir: str | Path, stem: str, key: dict) -> Path:
    """Where a trained teacher (or backbone) is cached: ``<cache_dir>/<stem>_<hash>.pt``, the hash of everything that
    shapes it (``key``), so a changed setting trains a new one instead of reusing a stale file."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{stem}_{digest}.pt"


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is this process's share of training batch ``step``: a pure function of (seed, step).

    The global batch of a step takes ``batch_size`` items from a per-epoch random permutation of the data set, and
    draws each item's augmentation from a generator seeded by (seed, step, position in the batch). So a resumed
    run sees exactly the batches an uninterrupted one would, and N processes under ``torchrun`` together see the
    same samples as one process (each takes a contiguous ``batch_size / N`` of them). ``load(index, generator)``
    returns one sample as a tuple of tensors; it must be picklable (a top-level function or a
    ``functools.partial`` of one) for ``BatchStream``'s worker processes.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int,
                 load: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]],
                 ddp: Distributed = Distributed()) -> None:
        if num_items < batch_size:
            raise UserError(f"the training set has {num_items} items, fewer than one batch of {batch_size}; "
                            f"lower --batch-size.")
        if batch_size % ddp.world_size:
            raise UserError(f"--batch-size {batch_size} does not split evenly over {ddp.world_size} processes; "
                            f"use a multiple of {ddp.world_size}.")
        self.num_items, self.batch_size, self.seed, self.load, self.ddp = num_items, batch_size, seed, load, ddp

    def global_indices(self, step: int) -> list[int]:
        per_epoch = self.num_items // self.batch_size  # drop the last incomplete batch of each epoch
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return order[k * self.batch_size:(k + 1) * self.batch_size].tolist()

    def __getitem__(self, step: int) -> tuple[torch.Tensor, ...]:
        indices = self.global_indices(step)
        share = self.batch_size // self.ddp.world_size
        samples = []
        for position in range(self.ddp.rank * share, (self.ddp.rank + 1) * share):
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 4099 + position)
            samples.append(self.load(indices[position], generator))
        return tuple(torch.stack(parts) for parts in zip(*samples))


class BatchStream:
    """``stream(step)`` returns ``batches[step]``; with ``workers > 0`` later steps are prepared ahead of time in
    DataLoader worker processes (decoding and augmenting VOC images keeps a GPU waiting otherwise)."""

    def __init__(self, batches: StepBatches, iterations: int, workers: int = 0, pin_memory: bool = False) -> None:
        self.batches, self.iterations, self.workers, self.pin_memory = batches, iterations, workers, pin_memory
        self._iterator: Iterator | None = None
        self._next = -1

    def __call__(self, step: int) -> tuple[torch.Tensor, ...]:
        if self.workers == 0:
            return self.batches[step]
        if self._iterator is None or step != self._next:  # first call, or a resumed job starting mid-way
            loader = torch.utils.data.DataLoader(self.batches, batch_size=None,
                                                 sampler=range(step, self.iterations),
                                                 num_workers=self.workers, pin_memory=self.pin_memory)
            self._iterator = iter(loader)
        self._next = step + 1
        try:
            return next(self._iterator)
        except UserError as e:  # raised in a worker: the message carries the worker's traceback; keep the sentence
            raise UserError(str(e).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None


def moving_average_min(values: list[float], window: int) -> tuple[float, int]:
    """min_k (1/window) sum_{i=k}^{k+window-1} values[i], and the index of the window's last element.

    Source 002's averaged loss (L*_train with alpha_t; the test loss with beta_t). With fewer values than the
    window, the mean of all of them.
    """
    if not values:
        return math.nan, -1
    if len(values) <= window:
        return float(np.mean(values)), len(values) - 1
    c = np.cumsum(np.insert(np.asarray(values, dtype=np.float64), 0, 0.0))
    means = (c[window:] - c[:-window]) / window
    k = int(np.argmin(means))
    return float(means[k]), k + window - 1


def batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


def run_main(main: Callable[[], None]) -> None:
    """Run a script's ``main``; a ``UserError`` prints one line and exits with status 2, not a traceback, and leaves
    no half-made run folder behind (see ``discard_unfinished_runs``)."""
    _NEW_RUNS.clear()
    try:
        main()
        _NEW_RUNS.clear()
    except UserError as e:
        discard_unfinished_runs()
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: continue this run with --resume <run folder>", file=sys.stderr)
        raise SystemExit(130)
