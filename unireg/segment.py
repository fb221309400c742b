"""Multi-atlas segmentation of one subject: every member of an atlas set registered onto the subject
(the model loaded once), their labels fused (:mod:`unireg.fusion`) on the subject's preprocessed grid.

Outputs of :func:`segment_files` (plain names; ``unireg propagate --atlas-labels <labels>`` without a
displacement then brings the fused labels onto the native grid, through the preprocessing affine)::

    labels.nii.gz        fused label map (int32) on the fixed (atlas) grid
    confidence.nii.gz    per-voxel share of the weight the winning label got (float32, 0..1)
    segment.json         members, fusion and its parameters, disagreement, per-member timings and QC

Per-member fields and warped images live only in memory: disk per subject is the three files above.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .atlas_set import AtlasSet, load_atlas_set
from .defaults import FUSION, FUSIONS, NETWORK_GRID
from .errors import UniregError
from .fusion import JLF_DEFAULTS, WEIGHTED_DEFAULTS, fuse
from .io import Image, load_image, save_image, write_text_atomic

OUTPUT_FILES = {"labels": "labels.nii.gz", "confidence": "confidence.nii.gz", "info": "segment.json"}
DEFAULT_FUSION = FUSION


def segment_images(
    fixed: Image,
    atlas_set: AtlasSet,
    model,
    *,
    fusion: str = DEFAULT_FUSION,
    k: int | None = None,
    instance_opt=None,
    device="cpu",
    network_factor: int = 1,
    fixed_mask: Image | None = None,
):
    """Register the first ``k`` members (default all) onto ``fixed`` and fuse their labels.
    Returns (:class:`unireg.fusion.FusionResult`, info dict)."""
    from .register import register_images

    if fusion not in FUSIONS:
        raise UniregError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    members = list(zip(atlas_set.ids, atlas_set.members))[: k or None]
    if not members:
        raise UniregError("the atlas set has no members", path=atlas_set.path)
    labels, images, per_member = [], [], []
    for sid, member in members:
        t0 = time.perf_counter()
        result = register_images(
            fixed,
            member.image,
            model,
            moving_labels=member.labels,
            instance_opt=instance_opt,
            device=device,
            fixed_mask=fixed_mask,
            network_factor=network_factor,
        )
        labels.append(result.warped_labels.data)
        images.append(result.warped.data)
        per_member.append(
            {
                "id": sid,
                "seconds": round(time.perf_counter() - t0, 3),
                "folding_percent": result.info["jacobian"]["folding_percent"],
            }
        )
    t0 = time.perf_counter()
    fused = fuse(labels, fusion, images=images, target=np.asarray(fixed.data, np.float32))
    info = {
        "fusion": fusion,
        "fusion_parameters": {"weighted": WEIGHTED_DEFAULTS, "jlf": JLF_DEFAULTS}.get(fusion, {}),
        "members": per_member,
        "k": len(members),
        "disagreement_percent": round(100.0 * fused.disagreement_fraction, 3),
        "fusion_seconds": round(time.perf_counter() - t0, 3),
        "instance_opt_steps": 0 if instance_opt is None else instance_opt.total,
        "network_factor": network_factor,
    }
    return fused, info


def segment_files(
    fixed_path,
    atlas_set_path,
    out_dir,
    *,
    fusion: str = DEFAULT_FUSION,
    k: int | None = None,
    model_path=None,
    instance_opt=None,
    device: str = "auto",
    subject: str | None = None,
    fixed_mask_path=None,
    network_grid: str = NETWORK_GRID,
) -> dict:
    """Load, segment (:func:`segment_images`) and write :data:`OUTPUT_FILES` into ``out_dir`` (JSON last)."""
    from .model import load_checkpoint
    from .register import network_pooling
    from .runtime import select_device

    try:
        atlas_set = load_atlas_set(atlas_set_path)
        dev = select_device(device)
        model, checkpoint = load_checkpoint(model_path, dev)
        fixed = load_image(fixed_path, subject=subject)
        mask = load_image(fixed_mask_path, label=True, subject=subject) if fixed_mask_path else None
        if fixed.shape != atlas_set.grid.shape or not np.allclose(fixed.affine, atlas_set.grid.affine, atol=1e-3):
            raise UniregError(
                "the image is not on the atlas set's reference grid; preprocess it onto "
                f"{Path(atlas_set.path) / 'reference'} first",
                path=fixed_path,
            )
        trained = (checkpoint.get("grid") or {}).get("spacing_mm")
        factor = network_pooling(fixed.shape, fixed.spacing, trained, network_grid)
        fused, info = segment_images(
            fixed,
            atlas_set,
            model,
            fusion=fusion,
            k=k,
            instance_opt=instance_opt,
            device=dev,
            network_factor=factor,
            fixed_mask=mask,
        )
    except UniregError as err:
        err.with_context(subject=subject)
        raise
    out = Path(out_dir)
    save_image(fixed.with_data(fused.labels.astype(np.int32), is_label=True), out / OUTPUT_FILES["labels"])
    save_image(fixed.with_data(fused.confidence, is_label=False), out / OUTPUT_FILES["confidence"])
    info.update({"subject": subject, "atlas_set": str(atlas_set.path), "device": str(dev)})
    write_text_atomic(out / OUTPUT_FILES["info"], json.dumps(info, indent=2) + "\n")
    return info
