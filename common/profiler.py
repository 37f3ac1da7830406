"""Model cost: parameters, multiply-adds, latency and weights-file size.

MAdds follow the convention of source 004's tables (the project notes on DeepLabV3+, "Counting"):
ptflops's "Mac" count with module hooks only. 1 MAC = 1 multiply + 1 add. What ptflops 0.7.5 counts:
conv k*k*cin/groups*cout per output position, + 1 per output element with bias (transposed conv: per *input*
position); BatchNorm 2 per element (1 without affine); ReLU 1 per element; pooling its input size.
Functional calls (F.relu, F.interpolate, ...), additions and concatenations are not counted.
"""
from __future__ import annotations

import contextlib
import io
import statistics
import time

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not (BN affine included)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on one image of ``input_shape`` (batch included, must be 1).

    Counted with ptflops's module hooks (``backend='pytorch'``, ``count_functional=False``) on the model's device,
    in eval mode; the model's training mode is restored afterwards.
    """
    from ptflops import get_model_complexity_info
    from ptflops.pytorch_ops import MODULES_MAPPING

    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) < 2 or input_shape[0] != 1:
        raise ValueError(f"input_shape must include a batch of 1, e.g. (1, 1, 572, 572): MACs are per image; "
                         f"got {input_shape}")
    was_training = model.training
    sink = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            macs, _ = get_model_complexity_info(model, input_shape[1:], as_strings=False,
                                                print_per_layer_stat=False, ost=sink, backend="pytorch",
                                                backend_specific_config={"count_functional": False},
                                                custom_modules_hooks=subclass_hooks(model, MODULES_MAPPING))
    finally:
        model.train(was_training)
        for name in ("start_flops_count", "stop_flops_count", "reset_flops_count",
                     "compute_average_flops_cost", "__batch_counter__"):
            model.__dict__.pop(name, None)  # attributes ptflops attaches to the root module
    if macs is None:
        raise RuntimeError(f"ptflops could not count the model:\n{sink.getvalue()}")
    return int(macs)


def subclass_hooks(model: nn.Module, mapping: dict) -> dict:
    """ptflops counts a module by its exact type: a subclass of a counted layer (e.g.
    common.atrous.AtrousConv2d, an nn.Conv2d) gets its nearest base class's hook."""
    hooks = {}
    for kind in {type(m) for m in model.modules()} - set(mapping):
        base = next((b for b in kind.__mro__[1:] if b in mapping), None)
        if base is not None:
            hooks[kind] = mapping[base]
    return hooks


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device,
                    warmup: int = 3, repeats: int = 10) -> float:
    """Median seconds per forward pass over ``repeats`` timed runs after ``warmup`` untimed ones.

    Runs in eval mode under ``torch.inference_mode()`` on ``device`` (the model is moved there and back); on CUDA
    the device is synchronised before and after each timed run. The training mode is restored afterwards.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    original_device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    try:
        model.to(device).eval()
        with torch.inference_mode():
            x = torch.randn(tuple(input_shape), device=device)
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
        model.to(original_device)
    return statistics.median(times)


def weights_size_bytes(model: nn.Module) -> int:
    """Size in bytes of ``torch.save(model.state_dict())``: the saved weights file."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def profile(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device = "cpu", *,
            latency: bool = True, size: bool = True, warmup: int = 3, repeats: int = 10) -> dict:
    """{"params", "macs", "latency_s" (None if ``latency`` is False), "size_bytes" (None if ``size`` is False: it
    serialises the weights, a quarter of a GB for a ResNet-101)} of ``model``: the cost columns of every script's
    tables.

    "macs" are MAdds, multiply-adds (1 MAC = 1 multiply + 1 add) per image of ``input_shape`` (batch 1), in the
    convention of source 004's tables (ptflops, module hooks only). Latency is the median of ``repeats`` timed
    forward passes on ``device`` after ``warmup`` untimed ones (``measure_latency``).
    """
    return {
        "params": count_parameters(model),
        "macs": count_macs(model, input_shape),
        "latency_s": measure_latency(model, input_shape, device, warmup, repeats) if latency else None,
        "size_bytes": weights_size_bytes(model) if size else None,
    }
