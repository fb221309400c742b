"""Preprocessing of one subject image for atlas registration.

Steps, in order (each recorded in ``preprocess.json``):

1. load and check (3-D, plausible size and voxel size, finite voxels: see
   :func:`unireg.intensity.handle_nonfinite`, some signal, a field of view that covers the brain:
   :func:`check_field_of_view`);
2. reorient to RAS (exact: a permutation/flip of voxel axes);
3. brain extraction with deepbet (optional; on by default for T1 heads);
4. robust intensity normalisation to [0, 1] inside the brain (or non-zero) mask;
5. affine pre-alignment to the atlas template (:mod:`unireg.affine`), refused when its scaling is
   implausible for a head (:func:`check_alignment`);
6. resampling onto the atlas grid (shape divisible by 16).

Outputs in ``out_dir``, named by :func:`unireg.layout.stage_names` (the results layout's BIDS
names given a subject and a space, else these plain names)::

    preproc.nii.gz          normalised image on the atlas grid
    brainmask.nii.gz        brain mask on the atlas grid
    affine.txt              4x4 atlas world -> subject world (RAS mm), see unireg.affine
    affine_itk.txt          the same as an ITK AffineTransform file (LPS), for ANTs/ITK tools
    preprocess.json         what was done, with parameters, intensity percentiles and timings
                            (the preprocessed image's BIDS sidecar: SkullStripped)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import __version__
from .affine import align_affine, write_affine_txt, write_itk_affine
from .atlas import Atlas
from .errors import UniregError
from .intensity import handle_nonfinite, normalise_intensity, require_signal
from .io import Grid, Image, apply_affine, load_image, save_image, write_text_atomic
from .layout import PLAIN_NAMES
from .transforms import reorient_to_ras, resample

OUTPUT_FILES = PLAIN_NAMES["preprocess"]  # names outside the workflow (unireg.layout)
MAX_VOXELS = 512**3
MIN_AXIS_VOXELS = 10  # fewer voxels along an axis: a single slice, a slab or a localiser, not a head volume
MAX_VOXEL_MM = 20.0
# An image whose field of view covers less than this fraction of the atlas brain's extent along a
# world (RAS) axis holds part of a brain (a slab, a cropped head): a 12-parameter affine to a
# whole-brain atlas is then unconstrained along that axis (it shrinks the atlas into the box), so
# such images are refused before any work is done. A whole head covers > 100 %; nibabel's partial
# T1 (the centre of a brain, 66 x 82 x 50 mm) covers 36-47 % of the MNI brain.
MIN_FOV_FRACTION = 0.6
# The affine maps the atlas head onto the subject's: scaling it by more than MAX_SCALE (or less than
# 1 / MAX_SCALE) along any axis, or by MAX_ANISOTROPY times more along one axis than another, is no
# head-to-head difference but a failed alignment (e.g. a header voxel size 4x too large).
MAX_SCALE = 2.0
MAX_ANISOTROPY = 1.8


@dataclass
class PreprocessOptions:
    brain_extraction: bool = True
    similarity: str = "mi"
    nonfinite: str = "error"
    percentiles: tuple[float, float] = (0.5, 99.5)
    seed: int = 0
    device: str = "cpu"


@dataclass
class PreprocessResult:
    image: Image
    mask: Image
    matrix: np.ndarray
    info: dict = field(default_factory=dict)


@lru_cache(maxsize=2)
def _brain_extractor(device: str):
    from deepbet import BrainExtraction  # heavy import, only when used

    return BrainExtraction(no_gpu=device == "cpu")


def extract_brain(image: Image, *, device: str = "cpu", subject: str | None = None) -> Image:
    """Brain mask (label image, 1 = brain) of a T1-weighted head with deepbet, on ``image``'s grid."""
    import nibabel as nib

    try:
        _, mask, _ = _brain_extractor(device).run(nib.Nifti1Image(image.data.astype(np.float32), image.affine))
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise UniregError(
            f"brain extraction failed ({exc}); if the image is already skull-stripped or "
            "not a brain, turn brain extraction off",
            subject=subject,
            path=image.path,
        ) from exc
    data = np.asarray(mask.dataobj).astype(np.uint8)
    if data.sum() == 0:
        raise UniregError(
            "brain extraction found no brain; if the image is not a T1 head, turn brain extraction off",
            subject=subject,
            path=image.path,
        )
    return image.with_data(data, is_label=True)


