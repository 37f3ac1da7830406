"""A real int8 model for x86 CPUs: quantization-aware training and lowering through torchao's PT2E path.

common/quantization.py simulates b-bit arithmetic in float32; this module produces a network whose convolutions
actually run in int8 (oneDNN kernels):

    prepare_int8_qat   torch.export.export (dynamic batch) -> X86InductorQuantizer, QAT config (uint8 per-tensor
                       activations, int8 per-channel symmetric weights) -> prepare_qat_pt2e
    (train the prepared GraphModule as usual, e.g. with distillation; set_int8_qat_mode switches train/eval)
    convert_int8       convert_reference: move_exported_model_to_eval -> convert_pt2e (BatchNorm folded into the
                       convs), then lower_int8: lower_pt2e_quantized_to_x86: every Conv2d becomes a
                       torch.ops.onednn.qconv_pointwise int8 op; transposed convolutions stay float (the X86
                       quantizer does not annotate them).
    CompiledInt8       the reference compiled by Inductor with freezing instead: the same outputs, the dequantize /
                       quantize pairs fused into the int8 kernels (the fast path for latency).

The lowered model has the example's shape baked in, batch size included (lowering re-exports it without dynamic
shapes; another shape fails a guard): evaluate it on inputs of exactly that shape, padding if needed.
torchao is imported lazily, so this module imports without it.
"""
from __future__ import annotations

import copy
import functools
import logging
import types

import torch
from torch import nn


@functools.cache
def _torchao():
    """The torchao PT2E functions, imported on first use."""
    # torchao's import logs a harmless deprecation warning (KernelPreference registered as a pytree constant)
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e import (move_exported_model_to_eval, move_exported_model_to_train)
        from torchao.quantization.pt2e.fake_quantize import disable_observer, enable_observer
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError as e:
        raise RuntimeError(f"the int8 path needs torchao >= 0.18: pip install torchao ({e})") from e
    finally:
        pytree_log.setLevel(level)
    return dict(prepare_qat_pt2e=prepare_qat_pt2e, convert_pt2e=convert_pt2e,
                lower=lower_pt2e_quantized_to_x86, to_eval=move_exported_model_to_eval,
                to_train=move_exported_model_to_train, enable_observer=enable_observer,
                disable_observer=disable_observer, X86InductorQuantizer=X86InductorQuantizer,
                x86_config=get_default_x86_inductor_quantization_config)


