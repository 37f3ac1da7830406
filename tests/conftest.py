"""What several test files share: tiny data sets written in their published on-disk layouts.

Fixtures (request them by name):
  * ``write_tiny_voc(root, bad_label=None) -> root``: VOCdevkit/VOC2012 with 4 train and 2 val images of 72x96
    (test_bad_input.py, test_reproduce_deeplab_caspp.py);
  * ``write_epfl(root, mask_values) -> root``: EPFL's four 2-page TIFF stacks of 32x32 (test_cli.py,
    test_bad_input.py);
  * ``apollo_writer``: ApolloScape lane-marking frames of 8x12 pixels, ``.ids(seed)`` and ``.write(...)``
    (test_roads.py, test_reproduce_intra_kd.py).

``write_palette_png`` is a plain function: test_voc.py's module-level writers use it too.

The test tiers: plain ``pytest`` runs the smoke tier; tests marked ``@pytest.mark.slow`` (resume, kills, torchrun,
int8 conversion, big models on the CPU, subprocesses) run with ``pytest -m slow`` (see pytest.ini).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from common.voc import VOC_PALETTE


# ------------------------------------------------------------------------------------------ PASCAL VOC 2012
def write_palette_png(path: Path, mask: np.ndarray) -> None:
    """A VOC-style mask: mode "P", pixel values = class ids, the VOC colour map as palette."""
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, np.uint8).tobytes())
    img.putpalette(VOC_PALETTE.ravel().tolist())
    img.save(path)


def _write_tiny_voc(root: Path, bad_label: int | None = None) -> Path:
    """VOCdevkit/VOC2012 with 4 train (also the trainaug list, PNG form) and 2 val images of 72x96; ``bad_label``
    goes into pixel (0, 0) of every val mask."""
    rng = np.random.default_rng(0)
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    names = {"train": [f"2007_00000{i}" for i in range(4)], "val": ["2008_000001", "2008_000002"]}
    for split, split_names in names.items():
        for name in split_names:
            Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
            mask = np.zeros((72, 96), np.uint8)
            mask[20:50, 30:70] = rng.integers(1, 21)
            mask[19, 30:70] = 255
            if bad_label is not None and split == "val":
                mask[0, 0] = bad_label
            write_palette_png(voc / "SegmentationClass" / f"{name}.png", mask)
            Image.fromarray(mask).save(voc / "SegmentationClassAug" / f"{name}.png")
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(split_names) + "\n")
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(names["train"]) + "\n")
    return root


@pytest.fixture
def write_tiny_voc() -> Callable[..., Path]:
    """``write_tiny_voc(root, bad_label=None)``: a tiny VOC 2012 (see ``_write_tiny_voc``) under ``root``."""
    return _write_tiny_voc


# ------------------------------------------------------------------------------------------ EPFL mitochondria
def write_stack(path: Path, pages: np.ndarray) -> None:
    """A multi-page 8-bit TIFF, one page per first index of ``pages``."""
    first, *rest = [Image.fromarray(p) for p in pages]
    first.save(path, save_all=True, append_images=rest)


def _write_epfl(root: Path, mask_values: tuple[int, ...]) -> Path:
    """EPFL's training/testing image and ground-truth stacks, 2 pages of 32x32; masks drawn from ``mask_values``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for images, masks in (("training.tif", "training_groundtruth.tif"), ("testing.tif", "testing_groundtruth.tif")):
        write_stack(root / images, rng.integers(0, 256, (2, 32, 32), dtype=np.uint8))
        write_stack(root / masks, np.asarray(mask_values, np.uint8)[rng.integers(0, len(mask_values), (2, 32, 32))])
    return root


@pytest.fixture
def write_epfl() -> Callable[..., Path]:
    """``write_epfl(root, mask_values)``: the EPFL stacks (see ``_write_epfl``) under ``root``."""
    return _write_epfl


# ------------------------------------------------------------------------------------------ ApolloScape
class ApolloWriter:
    """Tiny ApolloScape lane-segmentation frames in the published layout."""

    HEIGHT, WIDTH = 8, 12
    LABEL_IDS = np.array([0, 200, 204, 214, 249, 255, 250, 233], np.uint8)   # label ids of several kinds, 255 too

    def ids(self, seed: int) -> np.ndarray:
        """A (HEIGHT, WIDTH) uint8 label-id map that holds every one of ``LABEL_IDS``."""
        ids = np.random.default_rng(seed).choice(self.LABEL_IDS, (self.HEIGHT, self.WIDTH)).astype(np.uint8)
        ids.ravel()[:len(self.LABEL_IDS)] = self.LABEL_IDS
        return ids

    def write(self, root: Path, road: str, record: str, camera: int, stamp: str, ids: np.ndarray | None,
              image: bool = True, space: str = " ") -> tuple[Path, Path]:
        """One frame: ColorImage_roadXX/ColorImage/RecordNNN/Camera N/<stamp>_Camera_N.jpg and its _bin.png (the
        camera folder 'Camera_N' with ``space="_"``, as on the IntRA-KD authors' disk); ``ids`` None: no label,
        ``image`` False: no image. Returns both paths."""
        cam = f"Camera{space}{camera}"
        image_path = root / f"ColorImage_{road}" / "ColorImage" / record / cam / f"{stamp}_Camera_{camera}.jpg"
        label_path = root / f"Labels_{road}" / "Label" / record / cam / f"{stamp}_Camera_{camera}_bin.png"
        if image:
            image_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((self.HEIGHT, self.WIDTH, 3), 90, np.uint8)).save(image_path, quality=95)
        if ids is not None:
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids, mode="L").save(label_path)
        return image_path, label_path


@pytest.fixture
def apollo_writer() -> ApolloWriter:
    return ApolloWriter()
