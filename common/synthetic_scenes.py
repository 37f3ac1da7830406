"""Synthetic 21-class scenes: the stand-in for PASCAL VOC 2012 when no data is on disk (``SyntheticScenes``).

Every item is ``(image uint8 (3, H, W), mask int64 (H, W))``; mask values are class ids 0..20 and 255 (ignore),
as ``common.voc`` reads VOC.
"""
from __future__ import annotations

import colorsys
from typing import Callable, NamedTuple

import numpy as np
from scipy import ndimage

from common.images import IGNORE_INDEX, SyntheticSegmentationSet
from common.noise import smooth_noise
from common.voc import NUM_CLASSES


class ClassStyle(NamedTuple):
    """How objects of one synthetic class look. Shape and texture each identify the class on their own."""

    shape: str       # key of SHAPES
    texture: str     # key of TEXTURES
    period: float    # texture period, pixels at 128 px images (scaled with the image)
    angle: float     # texture orientation in the object's frame, degrees
    hue: float       # degrees; classes 18 degrees apart, neighbours in hue have different textures
    partner: str     # the texture's second colour: "dark" or "light" shade of the hue
    upright: bool    # rotated by at most 20 degrees (people, bottles, furniture) or freely
    size: float      # relative size (buses big, bottles small)
    weight: float    # how often the class is drawn (person most often, as in VOC)


STYLES: dict[int, ClassStyle] = {
    1: ClassStyle("plane", "stripes", 6, 0, 0, "light", False, 1.0, 1.0),           # aeroplane
    2: ClassStyle("bicycle", "checker", 4, 0, 126, "dark", True, 1.0, 0.9),         # bicycle
    3: ClassStyle("triangle", "dots", 5, 0, 252, "light", False, 0.7, 1.0),         # bird
    4: ClassStyle("boat", "waves", 6, 0, 18, "dark", True, 0.9, 0.9),               # boat
    5: ClassStyle("bottle", "rings", 5, 0, 144, "light", True, 0.7, 1.0),           # bottle
    6: ClassStyle("rectangle", "gradient", 0, 0, 270, "dark", True, 1.3, 0.9),      # bus
    7: ClassStyle("hexagon", "grid", 7, 0, 36, "light", True, 1.0, 1.3),            # car
    8: ClassStyle("cat", "speckle", 3, 0, 162, "dark", False, 1.1, 1.0),            # cat
    9: ClassStyle("chair", "spots", 8, 0, 288, "light", True, 1.0, 1.0),            # chair
    10: ClassStyle("blob", "plain", 0, 0, 54, "dark", False, 1.1, 0.8),             # cow
    11: ClassStyle("table", "stripes", 4, 90, 180, "dark", True, 1.2, 0.8),         # diningtable
    12: ClassStyle("dog", "checker", 7, 45, 306, "light", False, 1.1, 1.1),         # dog
    13: ClassStyle("crescent", "dots", 8, 45, 72, "dark", False, 1.1, 0.9),         # horse
    14: ClassStyle("ring", "waves", 4, 90, 198, "light", False, 1.0, 0.9),          # motorbike
    15: ClassStyle("person", "rings", 9, 0, 324, "dark", True, 1.0, 4.0),           # person
    16: ClassStyle("star", "gradient", 0, 90, 90, "light", False, 0.8, 1.0),        # pottedplant
    17: ClassStyle("disc", "grid", 4, 45, 216, "dark", False, 1.0, 0.8),            # sheep
    18: ClassStyle("sofa", "speckle", 6, 0, 342, "light", True, 1.2, 0.9),          # sofa
    19: ClassStyle("strip", "spots", 4, 0, 108, "dark", False, 1.3, 0.9),           # train
    20: ClassStyle("tv", "plain", 0, 0, 234, "light", True, 0.9, 0.9),              # tvmonitor
}

# Shapes in the object's frame: (u, v) scaled so that the object fits the unit disc (v points "up").
Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _disc(u, v, cu=0.0, cv=0.0, r=1.0):
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


def _box(u, v, u0, u1, v0, v1):
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _polar_wobble(u, v, base, amplitude, lobes):
    return np.hypot(u, v) <= base + amplitude * np.cos(lobes * np.arctan2(v, u))


