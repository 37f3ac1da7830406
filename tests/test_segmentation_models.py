"""torchvision's FCN / DeepLabV3 wrapped for the scripts: parameter and MAdd counts against torchvision's published
figures, the forward pass and its features, and every way weights reach the network (and fail to)."""
from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import segmentation

from common.errors import UserError
from common.profiler import count_macs, count_parameters
from common.segmentation_models import ARCHITECTURES, PUBLISHED, TorchvisionSegmenter, WeightFlags, build_segmenter
from common.runs import save_checkpoint, save_weights
from common.weight_files import sha256_of

TORCHVISION_BUILDERS = {arch: getattr(segmentation, arch) for arch in ARCHITECTURES}


def torchvision_with_aux(arch: str, num_classes: int = 21) -> torch.nn.Module:
    """torchvision's own network with its auxiliary head, the one its published figures describe."""
    return TORCHVISION_BUILDERS[arch](weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True)


def on_meta(build, *args, **kwargs):
    """Shapes only: counts without the seconds a ResNet-101's random initialisation takes."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def user_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message  # shown to the user as one line
    return message


# ------------------------------------------------------------------------------------------ torchvision's figures
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_parameters_plus_the_aux_head_are_torchvision_published_count(arch):
    ours, theirs = on_meta(TorchvisionSegmenter, arch), on_meta(torchvision_with_aux, arch)
    aux_head = count_parameters(theirs.aux_classifier)
    assert count_parameters(ours) + aux_head == count_parameters(theirs) == PUBLISHED[arch]["num_params"]
    assert ours.net.aux_classifier is None


@pytest.mark.parametrize("arch, expected", [("fcn_resnet50", 32_957_013), ("fcn_resnet101", 51_949_141)])
def test_fcn_parameters_without_the_aux_head(arch, expected):
    aux_fcn_head = 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21  # FCNHead(1024, 21): 3x3 conv, BN, 1x1 conv with bias
    assert aux_fcn_head == 2_365_205
    ours = count_parameters(on_meta(TorchvisionSegmenter, arch))
    assert ours == expected == PUBLISHED[arch]["num_params"] - aux_fcn_head


def test_fewer_classes_change_only_the_last_conv():
    assert (count_parameters(on_meta(TorchvisionSegmenter, "fcn_resnet50"))
            - count_parameters(on_meta(TorchvisionSegmenter, "fcn_resnet50", 10))) == (512 + 1) * (21 - 10)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_madds_at_520_are_torchvision_published_ops(arch):
    # ptflops also counts BatchNorm, ReLU and pooling, so it lands slightly above torchvision's figure
    # (fcn_resnet50: 153.12 G against 152.717 G).
    macs = count_macs(on_meta(torchvision_with_aux, arch), (1, 3, 520, 520))
    assert PUBLISHED[arch]["gmacs"] <= macs / 1e9 <= PUBLISHED[arch]["gmacs"] * 1.005


@pytest.mark.slow
def test_meta_device_counts_what_the_cpu_counts(fcn50):
    shape = (1, 3, 64, 64)
    assert count_macs(on_meta(TorchvisionSegmenter, "fcn_resnet50"), shape) == count_macs(fcn50, shape)


def test_published_metrics_are_torchvision_coco_voc_numbers():
    assert PUBLISHED["fcn_resnet101"]["miou"] == 63.7  # source 001's teacher
    assert PUBLISHED["fcn_resnet50"] == {"miou": 60.5, "pixel_acc": 91.4, "num_params": 35_322_218, "gmacs": 152.717}
    assert set(PUBLISHED) == set(ARCHITECTURES)


# ------------------------------------------------------------------------------------------ forward
@pytest.fixture(scope="module")
def fcn50():
    torch.manual_seed(0)
    return TorchvisionSegmenter("fcn_resnet50").eval()


@pytest.fixture(scope="module")
def deeplab50():
    torch.manual_seed(0)
    return TorchvisionSegmenter("deeplabv3_resnet50", num_classes=5).eval()


def _ceil_div(size: int, by: int) -> int:
    return -(-size // by)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(64, 64), (65, 77)])
@pytest.mark.parametrize("which, classes, head_channels", [("fcn50", 21, 512), ("deeplab50", 5, 256)])
def test_forward_is_torchvision_out_and_features_come_from_the_same_pass(request, which, classes, head_channels,
                                                                         size):
    model = request.getfixturevalue(which)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits, features = model(x, return_features=True)
        assert torch.equal(logits, model.net(x)["out"])
        assert torch.equal(logits, model(x))
    assert logits.shape == (2, classes, *size)
    stride_8 = (_ceil_div(size[0], 8), _ceil_div(size[1], 8))  # dilated ResNet: output stride 8
    assert features["backbone"].shape == (2, 2048, *stride_8)
    assert features["head"].shape == (2, head_channels, *stride_8)


def test_config_backbone_and_head_parameters():
    deeplab50 = on_meta(TorchvisionSegmenter, "deeplabv3_resnet50", num_classes=5)
    assert deeplab50.config() == {"arch": "deeplabv3_resnet50", "num_classes": 5}
    resnet_keys = {k for k in on_meta(torchvision.models.resnet50).state_dict() if not k.startswith("fc.")}
    assert set(deeplab50.backbone.state_dict()) == resnet_keys
    head, backbone = {id(p) for p in deeplab50.head_parameters()}, {id(p) for p in deeplab50.backbone.parameters()}
    assert not head & backbone and head | backbone == {id(p) for p in deeplab50.parameters()}


@pytest.mark.parametrize("kwargs, valid", [({"arch": "fcn_resnet18"}, ", ".join(ARCHITECTURES)),
                                           ({"arch": "fcn_resnet50", "num_classes": 1}, ">= 2")])
def test_bad_arguments_are_user_errors_listing_the_choices(kwargs, valid):
    with pytest.raises(UserError, match=valid):
        build_segmenter(**kwargs)


def test_weights_and_backbone_weights_together_are_refused(tmp_path):
    with pytest.raises(UserError, match="not both") as excinfo:
        build_segmenter("fcn_resnet50", weights="coco", backbone_weights="imagenet")
    assert "--teacher-checkpoint" in user_error(excinfo) and "--backbone-weights" in user_error(excinfo)


def test_coco_weights_need_21_classes():
    with pytest.raises(UserError, match="21 classes.*not 10") as excinfo:
        build_segmenter("fcn_resnet101", num_classes=10, weights="coco")
    user_error(excinfo)


# ------------------------------------------------------------------------------------------ weights files
def shapes_only(model: torch.nn.Module) -> dict:
    """The state dict's keys and shapes with one stored number per tensor (an expanded zero): files that must be
    refused need the right layout, not the hundreds of megabytes of real weights."""
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights files in the layouts the scripts meet, shapes only (the files that must be refused are refused on
    their layout). The fcn_resnet50 one mimics torchvision's COCO file (with aux_classifier.*); checkpoint.pt is
    what ``save_weights`` writes for an fcn_resnet50."""
    folder = tmp_path_factory.mktemp("weights")
    contents = {"fcn_resnet50_coco-1167a1af.pth": shapes_only(on_meta(torchvision_with_aux, "fcn_resnet50")),
                "fcn_resnet50_10_classes.pth": shapes_only(on_meta(torchvision_with_aux, "fcn_resnet50", 10)),
                "deeplabv3_resnet50.pth": shapes_only(on_meta(torchvision_with_aux, "deeplabv3_resnet50", 5)),
                "resnet50_shapes.pth": shapes_only(on_meta(torchvision.models.resnet50)), "list.pth": [1, 2]}
    paths = {}
    for name, content in contents.items():
        torch.save(content, folder / name)
        paths[name] = folder / name
    fcn50_shapes = on_meta(TorchvisionSegmenter, "fcn_resnet50")
    paths["checkpoint.pt"] = folder / "checkpoint.pt"
    save_checkpoint(paths["checkpoint.pt"], {"arch": fcn50_shapes.config(), "model": shapes_only(fcn50_shapes)})
    paths["garbage.pth"] = folder / "garbage.pth"
    paths["garbage.pth"].write_bytes(b"not a checkpoint")
    return paths


