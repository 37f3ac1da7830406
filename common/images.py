"""What every segmentation data set and script shares: the ignore label, the ImageNet normalisation of network
inputs (source 004, Section 4.1.1; the statistics torchvision's ImageNet weights expect), and the memoised
(split, seed, index) -> image contract of the synthetic stand-ins (``SyntheticSegmentationSet``).
"""
from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255  # pixels no loss or metric counts (VOC's object borders, ApolloScape's 'noise')
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # source 004, Section 4.1.1 (the ImageNet statistics)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) or (N, 3, H, W) in 0..255 -> float32 normalised with ``IMAGENET_MEAN`` / ``IMAGENET_STD`` (004, 4.1.1)."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image.float() / 255.0 - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """The inverse of ``normalize``, for figures: float in [0, 1], same shape."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image.float() * std + mean).clamp(0.0, 1.0)


class SyntheticSegmentationSet(torch.utils.data.Dataset):
    """Base of the synthetic segmentation stand-ins: image ``i`` of (split, seed) is drawn by ``make_scene(i)``
    (a function of split, seed and i only), once, and memoised. Items are ``(image uint8 (3, H, W), mask int64
    (H, W))``. Subclasses check the split and implement ``make_scene``."""

    def __init__(self, split: str, num_images: int, size: tuple[int, int], seed: int) -> None:
        self.split, self.num_images, self.seed = split, num_images, seed
        self.size = (int(size[0]), int(size[1]))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def make_scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) uint8 labels of image ``index``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.num_images:
            raise IndexError(f"image {i} of a {self.num_images}-image {type(self).__name__}")
        if i not in self._cache:
            self._cache[i] = self.make_scene(i)
        image, mask = self._cache[i]
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask.astype(np.int64))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.split!r}, {self.num_images} images of {self.size[0]}x{self.size[1]}, " \
               f"seed {self.seed})"
