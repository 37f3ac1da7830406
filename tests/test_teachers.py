"""Tests for common/teachers.py: the cache of trained teachers (``cache_path``, ``load_or_train``), ``freeze``, and
the memo of a frozen teacher's outputs by training step (``OutputMemo``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common.errors import UserError
from common.runs import load_checkpoint
from common.teachers import MEMO_BYTES, OutputMemo, cache_path, freeze, load_or_train


class Tiny(nn.Module):
    """A network ``save_weights`` can write (it names its architecture)."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.width = width
        self.conv = nn.Conv2d(1, width, 1)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def config(self) -> dict:
        return {"name": "Tiny", "width": self.width}


# ---- the cache ---------------------------------------------------------------------------------------------------
def test_cache_path_is_keyed_by_everything_in_the_key(tmp_path):
    path = cache_path(tmp_path, "teacher", {"k": 64, "iterations": 100})
    assert path.parent == tmp_path and path.name.startswith("teacher_") and path.suffix == ".pt"
    assert cache_path(str(tmp_path), "teacher", {"iterations": 100, "k": 64}) == path     # order does not matter
    assert cache_path(tmp_path, "teacher", {"k": 64, "iterations": 101}) != path
    assert cache_path(tmp_path, "backbone", {"k": 64, "iterations": 100}) != path


def test_load_or_train_trains_once_then_loads_the_same_weights(tmp_path):
    path = cache_path(tmp_path / "cache", "teacher", {"width": 3})
    calls = []

    def train(model: Tiny) -> str:
        calls.append(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.5)
            model.norm.running_mean.fill_(0.25)
        return "trained"

    torch.manual_seed(0)
    first = Tiny()
    assert load_or_train(first, path, train, extra={"note": "hello"}) == "trained"
    assert calls == [first] and path.exists() and load_checkpoint(path)["note"] == "hello"

    torch.manual_seed(1)
    second = Tiny()
    assert load_or_train(second, path, train) is None      # loaded: train is not called again
    assert len(calls) == 1
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key


def test_load_or_train_names_a_cached_file_of_another_architecture(tmp_path):
    path = tmp_path / "teacher_x.pt"
    load_or_train(Tiny(3), path, lambda model: None)
    with pytest.raises(UserError, match="cached backbone .*teacher_x.pt.*width=3 \\(need 4\\)"):
        load_or_train(Tiny(4), path, lambda model: pytest.fail("trained over a cached file"), what="cached backbone")


def test_freeze_is_eval_without_gradients():
    model = Tiny().train()
    assert freeze(model) is model
    assert not model.training and not model.norm.training
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(model(x), model(x))            # BatchNorm uses its running statistics, which stay put
    assert torch.equal(model.norm.running_mean, torch.zeros(3))


# ---- OutputMemo ----------------------------------------------------------------------------------------------------
class Counted:
    """``compute`` for the memo: returns (step-valued tensor of ``numel`` float32s,) and counts its calls."""

    def __init__(self, numel: int = 4) -> None:
        self.calls, self.numel = 0, numel

    def __call__(self, value: float):
        def compute() -> tuple[torch.Tensor, ...]:
            self.calls += 1
            return (torch.full((self.numel,), float(value)), torch.tensor([value]))
        return compute


def test_memo_computes_a_step_once_and_reuses_it():
    memo, counted, cpu = OutputMemo(), Counted(), torch.device("cpu")
    first = memo(3, counted(3.0), cpu)
    again = memo(3, counted(99.0), cpu)       # another student at step 3: the kept outputs, not a new computation
    assert counted.calls == 1 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert again[0].tolist() == [3.0] * 4
    memo(4, counted(4.0), cpu)
    assert counted.calls == 2
    assert memo.max_bytes == MEMO_BYTES


def test_memo_of_step_none_is_computed_every_time_and_never_kept():
    memo, counted, cpu = OutputMemo(), Counted(), torch.device("cpu")
    memo(None, counted(1.0), cpu)
    assert memo(None, counted(2.0), cpu)[0].tolist() == [2.0] * 4
    assert counted.calls == 2 and memo.bytes == 0


def test_memo_keeps_no_more_once_max_bytes_are_kept():
    memo, counted, cpu = OutputMemo(max_bytes=40), Counted(numel=4), torch.device("cpu")   # 16 + 4 bytes a step
    for step in range(3):
        memo(step, counted(float(step)), cpu)
    assert memo.bytes == 40 and counted.calls == 3     # steps 0 and 1 kept (20 bytes each), then it is full
    memo(0, counted(0.0), cpu)
    memo(1, counted(1.0), cpu)
    assert counted.calls == 3                           # kept: reused
    assert memo(2, counted(2.0), cpu)[0].tolist() == [2.0] * 4 and counted.calls == 4    # not kept: computed again


def test_memo_keeps_outputs_on_the_cpu_and_returns_them_on_the_device_asked_for():
    memo, counted = OutputMemo(), Counted()
    first = memo(0, counted(5.0), torch.device("cpu"))
    assert first[0].device.type == "cpu"
    on_meta = memo(0, counted(5.0), torch.device("meta"))
    assert counted.calls == 1 and [t.device.type for t in on_meta] == ["meta", "meta"]
    assert on_meta[0].shape == (4,)
