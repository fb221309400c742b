"""Deformable registration of one pair with a trained UniReg model (+ optional instance optimisation).

Both images must be on the same grid (``unireg preprocess`` puts every subject and the atlas
template on the atlas grid). In the cohort workflow the **fixed** image is the subject and the
**moving** image is the atlas template, so warping the atlas labels with the field gives the
labels in the subject's (preprocessed) space.

Outputs of :func:`register_files` in ``out_dir``, named by :func:`unireg.layout.stage_names` (the
results layout's BIDS names given a subject and a space, else these plain names)::

    warped.nii.gz            moving image warped onto the fixed image (+ warped.json: its sidecar)
    displacement.nii.gz      field d (RAS mm, shape X,Y,Z,1,3, intent "vector"): fixed world point p
                             corresponds to moving world point p + d(p)
    displacement_itk.nii.gz  the same in ITK/ANTs convention (LPS: x and y components negated),
                             usable as a displacement-field transform by antsApplyTransforms
    warped_labels.nii.gz     (with --moving-labels) label map warped without interpolating values
    registration.json        device, timings, Jacobian statistics (% det <= 0, std log det) and the
                             reference-free QC of :func:`registration_qc` (key ``qc``)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .defaults import INSTANCE_OPT_SIMILARITY, MIRROR, NETWORK_GRID, NETWORK_GRIDS
from .errors import UniregError
from .fields import foreground_box, integrate, jacobian_stats, resize_field, to_world_mm, warp, warp_in_box
from .io import Image, load_image, save_displacement, save_image, write_text_atomic
from .layout import PLAIN_NAMES
from .losses import ImageSimilarity, box_sum, regulariser
from .model import UniRegNet, loaded_checkpoint
from .runtime import check_memory, execution_environment, keep_freed_memory, select_device
from .transforms import resample

OUTPUT_FILES = PLAIN_NAMES["register"]  # names outside the workflow (unireg.layout)


@dataclass
class InstanceOptOptions:
    steps: int = 0  # steps comparing at the image grid (after coarse_steps)
    coarse_steps: int = 0  # steps comparing descriptors pooled to the flow grid (first)
    similarity: str = INSTANCE_OPT_SIMILARITY  # squared local NCC (also locally inverted contrast) or "mind" (MIND-SSC)
    regulariser: str = "diffusion"
    weight: float = 0.3  # regulariser weight (diffusion of the flow-grid field)
    learning_rate: float = 0.3  # Adam step, flow-grid voxels
    integrate: str = "fine"  # "fine", "end", "step" or "none": see instance_optimise

    @classmethod
    def schedule(cls, total: int, **kwargs) -> InstanceOptOptions:
        """``total`` steps: the first two thirds on the flow grid, the rest on the image grid."""
        coarse = (2 * total + 1) // 3
        return cls(steps=total - coarse, coarse_steps=coarse, **kwargs)

    @property
    def total(self) -> int:
        return self.steps + self.coarse_steps


@dataclass
class RegistrationResult:
    warped: Image
    displacement_mm: np.ndarray  # (3, D, H, W), RAS mm on the fixed grid
    ddf: torch.Tensor  # (1, 3, D, H, W), fixed-grid voxels (unireg.model convention)
    warped_labels: Image | None = None
    info: dict = field(default_factory=dict)


def _tensor(image: Image, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.data, dtype=np.float32))[None, None].to(device)


def check_pair(fixed: Image, moving: Image, multiple: int = 16) -> None:
    if fixed.shape != moving.shape or not np.allclose(fixed.affine, moving.affine, atol=1e-3):
        raise UniregError(
            "fixed and moving images are not on the same grid; run 'unireg preprocess' "
            "on both (or resample them onto one grid) first",
            path=moving.path,
        )
    if any(s % multiple for s in fixed.shape):
        raise UniregError(
            f"grid shape {fixed.shape} is not divisible by {multiple}; use an atlas made by "
            "'unireg atlas prepare/import'",
            path=fixed.path,
        )


INTEGRATE = ("fine", "end", "step", "none")


def instance_optimise(
    model: UniRegNet,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    displacement: torch.Tensor,
    options: InstanceOptOptions,
    velocity: torch.Tensor | None = None,
) -> torch.Tensor:
    """Refine a predicted field by gradient descent on similarity + smoothness (test time);
    return the displacement on the image grid (image voxels).

    ``displacement`` (and, for a one-stage network, ``velocity``) is the network's prediction on
    the flow grid (:meth:`unireg.model.UniRegNet.predict`).

    The descriptors of both images (the images themselves for LNCC, MIND-SSC for ``mind``) are
    computed once. The optimised field lives on the flow grid. ``coarse_steps`` compare the
    descriptors average-pooled to the flow grid (``flow_stride``**3 times fewer voxels per step),
    then ``steps`` compare them at the image grid inside the box around the fixed image's
    foreground (its background adds nothing to either similarity; the loss is rescaled to the
    whole grid so the regulariser weight means the same).

    ``integrate`` (what the field is; the result is always its integral except for ``none``):
    ``fine`` (default) updates it as a displacement in the coarse steps (no integration: cheap)
    and as a stationary velocity, integrated by scaling and squaring at every step, in the image
    steps, so the result is a diffeomorphism fitted at full resolution; ``step`` integrates at
    every step (starting from ``velocity``, or for a cascade from its displacement taken as a
    velocity); ``end`` only once at the end (cheapest diffeomorphic; ~0.01 Dice lower);
    ``none`` returns the plain displacement (may fold). Measured in benchmarks/results/io_tuning.md.
    """
    if options.integrate not in INTEGRATE:
        raise UniregError(
            f"unknown instance-optimisation integrate {options.integrate!r}; choose one of {', '.join(INTEGRATE)}"
        )
    similarity = ImageSimilarity(options.similarity)
    smooth = regulariser(options.regulariser)
    image_shape = tuple(fixed.shape[2:])
    with torch.no_grad():
        fine = (similarity.descriptor(moving), similarity.descriptor(fixed))
        coarse = (
            tuple(torch.nn.functional.avg_pool3d(d, model.flow_stride) for d in fine) if model.flow_stride > 1 else fine
        )
        box = foreground_box(fixed, margin=similarity.kernel_size)  # whole windows stay inside
        fine = (fine[0], fine[1][(..., *box)])
        param = velocity if options.integrate == "step" and velocity is not None else displacement

    def field(p: torch.Tensor, shape: tuple[int, ...], image_grid: bool) -> torch.Tensor:
        integrated = options.integrate == "step" or (image_grid and options.integrate == "fine")
        return model.displacement(p, shape) if integrated else resize_field(p, shape)

    param = param.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([param], lr=options.learning_rate)
    for (source, target), steps, region in ((coarse, options.coarse_steps, None), (fine, options.steps, box)):
        fraction = 1.0 if region is None else target[0, 0].numel() / float(np.prod(image_shape))
        if steps:
            target = similarity.prepare(target)
        for _ in range(steps):
            optimiser.zero_grad()
            if region is None:
                warped = warp(source, field(param, tuple(source.shape[2:]), False))
            else:
                warped = warp_in_box(source, field(param, image_shape, True), region)
            loss = fraction * similarity.compare(warped, target) + options.weight * smooth(param)
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        if options.integrate == "none":
            return resize_field(param.detach(), image_shape)
        return model.displacement(param.detach(), image_shape)


def network_factor(grid_spacing, model_spacing) -> int:
    """k when the model was trained on a grid k times coarser (an integer k >= 2, the same on every
    axis), else 1: the network then predicts on the images pooled by k (:func:`register_images`)."""
    ratio = np.asarray(model_spacing, dtype=float) / np.asarray(grid_spacing, dtype=float)
    k = int(round(float(ratio.mean())))
    return k if k >= 2 and np.allclose(ratio, k, rtol=0.02) else 1


def network_pooling(grid_shape, grid_spacing, model_spacing, network_grid: str = NETWORK_GRID) -> int:
    """How much the network pools the images on this grid (``--network-grid``): ``"model"`` pools
    by :func:`network_factor` where the pooled grid still suits the network (shape divisible by
    16 after pooling), ``"atlas"`` (or a model without a recorded grid) never: 1."""
    if network_grid not in NETWORK_GRIDS:
        raise UniregError(f"unknown network grid {network_grid!r}; choose one of {', '.join(NETWORK_GRIDS)}")
    if network_grid != "model" or not model_spacing:
        return 1
    k = network_factor(grid_spacing, model_spacing)
    return 1 if any(s % (16 * k) for s in grid_shape) else k


def left_right_axis(affine: np.ndarray) -> int:
    """The voxel axis of a grid that runs closest to world left-right (RAS x): the axis of
    test-time mirroring (``register_images(mirror=True)``); 0 on every atlas grid (RAS)."""
    return int(np.argmax(np.abs(np.asarray(affine)[0, :3])))


def register_images(
    fixed: Image,
    moving: Image,
    model: UniRegNet,
    *,
    moving_labels: Image | None = None,
    instance_opt: InstanceOptOptions | None = None,
    device: torch.device | str = "cpu",
    fixed_mask: Image | None = None,
    network_factor: int = 1,
    mirror: bool = MIRROR,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (same grid). Returns the warped image and the field.

    ``mirror``: the network's prediction is averaged with its prediction for both images mirrored
    left-right (:meth:`unireg.model.UniRegNet.predict_images`, along :func:`left_right_axis`).

    ``network_factor`` = k > 1: the network predicts on both images average-pooled by k (e.g. a
    model trained at 2 mm on a 1 mm grid: k = 2, :func:`network_factor`); its field is resized to
    this grid, where instance optimisation refines it."""
    check_pair(fixed, moving, multiple=16 * network_factor)
    device = torch.device(device)
    keep_freed_memory()
    check_memory(fixed.shape, (instance_opt or InstanceOptOptions()).total, device)
    model = model.to(device).eval()
    timings = {}
    fixed_t, moving_t = _tensor(fixed, device), _tensor(moving, device)
    mirror_axis = left_right_axis(fixed.affine) if mirror else None
    t0 = time.perf_counter()
    with torch.no_grad():
        inputs = [
            torch.nn.functional.avg_pool3d(t, network_factor) if network_factor > 1 else t for t in (fixed_t, moving_t)
        ]
        flow_ddf, velocity = model.predict_images(*inputs, mirror_axis=mirror_axis)
        flow_shape = model.flow_shape(tuple(fixed_t.shape[2:]))
        if tuple(flow_ddf.shape[2:]) != flow_shape:  # the network ran on pooled images
            if velocity is not None:  # a velocity is resized before integration, as the network was trained
                velocity = resize_field(velocity, flow_shape)
                flow_ddf = integrate(velocity, model.int_steps)
            else:
                flow_ddf = resize_field(flow_ddf, flow_shape)
    timings["predict_s"] = time.perf_counter() - t0
    opt = instance_opt or InstanceOptOptions()
    if opt.total > 0:
        t0 = time.perf_counter()
        ddf = instance_optimise(model, fixed_t, moving_t, flow_ddf, opt, velocity=velocity)
        timings["instance_opt_s"] = time.perf_counter() - t0
    else:
        with torch.no_grad():
            ddf = resize_field(flow_ddf, tuple(fixed_t.shape[2:]))
    with torch.no_grad():
        warped = warp(moving_t, ddf)
        warped_labels = None
        if moving_labels is not None:
            if moving_labels.shape != moving.shape:
                moving_labels = resample(moving_labels, moving.grid)
            lab = torch.from_numpy(moving_labels.data.astype(np.int64))[None, None].to(device)
            warped_labels = warp(lab.float(), ddf, label=True).round().long()
        mask_t = _tensor(fixed_mask, device) if fixed_mask is not None else None
        stats = jacobian_stats(ddf, mask_t)
    displacement_mm = to_world_mm(ddf, fixed.affine)
    info = {
        "device": str(device),
        "network_factor": network_factor,
        "mirror_axis": mirror_axis,
        "instance_opt_steps": opt.total,
        "instance_opt": vars(opt) if opt.total else None,
        "jacobian": stats,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    return RegistrationResult(
        warped=fixed.with_data(warped[0, 0].cpu().numpy(), is_label=False),
        displacement_mm=displacement_mm.astype(np.float32),
        ddf=ddf.cpu(),
        warped_labels=None
        if warped_labels is None
        else fixed.with_data(warped_labels[0, 0].cpu().numpy().astype(np.int32), is_label=True),
        info=info,
    )


# --------------------------------------------------------------------------- reference-free QC

#: Window (voxels per side) of the QC's local NCC: the default kernel of instance optimisation.
QC_WINDOW = 7
QC_SIMILARITY = f"mean squared local NCC ({QC_WINDOW}^3-voxel windows) inside the fixed mask"


def masked_local_ncc2(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, size: int = QC_WINDOW) -> float:
    """Mean over the voxels where ``mask > 0`` of the squared local NCC of ``a`` and ``b``.

    ``a``, ``b``, ``mask``: ``(1, 1, D, H, W)`` on one grid. Local NCC at a voxel is the Pearson
    correlation of the two images over the ``size``^3 window centred there (zero outside the
    grid), squared so that a locally inverted contrast (T2 vs T1) scores like a matching one: in
    [0, 1], 1 = locally affine-related intensities everywhere. A window where either image is
    constant (variance < 1e-6 of the image's variance in the mask) scores 0. NaN for an empty mask.
    """
    inside = mask > 0
    if not bool(inside.any()):
        return float("nan")
    box = foreground_box(inside.to(torch.uint8), margin=size // 2)  # every window around the mask
    a, b, inside = (t[(..., *box)].double() for t in (a, b, inside))
    inside = inside > 0
    n = float(size**3)
    sa, sb, saa, sbb, sab = box_sum(torch.cat([a, b, a * a, b * b, a * b], dim=1), size).unbind(1)
    var_a, var_b = saa - sa * sa / n, sbb - sb * sb / n
    floor_a, floor_b = (1e-6 * n * float(t[inside].var()) + 1e-12 for t in (a, b))
    cross = sab - sa * sb / n
    ncc2 = torch.where(
        (var_a > floor_a) & (var_b > floor_b),
        cross * cross / (var_a * var_b).clamp_min(1e-300),
        torch.zeros_like(cross),
    )
    return float(ncc2.clamp(max=1.0)[inside[:, 0]].mean())


def mask_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice of two masks (``> 0``) of one shape; NaN when both are empty."""
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def registration_qc(
    fixed: Image,
    moving: Image,
    result: RegistrationResult,
    *,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    moving_labels: Image | None = None,
) -> dict:
    """Registration quality that needs no reference labels (``registration.json`` key ``qc``).

    * ``similarity_before`` / ``similarity_after``: :func:`masked_local_ncc2` of the moving image
      as given (affinely aligned) / of the warped moving image with the fixed image, inside the
      fixed mask (``fixed_mask``; without one, the fixed image's non-zero voxels). Should rise.
    * ``brain_mask_dice_before`` / ``brain_mask_dice_after``: Dice of that fixed mask and the
      moving brain mask (``moving_mask``, else ``moving_labels > 0``) as given / warped with the
      field (nearest neighbour); null when there is neither.
    * ``fixed_mask`` / ``moving_mask``: which masks were used, in words.

    Folding and log-Jacobian spread are the ``jacobian`` entry (:func:`unireg.model.jacobian_stats`).
    Computed on the CPU from ``result`` (its warped image and field).
    """
    fixed_t, moving_t, warped_t = (_tensor(image, "cpu") for image in (fixed, moving, result.warped))
    region = _tensor(fixed_mask, "cpu") if fixed_mask is not None else (fixed_t != 0).float()
    qc = {
        "similarity": QC_SIMILARITY,
        "similarity_before": round(masked_local_ncc2(moving_t, fixed_t, region), 4),
        "similarity_after": round(masked_local_ncc2(warped_t, fixed_t, region), 4),
        "brain_mask_dice_before": None,
        "brain_mask_dice_after": None,
        "fixed_mask": "fixed mask" if fixed_mask is not None else "fixed image != 0",
        "moving_mask": "moving mask" if moving_mask is not None else None,
    }
    if moving_mask is None and moving_labels is not None:
        moving_mask, qc["moving_mask"] = moving_labels, "moving labels > 0"
    if moving_mask is not None:
        if moving_mask.shape != moving.shape:
            moving_mask = resample(moving_mask, moving.grid)
        mask_t = (_tensor(moving_mask, "cpu") > 0).float()
        with torch.no_grad():
            warped_mask = warp(mask_t, result.ddf.float(), label=True)
        qc["brain_mask_dice_before"] = round(mask_dice(region, mask_t), 4)
        qc["brain_mask_dice_after"] = round(mask_dice(region, warped_mask), 4)
    return qc


def register_files(
    fixed_path,
    moving_path,
    out_dir,
    *,
    model_path=None,
    moving_labels_path=None,
    instance_opt: InstanceOptOptions | None = None,
    device: str = "auto",
    subject: str | None = None,
    fixed_mask_path=None,
    moving_mask_path=None,
    network_grid: str = NETWORK_GRID,
    mirror: bool = MIRROR,
    names: dict[str, str] | None = None,
) -> RegistrationResult:
    """Load, register, and write the outputs listed in the module docstring (JSON last).

    ``moving_mask_path``: the moving image's brain mask (the atlas's ``atlas_brainmask.nii.gz``)
    for the brain-mask Dice of :func:`registration_qc` (default: moving labels > 0). ``names``:
    file names by :data:`OUTPUT_FILES` key (default those plain names; the workflow passes
    :func:`unireg.layout.stage_names`). ``network_grid``: ``"model"`` predicts at the model's training
    spacing where the grid is an integer factor finer, ``"atlas"`` on the grid (:func:`network_pooling`).
    ``mirror``: test-time mirroring (:func:`register_images`)."""
    names = {**OUTPUT_FILES, **(names or {})}
    try:
        dev = select_device(device)
        model, checkpoint = loaded_checkpoint(model_path, dev)
    except UniregError as err:
        err.with_context(subject=subject)
        raise
    fixed = load_image(fixed_path, subject=subject)
    moving = load_image(moving_path, subject=subject)
    labels = load_image(moving_labels_path, label=True, subject=subject) if moving_labels_path else None
    mask = load_image(fixed_mask_path, label=True, subject=subject) if fixed_mask_path else None
    moving_mask = load_image(moving_mask_path, label=True, subject=subject) if moving_mask_path else None
    trained = (checkpoint.get("grid") or {}).get("spacing_mm")
    try:
        factor = network_pooling(fixed.shape, fixed.spacing, trained, network_grid)
        result = register_images(
            fixed,
            moving,
            model,
            moving_labels=labels,
            instance_opt=instance_opt,
            device=dev,
            fixed_mask=mask,
            network_factor=factor,
            mirror=mirror,
        )
        result.info["qc"] = registration_qc(
            fixed, moving, result, fixed_mask=mask, moving_mask=moving_mask, moving_labels=labels
        )
    except UniregError as err:
        err.with_context(subject=subject)
        raise
    out_dir = Path(out_dir)
    save_image(result.warped, out_dir / names["warped"])
    # the warped template's BIDS sidecar (the atlas templates are brains without skull)
    write_text_atomic(
        out_dir / names["warped_info"],
        json.dumps({"SkullStripped": True, "Description": "the atlas template warped onto the subject"}, indent=2)
        + "\n",
    )
    save_displacement(result.displacement_mm, fixed.affine, out_dir / names["displacement"])
    save_displacement(result.displacement_mm, fixed.affine, out_dir / names["displacement_itk"], lps=True)
    if result.warped_labels is not None:
        save_image(result.warped_labels, out_dir / names["labels"])
    result.info.update(
        {
            "subject": subject,
            "model": str(model_path or "default"),
            "extractor": checkpoint.get("extractor"),
            "environment": execution_environment(dev),
            "displacement": "RAS mm, fixed world p -> moving world p + d(p)",
        }
    )
    write_text_atomic(out_dir / names["info"], json.dumps(result.info, indent=2) + "\n")
    return result