@pytest.fixture(scope="module")
def real_files(tmp_path_factory, fcn50):
    """Files with real weights, for the tests that load them: torchvision's COCO layout of fcn_resnet50 and its
    ImageNet ResNet-50 (both built by torchvision itself), and a checkpoint of ``fcn50``."""
    folder = tmp_path_factory.mktemp("real_weights")
    torch.manual_seed(1)
    paths = {"fcn_resnet50_coco-1167a1af.pth": folder / "fcn_resnet50_coco-1167a1af.pth",
             "resnet50-0676ba61.pth": folder / "resnet50-0676ba61.pth", "checkpoint.pt": folder / "checkpoint.pt"}
    torch.save(torchvision_with_aux("fcn_resnet50").state_dict(), paths["fcn_resnet50_coco-1167a1af.pth"])
    torch.save(torchvision.models.resnet50().state_dict(), paths["resnet50-0676ba61.pth"])
    save_weights(paths["checkpoint.pt"], fcn50)
    return paths


def assert_holds(model: TorchvisionSegmenter, state_dict: dict) -> None:
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


@pytest.mark.slow
def test_a_torchvision_file_loads_without_its_aux_head(real_files):
    model = build_segmenter("fcn_resnet50", weights=real_files["fcn_resnet50_coco-1167a1af.pth"])
    assert model.net.aux_classifier is None
    assert_holds(model, torch.load(real_files["fcn_resnet50_coco-1167a1af.pth"], weights_only=True))


