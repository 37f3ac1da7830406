"""No file runs code: a crafted weight file that would create a marker file when unpickled is refused on every path
that reads weights (torch.hub's cache of torchvision's files included), with one line and exit status 2.

The payload is a pickle whose ``__reduce__`` calls ``open(marker, "w")``: a plain ``torch.load`` (or torchvision's
``get_state_dict``) of it creates the marker. Where torch.hub's folder is involved, the published sha256 prefix is
patched to the crafted file's own, so that ``weights_only=True`` -- not the hash check -- is what must stop it; a
second test shows the hash check stops it too. CIFAR-10's pickles are covered in test_cifar.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import reproduce_deeplab_caspp
import reproduce_fcn_kd
import reproduce_intra_kd
import reproduce_qkd
import reproduce_unet_kd
from common.errors import UserError
from common.segmentation_models import build_segmenter
from common.runs import load_checkpoint, load_weights, run_main
from common.unet import UNet
from common.weight_files import fetch_torchvision_weights, published_file_name, sha256_of
from script_runs import tiny


class CreatesFile:
    """Unpickling this creates ``path``: the stand-in for any code a crafted file could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def crafted_file(path: Path, marker: Path) -> Path:
    """A weights-looking file (a dict with a "model" entry) that runs code when fully unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"weight": torch.zeros(1)}, "arch": CreatesFile(marker)}, path)
    return path


def test_the_payload_really_runs_under_a_plain_load(tmp_path):
    """The test's premise: without weights_only the file does create the marker."""
    marker = tmp_path / "marker"
    torch.load(crafted_file(tmp_path / "w.pth", marker), weights_only=False)
    assert marker.exists()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch.hub folder, no network, and published hashes that match whatever file lies there."""
    def no_network(*args, **kwargs):
        raise OSError("no network in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def trust(monkeypatch, path: Path) -> None:
    digest = sha256_of(path)
    monkeypatch.setattr("common.weight_files.published_hash_prefix", lambda name: digest[:8])


def test_a_crafted_file_in_the_hub_cache_is_refused(hub, tmp_path, monkeypatch):
    import torchvision

    weights = torchvision.models.ResNet101_Weights.IMAGENET1K_V1
    marker = tmp_path / "marker"
    trust(monkeypatch, crafted_file(hub / published_file_name(weights), marker))
    with pytest.raises(UserError, match="cannot read") as excinfo:
        fetch_torchvision_weights(weights, "ImageNet weights", "--backbone-weights")
    assert not marker.exists() and "\n" not in str(excinfo.value)


def test_a_file_in_the_hub_cache_that_is_not_the_published_one_is_refused_unread(hub, tmp_path):
    import torchvision

    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    marker = tmp_path / "marker"
    crafted_file(hub / published_file_name(weights), marker)
    with pytest.raises(UserError, match="not torchvision's published file") as excinfo:
        fetch_torchvision_weights(weights, "ImageNet weights", "--backbone-weights")
    assert not marker.exists() and "--backbone-weights PATH" in str(excinfo.value)


@pytest.mark.parametrize("load", [
    lambda path: load_checkpoint(path),                                   # resume, cached teachers, --resume
    lambda path: load_weights(UNet(1), path),                             # unet's --teacher-checkpoint
    lambda path: build_segmenter("fcn_resnet50", weights=path),           # fcn/qkd/intra --teacher-checkpoint
    lambda path: build_segmenter("fcn_resnet50", backbone_weights=path),  # --backbone-weights, --teacher-backbone
], ids=["checkpoint", "unet", "segmenter", "backbone"])
def test_a_crafted_local_file_is_refused(tmp_path, load):
    marker = tmp_path / "marker"
    with pytest.raises(UserError) as excinfo:
        load(crafted_file(tmp_path / "w.pth", marker))
    assert not marker.exists() and str(tmp_path / "w.pth") in str(excinfo.value)


def test_deeplab_backbone_file_is_refused(tmp_path):
    from common.deeplab import build_deeplabv3plus

    marker = tmp_path / "marker"
    with pytest.raises(UserError, match="cannot read"):
        build_deeplabv3plus("mobilenet_v2", backbone_weights=crafted_file(tmp_path / "w.pth", marker))
    assert not marker.exists()


# ----------------------------------------------------------------------------- the scripts, end to end
def fails(script, argv: list[str], capsys) -> str:
    """Run ``script.main(argv)`` as the command line does: exit status 2 and one ``error:`` line, returned."""
    with pytest.raises(SystemExit) as excinfo:
        run_main(lambda: script.main(argv))
    assert excinfo.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def hub_cases():
    import torchvision
    from torchvision.models import segmentation

    return [
        (reproduce_deeplab_caspp, torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
         ["--backbone", "mobilenet_v2", "--backbone-init", "imagenet", "--iterations", "1", "--batch-size", "2",
          "--crop", "64", "--train-images", "2", "--val-images", "1", "--image-size", "64"]),
        (reproduce_fcn_kd, segmentation.FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
         ["--teacher-weights", "coco", "--backbone-init", "scratch", "--train-images", "8", "--val-images", "1",
          "--pretrain-images", "8", "--image-size", "32", "--crop", "32", "--profile-size", "32"]),
        (reproduce_qkd, segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
         ["--teacher-weights", "coco", "--no-int8", "--image-size", "32", "--crop", "32", "--train-images", "8",
          "--val-images", "1"]),
        (reproduce_intra_kd, torchvision.models.ResNet50_Weights.IMAGENET1K_V1,   # the default teacher's backbone
         ["--teacher-backbone", "imagenet", "--height", "32", "--width", "64", "--train-images", "4",
          "--val-images", "1", "--batch-size", "2"]),
    ]


@pytest.mark.parametrize("case", range(4), ids=["deeplab", "fcn", "qkd", "intra"])
def test_a_crafted_hub_file_stops_each_script_without_running(case, hub, tmp_path, monkeypatch, capsys):
    script, weights, argv = hub_cases()[case]
    marker = tmp_path / "marker"
    trust(monkeypatch, crafted_file(hub / published_file_name(weights), marker))
    if script is reproduce_deeplab_caspp:
        script.imagenet_backbone.cache_clear()
    line = fails(script, tiny(tmp_path, *argv), capsys)
    assert not marker.exists()
    assert published_file_name(weights) in line
    assert not (tmp_path / "run").exists()     # nothing half-made is left behind


def test_a_crafted_unet_teacher_checkpoint_stops_the_script(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = crafted_file(tmp_path / "teacher.pt", marker)
    line = fails(reproduce_unet_kd, tiny(tmp_path, "--teacher-checkpoint", str(path)), capsys)
    assert not marker.exists() and str(path) in line and not (tmp_path / "run").exists()
