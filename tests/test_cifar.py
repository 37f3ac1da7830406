"""Tests for common/cifar.py: the CIFAR-10 loader (on tiny files written here in the published python layout),
the synthetic stand-in, and the augmentation."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common import cifar
from common.cifar import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, NUM_CLASSES, augment_cifar, cifar10,
                          normalize_cifar)
from common.synthetic_objects import SyntheticObjects
from common.errors import UserError
from common.synthetic_scenes import SyntheticScenes

# ---- tiny files in the published format ------------------------------------------------------------------------
PER_BATCH = {"data_batch_1": 3, "data_batch_2": 2, "data_batch_3": 3, "data_batch_4": 1, "data_batch_5": 2,
             "test_batch": 4}
TRAIN_BATCHES = [f"data_batch_{k}" for k in range(1, 6)]
NUMPY1_RECONSTRUCT = b"numpy.core.multiarray\n_reconstruct\n"  # how numpy 1 named it in the published files


class Py2Str(bytes):
    """A Python 2 ``str``, as the published pickles hold them (keys, file names, pixel bytes): read back as str
    under encoding="latin1" (torchvision, common.cifar) and as bytes under encoding="bytes" (the CIFAR page's
    recipe)."""


class Py2Pickler(pickle._Pickler):
    """Protocol 2 like Python 2's cPickle and numpy 1 wrote the CIFAR files: ``Py2Str`` as (SHORT_)BINSTRING
    opcodes, arrays as ``numpy.core.multiarray._reconstruct`` + BUILD with the pixels as one BINSTRING (no
    ``_codecs.encode``, which Python 3 writes for bytes at protocol 2 and the published files never hold)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: Py2Str) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n))
                   + bytes(obj))
        self.memoize(obj)

    def save_ndarray(self, obj: np.ndarray) -> None:
        """_reconstruct(ndarray, (0,), 'b'), then BUILD with (1, shape, dtype, fortran=False, raw bytes)."""
        self.write(pickle.GLOBAL + NUMPY1_RECONSTRUCT)
        self.save((np.ndarray, (0,), Py2Str(b"b")))
        self.write(pickle.REDUCE)
        self.memoize(obj)
        self.write(pickle.MARK)
        self.save(1)
        self.save(obj.shape)
        order, code = obj.dtype.str[:1], obj.dtype.str[1:]   # numpy 1's dtype('u1', 0, 1) + (3, '|', ...)
        self.save_reduce(np.dtype, (Py2Str(code.encode()), 0, 1),
                         (3, Py2Str(order.encode()), None, None, None, -1, -1, 0))
        self.save(False)
        self.save(Py2Str(np.ascontiguousarray(obj).tobytes()))
        self.write(pickle.TUPLE + pickle.BUILD)

    dispatch[Py2Str] = save_py2_str
    dispatch[np.ndarray] = save_ndarray


def write_py2_pickle(path: Path, obj: object) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def make_cifar(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: rows of 3072 uint8 values, channel
    -major (1024 R, 1024 G, 1024 B, each row-major), labels 0..9. Returns name: ((N, 3, 32, 32), labels).
    The files are not the published ones (their md5 sums differ): read them with verify_md5=False."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for k, (name, n) in enumerate(PER_BATCH.items()):
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, NUM_CLASSES, n)]
        label = "testing batch 1 of 1" if name == "test_batch" else f"training batch {k + 1} of 5"
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


def own_copy(root: Path, train: bool = True):
    """cifar10 on files that are not the published ones."""
    return cifar10(root, train, verify_md5=False)


def one_line_naming(error: pytest.ExceptionInfo, path: Path) -> str:
    """The error's message, checked to be one line that names ``path`` and no other CIFAR file."""
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    others = [n for n in [*PER_BATCH, "batches.meta"] if n != path.name]
    assert not [n for n in others if n in message], message
    return message


