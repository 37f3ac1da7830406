"""Tests for common/synthetic_em.py (synthetic EM slices) and common/em_data.py (the EPFL TIFF loader, on tiny stacks
written here; normalisation; crops)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.em_data import EPFLMitochondria, Volume, fixed_crops, normalize, random_crops
from common.synthetic_em import SyntheticEM
from common.errors import UserError
from conftest import write_stack


# ---- SyntheticEM ----------------------------------------------------------------------------------------------

def test_synthetic_is_deterministic():
    a = SyntheticEM("train", 3, (64, 64), seed=5).volume
    b = SyntheticEM("train", 3, (64, 64), seed=5).volume
    assert a.images.tobytes() == b.images.tobytes()
    assert a.masks.tobytes() == b.masks.tobytes()
    assert a.name == b.name


def test_synthetic_seed_changes_slices():
    a = SyntheticEM("train", 1, (64, 64), seed=0).volume
    b = SyntheticEM("train", 1, (64, 64), seed=1).volume
    assert not np.array_equal(a.images, b.images)


def test_synthetic_train_and_test_differ_at_same_index():
    train = SyntheticEM("train", 2, (64, 64)).volume
    test = SyntheticEM("test", 2, (64, 64)).volume
    for i in range(2):
        assert not np.array_equal(train.images[i], test.images[i])
        assert not np.array_equal(train.masks[i], test.masks[i])


def test_synthetic_foreground_fraction_near_source_split():
    vol = SyntheticEM("train", 16, (128, 128)).volume
    fg = vol.masks.mean()
    assert 0.03 <= fg <= 0.08  # source 002: 0.947 background / 0.053 mitochondria
    freq = vol.class_frequencies(2)
    assert freq[1] == pytest.approx(fg)
    assert freq.sum() == pytest.approx(1.0)


def test_synthetic_types_values_and_any_size():
    vol = SyntheticEM("test", 2, (48, 80)).volume
    assert isinstance(vol, Volume)
    assert vol.images.shape == (2, 48, 80) and vol.masks.shape == (2, 48, 80)
    assert len(vol) == 2
    assert vol.images.dtype == np.uint8 and vol.masks.dtype == np.uint8
    assert set(np.unique(vol.masks).tolist()) <= {0, 1}
    assert vol.images.std() > 5  # not a constant image


def test_synthetic_bad_split():
    with pytest.raises(ValueError):
        SyntheticEM("val", 1, (32, 32))


def test_normalize_hand_values():
    x = normalize(np.array([0, 255, 127.5]))
    assert torch.allclose(x, torch.tensor([-2.5, 2.5, 0.0]))


# ---- EPFLMitochondria -----------------------------------------------------------------------------------------

def make_epfl(root: Path, n: int = 3, h: int = 32, w: int = 48, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, (img_name, mask_name) in {"train": ("training.tif", "training_groundtruth.tif"),
                                         "test": ("testing.tif", "testing_groundtruth.tif")}.items():
        images = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
        masks = np.where(rng.random((n, h, w)) < 0.2, 255, 0).astype(np.uint8)
        write_stack(root / img_name, list(images))
        write_stack(root / mask_name, list(masks))
        arrays[split] = (images, masks)
    return arrays


def test_epfl_round_trip(tmp_path):
    arrays = make_epfl(tmp_path)
    for split in ("train", "test"):
        vol = EPFLMitochondria(tmp_path, split).volume
        images, masks = arrays[split]
        assert vol.images.shape == (3, 32, 48) and vol.masks.shape == (3, 32, 48)
        assert vol.images.dtype == np.uint8 and vol.masks.dtype == np.uint8
        np.testing.assert_array_equal(vol.images, images)
        np.testing.assert_array_equal(vol.masks, (masks == 255).astype(np.uint8))
        assert set(np.unique(vol.masks).tolist()) == {0, 1}
        assert vol.name == f"EPFL-{split}"
    # train and test hold different data
    assert not np.array_equal(EPFLMitochondria(tmp_path, "train").volume.images,
                              EPFLMitochondria(tmp_path, "test").volume.images)


def test_epfl_missing_root(tmp_path):
    root = tmp_path / "no_such_folder"
    with pytest.raises(UserError, match="no_such_folder"):
        EPFLMitochondria(root, "train")


def test_epfl_missing_file(tmp_path):
    make_epfl(tmp_path)
    (tmp_path / "testing_groundtruth.tif").unlink()
    EPFLMitochondria(tmp_path, "train")  # the training split is complete
    with pytest.raises(UserError, match="testing_groundtruth.tif"):
        EPFLMitochondria(tmp_path, "test")


def test_epfl_corrupt_file(tmp_path):
    make_epfl(tmp_path)
    (tmp_path / "training.tif").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="training.tif"):
        EPFLMitochondria(tmp_path, "train")


def test_epfl_truncated_file(tmp_path):
    # a half-downloaded stack: a valid TIFF header, then nothing
    make_epfl(tmp_path)
    data = (tmp_path / "training.tif").read_bytes()
    (tmp_path / "training.tif").write_bytes(data[:len(data) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "Corrupt EXIF data" warning must not leak before the error line
        with pytest.raises(UserError, match="training.tif"):
            EPFLMitochondria(tmp_path, "train")


@pytest.mark.parametrize("values", [(0, 1, 255), (0, 128)])
def test_epfl_bad_label_values(tmp_path, values):
    make_epfl(tmp_path)
    rng = np.random.default_rng(2)
    masks = np.asarray(values, dtype=np.uint8)[rng.integers(0, len(values), (3, 32, 48))]
    masks[0, 0, :len(values)] = values  # every value is there
    write_stack(tmp_path / "training_groundtruth.tif", list(masks))
    with pytest.raises(UserError, match="training_groundtruth.tif") as e:
        EPFLMitochondria(tmp_path, "train")
    assert "label values" in str(e.value)
    assert str(values[-1]) in str(e.value)


def test_epfl_page_count_mismatch(tmp_path):
    make_epfl(tmp_path)
    write_stack(tmp_path / "training_groundtruth.tif", [np.zeros((32, 48), np.uint8)] * 2)
    with pytest.raises(UserError, match="training_groundtruth.tif") as e:
        EPFLMitochondria(tmp_path, "train")
    assert "(2, 32, 48)" in str(e.value) and "(3, 32, 48)" in str(e.value)


def test_epfl_page_size_mismatch(tmp_path):
    make_epfl(tmp_path)
    write_stack(tmp_path / "testing_groundtruth.tif", [np.zeros((32, 40), np.uint8)] * 3)
    with pytest.raises(UserError, match="testing_groundtruth.tif") as e:
        EPFLMitochondria(tmp_path, "test")
    assert "(3, 32, 40)" in str(e.value)


def test_epfl_pages_of_different_sizes_in_one_stack(tmp_path):
    make_epfl(tmp_path)
    write_stack(tmp_path / "training.tif", [np.zeros((32, 48), np.uint8), np.zeros((16, 48), np.uint8)])
    with pytest.raises(UserError, match="training.tif"):
        EPFLMitochondria(tmp_path, "train")


def test_epfl_16_bit_stack(tmp_path):
    make_epfl(tmp_path)
    pages = [np.full((32, 48), 1000 * (i + 1), np.uint16) for i in range(3)]
    assert Image.fromarray(pages[0]).mode == "I;16"
    write_stack(tmp_path / "training.tif", pages)
    with pytest.raises(UserError, match="training.tif") as e:
        EPFLMitochondria(tmp_path, "train")
    assert "8-bit" in str(e.value)


def test_epfl_bad_split(tmp_path):
    with pytest.raises(ValueError):
        EPFLMitochondria(tmp_path, "val")


# ---- random_crops / fixed_crops ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def volume() -> Volume:
    vol = SyntheticEM("train", 4, (64, 96), seed=3).volume
    assert vol.masks.mean(axis=(1, 2)).min() > 0  # foreground in every slice, so mask checks are not trivial
    return vol


def test_random_crops_shapes_and_types(volume):
    x, y = random_crops(volume, 5, 32, seed=0, step=0)
    assert x.shape == (5, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (5, 32, 32) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 1}
    assert x.min() >= -2.5 and x.max() <= 2.5


def test_random_crops_pure_function_of_seed_and_step(volume):
    a = random_crops(volume, 4, 32, seed=7, step=11)
    b = random_crops(volume, 4, 32, seed=7, step=11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = random_crops(volume, 4, 32, seed=7, step=12)
    d = random_crops(volume, 4, 32, seed=8, step=11)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], d[0])


DIHEDRAL = [lambda a, r=r, f=f: np.rot90(np.flip(a, -1) if f else a, r, axes=(-2, -1))
            for f in (False, True) for r in range(4)]


def find_window(images: np.ndarray, crop: np.ndarray) -> list[tuple[int, int, int]]:
    """All (slice, y, x) whose crop-sized window of ``images`` equals ``crop`` exactly."""
    c = crop.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(images, (c, c), axis=(1, 2))
    return [tuple(int(v) for v in hit) for hit in np.argwhere((windows == crop).all(axis=(-2, -1)))]


def test_random_crops_are_windows_of_the_volume_up_to_flips_and_rotations(volume):
    x, y = random_crops(volume, 6, 16, seed=1, step=2)
    imgs = normalize(volume.images).numpy()
    used = set()
    for b in range(6):
        matches = []
        for g_index, g in enumerate(DIHEDRAL):
            # g is its own inverse for flips; for rotations undo by rotating back
            for i, yy, xx in find_window(imgs, _undo(g_index, x[b, 0].numpy())):
                matches.append((g, i, yy, xx))
                used.add(g_index)
        assert matches, f"crop {b} is not a flipped/rotated window of the volume"
        g, i, yy, xx = matches[0]
        np.testing.assert_array_equal(g(volume.masks[i, yy:yy + 16, xx:xx + 16]), y[b].numpy())
    assert len(used) > 1  # augmentation happens


def _undo(g_index: int, crop: np.ndarray) -> np.ndarray:
    """The window w with DIHEDRAL[g_index](w) == crop."""
    f, r = divmod(g_index, 4)
    w = np.rot90(crop, -r, axes=(-2, -1))
    return np.ascontiguousarray(np.flip(w, -1) if f else w)


def test_random_crops_extra_follows_the_masks(volume):
    extra = torch.as_tensor(volume.masks).float()[:, None]  # (N, 1, H, W)
    for step in range(3):
        x, y, e = random_crops(volume, 8, 32, seed=0, step=step, extra=extra)
        assert e.shape == (8, 1, 32, 32) and e.dtype == torch.float32
        for b in range(8):
            assert torch.equal(e[b, 0], y[b].float()), (step, b)
    assert y.float().sum() > 0  # the check is not trivially on all-zero masks


def test_random_crops_extra_multi_channel(volume):
    # two channels: the mask and the image; each stays aligned with its own crop
    extra = torch.stack([torch.as_tensor(volume.masks).float(), normalize(volume.images)], 1)
    x, y, e = random_crops(volume, 4, 16, seed=3, step=9, extra=extra)
    assert e.shape == (4, 2, 16, 16)
    assert torch.equal(e[:, 0], y.float())
    assert torch.equal(e[:, 1], x[:, 0])


def test_random_crop_larger_than_slices(volume):
    with pytest.raises(UserError, match="crop 112"):
        random_crops(volume, 2, 112, seed=0, step=0)
    with pytest.raises(UserError, match="crop 65"):  # fits the width (96), not the height (64)
        random_crops(volume, 2, 65, seed=0, step=0)
    x, _ = random_crops(volume, 2, 64, seed=0, step=0)  # exactly the slice height is fine
    assert x.shape == (2, 1, 64, 64)


def test_fixed_crops_deterministic_and_in_range(volume):
    a_x, a_y = fixed_crops(volume, 6, 32)
    b_x, b_y = fixed_crops(volume, 6, 32)
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    assert a_x.shape == (6, 1, 32, 32) and a_y.shape == (6, 32, 32) and a_y.dtype == torch.int64
    assert a_x.min() >= -2.5 and a_x.max() <= 2.5
    assert set(a_y.unique().tolist()) <= {0, 1}
    c_x, _ = fixed_crops(volume, 6, 32, seed=1)
    assert not torch.equal(a_x, c_x)
    # every crop is an unaugmented window of the volume, with its own mask
    imgs = normalize(volume.images).numpy()
    for b in range(6):
        hits = find_window(imgs, a_x[b, 0].numpy())
        assert hits, b
        i, yy, xx = hits[0]
        assert torch.equal(torch.as_tensor(volume.masks[i, yy:yy + 32, xx:xx + 32]).long(), a_y[b])


def test_fixed_crops_shrink_to_a_multiple_of_16(volume):
    # slices are 64x96: a 100 crop becomes min(100, 64, 96) = 64; on 40x56 slices it becomes 32
    x, y = fixed_crops(volume, 3, 100)
    assert x.shape == (3, 1, 64, 64) and y.shape == (3, 64, 64)
    small = SyntheticEM("test", 2, (40, 56)).volume
    x, y = fixed_crops(small, 3, 64)
    assert x.shape == (3, 1, 32, 32) and y.shape == (3, 32, 32)
