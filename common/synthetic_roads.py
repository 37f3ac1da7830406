"""Synthetic road scenes: the stand-in for ApolloScape lane segmentation when no data is on disk
(``SyntheticRoads``: deterministic perspective road scenes with 7 thin, sparse marking classes, ``ROAD_CLASSES``;
optionally wider paint and the three lane-line classes only, ``LINE_CLASSES``).

Every item is ``(image uint8 (3, H, W), mask int64 (H, W))``; mask values are class ids 0..7 (0..3 with
``lines_only``) and 255 (ignore).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np
from scipy import ndimage

from common.images import SyntheticSegmentationSet
from common.noise import smooth_noise
from common.roads import ROAD_CLASSES


# --------------------------------------------------------------------------------------------------------------
# Synthetic road scenes: a stand-in for ApolloScape
# --------------------------------------------------------------------------------------------------------------
CAMERA_HEIGHT = 2.0   # metres above the road (ApolloScape's cameras sit on a van's roof)
FOCAL = 1.5           # focal length in image heights: the bottom row sees the road about 4-6 m ahead
FAR = 150.0           # metres; the ground beyond is drawn as if it were this far
SUPERSAMPLE = 4       # label and paint coverage are measured on a 4x4 grid of samples per pixel
SOLID, DASHED, DOUBLE_YELLOW, STOP, ZEBRA, STRAIGHT, TURN = range(1, 8)
LINE_CLASSES = ROAD_CLASSES[:4]   # background and the three longitudinal lines (``lines_only``)


class _Camera(NamedTuple):
    """A pinhole camera over a flat road. Road coordinates: X metres to the right of the ego lane's centre,
    Z metres ahead; the road drifts sideways by ``yaw * Z + curve * Z**2`` (a bend)."""

    horizon: float   # row of the horizon (continuous pixel coordinates: pixel i spans [i, i + 1))
    centre: float    # column of the vanishing point
    focal: float     # pixels
    offset: float    # the camera's X, metres (it is rarely on the lane centre)
    yaw: float
    curve: float

    def distance(self, rows: np.ndarray) -> np.ndarray:
        """Z of the ground at each row; inf at and above the horizon."""
        below = rows - self.horizon
        with np.errstate(divide="ignore"):
            return np.where(below > 1e-3, self.focal * CAMERA_HEIGHT / np.maximum(below, 1e-3), np.inf)

    def road_x(self, cols: np.ndarray, z: np.ndarray) -> np.ndarray:
        """X of the ground at columns ``cols`` (1-D) on rows at distances ``z`` (1-D): a (rows, cols) array."""
        z = np.minimum(z, FAR)[:, None]
        drift = self.yaw * z + self.curve * z * z
        return ((cols[None, :] - self.centre) * z / self.focal + self.offset - drift).astype(np.float32)

    def column(self, x: float, z: float) -> float:
        """The image column of road point (x, z)."""
        return self.centre + self.focal * (x - self.offset + self.yaw * z + self.curve * z * z) / z

    def row(self, z: float) -> float:
        return self.horizon + self.focal * CAMERA_HEIGHT / z


class _Mark(NamedTuple):
    """One painted marking: ``inside(X, Z)`` says which road points it covers, on rows with Z in ``z_range``
    (X is (rows, cols), Z (rows, 1), both metres)."""

    cls: int
    z_range: tuple[float, float]
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray]
    alpha: float           # paint contrast: worn paint is fainter (its label is not)
    yellow: bool = False


class _Vehicle(NamedTuple):
    x: float               # centre, metres
    z: float               # distance of its rear, metres
    width: float
    height: float
    colour: np.ndarray     # body RGB in [0, 1]


class _Shadow(NamedTuple):
    """A dark patch on the road (tree, building or vehicle), in road coordinates, with a wavy lateral edge."""

    z0: float
    z1: float
    x0: float
    x1: float
    wobble: float          # amplitude of the edge's wave, metres
    darkness: float        # brightness factor inside


@dataclass
class _Scene:
    """Everything random about one scene, drawn before anything is rendered."""

    camera: _Camera
    road: tuple[float, float]          # left and right edge of the paved road, X metres
    marks: list[_Mark]
    vehicles: list[_Vehicle]
    shadows: list[_Shadow]
    curbs: tuple[bool, bool]
    verges: tuple[np.ndarray, np.ndarray]
    asphalt: np.ndarray
    sky: np.ndarray
    night: bool
    look: dict[str, float] = field(default_factory=dict)


class SyntheticRoads(SyntheticSegmentationSet):
    """Deterministic synthetic road scenes that mimic ApolloScape road-marking segmentation (``ROAD_CLASSES``).

    A pinhole camera 2 m above a flat road looks ahead: sky and a skyline above a horizon at 28-42% of the
    height, a paved road in perspective (1-4 lanes our way, ego lane random, often a two-way road with 1-2
    oncoming lanes beyond a double yellow line; a slight yaw and bend) between grass, dirt or pavement verges,
    sometimes with bright kerbs -- a longitudinal bright line that is NOT a marking. Markings are drawn in road
    coordinates (metres) and projected, so they get thinner and shorter with distance: at 64x128 a 15 cm line
    is about 3 px wide at the bottom row and half a pixel 25 m ahead, where it leaves the labels. The classes:
    solid white lines (road edges, some lane dividers), dashed white lines (lane dividers; dash and gap lengths
    vary), the double yellow centre line, and rare ones -- a stop line across our carriageway (drawn in 18% of
    the images), a zebra crossing (17%, often just beyond a stop line; lane lines pause across the junction),
    straight arrows (25%) and turn arrows (20%) in the lanes; far ones fall below the label threshold.
    Vehicles (boxes with rear window, lights and a shadow beneath; in lanes, changing lanes, or parked on the
    edge line) occlude the markings: occluded marking pixels are background. Tree and building shadows fall
    across the road; paint is often worn (fainter, patchy); lighting varies (brightness, contrast, colour cast,
    dusk, and about 15% night images lit only by the headlights); camera blur and sensor noise on top. Markings
    altogether cover about 2% of the pixels.

    Labels: a pixel takes a marking class when that marking covers at least half of it (4x4 samples per pixel,
    the way a polygon annotation is rasterised); the image is anti-aliased from the same samples. There is no
    ignore label in these masks.

    Not valid augmentation: horizontal flips. The scenes drive on the right (the double yellow line is left of
    our lanes) and a flip turns a left-turn arrow into a right-turn one, so flipped images show roads and arrows
    whose meaning has changed.

    ``paint`` (default 1) makes every painted marking that many times as wide (line widths and the yellow pair's
    spacing, stop line, zebra stripes and their period, arrows across), with the same random draws, so that a
    miniature at low resolution keeps regions of several cells at a network's feature stride
    (reproduce_intra_kd.py paints 4x). ``lines_only`` leaves the stop line, zebra and arrows unpainted (the same
    draws otherwise) and the classes are ``LINE_CLASSES``: background and the three longitudinal lines.

    Image i of (split, seed) is always the same, whichever other images were asked for; "train", "val" and
    "test" come from disjoint random streams. Items are memoised. Any size works (geometry scales with H).
    """

    SPLITS = {"train": 0, "val": 1, "test": 2}
    num_classes = len(ROAD_CLASSES)
    class_names = ROAD_CLASSES

    def __init__(self, split: str = "train", num_images: int = 256, size: tuple[int, int] = (64, 128),
                 seed: int = 0, paint: float = 1.0, lines_only: bool = False) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if not 0 < paint < float("inf"):
            raise ValueError(f"paint must be a positive width factor, got {paint!r}")
        super().__init__(split, num_images, size, seed)
        self.paint, self.lines_only = float(paint), bool(lines_only)
        if lines_only:   # the longitudinal lines only: classes 0-3 of ROAD_CLASSES
            self.class_names = LINE_CLASSES
            self.num_classes = len(LINE_CLASSES)
        wide = f", markings {self.paint:g}x as wide" if self.paint != 1 else ""
        lines = ", lane lines only" if lines_only else ""
        self.name = (f"synthetic roads {split} ({num_images} images of {self.size[0]}x{self.size[1]}{wide}{lines}, "
                     f"seed {seed})")

    def make_scene(self, index: int, vehicles: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index``: (H, W, 3) uint8 and (H, W) uint8 labels, a function of (split, seed, index) only.

        ``vehicles=False`` renders the same scene without its vehicles (and their shadows): every random draw is
        the same, so comparing the two shows what the vehicles occlude.
        """
        rng = np.random.default_rng([self.SPLITS[self.split], self.seed, index])
        h, w = self.size
        scene = _draw_scene(rng, h, w, self.paint)
        if self.lines_only:   # drawn as always (the same random draws), then left unpainted
            scene.marks = [mark for mark in scene.marks if mark.cls in (SOLID, DASHED, DOUBLE_YELLOW)]
        if not vehicles:
            scene.vehicles = []
        return _render(rng, scene, h, w)


