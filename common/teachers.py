"""Teachers (and the stand-in backbones that play ImageNet's): load a trained model from the cache or train it and
cache it, keyed by everything that shapes it; freeze it; and memoise its outputs by training step.

Every student of a run sees the same batch at the same step (``common.training.StepBatches``), so a frozen
teacher's outputs for step s are the same for all of them: the first student computes them, the others reuse them
(on a CPU the teacher's forward pass costs as much as a student's training step).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Hashable, TypeVar

import torch
from torch import nn

from common.devices import Distributed, barrier
from common.runs import load_weights, save_weights

MEMO_BYTES = 1 << 29     # teacher outputs kept for reuse by later students (512 MiB)
T = TypeVar("T")


def cache_path(cache_dir: str | Path, stem: str, key: dict) -> Path:
    """Where a trained teacher (or backbone) is cached: ``<cache_dir>/<stem>_<hash>.pt``, the hash of everything that
    shapes it (``key``), so a changed setting trains a new one instead of reusing a stale file."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{stem}_{digest}.pt"


def load_or_train(model: nn.Module, path: Path, train: Callable[[nn.Module], T], *, what: str = "cached teacher",
                  extra: dict | None = None, ddp: Distributed = Distributed()) -> T | None:
    """Fill ``model`` with the weights cached at ``path`` (see ``cache_path``) and return None; or, with no such
    file, ``train(model)`` (in place), cache the result (rank 0, with ``extra`` entries beside the weights) and
    return what ``train`` returned. ``what`` names the file in errors about a cached file that cannot be used.

    Under torchrun every process then reads the file rank 0 wrote, so all hold rank 0's BatchNorm statistics (each
    process's own differ: they saw different images)."""
    if path.exists():
        load_weights(model, path, what=what)
        return None
    result = train(model)
    if ddp.is_main:
        save_weights(path, model, extra)
    barrier(ddp)
    if ddp.enabled:
        load_weights(model, path, what=what)
    return result


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode without gradients: a teacher only ever runs forward (BatchNorm uses its statistics)."""
    return model.eval().requires_grad_(False)


class OutputMemo:
    """A frozen teacher's outputs by training step, kept on the CPU up to ``max_bytes`` (see the module docstring).

    ``memo(step, compute, device)``: the tensors ``compute()`` returned for ``step``, on ``device``; computed now the
    first time (and kept while the memo has room). ``step`` None: computed, never kept (a teacher still training).
    Any hashable key serves as ``step``, e.g. a digest of the input where steps alone do not name the batch.
    """

    def __init__(self, max_bytes: int = MEMO_BYTES) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._kept: dict[Hashable, tuple[torch.Tensor, ...]] = {}

    def __call__(self, step: Hashable | None, compute: Callable[[], tuple[torch.Tensor, ...]],
                 device: torch.device) -> tuple[torch.Tensor, ...]:
        if step is not None and step in self._kept:
            return tuple(t.to(device) for t in self._kept[step])
        outputs = compute()
        if step is not None and self.bytes < self.max_bytes:
            self._kept[step] = tuple(t.cpu() for t in outputs)
            self.bytes += sum(t.numel() * t.element_size() for t in outputs)
        return outputs
