"""Frozen pretrained feature extractors for 3-D volumes, behind one small registry.

Every extractor maps a grey volume ``(B, 1, D, H, W)``, intensities in [0, 1], voxel order as
in :mod:`unireg.io`, to features ``(B, C, D/s, H/s, W/s)``. ``s`` is the extractor's ``stride``,
the same on all three axes; D, H and W must be divisible by it (the preprocessed grids are
divisible by 16, which suits every extractor here).

=====================  ====  ==  ======================================================
name                   C     s   what
=====================  ====  ==  ======================================================
``mobilenet_v1_025``   16    2   default. ImageNet MobileNetV1 x0.25 (Pytorch_Retinaface),
                                 first conv + first depthwise-separable block, packaged
``mind``               12    1   MIND-SSC self-similarity context (Heinrich et al. 2013),
                                 no weights
``resnet18``           64    4   torchvision ResNet-18 up to ``layer1``, ImageNet weights
                                 from the torch hub cache (``unireg weights fetch``)
``vgg16``              128   2   torchvision VGG-16 ``features`` up to relu2_2, ImageNet
                                 weights from the torch hub cache
``scratch``            16    2   the ``mobilenet_v1_025`` encoder, randomly initialised
                                 (global torch seed) and trainable
=====================  ====  ==  ======================================================

Extractors joined by ``+`` (e.g. ``mobilenet_v1_025+mind``, C 28, s 2) give their channels side
by side on the coarsest part's grid (:class:`Concatenated`): frozen ImageNet features next to
weight-free MIND-SSC, for the network to learn which to trust under a contrast it never saw.

``mobilenet_v1_025_reinit`` (C 16, s 2), an ablation for ``benchmarks/domain_shift.py``: the
``mobilenet_v1_025`` encoder with its earliest layer (the 3->8 conv, re-drawn with PyTorch's
default init from seed 0, and its BN reset to identity) random and the depthwise-separable
block still ImageNet's; frozen; the packaged weights are sha256-checked as for the default.

3-D from a 2-D ImageNet network (:class:`SliceWise3d`)
------------------------------------------------------
1. grey [0, 1] becomes 3 identical channels normalised with the ImageNet mean/std;
2. for each voxel axis (D, then H, then W) the slices perpendicular to it are batched through
   the 2-D network, :data:`SLICE_CHUNK` slices at a time: features at stride ``s`` in-plane and
   stride 1 along that axis;
3. an average pool along that axis brings it to stride ``s`` too;
4. the three views are averaged.

Sampling grid: feature voxel ``i`` sits at input voxel ``stride * i + grid_offset`` on every
axis. A strided conv with "same" padding (MobileNet, ResNet) samples ``s * i`` (offset 0), a
2x2 max pool (VGG) ``2 * i + 0.5``; the through-plane pool of step 3 is centred on the same
positions (window ``s + 1`` for offset 0, ``s`` for offset ``(s - 1) / 2``) so that the three
views agree voxel for voxel before they are averaged.

Frozen extractors (all but ``scratch``) stay in eval mode whatever ``.train()`` a parent model
calls, and their parameters have ``requires_grad=False``; gradients still flow to the input,
because they serve inside a loss on warped images. Build an optimiser from
``[p for p in model.parameters() if p.requires_grad]``.

Weight files (where they lie, sha256 checks, fetching, loading, licences): :mod:`unireg.weights`.
Every extractor records the sha256 of the file it loaded in ``weights_sha256`` (``None`` for
``mind`` and ``scratch``); checkpoints trained on top of it should record it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UniregError
from .weights import (
    MOBILENET_FILE,
    MOBILENET_SHA256,
    WEIGHTS_DIR,
    _check_torchvision_hash,
    _load_matching,
    _load_weight_file,
    _torchvision_weights,
    _verified,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SLICE_CHUNK = 64  # 2-D slices per network call: bounds peak memory without autograd


# ---------------------------------------------------------------------------------------------
# The extractor contract and the slice-wise 3-D scheme
# ---------------------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """``(B, 1, D, H, W)`` in [0, 1] -> ``(B, out_channels, D/stride, H/stride, W/stride)``.

    Attributes: ``name``, ``out_channels``, ``stride`` (voxels, all axes), ``grid_offset``
    (feature voxel ``i`` sits at input voxel ``stride * i + grid_offset``), ``weights_sha256``
    (sha256 of the weight file, ``None`` without one) and ``trainable``. A frozen extractor
    (``trainable=False``) is always in eval mode and its parameters never require grad.
    """

    def __init__(
        self,
        *,
        name: str,
        out_channels: int,
        stride: int,
        grid_offset: float = 0.0,
        weights_sha256: str | None = None,
        trainable: bool = False,
    ):
        super().__init__()
        self.name = name
        self.out_channels = out_channels
        self.stride = stride
        self.grid_offset = grid_offset
        self.weights_sha256 = weights_sha256
        self.trainable = trainable

    def freeze(self) -> FeatureExtractor:
        """Make this extractor frozen for good: no parameter gradients, eval mode."""
        self.trainable = False
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(mode and self.trainable)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 1 or any(n % self.stride for n in x.shape[2:]):
            divisible = f" with D, H, W divisible by {self.stride}" if self.stride > 1 else ""
            raise UniregError(
                f"feature extractor {self.name} takes a (B, 1, D, H, W) volume{divisible}; got shape {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        sha = self.weights_sha256[:12] if self.weights_sha256 else None
        return (
            f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}, "
            f"grid_offset={self.grid_offset}, trainable={self.trainable}, weights_sha256={sha}"
        )


def _through_plane_window(stride: int, grid_offset: float) -> tuple[int, int]:
    """Average-pool (kernel, padding) of stride ``stride`` whose window centres sit at
    ``stride * i + grid_offset``, like the in-plane network's samples."""
    padding = max(0, math.ceil((stride - 1) / 2 - grid_offset))
    kernel = 2 * (padding + grid_offset) + 1
    if kernel != int(kernel) or kernel < stride:
        raise ValueError(f"no through-plane window for stride {stride} and grid offset {grid_offset}")
    return int(kernel), padding