def _draw_scene(rng: np.random.Generator, h: int, w: int, paint: float = 1.0) -> _Scene:
    """All random choices of a scene, in a fixed order; ``paint`` widens every marking (SyntheticRoads)."""
    camera = _Camera(horizon=rng.uniform(0.28, 0.42) * h, centre=w * (0.5 + rng.uniform(-0.08, 0.08)),
                     focal=FOCAL * h, offset=rng.uniform(-0.5, 0.5), yaw=rng.uniform(-0.04, 0.04),
                     curve=rng.uniform(-0.0015, 0.0015) * (rng.random() < 0.5))
    lane = rng.uniform(3.2, 3.8)
    ours = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.35, 0.35, 0.15]))
    ego = int(rng.integers(ours))
    bounds = (np.arange(ours + 1) - ego - 0.5) * lane             # our lane boundaries, left to right
    oncoming = int(rng.choice([1, 2])) if rng.random() < 0.55 else 0
    left_end = bounds[0] - oncoming * lane
    road = (left_end - rng.uniform(0.3, 1.2), bounds[-1] + rng.uniform(0.3, 1.5))
    marks, junction, stop_z = _draw_crossings(rng, bounds, road, paint)
    marks += _draw_lines(rng, bounds, oncoming, lane, junction, paint)
    marks += _draw_arrows(rng, bounds, stop_z, paint)
    vehicles = _draw_vehicles(rng, left_end, lane, ours + oncoming, bounds[-1])
    shadows = _draw_shadows(rng, road)
    night = bool(rng.random() < 0.15)
    grey = rng.uniform(0.25, 0.5)
    return _Scene(camera=camera, road=road, marks=marks, vehicles=vehicles, shadows=shadows,
                  curbs=(bool(rng.random() < 0.5), bool(rng.random() < 0.5)),
                  verges=(_verge_colour(rng), _verge_colour(rng)),
                  asphalt=np.clip(grey * (1 + rng.normal(0, 0.04, 3)), 0, 1).astype(np.float32),
                  sky=_sky_colour(rng), night=night,
                  look=dict(gain=rng.uniform(0.7, 1.25), contrast=rng.uniform(0.7, 1.2),
                            wear=rng.uniform(0.0, 0.8), blur=rng.uniform(0.3, 0.9),
                            noise=rng.uniform(0.008, 0.03) + 0.03 * night, patches=rng.uniform(0.0, 0.12)))