def _dynamic_dims(example: torch.Tensor, max_batch: int, multiple: int | None) -> dict:
    """torch.export's dynamic dimensions: the batch, and with ``multiple`` the height and width as multiples of it
    (a U-Net pools four times: multiple=16), so the model trains on crops and evaluates on larger images."""
    dims = {0: torch.export.Dim("batch", min=1, max=max_batch)}
    if multiple:
        for axis, name in ((2, "height"), (3, "width")):
            dims[axis] = multiple * torch.export.Dim(f"{name}_over_{multiple}", min=1, max=4096 // multiple)
    return dims


def prepare_int8_qat(model: nn.Module, example: torch.Tensor, max_batch: int = 1024,
                     multiple: int | None = None) -> torch.fx.GraphModule:
    """Export ``model`` (train mode, dynamic batch dimension) and insert X86 int8 QAT fake-quantization.

    ``model``'s forward takes one tensor and may return a tensor or a tuple/dict of tensors. ``model`` is left as
    it was: the prepared module holds copies of its weights. Returns the prepared GraphModule in train mode with
    its observers on: train it like the model. The batch size is free in [1, max_batch]; the spatial size of
    ``example`` is fixed by the export, unless ``multiple`` is given: then heights and widths may be any multiple
    of it (up to 4096).
    """
    ao = _torchao()
    if example.shape[0] == 1:
        # export specialises a size-1 dimension to a constant, so trace with a batch of 2
        example = example.expand(2, *example.shape[1:]).contiguous()
    # A copy: the exported module would share its parameters and buffers with ``model``, and training it would
    # silently change ``model`` too. Train mode: BatchNorm must be captured in its training form for QAT.
    model = copy.deepcopy(model).train()
    exported = torch.export.export(model, (example,), dynamic_shapes=(_dynamic_dims(example, max_batch, multiple),))
    quantizer = ao["X86InductorQuantizer"]().set_global(ao["x86_config"](is_qat=True))
    prepared = ao["prepare_qat_pt2e"](exported.module(), quantizer)
    # Route .train() / .eval() (which the prepared module refuses) to set_int8_qat_mode, so that training loops
    # written for ordinary modules work unchanged.
    _preserve(prepared, train=types.MethodType(_train_method, prepared),
              eval=types.MethodType(_eval_method, prepared))
    return set_int8_qat_mode(prepared, train=True)


def _preserve(gm: torch.fx.GraphModule, **attrs) -> None:
    """Set attributes that survive copy.deepcopy: GraphModule's deepcopy keeps only those listed in its meta
    (the mechanism torchao's convert uses); bound methods are re-bound to the copy."""
    key = getattr(torch.fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")
    gm.meta.setdefault(key, {}).update(attrs)
    for name, value in attrs.items():
        setattr(gm, name, value)


def _train_method(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
    return set_int8_qat_mode(self, mode)


def _eval_method(self: torch.fx.GraphModule) -> torch.fx.GraphModule:
    return set_int8_qat_mode(self, False)


def set_int8_qat_mode(prepared: torch.fx.GraphModule, train: bool) -> torch.fx.GraphModule:
    """Switch a prepared model between training and evaluation, the PT2E way.

    Module.train()'s flag does not change an exported graph: its BatchNorm and dropout ops are rewritten instead
    (move_exported_model_to_train / _to_eval). Evaluation also freezes the observers, which otherwise keep
    updating the quantization ranges on every forward, eval batches included. ``prepare_int8_qat`` makes the
    prepared model's own ``.train()`` / ``.eval()`` call this function.
    """
    ao = _torchao()
    if train:
        ao["to_train"](prepared)
        prepared.apply(ao["enable_observer"])
    else:
        ao["to_eval"](prepared)
        prepared.apply(ao["disable_observer"])
    # the flag for callers that read model.training (the submodules' flags are unused); the torchao attribute
    # (_exported_training) so that a deep copy knows its mode
    _preserve(prepared, training=train, _exported_training=train)
    return prepared


def convert_int8(prepared: torch.fx.GraphModule, example: torch.Tensor) -> torch.fx.GraphModule:
    """The int8 model: ``lower_int8(convert_reference(prepared), example)``.

    ``prepared`` is left unchanged (training can continue). The result accepts only inputs of ``example``'s shape
    (batch size included) and must be called under torch.no_grad() / torch.inference_mode().
    """
    return lower_int8(convert_reference(prepared), example)


def convert_reference(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """convert_pt2e on a copy of ``prepared`` in eval mode: BatchNorm folded into the convolutions, weights stored
    in int8, quantize/dequantize ops around them (still computed in float: the 'reference' model).

    Slow whatever the model's size when it has BatchNorm (torchao exports a few hundred conv-bn patterns to match
    them: about 20 s on one CPU core), so convert once and lower the result for each input shape you need."""
    ao = _torchao()
    model = set_int8_qat_mode(copy.deepcopy(prepared), train=False)
    with torch.no_grad():
        return ao["convert_pt2e"](model)


def lower_int8(reference: torch.fx.GraphModule, example: torch.Tensor) -> torch.fx.GraphModule:
    """``convert_reference``'s model lowered to oneDNN x86 kernels for inputs of ``example``'s shape (a few
    seconds). Lowering re-exports ``reference`` and leaves it unchanged, so one reference lowers for several shapes
    (tested); it must have been prepared with ``multiple`` for shapes other than the prepare example's."""
    with torch.no_grad():
        lowered = _torchao()["lower"](reference, (example,))
    _drop_unused_tensors(lowered)
    # An exported graph refuses train()/eval(); this one only ever runs inference, so both are no-ops and code
    # written for ordinary modules (evaluation loops, common.profiler.measure_latency) works unchanged.
    _preserve(lowered, train=types.MethodType(_inference_only, lowered),
              eval=types.MethodType(_inference_only, lowered), training=False)
    return lowered


def _inference_only(self: torch.fx.GraphModule, mode: bool = False) -> torch.fx.GraphModule:
    return self


class CompiledInt8(nn.Module):
    """``convert_reference``'s model compiled by Inductor with freezing: the deployment path X86InductorQuantizer
    is made for, and the int8 counterpart of a compiled fp32 model.

    Freezing makes the weights constants, so Inductor packs them for oneDNN once and fuses each dequantize ->
    convolution -> quantize chain, with the ReLU and additions around it, into one int8 kernel; ``lower_int8``'s
    graph instead runs its float dequantize/quantize ops one by one between the kernels. Its outputs equal
    ``lower_int8``'s (tested). Compiles on the first call (seconds) and again for each new input shape; inference
    only (call it under torch.no_grad() or torch.inference_mode()); needs a C++ compiler, as torch.compile does.
    """

    def __init__(self, reference: torch.fx.GraphModule) -> None:
        super().__init__()
        self.compiled = torch.compile(reference, dynamic=False)

    def forward(self, x: torch.Tensor):
        import torch._inductor.config as inductor_config

        # freezing is a global Inductor setting: on for this model's (re)compilations only
        with inductor_config.patch(freezing=True):
            return self.compiled(x)

    def train(self, mode: bool = True) -> "CompiledInt8":
        return self   # inference only; the exported reference refuses train()/eval()


def _drop_unused_tensors(gm: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers the graph no longer reads.

    Lowering prepacks the transposed-conv weights into new constants but keeps the original float parameters;
    they would double the float part of the model's memory and of its state_dict.
    """
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        owner, _, attr = name.rpartition(".")
        if name not in used and not any(owner == m or owner.startswith(m + ".") for m in called):
            delattr(gm.get_submodule(owner), attr)


def count_int8_convolutions(model: torch.fx.GraphModule) -> int:
    """Number of oneDNN int8 convolution calls (onednn.qconv_pointwise, any overload, and its qconv2d_* variants):
    the convolutions that run in int8."""
    # by name: torch.ops.onednn exists only in builds with oneDNN, and the op names differ across versions
    return sum(1 for n in model.graph.nodes if n.op == "call_function" and str(n.target).startswith("onednn.qconv"))


def int8_weight_bytes(converted: torch.fx.GraphModule) -> int:
    """Bytes of the tensors the converted (lowered) module holds: its parameters, buffers and get_attr constants.

    On ``convert_int8``'s result these are exactly the tensors the graph uses. Each distinct tensor counts
    element_size() x numel(). Prepacked oneDNN weights are opaque mkldnn tensors without a storage to measure, so
    for them this is the logical size, not the (possibly padded, blocked) memory oneDNN allocated.
    """
    tensors = {id(t): t for t in (*converted.parameters(), *converted.buffers())}
    for node in converted.graph.nodes:
        if node.op == "get_attr":
            value = functools.reduce(getattr, node.target.split("."), converted)
            if isinstance(value, torch.Tensor):
                tensors[id(value)] = value
    return sum(t.element_size() * t.numel() for t in tensors.values())
