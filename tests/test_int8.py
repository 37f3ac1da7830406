"""Tests for common/int8.py: int8 QAT through torchao's PT2E path, lowered to oneDNN int8 convolutions (x86 CPU).

One tiny U-Net goes through the whole pipeline once (module fixture): converting a model with BatchNorm costs
~20 s on one core (torchao's conv-BN folding traces ~100 pattern graphs), the individual tests are fast.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from common import int8
from common.int8 import (CompiledInt8, convert_int8, convert_reference, count_int8_convolutions, int8_weight_bytes,
                         lower_int8, prepare_int8_qat, set_int8_qat_mode)
from common.unet import UNet

# find_spec, not importorskip: importing torchao here would bypass common.int8's silencing of its import warning
needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed")


def adam_steps(prepared: torch.fx.GraphModule, batches: list[torch.Tensor]) -> None:
    opt = torch.optim.Adam(prepared.parameters(), lr=1e-3)
    for x in batches:
        out = prepared(x)
        loss = sum(v.square().mean() for v in (out.values() if isinstance(out, dict) else [out]))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def pipeline() -> SimpleNamespace:
    if importlib.util.find_spec("torchao") is None:
        pytest.skip("torchao not installed")
    torch.manual_seed(0)
    model = UNet(k=4, in_channels=3, num_classes=5).eval()
    before = copy.deepcopy(model.state_dict())
    example = torch.randn(1, 3, 32, 32)  # batch 1: prepare_int8_qat must still export a dynamic batch
    prepared = prepare_int8_qat(model, example, multiple=16)   # heights and widths: any multiple of 16
    trained_in_train_mode = prepared.training
    adam_steps(prepared, [torch.randn(4, 3, 32, 32), torch.randn(3, 3, 32, 32)])  # two batch sizes
    prepared.eval()
    larger = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        fake_quant_out, fake_quant_larger = prepared(example), prepared(larger)
    reference = convert_reference(prepared)            # converted once (the slow step), lowered per input shape
    converted, converted_larger = lower_int8(reference, example), lower_int8(reference, larger)
    with torch.no_grad():
        int8_out, int8_larger = converted(example), converted_larger(larger)
    return SimpleNamespace(model=model, before=before, example=example, prepared=prepared, converted=converted,
                           trained_in_train_mode=trained_in_train_mode, fake_quant_out=fake_quant_out,
                           int8_out=int8_out, fake_quant_larger=fake_quant_larger, int8_larger=int8_larger,
                           converted_larger=converted_larger, reference=reference, larger=larger)


@pytest.mark.slow
def test_one_conversion_lowers_for_several_input_shapes(pipeline):
    # trained on 32x32 crops, evaluated on 48x64 images: the same int8 network, lowered for each shape
    assert count_int8_convolutions(pipeline.converted_larger) == count_int8_convolutions(pipeline.converted) == 19
    ref, out = pipeline.fake_quant_larger, pipeline.int8_larger
    assert out.shape == (1, 5, 48, 64)
    assert (out - ref).abs().max() <= 0.05 * (ref.max() - ref.min())
    with torch.no_grad():   # lowering the second shape left the first lowered model as it was
        assert torch.equal(pipeline.converted(pipeline.example), pipeline.int8_out)


@pytest.mark.slow
def test_prepare_leaves_the_model_alone(pipeline):
    assert pipeline.trained_in_train_mode
    assert not pipeline.model.training  # the train-mode export used a copy
    state = pipeline.model.state_dict()  # training the prepared model changed neither weights nor BN statistics
    assert all(torch.equal(v, state[k]) for k, v in pipeline.before.items())


@pytest.mark.slow
def test_every_conv2d_runs_in_int8(pipeline):
    n_conv2d = sum(isinstance(m, nn.Conv2d) for m in pipeline.model.modules())
    assert n_conv2d == 19
    assert count_int8_convolutions(pipeline.converted) == n_conv2d
    assert count_int8_convolutions(pipeline.prepared) == 0  # the QAT model only simulates int8
    targets = {str(n.target) for n in pipeline.converted.graph.nodes if n.op == "call_function"}
    assert not any(t.startswith(("aten.conv2d", "aten.convolution")) for t in targets)  # no float conv left


@pytest.mark.slow
def test_int8_output_matches_fake_quant_model(pipeline):
    ref, out = pipeline.fake_quant_out, pipeline.int8_out
    assert out.shape == ref.shape == (1, 5, 32, 32)
    # measured: 3.3% of the range, all of it from torchao's conv-BN folding in convert_pt2e (the lowering
    # reproduces the converted reference model to ~1e-7); without BatchNorm the gap is ~0.3%
    assert (out - ref).abs().max() <= 0.05 * (ref.max() - ref.min())
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95
    # the lowered model has the example's shape baked in, batch size included
    with torch.no_grad(), pytest.raises(RuntimeError, match="shape"):
        pipeline.converted(torch.randn(2, 3, 32, 32))


@pytest.mark.slow
def test_convert_leaves_prepared_model_usable(pipeline):
    prepared = pipeline.prepared
    with torch.no_grad():
        assert torch.equal(prepared(pipeline.example), pipeline.fake_quant_out)
        # eval freezes the observers: an out-of-range batch does not move the quantization ranges
        prepared(pipeline.example * 100)
        assert torch.equal(prepared(pipeline.example), pipeline.fake_quant_out)


@pytest.mark.slow
def test_train_eval_switching_and_deepcopy(pipeline):
    copied = copy.deepcopy(pipeline.prepared)
    assert not copied.training
    copied.train()  # routed to set_int8_qat_mode on the copy, not on the original
    assert copied.training and not pipeline.prepared.training
    copied.eval()
    set_int8_qat_mode(copied, train=True)
    assert copied.training
    with torch.no_grad():
        assert copied(torch.randn(2, 3, 32, 32)).shape == (2, 5, 32, 32)


@pytest.mark.slow
def test_int8_weight_bytes(pipeline):
    model, converted = pipeline.model, pipeline.converted
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    transposed = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    # int8 conv weights, float32 transposed-conv weights; then per channel at most a float32 bias, a float32
    # weight scale and an int64 zero point
    floor = sum(m.weight.numel() for m in convs) + 4 * sum(m.weight.numel() for m in transposed)
    channels = sum(m.out_channels for m in convs + transposed)
    size = int8_weight_bytes(converted)
    assert floor <= size <= floor + 16 * channels
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    assert size < 0.4 * fp32  # measured 0.33: a quarter for the int8 convs, plus the float transposed convs
    # no dead float copies are kept: the transposed convs' original weights were dropped after prepacking
    assert not any(name.endswith("weight") for name, _ in converted.named_parameters())


class TwoHeads(nn.Module):
    """A model whose forward returns a dict, as a distillation wrapper returning logits and features would."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {"logits": self.head(features), "features": features}