def _draw_crossings(rng: np.random.Generator, bounds: np.ndarray, road: tuple[float, float], paint: float = 1.0,
                    ) -> tuple[list[_Mark], tuple[float, float], float | None]:
    """Stop line and zebra crossing (both rare), and the junction where lane lines pause."""
    marks: list[_Mark] = []
    stop = rng.random() < 0.18
    zebra = rng.random() < (0.5 if stop else 0.1)
    stop_z, thick = rng.uniform(6, 13), rng.uniform(0.3, 0.5)
    zebra_z = stop_z + thick + rng.uniform(1.5, 4) if stop else rng.uniform(8, 22)
    zebra_len, stripe, period = rng.uniform(2, 3.5), rng.uniform(0.4, 0.45), rng.uniform(1.0, 1.2)
    thick, stripe, period = thick * paint, stripe * paint, period * paint   # wider paint, the same draws
    phase = rng.random()
    gap = rng.uniform(10, 30)
    alphas = _paint_alpha(rng, 2)
    if stop:
        left, right = bounds[0], bounds[-1]
        marks.append(_Mark(STOP, (stop_z, stop_z + thick), lambda x, z: (x >= left) & (x <= right), alphas[0]))
    if zebra:
        marks.append(_Mark(ZEBRA, (zebra_z, zebra_z + zebra_len),
                           lambda x, z: (x >= road[0]) & (x <= road[1]) & ((x - phase) % period < stripe),
                           alphas[1]))
    if not (stop or zebra):
        return marks, (np.inf, np.inf), None
    start = stop_z + thick if stop else zebra_z - rng.uniform(0, 2)
    end = (zebra_z + zebra_len if zebra else start) + gap
    return marks, (start, end), (stop_z if stop else None)


