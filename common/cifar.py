"""CIFAR-10 for experiment A (knowledge distillation from a ResNet-18 to a 5-layer CNN). The synthetic 10-class
stand-in for when no data is on disk is ``common.synthetic_objects.SyntheticObjects``.

- ``cifar10(root, train, verify_md5=True)``: the real CIFAR-10 in its published python form
  (``cifar-10-batches-py/``), md5-checked and unpickled without running any code a file may hold.
- ``augment_cifar``: the standard CIFAR training augmentation (4-pixel zero padding, random 32x32 crop, random
  horizontal flip), then ``normalize_cifar``.

Every item is ``(image uint8 (3, 32, 32), label int)`` with labels 0..9 in the order of ``CIFAR10_CLASSES``.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError, one_line
from common.filecheck import describe_folder

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = 10
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the per-channel statistics of the training set, as usually quoted
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_FOLDER = "cifar-10-batches-py"


# --------------------------------------------------------------------------------------------------------------
# Network input and augmentation
# --------------------------------------------------------------------------------------------------------------
def normalize_cifar(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) or (N, 3, H, W) in 0..255 -> float32 normalised with ``CIFAR10_MEAN`` / ``CIFAR10_STD``:
    the network input at evaluation (no augmentation)."""
    mean = torch.tensor(CIFAR10_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=image.device).view(3, 1, 1)
    return (image.float() / 255.0 - mean) / std


def augment_cifar(image: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Zero-pad by ``pad`` pixels, take a random crop of the original size, flip horizontally with probability
    1/2, then ``normalize_cifar``: the training augmentation of the usual CIFAR distillation code
    (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``Normalize``).

    Padding is with 0 before normalisation (black, as ``RandomCrop`` pads a PIL image). Every random draw comes
    from ``generator`` (always three), so a batch is a pure function of the seed and a resumed run sees the
    batches an uninterrupted one would. Input uint8 (3, H, W); returns float32 (3, H, W).
    """
    top_draw, left_draw, flip_draw = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    top, left = int(top_draw * (2 * pad + 1)), int(left_draw * (2 * pad + 1))
    crop = padded[..., top:top + h, left:left + w]
    if flip_draw < 0.5:
        crop = crop.flip(-1)
    return normalize_cifar(crop)


# --------------------------------------------------------------------------------------------------------------
# The real data: CIFAR-10's python version
# --------------------------------------------------------------------------------------------------------------
# The published files are Python 2 pickles, and unpickling can run any code a file names. They are therefore read
# only through _SafeUnpickler (numpy array reconstruction and nothing else), and, unless the user asks to read their
# own copy, only after their md5 sum matched the published one.
CIFAR10_TARBALL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_BATCHES: tuple[str, ...] = ("test_batch",)
META_FILE = "batches.meta"
# the md5 sums of the files inside cifar-10-python.tar.gz, as torchvision.datasets.CIFAR10 lists them (its
# train_list, test_list and meta; torchvision 0.29); a test compares them with torchvision's
PUBLISHED_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
_PIXELS = 3 * 32 * 32   # one image: 1024 R, 1024 G, 1024 B values, each plane row-major
_CHUNK = 1 << 20        # bytes read (and hashed) at a time


class CIFARArrays(torch.utils.data.Dataset):
    """Images and labels held in memory (CIFAR-10 is 180 MB): item i is (image uint8 (3, 32, 32), label int)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, description: str) -> None:
        self.images, self.labels, self.description = images, labels, description
        self.classes = CIFAR10_CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].clone(), int(self.labels[i])

    def __repr__(self) -> str:
        return f"CIFARArrays({len(self)} images: {self.description})"


