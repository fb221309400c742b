"""Multi-atlas label fusion: K atlases' labels, propagated onto one subject, fused into one label map.

Every rule scores each candidate label at each voxel by the weight of the atlases that vote for it
and keeps the best:

* ``majority``: every atlas weighs 1.
* ``weighted``: locally weighted voting (Artaechevarria et al. 2009, "inverse" weighting; Sabuncu et
  al. 2010): atlas k weighs ``(MSD_k(x) + eps)^-p`` at voxel x, where MSD_k is the mean squared
  intensity difference between the subject and atlas k's warped image over a ``(2 radius + 1)^3``
  window around x (:data:`WEIGHTED_DEFAULTS`: radius 2 voxels, p = 1).
* ``jlf``: joint label fusion (Wang et al. 2013, PAMI 35(3)), as antsJointFusion does it
  (:data:`JLF_DEFAULTS`: antsJointFusion's alpha 0.1 and beta 2, and its patch radius 2 and search
  radius 3 voxels *at 1 mm*: the radii are set in mm, 2 and 3, and rounded to voxels of the grid
  fused on, at least 1 (:func:`jlf_parameters`): at 2 mm, patch radius 1 and search radius 2. On
  IXI training subjects at 2 mm, 3^3 patches scored 0.007 Dice above 5^3 and 0.012 above 7^3;
  ``benchmarks/results/multi_atlas_ixi_train.md``):

  1. *Patches*: the ``(2 radius + 1)^3`` patch around each voxel (the subject's and each warped
     atlas's), normalised: minus its mean, divided by its standard deviation (at least ``std_floor``,
     0.01 on unireg's 0..1 intensities, so that flat background patches stay finite). Atlases
     whose intensity scale differs from the subject's are then compared as if it were the same;
     antsJointFusion normalises its patches too (its output does not change when the images are
     scaled by 0.01 to 10^4).
  2. *Local search*: for each atlas and patch centre x, the offset within ``search`` voxels whose
     atlas patch is nearest the subject's (sum of squared differences; ties: the nearest offset).
     It absorbs the registration's residual misalignment of a voxel or two.
  3. *Weights*: with ``d_i`` the absolute differences of atlas i's matched patch to the subject's,
     ``M_ij(x) = (sum_p d_ip d_jp / (P - 1))^beta`` and ``w = (M + alpha I)^-1 1``, negative weights
     set to 0, normalised to sum 1. Atlases that err alike share weight; one that errs differently
     from the rest gains it.
  4. *Patch voting*: the weights of centre x vote, with each atlas's labels at its matched offset,
     for every voxel of x's patch; a voxel's label scores are the sum over the patches that cover it.

Rules shared by all three:

* Where every atlas votes the same label, that label (confidence 1). Only the other voxels are scored.
* Background (0) is a label like any other: a voxel that most atlases call background stays
  background, so no voxel is ever labelled by fewer atlases than the rest voted for.
* Ties (equal scores, up to 1e-9 relative) go to the label of the first atlas in the given order
  that voted for one of the tied labels; callers list atlases in a fixed order (the atlas set's table).
* Confidence (0..1): the winning label's share of the total (non-negative) weight at the voxel,
  so 1 where all agree and 1/K at worst for majority voting.

Images (``weighted``, ``jlf``): the subject and the warped atlas templates on the same grid, in
comparable units (unireg preprocess normalises every image the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .defaults import FUSIONS
from .errors import UniregError
from .losses import box_sum
from .transforms import foreground_bbox

__all__ = ["FUSIONS", "fuse"]
WEIGHTED_DEFAULTS = {"radius": 2, "power": 1.0, "eps": 1e-3}
# antsJointFusion's defaults; std_floor: benchmarks/multi_atlas.py --split train (0.01 and 0.001 alike)
JLF_DEFAULTS = {"radius_mm": 2.0, "search_mm": 3.0, "alpha": 0.1, "beta": 2.0, "std_floor": 0.01}
JLF_VOXEL_OPTIONS = ("radius", "search")  # options that set a radius in voxels, whatever the grid
TIE_TOLERANCE = 1e-9
CHUNK = 1 << 14  # patch centres per batch in jlf


@dataclass
class FusionResult:
    labels: np.ndarray  # int32, the grid of the inputs
    confidence: np.ndarray  # float32 in [0, 1]
    disagreement_fraction: float  # voxels where the atlases did not all agree / all voxels


def fuse(
    labels,
    fusion: str = "majority",
    *,
    images=None,
    target: np.ndarray | None = None,
    options: dict | None = None,
    spacing=None,
) -> FusionResult:
    """Fuse ``labels`` (K label maps, or an array (K, *shape)) with ``fusion`` (one of :data:`FUSIONS`).

    ``images`` (K warped atlas images) and ``target`` (the subject's image), same grid: needed by
    ``weighted`` and ``jlf``. ``options`` override :data:`WEIGHTED_DEFAULTS` / :data:`JLF_DEFAULTS`
    (``jlf`` also takes ``radius`` and ``search`` in voxels); ``spacing``: the grid's voxel size in mm
    (default 1), which sets jlf's radii (:func:`jlf_parameters`)."""
    if fusion not in FUSIONS:
        raise UniregError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    stack = np.stack([np.asarray(x) for x in labels]).astype(np.int32, copy=False)
    if stack.ndim < 2 or len(stack) == 0:
        raise UniregError("fusion needs at least one label map")
    k = len(stack)
    agree = np.all(stack == stack[:1], axis=0)
    fused = stack[0].copy()
    confidence = np.ones(stack.shape[1:], np.float32)
    where = np.flatnonzero(~agree.ravel())
    if len(where) == 0:
        return FusionResult(fused, confidence, 0.0)
    if fusion == "majority":
        weights = np.ones((k, len(where)), np.float64)
    else:
        if images is None or target is None:
            raise UniregError(f"fusion {fusion!r} needs the warped atlas images and the subject's image")
        imgs = np.stack([np.asarray(x, dtype=np.float32) for x in images])
        target = np.asarray(target, dtype=np.float32)
        if imgs.shape != stack.shape or target.shape != stack.shape[1:]:
            raise UniregError(
                f"fusion: images {imgs.shape} / subject {target.shape} are not on the labels' grid {stack.shape}"
            )
        if fusion == "weighted":
            weights = local_weights(imgs, target, where, **{**WEIGHTED_DEFAULTS, **(options or {})})
    if fusion == "jlf":
        best, share = jlf_fuse(stack, imgs, target, ~agree, **jlf_parameters(spacing, options))
    else:
        best, share = vote(stack.reshape(k, -1)[:, where], weights)  # the labels at the voxels to decide
    fused.reshape(-1)[where] = best
    confidence.reshape(-1)[where] = share
    return FusionResult(fused, confidence, float(len(where)) / agree.size)


def jlf_parameters(spacing=None, options: dict | None = None) -> dict:
    """jlf's parameters on a grid of voxel size ``spacing`` (mm; one number or three, whose mean is
    used; default 1): :data:`JLF_DEFAULTS` and ``options``, with the patch and search radii in voxels
    (``radius_mm`` / ``search_mm`` over the voxel size, rounded half up, at least 1; ``options``
    ``radius`` / ``search`` set them in voxels instead)."""
    opts = {**JLF_DEFAULTS, **(options or {})}
    voxel = float(np.mean(np.broadcast_to(np.asarray(1.0 if spacing is None else spacing, float), (3,))))
    out = {key: opts[key] for key in ("alpha", "beta", "std_floor")}
    for key in JLF_VOXEL_OPTIONS:
        given = opts.get(key)
        out[key] = int(given) if given is not None else max(1, int(np.floor(opts[f"{key}_mm"] / voxel + 0.5)))
    return out


def vote(votes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the label with the largest summed weight (ties: :data:`TIE_TOLERANCE`, first atlas)
    and its share of the summed non-negative weight."""
    k, n = votes.shape
    best_label = votes[0].copy()
    best_score = np.full(n, -np.inf)
    best_first = np.full(n, k)
    positive = np.clip(weights, 0, None).sum(0)
    for label in np.unique(votes):
        hit = votes == label
        score = np.where(hit, weights, 0.0).sum(0)
        first = np.where(hit.any(0), hit.argmax(0), k)
        tol = TIE_TOLERANCE * np.maximum(1.0, np.abs(np.where(np.isfinite(best_score), best_score, 0.0)))
        tie = np.abs(score - best_score) <= tol  # False while best_score is -inf
        better = hit.any(0) & ((score > best_score + tol) | (tie & (first < best_first)))
        best_label[better], best_score[better], best_first[better] = label, score[better], first[better]
    share = np.clip(best_score, 0, None) / np.where(positive > 0, positive, 1.0)
    return best_label, np.clip(share, 0.0, 1.0).astype(np.float32)


def _window_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2 radius + 1)^3 window of each voxel of (C, D, H, W), zero padding, full-window count."""
    size = 2 * radius + 1
    return box_sum(x[None], size)[0] / float(size**3)


def local_weights(images, target, where, *, radius: int, power: float, eps: float) -> np.ndarray:
    """(K, N) inverse local mean squared difference weights at the flat voxel indices ``where``."""
    out = np.empty((len(images), len(where)), np.float64)
    t = torch.from_numpy(target)
    for i, image in enumerate(images):
        msd = _window_mean((torch.from_numpy(image) - t).square()[None], radius)[0].reshape(-1)
        out[i] = (msd[torch.from_numpy(where)].double() + eps).pow(-power).numpy()
    return out


def _inner_box_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sums over the ``size``^3 box around each voxel of (D, H, W) whose box lies inside: the
    result is ``size - 1`` shorter on each axis (voxel j is the box centred on x's j + size // 2)."""
    for axis in range(3):
        x = _run_sum(x, axis, size)
    return x


def _run_sum(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Sums of ``size`` consecutive values along ``axis``, by halving (size 5: 3 additions, not 4)."""
    if size == 1:
        return x
    half = size // 2
    part = _run_sum(x, axis, half)
    n = x.shape[axis] - size + 1
    total = part.narrow(axis, 0, n) + part.narrow(axis, half, n)
    if size % 2:
        total += x.narrow(axis, size - 1, n)
    return total


def _shifted(region: tuple[slice, ...], offset) -> tuple[slice, ...]:
    return tuple(slice(r.start + o, r.stop + o) for r, o in zip(region, offset))


def _offsets(radius: int) -> torch.Tensor:
    """(n, 3) integer offsets of the (2 radius + 1)^3 cube, nearest first (ties: raster order)."""
    r = torch.arange(-radius, radius + 1)
    cube = torch.cartesian_prod(r, r, r).reshape(-1, 3)
    order = sorted(range(len(cube)), key=lambda n: int(cube[n].square().sum()))
    return cube[order]


def jlf_fuse(
    stack, images, target, dis: np.ndarray, *, radius: int, search: int, alpha: float, beta: float, std_floor: float
):
    """Joint label fusion with local patch search and patch voting at the voxels of the mask ``dis``:
    (fused labels, confidence) there, in raster order (module docstring)."""
    k, shape = len(stack), stack.shape[1:]
    size = 2 * radius + 1
    # The box the work needs: the voxels to decide, the centres of every patch that covers one
    # (radius more), their patches (radius more) at any search offset (search more); zero outside.
    margin = 2 * radius + search
    lo, hi = foreground_bbox(dis)
    lo, hi = lo - margin, hi + margin
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, shape))
    pad = [(max(-a, 0), max(b - n, 0)) for a, b, n in zip(lo, hi, shape)]

    def crop(x, dtype):
        return torch.from_numpy(np.pad(np.asarray(x)[(Ellipsis, *src)], [(0, 0)] * (x.ndim - 3) + pad).astype(dtype))

    t, a, lab, box_dis = crop(target, np.float32), crop(images, np.float32), crop(stack, np.int64), crop(dis, bool)
    box = t.shape
    strides = torch.tensor([box[1] * box[2], box[2], 1])
    # each patch's mean and standard deviation, for the search and the weights
    stats_t, stats_a = _patch_stats(t[None], size, std_floor), _patch_stats(a, size, std_floor)
    (mean_t, _, std_t), (mean_a, _, std_a) = stats_t, stats_a
    # Patch centres: every voxel within ``radius`` of a voxel to decide.
    centre_mask = F.max_pool3d(box_dis[None, None].float(), size, stride=1, padding=radius)[0, 0] > 0
    centres = torch.nonzero(centre_mask.reshape(-1))[:, 0]
    delta_search = _offsets(search) @ strides
    best = _best_offsets(t, a, stats_t, stats_a, centres, radius=radius, search=search)
    # Weights per centre (the JLF solve on the matched patches), then every centre's weights vote for
    # the atlases' labels over its whole patch, at their matched offsets.
    delta_patch = _offsets(radius) @ strides
    flat_t, flat_mt, flat_st = t.reshape(-1), mean_t[0].reshape(-1), std_t[0].reshape(-1)
    flat_a, flat_ma, flat_sa = a.reshape(k, -1), mean_a.reshape(k, -1), std_a.reshape(k, -1)
    decide = torch.full((t.numel(),), -1, dtype=torch.int64)
    decide_at = torch.nonzero(box_dis.reshape(-1))[:, 0]
    decide[decide_at] = torch.arange(len(decide_at))
    values = torch.unique(lab)  # every label a patch can reach
    nlab = len(values)
    lab_index = torch.searchsorted(values, lab.reshape(k, -1))  # (K, box voxels) index into values
    # votes for voxels that are not to be decided go to one extra row, dropped after the loop
    posterior = torch.zeros((len(decide_at) + 1) * nlab, dtype=torch.float32)
    for start in range(0, len(centres), CHUNK):
        c = centres[start : start + CHUNK]
        patch_t = (flat_t[c[:, None] + delta_patch] - flat_mt[c][:, None]) / flat_st[c][:, None]  # (n, P)
        matched = c[None] + delta_search[best[:, start : start + CHUNK]]  # (K, n)
        diffs = torch.stack(
            [
                (
                    (flat_a[i][matched[i][:, None] + delta_patch] - flat_ma[i][matched[i]][:, None])
                    / flat_sa[i][matched[i]][:, None]
                    - patch_t
                ).abs()
                for i in range(k)
            ],
            1,
        )  # (n, K, P)
        w = jlf_weights(diffs, alpha=alpha, beta=beta).float()  # (n, K)
        voxel = c[:, None] + delta_patch  # (n, P): the voxels this centre votes for
        row = decide[voxel]
        row = row.masked_fill_(row < 0, len(decide_at)).mul_(nlab).reshape(-1)
        for i in range(k):
            slot = row + lab_index[i][voxel + (matched[i] - c)[:, None]].reshape(-1)
            posterior.index_add_(0, slot, w[:, i : i + 1].expand_as(voxel).reshape(-1))
    posterior = posterior.reshape(len(decide_at) + 1, nlab)[:-1].double()
    total = posterior.sum(1)
    top = posterior.max(1).values
    tied = posterior >= top[:, None] - TIE_TOLERANCE * top.clamp_min(1.0)[:, None]
    # Ties: the label of the first atlas (given order) that voted for a tied one here; else the lowest.
    choice = posterior.argmax(1)
    settled = torch.zeros(len(decide_at), dtype=torch.bool)
    own = lab_index[:, decide_at]  # (K, N) each atlas's own label at the voxel
    for i in range(k):
        idx = own[i]
        ok = ~settled & tied.gather(1, idx[:, None])[:, 0]
        choice = torch.where(ok, idx, choice)
        settled |= ok
    share = (top / torch.where(total > 0, total, 1.0)).clamp(0, 1).float()
    # the decided voxels in raster order of the box, which is their raster order in the grid
    return values[choice].numpy().astype(np.int32), share.numpy()


def _patch_stats(x: torch.Tensor, size: int, std_floor: float):
    """Per voxel of (C, D, H, W), over its ``size``^3 patch (zero outside): the mean, the sum of
    squared deviations from it, and the standard deviation (divisor n - 1), at least ``std_floor``."""
    npatch = size**3
    mean = box_sum(x[None], size)[0] / npatch
    ss = box_sum(x.square()[None], size)[0] - npatch * mean.square()
    std = (ss / max(npatch - 1, 1)).clamp_min(0).sqrt().clamp_min(std_floor)
    return mean, ss, std


def _best_offsets(t, a, stats_t, stats_a, centres, *, radius: int, search: int) -> torch.Tensor:
    """(K, n): per atlas of ``a`` (K, D, H, W) and patch centre (flat indices into the grid of ``t``,
    each at least ``radius + search`` from every face), the index into ``_offsets(search)`` of the
    offset whose normalised atlas patch is nearest the subject's (sum of squared differences; ties:
    the nearest offset). ``stats_*``: :func:`_patch_stats` of ``t[None]`` and ``a``.

    With u = (t - mean_t) / std_t and v = (a - mean_a) / std_a over a patch, SSD(u, v) = sum u^2
    + ss_a / std_a^2 - 2 (sum t a - P mean_t mean_a) / (std_t std_a); sum u^2 is the same at every
    offset, so it is left out, and the rest is compared times std_t / 2 (> 0). Each offset is scored
    over the whole inner box (the voxels ``radius + search`` from each face, where the centres lie)
    by shifted slices, and the best offsets are read at the centres at the end."""
    size = 2 * radius + 1
    shifts = _offsets(search)
    box = t.shape
    edge = radius + search
    inner = tuple(slice(edge, n - edge) for n in box)
    rows = tuple(slice(search, n - search) for n in box)  # the subject's voxels in the inner box's patches
    (mean_t, _, std_t), (mean_a, ss_a, std_a) = stats_t, stats_a
    half_std_t, scale_t = std_t[0][inner] / 2, size**3 * mean_t[0][inner]
    best = torch.empty((len(a), *half_std_t.shape), dtype=torch.int16 if len(shifts) <= 1 << 15 else torch.int32)
    for i in range(len(a)):
        q, g2, g3 = ss_a[i] / std_a[i].square(), mean_a[i] / std_a[i], 1.0 / std_a[i]
        best_ssd = torch.full(half_std_t.shape, float("inf"))
        best_i = best[i].zero_()
        for n, offset in enumerate(shifts.tolist()):
            at = _shifted(inner, offset)  # the atlas patch centres
            cross = _inner_box_sum(t[rows] * a[i][_shifted(rows, offset)], size)
            ssd = torch.mul(half_std_t, q[at]).addcmul_(scale_t, g2[at]).addcmul_(cross, g3[at], value=-1.0)
            best_i.masked_fill_(ssd < best_ssd, n)
            torch.minimum(best_ssd, ssd, out=best_ssd)
    return best[(slice(None), *(c - edge for c in torch.unravel_index(centres, box)))].long()


def jlf_weights(diffs: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    """(n, K) joint label fusion weights from (n, K, P) absolute patch differences atlas - subject:
    ``M_ij = (sum_p d_ip d_jp / (P - 1))^beta``, ``w = (M + alpha I)^-1 1``, negatives set to 0, sum 1."""
    n, k, npatch = diffs.shape
    m = (torch.einsum("nkp,nlp->nkl", diffs, diffs).double() / max(npatch - 1, 1)).pow(beta)
    m += alpha * torch.eye(k, dtype=torch.float64)
    w = torch.linalg.solve(m, torch.ones((n, k, 1), dtype=torch.float64))[..., 0].clamp_min(0)
    return w / w.sum(1, keepdim=True)