def _paint_alpha(rng: np.random.Generator, n: int) -> np.ndarray:
    """Paint contrast per marking: fresh (0.75-1) or, for 30% of markings, worn (0.3-0.6)."""
    worn = rng.random(n) < 0.3
    return np.where(worn, rng.uniform(0.3, 0.6, n), rng.uniform(0.75, 1.0, n))


def _draw_lines(rng: np.random.Generator, bounds: np.ndarray, oncoming: int, lane: float,
                junction: tuple[float, float], paint: float = 1.0) -> list[_Mark]:
    """Longitudinal lines: edges solid white, dividers mostly dashed, the centre of a two-way road double yellow;
    about 10-25% of each kind are missing (worn away or never painted)."""
    kinds: list[tuple[float, int]] = []
    for k, x in enumerate(bounds):
        if k == 0 and oncoming:
            kinds.append((x, int(rng.choice([DOUBLE_YELLOW, SOLID, 0], p=[0.85, 0.05, 0.1]))))
        elif k in (0, len(bounds) - 1):
            kinds.append((x, int(rng.choice([SOLID, 0], p=[0.75, 0.25]))))
        else:
            kinds.append((x, int(rng.choice([DASHED, SOLID, 0], p=[0.75, 0.15, 0.1]))))
    for j in range(1, oncoming + 1):
        edge = j == oncoming
        kinds.append((bounds[0] - j * lane, int(rng.choice([SOLID, 0], p=[0.6, 0.4])) if edge else DASHED))
    alphas = _paint_alpha(rng, len(kinds))
    return [_line_mark(rng, x, cls, alpha, junction, paint) for (x, cls), alpha in zip(kinds, alphas) if cls]


def _line_mark(rng: np.random.Generator, x0: float, cls: int, alpha: float, junction: tuple[float, float],
               paint: float = 1.0) -> _Mark:
    width = (rng.uniform(0.12, 0.2) if cls == SOLID else rng.uniform(0.12, 0.18)) * paint
    dash, period, phase = rng.uniform(3, 6), rng.uniform(1.5, 2.2), rng.uniform(0, 1)
    period, phase = dash * period, dash * period * phase
    spread = width + rng.uniform(0.1, 0.2) * paint   # centre distance of the two yellow lines
    j0, j1 = junction

    def active(z: np.ndarray) -> np.ndarray:
        on = (z < j0) | (z > j1)
        return on & ((z + phase) % period < dash) if cls == DASHED else on

    if cls == DOUBLE_YELLOW:
        return _Mark(cls, (0.0, FAR), lambda x, z: (np.abs(np.abs(x - x0) - spread / 2) < width / 2) & active(z),
                     alpha, yellow=True)
    return _Mark(cls, (0.0, FAR), lambda x, z: (np.abs(x - x0) < width / 2) & active(z), alpha)


def _straight_arrow(u: np.ndarray, v: np.ndarray, length: float) -> np.ndarray:
    """An arrow pointing ahead: a 0.3 m shaft and a 0.9 m wide head, ``length`` metres long (u across, v along)."""
    head = 0.35 * length
    shaft = (np.abs(u) < 0.15) & (v >= 0) & (v < length - head)
    return shaft | ((v >= length - head) & (v < length) & (np.abs(u) < 0.45 * (length - v) / head))


