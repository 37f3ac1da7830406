"""Every file of a real data set is checked before the first training step, not when the sampler reaches it.

A paper-preset run reads thousands of files (10,582 VOC trainaug masks, ApolloScape's frames); one broken file
found by the sampler hours in would waste the run, and one whose labels are wrong would silently train on noise.
``check_files`` opens every item once, in parallel worker processes where there are many, collects *every* bad
file and stops with one ``UserError`` line that names them by path. A file that passed is remembered by its path,
size and modification time (``verdicts``: a small JSON file in the scripts' ``--cache-dir``), so a second run
over the same data is instant and a replaced file is checked again.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from common.errors import UserError

VERDICTS_FILE = "file_checks.json"   # in --cache-dir: the items that passed, keyed by paths, sizes and mtimes
SHOWN = 10                           # bad files named in the error line; the rest are counted
PARALLEL_FROM = 64                   # fewer items than this are checked in this process (a pool costs ~1 s)


def check_files(items: Sequence[tuple[Path, ...]], check: Callable[..., None], *, what: str,
                verdicts: Path | None = None, workers: int | None = None, progress: bool = True) -> None:
    """Call ``check(*item)`` on every item (a tuple of paths, e.g. an image and its label file); ``check`` raises a
    ``UserError`` whose message names the file and the problem. Raises one ``UserError`` listing every bad item
    (``what`` names the set, e.g. "VOC 2012 train masks"). ``check`` must be a top-level function, so that worker
    processes can run it; ``workers`` defaults to the machine's cores. ``verdicts``: a JSON file remembering
    items that passed (see the module docstring), or None to check everything every time.
    """
    passed = _read_verdicts(verdicts)
    checker = f"{check.__module__}.{check.__qualname__}"
    keys = [_key(checker, item) for item in items]
    todo = [(item, key) for item, key in zip(items, keys) if key is None or key not in passed]
    problems = _run_checks(check, [item for item, _ in todo], what, workers, progress)
    for (item, key), problem in zip(todo, problems):
        if problem is None and key is not None:
            passed.add(key)
    if verdicts is not None and todo:
        _write_verdicts(verdicts, passed)
    bad = [problem for problem in problems if problem is not None]
    if bad:
        shown = "; ".join(bad[:SHOWN]) + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
        raise UserError(f"{len(bad)} of {len(items)} {what} failed their check before training: {shown}.")


def _run_checks(check: Callable[..., None], items: list[tuple[Path, ...]], what: str, workers: int | None,
                progress: bool) -> list[str | None]:
    """The problem of each item (its UserError's message), or None where it passed; in a pool when many."""
    bar = dict(total=len(items), desc=f"checking {what}", disable=not progress or not items, leave=False)
    workers = workers or os.cpu_count() or 1
    if len(items) < PARALLEL_FROM or workers == 1:
        return [_problem(check, item) for item in tqdm(items, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, len(items) // (workers * 16))
        return list(tqdm(pool.map(_problem, [check] * len(items), items, chunksize=chunk), **bar))


def _problem(check: Callable[..., None], item: tuple[Path, ...]) -> str | None:
    try:
        check(*item)
    except UserError as e:
        return " ".join(str(e).split()).rstrip(".")   # joined with "; " into one sentence
    return None


def _key(checker: str, item: tuple[Path, ...]) -> str | None:
    """What a verdict is valid for: the checker and each file's absolute path, size and mtime (None: a file is
    missing, so there is nothing to remember)."""
    parts = [checker]
    for path in item:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        parts.append(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def _read_verdicts(path: Path | None) -> set[str]:
    if path is None or not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):   # a damaged verdict file only costs a re-check
        return set()


def _write_verdicts(path: Path, passed: set[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")   # two runs at once each write a whole file
    tmp.write_text(json.dumps(sorted(passed)))
    os.replace(tmp, path)


# what each published data set has at its top, to tell a user who passed one script's data to another what the
# folder really holds: (name, the script and flags that read it, glob patterns under the folder, any of which marks it)
_MARKERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("PASCAL VOC 2012", "reproduce_deeplab_caspp.py, reproduce_qkd.py or reproduce_fcn_kd.py --experiment B",
     ("VOCdevkit/VOC2012/SegmentationClass", "VOC2012/SegmentationClass", "SegmentationClass")),
    ("SBD (benchmark_RELEASE)", "reproduce_deeplab_caspp.py (next to VOCdevkit, as its trainaug source)",
     ("benchmark_RELEASE/dataset/cls", "dataset/cls", "cls/2008_000002.mat")),
    ("CIFAR-10 (python version)", "reproduce_fcn_kd.py --experiment A",
     ("cifar-10-batches-py/data_batch_1", "data_batch_1", "batches.meta")),
    ("EPFL mitochondria", "reproduce_unet_kd.py", ("training_groundtruth.tif", "testing_groundtruth.tif")),
    ("ApolloScape lane segmentation", "reproduce_intra_kd.py --dataset apolloscape",
     ("ColorImage_road*", "Labels_road*")),
    ("CULane", "reproduce_intra_kd.py --dataset culane",
     ("laneseg_label_w16", "list/train_gt.txt", "driver_*_*frame")),
)


def describe_folder(root: str | Path, expected: str) -> str:
    """A clause for a "no <expected> data here" error: which other published data set ``root`` looks like and
    the script (and flags) that reads it, or "" when it looks like none of them (or like ``expected``)."""
    root = Path(root)
    for name, reader, markers in _MARKERS:
        if name != expected and any(next(root.glob(marker), None) for marker in markers):
            return f"; {root} looks like {name}, which {reader} reads"
    return ""
