"""Smooth random noise for the synthetic stand-ins (scenes, roads, objects): blobs of a chosen size."""
from __future__ import annotations

import numpy as np


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean noise of std about 1 with blobs about ``scale`` pixels across: a coarse random grid smoothed by
    cubic B-spline upsampling, done as two small matrix products (scipy's zoom is 100x slower here)."""
    h, w = shape
    coarse = rng.standard_normal((int(h / scale) + 4, int(w / scale) + 4)).astype(np.float32)
    smooth = bspline_matrix(h, coarse.shape[0], scale) @ coarse @ bspline_matrix(w, coarse.shape[1], scale).T
    return smooth / 0.48  # the B-spline's gain on white noise: sqrt of the summed squared weights, squared


def bspline_matrix(n_out: int, n_in: int, scale: float) -> np.ndarray:
    """(n_out, n_in) weights of the cubic B-spline through n_in nodes spaced ``scale`` output pixels apart
    (four per row; needs n_in >= n_out / scale + 4)."""
    position = np.arange(n_out) / scale + 1.0
    first = np.floor(position).astype(np.int64) - 1
    t = (position - np.floor(position))[:, None]
    weights = np.concatenate([(1 - t) ** 3, 3 * t ** 3 - 6 * t ** 2 + 4, -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1,
                              t ** 3], axis=1) / 6
    matrix = np.zeros((n_out, n_in), np.float32)
    matrix[np.arange(n_out)[:, None], first[:, None] + np.arange(4)] = weights
    return matrix

