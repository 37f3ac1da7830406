"""CIFAR-10 for experiment A (knowledge distillation from a ResNet-18 to a 5-layer CNN), and a synthetic
10-class stand-in for when no data is on disk.

- ``cifar10(root, train)``: the real CIFAR-10 in its published python form (``cifar-10-batches-py/``).
- ``SyntheticObjects``: deterministic 32x32 images of one main object of 10 classes on a cluttered background,
  built with the synthetic VOC scene machinery of ``common.voc``.
- ``augment_cifar``: the standard CIFAR training augmentation (4-pixel zero padding, random 32x32 crop, random
  horizontal flip), then ``normalize_cifar``.

Every item is ``(image uint8 (3, 32, 32), label int)`` with labels 0..9 in the order of ``CIFAR10_CLASSES``.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision
from scipy import ndimage
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from common.errors import UserError
from common.voc import SyntheticScenes, _smooth_noise

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


class _CIFAR10Files(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 reader with its md5 checks replaced by checks that the files exist.

    The md5 sums reject any copy of the data that was re-saved (another pickle protocol, a subset) and every
    small file in the published layout, which would leave our loader untestable; torchvision's own parsing of
    the pickles is kept, and a missing file is still an error.
    """

    def _check_integrity(self) -> bool:
        names = [name for name, _ in (self.train_list if self.train else self.test_list)]
        return all((Path(self.root) / self.base_folder / name).is_file() for name in names)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


# what a damaged or foreign pickle raises inside torchvision's parsing, the reshape to 3x32x32 included
_PICKLE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, EOFError, OSError, KeyError, IndexError, ValueError, TypeError, AttributeError,
    ImportError, UnicodeDecodeError, RuntimeError)


def cifar10(root: str | Path, train: bool) -> CIFARArrays:
    """CIFAR-10's 50,000 training (``train``) or 10,000 test images, read with ``torchvision.datasets.CIFAR10``
    from the published python version: ``root`` is the folder holding ``cifar-10-batches-py/`` (torchvision's
    convention) or ``cifar-10-batches-py/`` itself.

    Missing or unreadable files and labels outside 0..9 are reported at once, as a ``UserError`` naming the
    file or folder and what to do.
    """
    folder = _find_batches(Path(root))
    names = [name for name, _ in (_CIFAR10Files.train_list if train else _CIFAR10Files.test_list)]
    for name in names + [_CIFAR10Files.meta["filename"]]:
        if not (folder / name).is_file():
            raise UserError(f"missing {folder / name}; {folder} must hold data_batch_1..5, test_batch and "
                            f"batches.meta. Re-extract the python version of CIFAR-10 from {CIFAR10_URL}.")
    try:
        data = _CIFAR10Files(folder.parent, train=train, download=False)
        images = torch.from_numpy(np.ascontiguousarray(data.data)).permute(0, 3, 1, 2)
        labels = torch.as_tensor(data.targets, dtype=torch.int64)
    except _PICKLE_ERRORS as e:
        raise UserError(f"the CIFAR-10 files {', '.join(names)}, batches.meta in {folder} are not readable "
                        f"python-version batches ({type(e).__name__}: {e}); re-download cifar-10-python.tar.gz from "
                        f"{CIFAR10_URL} and extract it again.") from e
    _check_arrays(images, labels, folder, names)
    split = "train" if train else "test"
    return CIFARArrays(images.contiguous(), labels, f"CIFAR-10 {split} from {folder}")


def _find_batches(root: Path) -> Path:
    """``root/cifar-10-batches-py``, or ``root`` itself when it is that folder."""
    for folder in (root / CIFAR10_FOLDER, root):
        if folder.name == CIFAR10_FOLDER and folder.is_dir():
            return folder
    into = root.parent if root.name == CIFAR10_FOLDER else root
    raise UserError(f"--data-root {root}: no {CIFAR10_FOLDER} folder there; download the python version from "
                    f"{CIFAR10_URL} and extract it into {into}.")


def _check_arrays(images: torch.Tensor, labels: torch.Tensor, folder: Path, names: list[str]) -> None:
    """UserErrors for what torchvision's parsing lets through: wrong pixel type, counts that differ, bad labels."""
    again = f"re-extract the python version of CIFAR-10 from {CIFAR10_URL}."
    if images.dtype != torch.uint8:
        raise UserError(f"the images in {folder} ({', '.join(names)}) are {images.dtype}, not uint8; {again}")
    if len(images) != len(labels):
        raise UserError(f"{folder} ({', '.join(names)}) holds {len(images)} images but {len(labels)} labels; "
                        f"{again}")
    bad = labels.unique()
    bad = bad[(bad < 0) | (bad >= NUM_CLASSES)]
    if len(bad):
        raise UserError(f"{folder} ({', '.join(names)}) holds labels {bad[:10].tolist()} outside "
                        f"0..{NUM_CLASSES - 1}; {again}")


