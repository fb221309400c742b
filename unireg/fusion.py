"""Multi-atlas label fusion: K atlases' labels, propagated onto one subject, fused into one label map.

Every rule scores each candidate label at each voxel by the weight of the atlases that vote for it
and keeps the best:

* ``majority``: every atlas weighs 1.
* ``weighted``: locally weighted voting (Artaechevarria et al. 2009, "inverse" weighting; Sabuncu et
  al. 2010): atlas k weighs ``(MSD_k(x) + eps)^-p`` at voxel x, where MSD_k is the mean squared
  intensity difference between the subject and atlas k's warped image over a ``(2 radius + 1)^3``
  window around x (:data:`WEIGHTED_DEFAULTS`: radius 2 voxels, p = 1).
* ``jlf``: joint label fusion (Wang et al. 2013, PAMI 35(3)): the weights minimise the expected joint
  error of the atlases, ``w = (M + alpha I)^-1 1 / (1^T (M + alpha I)^-1 1)`` with ``M_ij(x) =
  [mean_{y in N(x)} |A_i(y) - T(y)| |A_j(y) - T(y)|]^beta`` over the window N(x) (:data:`JLF_DEFAULTS`:
  radius 2, alpha 0.1, beta 2: antsJointFusion's defaults; no local patch search, i.e. search radius 0,
  and the images' own normalisation rather than per-patch normalisation). Atlases that agree in their
  errors share weight; one that errs differently from the rest gains it.

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

from .defaults import FUSIONS
from .errors import UniregError
from .losses import box_sum

__all__ = ["FUSIONS", "fuse"]
WEIGHTED_DEFAULTS = {"radius": 2, "power": 1.0, "eps": 1e-3}
JLF_DEFAULTS = {"radius": 2, "alpha": 0.1, "beta": 2.0}
TIE_TOLERANCE = 1e-9
CHUNK = 1 << 18  # voxels per batched solve in jlf


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
) -> FusionResult:
    """Fuse ``labels`` (K label maps, or an array (K, *shape)) with ``fusion`` (one of :data:`FUSIONS`).

    ``images`` (K warped atlas images) and ``target`` (the subject's image), same grid: needed by
    ``weighted`` and ``jlf``. ``options`` override :data:`WEIGHTED_DEFAULTS` / :data:`JLF_DEFAULTS`."""
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
    votes = stack.reshape(k, -1)[:, where]  # (K, N) labels at the disagreement voxels
    if fusion == "majority":
        weights = np.ones(votes.shape, np.float64)
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
        else:
            weights = jlf_weights(imgs, target, where, **{**JLF_DEFAULTS, **(options or {})})
    best, share = vote(votes, weights)
    fused.reshape(-1)[where] = best
    confidence.reshape(-1)[where] = share
    return FusionResult(fused, confidence, float(len(where)) / agree.size)


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


def jlf_weights(images, target, where, *, radius: int, alpha: float, beta: float) -> np.ndarray:
    """(K, N) joint label fusion weights at the flat voxel indices ``where`` (module docstring)."""
    k = len(images)
    t = torch.from_numpy(target)
    idx = torch.from_numpy(where)
    diffs = [(torch.from_numpy(image) - t).abs() for image in images]
    m = torch.empty((len(where), k, k), dtype=torch.float64)
    for i in range(k):
        for j in range(i, k):
            local = _window_mean((diffs[i] * diffs[j])[None], radius)[0].reshape(-1)[idx].double()
            m[:, i, j] = m[:, j, i] = local.clamp_min(0).pow(beta)
    m += alpha * torch.eye(k, dtype=torch.float64)
    ones = torch.ones((k, 1), dtype=torch.float64)
    weights = torch.empty((len(where), k), dtype=torch.float64)
    for start in range(0, len(where), CHUNK):
        sol = torch.linalg.solve(m[start : start + CHUNK], ones.expand(min(CHUNK, len(where) - start), k, 1))[..., 0]
        weights[start : start + CHUNK] = sol / sol.sum(1, keepdim=True)
    return weights.T.numpy()