def check_image(image: Image, subject: str | None = None) -> None:
    """Reject inputs no later step can handle well, with a message that says why."""
    if image.data.size > MAX_VOXELS:
        raise UniregError(
            f"image has {image.data.size:,} voxels (shape {image.shape}), more than the "
            f"{MAX_VOXELS:,} supported; downsample it first",
            subject=subject,
            path=image.path,
        )
    if min(image.shape) < MIN_AXIS_VOXELS:
        raise UniregError(
            f"image has only {min(image.shape)} voxels along one axis (shape {image.shape}); "
            f"a 3-D head image needs at least {MIN_AXIS_VOXELS} (a single slice, slab or localiser?)",
            subject=subject,
            path=image.path,
        )
    spacing = np.asarray(image.spacing)
    if np.any(spacing <= 0) or np.any(spacing > MAX_VOXEL_MM) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-6:
        raise UniregError(
            f"implausible voxel size {tuple(round(float(v), 3) for v in spacing)} mm in the affine",
            subject=subject,
            path=image.path,
        )


def world_extent(grid: Grid, inside: np.ndarray | None = None) -> np.ndarray:
    """Extent (mm) along the world R, A, S axes of the voxels of ``grid`` (those of ``inside`` if
    given), voxel sizes included."""
    corners = (
        np.argwhere(inside)
        if inside is not None
        else np.array(list(np.ndindex(2, 2, 2))) * (np.asarray(grid.shape) - 1)
    )
    world = apply_affine(grid.affine, corners.astype(float))
    return np.ptp(world, axis=0) + np.abs(grid.affine[:3, :3]).sum(axis=1)


def check_field_of_view(image: Image, atlas: Atlas, subject: str | None = None) -> None:
    """Refuse a partial field of view (:data:`MIN_FOV_FRACTION` of the atlas brain along a world axis)."""
    fov = world_extent(image.grid)
    brain = world_extent(atlas.grid, atlas.mask.data > 0)
    if np.any(fov < MIN_FOV_FRACTION * brain):
        fov_mm, brain_mm = (" x ".join(f"{v:.0f}" for v in extent) for extent in (fov, brain))
        message = (
            f"partial field of view: the image covers {fov_mm} mm (R x A x S), less than {MIN_FOV_FRACTION:.0%} "
            f"of the atlas brain's {brain_mm} mm along an axis (a slab or a cropped head?); register a series "
            "that covers the whole brain"
        )
        raise UniregError(message, subject=subject, path=image.path)


def check_alignment(matrix: np.ndarray, subject: str | None = None, path: str | None = None) -> np.ndarray:
    """The scaling of the atlas -> subject affine (singular values), after checking it is plausible for heads."""
    scales = np.linalg.svd(matrix[:3, :3], compute_uv=False)
    if scales.min() < 1.0 / MAX_SCALE or scales.max() > MAX_SCALE or scales.max() / scales.min() > MAX_ANISOTROPY:
        shown = " x ".join(f"{s:.2f}" for s in scales)
        raise UniregError(
            f"affine alignment to the atlas is implausible: it scales the atlas by {shown} (heads "
            f"differ by less than x{MAX_SCALE:g} and x{MAX_ANISOTROPY:g} between axes); check the "
            "header's voxel size and orientation and that the image shows the whole head",
            subject=subject,
            path=path,
        )
    return scales