@pytest.mark.slow
def test_a_checkpoint_of_this_repository_loads(real_files, fcn50):
    model = build_segmenter("fcn_resnet50", weights=real_files["checkpoint.pt"])
    assert_holds(model, fcn50.net.state_dict())


@pytest.mark.parametrize("arch, num_classes, file, looks_like", [
    ("fcn_resnet101", 21, "fcn_resnet50_coco-1167a1af.pth", "fcn_resnet50 with 21 classes"),
    ("fcn_resnet50", 21, "fcn_resnet50_10_classes.pth", "fcn_resnet50 with 10 classes"),
    ("fcn_resnet50", 21, "deeplabv3_resnet50.pth", "deeplabv3_resnet50 with 5 classes"),
    ("deeplabv3_resnet101", 21, "resnet50_shapes.pth", "a resnet50 classification network"),
])
def test_a_file_of_another_network_is_a_user_error_saying_what_it_looks_like(files, arch, num_classes, file,
                                                                              looks_like):
    with pytest.raises(UserError) as excinfo:
        build_segmenter(arch, num_classes, weights=files[file], flags=WeightFlags(network_file="--teacher"))
    message = user_error(excinfo)
    assert f"does not hold {arch} weights with {num_classes} classes (it looks like {looks_like})" in message
    assert message.startswith(f"--teacher {files[file]}")


def test_a_checkpoint_of_another_architecture_is_a_user_error(files):
    with pytest.raises(UserError, match="different architecture: arch='fcn_resnet50' \\(need 'deeplabv3_resnet50'"):
        on_meta(build_segmenter, "deeplabv3_resnet50", weights=files["checkpoint.pt"])


@pytest.mark.parametrize("file, match", [("missing.pth", "does not exist"), ("garbage.pth", "cannot read"),
                                         ("list.pth", "not a state dict")])
def test_missing_or_unreadable_files_are_user_errors(files, tmp_path, file, match):
    path = files.get(file, tmp_path / file)
    for kwargs in ({"weights": path}, {"backbone_weights": path}):
        with pytest.raises(UserError, match=match) as excinfo:
            build_segmenter("fcn_resnet101", **kwargs)
        user_error(excinfo)


@pytest.mark.slow
def test_a_resnet_file_loads_into_the_backbone(real_files):
    model = build_segmenter("fcn_resnet50", backbone_weights=real_files["resnet50-0676ba61.pth"])
    saved = torch.load(real_files["resnet50-0676ba61.pth"], weights_only=True)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, saved[key]), key


@pytest.mark.parametrize("arch, file, looks_like", [
    ("fcn_resnet101", "resnet50_shapes.pth", "a resnet50 classification network"),
    ("fcn_resnet50", "fcn_resnet50_coco-1167a1af.pth", "fcn_resnet50 with 21 classes"),
    ("fcn_resnet50", "checkpoint.pt", "a checkpoint of this repository"),
])
def test_a_backbone_file_of_another_network_is_a_user_error(files, arch, file, looks_like):
    with pytest.raises(UserError) as excinfo:
        build_segmenter(arch, backbone_weights=files[file])
    message, resnet = user_error(excinfo), arch.split("_")[1]
    assert f"(it looks like {looks_like}" in message and f"ImageNet file for {resnet}" in message


