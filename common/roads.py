"""Road-marking segmentation data for IntRA-KD (Hou et al., CVPR 2020: ERFNet student, ResNet-101 teacher):
synthetic road scenes for when no data is on disk, and the real ApolloScape and CULane data in their published
layouts.

- ``SyntheticRoads``: deterministic perspective road scenes with 7 thin, sparse marking classes (``ROAD_CLASSES``).
- ``ApolloScapeLanes``: ApolloScape lane segmentation (36 classes, ``APOLLO_LABELS``), split by record.
- ``CULaneLanes``: CULane's per-lane masks (background + lanes 1..4) with its train_gt / val_gt lists.
- ``road_dataset(kind, root, split, ..., verdicts=None, progress=True)``: one of the two real data sets, by name.
- ``road_palette`` / ``colorize_roads``: figures. ``normalize`` (from ``common.voc``) makes the network input.

Every item is ``(image uint8 (3, H, W), mask int64 (H, W))``; mask values are class ids 0..num_classes-1 and
255 (ignore). Every data set has ``num_classes``, ``class_names`` and ``name`` (a short description for tables).
The real data sets check every file when they are built (``common.filecheck``), so a bad label stops a run
before its first step, not when the sampler reaches it.
"""
from __future__ import annotations

import colorsys
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from common.errors import UserError
from common.filecheck import check_files, describe_folder
from common.voc import IGNORE_INDEX, _smooth_noise, normalize, read_image

__all__ = ["ROAD_CLASSES", "APOLLO_LABELS", "APOLLO_CLASSES", "CULANE_CLASSES", "IGNORE_INDEX", "SyntheticRoads",
           "ApolloScapeLanes", "CULaneLanes", "RoadFiles", "road_dataset", "road_palette", "colorize_roads",
           "normalize"]

ROAD_CLASSES: tuple[str, ...] = ("background", "solid white line", "dashed white line", "double yellow line",
                                 "stop line", "zebra crossing", "straight arrow", "turn arrow")

# (name, label id in the _bin.png files, train id): the table of ApolloScape's
# lane_segmentation/helpers/laneMarkDetection.py; "noise" and "ignored" are not evaluated (255).
APOLLO_LABELS: tuple[tuple[str, int, int], ...] = (
    ("void", 0, 0), ("s_w_d", 200, 1), ("s_y_d", 204, 2), ("ds_w_dn", 213, 3), ("ds_y_dn", 209, 4),
    ("sb_w_do", 206, 5), ("sb_y_do", 207, 6), ("b_w_g", 201, 7), ("b_y_g", 203, 8), ("db_w_g", 211, 9),
    ("db_y_g", 208, 10), ("db_w_s", 216, 11), ("s_w_s", 217, 12), ("ds_w_s", 215, 13), ("s_w_c", 218, 14),
    ("s_y_c", 219, 15), ("s_w_p", 210, 16), ("s_n_p", 232, 17), ("c_wy_z", 214, 18), ("a_w_u", 202, 19),
    ("a_w_t", 220, 20), ("a_w_tl", 221, 21), ("a_w_tr", 222, 22), ("a_w_tlr", 231, 23), ("a_w_l", 224, 24),
    ("a_w_r", 225, 25), ("a_w_lr", 226, 26), ("a_n_lu", 230, 27), ("a_w_tu", 228, 28), ("a_w_m", 229, 29),
    ("a_y_t", 233, 30), ("b_n_sr", 205, 31), ("d_wy_za", 212, 32), ("r_wy_np", 227, 33), ("vom_wy_n", 223, 34),
    ("om_n_n", 250, 35), ("noise", 249, IGNORE_INDEX), ("ignored", 255, IGNORE_INDEX))
APOLLO_CLASSES: tuple[str, ...] = tuple(name for name, _, train_id in APOLLO_LABELS if train_id != IGNORE_INDEX)
CULANE_CLASSES: tuple[str, ...] = ("background", "lane 1", "lane 2", "lane 3", "lane 4")

