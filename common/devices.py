"""Where the code runs: the device (``--device``), mixed precision (``autocast``: bf16/fp16 on GPUs, bf16 on CPUs
that compute it natively) and the processes of a ``torchrun`` job (``Distributed``)."""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError


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