def cifar10(root: str | Path, train: bool, verify_md5: bool = True) -> CIFARArrays:
    """CIFAR-10's 50,000 training (``train``) or 10,000 test images from the published python version: ``root``
    is the folder holding ``cifar-10-batches-py/`` (torchvision's convention) or ``cifar-10-batches-py/`` itself.

    The files are pickles, and a pickle can run code: a crafted ``data_batch_1`` would run it as soon as it was
    read. So each file is unpickled by ``_SafeUnpickler``, which rebuilds numpy arrays and nothing else (all that
    the published files hold), and with ``verify_md5`` (the default) only after its md5 sum matched the published
    one (``PUBLISHED_MD5``); ``verify_md5=False`` (the scripts' ``--no-cifar-md5``) reads a copy the user re-saved.

    A missing, altered, unreadable or malformed file is reported as a one-line ``UserError`` naming that file, what
    is wrong with it and what to do.
    """
    folder = _find_batches(Path(root))
    names = TRAIN_BATCHES if train else TEST_BATCHES
    for name in (*names, META_FILE):  # all present before the first (slow) read
        if not (folder / name).is_file():
            raise UserError(f"missing {folder / name}; {_refetch(folder)}.")
    _check_meta(_read_pickle(folder / META_FILE, verify_md5), folder / META_FILE)
    batches = [_parse_batch(_read_pickle(folder / name, verify_md5), folder / name) for name in names]
    images = torch.from_numpy(np.concatenate([data for data, _ in batches]).reshape(-1, 3, 32, 32))
    labels = torch.from_numpy(np.concatenate([labels for _, labels in batches]))
    split = "train" if train else "test"
    unchecked = "" if verify_md5 else " (own copy: md5 not checked)"
    return CIFARArrays(images, labels, f"CIFAR-10 {split} from {folder}{unchecked}")


def _find_batches(root: Path) -> Path:
    """``root/cifar-10-batches-py``, or ``root`` itself when it is that folder."""
    for folder in (root / CIFAR10_FOLDER, root):
        if folder.name == CIFAR10_FOLDER and folder.is_dir():
            return folder
    into = root.parent if root.name == CIFAR10_FOLDER else root
    raise UserError(f"--data-root {root}: no {CIFAR10_FOLDER} folder there"
                    f"{describe_folder(root, 'CIFAR-10 (python version)')}; download the python version from "
                    f"{CIFAR10_URL} and extract it into {into}.")


def _refetch(folder: Path) -> str:
    """The fix for a published file that is missing or damaged: fetch the archive again."""
    return (f"re-download {CIFAR10_TARBALL_URL} (the python version of {CIFAR10_URL}) and extract it into "
            f"{folder.parent}")


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that can build only what CIFAR-10's python-version files hold: dicts, lists, strings, bytes
    and numbers (no class needed) and numpy arrays. Every other class or function a file names (``os.system``,
    ``builtins.eval``, ...) is refused before it is imported, so a crafted file cannot run code."""

    # numpy's array reconstruction under the names numpy 1 (the published files) and numpy 2 write; the function
    # is taken from an array's own __reduce__, so nothing is imported by name (not the deprecated ``numpy.core``)
    _RECONSTRUCT = np.zeros(0).__reduce__()[0]
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy", "ndarray"): np.ndarray,
               ("numpy", "dtype"): np.dtype}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        raise pickle.UnpicklingError(f"it names {module}.{name}, refused without running it: a CIFAR-10 file "
                                     f"needs only numpy's array reconstruction")

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("it holds a persistent reference, which a CIFAR-10 file never does")


def _read_pickle(path: Path, verify_md5: bool) -> object:
    """The object pickled in ``path``, read once: hashed (and checked against ``PUBLISHED_MD5`` when
    ``verify_md5``) before anything is unpickled, then unpickled by ``_SafeUnpickler`` from those same bytes."""
    data, md5 = _read_bytes(path)
    if verify_md5 and md5 != PUBLISHED_MD5[path.name]:
        raise UserError(f"{path} is not the published CIFAR-10 file (md5 {md5}, published "
                        f"{PUBLISHED_MD5[path.name]}); {_refetch(path.parent)}, or pass --no-cifar-md5 to read "
                        f"your own copy (still unpickled safely: only numpy arrays are rebuilt).")
    try:
        # Python 2 str (keys, names) -> str as torchvision reads them; the pixel bytes pass through latin1 unchanged
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # anything raised here comes from the file's bytes: the unpickler runs nothing else
        reason = one_line(f"{type(e).__name__}: {e}", 300)  # one line, even for a file's own text
        # Python 3 writes arrays with _codecs.encode at protocol 2 and numpy's _frombuffer at protocol 5
        own = "" if verify_md5 else " (your own copy: save it with pickle protocol 3 or 4)"
        raise UserError(f"{path} is not a CIFAR-10 python-version file ({reason}); expected a pickled dict of numpy "
                        f"arrays, lists, strings and numbers; {_refetch(path.parent)}{own}.") from None


def _read_bytes(path: Path) -> tuple[bytes, str]:
    """The file's bytes and their md5 (hex), hashed chunk by chunk as they are read."""
    md5, chunks = hashlib.md5(usedforsecurity=False), []
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                md5.update(chunk)
                chunks.append(chunk)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check that it is a readable file.") from None
    return b"".join(chunks), md5.hexdigest()