APOLLO_URL = "http://apolloscape.auto/lane_segmentation.html"
CULANE_URL = "https://xingangpan.github.io/projects/CULane.html"
APOLLO_LAYOUT = ("ColorImage_road0X/ColorImage/Record0NN/Camera 5 (and Camera 6)/<timestamp>_Camera_5.jpg with "
                 "labels Labels_road0X/Label/Record0NN/Camera 5/<timestamp>_Camera_5_bin.png")
CULANE_LAYOUT = ("driver_*/<video>.MP4/<frame>.jpg, laneseg_label_w16/driver_*/<video>.MP4/<frame>.png and "
                 "list/train_gt.txt, list/val_gt.txt")


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------
_MARKING_COLOURS = ((0, 0, 0), (0, 150, 255), (0, 230, 110), (255, 210, 0), (255, 40, 40), (255, 110, 220),
                    (150, 70, 255), (255, 140, 0))


def road_palette() -> np.ndarray:
    """(256, 3) uint8 colours: ``ROAD_CLASSES`` get hand-picked ones that stand out on a dark background, the
    other ids (ApolloScape's 36 classes) golden-angle hues so neighbouring ids differ; 255 (ignore) is white."""
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(_MARKING_COLOURS)] = _MARKING_COLOURS
    for i in range(len(_MARKING_COLOURS), 255):
        rgb = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.55 + 0.45 * (i % 2), 0.65 + 0.35 * (i % 3 == 0))
        palette[i] = np.round(np.array(rgb) * 255)
    palette[IGNORE_INDEX] = 255
    return palette


def colorize_roads(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 in ``road_palette`` colours (ignore white), for prediction panels."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return road_palette()[np.asarray(mask).astype(np.int64)]


# --------------------------------------------------------------------------------------------------------------
# Synthetic road scenes: a stand-in for ApolloScape
# --------------------------------------------------------------------------------------------------------------
CAMERA_HEIGHT = 2.0   # metres above the road (ApolloScape's cameras sit on a van's roof)
FOCAL = 1.5           # focal length in image heights: the bottom row sees the road about 4-6 m ahead
FAR = 150.0           # metres; the ground beyond is drawn as if it were this far
SUPERSAMPLE = 4       # label and paint coverage are measured on a 4x4 grid of samples per pixel
SOLID, DASHED, DOUBLE_YELLOW, STOP, ZEBRA, STRAIGHT, TURN = range(1, 8)


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


class SyntheticRoads(torch.utils.data.Dataset):
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

    Image i of (split, seed) is always the same, whichever other images were asked for; "train", "val" and
    "test" come from disjoint random streams. Items are memoised. Any size works (geometry scales with H).
    """

    SPLITS = {"train": 0, "val": 1, "test": 2}
    num_classes = len(ROAD_CLASSES)
    class_names = ROAD_CLASSES

    def __init__(self, split: str = "train", num_images: int = 256, size: tuple[int, int] = (64, 128),
                 seed: int = 0) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        self.split, self.num_images, self.seed = split, num_images, seed
        self.size = (int(size[0]), int(size[1]))
        self.name = f"synthetic roads {split} ({num_images} images of {self.size[0]}x{self.size[1]}, seed {seed})"
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.num_images:
            raise IndexError(f"image {i} of a {self.num_images}-image SyntheticRoads")
        if i not in self._cache:
            self._cache[i] = self.make_scene(i)
        image, mask = self._cache[i]
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask.astype(np.int64))

    def __repr__(self) -> str:
        return f"SyntheticRoads({self.split!r}, {self.num_images} images of {self.size[0]}x{self.size[1]}, " \
               f"seed {self.seed})"

    def make_scene(self, index: int, vehicles: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index``: (H, W, 3) uint8 and (H, W) uint8 labels, a function of (split, seed, index) only.

        ``vehicles=False`` renders the same scene without its vehicles (and their shadows): every random draw is
        the same, so comparing the two shows what the vehicles occlude.
        """
        rng = np.random.default_rng([self.SPLITS[self.split], self.seed, index])
        h, w = self.size
        scene = _draw_scene(rng, h, w)
        if not vehicles:
            scene.vehicles = []
        return _render(rng, scene, h, w)


def _draw_scene(rng: np.random.Generator, h: int, w: int) -> _Scene:
    """All random choices of a scene, in a fixed order."""
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
    marks, junction, stop_z = _draw_crossings(rng, bounds, road)
    marks += _draw_lines(rng, bounds, oncoming, lane, junction)
    marks += _draw_arrows(rng, bounds, stop_z)
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


def _draw_crossings(rng: np.random.Generator, bounds: np.ndarray, road: tuple[float, float],
                    ) -> tuple[list[_Mark], tuple[float, float], float | None]:
    """Stop line and zebra crossing (both rare), and the junction where lane lines pause."""
    marks: list[_Mark] = []
    stop = rng.random() < 0.18
    zebra = rng.random() < (0.5 if stop else 0.1)
    stop_z, thick = rng.uniform(6, 13), rng.uniform(0.3, 0.5)
    zebra_z = stop_z + thick + rng.uniform(1.5, 4) if stop else rng.uniform(8, 22)
    zebra_len, stripe, period = rng.uniform(2, 3.5), rng.uniform(0.4, 0.45), rng.uniform(1.0, 1.2)
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
                junction: tuple[float, float]) -> list[_Mark]:
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
    return [_line_mark(rng, x, cls, alpha, junction) for (x, cls), alpha in zip(kinds, alphas) if cls]


