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
from .defaults import FUSION, FUSIONS, MIRROR, NETWORK_GRID
from .errors import UniregError
from .fusion import WEIGHTED_DEFAULTS, fuse, jlf_parameters
from .io import Image, load_image, save_image, write_text_atomic
from .layout import PLAIN_NAMES

OUTPUT_FILES = PLAIN_NAMES["segment"]
DEFAULT_FUSION = FUSION
QC_KEYS = ("similarity_before", "similarity_after", "brain_mask_dice_before", "brain_mask_dice_after")


def summarise_members(per_member: list[dict]) -> tuple[dict, dict]:
    """(``jacobian``, ``qc``) of the whole segmentation from each member's: the worst member's
    folding and std log det(J) (so a single folding registration is flagged), the members' mean QC."""
    jacobian = {key: max(m["jacobian"][key] for m in per_member) for key in ("folding_percent", "log_jacobian_std")}
    qc = {"similarity": per_member[0]["qc"]["similarity"], "aggregate": "mean over members"}
    for key in QC_KEYS:
        values = [m["qc"][key] for m in per_member if m["qc"].get(key) is not None]
        qc[key] = round(float(np.mean(values)), 4) if values else None
    return jacobian, qc


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
    mirror: bool = MIRROR,
):
    """Register the first ``k`` members (default all) onto ``fixed`` and fuse their labels.
    Returns (:class:`unireg.fusion.FusionResult`, info dict)."""
    from .register import register_images, registration_qc

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
            mirror=mirror,
        )
        labels.append(result.warped_labels.data)
        images.append(result.warped.data)
        jac = result.info["jacobian"]
        per_member.append(
            {
                "id": sid,
                "seconds": round(time.perf_counter() - t0, 3),
                "folding_percent": jac["folding_percent"],
                "jacobian": {k: jac[k] for k in ("folding_percent", "log_jacobian_std")},
                "qc": registration_qc(
                    fixed,
                    member.image,
                    result,
                    fixed_mask=fixed_mask,
                    moving_mask=member.mask,
                    moving_labels=member.labels,
                ),
            }
        )
    t0 = time.perf_counter()
    fused = fuse(labels, fusion, images=images, target=np.asarray(fixed.data, np.float32), spacing=fixed.spacing)
    jacobian, qc = summarise_members(per_member)
    info = {
        "fusion": fusion,
        "fusion_parameters": {"weighted": WEIGHTED_DEFAULTS, "jlf": jlf_parameters(fixed.spacing)}.get(fusion, {}),
        "members": per_member,
        "k": len(members),
        "disagreement_percent": round(100.0 * fused.disagreement_fraction, 3),
        "fusion_seconds": round(time.perf_counter() - t0, 3),
        "instance_opt_steps": 0 if instance_opt is None else instance_opt.total,
        "network_factor": network_factor,
        "mirror": mirror,
        "jacobian": jacobian,
        "qc": qc,
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
    mirror: bool = MIRROR,
    names: dict | None = None,
) -> dict:
    """Load, segment (:func:`segment_images`) and write ``names`` (default :data:`OUTPUT_FILES`) into
    ``out_dir``, the JSON last."""
    from .model import loaded_checkpoint
    from .register import network_pooling
    from .runtime import execution_environment, select_device

    try:
        atlas_set = load_atlas_set(atlas_set_path)
        dev = select_device(device)
        model, checkpoint = loaded_checkpoint(model_path, dev)
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
            mirror=mirror,
        )
    except UniregError as err:
        err.with_context(subject=subject)
        raise
    out, names = Path(out_dir), names or OUTPUT_FILES
    save_image(fixed.with_data(fused.labels.astype(np.int32), is_label=True), out / names["labels"])
    save_image(fixed.with_data(fused.confidence, is_label=False), out / names["confidence"])
    info.update(
        {
            "subject": subject,
            "atlas_set": str(atlas_set.path),
            "model": str(model_path or "default"),
            "extractor": checkpoint.get("extractor"),
            "device": str(dev),
            "environment": execution_environment(dev),
        }
    )
    write_text_atomic(out / names["info"], json.dumps(info, indent=2) + "\n")
    return info