def _entry(obj: object, path: Path, keys: tuple[str, ...]) -> dict:
    """``obj`` as a dict with str keys (a copy re-saved from ``encoding="bytes"`` has bytes keys), holding ``keys``."""
    if isinstance(obj, dict):
        obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
        missing = [k for k in keys if k not in obj]
        if not missing:
            return obj
        found = f"a dict without {', '.join(map(repr, missing))}"
    else:
        found = f"a {type(obj).__name__}"
    raise UserError(f"{path} holds {found}, not a CIFAR-10 python-version file (a dict with "
                    f"{', '.join(map(repr, keys))}); {_refetch(path.parent)}.")


def _check_meta(obj: object, path: Path) -> None:
    """``batches.meta`` must name CIFAR-10's ten classes in their order: the labels are read in that order."""
    names = _entry(obj, path, ("label_names",))["label_names"]
    if isinstance(names, (list, tuple)):  # bytes in a copy re-saved from encoding="bytes"
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    if not (isinstance(names, list) and all(type(n) is str for n in names) and names == list(CIFAR10_CLASSES)):
        shown = one_line(repr(names), 200)  # one line, however long or odd
        raise UserError(f"{path} names the classes {shown}, not CIFAR-10's ({', '.join(CIFAR10_CLASSES)}); "
                        f"{_refetch(path.parent)}.")


def _parse_batch(obj: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's pixel rows (N, 3072) uint8 and labels (N,) int64, each checked against what the published
    files hold; every problem is a UserError naming ``path``."""
    entry = _entry(obj, path, ("data", "labels"))
    again = f"{_refetch(path.parent)}."
    data = entry["data"]
    if not isinstance(data, np.ndarray):
        raise UserError(f"{path}: its 'data' is a {type(data).__name__}, not a numpy array; {again}")
    if data.dtype != np.uint8:
        raise UserError(f"{path}: its images are {data.dtype}, not uint8; {again}")
    if data.ndim != 2 or data.shape[1] != _PIXELS:
        raise UserError(f"{path}: its 'data' has shape {data.shape}, not (images, {_PIXELS}) (rows of 32x32 RGB "
                        f"pixels); {again}")
    labels = _labels(entry["labels"], path, again)
    if len(data) != len(labels):
        raise UserError(f"{path} holds {len(data)} images but {len(labels)} labels; {again}")
    return data, labels


def _labels(labels: object, path: Path, again: str) -> np.ndarray:
    """A batch's labels (a list of ints in the published files) as int64, all in 0..9."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)) or not all(type(v) is int for v in labels):
        raise UserError(f"{path}: its 'labels' are not a list of integers; {again}")
    bad = sorted({v for v in labels if not 0 <= v < NUM_CLASSES})
    if bad:
        raise UserError(f"{path} holds labels {bad[:10]} outside 0..{NUM_CLASSES - 1}; {again}")
    return np.array(labels, dtype=np.int64)