class SliceWise3d(FeatureExtractor):
    """A 2-D ImageNet encoder ``(N, 3, P, Q) -> (N, C, P/s, Q/s)`` applied to a 3-D volume.

    The scheme (three slice-wise views, through-plane pooling, averaging) is described in the
    module docstring. ``encoder`` takes ImageNet-normalised RGB; the grey -> RGB step is here.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        name: str,
        out_channels: int,
        stride: int,
        grid_offset: float,
        weights_sha256: str | None = None,
        trainable: bool = False,
        chunk_slices: int = SLICE_CHUNK,
    ):
        super().__init__(
            name=name,
            out_channels=out_channels,
            stride=stride,
            grid_offset=grid_offset,
            weights_sha256=weights_sha256,
            trainable=trainable,
        )
        self.encoder = encoder
        self.chunk_slices = chunk_slices
        self.pool_kernel, self.pool_padding = _through_plane_window(stride, grid_offset)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if not trainable:
            self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = self._view(x, 2)
        for axis in (3, 4):
            features = features + self._view(x, axis)
        return features / 3

    def _view(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Features from the slices perpendicular to ``axis`` (2, 3 or 4 of ``x``)."""
        batch, n_slices = x.shape[0], x.shape[axis]
        slices = x.movedim(axis, 1).reshape(batch * n_slices, 1, *(x.shape[a] for a in (2, 3, 4) if a != axis))
        features = torch.cat(
            [self.encoder((chunk - self.mean) / self.std) for chunk in slices.split(self.chunk_slices)]
        )
        features = features.reshape(batch, n_slices, *features.shape[1:]).movedim(1, 2).movedim(2, axis)
        if self.stride == 1:
            return features
        kernel, stride, padding = [1, 1, 1], [1, 1, 1], [0, 0, 0]
        kernel[axis - 2], stride[axis - 2], padding[axis - 2] = self.pool_kernel, self.stride, self.pool_padding
        return F.avg_pool3d(features, kernel, stride, padding, count_include_pad=False)


