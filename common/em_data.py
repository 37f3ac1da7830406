"""Electron-microscopy data (source 002). Every loader returns a ``Volume``: a stack of grey slices and their class-id
masks; the synthetic stand-in is ``common.synthetic_em.SyntheticEM``.

- ``EPFLMitochondria``: the real EPFL mitochondria EM data set (Lucchi et al.), the data of source 002.
- ``random_crops`` / ``fixed_crops``: training batches and the fixed test crops of the test-loss curves.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
        # each crop in float32 before stacking: CPU autocast cannot stack float16 (its 'promote' list refuses it)
        out += (torch.stack([take(extra, b).float() for b in range(batch_size)]),)
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
