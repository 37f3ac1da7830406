"""Data sets. Every loader returns a ``Volume``: a stack of grey slices and their class-id masks.

- ``SyntheticEM``: deterministic synthetic electron-microscopy slices, the default (no data on disk needed).
- ``EPFLMitochondria``: the real EPFL mitochondria EM data set (Lucchi et al.), the data of source 002.
- ``random_crops`` / ``fixed_crops``: training batches and the fixed test crops of the test-loss curves.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from common.errors import UserError
from common.filecheck import describe_folder

EPFL_URL = "https://www.epfl.ch/labs/cvlab/data/data-em/"
EPFL_FILES = {"train": ("training.tif", "training_groundtruth.tif"),
              "test": ("testing.tif", "testing_groundtruth.tif")}


@dataclass
class Volume:
    """``images``: (N, H, W) uint8 grey slices; ``masks``: (N, H, W) uint8 class ids (0 background, 1 mitochondria)."""

    images: np.ndarray
    masks: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.images)

    def class_frequencies(self, num_classes: int = 2) -> np.ndarray:
        return np.bincount(self.masks.ravel(), minlength=num_classes)[:num_classes] / self.masks.size


def normalize(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 grey levels -> float32 network input, roughly zero-mean unit-variance for EM slices (our choice)."""
    x = torch.as_tensor(images).float()
    return (x / 255.0 - 0.5) / 0.2


