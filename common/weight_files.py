"""Weight files are data, never code: every one this repository reads goes through ``torch.load(weights_only=True)``.

A ``.pth`` file is a pickle, and a plain ``torch.load`` of a crafted one runs whatever its author put in it. So:

- ``read_weights_file``: a file the user names (``--teacher-checkpoint``, ``--backbone-weights``, ...).
- ``fetch_torchvision_weights``: torchvision's published weights (ImageNet backbones, COCO segmenters), kept in
  torch.hub's checkpoints folder as torchvision keeps them. torchvision's own ``weights.get_state_dict`` loads with
  ``weights_only=False`` in the torch versions we support and trusts a file already in that folder, which the
  README tells offline users to fill by hand; so we download and read the file ourselves: a file already there
  must match the sha256 prefix in its published name (torch.hub's convention), and it is loaded tensors-only.

Checkpoints this repository writes are read by ``common.runs.load_checkpoint``, likewise ``weights_only``.
"""
from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

import torch
import torchvision

from common.errors import UserError, one_line


def read_weights_file(path: Path, what: str, wanted: str) -> object:
    """``torch.load(weights_only=True)`` of a local file (tensors and plain containers only); a missing or
    unreadable file is a ``UserError`` naming ``what`` (the flag) and ``wanted`` (what to pass instead)."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: pass {wanted}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a truncated, foreign or code-carrying file
        raise UserError(f"cannot read {what} {path} ({type(error).__name__}): it is corrupt, not a PyTorch weights "
                        f"file, or holds more than tensors; pass {wanted}") from error


def published_file_name(weights: torchvision.models.WeightsEnum) -> str:
    """The file name torchvision publishes the weights under, e.g. ``resnet50-0676ba61.pth``."""
    return os.path.basename(urllib.parse.urlparse(weights.url).path)


def published_hash_prefix(file_name: str) -> str:
    """The leading hex digits of the file's sha256 that torch.hub puts in the name (``resnet50-0676ba61.pth``)."""
    match = torch.hub.HASH_REGEX.search(file_name)
    return match.group(1) if match else ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_torchvision_weights(weights: torchvision.models.WeightsEnum, what: str, local_flag: str) -> dict:
    """The state dict of torchvision's published ``weights``, from ``<torch.hub dir>/checkpoints/`` (downloaded
    there first if missing, hash-checked as torch.hub does). ``what`` names the weights in errors ("ImageNet
    weights"); ``local_flag`` is the script's flag that takes a local file instead (e.g. ``--backbone-weights``).

    A file in that folder whose sha256 does not start with the prefix in its name is not the published one (or is
    truncated): a ``UserError``, and it is never unpickled.
    """
    file_name = published_file_name(weights)
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    expected = published_hash_prefix(file_name)
    if not path.is_file():
        _download(weights.url, path, expected, what, local_flag)
    elif expected and not sha256_of(path).startswith(expected):
        raise UserError(f"the {what} {path} are not torchvision's published file (its sha256 does not start with "
                        f"{expected}): delete it to download it again, or pass {local_flag} PATH")
    state = read_weights_file(path, f"the {what}", f"{local_flag} PATH, or delete {path} to download it again")
    if not isinstance(state, dict):
        raise UserError(f"the {what} {path} hold no state dict: delete it to download it again, or pass "
                        f"{local_flag} PATH")
    return state


def _download(url: str, path: Path, hash_prefix: str, what: str, local_flag: str) -> None:
    """torch.hub's downloader (to a temporary file, checked against ``hash_prefix``, then renamed)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix or None, progress=True)
    except Exception as error:  # no network (URLError, timeouts), a full disk, or a download that fails its hash
        raise UserError(f"cannot download the {what} {path.name} ({one_line(error)}): place the file in "
                        f"{path.parent}/ or pass {local_flag} PATH") from error
