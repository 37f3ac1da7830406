"""Tests for common/cifar.py: the CIFAR-10 loader (on tiny files written here in the published python layout),
the synthetic stand-in, and the augmentation."""
from __future__ import annotations

import io
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cifar import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, NUM_CLASSES, SyntheticObjects, augment_cifar,
                          cifar10, normalize_cifar)
from common.errors import UserError
from common.voc import SyntheticScenes

# ---- tiny files in the published format ------------------------------------------------------------------------
PER_BATCH = {"data_batch_1": 3, "data_batch_2": 2, "data_batch_3": 3, "data_batch_4": 1, "data_batch_5": 2,
             "test_batch": 4}
TRAIN_BATCHES = [f"data_batch_{k}" for k in range(1, 6)]


class Py2Str(bytes):
    """A Python 2 ``str``, as the published pickles hold them (keys, file names): read back as str under
    encoding="latin1" (torchvision) and as bytes under encoding="bytes" (the CIFAR page's recipe)."""


class Py2Pickler(pickle._Pickler):
    """Protocol 2 like Python 2's cPickle wrote the CIFAR files: ``Py2Str`` as (SHORT_)BINSTRING opcodes."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: Py2Str) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n))
                   + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str


def write_py2_pickle(path: Path, obj: dict) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def make_cifar(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: rows of 3072 uint8 values, channel
    -major (1024 R, 1024 G, 1024 B, each row-major), labels 0..9. Returns name: ((N, 3, 32, 32), labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for k, (name, n) in enumerate(PER_BATCH.items()):
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, NUM_CLASSES, n)]
        label = f"testing batch 1 of 1" if name == "test_batch" else f"training batch {k + 1} of 5"
        write_py2_pickle(folder / name, {Py2Str(b"batch_label"): Py2Str(label.encode()), Py2Str(b"labels"): labels,
                                         Py2Str(b"data"): rows,
                                         Py2Str(b"filenames"): [Py2Str(b"img_%d.png" % i) for i in range(n)]})
        batches[name] = (rows.reshape(n, 3, 32, 32), labels)
    write_py2_pickle(folder / "batches.meta", {Py2Str(b"label_names"): [Py2Str(c.encode()) for c in CIFAR10_CLASSES],
                                               Py2Str(b"num_cases_per_batch"): 10000, Py2Str(b"num_vis"): 3072})
    return batches


def rewrite_batch(folder: Path, name: str, **changes) -> None:
    with open(folder / name, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry.update(changes)
    write_py2_pickle(folder / name, {Py2Str(k.encode()): v for k, v in entry.items()})


# ---- the real-format loader ----------------------------------------------------------------------------------
def test_fixture_reads_like_the_published_files(tmp_path):
    make_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py/data_batch_1", "rb") as f:  # the recipe of the CIFAR web page
        entry = pickle.load(f, encoding="bytes")
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].shape == (3, 3072) and entry[b"data"].dtype == np.uint8
    with open(tmp_path / "cifar-10-batches-py/batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["label_names"] == list(CIFAR10_CLASSES)


def test_cifar10_train_and_test_round_trip(tmp_path):
    batches = make_cifar(tmp_path)
    for train, names in ((True, TRAIN_BATCHES), (False, ["test_batch"])):
        ds = cifar10(tmp_path, train)
        images = np.concatenate([batches[n][0] for n in names])
        labels = sum((batches[n][1] for n in names), [])
        assert len(ds) == len(labels) and ds.classes == CIFAR10_CLASSES
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and type(y) is int
            np.testing.assert_array_equal(x.numpy(), images[i])
            assert y == labels[i]


def test_cifar10_pixels_land_in_place(tmp_path):
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    rows = np.zeros((2, 3072), np.uint8)
    rows[1, 0] = 201                          # R at row 0, column 0: the first of the 1024 R values
    rows[1, 2048 + 31 * 32 + 31] = 17         # B at row 31, column 31: the last value
    rows[1, 1024 + 2 * 32 + 5] = 99           # G at row 2, column 5
    rewrite_batch(folder, "test_batch", data=rows, labels=[0, 9], filenames=[b"a.png", b"b.png"])
    x, y = cifar10(tmp_path, train=False)[1]
    assert (x[0, 0, 0], x[2, 31, 31], x[1, 2, 5], y) == (201, 17, 99, 9)
    assert int(x.sum()) == 201 + 17 + 99


@pytest.mark.parametrize("level", ["", "cifar-10-batches-py"])
def test_cifar10_root_at_two_levels(tmp_path, level):
    batches = make_cifar(tmp_path)
    x, y = cifar10(str(tmp_path / level), train=False)[3]
    np.testing.assert_array_equal(x.numpy(), batches["test_batch"][0][3])
    assert y == batches["test_batch"][1][3]


@pytest.mark.parametrize("where", ["empty", "absent", "absent/cifar-10-batches-py"])
def test_cifar10_missing_folder(tmp_path, where):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no cifar-10-batches-py folder there; download .*cifar\.html.* extract "
                                        r"it into .*(empty|absent)\.$"):
        cifar10(tmp_path / where, train=True)


@pytest.mark.parametrize("name", ["data_batch_3", "batches.meta"])
def test_cifar10_missing_file(tmp_path, name):
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / name).unlink()
    with pytest.raises(UserError, match=rf"missing .*cifar-10-batches-py/{name}; .*cifar\.html"):
        cifar10(tmp_path, train=True)
    if name == "data_batch_3":  # the test split needs no training batch
        assert len(cifar10(tmp_path, train=False)) == PER_BATCH["test_batch"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no data key", "wrong row length"])
def test_cifar10_corrupt_batch(tmp_path, damage):
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    path = folder / "data_batch_2"
    if damage == "garbage":
        path.write_bytes(b"this is not a pickle")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "no data key":
        write_py2_pickle(path, {Py2Str(b"labels"): [1, 2]})
    else:
        rewrite_batch(folder, "data_batch_2", data=np.zeros((2, 3000), np.uint8))
    with pytest.raises(UserError, match=r"data_batch_2.* in .*cifar-10-batches-py are not readable .*re-download"):
        cifar10(tmp_path, train=True)


def test_cifar10_label_out_of_range(tmp_path):
    make_cifar(tmp_path)
    rewrite_batch(tmp_path / "cifar-10-batches-py", "test_batch", labels=[0, 10, 3, -1])
    with pytest.raises(UserError, match=r"labels \[-1, 10\] outside 0\.\.9; re-extract"):
        cifar10(tmp_path, train=False)


def test_cifar10_label_count_mismatch(tmp_path):
    make_cifar(tmp_path)
    rewrite_batch(tmp_path / "cifar-10-batches-py", "test_batch", labels=[0, 1])
    with pytest.raises(UserError, match=r"4 images but 2 labels"):
        cifar10(tmp_path, train=False)


# ---- SyntheticObjects ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def objects() -> tuple[np.ndarray, np.ndarray]:
    ds = SyntheticObjects("train", 200, seed=0)
    start = time.perf_counter()
    items = [ds[i] for i in range(200)]
    print(f"\nSyntheticObjects: {1000 * (time.perf_counter() - start) / 200:.1f} ms per 32x32 image")
    return torch.stack([x for x, _ in items]).numpy(), np.array([y for _, y in items])


def test_synthetic_types_and_values(objects):
    images, labels = objects
    assert images.shape == (200, 3, 32, 32) and images.dtype == np.uint8
    assert images.reshape(200, -1).std(1).min() > 10  # no flat image
    ds = SyntheticObjects("test", 3)
    x, y = ds[2]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and type(y) is int and len(ds) == 3
    assert ds.classes == CIFAR10_CLASSES and repr(ds) == "SyntheticObjects('test', 3 images of 32x32, seed 0)"
    assert SyntheticObjects("train", 1, size=24)[0][0].shape == (3, 24, 24)


def test_synthetic_balanced_and_all_classes(objects):
    _, labels = objects
    assert np.array_equal(np.bincount(labels, minlength=NUM_CLASSES), [20] * NUM_CLASSES)
    counts = np.bincount([y for _, y in SyntheticObjects("test", 25)], minlength=NUM_CLASSES)
    assert counts.min() >= 2 and counts.max() <= 3


def test_synthetic_deterministic_and_independent_of_order():
    a, b = SyntheticObjects("train", 10, seed=3), SyntheticObjects("train", 10, seed=3)
    for i in range(7):
        a[i]
    x1, y1 = a[7]
    x2, y2 = b[7]  # the first item b makes
    assert torch.equal(x1, x2) and y1 == y2
    assert torch.equal(SyntheticObjects("train", 4096, seed=3)[7][0], x1)  # independent of num_images
    x3, _ = a[7]  # memoised copy
    x3[:] = 0
    assert torch.equal(a[7][0], x1)  # callers cannot change the cache


def test_synthetic_splits_and_seeds_differ():
    train, test = SyntheticObjects("train", 3), SyntheticObjects("test", 3)
    other_seed = SyntheticObjects("train", 3, seed=1)
    for i in range(3):
        assert not torch.equal(train[i][0], test[i][0]) and not torch.equal(train[i][0], other_seed[i][0])
    assert not torch.equal(train[0][0], torch.from_numpy(SyntheticScenes("train", 1, 32)[0][0].numpy()))


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError):
        SyntheticObjects("val")
    with pytest.raises(IndexError):
        SyntheticObjects("train", 3)[3]


def centre_colours(images: np.ndarray) -> np.ndarray:
    """Mean RGB of the central 8x8 pixels: mostly the main object."""
    return images[:, :, 12:20, 12:20].reshape(len(images), 3, -1).mean(-1)


def nearest_mean_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """How well the colour at the centre tells the class: a nearest class mean classifier on it."""
    (x, y), (xt, yt) = (centre_colours(train[0]), train[1]), (centre_colours(test[0]), test[1])
    means = np.stack([x[y == c].mean(0) for c in range(NUM_CLASSES)])
    predicted = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), 1)
    return float((predicted == yt).mean())


def render(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    ds = SyntheticObjects(split, n)
    return np.stack([ds[i][0].numpy() for i in range(n)]), np.array([ds[i][1] for i in range(n)])


def test_synthetic_colour_does_not_tell_the_class(objects, monkeypatch):
    test = render("test", 100)
    assert nearest_mean_accuracy(objects, test) < 0.3  # chance is 0.1
    spread = [centre_colours(objects[0][objects[1] == c]).std(0).mean() for c in range(NUM_CLASSES)]
    assert min(spread) > 25  # every class comes in many colours
    # the check has power: with the class hues (SyntheticScenes' own colours) colour gives the class away
    draw = SyntheticScenes._draw_object
    monkeypatch.setattr(SyntheticScenes, "_draw_object", lambda *a, hue=None, **k: draw(*a, **k))
    assert nearest_mean_accuracy(render("train", 100), render("test", 100)) > 0.45


def test_draw_object_keywords_default_to_the_old_draws():
    """SyntheticScenes must not change: the keywords left at None take the same random draws."""
    img_a, img_b = np.zeros((40, 40, 3), np.float32), np.zeros((40, 40, 3), np.float32)
    scenes = SyntheticScenes()
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    box_a, mask_a = scenes._draw_object(rng_a, img_a, 7, 0.3, True)
    box_b, mask_b = scenes._draw_object(rng_b, img_b, 7, 0.3, True, hue=None, centre=None, radius_range=None)
    assert box_a == box_b and np.array_equal(mask_a, mask_b) and np.array_equal(img_a, img_b)
    assert rng_a.random() == rng_b.random()


# ---- augment_cifar / normalize_cifar -------------------------------------------------------------------------
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_image(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen(seed))


def test_augment_shapes_and_types():
    x = augment_cifar(random_image(), gen(0))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_augment_is_a_function_of_the_generator():
    image = random_image()
    assert torch.equal(augment_cifar(image, gen(5)), augment_cifar(image, gen(5)))
    assert not torch.equal(augment_cifar(image, gen(5)), augment_cifar(image, gen(6)))
    g = gen(5)  # successive draws from one generator differ
    assert not torch.equal(augment_cifar(image, g), augment_cifar(image, g))
    g, h = gen(7), gen(7)  # always three draws, so the next image's draws do not depend on this one's
    augment_cifar(image, g)
    torch.rand(3, generator=h, dtype=torch.float64)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=h))


def test_augment_is_a_padded_crop_maybe_flipped():
    image = random_image(1)
    padded = normalize_cifar(torch.nn.functional.pad(image, (4, 4, 4, 4)))
    seen, flips = set(), 0
    for seed in range(60):
        x = augment_cifar(image, gen(seed))
        found = [(top, left, flip) for top in range(9) for left in range(9) for flip in (False, True)
                 if torch.equal(x, (lambda c: c.flip(-1) if flip else c)(padded[:, top:top + 32, left:left + 32]))]
        assert len(found) == 1
        seen.add(found[0][:2])
        flips += found[0][2]
    assert 15 <= flips <= 45 and len(seen) > 25  # both flips, many of the 81 offsets


def test_augment_pads_with_zero():
    image = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    zero, white = normalize_cifar(torch.zeros(3, 1, 1, dtype=torch.uint8)), normalize_cifar(image[:, :1, :1])
    for seed in range(10):
        x = augment_cifar(image, gen(seed))
        is_zero = torch.isclose(x, zero).all(0)
        assert (is_zero | torch.isclose(x, white).all(0)).all()
        rows, cols = is_zero.all(1), is_zero.all(0)  # the padding is whole rows and columns at the edges
        assert torch.equal(is_zero, rows[:, None] | cols[None, :])
        assert int(rows.sum()) <= 4 and int(cols.sum()) <= 4


def test_normalize_cifar_values():
    image = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    x = normalize_cifar(image)
    assert x.dtype == torch.float32 and x.shape == image.shape
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    assert torch.allclose(x * std + mean, image.float() / 255, atol=1e-6)
    assert torch.allclose(normalize_cifar(image[0]), x[0])
    assert CIFAR10_MEAN == (0.4914, 0.4822, 0.4465) and CIFAR10_STD == (0.2470, 0.2435, 0.2616)