SHAPES: dict[str, Shape] = {
    "plane": lambda u, v: (_box(u, v, -0.18, 0.18, -1, 1) | _box(u, v, -0.95, 0.95, -0.05, 0.25)
                           | _box(u, v, -0.4, 0.4, -0.95, -0.8)),                   # fuselage, wings, tail
    "bicycle": lambda u, v: (((np.hypot(u - 0.55, v + 0.2) - 0.38) ** 2 <= 0.012)     # two wheels and a frame
                             | ((np.hypot(u + 0.55, v + 0.2) - 0.38) ** 2 <= 0.012)
                             | _box(u, v, -0.55, 0.55, 0.05, 0.2) | _box(u, v, -0.1, 0.1, -0.2, 0.5)),
    "triangle": lambda u, v: (v >= -0.5) & (v <= 1 - 1.732 * np.abs(u)),
    "boat": lambda u, v: ((_box(u, v, -1, 1, -0.7, -0.15) & (np.abs(u) <= 0.6 + 0.7 * (v + 0.7)))   # hull
                          | ((u >= 0) & (v >= -0.15) & (u <= 0.7 * (0.95 - v)))),                   # sail
    "bottle": lambda u, v: (_box(u, v, -0.35, 0.35, -1, 0.3) | _disc(u, v, 0, 0.3, 0.35)
                            | _box(u, v, -0.13, 0.13, 0.3, 1)),
    "rectangle": lambda u, v: _box(u, v, -1, 1, -0.6, 0.6),
    "hexagon": lambda u, v: (np.abs(v) <= 0.866) & (1.732 * np.abs(u) + np.abs(v) <= 1.732),
    "cat": lambda u, v: (_disc(u, v, 0, -0.15, 0.75)
                         | ((v >= 0.3) & (v <= 1.0 - 2.5 * np.abs(np.abs(u) - 0.5)))),  # head and two ears
    "chair": lambda u, v: (_box(u, v, -0.6, -0.35, -1, 1) | _box(u, v, -0.6, 0.6, -0.15, 0.12)
                           | _box(u, v, 0.4, 0.6, -1, 0)),                          # back, seat, front leg
    "blob": lambda u, v: _polar_wobble(u, v, 0.8, 0.2, 3),
    "table": lambda u, v: (_box(u, v, -1, 1, 0.35, 0.65) | _box(u, v, -0.9, -0.7, -0.9, 0.4)
                           | _box(u, v, 0.7, 0.9, -0.9, 0.4)),                      # top and two legs
    "dog": lambda u, v: ((u / 0.75) ** 2 + ((v + 0.2) / 0.45) ** 2 <= 1) | _disc(u, v, 0.7, 0.4, 0.3),
    "crescent": lambda u, v: _disc(u, v) & ~_disc(u, v, 0.45, 0.15, 0.8),
    "ring": lambda u, v: (np.hypot(u, v) <= 1) & (np.hypot(u, v) >= 0.6),
    "person": lambda u, v: _disc(u, v, 0, 0.72, 0.26) | ((u / 0.38) ** 2 + ((v + 0.25) / 0.72) ** 2 <= 1),
    "star": lambda u, v: np.hypot(u, v) <= 0.4 + 0.6 * (0.5 + 0.5 * np.cos(5 * np.arctan2(v, u))) ** 2,
    "disc": lambda u, v: _polar_wobble(u, v, 0.9, 0.08, 11),                        # a woolly outline
    "sofa": lambda u, v: (_box(u, v, -1, 1, -0.6, 0.05) | _box(u, v, -1, -0.7, 0.05, 0.45)
                          | _box(u, v, 0.7, 1, 0.05, 0.45) | _box(u, v, -0.7, 0.7, 0.05, 0.6)),
    "strip": lambda u, v: (np.abs(v) <= 0.28) & (np.abs(u + 0.3 * v) <= 1),        # a long parallelogram
    "tv": lambda u, v: _box(u, v, -1, 1, -0.45, 0.75) | _box(u, v, -0.15, 0.15, -0.8, -0.45)
                       | _box(u, v, -0.5, 0.5, -0.9, -0.8),                         # screen on a stand
}



# Textures: x, y are pixel offsets from the object's centre in its (rotated) frame, in [0, 1] out
def _rotate(x, y, angle):
    a = np.deg2rad(angle)
    return x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)


def _square_wave(phase):
    return 0.5 + 0.5 * np.tanh(4.0 * np.cos(phase))