# ------------------------------------------------------------------------------------------ downloads
@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch.hub folder and no network. common.weight_files looks in get_dir()/checkpoints and otherwise
    calls torch.hub.download_url_to_file: both are patched."""
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "checkpoints"


@pytest.mark.parametrize("kwargs, file_name, flag", [
    ({"weights": "coco"}, "fcn_resnet101_coco-7ecb50ca.pth", "--teacher-checkpoint"),
    ({"backbone_weights": "imagenet"}, "resnet101-63fe2227.pth", "--backbone-weights"),
])
def test_without_network_the_error_says_where_to_put_the_file(offline_hub, kwargs, file_name, flag):
    with pytest.raises(UserError, match="cannot download") as excinfo:
        build_segmenter("fcn_resnet101", **kwargs)
    message = user_error(excinfo)
    assert file_name in message and f"{offline_hub}/" in message and f"{flag} PATH" in message


def test_the_flags_named_in_errors_are_the_scripts(offline_hub):
    with pytest.raises(UserError, match="or pass --student-backbone PATH"):
        build_segmenter("fcn_resnet50", backbone_weights="imagenet",
                        flags=WeightFlags(backbone_file="--student-backbone"))


def test_a_corrupt_cached_file_is_a_user_error(offline_hub):
    offline_hub.mkdir()
    (offline_hub / "deeplabv3_resnet101_coco-586e9e4e.pth").write_bytes(b"truncated")
    with pytest.raises(UserError, match="delete it") as excinfo:
        build_segmenter("deeplabv3_resnet101", weights="coco")
    assert str(offline_hub / "deeplabv3_resnet101_coco-586e9e4e.pth") in user_error(excinfo)


@pytest.mark.slow
def test_coco_weights_already_in_the_hub_folder_load(offline_hub, real_files, monkeypatch):
    offline_hub.mkdir()
    (offline_hub / "fcn_resnet50_coco-1167a1af.pth").symlink_to(real_files["fcn_resnet50_coco-1167a1af.pth"])
    # our stand-in is not torchvision's file: let the published hash be the stand-in's, so the hash check passes
    digest = sha256_of(real_files["fcn_resnet50_coco-1167a1af.pth"])
    monkeypatch.setattr("common.weight_files.published_hash_prefix", lambda name: digest[:8])
    model = build_segmenter("fcn_resnet50", weights="coco")
    assert_holds(model, torch.load(real_files["fcn_resnet50_coco-1167a1af.pth"], weights_only=True))


@pytest.mark.parametrize("kernel", [(3, 3), (3, 1), (1, 3)])
@pytest.mark.parametrize("size", [(8, 8), (8, 16), (16, 8), (32, 32)])   # taps off: both ways, rows, columns, none
def test_atrous_conv_leaving_out_padding_taps_is_the_full_convolution(size, kernel):
    """3x3 (ASPP) and 3x1 / 1x3 (ERFNet) kernels at dilation 12: outputs and gradients as nn.Conv2d's."""
    from common.atrous import AtrousConv2d

    torch.manual_seed(0)
    padding = tuple(12 * (k // 2) for k in kernel)
    full = torch.nn.Conv2d(6, 5, kernel, padding=padding, dilation=12, bias=True)
    atrous = AtrousConv2d.like(full)
    assert atrous.weight is full.weight                       # shared, not copied
    x = torch.randn(2, 6, *size, requires_grad=True)
    out_full, out_atrous = full(x), atrous(x)
    assert torch.allclose(out_atrous, out_full, atol=1e-5)
    params = (x, full.weight, full.bias)
    grads = [torch.autograd.grad(out.square().sum(), params) for out in (out_full, out_atrous)]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*grads))
    weight_grad = grads[1][1]
    if size[0] <= 12 and kernel[0] == 3:                      # the taps above and below read padding only
        assert weight_grad[:, :, [0, 2]].abs().max() == 0
    if size[1] <= 12 and kernel[1] == 3:                      # the taps left and right read padding only
        assert weight_grad[:, :, :, [0, 2]].abs().max() == 0


@pytest.mark.parametrize("rows, cols", [(slice(1, 2), slice(1, 2)), (slice(1, 2), slice(None)),
                                        (slice(None), slice(1, 2))])
