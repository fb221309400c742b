"""Training and instance-optimisation losses. All take ``(B, C, D, H, W)`` tensors, mean-reduced.

* ``lncc``: local normalised cross-correlation of images (same modality), MONAI.
* ``mind``: mean squared difference of MIND-SSC descriptors (any modality).
* smoothness: MONAI's diffusion (squared gradient) or bending-energy regulariser on a field.
* Dice: MONAI's soft Dice on warped one-hot label maps (when the training set has labels).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from monai.losses import BendingEnergyLoss, DiceLoss, DiffusionLoss, LocalNormalizedCrossCorrelationLoss

from .errors import UniregError
from .features import build_extractor

SIMILARITIES = ("lncc", "mind")
REGULARISERS = ("diffusion", "bending")


@lru_cache(maxsize=1)
def _mind():
    return build_extractor("mind")


class ImageSimilarity(torch.nn.Module):
    """Dissimilarity of a warped moving image and the fixed image (lower is better)."""

    def __init__(self, name: str = "lncc", kernel_size: int = 7):
        super().__init__()
        if name not in SIMILARITIES:
            raise UniregError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}")
        self.name = name
        self.lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=kernel_size,
                                                        kernel_type="rectangular")

    def descriptor(self, image: torch.Tensor) -> torch.Tensor:
        """What is compared: the image itself (``lncc``) or its MIND-SSC descriptor (``mind``)."""
        return _mind().to(image.device)(image) if self.name == "mind" else image

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``target``: ``descriptor(fixed)`` computed once by the caller (optional)."""
        if self.name == "lncc":
            return self.lncc(warped, fixed)
        target = self.descriptor(fixed) if target is None else target
        return torch.mean((self.descriptor(warped) - target) ** 2)


def regulariser(name: str = "diffusion") -> torch.nn.Module:
    """Smoothness of a displacement/velocity field ``(B, 3, D, H, W)`` (MONAI, mean over voxels)."""
    if name == "diffusion":
        return DiffusionLoss(normalize=False)
    if name == "bending":
        return BendingEnergyLoss(normalize=False)
    raise UniregError(f"unknown regulariser {name!r}; choose one of {', '.join(REGULARISERS)}")


def dice_loss() -> torch.nn.Module:
    """Soft Dice over the channels of one-hot maps (the caller passes foreground labels only)."""
    return DiceLoss(include_background=True, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5)


def one_hot(labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``(B, 1, ...)`` integer labels -> ``(B, len(values), ...)`` float indicators of ``values``."""
    return (labels == values.view(1, -1, *([1] * (labels.dim() - 2)))).to(torch.float32)