# ---------------------------------------------------------------------------------------------
# 2-D networks, parameter names as in their published weight files
# ---------------------------------------------------------------------------------------------


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(0.1, inplace=True)
    )


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each followed by BN + LeakyReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(0.1, inplace=True),
    )


class MobileNetV1x025(nn.Module):
    """MobileNetV1 x0.25 of Pytorch_Retinaface (``models/net.py``): the full ImageNet classifier.

    ``(N, 3, H, W)`` ImageNet-normalised RGB -> ``(N, 1000)`` logits; stage outputs at strides
    8/16/32. Only :meth:`early` serves as a feature extractor.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *(_conv_dw(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.avg(x).flatten(1))

    def early(self) -> nn.Sequential:
        """First conv + first depthwise block (the layers before the second stride 2):
        ``(N, 3, H, W) -> (N, 16, H/2, W/2)``; shares this network's modules."""
        return nn.Sequential(*self.stage1[:2])


def load_mobilenet_v1_025(weights: str | Path | None = None) -> MobileNetV1x025:
    """The full ImageNet MobileNetV1 x0.25 with the packaged weights (sha256-checked), eval mode."""
    path = Path(weights).expanduser() if weights is not None else WEIGHTS_DIR / MOBILENET_FILE
    _verified(path, MOBILENET_SHA256, "the ImageNet MobileNetV1 x0.25 weights")
    state = _load_weight_file(path)["state_dict"]
    net = MobileNetV1x025()
    net.load_state_dict({key.removeprefix("module."): value for key, value in state.items()}, strict=True)
    return net.eval()


class _BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock`` without downsampling (all that ``layer1`` needs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + x)


class ResNet18Early(nn.Module):
    """torchvision ``resnet18`` up to ``layer1`` (conv1 7x7/2, bn1, relu, maxpool 3x3/2, two
    basic blocks): ``(N, 3, H, W) -> (N, 64, H/4, W/4)``; parameter names as torchvision's."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_BasicBlock(64), _BasicBlock(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))


class VGG16Early(nn.Module):
    """torchvision ``vgg16.features[:9]`` (conv1_1 ... relu2_2, one 2x2 max pool):
    ``(N, 3, H, W) -> (N, 128, H/2, W/2)``; parameter names as torchvision's."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# ---------------------------------------------------------------------------------------------
# MIND-SSC
# ---------------------------------------------------------------------------------------------

_SIX_NEIGHBOURS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
# the 12 pairs of orthogonal neighbours (squared distance 2): the self-similarity context
_MIND_PAIRS = tuple(
    (p, q)
    for i, p in enumerate(_SIX_NEIGHBOURS)
    for q in _SIX_NEIGHBOURS[i + 1 :]
    if sum((a - b) ** 2 for a, b in zip(p, q)) == 2
)