Texture = Callable[[np.ndarray, np.ndarray, float, float, np.random.Generator, float], np.ndarray]
TEXTURES: dict[str, Texture] = {
    "stripes": lambda x, y, p, a, rng, ext: _square_wave(2 * np.pi * _rotate(x, y, a)[0] / p),
    "checker": lambda x, y, p, a, rng, ext: (np.sin(np.pi * _rotate(x, y, a)[0] / p)
                                             * np.sin(np.pi * _rotate(x, y, a)[1] / p) > 0).astype(np.float32),
    "dots": lambda x, y, p, a, rng, ext: (np.cos(2 * np.pi * _rotate(x, y, a)[0] / p)
                                          + np.cos(2 * np.pi * _rotate(x, y, a)[1] / p) > 0.9).astype(np.float32),
    "waves": lambda x, y, p, a, rng, ext: _square_wave(2 * np.pi * (_rotate(x, y, a)[0]
                                                                    + 0.35 * p * np.sin(_rotate(x, y, a)[1] / p)) / p),
    "rings": lambda x, y, p, a, rng, ext: _square_wave(2 * np.pi * np.hypot(x, y) / p),
    "gradient": lambda x, y, p, a, rng, ext: np.clip(0.5 + 0.5 * _rotate(x, y, a)[0] / ext, 0, 1),
    "grid": lambda x, y, p, a, rng, ext: ((np.abs(np.cos(np.pi * _rotate(x, y, a)[0] / p)) > 0.85)
                                          | (np.abs(np.cos(np.pi * _rotate(x, y, a)[1] / p)) > 0.85)
                                          ).astype(np.float32),
    "speckle": lambda x, y, p, a, rng, ext: (smooth_noise(rng, x.shape, p / 2) > 0.6).astype(np.float32),
    "spots": lambda x, y, p, a, rng, ext: (smooth_noise(rng, x.shape, 1.5 * p) > 0.8).astype(np.float32),
    "plain": lambda x, y, p, a, rng, ext: 0.07 * np.clip(smooth_noise(rng, x.shape, 6.0), -3, 3) + 0.3,
}


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue / 360.0) % 1.0, saturation, value), dtype=np.float32)