def _line_mark(rng: np.random.Generator, x0: float, cls: int, alpha: float, junction: tuple[float, float]) -> _Mark:
    width = rng.uniform(0.12, 0.2) if cls == SOLID else rng.uniform(0.12, 0.18)
    dash, period, phase = rng.uniform(3, 6), rng.uniform(1.5, 2.2), rng.uniform(0, 1)
    period, phase = dash * period, dash * period * phase
    spread = width + rng.uniform(0.1, 0.2)        # centre distance of the two yellow lines
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


def _draw_arrows(rng: np.random.Generator, bounds: np.ndarray, stop_z: float | None) -> list[_Mark]:
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
                           lambda x, z: _straight_arrow(x - c, z - z0, length), alphas[0]))
    if turn and turn_z > 2:
        t = bounds[turn_lane] + (bounds[1] - bounds[0]) / 2
        marks.append(_Mark(TURN, (turn_z, turn_z + length),
                           lambda x, z: _turn_arrow(x - t, z - turn_z, length, side), alphas[1]))
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
    wear = 1.0 - scene.look["wear"] * np.clip(_smooth_noise(rng, (h, w), 3.0 * h / 64), 0, 1)
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
    verge = verge * (1 + 0.12 * _smooth_noise(rng, (h, w), 4 * unit)[..., None])
    asphalt = scene.asphalt * (1 + 0.05 * _smooth_noise(rng, (h, w), 8 * unit)
                               + 0.04 * _smooth_noise(rng, (h, w), 1.5 * unit))[..., None]
    patches = _smooth_noise(rng, (h, w), 10 * unit) > 1.2
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
    height = scene.camera.horizon * np.clip(0.15 + 0.35 * _smooth_noise(rng, (1, w), 12 * h / 64)[0], 0, 0.9)
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


# --------------------------------------------------------------------------------------------------------------
# The real data: ApolloScape lane segmentation and CULane
# --------------------------------------------------------------------------------------------------------------
class RoadFiles(torch.utils.data.Dataset):
    """Image / label-id PNG pairs read lazily: item i is (image uint8 (3, H, W), mask int64 (H, W)).

    Label ids become class ids through ``lut`` (256 entries, -1 = not a valid id, which is a UserError naming the
    file); then the top ``crop_top`` of the frame is dropped and, if ``size`` is given, both are resized to it.
    ``ApolloScapeLanes`` and ``CULaneLanes`` check every pair when they are built (``common.filecheck``); the same
    checks run again on each read, for files that change during a run.
    """

    def __init__(self, images: list[Path], labels: list[Path], lut: np.ndarray, class_names: tuple[str, ...],
                 name: str, fix: str, size: tuple[int, int] | None = None, crop_top: float = 0.0) -> None:
        if not 0.0 <= crop_top < 1.0:
            raise UserError(f"crop_top is {crop_top}, but it is the fraction of the frame's top to drop: "
                            f"pass a number in [0, 1).")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise UserError(f"size is {size}, but it must be (height, width), both positive.")
        self.images, self.labels, self.lut, self.fix = images, labels, lut, fix
        self.class_names, self.num_classes, self.name = class_names, len(class_names), name
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.crop_top = crop_top

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = _read_frame(self.images[i], self.fix)
        ids = _read_id_png(self.labels[i], self.fix)
        _require_same_size(self.images[i], tuple(image.shape[-2:]), self.labels[i], ids.shape, self.fix)
        mask = torch.from_numpy(_class_ids(ids, self.labels[i], self.lut, self.fix))
        return _crop_resize(image, mask, self.crop_top, self.size)

    def __repr__(self) -> str:
        return f"RoadFiles({self.name})"