def test_kernel_part_has_the_slices_gradient_in_the_weights_layout(rows, cols):
    """The taps of a channels-last kernel: the same values and gradient as slicing, exactly, with the gradient
    channels-last like the weight; a kernel used twice (KSAC shares one) gets both gradients added."""
    from common.atrous import kernel_part

    torch.manual_seed(0)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight.requires_grad_()
    g1, g2 = torch.randn_like(weight[:, :, rows, cols]), torch.randn_like(weight[:, :, rows, cols])
    part = kernel_part(weight, rows, cols)
    assert torch.equal(part, weight[:, :, rows, cols]) and part.data_ptr() != weight.data_ptr()
    (got,) = torch.autograd.grad((part * g1).sum() + (kernel_part(weight, rows, cols) * g2).sum(), weight)
    (expected,) = torch.autograd.grad((weight[:, :, rows, cols] * (g1 + g2)).sum(), weight)
    assert torch.equal(got, expected)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    outside = got.clone()
    outside[:, :, rows, cols] = 0
    assert got[:, :, rows, cols].abs().min() > 0 and outside.abs().max() == 0


@pytest.mark.parametrize("channels, groups, out, size, dilation", [
    (8, 8, 8, (16, 16), 3), (6, 6, 6, (13, 19), 4), (6, 6, 12, (20, 9), 3), (4, 1, 5, (17, 17), 2),
    (3, 3, 3, (5, 5), 6)])
def test_space_to_batch_is_the_dilated_convolution(channels, groups, out, size, dilation):
    """Depthwise and full kernels, maps that are not a multiple of the dilation, a dilation beyond the map:
    outputs and gradients (input, weight, bias) as F.conv2d's in float64, and channels-last kept."""
    from common.atrous import space_to_batch_conv

    torch.manual_seed(0)
    x = torch.randn(2, channels, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(out, channels // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(out, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(x, weight, bias, 1, dilation, dilation, groups)
    got = space_to_batch_conv(x, weight, bias, (dilation, dilation), groups)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got.square().sum(), (x, weight, bias)),
                    torch.autograd.grad(expected.square().sum(), (x, weight, bias))):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-9)


def test_atrous_conv_takes_sub_grids_only_for_channels_last_depthwise_on_cpu(monkeypatch):
    from common import atrous
    from common.atrous import AtrousConv2d

    calls = []
    monkeypatch.setattr(atrous, "space_to_batch_conv", lambda *a: calls.append(a[3]) or torch.zeros(1))
    depthwise = AtrousConv2d(8, 8, 3, padding=3, dilation=3, groups=8, bias=False)
    full = AtrousConv2d(8, 8, 3, padding=3, dilation=3, bias=False)
    nhwc = torch.randn(1, 8, 9, 12).contiguous(memory_format=torch.channels_last)
    depthwise(nhwc)                                          # 3 x 4 sub-grids: taken
    depthwise(nhwc.contiguous())                             # contiguous: oneDNN's own
    full(nhwc)                                               # not depthwise
    depthwise(nhwc[..., :8, :].contiguous(memory_format=torch.channels_last))   # 8 rows / 3: 3 x 4, taken
    depthwise(nhwc[..., :6, :].contiguous(memory_format=torch.channels_last))   # 2 x 4 sub-grids: too small
    assert calls == [(3, 3), (3, 3)]


def test_atrous_conv_keeps_the_nominal_madds_and_refuses_other_convolutions():
    from common.atrous import AtrousConv2d

    full = torch.nn.Conv2d(4, 4, 3, padding=6, dilation=6)
    assert count_macs(torch.nn.Sequential(AtrousConv2d.like(full)), (1, 4, 8, 8)) == \
        count_macs(torch.nn.Sequential(full), (1, 4, 8, 8)) == 4 * 4 * 9 * 64 + 4 * 64
    for wrong in (torch.nn.Conv2d(4, 4, 3, padding=1, dilation=6), torch.nn.Conv2d(4, 4, 5, padding=12, dilation=6),
                  torch.nn.Conv2d(4, 4, 3, stride=2, padding=6, dilation=6),
                  torch.nn.Conv2d(4, 4, 3, padding=6, dilation=6, padding_mode="reflect")):
        with pytest.raises(ValueError, match="padded by its dilation"):
            AtrousConv2d.like(wrong)
