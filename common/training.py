"""Training, the same in every script: seeding, LR schedules, ``train`` (the one entry point: a resumable, logged,
evaluated job that returns a ``Trained`` row) around ``fit`` (the loop), and batches that are a pure function of the
step (``StepBatches``, streamed by ``BatchStream``; ``training_batches`` builds both for a job).

The loop (``fit``) takes the loss as a function of the step number, so each script writes its own objective
(hard, soft, mixed, ...) in a few lines and the loop stays the same everywhere.
"""
from __future__ import annotations

import copy
import json
import math
import random
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from common.errors import UserError
from common.devices import Distributed, all_reduce_sum, autocast, barrier
from common.runs import RunDir, RunOptions, load_checkpoint, save_checkpoint


# ------------------------------------------------------------------------------------------------ set-up
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str,
                   iterations: int) -> torch.optim.lr_scheduler.LRScheduler:
    """'constant', or 'poly': lr * (1 - step / iterations) ** 0.9, stepped every iteration (004, Eq. 4.1)."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if kind == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / iterations) ** 0.9)
    raise ValueError(f"unknown schedule {kind!r}: use 'constant' or 'poly'")


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
      job just loads its result. Batches must be a pure function of the step (see common.em_data.random_crops)
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
    metrics: dict                      # the job's report: by default its final evaluation (e.g. miou, val_loss)
    train_loss: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    diverged: bool = False
    start_step: int = 0                # the global step the job started at (for curves of continued jobs)
    info: dict = field(default_factory=dict)   # what the script needs to place the row (e.g. its table row)


@dataclass
class Session:
    """What every training job of a run shares: its folder, its device, its run options (``seed``, ``amp``,
    ``progress``, ``checkpoint_every``, ``workers``: a script's Config) and the processes of a torchrun job."""

    run: RunDir
    device: torch.device
    options: RunOptions
    ddp: Distributed = Distributed()

    def say(self, text: str) -> None:
        """Print ``text`` (rank 0 only under torchrun)."""
        if self.ddp.is_main:
            print(text, flush=True)


def _loggable(metrics: dict) -> dict:
    """The entries of ``metrics`` that metrics.jsonl can hold (a prediction array, say, stays out)."""
    return {k: v for k, v in metrics.items() if k != "iteration" and isinstance(v, (int, float, str, bool, list,
                                                                                      type(None)))}


def train(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[int], tuple[torch.Tensor, dict]],
          iterations: int, *, session: Session, name: str, label: str = "",
          evaluate: Callable[[], dict] | None = None, eval_every: int | None = None,
          scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, evaluated: nn.Module | None = None,
          start_step: int = 0, seed: int | None = None, reseed: bool = True, amp: bool | None = None,
          cpu_bf16: bool = False,
          best_key: str | None = None, diverge_above: float = math.inf,
          report: Callable[[History], dict] | None = None) -> Trained:
    """Train one job, the way every script trains: the entry point to ``fit`` (the loop).

    Seeded (``seed``, default the run's; ``reseed`` False: the random stream goes on from where the caller, which
    seeded it before building the model, left it, so dropout draws what it drew before this entry point), resumable
    from ``run/checkpoints/<name>.pt``, logged to metrics.jsonl, evaluated every ``eval_every`` iterations (default:
    at the end only) and at the end. A non-finite loss (or one above ``diverge_above``) stops the job and marks its
    row diverged. ``best_key``: keep the state with the lowest such evaluation and load it at the end (source 002's
    minimum test loss); None keeps the final state.

    The row's metrics are ``report(history)``, by default the final evaluation, logged once as the job's "final"
    event (a resumed run finds it there). ``evaluated``: the network the row reports, where ``model`` holds more
    (e.g. a teacher trained alongside). ``amp`` defaults to the run's; ``cpu_bf16``: see ``autocast``.
    """
    options, run, ddp = session.options, session.run, session.ddp
    if reseed:
        seed_everything(options.seed if seed is None else seed)
    history = fit(model, optimizer, loss_fn, iterations, name=name, run=run, device=session.device,
                  scheduler=scheduler, evaluate=evaluate, eval_every=eval_every or iterations,
                  checkpoint_every=options.checkpoint_every, amp=options.amp if amp is None else amp,
                  best_key=best_key, diverge_above=diverge_above, progress=options.progress, ddp=ddp,
                  cpu_bf16=cpu_bf16)
    if report is not None:
        metrics = report(history)
    else:
        metrics = dict(history.evals[-1] if history.evals else (evaluate() if evaluate else {}))
        metrics.pop("iteration", None)
    if ddp.is_main and not run.logged(name, "final"):   # a resumed run reloads finished jobs: the line is there
        run.log({"job": name, "event": "final", **_loggable(metrics)})
    if history.diverged:
        session.say(f"  {name}: the loss became non-finite at iteration {len(history.train_loss) + 1}; its row is "
                    f"marked 'diverged' (try a lower rate)")
    return Trained(name, label, evaluated if evaluated is not None else model, metrics, history.train_loss,
                   history.evals, history.diverged, start_step)


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
    """``stream(step)`` returns the job's batch ``step``: ``batches[first_step + step]``, on ``device``. A job that
    continues another (a pretrained student, say) passes the step it starts at, so it sees the batches the
    earlier job would have seen next. With ``workers > 0`` later steps are prepared ahead of time in DataLoader
    worker processes (decoding and augmenting VOC images keeps a GPU waiting otherwise)."""

    def __init__(self, batches: StepBatches, iterations: int, workers: int = 0, pin_memory: bool = False,
                 device: torch.device | None = None, first_step: int = 0) -> None:
        self.batches, self.workers, self.pin_memory = batches, workers, pin_memory
        self.device, self.first_step, self.end = device, first_step, first_step + iterations
        self._iterator: Iterator | None = None
        self._next = -1

    def __call__(self, step: int) -> tuple[torch.Tensor, ...]:
        batch = self._fetch(self.first_step + step)
        if self.device is None:
            return batch
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def _fetch(self, step: int) -> tuple[torch.Tensor, ...]:
        if self.workers == 0:
            return self.batches[step]
        if self._iterator is None or step != self._next:  # first call, or a resumed job starting mid-way
            loader = torch.utils.data.DataLoader(self.batches, batch_size=None, sampler=range(step, self.end),
                                                 num_workers=self.workers, pin_memory=self.pin_memory)
            self._iterator = iter(loader)
        self._next = step + 1
        try:
            return next(self._iterator)
        except UserError as e:  # raised in a worker: the message carries the worker's traceback; keep the sentence
            raise UserError(str(e).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None


def training_batches(load: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]], num_items: int,
                     iterations: int, *, batch_size: int, session: Session, seed: int | None = None,
                     first_step: int = 0) -> BatchStream:
    """The batches of one job: ``StepBatches`` of ``load`` (seed: default the run's) streamed onto the run's
    device by ``BatchStream`` with the run's ``workers``, from global step ``first_step``."""
    options = session.options
    batches = StepBatches(num_items, batch_size, options.seed if seed is None else seed, load, session.ddp)
    return BatchStream(batches, iterations, options.workers, pin_memory=session.device.type == "cuda",
                       device=session.device, first_step=first_step)
