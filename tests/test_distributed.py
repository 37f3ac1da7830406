"""Several processes: StepBatches shards each batch over torchrun's ranks, and ``fit`` under DistributedDataParallel
(gloo, two CPU processes) ends with exactly the weights of one process training on the whole batches."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from common.errors import UserError
from common.devices import Distributed, init_distributed, shutdown_distributed
from common.runs import RunDir
from common.training import BatchStream, StepBatches, fit

ITEMS = torch.randn(24, 3, generator=torch.Generator().manual_seed(0))  # the same in spawned processes
TARGETS = ITEMS @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3


def noisy_item(index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """An item plus noise drawn from the step's generator: stands in for random augmentation."""
    return ITEMS[index] + 0.01 * torch.randn(3, generator=generator), TARGETS[index]


def test_a_step_is_a_pure_function_of_seed_and_step():
    batches = StepBatches(len(ITEMS), 4, seed=3, load=noisy_item)
    for step in (0, 5, 17):
        a, b = batches[step], batches[step]
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(batches[0][0], batches[1][0])


def test_an_epoch_visits_every_item_once():
    batches = StepBatches(len(ITEMS), 4, seed=0, load=noisy_item)
    seen = sorted(i for step in range(6) for i in batches.global_indices(step))
    assert seen == list(range(24))


def test_ranks_together_see_the_single_process_batch():
    whole = StepBatches(len(ITEMS), 4, seed=1, load=noisy_item)[7]
    parts = [StepBatches(len(ITEMS), 4, seed=1, load=noisy_item, ddp=Distributed(rank, 2))[7] for rank in (0, 1)]
    for k in range(2):
        assert torch.equal(torch.cat([parts[0][k], parts[1][k]]), whole[k])


def test_a_batch_that_does_not_split_over_the_ranks_is_a_user_error():
    with pytest.raises(UserError, match="multiple of 3"):
        StepBatches(len(ITEMS), 4, seed=0, load=noisy_item, ddp=Distributed(0, 3))
    with pytest.raises(UserError, match="fewer than one batch"):
        StepBatches(2, 4, seed=0, load=noisy_item)


def test_worker_processes_give_the_same_batches_also_from_a_resumed_step():
    batches = StepBatches(len(ITEMS), 4, seed=2, load=noisy_item)
    stream = BatchStream(batches, iterations=10, workers=2)
    for step in (3, 4, 5, 8):  # 3 starts the workers mid-way, 8 jumps (a resumed job)
        assert all(torch.equal(x, y) for x, y in zip(stream(step), batches[step]))


# ------------------------------------------------------------------------------------------ fit under DDP
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(folder: str, ddp: Distributed, steps: int = 6) -> dict:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    net = model if not ddp.enabled else nn.parallel.DistributedDataParallel(model)
    batches = StepBatches(len(ITEMS), 4, seed=0, load=noisy_item, ddp=ddp)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(step: int):
        x, y = batches[step]
        return nn.functional.mse_loss(net(x), y), {}

    history = fit(model, optimizer, loss_fn, steps, name="linear", run=RunDir(folder), device=torch.device("cpu"),
                  best_key=None, progress=False, checkpoint_every=4, ddp=ddp)
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "loss": history.train_loss}


def ddp_worker(rank: int, port: int, folder: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ddp, device = init_distributed("cpu")
    assert device.type == "cpu" and ddp.world_size == 2 and ddp.rank == rank
    try:
        result = train(folder, ddp)
        torch.save(result, f"{out}.{rank}")
    finally:
        shutdown_distributed()


@pytest.mark.slow
def test_two_gloo_processes_end_with_the_weights_of_one(tmp_path):
    single = train(str(tmp_path / "single"), Distributed())
    mp.spawn(ddp_worker, args=(free_port(), str(tmp_path / "ddp"), str(tmp_path / "result")), nprocs=2)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"result.{rank}", weights_only=True)
        for key, value in single["state"].items():
            torch.testing.assert_close(result["state"][key], value, rtol=1e-5, atol=1e-6)
        # the logged loss is the mean over ranks of each half-batch loss = the whole-batch loss
        torch.testing.assert_close(torch.tensor(result["loss"]), torch.tensor(single["loss"]), rtol=1e-5, atol=1e-6)
    # rank 0 alone wrote the log: one line per logged step, not two
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())
    assert (tmp_path / "ddp" / "checkpoints" / "linear.pt").exists()


def bad_item(index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    raise UserError(f"mask {index}.png holds the label 30; VOC labels are 0-20 and 255.")


def test_a_user_error_in_a_worker_process_stays_one_sentence():
    stream = BatchStream(StepBatches(len(ITEMS), 4, seed=0, load=bad_item), iterations=3, workers=1)
    with pytest.raises(UserError) as caught:
        stream(0)
    assert str(caught.value).endswith("VOC labels are 0-20 and 255.") and "\n" not in str(caught.value)
    assert str(caught.value).startswith("mask ")