def preprocess_image(
    image: Image, atlas: Atlas, options: PreprocessOptions | None = None, subject: str | None = None
) -> PreprocessResult:
    """Run steps 2-6 on a loaded image (see module docstring). Pure: writes nothing."""
    options = options or PreprocessOptions()
    timings = {}
    t0 = time.perf_counter()
    check_image(image, subject)
    image, finite = handle_nonfinite(image, options.nonfinite, subject=subject)
    require_signal(image, finite, subject=subject)
    check_field_of_view(image, atlas, subject)
    native = {
        "shape": list(image.shape),
        "spacing_mm": [round(s, 4) for s in image.spacing],
        "orientation": "".join(image.orientation),
        "nonfinite_voxels": int(finite.size - finite.sum()),
    }
    ras = reorient_to_ras(image)
    finite_ras = reorient_to_ras(image.with_data(finite.astype(np.uint8), is_label=True)).data > 0
    timings["load_reorient_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if options.brain_extraction:
        mask = extract_brain(ras, device=options.device, subject=subject).data > 0
    else:
        mask = ras.data != 0  # already skull-stripped, or not a brain: every non-zero voxel counts
    mask &= finite_ras
    if not mask.any():
        raise UniregError("image is empty (all voxels are zero)", subject=subject, path=image.path)
    timings["brain_extraction_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    normalised = normalise_intensity(
        ras, mask=mask, percentiles=options.percentiles, zero_outside=options.brain_extraction, subject=subject
    )
    timings["normalisation_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        fit = align_affine(
            normalised,
            atlas.image,
            moving_mask=mask,
            fixed_mask=atlas.mask.data > 0,
            similarity=options.similarity,
            seed=options.seed,
        )
    except UniregError as err:
        err.with_context(subject=subject, path=image.path)
        raise
    scales = check_alignment(fit.matrix, subject=subject, path=image.path)
    timings["affine_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out_image = resample(normalised, atlas.grid, fit.matrix)
    mask_image = ras.with_data(mask.astype(np.uint8), is_label=True)
    out_mask = resample(mask_image, atlas.grid, fit.matrix)
    timings["resample_s"] = time.perf_counter() - t0

    atlas_mask = atlas.mask.data > 0
    overlap = (
        2.0 * np.logical_and(out_mask.data > 0, atlas_mask).sum() / max(1, (out_mask.data > 0).sum() + atlas_mask.sum())
    )
    info = {
        "unireg_version": __version__,
        "subject": subject,
        "input": {"file": Path(image.path).name if image.path else None, **native},
        "steps": {
            "reorient": {"to": "RAS"},
            "brain_extraction": {
                "method": "deepbet" if options.brain_extraction else "nonzero voxels",
                "mask_volume_ml": float(mask.sum() * np.prod(ras.spacing) / 1000.0),
            },
            "normalisation": normalised.meta.get("normalisation"),
            "affine": {
                "similarity": fit.similarity,
                "seed": options.seed,
                "init": "centre of mass",
                "loss_before": fit.loss_before,
                "loss_after": fit.loss_after,
                "levels": fit.history,
                "scales": [round(float(v), 4) for v in scales],
                "convention": "atlas world -> subject world, RAS mm",
            },
            "resample": {
                "grid_shape": list(atlas.grid.shape),
                "spacing_mm": list(atlas.grid.spacing),
                "interpolation": "linear (image), nearest (mask)",
            },
        },
        "qc": {"brain_mask_dice_with_atlas": round(float(overlap), 4)},
        "SkullStripped": bool(options.brain_extraction),  # BIDS: the preprocessed image's sidecar
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    return PreprocessResult(image=out_image, mask=out_mask, matrix=fit.matrix, info=info)


def preprocess_file(
    image_path: str | Path,
    atlas: Atlas,
    out_dir: str | Path,
    options: PreprocessOptions | None = None,
    subject: str | None = None,
    names: dict[str, str] | None = None,
) -> PreprocessResult:
    """Load ``image_path``, preprocess it onto ``atlas`` and write the outputs into ``out_dir``.

    ``names``: file names by :data:`OUTPUT_FILES` key (default those plain names; the workflow
    passes :func:`unireg.layout.stage_names`). The JSON is written last, so its presence means the
    folder is complete.
    """
    names = {**OUTPUT_FILES, **(names or {})}
    image = load_image(image_path, subject=subject, max_voxels=MAX_VOXELS)
    result = preprocess_image(image, atlas, options, subject=subject)
    out_dir = Path(out_dir)
    save_image(result.image, out_dir / names["image"])
    save_image(result.mask, out_dir / names["mask"])
    write_affine_txt(out_dir / names["affine"], result.matrix)
    write_itk_affine(out_dir / names["affine_itk"], result.matrix)
    result.info["atlas"] = atlas.path
    write_text_atomic(out_dir / names["info"], json.dumps(result.info, indent=2) + "\n")
    return result
