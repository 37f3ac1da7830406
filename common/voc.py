"""PASCAL VOC 2012 segmentation data (plus the SBD "trainaug" set), the thesis's augmentation, and a synthetic
21-class stand-in for when no data is on disk.

- ``voc_dataset(root, split)``: VOC 2012 "train" / "val", or "trainaug" (10,582 images) in either published form;
  every image/mask pair is checked when the data set is built (``check_item``, through ``common.filecheck``), so a
  broken file stops the run before training, not when the sampler reaches it hours in.
- ``SyntheticScenes``: deterministic cluttered scenes with objects of 20 classes, VOC-like labels (255 borders).
- ``augment``: source 004, Section 4.1.1 -- random scale [0.5, 2], horizontal flip, 256x256 crop, normalisation.
- ``normalize`` / ``denormalize`` / ``colorize``: network input, and figures.

Every item is ``(image uint8 (3, H, W), mask int64 (H, W))``; mask values are class ids 0..20 and 255 (ignore).
"""
from __future__ import annotations

import colorsys
import os
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from common.errors import UserError
from common.filecheck import check_files, describe_folder

NUM_CLASSES = 21
IGNORE_INDEX = 255
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
MEAN = (0.485, 0.456, 0.406)  # source 004, Section 4.1.1 (the ImageNet statistics)
STD = (0.229, 0.224, 0.225)

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
SBD_URL = "http://home.bharathh.info/pubs/codes/SBD/download.html"
VOC_LAYOUT = ("VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, "
              "ImageSets/Segmentation/{train,val}.txt}")
TRAINAUG_LAYOUT = ("either VOCdevkit/VOC2012/SegmentationClassAug/*.png with a list train_aug.txt (in "
                   "VOC2012/ImageSets/Segmentation/ or the data root), or SBD's benchmark_RELEASE/dataset/"
                   "{img/*.jpg, cls/*.mat, train.txt, val.txt} next to VOCdevkit/")