def _turn_arrow(u: np.ndarray, v: np.ndarray, length: float, side: int) -> np.ndarray:
    """A turn arrow: a shaft that bends towards ``side`` (-1 left, +1 right) into a head pointing sideways.
    Its bar and head are long along the road so that they survive the perspective, as painted arrows are."""
    s = side * u
    shaft = (np.abs(u) < 0.15) & (v >= 0) & (v < 0.75 * length)
    bar = (s >= 0) & (s < 0.55) & (v >= 0.55 * length) & (v < 0.72 * length)
    centre, half = 0.635 * length, 0.225 * length
    head = (s >= 0.55) & (s < 1.25) & (np.abs(v - centre) < half * (1.25 - s) / 0.7)
    return shaft | bar | head


def _draw_arrows(rng: np.random.Generator, bounds: np.ndarray, stop_z: float | None, paint: float = 1.0,
                 ) -> list[_Mark]:
    """Straight (25% of images) and turn (20%) arrows in lane centres, before the stop line if there is one."""
    straight, turn = rng.random() < 0.25, rng.random() < 0.2
    length, side = rng.uniform(4.5, 6.0), int(rng.choice([-1, 1]))
    z0 = stop_z - rng.uniform(1, 3) - length if stop_z is not None else rng.uniform(5, 20)
    lanes = len(bounds) - 1
    straight_lane = int(rng.integers(lanes))
    turn_lane = 0 if side < 0 else lanes - 1
    turn_z = z0 + (length + rng.uniform(4, 8)) * (turn_lane == straight_lane and straight)
    alphas = _paint_alpha(rng, 2)
    marks = []
    if straight and z0 > 2:
        c = bounds[straight_lane] + (bounds[1] - bounds[0]) / 2
        marks.append(_Mark(STRAIGHT, (z0, z0 + length),
                           lambda x, z: _straight_arrow((x - c) / paint, z - z0, length), alphas[0]))
    if turn and turn_z > 2:
        t = bounds[turn_lane] + (bounds[1] - bounds[0]) / 2
        marks.append(_Mark(TURN, (turn_z, turn_z + length),
                           lambda x, z: _turn_arrow((x - t) / paint, z - turn_z, length, side), alphas[1]))
    return marks


_VEHICLE_COLOURS = np.array([[0.08, 0.08, 0.09], [0.85, 0.85, 0.83], [0.55, 0.56, 0.58], [0.6, 0.1, 0.1],
                             [0.12, 0.2, 0.45], [0.25, 0.25, 0.22], [0.75, 0.6, 0.2]], np.float32)


def _draw_vehicles(rng: np.random.Generator, left: float, lane: float, lanes: int, right: float,
                   ) -> list[_Vehicle]:
    """0-5 cars and trucks, 7-60 m ahead (near ones more often): most in a lane, some changing lanes (across a
    line) and some parked on the right edge line -- those hide the lines they stand on, the others hide lines
    beyond them. None closer than 10 m in our own lane."""
    vehicles = []
    for _ in range(min(5, rng.poisson(1.4))):
        kind = rng.choice(3, p=[0.6, 0.2, 0.2])                   # in a lane, changing lanes, parked
        centre = left + (int(rng.integers(lanes)) + 0.5) * lane + rng.uniform(-0.4, 0.4)
        centre += rng.choice([-1, 1]) * rng.uniform(1.0, 1.8) if kind == 1 else 0.0
        centre = right + rng.uniform(-0.2, 0.6) if kind == 2 else centre
        near = 10 if abs(centre) < lane / 2 + 1 else 7
        z = near + (60 - near) * rng.random() ** 1.5
        truck = rng.random() < 0.2
        width = 2.4 if truck else rng.uniform(1.7, 1.95)
        height = rng.uniform(2.6, 3.4) if truck else rng.uniform(1.35, 1.7)
        colour = _VEHICLE_COLOURS[rng.integers(len(_VEHICLE_COLOURS))] * rng.uniform(0.85, 1.1)
        vehicles.append(_Vehicle(centre, z, width, height, colour))
    return sorted(vehicles, key=lambda v: -v.z)   # far ones first, so near ones are painted over them