class MindSSC(FeatureExtractor):
    """MIND-SSC (Heinrich et al., MICCAI 2013): 12 channels at stride 1, no weights.

    For each of the 12 pairs of orthogonal 6-neighbours at ``dilation`` voxels, the patch SSD
    between the two neighbour positions (box filter of width ``2 * radius + 1``, replicate
    padding); minus the smallest of the 12, divided by their mean (the local variance, clamped
    to [1e-3, 1e3] x its mean over the volume), through ``exp(-d / var)``. Values in (0, 1];
    invariant to ``a * x + b`` with ``a > 0``; differentiable w.r.t. the input; runs on any device.
    """

    def __init__(self, radius: int = 2, dilation: int = 2):
        super().__init__(name="mind", out_channels=len(_MIND_PAIRS), stride=1)
        self.radius = radius
        self.dilation = dilation
        self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        d, r = self.dilation, self.radius
        padded = F.pad(x, (d,) * 6, mode="replicate")

        def neighbour(offset: tuple[int, int, int]) -> torch.Tensor:
            return padded[(..., *(slice(d + o * d, d + o * d + n) for o, n in zip(offset, x.shape[2:])))]

        shifted = {offset: neighbour(offset) for offset in _SIX_NEIGHBOURS}
        squared = torch.cat([(shifted[p] - shifted[q]) ** 2 for p, q in _MIND_PAIRS], dim=1)
        ssd = F.pad(squared, (r,) * 6, mode="replicate")
        for axis in range(3):  # the (2r+1)^3 box filter as three 1-D means: same values, ~2x faster
            ssd = F.avg_pool3d(ssd, tuple(2 * r + 1 if a == axis else 1 for a in range(3)), stride=1)
        ssd = ssd - ssd.amin(dim=1, keepdim=True)
        variance = ssd.mean(dim=1, keepdim=True)
        typical = variance.mean(dim=(2, 3, 4), keepdim=True).detach()
        tiny = torch.finfo(x.dtype).tiny  # a constant image gives 0 / tiny = 0, not NaN
        variance = torch.maximum(torch.minimum(variance, typical * 1e3), typical * 1e-3 + tiny)
        return torch.exp(-ssd / variance)


# ---------------------------------------------------------------------------------------------
# Concatenation: ``a+b``
# ---------------------------------------------------------------------------------------------


