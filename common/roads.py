"""Road-marking segmentation data for IntRA-KD (Hou et al., CVPR 2020: ERFNet student, ResNet-101 teacher): the real
ApolloScape and CULane data in their published layouts. The synthetic road scenes for when no data is on disk
(classes ``ROAD_CLASSES``) are ``common.synthetic_roads.SyntheticRoads``.

- ``ApolloScapeLanes``: ApolloScape lane segmentation (36 classes, ``APOLLO_LABELS``), split by record.
- ``CULaneLanes``: CULane's per-lane masks (background + lanes 1..4) with its train_gt / val_gt lists.
- ``road_dataset(kind, root, split, ..., verdicts=None, progress=True)``: one of the two real data sets, by name.
- ``road_palette`` / ``colorize_roads``: figures. ``common.images.normalize`` makes the network input.

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
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from common.errors import UserError
from common.filecheck import check_files, describe_folder
from common.images import IGNORE_INDEX
from common.voc import read_image

__all__ = ["ROAD_CLASSES", "APOLLO_LABELS", "APOLLO_CLASSES", "CULANE_CLASSES", "IGNORE_INDEX",
           "ApolloScapeLanes", "CULaneLanes", "RoadFiles", "road_dataset", "road_palette", "colorize_roads"]

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
