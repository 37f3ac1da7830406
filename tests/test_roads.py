"""Tests for common/roads.py: the synthetic road scenes, and the ApolloScape and CULane loaders on tiny files
written here in the published layouts."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import common.roads as roads
from common.errors import UserError
from common.filecheck import PARALLEL_FROM
from common.images import IGNORE_INDEX
from common.roads import (APOLLO_CLASSES, APOLLO_LABELS, ApolloScapeLanes, CULANE_CLASSES, CULaneLanes, ROAD_CLASSES,
                          colorize_roads, road_dataset, road_palette)
from common.synthetic_roads import SyntheticRoads

SOLID, DASHED, DOUBLE_YELLOW, STOP, ZEBRA, STRAIGHT, TURN = range(1, 8)
H, W = 8, 12   # the tiny real-format frames (conftest.py's apollo_writer writes ApolloScape's at this size)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---- synthetic roads ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    data = SyntheticRoads("train", 64, (64, 128))
    return [data.make_scene(i) for i in range(64)]


def test_synthetic_items_are_a_function_of_split_seed_and_index():
    a = SyntheticRoads("train", 6, (32, 48), seed=3)
    b = SyntheticRoads("train", 6, (32, 48), seed=3)
    image, mask = a[4]
    assert torch.equal(image, b[4][0]) and torch.equal(mask, b[4][1])
    assert torch.equal(image, a[4][0])                        # memoised, unchanged
    assert not torch.equal(image, a[3][0])
    assert not torch.equal(image, SyntheticRoads("train", 6, (32, 48), seed=4)[4][0])


def test_synthetic_splits_come_from_different_streams():
    images = [SyntheticRoads(split, 2, (32, 48))[1][0] for split in ("train", "val", "test")]
    assert not torch.equal(images[0], images[1])
    assert not torch.equal(images[0], images[2]) and not torch.equal(images[1], images[2])
    with pytest.raises(ValueError):
        SyntheticRoads("trainval")


def test_synthetic_shapes_types_and_attributes():
    data = SyntheticRoads("val", 3, (48, 80))
    image, mask = data[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 80)
    assert mask.dtype == torch.int64 and mask.shape == (48, 80)
    assert int(mask.min()) >= 0 and int(mask.max()) < len(ROAD_CLASSES)
    assert data.num_classes == len(ROAD_CLASSES) == 8 and data.class_names == ROAD_CLASSES
    assert "val" in data.name and "3 images" in data.name and len(data) == 3
    with pytest.raises(IndexError):
        data[3]


@pytest.mark.slow
def test_synthetic_classes_all_appear_are_sparse_and_rare_ones_are_rarer(train_scenes):
    masks = np.stack([mask for _, mask in train_scenes])
    counts = np.bincount(masks.ravel(), minlength=256)
    assert counts[len(ROAD_CLASSES):].sum() == 0                # no ignore, nothing out of range
    assert (counts[:len(ROAD_CLASSES)] > 0).all()               # every class somewhere in 64 images
    frequency = counts[:len(ROAD_CLASSES)] / masks.size
    assert 0.005 < frequency[1:].sum() < 0.10                   # markings are sparse
    for rare in (STOP, ZEBRA, STRAIGHT, TURN):
        assert frequency[rare] < min(frequency[SOLID], frequency[DASHED])
        assert (masks == rare).any(axis=(1, 2)).mean() < 0.35   # and present in few images
    assert (masks == SOLID).any(axis=(1, 2)).mean() > 0.6


@pytest.mark.slow
def test_synthetic_vehicles_occlude_markings():
    data = SyntheticRoads("train", 64, (64, 128))
    occluded = 0
    for i in range(0, 64, 2):
        (_, mask), (_, clear_mask) = data.make_scene(i), data.make_scene(i, vehicles=False)
        marked = mask > 0
        assert np.array_equal(mask[marked], clear_mask[marked])  # vehicles only ever remove marking pixels
        occluded += int(((clear_mask > 0) & ~marked).sum())
    assert occluded > 20


@pytest.mark.slow
def test_synthetic_images_vary_in_lighting(train_scenes):
    brightness = np.array([image.mean() for image, _ in train_scenes])
    assert brightness.min() < 60 and brightness.max() > 110    # night-ish and bright days


def test_colorize_roads_gives_distinct_colours_and_white_ignore():
    palette = road_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette[:len(APOLLO_CLASSES)]}) == len(APOLLO_CLASSES)
    mask = torch.tensor([[0, 1, 7], [255, 3, 35]])
    rgb = colorize_roads(mask)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert (rgb[1, 0] == 255).all() and (rgb[0, 0] == 0).all()
    assert np.array_equal(rgb, colorize_roads(mask.numpy()))


# ---- ApolloScape, in the published layout ---------------------------------------------------------------------
def expected_train_ids(ids: np.ndarray) -> np.ndarray:
    table = {label_id: train_id for _, label_id, train_id in APOLLO_LABELS}
    return np.vectorize(table.get)(ids)


@pytest.fixture
def apollo_records(tmp_path: Path, apollo_writer) -> Path:
    """10 records on two roads, one frame each from Camera 5, and a Camera 6 frame in the last record."""
    for k in range(10):
        road = "road02" if k < 6 else "road03"
        apollo_writer.write(tmp_path, road, f"Record{k + 1:03d}", 5, f"170927_0638{k:05d}", apollo_writer.ids(k))
    apollo_writer.write(tmp_path, "road03", "Record010", 6, "170927_0638xxxxx", apollo_writer.ids(99))
    return tmp_path


def test_apollo_maps_label_ids_to_train_ids(apollo_records, apollo_writer):
    data = ApolloScapeLanes(apollo_records, "train")
    assert data.num_classes == 36 == len(APOLLO_CLASSES) and data.class_names[18] == "c_wy_z"
    image, mask = data[0]
    assert image.dtype == torch.uint8 and image.shape == (3, H, W) and mask.dtype == torch.int64
    assert np.array_equal(mask.numpy(), expected_train_ids(apollo_writer.ids(0)))
    assert mask[0, 1] == 1 and mask[0, 3] == 18 and mask[0, 4] == IGNORE_INDEX and mask[0, 6] == 35


def test_apollo_splits_by_record_with_both_cameras(apollo_records):
    train = ApolloScapeLanes(apollo_records, "train")
    val = ApolloScapeLanes(apollo_records, "val")
    assert len(train) == 9 and len(val) == 2                        # Record010 (index 9): both cameras
    assert {p.parts[-3] for p in val.images} == {"Record010"}
    assert {p.parts[-2] for p in val.images} == {"Camera 5", "Camera 6"}
    assert val.images == ApolloScapeLanes(apollo_records, "test").images
    assert "train (9 images" in train.name


def test_apollo_falls_back_to_every_tenth_pair_and_skips_incomplete_pairs(tmp_path, apollo_writer):
    for k in range(12):
        apollo_writer.write(tmp_path, "road04", "Record001", 5, f"1712_{k:02d}", apollo_writer.ids(k))
    apollo_writer.write(tmp_path, "road04", "Record001", 5, "1712_nolabel", None)
    apollo_writer.write(tmp_path, "road04", "Record001", 6, "1712_noimage", apollo_writer.ids(0), image=False)
    train, val = ApolloScapeLanes(tmp_path, "train"), ApolloScapeLanes(tmp_path, "val")
    assert len(train) == 11 and [p.name for p in val.images] == ["1712_09_Camera_5.jpg"]
    assert train.frames_without_label == 1 and train.labels_without_frame == 1
    left_out = "1 frame without a label file and 1 label file without a frame left out"
    assert f"train (11 images; {left_out}; split by record)" in train.name and left_out in repr(val)


def test_apollo_counts_every_frame_left_out_and_says_nothing_when_none_are(apollo_records, apollo_writer):
    assert "left out" not in ApolloScapeLanes(apollo_records, "train").name
    for k in range(3):
        apollo_writer.write(apollo_records, "road02", "Record001", 5, f"nolabel{k}", None)
    data = ApolloScapeLanes(apollo_records, "train")
    assert "(9 images; 3 frames without a label file left out; split by record)" in data.name


def test_apollo_uses_a_list_file(apollo_records, apollo_writer):
    frames = sorted(apollo_records.glob("ColorImage_road*/ColorImage/*/*/*.jpg"))
    labels = [str(p).replace("ColorImage_", "Labels_").replace("/ColorImage/", "/Label/")[:-4] + "_bin.png"
              for p in frames]
    rel = [(str(p.relative_to(apollo_records)), str(Path(q).relative_to(apollo_records)))
           for p, q in zip(frames, labels)]
    (apollo_records / "list").mkdir()
    (apollo_records / "list" / "train.txt").write_text(
        f"{rel[3][0]} {rel[3][1]}\n"                                     # paths with a space (Camera 5)
        f"/{rel[0][0]} /{rel[0][1]} 1 1 1 1\n\n"                         # CULane-style leading '/' and flags
        f"/home/someone/ApolloScapes/{rel[7][0]} /home/someone/ApolloScapes/{rel[7][1]}\n")  # IntRA-KD's
    data = ApolloScapeLanes(apollo_records, "train")
    assert data.images == [frames[3], frames[0], frames[7]] and len(data) == 3
    assert np.array_equal(data[1][1].numpy(), expected_train_ids(apollo_writer.ids(0)))
    assert len(ApolloScapeLanes(apollo_records, "val")) == 2           # no val.txt: split by record
    (apollo_records / "list" / "train.txt").write_text(f"{rel[3][0]} {rel[3][1][:-8]}_missing.png\n")
    with pytest.raises(UserError, match="_missing.png") as e:
        ApolloScapeLanes(apollo_records, "train")
    one_line(e)


def intra_kd_line(frame: Path) -> str:
    """A line of IntRA-KD's list/val.txt (github.com/cardwing/Codes-for-IntRA-KD): its authors' absolute paths,
    'Camera_5' folders, and four lane flags."""
    road, _, record, _, name = frame.parts[-5:]
    camera = "Camera_" + name[-5]
    return (f"/home/houyuenan/ApolloScapes/{road}/ColorImage/{record}/{camera}/{name} "
            f"/home/houyuenan/ApolloScapes/{road.replace('ColorImage_', 'Labels_')}/Label/{record}/{camera}/"
            f"{name[:-4]}_bin.png 1 1 1 1")


@pytest.mark.parametrize("space", [" ", "_"])
def test_apollo_reads_intra_kds_list_files(tmp_path, space, apollo_writer):
    for k in range(4):
        apollo_writer.write(tmp_path, f"road0{2 + k // 2}", f"Record00{k}", 5 + k % 2, f"171206_06112{k}",
                            apollo_writer.ids(k), space=space)
    frames = sorted(tmp_path.glob("ColorImage_road*/ColorImage/*/*/*.jpg"))
    assert len(frames) == 4 and len(ApolloScapeLanes(tmp_path, "train")) == 4    # either folder spelling
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "val.txt").write_text("".join(intra_kd_line(f) + "\n" for f in frames[::-1]))
    val = ApolloScapeLanes(tmp_path, "val")
    assert val.images == frames[::-1] and str(tmp_path / "list" / "val.txt") in val.name
    assert val.labels[0].parent.name == f"Camera{space}6" and val.labels[0].is_file()
    assert np.array_equal(val[3][1].numpy(), expected_train_ids(apollo_writer.ids(0)))
    assert ApolloScapeLanes(tmp_path, "test").images == val.images           # test reads val.txt


@pytest.fixture
def culane_with_its_image_lists(culane: Path) -> Path:
    """CULane as published also has list/train.txt and val.txt, which name images only."""
    for split, frames in CULANE_FRAMES.items():
        (culane / "list" / f"{split}.txt").write_text("".join(f"/{frame}.jpg\n" for frame in frames))
    return culane


@pytest.mark.parametrize("split", ["train", "val"])
def test_culane_given_as_apolloscape_says_so(culane_with_its_image_lists, split):
    (culane_with_its_image_lists / "list" / "val.txt").unlink()                 # val: looks for pairs instead
    with pytest.raises(UserError, match=rf"{culane_with_its_image_lists} looks like CULane, which "
                                        rf"reproduce_intra_kd\.py --dataset culane reads") as e:
        ApolloScapeLanes(culane_with_its_image_lists, split)
    one_line(e)


@pytest.mark.parametrize("split", ["train", "test"])
def test_apolloscape_given_as_culane_says_so(apollo_records, split):
    with pytest.raises(UserError, match=rf"{apollo_records} looks like ApolloScape lane segmentation, which "
                                        rf"reproduce_intra_kd\.py --dataset apolloscape reads") as e:
        road_dataset("culane", apollo_records, split)
    one_line(e)


def test_a_folder_of_neither_gets_no_hint(tmp_path):
    (tmp_path / "list").mkdir()
    for make in (lambda: ApolloScapeLanes(tmp_path, "train"), lambda: CULaneLanes(tmp_path, "train")):
        with pytest.raises(UserError) as e:
            make()
        assert "looks like" not in one_line(e) and "--data-root" in str(e.value)


def test_apollo_crop_top_and_size(apollo_records, apollo_writer):
    cropped = ApolloScapeLanes(apollo_records, "train", crop_top=0.25)
    image, mask = cropped[0]
    assert image.shape == (3, 6, W) and np.array_equal(mask.numpy(), expected_train_ids(apollo_writer.ids(0))[2:])
    image, mask = ApolloScapeLanes(apollo_records, "train", size=(3, 6), crop_top=0.25)[0]
    assert image.shape == (3, 3, 6) and mask.shape == (3, 6) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= set(expected_train_ids(apollo_writer.ids(0)).ravel().tolist())
    with pytest.raises(UserError, match="crop_top") as e:
        ApolloScapeLanes(apollo_records, "train", crop_top=1.5)
    one_line(e)


@pytest.fixture
def no_frame_decoding(monkeypatch):
    """Building a data set must not decode frames (a full-size JPEG takes ~50 ms) nor read items."""
    def refuse(*args, **kwargs):
        raise AssertionError("a frame was decoded or an item read while the data set was built")
    monkeypatch.setattr(roads, "read_image", refuse)
    monkeypatch.setattr(roads.RoadFiles, "__getitem__", refuse)


def test_apollo_unknown_label_id_is_caught_when_built(tmp_path, no_frame_decoding, apollo_writer):
    ids = apollo_writer.ids(1)
    ids[2, 2], ids[3, 3] = 7, 100
    for k in range(10):
        apollo_writer.write(tmp_path, "road02", "Record001", 5, f"s{k}", ids if k == 0 else apollo_writer.ids(k))
    with pytest.raises(UserError, match=r"1 of 9 ApolloScape train .*s0_Camera_5_bin\.png.*\[7, 100\].*200-233") as e:
        ApolloScapeLanes(tmp_path, "train")
    one_line(e)


def break_label_as_rgb(label: Path) -> None:
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(label)          # a colour rendering, not ids


def break_label_size(label: Path) -> None:
    Image.fromarray(np.zeros((H, W - 2), np.uint8), mode="L").save(label)   # valid ids, 2 columns short


def break_label_truncated(label: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8), mode="L").save(label)
    label.write_bytes(label.read_bytes()[:200])                          # the header reads, the pixels do not


def break_image(image: Path) -> None:
    image.write_bytes(b"not a jpeg")


@pytest.mark.parametrize("breaks, which, words", [
    (break_label_as_rgb, 1, r"single-channel"),
    (break_label_size, 1, r"\(8, 10\) \(height, width\) but its image .* is \(8, 12\)"),
    (break_label_truncated, 1, r"not a readable PNG"),
    (break_image, 0, r"not a readable image"),
])
def test_apollo_bad_files_are_caught_when_built(tmp_path, no_frame_decoding, breaks, which, words, apollo_writer):
    frames = [apollo_writer.write(tmp_path, "road02", "Record001", 5, f"s{k}", apollo_writer.ids(k)) for k in range(10)]
    bad = frames[4][which]
    breaks(bad)
    with pytest.raises(UserError, match=f"{bad.name.replace('.', '[.]')}.*{words}") as e:
        ApolloScapeLanes(tmp_path, "train")
    assert str(bad) in one_line(e) and "re-extract" in str(e.value)


def test_two_bad_files_are_named_in_one_message(tmp_path, no_frame_decoding, apollo_writer):
    bad_ids = apollo_writer.ids(3)
    bad_ids[0, 0] = 7
    for k in range(10):
        apollo_writer.write(tmp_path, "road02", "Record001", 5, f"s{k}", bad_ids if k == 2 else apollo_writer.ids(k))
    break_label_as_rgb(apollo_writer.write(tmp_path, "road02", "Record001", 5, "s5", apollo_writer.ids(5))[1])
    with pytest.raises(UserError, match=r"^2 of 9 ApolloScape train image/label pairs failed") as e:
        ApolloScapeLanes(tmp_path, "train")
    assert "s2_Camera_5_bin.png holds label values [7]" in one_line(e)
    assert "s5_Camera_5_bin.png is a mode-RGB image" in str(e.value)


def test_a_second_build_with_the_same_verdicts_checks_nothing(apollo_records, tmp_path, monkeypatch, apollo_writer):
    checked = []
    read_id_png = roads._read_id_png
    monkeypatch.setattr(roads, "_read_id_png", lambda path, fix: checked.append(path) or read_id_png(path, fix))
    verdicts = tmp_path / "cache" / "file_checks.json"
    train = road_dataset("apolloscape", apollo_records, "train", verdicts=verdicts, progress=False)
    assert len(train) < PARALLEL_FROM and sorted(checked) == sorted(train.labels)   # checked in this process
    checked.clear()
    assert len(road_dataset("apolloscape", apollo_records, "train", verdicts=verdicts, progress=False)) == 9
    assert checked == []
    label = train.labels[4]
    bad = apollo_writer.ids(4)
    bad[5, 5] = 100
    Image.fromarray(bad, mode="L").save(label)
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))       # whatever the clock's grain
    with pytest.raises(UserError, match=rf"^1 of 9 .*{label.name}.*\[100\]") as e:
        ApolloScapeLanes(apollo_records, "train", verdicts=verdicts, progress=False)
    one_line(e)
    assert checked == [label]                                                    # only the changed file


def test_apollo_unreadable_files_are_user_errors(tmp_path, apollo_writer):
    image, label = apollo_writer.write(tmp_path, "road02", "Record001", 5, "a", apollo_writer.ids(0))
    for k in range(10):
        apollo_writer.write(tmp_path, "road02", "Record001", 5, f"b{k}", apollo_writer.ids(k))
    data = ApolloScapeLanes(tmp_path, "train")
    image.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"a_Camera_5\.jpg") as e:
        data[0]
    one_line(e)
    apollo_writer.write(tmp_path, "road02", "Record001", 5, "a", None)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(label)         # a colour rendering, not ids
    with pytest.raises(UserError, match=r"a_Camera_5_bin\.png.*single-channel") as e:
        data[0]
    one_line(e)


def test_apollo_missing_root_or_pairs(tmp_path, apollo_writer):
    with pytest.raises(UserError, match="no_such_root") as e:
        ApolloScapeLanes(tmp_path / "no_such_root", "train")
    one_line(e)
    apollo_writer.write(tmp_path, "road02", "Record001", 5, "lonely", None)
    with pytest.raises(UserError, match=r"found 1 images and 0 label.*ColorImage_road0X/ColorImage/Record0NN") as e:
        ApolloScapeLanes(tmp_path, "train")
    one_line(e)


# ---- CULane, in the published layout --------------------------------------------------------------------------
CULANE_FRAMES = {"train": ["driver_23_30frame/05151649_0422.MP4/00000", "driver_23_30frame/05151649_0422.MP4/00030",
                           "driver_161_90frame/06030819_0755.MP4/00000"],
                 "val": ["driver_23_30frame/05160756_0460.MP4/00120"]}


def culane_label(seed: int) -> np.ndarray:
    label = np.random.default_rng(seed).integers(0, 5, (H, W)).astype(np.uint8)
    label.ravel()[:5] = np.arange(5)
    return label


@pytest.fixture
def culane(tmp_path: Path) -> Path:
    (tmp_path / "list").mkdir()
    for split, frames in CULANE_FRAMES.items():
        lines = []
        for k, frame in enumerate(frames):
            image, label = tmp_path / f"{frame}.jpg", tmp_path / "laneseg_label_w16" / f"{frame}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(image, quality=95)
            Image.fromarray(culane_label(k), mode="L").save(label)
            lines.append(f"/{frame}.jpg /laneseg_label_w16/{frame}.png 1 1 1 0")
        (tmp_path / "list" / f"{split}_gt.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "list" / "test.txt").write_text(f"/{CULANE_FRAMES['val'][0]}.jpg\n")
    return tmp_path


def test_culane_reads_lane_masks(culane):
    data = CULaneLanes(culane, "train")
    assert len(data) == 3 and len(CULaneLanes(culane, "val")) == 1
    assert data.num_classes == 5 and data.class_names == CULANE_CLASSES and "CULane train" in data.name
    image, mask = data[1]
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    assert mask.dtype == torch.int64 and np.array_equal(mask.numpy(), culane_label(1))
    image, mask = CULaneLanes(culane, "train", size=(4, 6))[1]
    assert image.shape == (3, 4, 6) and mask.shape == (4, 6) and int(mask.max()) <= 4
    assert road_dataset("culane", culane, "val", size=(4, 6))[0][1].shape == (4, 6)


def test_culane_bad_label_values_are_caught_when_built(culane, no_frame_decoding):
    label = culane_label(0)
    label[1, 1] = 9
    Image.fromarray(label, mode="L").save(culane / "laneseg_label_w16" / f"{CULANE_FRAMES['train'][0]}.png")
    break_label_as_rgb(culane / "laneseg_label_w16" / f"{CULANE_FRAMES['train'][1]}.png")
    with pytest.raises(UserError, match=r"^2 of 3 CULane train .*05151649_0422\.MP4/00000\.png.*\[9\].*0-4, 255"
                                         r".*00030\.png is a mode-RGB") as e:
        CULaneLanes(culane, "train")
    one_line(e)
    assert len(CULaneLanes(culane, "val")) == 1


def test_culane_list_naming_a_missing_file(culane):
    (culane / "laneseg_label_w16" / f"{CULANE_FRAMES['train'][2]}.png").unlink()
    with pytest.raises(UserError, match=r"06030819_0755\.MP4/00000\.png.*train_gt\.txt") as e:
        CULaneLanes(culane, "train")
    one_line(e)


def test_culane_test_split_and_missing_lists(culane, tmp_path):
    with pytest.raises(UserError, match=r"test_gt\.txt.*test\.txt.*'val'") as e:
        CULaneLanes(culane, "test")
    one_line(e)
    (culane / "list" / "val_gt.txt").unlink()
    with pytest.raises(UserError, match=r"val_gt\.txt.*laneseg_label_w16") as e:
        CULaneLanes(culane, "val")
    one_line(e)
    with pytest.raises(UserError, match="nowhere") as e:
        CULaneLanes(tmp_path / "nowhere", "train")
    one_line(e)


def test_road_dataset_picks_the_loader(apollo_records):
    data = road_dataset("apolloscape", apollo_records, "val", crop_top=0.5)
    assert isinstance(data, ApolloScapeLanes) and data[0][0].shape == (3, H // 2, W)
    with pytest.raises(UserError, match="--dataset apolloscape or culane") as e:
        road_dataset("kitti", apollo_records, "train")
    one_line(e)