def _class_ids(ids: np.ndarray, path: Path, lut: np.ndarray, fix: str) -> np.ndarray:
    """Label ids -> class ids through ``lut``; an id the table does not have is a UserError naming ``path``."""
    mapped = lut[ids]
    if (mapped < 0).any():
        bad = np.unique(ids[mapped < 0])[:8].tolist()
        valid = _ranges(np.flatnonzero(lut >= 0))
        raise UserError(f"{path} holds label values {bad} that are not valid label ids (valid: {valid}); {fix}")
    return mapped.astype(np.uint8)


def _require_same_size(image: Path, image_hw: tuple[int, ...], label: Path, label_hw: tuple[int, ...],
                       fix: str) -> None:
    if tuple(image_hw) != tuple(label_hw):
        raise UserError(f"{label} is {tuple(label_hw)} (height, width) but its image {image} is "
                        f"{tuple(image_hw)}; each label must match its image: {fix}")


def _ranges(values: np.ndarray) -> str:
    """[0, 200, 201, 202, 249] -> '0, 200-202, 249'."""
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _read_frame(path: Path, fix: str) -> torch.Tensor:
    """``common.voc.read_image``, with this data's advice in the error."""
    try:
        return read_image(path)
    except UserError as e:
        raise UserError(f"{path} is not a readable image ({e.__cause__}); {fix}") from e.__cause__