# --------------------------------------------------------------------------------------------------------------
# Synthetic electron microscopy
# --------------------------------------------------------------------------------------------------------------
class SyntheticEM:
    """Deterministic synthetic EM slices that mimic the EPFL mitochondria task (source 002, Fig. 2).

    Each slice: textured cytoplasm, a network of dark cell membranes, and three kinds of organelle. Only
    mitochondria are foreground: elongated blobs with a *double* membrane and striped inner texture (cristae).
    The distractors share one cue each with them -- vesicles (small single-membrane rings), dark bodies (dark
    blobs of the same size, no membrane, no stripes) and single-membrane elongated sacs (mitochondrion-shaped, one
    membrane, smooth inside) -- so telling them apart needs texture and context, which a 2-UNet lacks.
    Foreground is about 5% of the pixels, as the source's 0.947 / 0.053 class split. Blur and noise on top.

    Train and test slices come from disjoint random streams (``split`` is part of every slice's seed); any slice
    size works. ``SyntheticEM("train", 32, (128, 128)).volume`` is a ``Volume``.
    """

    SPLITS = {"train": 0, "test": 1}

    def __init__(self, split: str = "train", num_slices: int = 32, size: tuple[int, int] = (192, 192),
                 seed: int = 0, foreground_fraction: float = 0.053) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split, self.num_slices, self.size, self.seed = split, num_slices, tuple(size), seed
        self.foreground_fraction = foreground_fraction
        slices = [self.make_slice(i) for i in range(num_slices)]
        self.volume = Volume(images=np.stack([s[0] for s in slices]), masks=np.stack([s[1] for s in slices]),
                             name=f"SyntheticEM-{split}-{num_slices}x{size[0]}x{size[1]}-seed{seed}")

    def make_slice(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.SPLITS[self.split], self.seed, index])
        h, w = self.size
        img = 0.62 + 0.08 * _smooth_noise(rng, (h, w), sigma=6.0) + 0.03 * _smooth_noise(rng, (h, w), sigma=1.2)
        img -= 0.30 * _cell_membranes(rng, (h, w), cell_size=64.0)
        mask = np.zeros((h, w), dtype=bool)
        occupied = np.zeros((h, w), dtype=bool)
        target = self.foreground_fraction * rng.uniform(0.7, 1.3) * h * w
        half_mitochondrion = 0.5 * np.pi * 17.5 * 7.5   # half the mean area: stop as near the target as we can
        for _ in range(200):  # mitochondria until the foreground target is met; at least one per slice
            if mask.sum() >= target or (mask.any() and mask.sum() + half_mitochondrion >= target):
                break
            _place(rng, img, mask, occupied, kind="mitochondrion")
        area = h * w
        for kind, per_pixel in (("sac", 1.5e-4), ("dark_body", 1.2e-4), ("vesicle", 8e-4)):
            for _ in range(rng.poisson(per_pixel * area)):
                _place(rng, img, None, occupied, kind=kind)
        img = ndimage.gaussian_filter(img, 0.7)
        img = (img - img.mean()) * rng.uniform(0.8, 1.2) + img.mean() + rng.uniform(-0.05, 0.05)
        img += rng.normal(0.0, 0.04, size=img.shape)
        return np.clip(img * 255, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return noise / (noise.std() + 1e-8)


def _cell_membranes(rng: np.random.Generator, shape: tuple[int, int], cell_size: float) -> np.ndarray:
    """Soft lines on the boundaries of a Voronoi tessellation (where the two nearest cell centres are equidistant)."""
    h, w = shape
    n = max(2, int(h * w / cell_size**2))
    centres = rng.uniform([-8, -8], [h + 8, w + 8], size=(n, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    d, _ = cKDTree(centres).query(np.stack([yy.ravel(), xx.ravel()], 1), k=2)
    gap = (d[:, 1] - d[:, 0]).reshape(h, w)
    return np.exp(-(gap / 1.2) ** 2)


def _place(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray | None, occupied: np.ndarray,
           kind: str) -> None:
    """Draw one organelle at a free random position (up to 20 tries); mitochondria also go into ``mask``."""
    h, w = img.shape
    if kind == "mitochondrion" or kind == "sac":
        a, b = rng.uniform(11, 24), rng.uniform(6, 9)            # semi-axes, pixels
    elif kind == "dark_body":
        a = rng.uniform(6, 11)
        b = a * rng.uniform(0.6, 1.0)
    else:  # vesicle
        a = b = rng.uniform(2.5, 4.5)
    angle = rng.uniform(0, np.pi)
    r = int(np.ceil(a)) + 3
    for _ in range(20):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1, x0, x1 = max(0, int(cy) - r), min(h, int(cy) + r + 1), max(0, int(cx) - r), min(w, int(cx) + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)      # along the long axis
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)                       # 1 on the outline
        inside = rho <= 1.0
        if occupied[y0:y1, x0:x1][rho <= 1.25].any() or not inside.any():
            continue
        depth = (1.0 - rho) * b                                          # ~ distance inside the outline, pixels
        patch = img[y0:y1, x0:x1]
        ring = lambda d0: np.exp(-((depth - d0) / 0.55) ** 2)            # noqa: E731  a membrane at depth d0
        if kind == "mitochondrion":
            cristae = 0.5 + 0.5 * np.cos(2 * np.pi * u / rng.uniform(2.8, 3.8) + rng.uniform(0, 2 * np.pi))
            patch -= inside * (0.12 + 0.30 * cristae * (depth > 2.2))
            patch -= 0.40 * (ring(0.0) + ring(2.0))                       # the double membrane
            mask[y0:y1, x0:x1] |= inside
        elif kind == "sac":
            patch -= inside * 0.06 + 0.30 * ring(0.0)                     # single membrane, smooth lumen
        elif kind == "dark_body":
            patch -= inside * rng.uniform(0.18, 0.30) * np.clip(depth, 0, 1.5) / 1.5
        else:
            patch -= 0.30 * ring(0.0)
        occupied[y0:y1, x0:x1] |= rho <= 1.25
        return


# --------------------------------------------------------------------------------------------------------------
# The real data: EPFL mitochondria (Lucchi et al.), four multi-page TIFF stacks
# --------------------------------------------------------------------------------------------------------------
class EPFLMitochondria:
    """The EPFL EM mitochondria data set in its published form (source 002, Fig. 2; ``shared/notes/datasets.md``).

    ``root`` holds ``training.tif``, ``training_groundtruth.tif``, ``testing.tif``, ``testing_groundtruth.tif``:
    multi-page 8-bit grey TIFF stacks (165 slices of 768x1024 each in the published set), masks 0/255.
    Masks become class ids 0/1. Anything else is reported as a ``UserError`` naming the file.
    """

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in EPFL_FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"--data-root {root} is not a folder. Download the EPFL mitochondria stacks from "
                            f"{EPFL_URL} and pass the folder holding "
                            f"{', '.join(EPFL_FILES['train'] + EPFL_FILES['test'])}.")
        if not any((root / name).exists() for name in EPFL_FILES["train"] + EPFL_FILES["test"]):
            raise UserError(f"--data-root {root} holds none of the EPFL mitochondria stacks "
                            f"({', '.join(EPFL_FILES['train'] + EPFL_FILES['test'])})"
                            f"{describe_folder(root, 'EPFL mitochondria')}. Download them from {EPFL_URL}.")
        image_file, mask_file = (root / name for name in EPFL_FILES[split])
        images, masks = read_tiff_stack(image_file), read_tiff_stack(mask_file)
        if images.shape != masks.shape:
            raise UserError(f"{mask_file} has shape {masks.shape} (slices, height, width) but {image_file} has "
                            f"{images.shape}: each image slice needs a ground-truth slice of the same size.")
        values = np.unique(masks)
        if not set(values.tolist()) <= {0, 255}:
            raise UserError(f"{mask_file} holds label values {values[:10].tolist()}; the EPFL ground truth is "
                            f"0 (background) and 255 (mitochondria) only. Re-download it from {EPFL_URL}.")
        self.volume = Volume(images=images, masks=(masks == 255).astype(np.uint8), name=f"EPFL-{split}")


def read_tiff_stack(path: Path) -> np.ndarray:
    """All pages of a multi-page 8-bit grey TIFF as a (pages, height, width) uint8 array."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"missing {path}. The EPFL mitochondria data set ({EPFL_URL}) has four TIFF stacks: "
                        f"{', '.join(EPFL_FILES['train'] + EPFL_FILES['test'])}; put them in one folder and pass it "
                        f"as --data-root.")
    import warnings

    pages = []
    try:  # Pillow's warnings on a damaged file ("Corrupt EXIF data") would precede our one-line error
        with warnings.catch_warnings(), Image.open(path) as tif:
            warnings.simplefilter("ignore")
            for i in range(getattr(tif, "n_frames", 1)):
                tif.seek(i)
                pages.append(np.array(tif))
    except (UnidentifiedImageError, OSError, EOFError, SyntaxError, ValueError, TypeError,
            Image.DecompressionBombError) as e:  # a truncated stack raises TypeError('Missing dimensions')
        raise UserError(f"{path} is not a readable TIFF stack ({e}); re-download it from {EPFL_URL}.") from e
    shapes = {p.shape for p in pages}
    if len(shapes) != 1 or pages[0].ndim != 2 or pages[0].dtype != np.uint8:
        raise UserError(f"{path} must hold 8-bit grey pages of one size; found shapes {sorted(shapes)} of "
                        f"{pages[0].dtype}. Re-download it from {EPFL_URL}.")
    return np.stack(pages)


# --------------------------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------------------------
def random_crops(volume: Volume, batch_size: int, crop: int, seed: int, step: int,
                 extra: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Training batch number ``step``: random crops with random flips and 90-degree rotations.

    The batch is a pure function of (seed, step), so a resumed run sees exactly the batches an uninterrupted one
    would. ``extra`` (N, C, H, W), e.g. the teacher's cached logits, is cropped and flipped alongside.
    Returns (images (B, 1, crop, crop) float, masks (B, crop, crop) int64[, extra crops]).
    """
    n, h, w = volume.images.shape
    if crop > h or crop > w:
        raise UserError(f"crop {crop} is larger than the slices ({h}x{w}); choose --crop <= {min(h, w)}.")
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, n, batch_size)
    ys, xs = rng.integers(0, h - crop + 1, batch_size), rng.integers(0, w - crop + 1, batch_size)
    flips, rots = rng.integers(0, 2, (batch_size, 2)), rng.integers(0, 4, batch_size)

    def take(array: np.ndarray | torch.Tensor, b: int) -> torch.Tensor:
        t = torch.as_tensor(array[idx[b], ..., ys[b]:ys[b] + crop, xs[b]:xs[b] + crop])
        dims = [d for d, f in zip((-2, -1), flips[b]) if f]
        return torch.rot90(t.flip(dims) if dims else t, int(rots[b]), dims=(-2, -1))

    images = torch.stack([take(volume.images, b) for b in range(batch_size)])
    masks = torch.stack([take(volume.masks, b) for b in range(batch_size)])
    out = (normalize(images)[:, None], masks.long())
    if extra is not None:
        out += (torch.stack([take(extra, b) for b in range(batch_size)]).float(),)
    return out


def fixed_crops(volume: Volume, count: int, crop: int, seed: int = 12345) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` fixed crops (no augmentation): the n_t test samples of source 002's averaged test loss."""
    n, h, w = volume.images.shape
    crop = min(crop, h - h % 16, w - w % 16)
    rng = np.random.default_rng(seed)
    idx, ys, xs = rng.integers(0, n, count), rng.integers(0, h - crop + 1, count), rng.integers(0, w - crop + 1, count)
    images = np.stack([volume.images[i, y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)])
    masks = np.stack([volume.masks[i, y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)])
    return normalize(images)[:, None], torch.as_tensor(masks).long()
