"""Synthetic electron-microscopy slices: the stand-in for the EPFL mitochondria data (source 002) when no data is
on disk (``SyntheticEM``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from common.em_data import Volume


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
    """Gaussian-filtered noise of unit std. Not ``common.noise.smooth_noise`` (B-spline blobs): the EM slices have
    always been drawn with this texture, and changing it would change every unet number measured on them."""
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