def _voc_palette() -> np.ndarray:
    """The colour map of the VOC development kit (bit-interleaved class ids): (256, 3) uint8."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        palette[i] = rgb
    return palette


VOC_PALETTE = _voc_palette()  # what VOC's palette PNGs carry; VOC_PALETTE[255] is the cream (224, 224, 192)


# --------------------------------------------------------------------------------------------------------------
# Network input and figures
# --------------------------------------------------------------------------------------------------------------
def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) or (N, 3, H, W) in 0..255 -> float32 normalised with ``MEAN`` / ``STD`` (004, 4.1.1)."""
    mean = torch.tensor(MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, device=image.device).view(3, 1, 1)
    return (image.float() / 255.0 - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """The inverse of ``normalize``, for figures: float in [0, 1], same shape."""
    mean = torch.tensor(MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, device=image.device).view(3, 1, 1)
    return (image.float() * std + mean).clamp(0.0, 1.0)


def colorize(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 in the VOC colours, ignore (255) white, for prediction panels."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    palette = VOC_PALETTE.copy()
    palette[IGNORE_INDEX] = 255
    return palette[np.asarray(mask).astype(np.int64)]


# --------------------------------------------------------------------------------------------------------------
# Augmentation (source 004, Section 4.1.1)
# --------------------------------------------------------------------------------------------------------------
def augment(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, crop: int = 256,
            scale: tuple[float, float] = (0.5, 2.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale in ``scale`` (bilinear image, nearest mask), random horizontal flip, random ``crop`` x ``crop``
    crop, then ``normalize``: the training augmentation of 004, Section 4.1.1.

    Where the scaled image is smaller than the crop it is padded first, centred: the image with 0, the mask with
    255 -- padding is ignored by the loss, never taught as background. Every random draw comes from
    ``generator`` (always four draws, whatever the sizes), so a batch is a pure function of the seed and a
    resumed run sees the batches an uninterrupted one would.
    Input: image uint8 (3, H, W), mask int64 (H, W). Returns float32 (3, crop, crop), int64 (crop, crop).
    """
    s_draw, flip_draw, top_draw, left_draw = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    factor = scale[0] + (scale[1] - scale[0]) * s_draw
    h, w = image.shape[-2:]
    size = [max(1, round(h * factor)), max(1, round(w * factor))]
    image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    # nearest-exact samples pixel centres, so the mask stays aligned with the bilinear image (torch's plain
    # "nearest" is shifted by half a pixel); uint8 because nearest resizing of int64 is not implemented
    mask = TF.resize(mask.to(torch.uint8)[None], size, interpolation=InterpolationMode.NEAREST_EXACT)
    if flip_draw < 0.5:
        image, mask = TF.hflip(image), TF.hflip(mask)
    pad_h, pad_w = max(0, crop - size[0]), max(0, crop - size[1])
    if pad_h or pad_w:
        padding = [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]  # left, top, right, bottom
        image = TF.pad(image, padding, fill=0)
        mask = TF.pad(mask, padding, fill=IGNORE_INDEX)
    h, w = image.shape[-2:]
    top, left = int(top_draw * (h - crop + 1)), int(left_draw * (w - crop + 1))
    image, mask = TF.crop(image, top, left, crop, crop), TF.crop(mask, top, left, crop, crop)
    return normalize(image), mask[0].long()


# --------------------------------------------------------------------------------------------------------------
# The real data: VOC 2012 and SBD files
# --------------------------------------------------------------------------------------------------------------
class SegmentationFiles(torch.utils.data.Dataset):
    """Image/mask file pairs read lazily: item i is (image uint8 (3, H, W), mask int64 (H, W)).

    ``description`` says which data (and for "trainaug" which published form) was found. Masks are .png (VOC
    palette or grey PNGs of class ids) or SBD .mat files. ``voc_dataset`` has checked every pair already; the
    checks here repeat as they are read, in case a file changed since.
    """

    def __init__(self, names: list[str], images: list[Path], masks: list[Path], description: str) -> None:
        self.names, self.images, self.masks, self.description = names, images, masks, description

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(self.images[i])
        mask = read_mask(self.masks[i])
        _check_same_size(self.images[i], image.shape[-2:], self.masks[i], mask.shape)
        return image, mask

    def __repr__(self) -> str:
        return f"SegmentationFiles({len(self)} images: {self.description})"


def voc_dataset(root: str | Path, split: str, *, verdicts: Path | None = None,
                progress: bool = True) -> SegmentationFiles:
    """PASCAL VOC 2012 segmentation data: ``split`` "train" (1,464), "val" (1,449) or "trainaug" (10,582).

    ``root`` is the folder holding VOCdevkit/ (torchvision's convention), or VOCdevkit/ itself, or
    VOCdevkit/VOC2012. "train" and "val" are the VOC 2012 Segmentation lists, the same files
    ``torchvision.datasets.VOCSegmentation(root, year="2012", image_set=split)`` reads.

    "trainaug" is VOC 2012 train extended with the SBD annotations (Hariharan et al. 2011), minus VOC 2012 val.
    Both published forms are accepted; the returned dataset's ``description`` says which one was found:
    (a) the common PNG conversion, VOC2012/SegmentationClassAug/*.png plus the list train_aug.txt (looked for in
    VOC2012/ImageSets/Segmentation/, .../SegmentationAug/, the given root, each level of VOCdevkit/VOC2012; lines:
    "name" or "/JPEGImages/x.jpg /SegmentationClassAug/x.png"), images from VOC2012/JPEGImages. Used when found.
    (b) the original SBD release, benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt} (looked
    for in the same folders): SBD train + SBD val + VOC train, de-duplicated, minus VOC val -- the standard
    10,582 construction. Images on the VOC train list take VOC's own mask (with its 255 borders, as mmsegmentation
    does), the others SBD's ``GTcls.Segmentation`` (read as ``torchvision.datasets.SBDataset`` does).

    Everything is checked here, before any training: missing folders, list files or listed files at once (the
    first one found); then every image/mask pair with ``check_item`` (unreadable files, RGB masks, label values
    outside 0..20 and 255, a mask whose size is not its image's), in worker processes when there are many, and
    one ``UserError`` naming every bad file. ``verdicts``: the JSON file where ``common.filecheck`` remembers the
    pairs that passed (by path, size and modification time), so the next run skips them -- the scripts pass
    ``Path(cfg.cache_dir) / common.filecheck.VERDICTS_FILE``; None checks every pair every time. ``progress``:
    show a progress bar while checking. All errors are ``UserError`` naming the file.
    """
    if split not in ("train", "val", "trainaug"):
        raise ValueError(f"split must be 'train', 'val' or 'trainaug', got {split!r}")
    voc = find_voc2012(root)
    if split == "trainaug":
        files = _trainaug(Path(root), voc)
    else:
        list_file = _require(voc / "ImageSets" / "Segmentation" / f"{split}.txt", VOC_LAYOUT, VOC_URL)
        names = read_list(list_file)
        images = _listed_files(voc / "JPEGImages", names, ".jpg", list_file)
        masks = _listed_files(voc / "SegmentationClass", names, ".png", list_file)
        files = SegmentationFiles(names, images, masks, f"VOC 2012 {split} from {voc}")
    check_files(list(zip(files.images, files.masks)), check_item, what=f"VOC 2012 {split} image/mask pairs",
                verdicts=verdicts, progress=progress)
    return files


def find_voc2012(root: str | Path) -> Path:
    """The VOC2012 folder, given the folder holding VOCdevkit/, VOCdevkit/ itself, or VOCdevkit/VOC2012."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder. Download PASCAL VOC 2012 from {VOC_URL} and pass "
                        f"the folder holding {VOC_LAYOUT}.")
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if candidate.is_dir() and (candidate.name == "VOC2012" or (candidate / "JPEGImages").is_dir()):
            return candidate
    raise UserError(f"no VOC 2012 data under {root}: expected {root / VOC_LAYOUT} (or pass VOCdevkit/ or "
                    f"VOCdevkit/VOC2012 itself){describe_folder(root, 'PASCAL VOC 2012')}. "
                    f"Download it from {VOC_URL}.")


def _trainaug(root: Path, voc: Path) -> SegmentationFiles:
    # the folders where people put SBD and train_aug.txt: the given root and every level of VOCdevkit/VOC2012
    places = list(dict.fromkeys([root, voc.parent.parent, voc.parent, voc]))
    aug_dir = voc / "SegmentationClassAug"
    lists = [p / "train_aug.txt" for p in [voc / "ImageSets" / "Segmentation", voc / "ImageSets" / "SegmentationAug"]
             + places]
    aug_list = next((p for p in lists if p.is_file()), None)
    if aug_dir.is_dir() and aug_list is not None:
        return _trainaug_png(voc, aug_dir, aug_list)
    sbd = next((p / "benchmark_RELEASE" / "dataset" for p in places
                if (p / "benchmark_RELEASE" / "dataset").is_dir()), None)
    if sbd is not None:
        return _trainaug_sbd(voc, sbd)
    if aug_dir.is_dir():
        raise UserError(f"found {aug_dir} but no list train_aug.txt in any of "
                        f"{', '.join(str(p.parent) for p in lists)}; put train_aug.txt (one image name a line) "
                        f"in {voc / 'ImageSets' / 'Segmentation'}.")
    raise UserError(f"no trainaug data for {voc}: neither {aug_dir} nor benchmark_RELEASE/dataset in "
                    f"{', '.join(map(str, places))}{describe_folder(root, 'PASCAL VOC 2012')}. "
                    f"Expected {TRAINAUG_LAYOUT}; SBD is at {SBD_URL}.")


def _trainaug_png(voc: Path, aug_dir: Path, aug_list: Path) -> SegmentationFiles:
    names, mask_names = [], []
    for line in _read_lines(aug_list):
        tokens = line.split()
        names.append(_stem(tokens[0]))
        mask_names.append(_stem(tokens[1]) if len(tokens) > 1 else names[-1])
    images = _listed_files(voc / "JPEGImages", names, ".jpg", aug_list)
    masks = _listed_files(aug_dir, mask_names, ".png", aug_list)
    return SegmentationFiles(names, images, masks,
                             f"VOC 2012 trainaug, form (a): {aug_dir} PNGs listed in {aug_list}")


def _trainaug_sbd(voc: Path, sbd: Path) -> SegmentationFiles:
    lists = voc / "ImageSets" / "Segmentation"
    voc_train = read_list(_require(lists / "train.txt", VOC_LAYOUT, VOC_URL))
    voc_val = set(read_list(_require(lists / "val.txt", VOC_LAYOUT, VOC_URL)))
    sbd_layout = f"benchmark_RELEASE/dataset/{{img/*.jpg, cls/*.mat, train.txt, val.txt}} ({SBD_URL})"
    sbd_names = (read_list(_require(sbd / "train.txt", sbd_layout, SBD_URL))
                 + read_list(_require(sbd / "val.txt", sbd_layout, SBD_URL)))
    names = [n for n in dict.fromkeys(sbd_names + voc_train) if n not in voc_val]
    on_voc = set(voc_train)
    from_voc = [n for n in names if n in on_voc]
    from_sbd = [n for n in names if n not in on_voc]
    files = dict(zip(from_voc, zip(_listed_files(voc / "JPEGImages", from_voc, ".jpg", lists / "train.txt"),
                                   _listed_files(voc / "SegmentationClass", from_voc, ".png", lists / "train.txt"))))
    files.update(zip(from_sbd, zip(_listed_files(sbd / "img", from_sbd, ".jpg", sbd / "train.txt or val.txt"),
                                   _listed_files(sbd / "cls", from_sbd, ".mat", sbd / "train.txt or val.txt"))))
    return SegmentationFiles(names, [files[n][0] for n in names], [files[n][1] for n in names],
                             f"VOC 2012 trainaug, form (b): SBD {sbd} train+val + VOC train, minus VOC val")


def _require(path: Path, layout: str, url: str) -> Path:
    if not path.is_file():
        raise UserError(f"missing {path}; expected the layout {layout}. Download the data from {url}.")
    return path


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_list(path: Path) -> list[str]:
    """Image names of a list file: one a line, either a bare name or a path (its file name without suffix)."""
    return [_stem(line.split()[0]) for line in _read_lines(path)]


def _stem(token: str) -> str:
    name = token.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if name.endswith((".jpg", ".png", ".mat")) else name


def _listed_files(folder: Path, names: list[str], suffix: str, list_file: Path | str) -> list[Path]:
    """``folder/name+suffix`` for every name; a missing folder or file is a UserError (one listing, not a stat each)."""
    if not names:
        return []
    if not folder.is_dir():
        raise UserError(f"missing folder {folder}, needed by {list_file}; expected {VOC_LAYOUT} "
                        f"(trainaug: {TRAINAUG_LAYOUT}). Get VOC from {VOC_URL} and SBD from {SBD_URL}.")
    present = set(os.listdir(folder))
    for name in names:
        if name + suffix not in present:
            raise UserError(f"missing {folder / (name + suffix)}, listed in {list_file}; re-extract the data "
                            f"(VOC: {VOC_URL}, SBD: {SBD_URL}) or remove the line.")
    return [folder / (name + suffix) for name in names]


_PIL_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, SyntaxError, ValueError, TypeError)


def check_item(image: Path, mask: Path) -> None:
    """The check ``voc_dataset`` runs on every pair before training (through ``common.filecheck.check_files``, so
    top level: worker processes run it): the image readable (``check_image``), the mask read in full with every
    label value checked (``read_mask_array``), and the two of one size. A ``UserError`` naming the bad file.
    About 1.5 ms a VOC-sized pair (500x375, an 85 KB JPEG) on one core, half of it the JPEG, half the mask; all
    10,582 trainaug pairs took 9.1 s on 2 cores (README), once: ``common.filecheck`` remembers those that passed."""
    _check_same_size(image, check_image(image), mask, read_mask_array(mask).shape)


def check_image(path: Path) -> tuple[int, int]:
    """The (height, width) of a readable image; a UserError naming ``path`` if it is not.

    A JPEG is decoded at 1/8 scale (its DCT scaling): every byte of the compressed data is still read, so a
    truncated or garbled file fails here as it would in training, at a third of a full decode's cost -- the
    header alone would pass a download cut short."""
    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")
            width, height = img.size  # before draft(), which shrinks it
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # no-op for formats other than JPEG
            img.load()
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise UserError(f"{path} is not a readable image ({e}); re-extract it from {VOC_URL}.") from e
    return height, width


def _check_same_size(image: Path, image_hw: tuple[int, ...], mask: Path, mask_hw: tuple[int, ...]) -> None:
    image_hw, mask_hw = tuple(image_hw), tuple(mask_hw)  # torch.Size prints as torch.Size([...])
    if image_hw != mask_hw:
        raise UserError(f"{mask} is {mask_hw} (height, width) but its image {image} is {image_hw}; each mask "
                        f"must match its image. Re-extract the data from {VOC_URL} (SBD: {SBD_URL}).")


def read_image(path: Path) -> torch.Tensor:
    """A JPEG (or any image Pillow reads) as uint8 (3, H, W) RGB."""
    from PIL import Image

    try:  # Pillow's warnings on a damaged file would precede our one-line error
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")
            array = np.array(img.convert("RGB"))
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise UserError(f"{path} is not a readable image ({e}); re-extract it from {VOC_URL}.") from e
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_mask(path: Path) -> torch.Tensor:
    """A label file as int64 (H, W) class ids, checked: a VOC/SegmentationClassAug PNG or an SBD .mat."""
    return torch.from_numpy(read_mask_array(path).astype(np.int64))


def read_mask_array(path: Path) -> np.ndarray:
    """A label file's (H, W) class ids as stored (uint8 for VOC and SBD), checked by ``check_labels``."""
    mask = _read_sbd_mat(path) if path.suffix == ".mat" else _read_label_png(path)
    check_labels(mask, str(path))
    return mask


def _read_label_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")
            mode = img.mode
            # a palette PNG's pixels are palette indices = class ids; its RGB colours are only for viewing
            array = np.array(img) if mode in ("P", "L") else None
    except (*_PIL_ERRORS, Image.DecompressionBombError) as e:
        raise UserError(f"{path} is not a readable PNG ({e}); re-extract it from {VOC_URL}.") from e
    if mode in ("RGB", "RGBA"):
        raise UserError(f"{path} is an {mode} image, but VOC masks are palette ('P') PNGs whose pixel values are "
                        f"the class ids; this looks like a saved colour rendering. Use the original "
                        f"SegmentationClass file from {VOC_URL}, or convert colours back to ids with VOC_PALETTE.")
    if array is None:
        raise UserError(f"{path} is a mode-{mode} PNG; masks must be 8-bit palette ('P') or grey ('L') PNGs of "
                        f"class ids 0..20 and 255. Use the original files from {VOC_URL}.")
    return array


def _read_sbd_mat(path: Path) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    _check_mat_v5(path)
    try:  # the access path of torchvision.datasets.SBDataset: struct GTcls, field Segmentation (uint8 HxW)
        array = np.asarray(loadmat(str(path))["GTcls"][0]["Segmentation"][0])
    except (OSError, ValueError, TypeError, KeyError, IndexError, NotImplementedError, MatReadError) as e:
        raise UserError(f"{path} is not a readable SBD label file (a MATLAB struct GTcls with a field "
                        f"Segmentation) ({type(e).__name__}: {e}); re-download SBD from {SBD_URL}.") from e
    if array.ndim != 2:
        raise UserError(f"{path}: GTcls.Segmentation has shape {array.shape}, not (height, width); "
                        f"re-download SBD from {SBD_URL}.")
    return array


def _check_mat_v5(path: Path) -> None:
    """SBD's cls/*.mat are MATLAB v5 files; a v4 or v7.3 (HDF5) file was re-saved by someone, and loadmat reads
    v4 without complaint (then fails on the struct) and v7.3 not at all, so say what the file is instead."""
    from scipy.io.matlab import MatReadError, matfile_version

    try:
        major, minor = matfile_version(str(path))
    except (OSError, ValueError, IndexError, MatReadError) as e:  # IndexError: a header cut short
        raise UserError(f"{path} is not a MATLAB file, or one cut short ({type(e).__name__}: {e}); SBD's "
                        f"cls/*.mat are MATLAB v5 files. Re-download SBD from {SBD_URL}.") from e
    if major != 1:
        version = {0: "v4", 2: "v7.3 (HDF5)"}.get(major, f"version {major}.{minor}")
        raise UserError(f"{path} is a MATLAB {version} file, but SBD's cls/*.mat are MATLAB v5 files (as "
                        f"scipy.io.savemat writes them); re-download SBD from {SBD_URL}.")


def check_labels(mask: torch.Tensor | np.ndarray, source: str) -> None:
    """A UserError naming ``source`` and the bad values if ``mask`` holds anything but 0..20 and 255."""
    values = _distinct_values(mask)
    bad = values[((values < 0) | (values >= NUM_CLASSES) | (values % 1 != 0)) & (values != IGNORE_INDEX)]
    if len(bad):
        raise UserError(f"{source} holds label values {bad[:10].tolist()} outside 0..{NUM_CLASSES - 1} and "
                        f"{IGNORE_INDEX} (ignore); VOC masks store class ids as palette indices. Re-extract it "
                        f"from {VOC_URL} (or {SBD_URL}).")


def _distinct_values(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """The sorted distinct values; for uint8 (every VOC and SBD file) by counting, 5x faster than sorting --
    this runs on all 10,582 trainaug masks before training."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.dtype == np.uint8:
        return np.flatnonzero(np.bincount(array.ravel(), minlength=256))
    return np.unique(array)


# --------------------------------------------------------------------------------------------------------------
# Synthetic scenes: a stand-in for VOC
# --------------------------------------------------------------------------------------------------------------
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


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean noise of std about 1 with blobs about ``scale`` pixels across: a coarse random grid smoothed by
    cubic B-spline upsampling, done as two small matrix products (scipy's zoom is 100x slower here)."""
    h, w = shape
    coarse = rng.standard_normal((int(h / scale) + 4, int(w / scale) + 4)).astype(np.float32)
    smooth = _bspline_matrix(h, coarse.shape[0], scale) @ coarse @ _bspline_matrix(w, coarse.shape[1], scale).T
    return smooth / 0.48  # the B-spline's gain on white noise: sqrt of the summed squared weights, squared


def _bspline_matrix(n_out: int, n_in: int, scale: float) -> np.ndarray:
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
    "speckle": lambda x, y, p, a, rng, ext: (_smooth_noise(rng, x.shape, p / 2) > 0.6).astype(np.float32),
    "spots": lambda x, y, p, a, rng, ext: (_smooth_noise(rng, x.shape, 1.5 * p) > 0.8).astype(np.float32),
    "plain": lambda x, y, p, a, rng, ext: 0.07 * np.clip(_smooth_noise(rng, x.shape, 6.0), -3, 3) + 0.3,
}


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue / 360.0) % 1.0, saturation, value), dtype=np.float32)


class SyntheticScenes(torch.utils.data.Dataset):
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
        self.split, self.num_images, self.seed = split, num_images, seed
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        weights = np.array([STYLES[c].weight for c in range(1, NUM_CLASSES)])
        self._class_p = weights / weights.sum()

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.num_images:
            raise IndexError(f"image {i} of a {self.num_images}-image SyntheticScenes")
        if i not in self._cache:
            self._cache[i] = self.make_scene(i)
        image, mask = self._cache[i]
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask.astype(np.int64))

    def __repr__(self) -> str:
        return f"SyntheticScenes({self.split!r}, {self.num_images} images of {self.size[0]}x{self.size[1]}, " \
               f"seed {self.seed})"

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
        img *= 1.0 + 0.12 * _smooth_noise(rng, (h, w), 48 * unit)[..., None].clip(-3, 3)  # uneven lighting
        img = ndimage.gaussian_filter(img, (0.5 * unit, 0.5 * unit, 0))                       # camera blur
        img += 0.03 * rng.standard_normal(img.shape, dtype=np.float32)                           # sensor noise
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), labels

    def _background(self, rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
        """Cluttered background (class 0): two muted colours split at a wavy horizon, smooth colour noise, and
        distractor blobs painted like objects (object textures and hues) but with no object's shape."""
        top, bottom = (_hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.9)) for _ in range(2))
        rows = np.arange(h, dtype=np.float32)[:, None]
        horizon = rng.uniform(0.2, 0.8) * h + 0.05 * h * _smooth_noise(rng, (1, w), 40 * unit)[0]
        sky = 1.0 / (1.0 + np.exp((rows - horizon[None, :]) / (2.0 * unit)))
        img = sky[..., None] * top + (1 - sky[..., None]) * bottom
        img = img + 0.03 * np.stack([_smooth_noise(rng, (h, w), 16 * unit) for _ in range(3)], -1)
        img += 0.03 * _smooth_noise(rng, (h, w), 2.5 * unit)[..., None]  # fine grain
        xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        for _ in range(rng.poisson(2.0)):
            blob = _smooth_noise(rng, (h, w), rng.uniform(10, 30) * unit) > rng.uniform(1.0, 1.7)
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
