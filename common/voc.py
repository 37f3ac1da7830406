"""PASCAL VOC 2012 segmentation data (plus the SBD "trainaug" set) and the thesis's augmentation. The synthetic
21-class stand-in for when no data is on disk is ``common.synthetic_scenes.SyntheticScenes``.

- ``voc_dataset(root, split)``: VOC 2012 "train" / "val", or "trainaug" (10,582 images) in either published form;
  every image/mask pair is checked when the data set is built (``check_item``, through ``common.filecheck``), so a
  broken file stops the run before training, not when the sampler reaches it hours in.
- ``augment``: source 004, Section 4.1.1 -- random scale [0.5, 2], horizontal flip, 256x256 crop, normalisation
  (``common.images.normalize``); ``augmented_item``: a data set's item through it, for ``StepBatches``.
- ``colorize``: masks in the VOC colours, for figures.

Every item is ``(image uint8 (3, H, W), mask int64 (H, W))``; mask values are class ids 0..20 and 255 (ignore).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from common.errors import UserError
from common.filecheck import check_files, describe_folder
from common.images import IGNORE_INDEX, normalize

NUM_CLASSES = 21
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

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
# Figures
# --------------------------------------------------------------------------------------------------------------
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


def augmented_item(dataset, crop: int, scale: tuple[float, float], index: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Item ``index`` of ``dataset`` through ``augment``: the ``load`` of ``common.training.StepBatches`` for VOC and
    its synthetic stand-in (bind the first three arguments with ``functools.partial``; a top-level function, so
    that DataLoader workers can pickle it)."""
    image, mask = dataset[index]
    return augment(image, mask, generator, crop=crop, scale=tuple(scale))


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