class Concatenated(FeatureExtractor):
    """The channels of several extractors side by side, on the grid of the coarsest one.

    A part with a finer stride is average-pooled onto that grid with windows centred on its
    samples (:func:`_through_plane_window`, on all three axes), so feature voxel ``i`` of every
    part describes the same place. Named ``a+b`` after its parts; frozen if all parts are.
    ``weights_sha256`` joins the parts' with ``+`` (``-`` for a part without weights) so that a
    checkpoint still records which weight files it was trained on.
    """

    def __init__(self, parts: list[FeatureExtractor]):
        stride = max(part.stride for part in parts)
        offsets = {part.grid_offset for part in parts if part.stride == stride}
        if len(offsets) > 1 or any(stride % part.stride for part in parts):
            raise UniregError(f"cannot concatenate extractors {'+'.join(p.name for p in parts)}: their grids differ")
        digests = [part.weights_sha256 for part in parts]
        super().__init__(
            name="+".join(part.name for part in parts),
            out_channels=sum(part.out_channels for part in parts),
            stride=stride,
            grid_offset=offsets.pop(),
            weights_sha256="+".join(d or "-" for d in digests) if any(digests) else None,
            trainable=any(part.trainable for part in parts),
        )
        self.parts = nn.ModuleList(parts)
        self.pools = []
        for part in parts:
            factor = stride // part.stride
            if factor == 1:
                self.pools.append(None)
                continue
            # part voxel j sits at part.stride * j + part.grid_offset; ours at stride * i + grid_offset
            offset = (self.grid_offset - part.grid_offset) / part.stride
            kernel, padding = _through_plane_window(factor, offset)
            self.pools.append((kernel, factor, padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = []
        for part, pool in zip(self.parts, self.pools):
            f = part(x)
            if pool is not None:
                kernel, stride, padding = pool
                f = F.avg_pool3d(f, kernel, stride, padding, count_include_pad=False)
            features.append(f)
        return torch.cat(features, dim=1)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def _refuse_weights(name: str, weights: Path | None, why: str) -> None:
    if weights is not None:
        raise UniregError(f"feature extractor {name} takes no weight file ({why})", path=weights)


def _build_mobilenet_v1_025(weights: Path | None = None) -> FeatureExtractor:
    path = weights if weights is not None else WEIGHTS_DIR / MOBILENET_FILE
    encoder = load_mobilenet_v1_025(path).early()
    return SliceWise3d(
        encoder, name="mobilenet_v1_025", out_channels=16, stride=2, grid_offset=0.0, weights_sha256=MOBILENET_SHA256
    )


def _build_mobilenet_v1_025_reinit(weights: Path | None = None) -> FeatureExtractor:
    """``mobilenet_v1_025`` with only its first conv + BN re-initialised (seed 0, global RNG untouched)."""
    path = weights if weights is not None else WEIGHTS_DIR / MOBILENET_FILE
    encoder = load_mobilenet_v1_025(path).early()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder[0][0].reset_parameters()
        encoder[0][1].reset_parameters()
    return SliceWise3d(
        encoder,
        name="mobilenet_v1_025_reinit",
        out_channels=16,
        stride=2,
        grid_offset=0.0,
        weights_sha256=MOBILENET_SHA256,
    )


def _build_scratch(weights: Path | None = None) -> FeatureExtractor:
    _refuse_weights("scratch", weights, "it starts random; its trained weights live in the model checkpoint")
    return SliceWise3d(
        MobileNetV1x025().early(), name="scratch", out_channels=16, stride=2, grid_offset=0.0, trainable=True
    )


def _build_mind(weights: Path | None = None) -> FeatureExtractor:
    _refuse_weights("mind", weights, "MIND-SSC is computed, not learned")
    return MindSSC()


def _build_torchvision(
    name: str, encoder: nn.Module, out_channels: int, stride: int, grid_offset: float, weights: Path | None
) -> FeatureExtractor:
    path = _torchvision_weights(name, weights)
    digest = _check_torchvision_hash(name, path)
    _load_matching(encoder, _load_weight_file(path), path, name)
    return SliceWise3d(
        encoder, name=name, out_channels=out_channels, stride=stride, grid_offset=grid_offset, weights_sha256=digest
    )


def _build_resnet18(weights: Path | None = None) -> FeatureExtractor:
    return _build_torchvision("resnet18", ResNet18Early(), 64, 4, 0.0, weights)


def _build_vgg16(weights: Path | None = None) -> FeatureExtractor:
    return _build_torchvision("vgg16", VGG16Early(), 128, 2, 0.5, weights)


EXTRACTORS: dict[str, Callable[[Path | None], FeatureExtractor]] = {
    "mobilenet_v1_025": _build_mobilenet_v1_025,
    "mind": _build_mind,
    "resnet18": _build_resnet18,
    "vgg16": _build_vgg16,
    "scratch": _build_scratch,
    "mobilenet_v1_025_reinit": _build_mobilenet_v1_025_reinit,
}


WEIGHT_FREE = ("mind", "scratch")  # extractors that take no weight file


def available_extractors() -> list[str]:
    """Registered extractor names, the default first."""
    return list(EXTRACTORS)


def build_extractor(name: str, weights: str | Path | None = None) -> FeatureExtractor:
    """The extractor ``name`` on the CPU (move it with ``.to(device)``).

    ``weights``: a weight file to use instead of the default (packaged MobileNet weights, which
    must match :data:`unireg.weights.MOBILENET_SHA256`; torchvision's file in
    :func:`unireg.weights.hub_checkpoint_dir`). Never downloads: see :func:`unireg.weights.fetch_weights`.
    """
    names = name.split("+")
    unknown = [n for n in names if n not in EXTRACTORS]
    if unknown or len(set(names)) < len(names):
        raise UniregError(
            f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}, "
            "or several different ones joined by '+'"
        )
    path = None if weights is None else Path(weights).expanduser()
    if len(names) == 1:
        return EXTRACTORS[name](path)
    if path is not None:
        weighted = [n for n in names if n not in WEIGHT_FREE]
        if len(weighted) != 1:
            raise UniregError(f"feature extractor {name}: a weight file needs exactly one part that takes one")
    return Concatenated([EXTRACTORS[n](None if n in WEIGHT_FREE else path) for n in names])
