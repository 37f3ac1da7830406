"""Fake quantization for quantization-aware training (QAT) of convolutional segmentation networks.

Source 000 ("Compression techniques for Semantic Segmentation") fake-quantizes a U-Net student while it is being
distilled, following QKD (Kim et al. 2019, "QKD: Quantization-aware Knowledge Distillation") and Polino et al.
2018 ("Model compression via distillation and quantization"): weights and activations are rounded to a b-bit
grid in the forward pass, but "all the computations are still made using higher precision" -- the rounded values
are float32 tensors, so the network trains as usual and only learns to live with the rounding.

The quantizer is uniform. Rounding has zero gradient almost everywhere, so the backward pass uses the
straight-through estimator (STE; Bengio et al. 2013): round(v) is treated as the identity, inside the clipping
interval the gradient passes unchanged, outside it is 0. Two ways to choose the clipping interval:

* ``"tracked"``: from statistics -- weights use the current per-channel max |w|, activations an exponential moving
  average of the batch min/max (the PyTorch / TensorFlow QAT default);
* ``"learned"``: the interval ends are trainable parameters, trained through the STE as in QKD's quantizer
  (the same idea as PACT, Choi et al. 2018, and LSQ, Esser et al. 2020).

Two quantizers (``fake_quantize_model(quantizer=...)``):

* ``"qkd"`` (the learned- or tracked-range quantizer above, QKD's): weights quantized symmetrically per output
  channel on a narrow signed grid, so b bits give 2^b - 1 weight levels (2 bits: {-1, 0, 1} x scale, ternary);
  activations per tensor with 2^b levels.
* ``"polino"`` (Polino et al. 2018, their uniform quantization with a scaling function and buckets; their code,
  antspy/quantized_distillation, ``quantization/quant_functions.py: uniformQuantization`` with
  ``type_of_scaling='linear'``): the weights are cut into buckets of k consecutive values (``bucket_size``, 256 in
  their experiments' calls of ``train_model``), each bucket is scaled to [0, 1] by its own min and max, rounded to
  s = 2^b evenly spaced levels (deterministic rounding, ``stochastic_rounding=False`` in their training loop),
  and scaled back; a constant bucket keeps its value (their alpha = 1 where max - min < 1e-10). Their training
  loop computes the gradient at the quantized weights and applies it to the float ones (``cnn_models/
  conv_forward_model.py: train_model``, ``backprop_quantization_style='none'``): the straight-through estimator,
  here without clipping (every weight lies inside its bucket's range). Activations stay float (they quantize
  ``model.parameters()`` only).

With "qkd", weights are quantized symmetrically per output channel (zero maps to zero, one scale per filter), activations
asymmetrically per tensor over [lo, hi] (a U-Net's conv inputs can be negative: transposed-conv outputs are
concatenated with the skips). Bit widths 2 to 8 are supported. ``fake_quantize_model`` swaps every Conv2d /
ConvTranspose2d of a model for a quantized one; BatchNorm stays float (it folds into the convs at export).
Torch only: this file can be copied into another project.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("learned", "tracked")
QUANTIZERS = ("qkd", "polino")
POLINO_BUCKET = 256   # Polino et al.'s bucket size in their experiments (antspy/quantized_distillation)
_EPS = 1e-8  # smallest scale: an all-zero weight channel or a constant input must not give a division by zero


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a b-bit code: signed is symmetric and narrow (2 bits: {-1, 0, 1}), unsigned is [0, 2^b-1]."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bit width must be an integer in [2, 8], got {bits!r}")
    if signed:
        # Narrow range (-127..127 rather than -128..127) keeps the grid symmetric, so w and -w round alike.
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """round(v) in the forward pass, identity in the backward pass (straight-through estimator)."""
    return v + (v.round() - v).detach()


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"quantizer mode must be one of {MODES}, got {mode!r}")


class WeightQuantizer(nn.Module):
    """Symmetric per-channel fake quantizer: scale_c = clip_c / qmax, clip_c = max|w_c| ("tracked") or learned.

    ``axis`` is the channel axis of the weight: 0 for Conv2d (out, in, kh, kw), 1 for ConvTranspose2d
    (in, out/groups, kh, kw); ``channels`` is the weight's size along it.
    """

    def __init__(self, bits: int, channels: int, axis: int = 0, mode: str = "learned") -> None:
        super().__init__()
        _check_mode(mode)
        self.bits, self.axis, self.mode = bits, axis, mode
        self.qmin, self.qmax = quant_range(bits, signed=True)
        # The learned clip exists from construction (optimizers built before the first forward see it) but takes
        # its value, max|w_c|, at the first forward; the flag records that and travels in the state_dict.
        self.clip = nn.Parameter(torch.ones(channels)) if mode == "learned" else None
        self.register_buffer("initialised", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode!r}, axis={self.axis}"

    def _per_channel(self, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Reshape a (C,) tensor to broadcast against the weight along ``axis``."""
        shape = [1] * w.dim()
        shape[self.axis] = -1
        return t.reshape(shape)

    def channel_max(self, w: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(w.dim()) if d != self.axis]
        return w.detach().abs().amax(dim=dims)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """The (C,) per-channel scales used for ``w``."""
        # abs: an optimizer step that pushes a learned clip below 0 must not flip the grid
        clip = self.clip.abs() if self.mode == "learned" else self.channel_max(w)
        return (clip / self.qmax).clamp_min(_EPS)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode == "tracked":
            zero_point = torch.zeros(w.shape[self.axis], dtype=torch.int32, device=w.device)
            # Its backward is the clipped STE: gradient 1 inside [qmin*s, qmax*s], 0 outside.
            return torch.fake_quantize_per_channel_affine(w, self.scale(w).detach(), zero_point, self.axis,
                                                          self.qmin, self.qmax)
        if not self.initialised:
            with torch.no_grad():
                self.clip.copy_(self.channel_max(w))
                self.initialised.fill_(True)
        s = self._per_channel(self.scale(w), w)
        c = s * self.qmax
        # minimum/maximum rather than clamp: clamp's bounds get no gradient, these do (c learns through them).
        w_c = torch.minimum(torch.maximum(w, -c), c)
        return round_ste(w_c / s) * s