@pytest.mark.slow
@needs_torchao
def test_dict_output_model_without_batchnorm():
    torch.manual_seed(0)
    example = torch.rand(2, 3, 16, 16)
    prepared = prepare_int8_qat(TwoHeads(), example)
    adam_steps(prepared, [torch.rand(5, 3, 16, 16)])
    set_int8_qat_mode(prepared, train=False)
    with torch.no_grad():
        ref = prepared(example)
    converted = convert_int8(prepared, example)
    assert count_int8_convolutions(converted) == 2
    with torch.no_grad():
        out = converted(example)
    assert set(out) == {"logits", "features"}
    for key in out:
        span = ref[key].max() - ref[key].min()
        assert (out[key] - ref[key]).abs().max() <= 0.02 * span


def test_missing_torchao_gives_a_clear_error(monkeypatch):
    int8._torchao.cache_clear()
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e", None)  # makes the import fail
    try:
        with pytest.raises(RuntimeError, match="pip install torchao"):
            prepare_int8_qat(nn.Conv2d(1, 1, 1), torch.randn(2, 1, 4, 4))
    finally:
        int8._torchao.cache_clear()


@pytest.mark.slow
def test_inductor_compiled_int8_computes_what_the_lowered_graph_computes(pipeline):
    compiled = CompiledInt8(pipeline.reference)
    assert compiled.eval() is compiled and compiled.train() is compiled   # inference only, as measure_latency asks
    with torch.inference_mode():
        out, out_larger = compiled(pipeline.example), compiled(pipeline.larger)   # a new shape compiles again
    for got, lowered in ((out, pipeline.int8_out), (out_larger, pipeline.int8_larger)):
        assert got.shape == lowered.shape
        assert (got - lowered).abs().max() <= 1e-4 * lowered.abs().max()
