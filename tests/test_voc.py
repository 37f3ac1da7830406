"""Tests for common/voc.py: the VOC / SBD loaders (on tiny trees written here in the published layouts) and
their check of every file before training, synthetic scenes, the augmentation, and the figure helpers."""
from __future__ import annotations

import functools
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
import torchvision
from PIL import Image
from scipy import ndimage

import common.filecheck as filecheck
import common.voc as voc_module
from common.errors import UserError
from common.images import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize
from common.synthetic_scenes import SyntheticScenes
from common.voc import (NUM_CLASSES, VOC_CLASSES, VOC_PALETTE, augment, augmented_item, check_labels, colorize,
                        voc_dataset)
from conftest import write_palette_png

LABELS = np.array(list(range(NUM_CLASSES)) + [IGNORE_INDEX], dtype=np.uint8)

# ---- tiny files in the published formats ----------------------------------------------------------------------
VOC_TRAIN = {"2007_000032": (20, 30), "2007_000039": (24, 16), "2008_000002": (18, 22)}   # name: (height, width)
VOC_VAL = {"2007_000033": (16, 28), "2009_000001": (22, 22)}
SBD_TRAIN = ["2008_000100", "2007_000032", "2007_000033"]  # one also on VOC train, one on VOC val
SBD_VAL = ["2008_000200", "2008_000100"]                    # a repeat across SBD's own lists
SBD_SIZES = {"2008_000100": (14, 26), "2008_000200": (26, 12), "2007_000032": (20, 30), "2007_000033": (16, 28)}


def random_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    mask = LABELS[rng.integers(0, len(LABELS), size)]
    mask.ravel()[:len(LABELS)] = LABELS  # every value, 255 included, is there
    return mask


def smooth_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A smooth RGB image, so JPEG keeps it within a few grey levels."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3)
    return np.clip(base + 2.0 * yy[..., None] - 1.5 * xx[..., None], 0, 255).astype(np.uint8)


def write_sbd_mat(path: Path, seg: np.ndarray) -> None:
    """SBD's cls/*.mat: a struct GTcls with Segmentation (uint8 HxW), Boundaries (20x1 cell of sparse
    matrices) and CategoriesPresent, as in benchmark_RELEASE."""
    boundaries = np.empty((20, 1), dtype=object)
    for c in range(20):
        boundaries[c, 0] = scipy.sparse.csc_matrix(ndimage.binary_dilation(seg == c + 1) & (seg != c + 1))
    present = np.unique(seg[(seg > 0) & (seg < 21)]).astype(np.uint8)[:, None]
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg.astype(np.uint8), "Boundaries": boundaries,
                                      "CategoriesPresent": present}})


