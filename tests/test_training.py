"""Tests for common/training.py (and the checkpoints of common/runs.py): atomic checkpoints, weight files, the averaged
loss, a resumable ``fit``, the entry point ``train`` with its ``Session``, and the batches of a job."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import common.runs as runs
from common.em_data import fixed_crops, random_crops
from common.synthetic_em import SyntheticEM
from common.errors import UserError
from common.devices import Distributed, pick_device
from common.runs import RunDir, RunOptions, load_checkpoint, load_weights, save_checkpoint, save_weights
from common.training import (BatchStream, History, Session, StepBatches, Trained, fit, make_scheduler,
                             seed_everything, train, training_batches)
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

    monkeypatch.setattr(runs.torch, "save", dying_save)
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

    monkeypatch.setattr(runs.torch, "save", dying_save)
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


def test_autocast_takes_bf16_only_on_cpus_that_have_it_and_only_when_asked(monkeypatch):
    import common.devices as devices

    conv, x, cpu = torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), torch.device("cpu")

    def output_dtype(enabled: bool, cpu_bf16: bool) -> torch.dtype:
        with devices.autocast(cpu, enabled, cpu_bf16):
            return conv(x).dtype
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)    # AVX512-BF16 / AMX
    assert output_dtype(True, True) == torch.bfloat16
    assert output_dtype(False, True) == output_dtype(True, False) == torch.float32   # --no-amp; a part kept fp32
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)   # the fallback: emulated bf16 would be slower
    assert output_dtype(True, True) == torch.float32


def test_cpu_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    import common.devices as devices

    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(devices, "Path", lambda _: info)
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert devices.cpu_supports_bf16()
    info.write_text("flags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n")
    assert devices.cpu_supports_bf16()
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not devices.cpu_supports_bf16()
    info.unlink()                                                     # not Linux: no /proc/cpuinfo
    assert not devices.cpu_supports_bf16()


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


def run_job(data, run: RunDir, crash_at: int | None = None):
    model, optimizer, scheduler, loss_fn, evaluate = make_job(data, crash_at)
    history = fit(model, optimizer, loss_fn, ITERATIONS, name="job", run=run, device=torch.device("cpu"),
                  scheduler=scheduler, evaluate=evaluate, eval_every=EVAL_EVERY,
                  checkpoint_every=CHECKPOINT_EVERY, progress=False)
    return model, history


def records(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in run.metrics_file.read_text().splitlines()]


@pytest.mark.slow
def test_fit_resume_equals_uninterrupted_run(data, tmp_path):
    run_a = RunDir(tmp_path / "a")
    model_a, hist_a = run_job(data, run_a)
    assert len(hist_a.train_loss) == ITERATIONS and not hist_a.diverged
    assert [e["iteration"] for e in hist_a.evals] == [5, 10, 15, 20, 25, 30]

    run_b = RunDir(tmp_path / "b")
    with pytest.raises(Crash):
        run_job(data, run_b, crash_at=17)  # killed after the checkpoint at step 10
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


# ---- train: the one entry point --------------------------------------------------------------------------------
def session(tmp_path: Path, ddp: Distributed = Distributed(), **options) -> Session:
    """A run on the CPU in ``tmp_path/run``; ``options``: RunOptions fields (no progress bars, no amp)."""
    return Session(RunDir(tmp_path / "run"), torch.device("cpu"), RunOptions(**{"progress": False, "amp": False,
                                                                                 **options}), ddp)


X = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5]])


def linear_job(init_seed: int = 0, crash_at: int | None = None, scores: list[float] | None = None):
    """A Linear(3, 1) regression rebuilt as a restarted script would: batches of 4 rows a pure function of the step;
    ``evaluate`` gives the mean squared error on all 16 rows, or the next of ``scores``."""
    torch.manual_seed(init_seed)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scores = iter(scores) if scores is not None else None

    def loss_fn(step: int):
        if step == crash_at:
            raise Crash(step)
        rows = torch.randperm(16, generator=torch.Generator().manual_seed(step))[:4]
        loss = F.mse_loss(model(X[rows]), Y[rows])
        return loss, {"mse": loss.detach()}

    def evaluate():
        if scores is not None:
            return {"val_loss": next(scores)}
        with torch.no_grad():
            return {"val_loss": F.mse_loss(model(X), Y).item()}

    return model, optimizer, loss_fn, evaluate


def finals(run: RunDir) -> list[dict]:
    return [r for r in records(run) if r.get("event") == "final"]


def test_train_returns_the_row_and_logs_its_final_line_once(tmp_path):
    job = session(tmp_path, checkpoint_every=2)
    model, optimizer, loss_fn, evaluate = linear_job()
    trained = train(model, optimizer, loss_fn, 6, session=job, name="job", label="Job", evaluate=evaluate,
                    eval_every=3)
    assert isinstance(trained, Trained) and (trained.name, trained.label) == ("job", "Job") and trained.model is model
    assert len(trained.train_loss) == 6 and [e["iteration"] for e in trained.evals] == [3, 6]
    assert trained.metrics == {"val_loss": trained.evals[-1]["val_loss"]}    # the final evaluation, less "iteration"
    assert not trained.diverged and trained.start_step == 0 and trained.info == {}
    assert finals(job.run) == [{"job": "job", "event": "final", "val_loss": trained.metrics["val_loss"]}]

    # what --resume does with a finished job: its checkpoint is loaded, nothing trains, no second "final" line
    other, optimizer, _, evaluate = linear_job(init_seed=5, crash_at=0)
    again = train(other, optimizer, lambda step: pytest.fail("a finished job trained again"), 6, session=job,
                  name="job", label="Job", evaluate=evaluate, eval_every=3)
    assert (again.train_loss, again.evals, again.metrics) == (trained.train_loss, trained.evals, trained.metrics)
    assert torch.equal(other.weight, model.weight) and len(finals(job.run)) == 1


def test_train_reports_what_report_returns_and_logs_what_fits_a_json_line(tmp_path):
    job = session(tmp_path)
    model, optimizer, loss_fn, evaluate = linear_job()

    def report(history: History) -> dict:
        return {"mean_train_loss": sum(history.train_loss) / len(history.train_loss),
                "evaluations": len(history.evals), "prediction": torch.zeros(2)}

    trained = train(model, optimizer, loss_fn, 4, session=job, name="job", evaluate=evaluate, report=report)
    assert trained.metrics["mean_train_loss"] == pytest.approx(sum(trained.train_loss) / 4)
    assert trained.metrics["evaluations"] == 1 and torch.equal(trained.metrics["prediction"], torch.zeros(2))
    assert finals(job.run) == [{"job": "job", "event": "final", "mean_train_loss": trained.metrics["mean_train_loss"],
                                "evaluations": 1}]    # the tensor stays out of metrics.jsonl


def test_train_without_evaluation_reports_nothing(tmp_path):
    model, optimizer, loss_fn, _ = linear_job()
    trained = train(model, optimizer, loss_fn, 2, session=session(tmp_path), name="job")
    assert trained.metrics == {} and trained.evals == [] and len(trained.train_loss) == 2


@pytest.mark.parametrize("best_key", ["val_loss", None])
def test_train_keeps_the_best_evaluation_only_with_best_key(tmp_path, best_key):
    # evaluations score 3, 1, 2 after steps 1, 2, 3: with best_key the model ends with its weights after step 2
    model, optimizer, loss_fn, evaluate = linear_job(scores=[3.0, 1.0, 2.0])
    weights = []
    trained = train(model, optimizer, loss_fn, 3, session=session(tmp_path), name="job", eval_every=1,
                    evaluate=lambda: (weights.append(model.weight.detach().clone()), evaluate())[1],
                    best_key=best_key)
    assert not torch.equal(weights[1], weights[2])
    assert torch.equal(model.weight.detach(), weights[1] if best_key else weights[2])
    assert trained.metrics == {"val_loss": 2.0}      # the row still reports the final evaluation


def test_train_seeds_with_the_runs_seed_unless_given_one(tmp_path):
    draws = []
    model, optimizer, loss_fn, _ = linear_job()

    def drawing_loss(step):
        draws.append(torch.rand(1))
        return loss_fn(step)

    train(model, optimizer, drawing_loss, 1, session=session(tmp_path / "a", seed=3), name="job")
    train(model, optimizer, drawing_loss, 1, session=session(tmp_path / "b", seed=3), name="job", seed=7)
    torch.manual_seed(3)
    assert torch.equal(draws[0], torch.rand(1))
    torch.manual_seed(7)
    assert torch.equal(draws[1], torch.rand(1))


def test_train_resumed_after_a_kill_ends_as_an_uninterrupted_job(tmp_path):
    whole = session(tmp_path / "whole", checkpoint_every=3)
    model_a, optimizer, loss_fn, evaluate = linear_job()
    a = train(model_a, optimizer, loss_fn, 8, session=whole, name="job", evaluate=evaluate, eval_every=2)

    cut = session(tmp_path / "cut", checkpoint_every=3)
    model, optimizer, loss_fn, evaluate = linear_job(crash_at=5)    # killed in step 5, after the checkpoint at 3
    with pytest.raises(Crash):
        train(model, optimizer, loss_fn, 8, session=cut, name="job", evaluate=evaluate, eval_every=2)
    steps = []
    model_b, optimizer, loss_fn, evaluate = linear_job()
    b = train(model_b, optimizer, lambda step: (steps.append(step), loss_fn(step))[1], 8, session=cut, name="job",
              evaluate=evaluate, eval_every=2)
    assert steps == list(range(3, 8))
    assert (b.train_loss, b.evals, b.metrics) == (a.train_loss, a.evals, a.metrics)
    assert torch.equal(model_b.weight, model_a.weight) and torch.equal(model_b.bias, model_a.bias)
    assert records(cut.run) == records(whole.run)


def test_train_marks_a_diverged_job_and_says_so(tmp_path, capsys):
    model, optimizer, loss_fn, _ = linear_job()
    trained = train(model, optimizer, lambda step: (loss_fn(step)[0] * (math.nan if step == 2 else 1.0), {}), 5,
                    session=session(tmp_path), name="job")
    assert trained.diverged and len(trained.train_loss) == 2
    assert "job: the loss became non-finite at iteration 3" in capsys.readouterr().out


def test_session_says_on_rank_0_only(tmp_path, capsys):
    session(tmp_path).say("hello")
    session(tmp_path, ddp=Distributed(rank=1, world_size=2)).say("from rank 1")
    assert capsys.readouterr().out == "hello\n"


# ---- the batches of a job ----------------------------------------------------------------------------------------
ROWS = torch.arange(24.0).reshape(12, 2)


def noisy_row(index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``index`` plus noise from the step's generator (augmentation's stand-in), and the index."""
    return ROWS[index] + torch.rand(2, generator=generator), torch.tensor(index)


def same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_training_batches_stream_the_step_batches_from_first_step(tmp_path):
    job = session(tmp_path, seed=4)
    stream = training_batches(noisy_row, 12, 5, batch_size=3, session=job, first_step=7)
    assert isinstance(stream, BatchStream)
    batches = StepBatches(12, 3, 4, noisy_row)      # the run's seed by default
    for step in range(5):
        assert same(stream(step), batches[7 + step])
        assert all(t.device == job.device for t in stream(step))
    assert same(training_batches(noisy_row, 12, 5, batch_size=3, session=job)(2), batches[2])
    assert same(training_batches(noisy_row, 12, 5, batch_size=3, session=job, seed=9)(2),
                StepBatches(12, 3, 9, noisy_row)[2])


def test_batch_stream_moves_its_batches_to_its_device():
    batches = StepBatches(12, 3, 0, noisy_row)
    assert same(BatchStream(batches, 4, first_step=2)(1), batches[3])       # device None: as the batches come
    on_meta = BatchStream(batches, 4, device=torch.device("meta"), first_step=2)(1)
    assert [t.device.type for t in on_meta] == ["meta", "meta"] and [t.shape for t in on_meta] == [(3, 2), (3,)]
