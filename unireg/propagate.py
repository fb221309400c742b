"""Atlas label propagation into a subject's native space, in one label-preserving resampling.

For every voxel ``v`` of the subject's native image (the converted NIfTI, any orientation):

1. ``p = native.affine @ v`` is its world position (subject world, RAS mm);
2. ``x = inv(T) @ p`` is the same point in atlas world, where ``T`` is the affine from
   ``unireg preprocess`` (atlas world -> subject world);
3. ``y = x + d(x)`` follows the deformable registration, whose displacement ``d`` (RAS mm,
   written by ``unireg register`` on the atlas grid, atlas moving onto the subject) is sampled
   trilinearly at ``x``;
4. the label is the atlas label at world point ``y`` (nearest voxel), 0 outside the atlas.

Composing the transforms first and resampling once means labels are never resampled twice.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import UniregError
from .io import (
    Image,
    apply_affine,
    load_displacement,
    load_image,
    read_affine_txt,
    read_label_table,
    save_image,
    write_text_atomic,
)
from .transforms import DisplacementField


def propagate_labels(
    atlas_labels: Image,
    native: Image,
    matrix: np.ndarray,
    displacement: DisplacementField | None = None,
    chunk: int = 2_000_000,
) -> Image:
    """Atlas labels on ``native``'s grid (see module docstring). Processes voxels in chunks."""
    inverse = np.linalg.inv(matrix)
    native_to_atlas_world = inverse @ native.affine
    out = np.zeros(native.shape, dtype=atlas_labels.data.dtype)
    flat = out.reshape(-1)
    n = flat.size
    atlas_inv = np.linalg.inv(atlas_labels.affine)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        voxels = np.stack(np.unravel_index(idx, native.shape), axis=1).astype(np.float64)
        world = apply_affine(native_to_atlas_world, voxels)
        if displacement is not None:
            world = displacement(world)
        atlas_voxels = apply_affine(atlas_inv, world).T
        flat[start : start + idx.size] = ndimage.map_coordinates(
            atlas_labels.data, atlas_voxels, order=0, mode="constant", cval=0
        )
    return native.with_data(out, is_label=True)


def propagate_files(
    atlas_labels_path,
    native_path,
    affine_path,
    out_path,
    displacement_path=None,
    subject: str | None = None,
    table_path=None,
) -> Image:
    """Load inputs, propagate, and write the label map on the native grid (atomically).

    ``table_path``: the atlas's label table (``index``, ``name``), also written beside the map as
    its BIDS look-up table (``x_dseg.nii.gz`` -> ``x_dseg.tsv``)."""
    atlas_labels = load_image(atlas_labels_path, label=True, subject=subject)
    native = load_image(native_path, subject=subject)
    matrix = read_affine_txt(affine_path)
    field = DisplacementField(*load_displacement(displacement_path, subject=subject)) if displacement_path else None
    if field is not None and field.shape != atlas_labels.shape:
        raise UniregError(
            f"displacement grid {field.shape[1:]} is not the atlas grid {atlas_labels.shape}; "
            "register against the same atlas",
            subject=subject,
            path=displacement_path,
        )
    labels = propagate_labels(atlas_labels, native, matrix, field)
    if table_path is not None:
        table = read_label_table(table_path)
        lines = ["index\tname"] + [f"{index}\t{name}" for index, name in sorted(table.items())]
        write_text_atomic(Path(re.sub(r"\.nii(\.gz)?$", ".tsv", str(out_path))), "\n".join(lines) + "\n")
    save_image(labels, Path(out_path))
    return labels