def make_voc(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """root/VOCdevkit/VOC2012 with JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    data = {}
    for split, names in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        for name, size in names.items():
            image, mask = smooth_image(rng, size), random_mask(rng, size)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            write_palette_png(voc / "SegmentationClass" / f"{name}.png", mask)
            data[name] = (image, mask)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return data


def make_aug_png(root: Path, seed: int = 1, list_in: str = "ImageSets", pairs: bool = False) -> dict[str, np.ndarray]:
    """Form (a): VOC2012/SegmentationClassAug/*.png (grey "L" PNGs, as the common conversion) + train_aug.txt."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "SegmentationClassAug").mkdir()
    extra = {"2008_000100": (14, 26), "2008_000200": (26, 12)}
    for name, size in extra.items():
        Image.fromarray(smooth_image(rng, size)).save(voc / "JPEGImages" / f"{name}.jpg")
    masks = {}
    for name, size in {**VOC_TRAIN, **extra}.items():
        masks[name] = random_mask(rng, size)
        Image.fromarray(masks[name]).save(voc / "SegmentationClassAug" / f"{name}.png")  # mode "L"
    names = list(masks)
    lines = [f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png" if pairs else n for n in names]
    folder = voc / "ImageSets" / "Segmentation" if list_in == "ImageSets" else root
    (folder / "train_aug.txt").write_text("\n".join(lines) + "\n")
    return masks


def make_sbd(root: Path, seed: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Form (b): root/benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}."""
    rng = np.random.default_rng(seed)
    sbd = root / "benchmark_RELEASE" / "dataset"
    (sbd / "img").mkdir(parents=True)
    (sbd / "cls").mkdir()
    data = {}
    for name, size in SBD_SIZES.items():
        image = smooth_image(rng, size)
        seg = LABELS[:NUM_CLASSES][rng.integers(0, NUM_CLASSES, size)]  # SBD has no 255 borders
        Image.fromarray(image).save(sbd / "img" / f"{name}.jpg", quality=95)
        write_sbd_mat(sbd / "cls" / f"{name}.mat", seg)
        data[name] = (image, seg)
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    return data


def assert_item(item, image: np.ndarray, mask: np.ndarray) -> None:
    x, y = item
    assert x.dtype == torch.uint8 and x.shape == (3, *mask.shape)
    assert y.dtype == torch.int64 and y.shape == mask.shape
    np.testing.assert_array_equal(y.numpy(), mask)                       # labels exactly, 255 included
    assert np.abs(x.permute(1, 2, 0).numpy().astype(int) - image).mean() < 3  # JPEG: nearly


# ---- VOC 2012 train / val ----------------------------------------------------------------------------------------
def test_voc_train_and_val_round_trip(tmp_path):
    data = make_voc(tmp_path)
    for split, names in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        ds = voc_dataset(tmp_path, split)
        assert len(ds) == len(names) and ds.names == list(names)
        for i, name in enumerate(names):
            assert_item(ds[i], *data[name])
        # the same files torchvision's VOCSegmentation reads
        tv = torchvision.datasets.VOCSegmentation(tmp_path, year="2012", image_set=split, download=False)
        assert [str(p) for p in ds.images] == tv.images and [str(p) for p in ds.masks] == tv.masks


@pytest.mark.parametrize("level", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_root_at_three_levels(tmp_path, level):
    data = make_voc(tmp_path)
    ds = voc_dataset(str(tmp_path / level) if level else tmp_path, "val")
    assert ds.names == list(VOC_VAL)
    assert_item(ds[1], *data["2009_000001"])


def test_voc_palette_png_is_read_as_indices_not_colours(tmp_path):
    data = make_voc(tmp_path)
    path = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png"
    assert Image.open(path).mode == "P"
    assert np.array(Image.open(path).convert("RGB")).max() > 20  # the colours are not the ids
    np.testing.assert_array_equal(voc_dataset(tmp_path, "train")[0][1].numpy(), data["2007_000032"][1])


def test_voc_bad_split(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(ValueError):
        voc_dataset(tmp_path, "test")


# ---- trainaug ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("list_in, pairs", [("ImageSets", False), ("root", True), ("ImageSets", True)])
def test_trainaug_png_form(tmp_path, list_in, pairs):
    make_voc(tmp_path)
    masks = make_aug_png(tmp_path, list_in=list_in, pairs=pairs)
    for level in ("", "VOCdevkit/VOC2012"):
        if level and list_in == "root":
            continue  # a list in the folder above VOCdevkit is found from that root or lower
        ds = voc_dataset(tmp_path / level, "trainaug")
        assert "form (a)" in ds.description and "form (a)" in repr(ds)
        assert ds.names == list(masks)
        for i, name in enumerate(masks):
            x, y = ds[i]
            np.testing.assert_array_equal(y.numpy(), masks[name])
            assert x.shape == (3, *masks[name].shape) and x.dtype == torch.uint8


def test_trainaug_png_list_found_from_lower_roots(tmp_path):
    make_voc(tmp_path)
    masks = make_aug_png(tmp_path, list_in="root", pairs=True)
    assert voc_dataset(tmp_path / "VOCdevkit" / "VOC2012", "trainaug").names == list(masks)


def test_trainaug_sbd_form_merges_and_excludes_val(tmp_path):
    voc_data = make_voc(tmp_path)
    sbd_data = make_sbd(tmp_path)
    ds = voc_dataset(tmp_path, "trainaug")
    assert "form (b)" in ds.description
    # SBD train + SBD val + VOC train, de-duplicated, minus VOC val (2007_000033)
    assert ds.names == ["2008_000100", "2007_000032", "2008_000200", "2007_000039", "2008_000002"]
    assert len(set(ds.names)) == len(ds.names) and not set(ds.names) & set(VOC_VAL)
    for i, name in enumerate(ds.names):
        if name in VOC_TRAIN:  # VOC's own mask, with its 255 borders
            assert ds.masks[i].suffix == ".png"
            assert_item(ds[i], *voc_data[name])
        else:
            assert ds.masks[i].suffix == ".mat"
            assert_item(ds[i], *sbd_data[name])


def test_sbd_fixture_reads_like_torchvision(tmp_path):
    # our .mat files have SBD's struct layout: torchvision's SBDataset reads them in both of its modes
    sbd_data = make_sbd(tmp_path)
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    seg = torchvision.datasets.SBDataset(root, image_set="val", mode="segmentation")
    np.testing.assert_array_equal(np.array(seg[0][1]), sbd_data["2008_000200"][1])
    boundaries = torchvision.datasets.SBDataset(root, image_set="val", mode="boundaries")[0][1]
    assert boundaries.shape == (20, *SBD_SIZES["2008_000200"])


@pytest.mark.parametrize("level", ["VOCdevkit", "VOCdevkit/VOC2012"])
def test_trainaug_sbd_found_from_lower_roots(tmp_path, level):
    make_voc(tmp_path)
    make_sbd(tmp_path)
    assert len(voc_dataset(tmp_path / level, "trainaug")) == 5


def test_trainaug_png_form_preferred_over_sbd(tmp_path):
    make_voc(tmp_path)
    make_sbd(tmp_path)
    make_aug_png(tmp_path)
    assert "form (a)" in voc_dataset(tmp_path, "trainaug").description


def test_trainaug_missing(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(UserError, match="benchmark_RELEASE") as e:
        voc_dataset(tmp_path, "trainaug")
    assert "SegmentationClassAug" in str(e.value) and "bharathh" in str(e.value)


def test_trainaug_png_without_list(tmp_path):
    make_voc(tmp_path)
    make_aug_png(tmp_path)
    (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").unlink()
    with pytest.raises(UserError, match="train_aug.txt"):
        voc_dataset(tmp_path, "trainaug")


def test_trainaug_sbd_missing_list(tmp_path):
    make_voc(tmp_path)
    make_sbd(tmp_path)
    (tmp_path / "benchmark_RELEASE/dataset/val.txt").unlink()
    with pytest.raises(UserError, match=r"dataset/val\.txt"):
        voc_dataset(tmp_path, "trainaug")


def test_trainaug_sbd_missing_mat(tmp_path):
    make_voc(tmp_path)
    make_sbd(tmp_path)
    (tmp_path / "benchmark_RELEASE/dataset/cls/2008_000200.mat").unlink()
    with pytest.raises(UserError, match=r"2008_000200\.mat"):
        voc_dataset(tmp_path, "trainaug")


# ---- errors: where the data is ------------------------------------------------------------------------------------
def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="no_such_folder") as e:
        voc_dataset(tmp_path / "no_such_folder", "train")
    assert "host.robots.ox.ac.uk" in str(e.value)


def test_root_without_voc(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(UserError, match="VOCdevkit/VOC2012") as e:
        voc_dataset(tmp_path, "train")
    assert "looks like" not in str(e.value)  # no hint where the folder holds no known data set


def test_root_of_another_data_set_is_named(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    with pytest.raises(UserError, match="no VOC 2012 data") as e:
        voc_dataset(tmp_path, "train")
    assert "looks like CIFAR-10" in str(e.value) and "reproduce_fcn_kd.py --experiment A" in str(e.value)


def test_sbd_extracted_into_the_root_is_named(tmp_path):
    # SBD's dataset/ unpacked straight into the root, not as benchmark_RELEASE/dataset next to VOCdevkit
    make_voc(tmp_path)
    make_sbd(tmp_path)
    (tmp_path / "benchmark_RELEASE" / "dataset").rename(tmp_path / "dataset")
    with pytest.raises(UserError, match="no trainaug data") as e:
        voc_dataset(tmp_path, "trainaug")
    assert "looks like SBD" in str(e.value) and "next to VOCdevkit" in str(e.value)


def test_missing_list_file(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    voc_dataset(tmp_path, "train")  # the other split is complete
    with pytest.raises(UserError, match=r"Segmentation/val\.txt"):
        voc_dataset(tmp_path, "val")


def test_missing_image(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/2007_000039.jpg").unlink()
    with pytest.raises(UserError, match=r"2007_000039\.jpg") as e:
        voc_dataset(tmp_path, "train")
    assert "train.txt" in str(e.value)


def test_missing_mask_folder(tmp_path):
    make_voc(tmp_path)
    for f in (tmp_path / "VOCdevkit/VOC2012/SegmentationClass").iterdir():
        f.unlink()
    (tmp_path / "VOCdevkit/VOC2012/SegmentationClass").rmdir()
    with pytest.raises(UserError, match="SegmentationClass"):
        voc_dataset(tmp_path, "val")


# ---- errors: bad files, found when the data set is built (no item is read) ------------------------------------------
def build_fails(root: Path, split: str, *bad: str) -> str:
    """voc_dataset's error message, asserting it came from the check before training and names every ``bad``."""
    with pytest.raises(UserError, match="failed their check before training") as e:
        voc_dataset(root, split, progress=False)
    message = str(e.value)
    assert f"{len(bad)} of " in message
    for name in bad:
        assert name in message
    return message


VOC_MASKS = "VOCdevkit/VOC2012/SegmentationClass"
VOC_IMAGES = "VOCdevkit/VOC2012/JPEGImages"
SBD_CLS = "benchmark_RELEASE/dataset/cls"


def test_rgb_mask_is_explained(tmp_path):
    data = make_voc(tmp_path)
    Image.fromarray(colorize(data["2007_000039"][1])).save(tmp_path / VOC_MASKS / "2007_000039.png")  # a rendering
    message = build_fails(tmp_path, "train", "2007_000039.png")
    assert "RGB" in message and "palette" in message


@pytest.mark.parametrize("bad", [21, 100])
def test_mask_values_out_of_range(tmp_path, bad):
    data = make_voc(tmp_path)
    mask = data["2009_000001"][1].copy()
    mask[3, 4] = bad
    write_palette_png(tmp_path / VOC_MASKS / "2009_000001.png", mask)
    assert f"[{bad}]" in build_fails(tmp_path, "val", "2009_000001.png")


def test_sixteen_bit_mask(tmp_path):
    make_voc(tmp_path)
    Image.fromarray(np.zeros((16, 28), np.uint16)).save(tmp_path / VOC_MASKS / "2007_000033.png")  # mode I;16
    assert "8-bit" in build_fails(tmp_path, "val", "2007_000033.png")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_png(tmp_path, damage):
    make_voc(tmp_path)
    path = tmp_path / VOC_MASKS / "2007_000032.png"
    data = path.read_bytes()
    path.write_bytes(b"not a png at all" * 20 if damage == "garbage" else data[:len(data) // 2])
    build_fails(tmp_path, "train", "2007_000032.png")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_jpeg(tmp_path, damage):
    make_voc(tmp_path)
    path = tmp_path / VOC_IMAGES / "2008_000002.jpg"
    data = path.read_bytes()
    path.write_bytes(b"\xff\xd8\xff garbage" if damage == "garbage" else data[:-20])
    if damage == "truncated":  # a cut-short download keeps a readable header: only decoding the data shows it
        assert Image.open(path).size == (22, 18)
    build_fails(tmp_path, "train", "2008_000002.jpg")


def test_mask_image_size_mismatch(tmp_path):
    make_voc(tmp_path)
    write_palette_png(tmp_path / VOC_MASKS / "2007_000033.png", np.zeros((5, 5), np.uint8))
    message = build_fails(tmp_path, "val", "2007_000033.png")
    assert "(5, 5)" in message and "(16, 28)" in message


def test_every_bad_file_is_named_in_one_error(tmp_path):
    data = make_voc(tmp_path)
    (tmp_path / VOC_IMAGES / "2007_000032.jpg").write_bytes(b"\xff\xd8\xff garbage")
    mask = data["2008_000002"][1].copy()
    mask[0, 0] = 50
    write_palette_png(tmp_path / VOC_MASKS / "2008_000002.png", mask)
    message = build_fails(tmp_path, "train", "2007_000032.jpg", "2008_000002.png")
    assert "2 of 3 VOC 2012 train" in message and "2007_000039" not in message


def test_item_read_checks_remain(tmp_path):
    # the second line of defence: a file broken after the data set was built fails when its item is read
    make_voc(tmp_path)
    ds = voc_dataset(tmp_path, "val", progress=False)
    write_palette_png(tmp_path / VOC_MASKS / "2007_000033.png", np.full((16, 28), 30, np.uint8))
    with pytest.raises(UserError, match=r"2007_000033\.png.*\[30\]"):
        ds[0]


def mat_v73(path: Path) -> None:
    """The 128-byte header of a MATLAB v7.3 (HDF5) file: what MATLAB's save -v7.3 writes first."""
    path.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
                     .ljust(116) + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 384)


@pytest.mark.parametrize("damage, words", [
    ("garbage", "not a MATLAB file"),
    ("empty", "not a MATLAB file"),
    ("v4", "MATLAB v4"),
    ("v7.3", "MATLAB v7.3 (HDF5)"),
    ("no GTcls", "GTcls"),
    ("3-D", "not (height, width)"),
    ("label 50", "[50]"),
    ("wrong size", "(14, 26)"),
])
def test_trainaug_sbd_bad_mat(tmp_path, damage, words):
    make_voc(tmp_path)
    data = make_sbd(tmp_path)
    path = tmp_path / SBD_CLS / "2008_000100.mat"
    seg = data["2008_000100"][1]
    if damage == "garbage":
        path.write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "v4":
        scipy.io.savemat(path, {"Segmentation": seg.astype(float)}, format="4")
    elif damage == "v7.3":
        mat_v73(path)
    elif damage == "no GTcls":
        scipy.io.savemat(path, {"GTinst": np.zeros((2, 2))})
    elif damage == "3-D":
        scipy.io.savemat(path, {"GTcls": {"Segmentation": np.stack([seg, seg], -1)}})
    elif damage == "label 50":
        seg = seg.copy()
        seg[2, 3] = 50
        write_sbd_mat(path, seg)
    else:
        write_sbd_mat(path, seg[:10])
    assert words in build_fails(tmp_path, "trainaug", "2008_000100.mat")


def test_trainaug_bad_files_in_both_forms_named_together(tmp_path):
    make_voc(tmp_path)
    make_sbd(tmp_path)
    (tmp_path / SBD_CLS / "2008_000200.mat").write_bytes(b"")               # an SBD label file
    Image.new("RGB", (16, 24)).save(tmp_path / VOC_MASKS / "2007_000039.png")  # a VOC mask trainaug takes from VOC
    build_fails(tmp_path, "trainaug", "2008_000200.mat", "2007_000039.png")


def test_sbd_mat_with_ignore_label_is_fine(tmp_path):
    make_voc(tmp_path)
    data = make_sbd(tmp_path)
    seg = data["2008_000200"][1].copy()
    seg[0, :] = IGNORE_INDEX
    write_sbd_mat(tmp_path / SBD_CLS / "2008_000200.mat", seg)
    ds = voc_dataset(tmp_path, "trainaug", progress=False)
    assert_item(ds[ds.names.index("2008_000200")], data["2008_000200"][0], seg)


def test_check_labels():
    check_labels(torch.tensor([[0, 20], [255, 7]]), "fine.png")
    check_labels(np.array([[0, 20], [255, 7]], np.uint8), "fine.png")
    with pytest.raises(UserError, match=r"bad\.png.*\[-1, 21, 254\]"):
        check_labels(torch.tensor([[0, 21], [254, -1]]), "bad.png")
    with pytest.raises(UserError, match=r"bad\.png.*\[21, 254\]"):
        check_labels(np.array([[0, 21], [254, 3]], np.uint8), "bad.png")
    with pytest.raises(UserError, match=r"bad\.mat.*\[1\.5\]"):
        check_labels(np.array([[0.0, 1.5]]), "bad.mat")


# ---- the check runs once per file: verdicts remembered, and in worker processes --------------------------------------
@pytest.fixture
def counted_checks(monkeypatch) -> list[Path]:
    """The images check_item looked at, in order (check_item's own name, so its verdicts, unchanged)."""
    seen: list[Path] = []
    real = voc_module.check_image

    def counting(path: Path) -> tuple[int, int]:
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(voc_module, "check_image", counting)
    return seen


def test_verdicts_skip_files_that_passed(tmp_path, counted_checks):
    make_voc(tmp_path / "data")
    verdicts = tmp_path / "cache" / filecheck.VERDICTS_FILE
    first = voc_dataset(tmp_path / "data", "train", verdicts=verdicts, progress=False)
    assert len(counted_checks) == len(VOC_TRAIN) and verdicts.is_file()
    second = voc_dataset(tmp_path / "data", "train", verdicts=verdicts, progress=False)
    assert len(counted_checks) == len(VOC_TRAIN)  # nothing checked again
    assert second.images == first.images and second.masks == first.masks
    voc_dataset(tmp_path / "data", "train", progress=False)  # without verdicts: every pair, every time
    assert len(counted_checks) == 2 * len(VOC_TRAIN)


def test_verdicts_recheck_a_changed_file(tmp_path, counted_checks):
    data = make_voc(tmp_path / "data")
    verdicts = tmp_path / filecheck.VERDICTS_FILE
    voc_dataset(tmp_path / "data", "train", verdicts=verdicts, progress=False)
    counted_checks.clear()
    mask_path = tmp_path / "data" / VOC_MASKS / "2007_000039.png"
    os.utime(mask_path, ns=(time.time_ns(), mask_path.stat().st_mtime_ns + 10**9))  # touched: a new mtime
    voc_dataset(tmp_path / "data", "train", verdicts=verdicts, progress=False)
    assert counted_checks == ["2007_000039.jpg"]
    mask = data["2007_000039"][1].copy()
    mask[0, 0] = 99
    write_palette_png(mask_path, mask)  # replaced by a bad one: found, however recent the verdicts
    build_fails(tmp_path / "data", "train", "2007_000039.png")
    with pytest.raises(UserError, match=r"2007_000039\.png"):  # and not remembered as good
        voc_dataset(tmp_path / "data", "train", verdicts=verdicts, progress=False)


@pytest.mark.slow
def test_check_in_worker_processes(tmp_path, monkeypatch):
    # the real data sets are checked in a process pool: check_item must travel there and its errors come back
    monkeypatch.setattr(filecheck, "PARALLEL_FROM", 2)
    data = make_voc(tmp_path)
    assert len(voc_dataset(tmp_path, "train", progress=False)) == len(VOC_TRAIN)
    mask = data["2007_000032"][1].copy()
    mask[1, 1] = 77
    write_palette_png(tmp_path / VOC_MASKS / "2007_000032.png", mask)
    assert "[77]" in build_fails(tmp_path, "train", "2007_000032.png")


# ---- SyntheticScenes -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes() -> tuple[np.ndarray, np.ndarray]:
    ds = SyntheticScenes("train", 64, 128, seed=0)
    start = time.perf_counter()
    items = [ds[i] for i in range(64)]
    print(f"\nSyntheticScenes: {1000 * (time.perf_counter() - start) / 64:.1f} ms per 128x128 scene")
    return torch.stack([x for x, _ in items]).numpy(), torch.stack([y for _, y in items]).numpy()


@pytest.mark.slow
def test_synthetic_types_and_values(scenes):
    images, masks = scenes
    assert images.shape == (64, 3, 128, 128) and images.dtype == np.uint8
    assert masks.shape == (64, 128, 128) and masks.dtype == np.int64
    assert set(np.unique(masks).tolist()) <= set(LABELS.tolist())
    assert images.std() > 20


@pytest.mark.slow
def test_synthetic_all_classes_appear(scenes):
    _, masks = scenes
    assert set(np.unique(masks).tolist()) == set(LABELS.tolist())


@pytest.mark.slow
def test_synthetic_background_fraction_like_voc(scenes):
    _, masks = scenes
    freq = np.bincount(masks.ravel(), minlength=256) / masks.size
    assert 0.55 <= freq[0] <= 0.78
    assert 0.02 <= freq[IGNORE_INDEX] <= 0.10
    assert freq[15] == freq[1:21].max() or freq[15] > 0.02  # person among the most frequent, as in VOC


@pytest.mark.slow
def test_synthetic_ignore_band_separates_objects(scenes):
    _, masks = scenes
    band = masks == IGNORE_INDEX
    within_2 = np.ones((1, 5, 5), bool)  # the band is 2 px wide at 128 px: its pixels touch one side each
    near_bg = ndimage.binary_dilation(masks == 0, structure=within_2)
    near_obj = ndimage.binary_dilation((masks > 0) & (masks < NUM_CLASSES), structure=within_2)
    assert (band & near_bg & near_obj).mean() > 0.5 * band.mean()  # most of the band lies between the two
    # no two 4-neighbours carry different labels: a band always lies between them, as in VOC
    for a, b in ((masks[:, 1:], masks[:, :-1]), (masks[:, :, 1:], masks[:, :, :-1])):
        assert not ((a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)).any()


@pytest.mark.slow
def test_synthetic_small_and_large_objects(scenes):
    _, masks = scenes
    areas = []
    for m in masks:
        labelled, n = ndimage.label((m > 0) & (m < NUM_CLASSES))
        areas += np.bincount(labelled.ravel())[1:].tolist()
    areas = np.array(areas) / masks[0].size
    assert areas.min() < 0.01 and areas.max() > 0.3


def test_synthetic_deterministic_and_independent_of_order():
    a = SyntheticScenes("train", 10, 64, seed=3)
    b = SyntheticScenes("train", 10, 64, seed=3)
    for i in range(7):
        a[i]
    x1, y1 = a[7]
    x2, y2 = b[7]  # first item b makes
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, y3 = a[7]  # memoised copy
    assert torch.equal(x1, x3) and torch.equal(y1, y3)
    x3[:] = 0
    y3[:] = 0
    assert torch.equal(a[7][0], x1) and torch.equal(a[7][1], y1)  # callers cannot change the cache


def test_synthetic_splits_and_seeds_differ():
    train, val = SyntheticScenes("train", 2, 64), SyntheticScenes("val", 2, 64)
    other_seed = SyntheticScenes("train", 2, 64, seed=1)
    for i in range(2):
        assert not torch.equal(train[i][0], val[i][0])
        assert not torch.equal(train[i][1], val[i][1])
        assert not torch.equal(train[i][0], other_seed[i][0])
    assert torch.equal(SyntheticScenes("trainaug", 2, 64)[1][0], train[1][0])


def test_synthetic_any_size_and_bad_arguments():
    ds = SyntheticScenes("val", 3, (48, 96))
    x, y = ds[2]
    assert x.shape == (3, 48, 96) and y.shape == (48, 96) and len(ds) == 3
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError):
        SyntheticScenes("test")


# ---- augment -------------------------------------------------------------------------------------------------------
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_shapes_and_types():
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    mask = torch.as_tensor(LABELS[np.random.default_rng(0).integers(0, 22, (40, 50))]).long()
    x, y = augment(image, mask, gen(0), crop=32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (32, 32) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= set(LABELS.tolist())
    assert augment(image, mask, gen(0))[0].shape == (3, 256, 256)  # the thesis's default crop


def test_augment_is_a_function_of_the_generator():
    image, mask = SyntheticScenes("train", 1, 64)[0]
    a, b = augment(image, mask, gen(5), crop=48), augment(image, mask, gen(5), crop=48)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = augment(image, mask, gen(6), crop=48)
    assert not torch.equal(a[0], c[0])
    g = gen(5)  # successive draws from one generator differ
    assert not torch.equal(augment(image, mask, g, crop=48)[0], augment(image, mask, g, crop=48)[0])


def test_augmented_item_is_augment_of_the_item_and_travels_to_worker_processes():
    dataset = SyntheticScenes("train", 3, 48)
    load = functools.partial(augmented_item, dataset, 32, (0.5, 2.0))     # what a script hands to StepBatches
    for index, seed in ((0, 0), (2, 5)):
        image, mask = dataset[index]
        expected = augment(image, mask, gen(seed), crop=32, scale=(0.5, 2.0))
        assert all(torch.equal(a, b) for a, b in zip(load(index, gen(seed)), expected))
    assert all(torch.equal(a, b) for a, b in zip(pickle.loads(pickle.dumps(load))(1, gen(3)), load(1, gen(3))))


def test_augment_pads_labels_with_ignore():
    image = torch.full((3, 10, 12), 200, dtype=torch.uint8)
    mask = torch.full((10, 12), 3, dtype=torch.long)
    x, y = augment(image, mask, gen(0), crop=16, scale=(0.5, 0.5))  # 5x6 in a 16x16 crop
    assert (y == 3).sum() == 30 and (y == IGNORE_INDEX).sum() == 256 - 30 and (y == 0).sum() == 0
    padded = (y == IGNORE_INDEX)
    zero = normalize(torch.zeros(3, 1, 1, dtype=torch.uint8))[:, 0, 0]
    assert torch.allclose(x[:, padded], zero[:, None].expand(3, int(padded.sum())))  # image padded with 0
    assert torch.allclose(denormalize(x)[:, ~padded], torch.tensor(200 / 255), atol=1e-5)


def test_augment_flip_flips_image_and_mask_together():
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, :, :3] = 255                        # bright left part
    mask = torch.ones(8, 8, dtype=torch.long)
    mask[:, :3] = 2                              # labelled 2 on the left
    flips = 0
    for seed in range(20):
        x, y = augment(image, mask, gen(seed), crop=8, scale=(1.0, 1.0))
        bright = denormalize(x)[0] > 0.5
        assert torch.equal(bright, y == 2)
        flipped = bool(bright[:, -3:].all())
        assert flipped or bool(bright[:, :3].all())
        flips += flipped
    assert 3 <= flips <= 17  # both happen


def test_augment_scale_two_doubles_pixels():
    mask = torch.as_tensor(LABELS[np.random.default_rng(3).integers(0, 22, (8, 8))]).long()
    image = torch.stack([mask.to(torch.uint8)] * 3)
    x, y = augment(image, mask, gen(1), crop=16, scale=(2.0, 2.0))  # exactly the scaled image, no crop freedom
    doubled = mask.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(y, doubled) or torch.equal(y, doubled.flip(-1))


def test_augment_scale_range_respected():
    image = torch.full((3, 40, 40), 100, dtype=torch.uint8)
    mask = torch.zeros(40, 40, dtype=torch.long)
    sides = []
    for seed in range(30):  # crop 96 > 40 * 1.25: the unpadded pixels measure the scaled size
        _, y = augment(image, mask, gen(seed), crop=96, scale=(0.75, 1.25))
        sides.append(float((y != IGNORE_INDEX).sum()) ** 0.5)
    assert min(sides) >= 30 and max(sides) <= 50
    assert max(sides) - min(sides) > 10  # the range is used, not one value


def test_normalize_round_trip_and_values():
    image = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    x = normalize(image)
    assert x.dtype == torch.float32 and x.shape == image.shape
    assert torch.allclose(denormalize(x) * 255, image.float(), atol=1e-3)
    assert torch.allclose(denormalize(normalize(image[0])) * 255, image[0].float(), atol=1e-3)
    white = normalize(torch.full((3, 1, 1), 255, dtype=torch.uint8))[:, 0, 0]
    assert torch.allclose(white, (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))


def test_colorize_and_palette():
    out = colorize(torch.tensor([[0, 1, 15], [20, 255, 2]]))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [128, 0, 0]   # background, aeroplane
    assert out[0, 2].tolist() == [192, 128, 128] and out[1, 0].tolist() == [0, 64, 128]  # person, tvmonitor
    assert out[1, 1].tolist() == [255, 255, 255]                                     # ignore -> white
    assert np.array_equal(colorize(np.array([[2]])), [[[0, 128, 0]]])
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]  # the VOC files' own colour for 255
    assert len(VOC_CLASSES) == NUM_CLASSES and VOC_CLASSES[0] == "background" and VOC_CLASSES[-1] == "tvmonitor"