def _frame_size(path: Path, fix: str) -> tuple[int, int]:
    """(height, width) from the image file's header: Pillow's ``open`` reads no pixels, so checking 100k
    full-size frames costs seconds, not the hour decoding them would."""
    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")
            width, height = img.size
    except (OSError, EOFError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as e:
        raise UserError(f"{path} is not a readable image ({e}); {fix}") from e
    return height, width


def _read_id_png(path: Path, fix: str) -> np.ndarray:
    """A single-channel 8-bit PNG (grey 'L' or palette 'P': pixel values are the ids) as (H, W) uint8."""
    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")
            mode = img.mode
            array = np.array(img) if mode in ("L", "P") else None
    except (OSError, EOFError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as e:
        raise UserError(f"{path} is not a readable PNG ({e}); {fix}") from e
    if array is None:
        raise UserError(f"{path} is a mode-{mode} image, but label files are single-channel 8-bit PNGs of label "
                        f"ids (a colour rendering will not do); {fix}")
    return array


def _check_pair(image: Path, label: Path, lut: np.ndarray, fix: str) -> None:
    """What a read of the pair would find wrong, found now: the image's header is readable, the label decodes as
    a single-channel 8-bit PNG of ids that ``lut`` knows, and both have the same size."""
    image_hw = _frame_size(image, fix)
    ids = _read_id_png(label, fix)
    _require_same_size(image, image_hw, label, ids.shape, fix)
    _class_ids(ids, label, lut, fix)


def _crop_resize(image: torch.Tensor, mask: torch.Tensor, crop_top: float, size: tuple[int, int] | None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the top ``crop_top`` of the frame (sky and far road, as lane codebases do), then resize: the image
    bilinear with antialiasing, the mask by nearest-exact (pixel-centre) sampling so it stays aligned."""
    top = int(round(crop_top * image.shape[-2]))
    image, mask = image[:, top:], mask[top:]
    if size is not None and tuple(image.shape[-2:]) != size:
        image = TF.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        mask = TF.resize(mask[None], list(size), interpolation=InterpolationMode.NEAREST_EXACT)[0]
    return image.contiguous(), mask.long()


def _lookup_table(pairs: list[tuple[int, int]]) -> np.ndarray:
    lut = np.full(256, -1, np.int16)
    for label_id, class_id in pairs:
        lut[label_id] = class_id
    return lut


def _require_root(root: str | Path, what: str, layout: str, url: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder; download {what} from {url} and pass the folder that "
                        f"holds {layout} as --data-root.")
    return root


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class _Listing:
    """File existence by one directory listing per folder (data sets list 100k files; a stat each is slow)."""

    def __init__(self) -> None:
        self._folders: dict[Path, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        folder = path.parent
        if folder not in self._folders:
            self._folders[folder] = frozenset(os.listdir(folder)) if folder.is_dir() else frozenset()
        return path.name in self._folders[folder]


# ---- ApolloScape ----------------------------------------------------------------------------------------------
APOLLO_NAME = "ApolloScape lane segmentation"   # as common.filecheck names it
APOLLO_TOP_FOLDERS = ("ColorImage_road", "Labels_road")
_APOLLO_FIX = f"re-extract it from the ApolloScape lane-segmentation archives ({APOLLO_URL})."
_LIST_LINE = re.compile(r"^(.+?\.(?:jpg|jpeg|png))\s+(.+?\.png)(?:\s.*)?$", re.IGNORECASE)
_CAMERA_FOLDER = re.compile(r"^Camera[ _](\d+)$")   # 'Camera 5' in the archives, 'Camera_5' in IntRA-KD's lists


class ApolloScapeLanes(RoadFiles):
    """ApolloScape lane segmentation (Huang et al. 2018) in its published layout: 36 classes (``APOLLO_CLASSES``,
    train ids of ``APOLLO_LABELS``) and 255 (ignore: "noise" and "ignored").

    ``root`` holds ColorImage_road0X/ColorImage/Record0NN/Camera 5|6/<t>_Camera_5.jpg and the labels
    Labels_road0X/Label/Record0NN/Camera 5|6/<t>_Camera_5_bin.png (label ids, mapped to train ids here). The
    camera folders may also be spelled Camera_5|Camera_6, as in IntRA-KD's lists. Frames are 3384x2710; both
    cameras are used. Frames without a label file and label files without a frame are left out; their numbers,
    over the whole folder, are in each split's ``name`` ("ApolloScape lanes train (N images; 3 frames without a
    label file left out; split by record)") and in ``frames_without_label`` and ``labels_without_frame`` (0 when
    a list file gives the split: a listed file that is missing is an error).

    Every pair is checked when the data set is built (``common.filecheck.check_files``; ``verdicts`` remembers
    the pairs that passed): the image's header is readable, the label is a single-channel 8-bit PNG whose ids are
    all in ``APOLLO_LABELS`` and its size is the image's. One UserError names every bad file.

    Splits: ApolloScape publishes none for this layout. If ``root/list/{split}.txt`` exists it is used ("test"
    falls back to list/val.txt). Its lines are "image_path label_path [anything]"; paths may contain spaces
    ("Camera 5") and are tried, in this order, as written (if absolute), relative to ``root`` (a leading "/"
    ignored), and re-rooted at their ColorImage_road*/Labels_road* folder, each with the camera folder spelled
    "Camera 5" and "Camera_5". That takes IntRA-KD's own lists (github.com/cardwing/Codes-for-IntRA-KD,
    list/val.txt, read by its dataset/voc_aug_train.py), whose lines are e.g.
    "/home/houyuenan/ApolloScapes/ColorImage_road04/ColorImage/Record015/Camera_6/171206_061127409_Camera_6.jpg
    /home/houyuenan/ApolloScapes/Labels_road04/Label/Record015/Camera_6/171206_061127409_Camera_6_bin.png 1 1 1 1"
    (its list/test_img.txt pairs the unlabelled road05 test frames with one dummy label and is not read).
    Without a list the split is by recording, so that near-identical consecutive frames never straddle it: of
    the sorted (road, record) folders, every one whose index is 9 mod 10 (10% of the records, both cameras) is
    "val", the others "train"; "test" is another name for "val". If that leaves a split empty (tiny data), every
    10th pair (index 9 mod 10) is "val" instead.

    ``crop_top``: the fraction of the frame's top to drop (IntRA-KD keeps rows 1700: of 2710, i.e. 0.627);
    ``size``: (H, W) to resize to after cropping (image bilinear, antialiased; labels nearest); ``verdicts``: the
    JSON file of ``common.filecheck`` (None: check every pair every time); ``progress``: show a progress bar.
    """

    LUT = _lookup_table([(label_id, train_id) for _, label_id, train_id in APOLLO_LABELS])

    def __init__(self, root: str | Path, split: str, size: tuple[int, int] | None = None,
                 crop_top: float = 0.0, *, verdicts: Path | None = None, progress: bool = True) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        root = _require_root(root, APOLLO_NAME, APOLLO_LAYOUT, APOLLO_URL)
        list_file = _split_list(root, split)
        self.frames_without_label = self.labels_without_frame = 0
        if list_file is not None:
            pairs = _apollo_listed(root, list_file)
            source = str(list_file)
        else:
            found, self.frames_without_label, self.labels_without_frame = _apollo_pairs(root)
            pairs = _apollo_split(found, "val" if split == "test" else split, root)
            source = "split by record"
        left_out = _apollo_left_out(self.frames_without_label, self.labels_without_frame)
        images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
        super().__init__(images, labels, self.LUT, APOLLO_CLASSES,
                         f"ApolloScape lanes {split} ({len(pairs)} images{left_out}; {source})", _APOLLO_FIX,
                         size, crop_top)
        check_files(pairs, _check_apollo_pair, what=f"ApolloScape {split} image/label pairs", verdicts=verdicts,
                    progress=progress)


def _check_apollo_pair(image: Path, label: Path) -> None:
    """``_check_pair`` with ApolloScape's table, at top level so that ``check_files``' worker processes can run it
    (its name keys the verdicts: a change to ``APOLLO_LABELS`` needs a new name or a deleted verdicts file)."""
    _check_pair(image, label, ApolloScapeLanes.LUT, _APOLLO_FIX)


def _apollo_left_out(unlabelled: int, missing: int) -> str:
    """'; 3 frames without a label file and 1 label file without a frame left out', or '' when none were."""
    parts = ([_plural(unlabelled, "frame") + " without a label file"] if unlabelled else []) + \
            ([_plural(missing, "label file") + " without a frame"] if missing else [])
    return f"; {' and '.join(parts)} left out" if parts else ""


def _split_list(root: Path, split: str) -> Path | None:
    """root/list/{split}.txt if there is one ("test" falls back to val.txt)."""
    for name in (split, "val") if split == "test" else (split,):
        if (root / "list" / f"{name}.txt").is_file():
            return root / "list" / f"{name}.txt"
    return None


def _apollo_pairs(root: Path) -> tuple[list[tuple[Path, Path]], int, int]:
    """Sorted (image, label) pairs of the published layout (either camera-folder spelling), the number of images
    without a label and the number of labels without an image (both left out)."""
    images = sorted(root.glob("ColorImage_road*/ColorImage/Record*/Camera*/*.jpg"))
    labels = {_apollo_frame(label): label for label in root.glob("Labels_road*/Label/Record*/Camera*/*_bin.png")}
    pairs = [(image, labels[_apollo_frame(image)]) for image in images if _apollo_frame(image) in labels]
    if not pairs:
        raise UserError(f"no ApolloScape image/label pairs under {root} (found {len(images)} images and "
                        f"{len(labels)} label files); expected {root}/{APOLLO_LAYOUT}. Download the data from "
                        f"{APOLLO_URL} and pass its folder as --data-root{describe_folder(root, APOLLO_NAME)}.")
    return pairs, len(images) - len(pairs), len(labels) - len(pairs)


def _apollo_frame(path: Path) -> tuple[str, str, str, str]:
    """(road, record, camera number, timestamp_Camera_N) of an image or a label file, to pair them."""
    road, _, record, camera, name = path.parts[-5:]
    match = _CAMERA_FOLDER.match(camera)
    stem = Path(name).stem
    return (road.split("_", 1)[-1], record, match.group(1) if match else camera,
            stem[:-len("_bin")] if stem.endswith("_bin") else stem)


def _apollo_split(pairs: list[tuple[Path, Path]], split: str, root: Path) -> list[tuple[Path, Path]]:
    """Every 10th record (index 9 mod 10 in sorted order) is val; every 10th pair if that empties a split."""
    records = sorted({(image.parts[-5], image.parts[-3]) for image, _ in pairs})
    val_records = set(records[9::10])
    is_val = [(image.parts[-5], image.parts[-3]) in val_records for image, _ in pairs]
    if all(is_val) or not any(is_val):
        is_val = [i % 10 == 9 for i in range(len(pairs))]
    chosen = [pair for pair, val in zip(pairs, is_val) if val == (split == "val")]
    if not chosen:
        raise UserError(f"only {len(pairs)} ApolloScape image/label pairs under {root}, too few for a {split} "
                        f"split (every 10th pair is val); add data or write {root}/list/{split}.txt "
                        f"(lines 'image_path label_path', relative to {root}).")
    return chosen


def _apollo_listed(root: Path, list_file: Path) -> list[tuple[Path, Path]]:
    """The pairs of a list file, each path checked."""
    listing, pairs = _Listing(), []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = _LIST_LINE.match(line.strip())
        if match is None:   # CULane's list/train.txt (images only) is the likely one: say so
            raise UserError(f"line {number} of {list_file} is not 'image_path label_path' (an image and a .png "
                            f"label, relative to {root}): {line.strip()[:120]!r}"
                            f"{describe_folder(root, APOLLO_NAME)}.")
        image, label = (_listed_path(root, token, list_file, listing, APOLLO_LAYOUT, APOLLO_TOP_FOLDERS)
                        for token in match.groups())
        pairs.append((image, label))
    if not pairs:
        raise UserError(f"{list_file} lists no images; write one 'image_path label_path' line per frame or "
                        f"delete it to split the data by record.")
    return pairs


def _listed_path(root: Path, token: str, list_file: Path, listing: _Listing, layout: str,
                 anchors: tuple[str, ...] = ()) -> Path:
    """A path of a list file: as written if absolute, relative to root (leading '/' ignored), or re-rooted at its
    first folder that starts with an anchor; each also with its camera folder spelled the other way."""
    parts = Path(token).parts
    candidates = ([Path(token)] if token.startswith("/") else []) + [root / token.lstrip("/")]
    candidates += [root.joinpath(*parts[i:]) for i, p in enumerate(parts) if p.startswith(anchors)][:1]
    for path in dict.fromkeys(candidates + [_respell_camera(path) for path in candidates]):
        if listing.exists(path):
            return path
    raise UserError(f"missing {candidates[-1]}, listed in {list_file}; re-extract the data or fix the list "
                    f"(paths are relative to {root}; expected layout {root}/{layout}).")


def _respell_camera(path: Path) -> Path:
    """``path`` with its 'Camera 5' folders written 'Camera_5' and vice versa (the file name stays)."""
    folders = [f"Camera{'_' if part[6] == ' ' else ' '}{match.group(1)}"
               if (match := _CAMERA_FOLDER.match(part)) else part for part in path.parts[:-1]]
    return Path(*folders, path.name)


# ---- CULane ---------------------------------------------------------------------------------------------------
CULANE_NAME = "CULane"   # as common.filecheck names it
_CULANE_FIX = f"re-extract it from the CULane archives ({CULANE_URL})."


class CULaneLanes(RoadFiles):
    """CULane (Pan et al., SCNN, AAAI 2018) per-lane segmentation in its published layout: 5 classes
    (``CULANE_CLASSES``: background and lanes 1-4 from left to right) and 255 (ignore) where present.

    ``root`` holds driver_*/.../*.jpg (1640x590), laneseg_label_w16/driver_*/.../*.png (8-bit, values 0..4) and
    list/train_gt.txt, list/val_gt.txt, whose lines are "/driver_.../00000.jpg /laneseg_label_w16/.../00000.png
    1 1 1 1" (paths relative to ``root``; the flags, which lanes exist, are not used). "test" needs
    list/test_gt.txt in that form: CULane's list/test.txt names images only. Every pair is checked when the data
    set is built, as in ``ApolloScapeLanes`` (label values 0..4 or 255). ``crop_top``, ``size``, ``verdicts`` and
    ``progress`` as in ``ApolloScapeLanes``.
    """

    LUT = _lookup_table([(v, v) for v in range(len(CULANE_CLASSES))] + [(IGNORE_INDEX, IGNORE_INDEX)])

    def __init__(self, root: str | Path, split: str, size: tuple[int, int] | None = None,
                 crop_top: float = 0.0, *, verdicts: Path | None = None, progress: bool = True) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        root = _require_root(root, CULANE_NAME, CULANE_LAYOUT, CULANE_URL)
        images, labels = _culane_listed(root, _culane_list(root, split))
        super().__init__(images, labels, self.LUT, CULANE_CLASSES, f"CULane {split} ({len(images)} images)",
                         _CULANE_FIX, size, crop_top)
        check_files(list(zip(images, labels)), _check_culane_pair, what=f"CULane {split} image/label pairs",
                    verdicts=verdicts, progress=progress)


def _check_culane_pair(image: Path, label: Path) -> None:
    """``_check_pair`` with CULane's values, at top level for ``check_files``' worker processes."""
    _check_pair(image, label, CULaneLanes.LUT, _CULANE_FIX)


def _culane_list(root: Path, split: str) -> Path:
    """root/list/{split}_gt.txt, which must exist."""
    list_file = root / "list" / f"{split}_gt.txt"
    if list_file.is_file():
        return list_file
    hint = describe_folder(root, CULANE_NAME)   # an ApolloScape folder passed with --dataset culane
    if split == "test":
        raise UserError(f"no {list_file}: CULane's list/test.txt names images only, without label paths; "
                        f"evaluate on split 'val', or write {list_file} in the form of train_gt.txt{hint}.")
    raise UserError(f"missing {list_file}; expected {root}/{CULANE_LAYOUT}. Download CULane from {CULANE_URL} "
                    f"and pass its folder as --data-root{hint}.")


def _culane_listed(root: Path, list_file: Path) -> tuple[list[Path], list[Path]]:
    listing, images, labels = _Listing(), [], []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise UserError(f"line {number} of {list_file} names no label file ({tokens[0]}); {list_file.name} "
                            f"must have lines '/driver_.../x.jpg /laneseg_label_w16/.../x.png 1 1 1 1'.")
        images.append(_listed_path(root, tokens[0], list_file, listing, CULANE_LAYOUT))
        labels.append(_listed_path(root, tokens[1], list_file, listing, CULANE_LAYOUT))
    if not images:
        raise UserError(f"{list_file} lists no images; expected lines '/driver_.../x.jpg "
                        f"/laneseg_label_w16/.../x.png 1 1 1 1'.")
    return images, labels


def road_dataset(kind: str, root: str | Path, split: str, size: tuple[int, int] | None = None,
                 crop_top: float = 0.0, *, verdicts: Path | None = None, progress: bool = True) -> RoadFiles:
    """The real data by name, for scripts: ``kind`` "apolloscape" (``ApolloScapeLanes``) or "culane"; every pair
    is checked now (``verdicts``, ``progress``: see ``ApolloScapeLanes``)."""
    kinds = {"apolloscape": ApolloScapeLanes, "culane": CULaneLanes}
    if kind not in kinds:
        raise UserError(f"unknown data set {kind!r}; choose --dataset {' or '.join(kinds)} (or no --data-root for "
                        f"the synthetic roads).")
    return kinds[kind](root, split, size=size, crop_top=crop_top, verdicts=verdicts, progress=progress)