# ---- the real-format loader ----------------------------------------------------------------------------------
def test_fixture_reads_like_the_published_files(tmp_path):
    make_cifar(tmp_path)
    raw = (tmp_path / "cifar-10-batches-py/data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}") and NUMPY1_RECONSTRUCT in raw and b"_codecs" not in raw
    with open(tmp_path / "cifar-10-batches-py/data_batch_1", "rb") as f:  # the recipe of the CIFAR web page
        entry = pickle.load(f, encoding="bytes")
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].shape == (3, 3072) and entry[b"data"].dtype == np.uint8
    with open(tmp_path / "cifar-10-batches-py/batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["label_names"] == list(CIFAR10_CLASSES)


def test_cifar10_train_and_test_round_trip(tmp_path):
    batches = make_cifar(tmp_path)
    for train, names in ((True, TRAIN_BATCHES), (False, ["test_batch"])):
        ds = own_copy(tmp_path, train)
        images = np.concatenate([batches[n][0] for n in names])
        labels = sum((batches[n][1] for n in names), [])
        assert len(ds) == len(labels) and ds.classes == CIFAR10_CLASSES
        assert "md5 not checked" in ds.description
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
    rewrite_batch(folder, "test_batch", data=rows, labels=[0, 9], filenames=[Py2Str(b"a.png"), Py2Str(b"b.png")])
    x, y = own_copy(tmp_path, train=False)[1]
    assert (x[0, 0, 0], x[2, 31, 31], x[1, 2, 5], y) == (201, 17, 99, 9)
    assert int(x.sum()) == 201 + 17 + 99


def test_cifar10_reads_a_python3_resave(tmp_path):
    """A copy re-saved by Python 3 (protocol 4: numpy 2's numpy._core names, bytes as BINBYTES, str keys) loads
    with --no-cifar-md5; so does one whose keys are bytes (loaded with encoding="bytes" and saved again)."""
    batches = make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    rows, labels = batches["test_batch"][0].reshape(4, 3072), batches["test_batch"][1]
    (folder / "test_batch").write_bytes(pickle.dumps({"data": rows, "labels": labels}, protocol=4))
    assert b"numpy._core.multiarray" in (folder / "test_batch").read_bytes()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]},
                                                       protocol=4))
    ds = own_copy(tmp_path, train=False)
    np.testing.assert_array_equal(ds.images.numpy(), batches["test_batch"][0])
    assert ds.labels.tolist() == labels


@pytest.mark.parametrize("level", ["", "cifar-10-batches-py"])
def test_cifar10_root_at_two_levels(tmp_path, level):
    batches = make_cifar(tmp_path)
    x, y = cifar10(str(tmp_path / level), train=False, verify_md5=False)[3]
    np.testing.assert_array_equal(x.numpy(), batches["test_batch"][0][3])
    assert y == batches["test_batch"][1][3]


@pytest.mark.parametrize("where", ["empty", "absent", "absent/cifar-10-batches-py"])
def test_cifar10_missing_folder(tmp_path, where):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"--data-root .*: no cifar-10-batches-py folder there; download "
                                        r".*cifar\.html.* extract it into .*(empty|absent)\.$"):
        cifar10(tmp_path / where, train=True)


@pytest.mark.parametrize("name", ["data_batch_3", "batches.meta"])
def test_cifar10_missing_file(tmp_path, name):
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / name).unlink()
    with pytest.raises(UserError, match=rf"^missing .*cifar-10-batches-py/{name}; re-download "
                                        rf"\S*cifar-10-python\.tar\.gz .* extract it into {tmp_path}\.$") as error:
        own_copy(tmp_path, train=True)
    one_line_naming(error, tmp_path / "cifar-10-batches-py" / name)
    if name == "data_batch_3":  # the test split needs no training batch
        assert len(own_copy(tmp_path, train=False)) == PER_BATCH["test_batch"]


def test_cifar10_unreadable_file(tmp_path):
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    path.unlink()
    path.mkdir()  # not a file: reported as missing
    with pytest.raises(UserError, match=r"^missing .*data_batch_4;") as error:
        own_copy(tmp_path)
    one_line_naming(error, path)