def polino_quantize(w: torch.Tensor, bits: int, bucket_size: int = POLINO_BUCKET) -> torch.Tensor:
    """Polino et al. 2018's uniform quantization with linear scaling in buckets (their code's
    ``uniformQuantization``, type_of_scaling 'linear'), with a straight-through gradient.

    ``w`` is flattened and cut into buckets of ``bucket_size`` consecutive values (the last one may be shorter: the
    same min and max as their padding with the last value gives). In each bucket, v = (w - min) / (max - min) lies
    in [0, 1]; q = round(v (s - 1)) / (s - 1) with s = 2^bits levels; the output is q (max - min) + min. A bucket
    with max - min < 1e-10 divides by 1 instead (their rule), so a constant bucket is returned unchanged. Backward:
    the identity (the gradient taken at the quantized weights updates the float ones). Torch only.
    """
    quant_range(bits, signed=False)   # validates bits
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    levels = 2 ** bits - 1            # s - 1 steps between s levels
    flat = w.detach().reshape(-1)
    pad = -flat.numel() % bucket_size
    buckets = torch.cat([flat, flat[-1:].expand(pad)]).reshape(-1, bucket_size)   # pad with the last value
    lo = buckets.amin(dim=1, keepdim=True)
    alpha = buckets.amax(dim=1, keepdim=True) - lo
    alpha = torch.where(alpha < 1e-10, torch.ones_like(alpha), alpha)
    q = ((buckets - lo) / alpha * levels).round() / levels * alpha + lo
    q = q.reshape(-1)[:flat.numel()].reshape(w.shape)
    # q + (w - w.detach()): exactly q forward (w + (q - w) is not, in float), the identity backward
    return q + (w - w.detach())


class PolinoWeightQuantizer(nn.Module):
    """``polino_quantize`` as a module: b bits (2^b levels) per bucket of ``bucket_size`` weights, no parameters."""

    def __init__(self, bits: int, bucket_size: int = POLINO_BUCKET) -> None:
        super().__init__()
        quant_range(bits, signed=False)
        self.bits, self.bucket_size = bits, bucket_size

    def extra_repr(self) -> str:
        return f"bits={self.bits}, levels={2 ** self.bits}, bucket_size={self.bucket_size}"

    def buckets(self, w: torch.Tensor) -> int:
        return math.ceil(w.numel() / self.bucket_size)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return polino_quantize(w, self.bits, self.bucket_size)


