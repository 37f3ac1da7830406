"""Atrous (dilated) convolution, computed without the work a CPU would waste on it; the numbers are a plain
``nn.Conv2d``'s up to float rounding, gradients included (tests/test_segmentation_models.py, test_deeplab.py,
test_erfnet.py).

Used by every network here that dilates: torchvision DeepLabV3's ASPP (common.segmentation_models; the teachers of
sources 002 and 003), source 004's ST / DS / BTN blocks (common.deeplab) and ERFNet's dilated 3x1 / 1x3
convolutions (common.erfnet; the student of source 003).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KERNEL_SIZES = ((3, 3), (3, 1), (1, 3))   # a 3x3 atrous convolution, ERFNet's factorised halves of one


class AtrousConv2d(nn.Conv2d):
    """A dilated convolution with stride 1, "same" zero padding (dilation x (kernel // 2)) and a 3x3, 3x1 or 1x3
    kernel (torchvision's ``ASPPConv``, common.deeplab's ST / DS / BTN blocks, ERFNet's non-bottleneck-1D blocks)
    that leaves out the kernel taps which read only zero padding.

    Where the dilation is at least the feature map's height, the taps above and below the centre fall outside the
    map for every output pixel, so they multiply zeros: the convolution equals the one with the kernel's centre row
    only (width: centre column). The outputs are the full convolution's up to float rounding and the gradients are
    its gradients (the left-out weights get zero gradient either way). It matters in the default miniatures: at
    output stride 8 their 64x64 and 64x128 inputs give 8x8 and 8x16 maps, on which DeepLabV3's rates 12 / 24 / 36
    leave 1x1 or 1x3 of each 3x3 kernel; the full kernels made the ASPP's three branches about half of a
    DeepLabV3-ResNet50 training step in bf16 (0.25 of 0.47 s for 8 x 3 x 64 x 64 on a 2-core Xeon with AMX,
    2026-12-06). On the same 8x16 maps ERFNet's dilation-8 3x1 and dilation-16 3x1 / 1x3 convolutions are 1x1
    convolutions (6 of its 16 dilated ones; forward + backward of a 128-channel 3x1 convolution on 8 x 128 x 8 x 16
    took 499 us in bf16, of the 1x1 237 us: about 1.6 ms of a 64 ms ERFNet step, 2-core AMD EPYC of family 26,
    2026-12-06). In source 004's DeepLabV3+ it is the thesis's own
    geometry: its 256-px crops at output stride 16 give 16x16 maps, on which the rate-18 branch is a 1x1
    convolution: the R50 ST training step (2 x 256 px, channels-last) took 0.92x the time in bf16 and 0.91x in
    float32, DS 0.96x / 0.92x (2-core AMD EPYC, interleaved, 2026-12-06; oneDNN's backward of that 2048 -> 256
    dilated 3x3 convolution took 37 ms, of the 1x1 3 ms). ``common.profiler.count_macs`` still counts the whole
    kernel, the count papers give.

    Where every tap can see the map, a 3x3 depthwise convolution in channels-last on the CPU runs by sub-grids
    (``space_to_batch_conv``, see ``_space_to_batch_pays``): oneDNN's backward of a dilated depthwise convolution
    was 7-9x slower than of the undilated one on the sub-grids, which made the DS rows of source 004's default run
    gain only 1.1x from bf16 (R50 DS head step, batch 8, rates 3 / 6 / 9 on 16x16 maps: 394 -> 285 ms in bf16,
    481 -> 473 ms in float32; 2-core AMD EPYC, family 26, 2026-12-06).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        same_padding = self.padding == tuple(d * (k // 2) for d, k in zip(self.dilation, self.kernel_size))
        if (self.kernel_size not in KERNEL_SIZES or self.stride != (1, 1) or not same_padding
                or self.padding_mode != "zeros"):
            raise ValueError(f"AtrousConv2d needs a 3x3, 3x1 or 1x3 stride-1 convolution zero-padded by its "
                             f"dilation, got kernel {self.kernel_size}, stride {self.stride}, padding "
                             f"{self.padding}, dilation {self.dilation}, padding mode {self.padding_mode!r}")

    @classmethod
    def like(cls, conv: nn.Conv2d) -> AtrousConv2d:
        """The same convolution, sharing ``conv``'s weight (built on the meta device: no random draws)."""
        with torch.device("meta"):
            atrous = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                         padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                         bias=conv.bias is not None, padding_mode=conv.padding_mode)
        atrous.weight, atrous.bias = conv.weight, conv.bias
        return atrous

    def forward(self, x: Tensor) -> Tensor:
        (dh, dw), (h, w), (kh, kw) = self.dilation, x.shape[-2:], self.kernel_size
        rows = kh == 1 or dh < h         # whether the kernel's taps off the centre row can see the map
        cols = kw == 1 or dw < w         # ... off the centre column
        if not (rows and cols):
            part = (slice(None) if rows else slice(1, 2), slice(None) if cols else slice(1, 2))
            weight = kernel_part(self.weight, *part)
            padding = (self.padding[0] if rows else 0, self.padding[1] if cols else 0)
            return F.conv2d(x, weight, self.bias, 1, padding, self.dilation, self.groups)
        if self._space_to_batch_pays(x):
            return space_to_batch_conv(x, self.weight, self.bias, self.dilation, self.groups)
        return super().forward(x)

    def _space_to_batch_pays(self, x: Tensor) -> bool:
        """Where oneDNN's backward of a dilated depthwise convolution is slow and its sub-grids are not tiny.

        A depthwise (DS / BTN) 3x3 convolution with dilation >= 2 in channels-last memory format: its backward took
        54-71 ms against 8 ms through ``space_to_batch_conv`` (8 x 2048 x 16 x 16, rates 3 and 6, bf16; float32 38
        / 30 against 26 / 29 ms); on sub-grids smaller than 3 x 3 (rate 9 on 16x16 maps: 2 x 2) the undilated
        convolution was slower instead (60 against 113 ms), and so was the contiguous format (2-core AMD EPYC,
        family 26, 2026-12-06). The CPU only: that is where it was measured."""
        (dh, dw), (h, w) = self.dilation, x.shape[-2:]
        depthwise = self.groups > 1 and self.groups == self.in_channels
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return (x.device.type == "cpu" and self.kernel_size == (3, 3) and depthwise and channels_last
                and max(dh, dw) > 1 and -(-h // dh) >= 3 and -(-w // dw) >= 3)


class _KernelPart(torch.autograd.Function):
    """``weight[:, :, rows, cols]`` (a copy), whose gradient is written into one zero tensor laid out as ``weight``."""

    @staticmethod
    def forward(ctx, weight: Tensor, rows: slice, cols: slice) -> Tensor:
        ctx.rows, ctx.cols = rows, cols
        ctx.save_for_backward(weight)
        return weight[:, :, rows, cols].clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        full = torch.zeros_like(weight)               # channels-last if the weight is
        full[:, :, ctx.rows, ctx.cols] = grad
        return full, None, None


def kernel_part(weight: Tensor, rows: slice, cols: slice) -> Tensor:
    """The taps ``weight[:, :, rows, cols]`` of a convolution kernel, with the same gradient as that slice, built
    more cheaply: autograd's backward of the two slices writes a contiguous zero tensor per sliced dimension, and
    the gradient accumulation then copies the last one into a channels-last weight's layout; here one zero tensor
    in the weight's own layout takes it. For a 2048 -> 256 ASPP branch (8 x 2048 x 8 x 8, rate 12: the centre tap)
    forward + backward took 8.1 instead of 11.4 ms in bf16, and a DeepLabV3-ResNet50 training step (8 x 3 x 64 x
    64) 353 instead of 370 ms (2-core AMD EPYC, Zen 4, interleaved medians, 2026-12-07)."""
    return _KernelPart.apply(weight, rows, cols)


def space_to_batch_conv(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: tuple[int, int],
                        groups: int) -> Tensor:
    """A 3x3 convolution with ``dilation`` (padding = dilation, stride 1) computed as an undilated one on the
    map's sub-grids, as DeepLab's authors computed atrous convolution (Chen et al. 2018, DeepLab, Sec. 3.1; in
    TensorFlow ``space_to_batch``): output pixel (i, j) reads only pixels of the same (i mod dh, j mod dw), so each of
    those dh * dw sub-grids is convolved on its own by the undilated 3x3 kernel with padding 1. Extra zero rows /
    columns at the bottom / right make the map a multiple of the dilation; they stand where the dilated
    convolution reads its zero padding, so the result is the same up to float rounding. Keeps channels-last."""
    (dh, dw), (n, c, h, w) = dilation, x.shape
    ph, pw = -h % dh, -w % dw
    hs, ws = (h + ph) // dh, (w + pw) // dw                                  # one sub-grid's size
    nhwc = F.pad(x, (0, pw, 0, ph)).permute(0, 2, 3, 1)
    grids = nhwc.reshape(n, hs, dh, ws, dw, c).permute(0, 2, 4, 1, 3, 5).reshape(n * dh * dw, hs, ws, c)
    grids = grids.permute(0, 3, 1, 2)                                        # (n dh dw, c, hs, ws), channels-last
    y = F.conv2d(grids, weight, bias, 1, 1, 1, groups).permute(0, 2, 3, 1)   # (n dh dw, hs, ws, k)
    y = y.reshape(n, dh, dw, hs, ws, -1).permute(0, 3, 1, 4, 2, 5).reshape(n, hs * dh, ws * dw, -1)
    return y[:, :h, :w].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