@pytest.mark.parametrize("damage, words", [
    ("garbage", "is not a CIFAR-10 python-version file (UnpicklingError"),
    ("truncated", "is not a CIFAR-10 python-version file ("),
    ("empty", "is not a CIFAR-10 python-version file (EOFError"),
    ("a list", "holds a list, not a CIFAR-10 python-version file (a dict with 'data', 'labels')"),
    ("no data key", "holds a dict without 'data', not a CIFAR-10 python-version file"),
    ("wrong row length", "its 'data' has shape (2, 3000), not (images, 3072)"),
    ("data not an array", "its 'data' is a list, not a numpy array"),
    ("wrong dtype", "its images are int64, not uint8"),
    ("float labels", "its 'labels' are not a list of integers"),
    ("label count", "holds 2 images but 3 labels"),
    ("labels out of range", "holds labels [-1, 10] outside 0..9"),
])
def test_cifar10_bad_batch_names_that_file_only(tmp_path, damage, words):
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    path = folder / "data_batch_2"
    if damage == "garbage":
        path.write_bytes(b"this is not a pickle")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "a list":
        write_py2_pickle(path, [1, 2])
    elif damage == "no data key":
        write_py2_pickle(path, {Py2Str(b"labels"): [1, 2]})
    else:
        changes = {"wrong row length": dict(data=np.zeros((2, 3000), np.uint8)),
                   "data not an array": dict(data=[[0] * 3072, [0] * 3072]),
                   "wrong dtype": dict(data=np.zeros((2, 3072), np.int64)),
                   "float labels": dict(labels=[1.0, 2.0]),
                   "label count": dict(labels=[1, 2, 3]),
                   "labels out of range": dict(labels=[10, -1])}[damage]
        rewrite_batch(folder, "data_batch_2", **changes)
    with pytest.raises(UserError) as error:
        own_copy(tmp_path, train=True)
    message = one_line_naming(error, path)
    assert words in message and "re-download" in message and "Traceback" not in message
    assert len(own_copy(tmp_path, train=False)) == PER_BATCH["test_batch"]  # the other files are fine


@pytest.mark.parametrize("label_names", [list(CIFAR10_CLASSES[::-1]), ["airplane"], "airplane", None])
def test_cifar10_bad_meta_names_it(tmp_path, label_names):
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "batches.meta"
    write_py2_pickle(path, {Py2Str(b"label_names"): label_names})
    with pytest.raises(UserError, match=r"names the classes .*, not CIFAR-10's \(airplane, .*truck\); re-download"
                       ) as error:
        own_copy(tmp_path, train=False)
    one_line_naming(error, path)