def weight_levels(bits: int, quantizer: str = "qkd") -> int:
    """Distinct weight values a quantizer allows at ``bits``: the qkd quantizer's symmetric narrow grid has
    2^b - 1 (2 bits: 3, ternary), Polino et al.'s 2^b per bucket."""
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
    lo, hi = quant_range(bits, signed=quantizer == "qkd")
    return hi - lo + 1


class ActivationQuantizer(nn.Module):
    """Asymmetric per-tensor fake quantizer over [lo, hi] with 2^b levels (unsigned codes and a zero point).

    "tracked": lo/hi are buffers, exponential moving averages (``momentum``) of the training batches' min/max,
    the first batch initialising them; the range always contains 0 and the zero point is nudged so that 0 is
    exactly representable (zero padding stays exact). Eval uses the stored range.
    "learned": lo/hi are parameters initialised from the first batch's min/max (including 0), trained by the STE.
    """

    def __init__(self, bits: int, mode: str = "learned", momentum: float = 0.1) -> None:
        super().__init__()
        _check_mode(mode)
        self.bits, self.mode, self.momentum = bits, mode, momentum
        self.qmin, self.qmax = quant_range(bits, signed=False)
        if mode == "learned":
            self.lo, self.hi = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("lo", torch.zeros(1))
            self.register_buffer("hi", torch.ones(1))
        self.register_buffer("initialised", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode!r}"

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().clamp(max=0).reshape(1), x.max().clamp(min=0).reshape(1)
        if not self.initialised:
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.initialised.fill_(True)
        elif self.mode == "tracked" and self.training:
            self.lo.lerp_(lo, self.momentum)  # lo <- (1 - m) lo + m batch_min
            self.hi.lerp_(hi, self.momentum)

    def scale(self) -> torch.Tensor:
        return ((self.hi - self.lo) / (self.qmax - self.qmin)).clamp_min(_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._observe(x)
        s = self.scale()
        if self.mode == "tracked":
            zero_point = (-self.lo / s).round().clamp(self.qmin, self.qmax).to(torch.int32)
            return torch.fake_quantize_per_tensor_affine(x, s, zero_point, self.qmin, self.qmax)
        x_c = torch.minimum(torch.maximum(x, self.lo), self.hi)  # gradient reaches lo/hi from clipped values
        return round_ste((x_c - self.lo) / s) * s + self.lo


def _clone_conv(cls: type, conv: nn.Module) -> nn.Module:
    """A ``cls`` convolution with ``conv``'s hyper-parameters, weights, bias and train/eval mode."""
    kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype)
    if issubclass(cls, nn.ConvTranspose2d):
        kwargs["output_padding"] = conv.output_padding
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, **kwargs)
    with torch.no_grad():
        new.weight.copy_(conv.weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new.train(conv.training)


class _QuantConvMixin:
    """What QuantConv2d and QuantConvTranspose2d share: the two quantizers and the conversions."""

    float_cls: type = nn.Module  # the plain convolution this one quantizes
    weight_axis = 0

    @classmethod
    def from_float(cls, conv: nn.Module, bits: int, mode: str = "learned", quantizer: str = "qkd",
                   bucket_size: int = POLINO_BUCKET) -> nn.Module:
        q = _clone_conv(cls, conv)
        q.bits = bits
        if quantizer == "polino":   # Polino et al. quantize the weights only
            q.input_quantizer = nn.Identity()
            q.weight_quantizer = PolinoWeightQuantizer(bits, bucket_size)
        else:
            q.input_quantizer = ActivationQuantizer(bits, mode)
            q.weight_quantizer = WeightQuantizer(bits, conv.weight.shape[cls.weight_axis], cls.weight_axis, mode)
        # the new quantizers follow the convolution's device, dtype and mode (an eval model must not update them)
        return q.to(conv.weight.device, conv.weight.dtype).train(conv.training)

    def to_float(self) -> nn.Module:
        """The plain float convolution holding the latent (unquantized) weights."""
        return _clone_conv(self.float_cls, self)


class QuantConv2d(_QuantConvMixin, nn.Conv2d):
    """nn.Conv2d whose input and weight are fake-quantized to ``bits``; build it with ``from_float``."""
    float_cls = nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantConvTranspose2d(_QuantConvMixin, nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose input and weight are fake-quantized to ``bits``; build it with ``from_float``."""
    float_cls = nn.ConvTranspose2d
    weight_axis = 1  # ConvTranspose2d weights are (in, out/groups, kh, kw)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return F.conv_transpose2d(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias,
                                  self.stride, self.padding, output_padding, self.groups, self.dilation)


_QUANT = {nn.Conv2d: QuantConv2d, nn.ConvTranspose2d: QuantConvTranspose2d}


def _replace(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` inside ``root`` (through its parent); returns the root, ``new`` if it is the root."""
    if not name:
        return new
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, new)
    return root


def fake_quantize_model(model: nn.Module, bits: int, mode: str = "learned",
                        first_last_bits: int | None = 8, quantizer: str = "qkd",
                        bucket_size: int = POLINO_BUCKET) -> nn.Module:
    """A deep copy of ``model`` with every Conv2d / ConvTranspose2d replaced by its fake-quantized version.

    ``quantizer``: "qkd" (weights and inputs, ranges by ``mode``) or "polino" (Polino et al.'s bucketed min-max
    weight quantizer, ``bucket_size`` weights a bucket; inputs stay float; ``mode`` unused).

    The first and the last convolution (in ``model.modules()`` order) get ``first_last_bits`` (None: ``bits``).
    Keeping them at 8 bits is the usual practice in low-bit QAT (e.g. LSQ, Esser et al. 2020): they are small,
    and the image input and the logits are where rounding hurts most. The copy keeps the model's class, so its
    other methods (``config()``, extra forward arguments) still work.
    """
    quant_range(bits, signed=True)  # validates bits
    if first_last_bits is not None:
        quant_range(first_last_bits, signed=True)
    _check_mode(mode)
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    if any(isinstance(m, _QuantConvMixin) for m in model.modules()):
        raise ValueError("model is already fake-quantized; call strip_fake_quantization first")
    model = copy.deepcopy(model)
    convs = [(n, m) for n, m in model.named_modules() if type(m) in _QUANT]
    for i, (name, conv) in enumerate(convs):
        edge = i in (0, len(convs) - 1) and first_last_bits is not None
        model = _replace(model, name, _QUANT[type(conv)].from_float(conv, first_last_bits if edge else bits, mode,
                                                                     quantizer, bucket_size))
    return model


def strip_fake_quantization(model: nn.Module) -> nn.Module:
    """A deep copy with every Quant* convolution back to a plain one holding the latent float weights."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, _QuantConvMixin):
            model = _replace(model, name, m.to_float())
    return model


def quantized_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights stored packed: b bits per quantized weight, float32 for the rest.

    A Quant* convolution counts ceil(numel * bits / 8) for its weight, plus 4 bytes per bias element, per
    per-channel weight scale and for each end of its input range (lo, hi); with Polino et al.'s quantizer, 4 bytes
    for each bucket's min and for its max instead (inputs are not quantized). Every other floating parameter and
    buffer counts 4 bytes per element; integer and boolean buffers (num_batches_tracked, flags) are not weights.
    """
    total = 0
    for m in model.modules():
        if isinstance(m, _QuantConvMixin):
            total += math.ceil(m.weight.numel() * m.bits / 8)
            if isinstance(m.weight_quantizer, PolinoWeightQuantizer):
                total += 4 * 2 * m.weight_quantizer.buckets(m.weight)
            else:
                total += 4 * m.weight.shape[m.weight_axis] + 4 * 2
            total += 4 * m.bias.numel() if m.bias is not None else 0
            continue
        if isinstance(m, (WeightQuantizer, ActivationQuantizer, PolinoWeightQuantizer)):
            continue  # counted with their convolution above
        tensors = list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
        total += sum(4 * t.numel() for t in tensors if t.is_floating_point())
    return total