def _draw_shadows(rng: np.random.Generator, road: tuple[float, float]) -> list[_Shadow]:
    """Shadows of trees and buildings from either side, reaching 1-12 m into the road."""
    shadows = []
    for _ in range(min(4, rng.poisson(0.8))):
        z0, reach = rng.uniform(4, 40), rng.uniform(1, 12)
        x0, x1 = (road[0] - 2, road[0] + reach) if rng.random() < 0.5 else (road[1] - reach, road[1] + 2)
        shadows.append(_Shadow(z0, z0 + rng.uniform(1.5, 8), x0, x1, rng.uniform(0, 1.0), rng.uniform(0.35, 0.65)))
    return shadows


def _verge_colour(rng: np.random.Generator) -> np.ndarray:
    grass, dirt, pavement = (0.25, 0.38, 0.15), (0.45, 0.38, 0.28), (0.58, 0.58, 0.56)
    base = np.array([grass, dirt, pavement][rng.integers(3)], np.float32)
    return np.clip(base * rng.uniform(0.8, 1.15, 3), 0, 1).astype(np.float32)


def _sky_colour(rng: np.random.Generator) -> np.ndarray:
    clear, overcast, dusk = (0.55, 0.7, 0.9), (0.78, 0.8, 0.82), (0.85, 0.6, 0.45)
    base = np.array([clear, overcast, dusk][rng.choice(3, p=[0.45, 0.4, 0.15])], np.float32)
    return np.clip(base * rng.uniform(0.9, 1.1, 3), 0, 1).astype(np.float32)


# ---- rendering ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _sample_pixels(h: int, w: int, ss: int) -> np.ndarray:
    """(h*ss, w*ss) index of the pixel each sample lies in, for bincount-based coverage."""
    rows, cols = np.arange(h * ss) // ss, np.arange(w * ss) // ss
    return (rows[:, None] * w + cols[None, :]).astype(np.int64)


def _rows(z: np.ndarray, z0: float, z1: float) -> slice:
    """The rows whose ground distance lies in [z0, z1): contiguous, since Z falls down the image."""
    return slice(int(np.searchsorted(-z, -z1, side="right")), int(np.searchsorted(-z, -z0, side="right")))