# ---- md5 sums ------------------------------------------------------------------------------------------------
def test_published_md5_sums_are_torchvisions():
    from torchvision.datasets import CIFAR10
    listed = {name: md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list}
    listed[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    assert cifar.PUBLISHED_MD5 == listed


@pytest.mark.parametrize("train, name", [(True, "data_batch_5"), (False, "test_batch"), (True, "batches.meta")])
def test_md5_mismatch_names_the_file_and_the_flag(tmp_path, monkeypatch, train, name):
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    monkeypatch.setattr(cifar, "PUBLISHED_MD5", fixture_md5s(folder))  # every file matches ...
    (folder / name).write_bytes((folder / name).read_bytes() + b"\0")   # ... but this one
    with pytest.raises(UserError, match=rf"{name} is not the published CIFAR-10 file \(md5 [0-9a-f]{{32}}, "
                                        rf"published [0-9a-f]{{32}}\); re-download \S*cifar-10-python\.tar\.gz .*, "
                                        rf"or pass --no-cifar-md5 to read your own copy") as error:
        cifar10(tmp_path, train)
    one_line_naming(error, folder / name)


def test_md5_match_loads(tmp_path, monkeypatch):
    batches = make_cifar(tmp_path)
    monkeypatch.setattr(cifar, "PUBLISHED_MD5", fixture_md5s(tmp_path / "cifar-10-batches-py"))
    ds = cifar10(tmp_path, train=False)  # verify_md5 defaults to True
    np.testing.assert_array_equal(ds.images.numpy(), batches["test_batch"][0])
    assert ds.labels.tolist() == batches["test_batch"][1] and "md5 not checked" not in ds.description
    assert len(cifar10(tmp_path, train=True)) == sum(PER_BATCH[n] for n in TRAIN_BATCHES)


def test_md5_is_hashed_in_chunks(tmp_path, monkeypatch):
    """A file larger than one read chunk hashes to hashlib's md5 of the whole file."""
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    monkeypatch.setattr(cifar, "_CHUNK", 100)
    data, md5 = cifar._read_bytes(path)
    assert data == path.read_bytes() and md5 == hashlib.md5(data).hexdigest() and len(data) > 500


def fixture_md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


# ---- crafted pickles run nothing -----------------------------------------------------------------------------
class MakesMarker:
    """Unpickled by a plain pickle.load, this opens (so creates) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class RunsShell:
    """Unpickled by a plain pickle.load, this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def plant_payload(folder: Path, name: str, marker: Path, payload: type = MakesMarker) -> None:
    """Replace ``name`` with a crafted file in the published layout whose pickle would create ``marker``."""
    key = "label_names" if name == "batches.meta" else "data"
    write_py2_pickle(folder / name, {Py2Str(key.encode()): payload(marker), Py2Str(b"labels"): [0]})


def test_payload_works_under_plain_pickle(tmp_path):
    """The crafted files below are real attacks: a plain pickle.load of one creates the marker."""
    for payload in (MakesMarker, RunsShell):
        marker = tmp_path / f"{payload.__name__}.marker"
        write_py2_pickle(tmp_path / "evil", {Py2Str(b"data"): payload(marker)})
        with open(tmp_path / "evil", "rb") as f:
            result = pickle.load(f, encoding="latin1")
        if payload is MakesMarker:
            result["data"].close()
        assert marker.exists()


@pytest.mark.parametrize("payload", [MakesMarker, RunsShell])
@pytest.mark.parametrize("name", ["data_batch_1", "batches.meta", "test_batch"])
@pytest.mark.parametrize("verify_md5", [False, True])
def test_crafted_pickle_runs_nothing(tmp_path, monkeypatch, name, verify_md5, payload):
    """One file of a genuine copy is replaced by a crafted one: with verify_md5 the md5 check stops it, without it
    the restricted unpickler; either way nothing runs and the error names that file."""
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    monkeypatch.setattr(cifar, "PUBLISHED_MD5", fixture_md5s(folder))  # the fixture plays the published files
    marker = tmp_path / "marker"
    plant_payload(folder, name, marker, payload)
    with pytest.raises(UserError) as error:
        cifar10(tmp_path, train=name != "test_batch", verify_md5=verify_md5)
    message = one_line_naming(error, folder / name)
    assert not marker.exists()
    if verify_md5:  # the md5 check stops it before any unpickling
        assert "is not the published CIFAR-10 file" in message and "--no-cifar-md5" in message
    else:           # the restricted unpickler refuses the callable before importing it
        callable_name = "io.open" if payload is MakesMarker else "posix.system"
        assert f"it names {callable_name}, refused without running it" in message
        assert "expected a pickled dict of numpy arrays" in message and "--no-cifar-md5" not in message


@pytest.mark.parametrize("module, name", [
    ("builtins", "eval"), ("numpy", "load"), ("numpy.core.multiarray", "scalar"), ("_codecs", "encode"),
    ("numpy._core.numeric", "_frombuffer"), ("no_such_module", "anything")])
def test_only_numpy_array_reconstruction_is_admitted(tmp_path, module, name):
    """A GLOBAL of anything but _reconstruct, ndarray and dtype is refused, whether or not it could run code, and
    before its module is imported (no ModuleNotFoundError for a module that does not exist)."""
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b".")
    with pytest.raises(UserError, match=rf"it names {module}\.{name}, refused without running it.* protocol 3 or 4"):
        own_copy(tmp_path, train=False)


def test_crafted_pickle_end_to_end(tmp_path, capsys):
    """``reproduce_fcn_kd.py --experiment A --data-root DIR --no-cifar-md5`` on a crafted data_batch_1: exit
    status 2 with one error line naming the file, nothing run, no run folder."""
    import reproduce_fcn_kd
    from common.runs import run_main
    root, marker = tmp_path / "data", tmp_path / "marker"
    make_cifar(root)
    plant_payload(root / "cifar-10-batches-py", "data_batch_1", marker)
    argv = ["--experiment", "A", "--data-root", str(root), "--no-cifar-md5", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: reproduce_fcn_kd.main(argv))
    assert exit_.value.code == 2
    assert not marker.exists() and not (tmp_path / "run").exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert str(root / "cifar-10-batches-py" / "data_batch_1") in err and "it names io.open" in err


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
