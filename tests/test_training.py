"""Tests for common/training.py: atomic checkpoints, weight files, the averaged loss, and a resumable ``fit``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import common.training as training
from common.datasets import SyntheticEM, fixed_crops, random_crops
from common.errors import UserError
from common.training import (RunDir, fit, load_checkpoint, load_weights, make_scheduler, moving_average_min,
                             pick_device, save_checkpoint, save_weights, seed_everything)
from common.unet import UNet


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core CPU: one thread is ~100x faster than two fighting for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- atomic checkpoints -----------------------------------------------------------------------------------------

def test_save_checkpoint_round_trip(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(4.0), "step": 3})
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(4.0)) and state["step"] == 3
    assert not (tmp_path / "c.pt.tmp").exists()


def test_save_checkpoint_killed_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.tensor([1.0, 2.0]), "step": 10})
    old_bytes = path.read_bytes()

    class Killed(Exception):
        pass

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise Killed()

    monkeypatch.setattr(training.torch, "save", dying_save)
    with pytest.raises(Killed):
        save_checkpoint(path, {"w": torch.tensor([3.0, 4.0]), "step": 20})
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.tensor([1.0, 2.0])) and state["step"] == 10
    # the next save (after a restart) replaces it normally
    save_checkpoint(path, {"w": torch.tensor([5.0]), "step": 30})
    assert load_checkpoint(path)["step"] == 30


def test_save_checkpoint_killed_on_first_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "new.pt"

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(training.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 1})
    assert not path.exists()


def test_load_checkpoint_truncated_is_user_error(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.randn(1000), "step": 5})
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match="c.pt"):
        load_checkpoint(path)


def test_load_checkpoint_missing_is_user_error(tmp_path):
    with pytest.raises(UserError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_load_checkpoint_not_a_checkpoint_is_user_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    with pytest.raises(UserError, match="notes.pt"):
        load_checkpoint(path)


# ---- weight files ----------------------------------------------------------------------------------------------

def test_load_weights_other_width_names_k(tmp_path):
    path = tmp_path / "k2.pt"
    save_weights(path, UNet(k=2))
    with pytest.raises(UserError) as e:
        load_weights(UNet(k=4), path, what="--teacher-checkpoint")
    msg = str(e.value)
    assert "k=2" in msg and "need 4" in msg and "--teacher-checkpoint" in msg and "k2.pt" in msg


def test_load_weights_other_batch_norm_is_user_error(tmp_path):
    path = tmp_path / "bn.pt"
    save_weights(path, UNet(k=2, batch_norm=True))
    with pytest.raises(UserError, match="batch_norm"):
        load_weights(UNet(k=2, batch_norm=False), path)


def test_load_weights_without_arch_wrong_shapes_is_user_error(tmp_path):
    path = tmp_path / "bare.pt"
    save_checkpoint(path, {"model": UNet(k=2).state_dict()})  # no 'arch' metadata
    with pytest.raises(UserError, match="bare.pt"):
        load_weights(UNet(k=4), path)


def test_load_weights_file_without_model_is_user_error(tmp_path):
    path = tmp_path / "other.pt"
    save_checkpoint(path, {"step": 3})
    with pytest.raises(UserError, match="no model weights"):
        load_weights(UNet(k=2), path)


def test_load_weights_matching_model(tmp_path):
    torch.manual_seed(0)
    source = UNet(k=2).eval()
    path = tmp_path / "k2.pt"
    save_weights(path, source, extra={"summary": json.dumps({"loss": 0.5})})
    target = UNet(k=2).eval()
    x = torch.randn(2, 1, 16, 32)
    assert not torch.equal(source(x), target(x))  # different initialisations before loading
    state = load_weights(target, path)
    assert state["arch"]["k"] == 2 and json.loads(state["summary"]) == {"loss": 0.5}
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


# ---- moving_average_min ---------------------------------------------------------------------------------------

def test_moving_average_min_window_2():
    # windows of 2: [2, 1.5, 3.5, 2.5, 0] -> 0.0, window ending at index 5
    value, index = moving_average_min([3, 1, 2, 5, 0, 0], 2)
    assert value == 0.0 and index == 5


def test_moving_average_min_window_3():
    # windows of 3: [2, 8/3, 7/3, 5/3] -> 5/3, window ending at index 5
    value, index = moving_average_min([3, 1, 2, 5, 0, 0], 3)
    assert value == pytest.approx(5 / 3) and index == 5


def test_moving_average_min_interior_minimum():
    # windows of 2: [4, 3, 1.5, 3] -> 1.5, window [2, 1] ending at index 3
    value, index = moving_average_min([4, 4, 2, 1, 5], 2)
    assert value == pytest.approx(1.5) and index == 3


def test_moving_average_min_short_and_empty():
    value, index = moving_average_min([1.0, 2.0, 6.0], 5)
    assert value == pytest.approx(3.0) and index == 2
    value, index = moving_average_min([1.0, 2.0, 6.0], 3)  # exactly one window
    assert value == pytest.approx(3.0) and index == 2
    value, index = moving_average_min([], 3)
    assert math.isnan(value) and index == -1


# ---- schedules and devices -------------------------------------------------------------------------------------

def test_poly_schedule_values():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = make_scheduler(optimizer, "poly", 10)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 * 0.5 ** 0.9)      # 0.05359
    assert lrs[5] == pytest.approx(0.053589, abs=1e-6)
    assert lrs[10] == 0.0
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_constant_schedule_and_unknown():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = make_scheduler(optimizer, "constant", 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        make_scheduler(optimizer, "cosine", 10)


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="cuda"):
        pick_device("cuda")
    with pytest.raises(UserError, match="cuda:1"):
        pick_device("cuda:1")
    with pytest.raises(UserError, match="gpu0"):
        pick_device("gpu0")


# ---- RunDir ---------------------------------------------------------------------------------------------------

def test_rundir_create_refuses_a_used_folder(tmp_path):
    run = RunDir.create("x", str(tmp_path / "run"))
    run.write_config({"a": 1})
    with pytest.raises(UserError, match="--resume"):
        RunDir.create("x", str(tmp_path / "run"))
    assert RunDir.open_existing(tmp_path / "run").read_config() == {"a": 1}
    with pytest.raises(UserError, match="no such folder"):
        RunDir.open_existing(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError, match="config.json"):
        RunDir.open_existing(tmp_path / "elsewhere")


# ---- fit: resume equality and divergence -------------------------------------------------------------------------

ITERATIONS, EVAL_EVERY, CHECKPOINT_EVERY, SEED = 30, 5, 10, 0


class Crash(Exception):
    """Stands in for a kill of the process in the middle of training."""


@pytest.fixture(scope="module")
def data():
    train = SyntheticEM("train", 2, (32, 32), seed=0).volume
    test = fixed_crops(SyntheticEM("test", 1, (32, 32), seed=0).volume, 2, 16)
    return train, test


def make_job(data, crash_at: int | None = None):
    """Model, optimizer, scheduler, loss and evaluation, rebuilt from the seed like a restarted script does."""
    train, (test_x, test_y) = data
    seed_everything(SEED)
    model = UNet(k=1, batch_norm=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = make_scheduler(optimizer, "poly", ITERATIONS)

    def loss_fn(step: int):
        if crash_at is not None and step == crash_at:
            raise Crash(step)
        x, y = random_crops(train, 2, 16, SEED, step)
        loss = F.cross_entropy(model(x), y)
        return loss, {"hard": loss.detach()}

    def evaluate():
        model.eval()
        with torch.no_grad():
            return {"test_loss": F.cross_entropy(model(test_x), test_y).item()}

    return model, optimizer, scheduler, loss_fn, evaluate


def train(data, run: RunDir, crash_at: int | None = None):
    model, optimizer, scheduler, loss_fn, evaluate = make_job(data, crash_at)
    history = fit(model, optimizer, loss_fn, ITERATIONS, name="job", run=run, device=torch.device("cpu"),
                  scheduler=scheduler, evaluate=evaluate, eval_every=EVAL_EVERY,
                  checkpoint_every=CHECKPOINT_EVERY, progress=False)
    return model, history


def records(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in run.metrics_file.read_text().splitlines()]


def test_fit_resume_equals_uninterrupted_run(data, tmp_path):
    run_a = RunDir(tmp_path / "a")
    model_a, hist_a = train(data, run_a)
    assert len(hist_a.train_loss) == ITERATIONS and not hist_a.diverged
    assert [e["iteration"] for e in hist_a.evals] == [5, 10, 15, 20, 25, 30]

    run_b = RunDir(tmp_path / "b")
    with pytest.raises(Crash):
        train(data, run_b, crash_at=17)  # killed after the checkpoint at step 10
    ckpt = load_checkpoint(run_b.checkpoints / "job.pt")
    assert ckpt["step"] == 10 and not ckpt["done"]
    logged = [(r["iteration"]) for r in records(run_b) if "test_loss" in r]
    assert logged == [5, 10, 15]  # the eval at 15 was logged before the kill

    steps_seen = []
    model_b, optimizer, scheduler, loss_fn, evaluate = make_job(data)

    def counting_loss(step):
        steps_seen.append(step)
        return loss_fn(step)

    hist_b = fit(model_b, optimizer, counting_loss, ITERATIONS, name="job", run=run_b, device=torch.device("cpu"),
                 scheduler=scheduler, evaluate=evaluate, eval_every=EVAL_EVERY, checkpoint_every=CHECKPOINT_EVERY,
                 progress=False)
    assert steps_seen == list(range(10, ITERATIONS))  # resumed from step 10, not from 0 or 17

    assert hist_b.train_loss == hist_a.train_loss
    assert hist_b.evals == hist_a.evals
    assert hist_b.diverged is False
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert optimizer.param_groups[0]["lr"] == 0.0  # the poly schedule resumed too

    # metrics.jsonl: after the resume, each (job, iteration) eval and train record appears once, as in run a
    recs_b = records(run_b)
    evals_b = [(r["job"], r["iteration"]) for r in recs_b if "test_loss" in r]
    assert len(evals_b) == len(set(evals_b))
    assert evals_b == [("job", i) for i in (5, 10, 15, 20, 25, 30)]
    trains_b = [(r["job"], r["iteration"]) for r in recs_b if "train_loss" in r]
    assert len(trains_b) == len(set(trains_b))
    assert records(run_a) == recs_b

    # a finished job is not trained again: fit returns its history and the best weights
    model_c, optimizer, scheduler, loss_fn, evaluate = make_job(data, crash_at=0)
    hist_c = fit(model_c, optimizer, loss_fn, ITERATIONS, name="job", run=run_b, device=torch.device("cpu"),
                 scheduler=scheduler, evaluate=evaluate, progress=False)
    assert hist_c.train_loss == hist_a.train_loss
    for key in state_a:
        assert torch.equal(state_a[key], model_c.state_dict()[key]), key


def test_fit_keeps_the_best_evaluation(tmp_path):
    # evaluation scores 3, 1, 2 at steps 1, 2, 3: the model ends with the weights it had at step 2
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scores = iter([3.0, 1.0, 2.0])
    weights = []

    def loss_fn(step):
        return (model(torch.ones(1, 1)) - 5.0).pow(2).mean(), {}

    def evaluate():
        weights.append(model.weight.detach().clone())
        return {"test_loss": next(scores)}

    hist = fit(model, optimizer, loss_fn, 3, name="best", run=RunDir(tmp_path), device=torch.device("cpu"),
               evaluate=evaluate, eval_every=1, progress=False)
    assert [e["test_loss"] for e in hist.evals] == [3.0, 1.0, 2.0]
    assert not torch.equal(weights[1], weights[2])
    assert torch.equal(model.weight.detach(), weights[1])


def test_fit_marks_divergence(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = RunDir(tmp_path)

    def loss_fn(step):
        loss = model(torch.ones(1, 2)).pow(2).mean()
        return (loss * float("nan") if step >= 3 else loss), {}

    hist = fit(model, optimizer, loss_fn, 20, name="div", run=run, device=torch.device("cpu"), progress=False)
    assert hist.diverged is True
    assert len(hist.train_loss) == 3  # steps 0, 1, 2 trained; stopped at step 3
    assert all(math.isfinite(v) for v in hist.train_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was not applied
    events = [r for r in records(run) if r.get("event") == "diverged"]
    assert len(events) == 1 and events[0]["iteration"] == 4
    state = load_checkpoint(run.checkpoints / "div.pt")
    assert state["done"] and state["history"]["diverged"]


def test_fit_marks_divergence_above_threshold(tmp_path):
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def loss_fn(step):
        return model(torch.ones(1, 1)).sum() * 0 + (1.0 if step < 2 else 5e3), {}

    hist = fit(model, optimizer, loss_fn, 10, name="big", run=RunDir(tmp_path), device=torch.device("cpu"),
               progress=False)
    assert hist.diverged and hist.train_loss == [1.0, 1.0]


def test_fit_steps_a_plateau_scheduler_on_each_evaluation(tmp_path):
    # source 000's "learning rate scheduler operating in min mode": ReduceLROnPlateau, stepped with the evaluation's
    # val_loss, not every iteration. A flat val_loss with patience 0 halves the rate at each evaluation but the first.
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)
    loss_fn = lambda step: (model(torch.ones(1, 1)).sum() * 0, {})  # noqa: E731
    fit(model, optimizer, loss_fn, 6, name="plateau", run=RunDir(tmp_path), device=torch.device("cpu"),
        scheduler=plateau, evaluate=lambda: {"val_loss": 1.0}, eval_every=2, best_key=None, progress=False)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)     # evaluations at 2, 4, 6: halved at 4 and 6


def test_train_job_logs_its_final_line_once_across_a_resume(data, tmp_path):
    """A resumed run reloads a finished job from its checkpoint: its "final" line is not written again."""
    run = RunDir(tmp_path / "run")
    for _ in range(2):   # the second call is what --resume does for a job that had finished
        model, optimizer, scheduler, loss_fn, evaluate = make_job(data)
        training.train_job(model, optimizer, loss_fn, 4, name="job", label="job", run=run, device=torch.device("cpu"),
                           evaluate=evaluate, eval_every=2, checkpoint_every=2, amp=False, progress=False, seed=SEED,
                           scheduler=scheduler)
    assert [r.get("event") for r in records(run)].count("final") == 1
