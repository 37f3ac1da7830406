"""Synthetic objects: the stand-in for CIFAR-10 when no data is on disk (``SyntheticObjects``), drawn with the
synthetic VOC scene machinery of ``common.synthetic_scenes``. Items are ``(image uint8 (3, 32, 32), label int)``.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from scipy import ndimage

from common.cifar import CIFAR10_CLASSES, NUM_CLASSES
from common.noise import smooth_noise
from common.synthetic_scenes import SyntheticScenes


# --------------------------------------------------------------------------------------------------------------
# Synthetic objects: a stand-in for CIFAR-10
# --------------------------------------------------------------------------------------------------------------
# the synthetic VOC class (common.voc.STYLES) that plays each CIFAR-10 class: its shape and texture
VOC_STYLE_OF = (1, 7, 3, 8, 10, 12, 17, 13, 4, 6)  # aeroplane, car, bird, cat, cow, dog, sheep, horse, boat, bus


class SyntheticObjects(torch.utils.data.Dataset):
    """Deterministic synthetic images standing in for CIFAR-10: one main object of 10 classes per image, big and
    near the middle, on a cluttered background.

    Class k is drawn as the synthetic VOC class ``VOC_STYLE_OF[k]`` of ``common.synthetic_scenes.SyntheticScenes`` (its shape
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
        img *= 1.0 + 0.12 * smooth_noise(rng, (side, side), 24 * unit)[..., None].clip(-3, 3)  # uneven lighting
        img = ndimage.gaussian_filter(img, (0.5 * unit, 0.5 * unit, 0))                         # camera blur
        img += 0.03 * rng.standard_normal(img.shape, dtype=np.float32)                             # sensor noise
        small = TF.resize(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), [self.size, self.size],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)
        return (small.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