# --------------------------------------------------------------------------------------------------------------
# Synthetic objects: a stand-in for CIFAR-10
# --------------------------------------------------------------------------------------------------------------
# the synthetic VOC class (common.voc.STYLES) that plays each CIFAR-10 class: its shape and texture
VOC_STYLE_OF = (1, 7, 3, 8, 10, 12, 17, 13, 4, 6)  # aeroplane, car, bird, cat, cow, dog, sheep, horse, boat, bus


class SyntheticObjects(torch.utils.data.Dataset):
    """Deterministic synthetic images standing in for CIFAR-10: one main object of 10 classes per image, big and
    near the middle, on a cluttered background.

    Class k is drawn as the synthetic VOC class ``VOC_STYLE_OF[k]`` of ``common.voc.SyntheticScenes`` (its shape
    family and texture), on SyntheticScenes' cluttered backgrounds. Unlike there, the main object's hue is random,
    so colour says nothing about the class (CIFAR's classes are not colour-coded) and a network must recognise
    shape and texture. 0-2 smaller distractor objects of other classes are painted first, partly hidden by the
    main object, so the network must also find the subject. Images are rendered at twice ``size`` and
    downsampled with antialiasing, as CIFAR's photos were downsampled.

    Image i has label i % 10 (balanced classes for any ``num_images``) and is a function of (split, seed, i)
    only, whichever other images were asked for; "train" and "test" come from different random streams. Items
    are memoised. Returns (image uint8 (3, size, size), label int).
    """

    SPLITS = {"train": 2, "test": 3}  # not SyntheticScenes' 0 and 1: other streams than its scenes

    def __init__(self, split: str = "train", num_images: int = 2048, size: int = 32, seed: int = 0) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split, self.num_images, self.size, self.seed = split, num_images, size, seed
        self.classes = CIFAR10_CLASSES
        self._scenes = SyntheticScenes()  # for its background and object painters
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.num_images:
            raise IndexError(f"image {i} of a {self.num_images}-image SyntheticObjects")
        if i not in self._cache:
            self._cache[i] = self.make_image(i)
        return torch.from_numpy(self._cache[i]).permute(2, 0, 1).contiguous(), self.label(i)

    def __repr__(self) -> str:
        return (f"SyntheticObjects({self.split!r}, {self.num_images} images of {self.size}x{self.size}, "
                f"seed {self.seed})")

    @staticmethod
    def label(index: int) -> int:
        return index % NUM_CLASSES

    def make_image(self, index: int) -> np.ndarray:
        """Image ``index``: (size, size, 3) uint8, a function of (split, seed, index) only."""
        rng = np.random.default_rng([self.SPLITS[self.split], self.seed, index])
        cls = self.label(index)
        side = 2 * self.size
        # texture periods and noise scales as SyntheticScenes sets them for this render size: the finest
        # textures only half survive the downsampling (as in CIFAR's photos), the coarser ones stay
        unit = side / 128.0
        img = self._scenes._background(rng, side, side, unit)
        others = [k for k in range(NUM_CLASSES) if k != cls]
        for k in rng.choice(others, size=int(rng.integers(0, 3)), replace=False):
            self._scenes._draw_object(rng, img, VOC_STYLE_OF[k], unit, big=False, hue=rng.uniform(0, 360),
                                      radius_range=(0.1, 0.22))
        centre = (rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6))
        self._scenes._draw_object(rng, img, VOC_STYLE_OF[cls], unit, big=True, hue=rng.uniform(0, 360),
                                  centre=centre, radius_range=(0.3, 0.45))
        img *= 1.0 + 0.12 * _smooth_noise(rng, (side, side), 24 * unit)[..., None].clip(-3, 3)  # uneven lighting
        img = ndimage.gaussian_filter(img, (0.5 * unit, 0.5 * unit, 0))                         # camera blur
        img += 0.03 * rng.standard_normal(img.shape, dtype=np.float32)                             # sensor noise
        small = TF.resize(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), [self.size, self.size],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)
        return (small.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