def _render(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The image (H, W, 3) uint8 and labels (H, W) uint8 of a drawn scene."""
    ss = SUPERSAMPLE
    marking = _rasterize(scene, h, w, ss)
    for vehicle in scene.vehicles:
        top, bottom, left, right = _vehicle_box(scene.camera, vehicle)
        marking[_sample_span(top, bottom, ss), _sample_span(left, right, ss)] = 0
    labels, white, yellow = _coverage(scene, marking, h, w, ss)
    img = _ground(rng, scene, h, w)
    wear = 1.0 - scene.look["wear"] * np.clip(smooth_noise(rng, (h, w), 3.0 * h / 64), 0, 1)
    white, yellow = white * wear, yellow * wear
    img = img * (1 - white - yellow)[..., None] + white[..., None] * np.float32(0.9) \
        + yellow[..., None] * np.array([0.88, 0.72, 0.22], np.float32)
    img *= _shade(scene, h, w)[..., None]
    for vehicle in scene.vehicles:
        _paint_vehicle(img, scene.camera, vehicle)
    return _camera_effects(rng, scene, img, h), labels


def _rasterize(scene: _Scene, h: int, w: int, ss: int) -> np.ndarray:
    """(h*ss, w*ss) uint8: 1 + the index of the marking at each sample (later markings over earlier), 0 none."""
    cam = scene.camera
    z = cam.distance((np.arange(h * ss) + 0.5) / ss)
    ground = _rows(z, 0.0, np.inf)
    x = np.zeros((h * ss, w * ss), np.float32)
    x[ground] = cam.road_x((np.arange(w * ss) + 0.5) / ss, z[ground])
    marking = np.zeros((h * ss, w * ss), np.uint8)
    for k, mark in enumerate(scene.marks, 1):
        rows = _rows(z, *mark.z_range)
        if rows.stop > rows.start:
            marking[rows][mark.inside(x[rows], z[rows, None])] = k
    return marking


def _coverage(scene: _Scene, marking: np.ndarray, h: int, w: int, ss: int,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels by coverage >= 1/2 (ties: the lower class id), and the white and yellow paint per pixel."""
    classes = np.array([0] + [m.cls for m in scene.marks], np.int64)
    alpha = np.array([0.0] + [m.alpha for m in scene.marks])
    yellow = np.array([False] + [m.yellow for m in scene.marks])
    pix = _sample_pixels(h, w, ss).ravel()
    flat = marking.ravel()
    n = len(ROAD_CLASSES)
    counts = np.bincount(pix * n + classes[flat], minlength=h * w * n).reshape(h, w, n)[..., 1:]
    best = counts.argmax(-1)
    labels = np.where(counts.max(-1) * 2 >= ss * ss, best + 1, 0).astype(np.uint8)
    area = np.float32(ss * ss)
    white = np.bincount(pix, weights=(alpha * ~yellow)[flat], minlength=h * w).reshape(h, w) / area
    yellow_paint = np.bincount(pix, weights=(alpha * yellow)[flat], minlength=h * w).reshape(h, w) / area
    return labels, white.astype(np.float32), yellow_paint.astype(np.float32)


def _ground(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> np.ndarray:
    """Sky, skyline, verges, kerbs and textured asphalt: (h, w, 3) float32 in [0, 1], no markings yet."""
    cam, unit = scene.camera, h / 64
    rows, cols = np.arange(h) + 0.5, np.arange(w) + 0.5
    z = cam.distance(rows)
    x = cam.road_x(cols, z)
    footprint = (np.minimum(z, FAR) / cam.focal)[:, None]                   # metres per pixel, across
    road = (np.clip((x - scene.road[0]) / footprint + 0.5, 0, 1)
            * np.clip((scene.road[1] - x) / footprint + 0.5, 0, 1))[..., None]
    verge = np.where((x < (scene.road[0] + scene.road[1]) / 2)[..., None], scene.verges[0], scene.verges[1])
    verge = verge * (1 + 0.12 * smooth_noise(rng, (h, w), 4 * unit)[..., None])
    asphalt = scene.asphalt * (1 + 0.05 * smooth_noise(rng, (h, w), 8 * unit)
                               + 0.04 * smooth_noise(rng, (h, w), 1.5 * unit))[..., None]
    patches = smooth_noise(rng, (h, w), 10 * unit) > 1.2
    asphalt = asphalt * (1 - scene.look["patches"] * patches)[..., None]
    ground = road * asphalt + (1 - road) * verge
    for side, edge in ((-1, scene.road[0]), (1, scene.road[1])):
        if scene.curbs[side > 0]:
            kerb = np.clip((0.1 - np.abs(x - edge - side * 0.1)) / footprint + 0.5, 0, 1)   # a 20 cm kerb
            ground = ground + kerb[..., None] * (0.75 - ground)
    haze = np.exp(-np.minimum(z, FAR) / 120.0)[:, None, None]                # distant ground fades to the sky
    ground = haze * ground + (1 - haze) * scene.sky * 0.9
    sky_part = np.clip(cam.horizon - np.arange(h), 0, 1)[:, None, None]      # share of each row above the horizon
    return (sky_part * _sky(rng, scene, h, w) + (1 - sky_part) * ground).astype(np.float32)


def _sky(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> np.ndarray:
    """A sky brightening towards the horizon, over a skyline of trees and buildings of random height."""
    rows = np.arange(h, dtype=np.float32)[:, None] + 0.5
    sky = scene.sky * (0.85 + 0.15 * np.clip(rows / max(scene.camera.horizon, 1), 0, 1))[..., None]
    sky = np.broadcast_to(sky, (h, w, 3)).copy()
    height = scene.camera.horizon * np.clip(0.15 + 0.35 * smooth_noise(rng, (1, w), 12 * h / 64)[0], 0, 0.9)
    skyline = np.clip(rows - (scene.camera.horizon - height[None, :]), 0, 1)[..., None]
    tone = np.array([0.2, 0.26, 0.2], np.float32) * rng.uniform(0.6, 1.6)
    return skyline * tone + (1 - skyline) * sky


def _shade(scene: _Scene, h: int, w: int) -> np.ndarray:
    """(h, w) brightness factor of the ground: shadows of trees, buildings and vehicles (markings darken too)."""
    cam = scene.camera
    z = cam.distance(np.arange(h) + 0.5)
    x = cam.road_x(np.arange(w) + 0.5, z)
    shade = np.ones((h, w), np.float32)
    shadows = scene.shadows + [_Shadow(v.z - 0.4, v.z + 3.5, v.x - v.width / 2 - 0.15, v.x + v.width / 2 + 0.15,
                                       0.0, 0.4) for v in scene.vehicles]
    for s in shadows:
        rows = _rows(z, s.z0, s.z1)
        wave = s.wobble * np.sin(z[rows] * 1.7 + s.z0)[:, None]
        inside = (x[rows] >= s.x0 + wave) & (x[rows] <= s.x1 + wave)
        shade[rows] = np.where(inside, np.minimum(shade[rows], s.darkness), shade[rows])
    return shade


def _vehicle_box(cam: _Camera, v: _Vehicle) -> tuple[float, float, float, float]:
    """The vehicle's rear in the image: top, bottom, left, right (continuous pixel coordinates)."""
    bottom = cam.row(v.z)
    scale = cam.focal / v.z
    centre = cam.column(v.x, v.z)
    return bottom - v.height * scale, bottom, centre - v.width * scale / 2, centre + v.width * scale / 2


def _sample_span(start: float, stop: float, ss: int) -> slice:
    """The samples (centres at (j + 0.5) / ss) inside [start, stop)."""
    return slice(max(0, int(np.ceil(start * ss - 0.5))), max(0, int(np.ceil(stop * ss - 0.5))))


def _pixel_span(start: float, stop: float, n: int) -> tuple[slice, np.ndarray]:
    """The pixels [start, stop) touches (at most n) and the covered share of each."""
    i0, i1 = max(0, int(np.floor(start))), min(n, int(np.ceil(stop)))
    idx = np.arange(i0, i1)
    return slice(i0, i1), np.clip(np.minimum(idx + 1, stop) - np.maximum(idx, start), 0, 1).astype(np.float32)


def _paint_vehicle(img: np.ndarray, cam: _Camera, v: _Vehicle) -> None:
    """A vehicle's rear: body, dark rear window, red lights, dark bumper; edges anti-aliased."""
    top, bottom, left, right = _vehicle_box(cam, v)
    h, w = img.shape[:2]
    rows, row_cover = _pixel_span(top, bottom, h)
    cols, col_cover = _pixel_span(left, right, w)
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return
    ry = ((np.arange(rows.start, rows.stop) + 0.5 - top) / (bottom - top))[:, None]
    rx = ((np.arange(cols.start, cols.stop) + 0.5 - left) / (right - left))[None, :]
    colour = np.broadcast_to(v.colour, (len(ry), rx.shape[1], 3)).copy()
    colour[((ry > 0.08) & (ry < 0.45) & (rx > 0.1) & (rx < 0.9))] = (0.1, 0.12, 0.15)
    colour[((ry > 0.5) & (ry < 0.62) & ((rx < 0.18) | (rx > 0.82)))] = (0.8, 0.1, 0.08)
    colour[np.broadcast_to(ry > 0.86, colour.shape[:2])] = (0.06, 0.06, 0.06)
    cover = (row_cover[:, None] * col_cover[None, :])[..., None]
    img[rows, cols] = img[rows, cols] * (1 - cover) + colour * cover


def _camera_effects(rng: np.random.Generator, scene: _Scene, img: np.ndarray, h: int) -> np.ndarray:
    """Lighting (gain, contrast, colour cast, night with headlights), blur and sensor noise -> uint8."""
    look = scene.look
    if scene.night:
        z = scene.camera.distance(np.arange(h) + 0.5)
        light = 0.06 + 0.9 * np.exp(-np.maximum(z - 4, 0) / 10)          # headlights reach ~10-20 m
        img = img * light[:, None, None].astype(np.float32)
    mean = img.mean()
    img = (mean + (img - mean) * look["contrast"]) * look["gain"] * (1 + rng.normal(0, 0.05, 3)).astype(np.float32)
    sigma = look["blur"] * h / 64
    img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    img = img + look["noise"] * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