class SyntheticScenes(SyntheticSegmentationSet):
    """Deterministic synthetic scenes standing in for PASCAL VOC 2012: 20 object classes + background.

    Every class has its own shape family (an aeroplane is a cross of fuselage and wings, a person a head on a
    body, a bicycle two thin wheels, a tv a screen on a stand, ...; ``SHAPES``) with random size, aspect and
    rotation, AND its own texture and colour signature (stripes of a class-specific orientation and period,
    checker, dots, rings, gradients, ... in the class hue with a dark or light partner colour, jittered;
    ``STYLES``), so both shape and texture carry the class. Backgrounds are cluttered: smooth colour noise, a
    horizon, and distractor blobs painted with the same texture vocabulary in random colours (class 0).
    Each image holds 1-5 objects, from small to half the image, drawn in turn so that later objects occlude
    earlier ones; person is drawn most often, as in VOC. As in VOC, a band of 255 ("ignore") about 1% of the
    image size wide (2 px at 128 px; VOC's is ~5 px at ~500 px) runs along every object's visible outline.

    Image i of (split, seed) is always the same, whichever other images were asked for; train and val come from
    different random streams. Items are memoised. Returns (image uint8 (3, H, W), mask int64 (H, W)).
    "trainaug" is accepted as another name for "train", so scripts can pass their VOC split unchanged.
    """

    SPLITS = {"train": 0, "trainaug": 0, "val": 1}

    def __init__(self, split: str = "train", num_images: int = 256, size: int | tuple[int, int] = 128,
                 seed: int = 0) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split must be 'train', 'trainaug' or 'val', got {split!r}")
        super().__init__(split, num_images, (size, size) if isinstance(size, int) else size, seed)
        weights = np.array([STYLES[c].weight for c in range(1, NUM_CLASSES)])
        self._class_p = weights / weights.sum()

    def make_scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index``: (H, W, 3) uint8 and (H, W) uint8 labels, a function of (split, seed, index) only."""
        rng = np.random.default_rng([self.SPLITS[self.split], self.seed, index])
        h, w = self.size
        unit = min(h, w) / 128.0  # texture periods and blur are set for 128 px images
        img = self._background(rng, h, w, unit)
        labels = np.zeros((h, w), np.uint8)
        instances = np.zeros((h, w), np.int16)
        count = min(5, 1 + rng.poisson(1.4))
        for k in range(count):
            cls = 1 + int(rng.choice(NUM_CLASSES - 1, p=self._class_p))
            drawn = self._draw_object(rng, img, cls, unit, big=(k == 0))
            if drawn is not None:
                (y0, y1, x0, x1), inside = drawn
                labels[y0:y1, x0:x1][inside] = cls
                instances[y0:y1, x0:x1][inside] = k + 1
        # like VOC: 255 along every object's visible outline, between objects too (so instance-wise)
        width = max(2, round(min(h, w) / 100))
        outline = (ndimage.maximum_filter(instances, size=width + 1)
                   != ndimage.minimum_filter(instances, size=width + 1))
        labels[outline] = IGNORE_INDEX
        img *= 1.0 + 0.12 * smooth_noise(rng, (h, w), 48 * unit)[..., None].clip(-3, 3)  # uneven lighting
        img = ndimage.gaussian_filter(img, (0.5 * unit, 0.5 * unit, 0))                       # camera blur
        img += 0.03 * rng.standard_normal(img.shape, dtype=np.float32)                           # sensor noise
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), labels

    def _background(self, rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
        """Cluttered background (class 0): two muted colours split at a wavy horizon, smooth colour noise, and
        distractor blobs painted like objects (object textures and hues) but with no object's shape."""
        top, bottom = (_hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.9)) for _ in range(2))
        rows = np.arange(h, dtype=np.float32)[:, None]
        horizon = rng.uniform(0.2, 0.8) * h + 0.05 * h * smooth_noise(rng, (1, w), 40 * unit)[0]
        sky = 1.0 / (1.0 + np.exp((rows - horizon[None, :]) / (2.0 * unit)))
        img = sky[..., None] * top + (1 - sky[..., None]) * bottom
        img = img + 0.03 * np.stack([smooth_noise(rng, (h, w), 16 * unit) for _ in range(3)], -1)
        img += 0.03 * smooth_noise(rng, (h, w), 2.5 * unit)[..., None]  # fine grain
        xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        for _ in range(rng.poisson(2.0)):
            blob = smooth_noise(rng, (h, w), rng.uniform(10, 30) * unit) > rng.uniform(1.0, 1.7)
            kind = str(rng.choice(list(TEXTURES)))
            t = TEXTURES[kind](xx, yy, rng.uniform(3, 9) * unit, rng.uniform(0, 180), rng, max(h, w) / 4)
            hue = rng.uniform(0, 360)
            a, b = _hsv(hue, rng.uniform(0.4, 0.9), rng.uniform(0.5, 0.95)), _hsv(hue, 0.2, 0.25)
            img[blob] = (a + t[..., None] * (b - a))[blob]
        return img.astype(np.float32)

    def _draw_object(self, rng: np.random.Generator, img: np.ndarray, cls: int, unit: float, big: bool, *,
                     hue: float | None = None, centre: tuple[float, float] | None = None,
                     radius_range: tuple[float, float] | None = None,
                     ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
        """Paint one object of class ``cls`` over ``img``; returns its box and the mask inside it.

        The keywords exist for ``common.cifar.SyntheticObjects``, whose classes must not be told apart by colour
        and whose subject sits near the middle: ``hue`` (degrees) replaces the class hue, ``centre`` (fractions
        of height and width) the uniform placement, ``radius_range`` (fractions of the image size, before the
        class's relative size) the size range set by ``big``. Left at None they change nothing: the same random
        draws in the same order, so SyntheticScenes stays bit-identical.
        """
        style = STYLES[cls]
        h, w = img.shape[:2]
        # radius: log-uniform from small to about half the image; the first object is often the big subject
        low, high = radius_range if radius_range is not None else (0.3 if big else 0.07, 0.5)
        radius = min(h, w) * style.size * float(np.exp(rng.uniform(np.log(low), np.log(high))))
        aspect = float(np.exp(rng.normal(0.0, 0.15)))
        angle = rng.uniform(-20, 20) if style.upright else rng.uniform(0, 360)
        if centre is None:
            cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        else:
            cy, cx = centre[0] * h, centre[1] * w
        reach = radius * 1.45 * max(aspect, 1 / aspect)
        y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
        x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
        if y1 <= y0 or x1 <= x0:
            return None
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        # the object's frame: x to the right, y up, rotated by angle
        a = np.deg2rad(angle)
        dx, dy = xx - cx, cy - yy
        fx, fy = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
        inside = SHAPES[style.shape](fx / (radius * aspect), fy / (radius / aspect))
        if not inside.any():
            return None
        # colour signature: the class hue (jittered) and its dark or light partner, mixed by the class texture
        hue = (style.hue if hue is None else hue) + rng.uniform(-6, 6)
        main = _hsv(hue, rng.uniform(0.55, 0.95), rng.uniform(0.6, 0.95))
        partner = (_hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.15, 0.3)) if style.partner == "dark"
                   else _hsv(hue, rng.uniform(0.05, 0.2), rng.uniform(0.9, 1.0)))
        period = max(2.5, style.period * unit * rng.uniform(0.85, 1.15))
        t = TEXTURES[style.texture](fx, fy, period, style.angle + rng.uniform(-10, 10), rng, radius)
        paint = main + t[..., None] * (partner - main)
        paint *= (1.0 + 0.2 * np.clip(fy / radius, -1, 1))[..., None]  # lit from above
        img[y0:y1, x0:x1][inside] = paint[inside]
        return (y0, y1, x0, x1), inside
