"""The many-structure atlas ``mni2009a-allen``: the Allen Human Reference Atlas 3D (2020) labels on
the MNI ICBM152 2009a symmetric template, split into left and right, small structures dropped.

The source ships in the package (``unireg/data/atlases/allen_hra_2020``, CC BY 4.0: its
``ATTRIBUTION.md`` is copied into every built atlas): ``AllenAtlas.nii.gz`` holds 141 structures
(ids 1..141, 0.5 mm, RAS, on the ICBM 2009b symmetric template, which lines up with nilearn's 2009a
symmetric T1 within about 1 mm; one hemisphere drawn and mirrored onto the other), and
``structure_names.tsv`` gives each id's Allen abbreviation, Allen structure id and full name.

How the atlas is made (the numbers are this module's constants, recorded in ``atlas.json``):

1. **Merge.** Source ids 135-138 (PaCG, RoG, FMG, FP) share a single float32 value in Allen's
   annotation volume, so the source only holds their union, under id 138 (:data:`MERGED_INTO`).
2. **Sides**, decided on the source at 0.5 mm (the same at any atlas spacing): a structure is
   *lateral* when each side (RAS x < 0 left, x > 0 right) holds at least
   :data:`MIN_SIDE_FRACTION` of its volume and less than :data:`MAX_MIDLINE_FRACTION` of it lies
   within :data:`MIDLINE_BAND_MM` of the midline plane x = 0; the others are *midline* and keep
   one id. Source voxels on the plane itself go to the left.
3. **Ids**: a midline structure keeps its source id (1..141); left = :data:`LEFT_OFFSET` + source
   id, right = :data:`RIGHT_OFFSET` + source id. Ids do not depend on the spacing.
4. **Resampling** onto the template's atlas grid by partial volume
   (:func:`unireg.transforms.resample`, ``label_mode="onehot"``).
5. **Small structures**: one that covers fewer than :data:`MIN_VOXELS` voxels of the atlas grid (a
   lateral one: on either side) is dropped, both sides, and its voxels are left unlabelled.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atlas import Atlas, mni_template_images, template_atlas_images, write_atlas
from .defaults import ALLEN_ATLAS
from .errors import UniregError
from .io import Grid, Image, load_image
from .transforms import grid_with_spacing, reorient_to_ras, resample

SOURCE_DIR = Path(__file__).parent / "data" / "atlases" / "allen_hra_2020"
SOURCE_LABELS = SOURCE_DIR / "AllenAtlas.nii.gz"
STRUCTURE_NAMES = SOURCE_DIR / "structure_names.tsv"
#: licence, attribution and provenance notices copied beside every built atlas
NOTICES = (SOURCE_DIR / "ATTRIBUTION.md", SOURCE_DIR / "NIIVUE_README.md")

MIN_SIDE_FRACTION = 0.25
MIDLINE_BAND_MM = 1.0
MAX_MIDLINE_FRACTION = 0.10
LEFT_OFFSET, RIGHT_OFFSET = 1000, 2000
MIN_VOXELS = 27
#: source ids whose voxels carry another's id (PaCG, RoG, FMG -> FP: one float32 value in Allen's volume)
MERGED_INTO = {135: 138, 136: 138, 137: 138}

CITATION = (
    "Ding SL, Royall JJ, ..., Lein ES (2016). Comprehensive cellular-resolution atlas of the adult human "
    "brain. J Comp Neurol 524(16):3127-3481. doi:10.1002/cne.24080"
)
LICENCE = (
    "labels: Allen Human Reference Atlas - 3D, 2020 (version 1.0.0, RRID:SCR_017764), (c) Allen Institute "
    "for Brain Science, CC BY 4.0 (see ATTRIBUTION.md); template: MNI ICBM152 2009a, Copyright (C) 1993-2009 "
    "Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University; "
    "free use with attribution"
)


@dataclass(frozen=True)
class Structure:
    """One structure of the source: its id in ``AllenAtlas.nii.gz``, Allen abbreviation, Allen
    structure id (``;``-joined for a merged one) and full name."""

    index: int
    abbreviation: str
    allen_id: str
    name: str


@dataclass(frozen=True)
class Laterality:
    """Where a structure's source volume lies: fractions left (x < 0), right (x > 0) and within
    :data:`MIDLINE_BAND_MM` of the plane x = 0."""

    left: float
    right: float
    midline: float

    @property
    def lateral(self) -> bool:
        return min(self.left, self.right) >= MIN_SIDE_FRACTION and self.midline < MAX_MIDLINE_FRACTION


def source_structures() -> dict[int, Structure]:
    """The source's structures by id, the merged ones (:data:`MERGED_INTO`) folded into one."""
    with open(STRUCTURE_NAMES, newline="") as fh:
        rows = {int(r["index"]): r for r in csv.DictReader(fh, delimiter="\t")}
    structures = {}
    for index, row in rows.items():
        if index in MERGED_INTO:
            continue
        group = [row] + [rows[i] for i in sorted(MERGED_INTO) if MERGED_INTO[i] == index]
        structures[index] = Structure(
            index,
            "+".join(r["abbreviation"] for r in group),
            ";".join(r["allen_id"] for r in group),
            " + ".join(r["name"] for r in group),
        )
    return structures


def load_source_labels() -> Image:
    """The shipped Allen label map (RAS, 0.5 mm), merged ids (:data:`MERGED_INTO`) folded in."""
    labels = reorient_to_ras(load_image(SOURCE_LABELS, label=True))
    lookup = np.arange(int(labels.data.max()) + 1, dtype=np.int16)
    for index, into in MERGED_INTO.items():
        lookup[index] = into
    return labels.with_data(lookup[labels.data])


def _world_x(labels: Image) -> np.ndarray:
    """RAS x (mm) of each voxel slab along the first axis (the grid must not be oblique)."""
    if np.any(np.abs(labels.affine[0, 1:3]) > 1e-6) or labels.affine[0, 0] <= 0:
        raise UniregError("the Allen label map must be on an axis-aligned RAS grid", path=labels.path)
    return labels.affine[0, 0] * np.arange(labels.shape[0]) + labels.affine[0, 3]


def laterality(labels: Image) -> dict[int, Laterality]:
    """Each structure's :class:`Laterality` in the source label map ``labels``."""
    x = _world_x(labels)
    size = int(labels.data.max()) + 1
    per_slab = np.stack([np.bincount(slab.ravel(), minlength=size) for slab in labels.data])  # (nx, size)
    total = per_slab.sum(0)
    out = {}
    for index in np.flatnonzero(total[1:]) + 1:
        n = float(total[index])
        out[int(index)] = Laterality(
            left=per_slab[x < 0, index].sum() / n,
            right=per_slab[x > 0, index].sum() / n,
            midline=per_slab[np.abs(x) <= MIDLINE_BAND_MM, index].sum() / n,
        )
    return out


def split_sides(labels: Image, lateral: set[int]) -> Image:
    """Give each lateral structure's voxels the left (x <= 0) or right (x > 0) id."""
    x = _world_x(labels)
    is_lateral = np.zeros(int(labels.data.max()) + 1, dtype=bool)
    is_lateral[sorted(lateral)] = True
    offset = np.where(x <= 0, LEFT_OFFSET, RIGHT_OFFSET).astype(np.int16)[:, None, None]
    data = labels.data.astype(np.int16)
    return labels.with_data(np.where(is_lateral[data], data + offset, data))


@dataclass(frozen=True)
class SideSplitSource:
    """The source at 0.5 mm with its lateral structures split (:func:`split_sides`)."""

    structures: dict[int, Structure]
    sides: dict[int, Laterality]
    lateral: set[int]
    labels: Image

    def ids(self, index: int) -> tuple[int, ...]:
        """The atlas ids of source structure ``index``: (left, right) when lateral, else (index,)."""
        return (LEFT_OFFSET + index, RIGHT_OFFSET + index) if index in self.lateral else (index,)

    def dropped(self, labels: Image) -> set[int]:
        """Source structures too small to keep on ``labels``'s grid (:data:`MIN_VOXELS`, either side)."""
        counts = np.bincount(labels.data.ravel().astype(np.int64), minlength=RIGHT_OFFSET + max(self.structures) + 1)
        return {index for index in self.sides if min(counts[i] for i in self.ids(index)) < MIN_VOXELS}

    def without(self, labels: Image, dropped: set[int]) -> Image:
        """``labels`` with the ids of the ``dropped`` structures set to 0 (unlabelled)."""
        keep = np.ones(RIGHT_OFFSET + max(self.structures) + 1, dtype=bool)
        keep[[i for index in dropped for i in self.ids(index)]] = False
        return labels.with_data(np.where(keep[labels.data], labels.data, 0).astype(labels.data.dtype))


def side_split_source() -> SideSplitSource:
    """Load the shipped source, decide each structure's laterality, split the lateral ones."""
    source = load_source_labels()
    sides = laterality(source)
    lateral = {index for index, where in sides.items() if where.lateral}
    return SideSplitSource(source_structures(), sides, lateral, split_sides(source, lateral))


def atlas_grid(spacing: float) -> tuple[Image, Grid]:
    """The template T1 (1 mm) and the grid of the atlas at ``spacing`` mm (before its crop)."""
    (t1,) = mni_template_images(("t1",))
    return t1, grid_with_spacing(t1.grid, spacing)


def structure_labels(grid: Grid, spacing: float = 2.0) -> Image:
    """The structures of ``mni2009a-allen`` at ``spacing`` mm (the same ids, the same structures
    dropped), drawn by partial volume on another ``grid`` of MNI space, e.g. the 1 mm template's:
    the demo's reference labels come from this."""
    split = side_split_source()
    on_grid = resample(split.labels, grid, label_mode="onehot")
    _, atlas = atlas_grid(spacing)
    same = atlas.shape == grid.shape and np.allclose(atlas.affine, grid.affine)
    at_spacing = on_grid if same else resample(split.labels, atlas, label_mode="onehot")
    return split.without(on_grid, split.dropped(at_spacing))


def prepare_allen_atlas(out_dir: str | Path, spacing: float = 2.0) -> Atlas:
    """Build ``mni2009a-allen`` at ``spacing`` mm into ``out_dir`` (offline; module doc for the rules)."""
    split = side_split_source()
    structures, sides, lateral = split.structures, split.sides, split.lateral
    t1, grid = atlas_grid(spacing)
    image, labels, mask = template_atlas_images(resample(t1, grid), resample(split.labels, grid, label_mode="onehot"))
    dropped = split.dropped(labels)
    labels = split.without(labels, dropped)
    counts = np.bincount(labels.data.ravel().astype(np.int64), minlength=RIGHT_OFFSET + max(structures) + 1)
    voxel_mm3 = float(np.prod(labels.spacing))
    ids = {index: split.ids(index) for index in sides}

    table, columns = {}, {"side": {}, "abbreviation": {}, "allen_id": {}, "volume_mm3": {}}
    for index in sorted(set(ids) - dropped):
        structure = structures[index]
        for i, side in zip(ids[index], ("left", "right") if index in lateral else ("midline",)):
            table[i] = structure.name if side == "midline" else f"{side} {structure.name}"
            columns["side"][i] = side
            columns["abbreviation"][i] = structure.abbreviation
            columns["allen_id"][i] = structure.allen_id
            columns["volume_mm3"][i] = f"{counts[i] * voxel_mm3:g}"
    info = {
        "name": ALLEN_ATLAS,
        "source": {
            "labels": "Allen Human Reference Atlas - 3D, 2020 (version 1.0.0, RRID:SCR_017764), 141 structures on "
            "ICBM 2009b nonlinear symmetric space, as converted to uint8 ids by niivue/niivue-demo-images "
            "(Allen/, commit f6f98294); shipped as unireg/data/atlases/allen_hra_2020/AllenAtlas.nii.gz",
            "labels_sha256": hashlib.sha256(SOURCE_LABELS.read_bytes()).hexdigest(),
            "names": "unireg/data/atlases/allen_hra_2020/structure_names.tsv (README: where the full names come from)",
            "template": "MNI ICBM152 2009a nonlinear symmetric T1 template, as shipped in the nilearn package",
        },
        "licence": LICENCE,
        "citation": CITATION,
        "notices": [path.name for path in NOTICES],
        "ids": f"midline structure: its source id (1..141); left: {LEFT_OFFSET} + source id; "
        f"right: {RIGHT_OFFSET} + source id",
        "merged": {
            str(into): [structures[into].abbreviation, "one float32 value in Allen's annotation volume"]
            for into in sorted(set(MERGED_INTO.values()))
        },
        "lateral_rule": {
            "rule": "lateral when each side (RAS x < 0 left, x > 0 right) holds >= min_side_fraction of the "
            "structure's source volume and < max_midline_fraction of it lies within midline_band_mm of x = 0; "
            "else midline (one id). Decided on the 0.5 mm source; its voxels on x = 0 go to the left",
            "min_side_fraction": MIN_SIDE_FRACTION,
            "midline_band_mm": MIDLINE_BAND_MM,
            "max_midline_fraction": MAX_MIDLINE_FRACTION,
            "midline_structures": sorted(structures[i].abbreviation for i in set(sides) - lateral),
        },
        "small_structure_rule": {
            "rule": "dropped (voxels left unlabelled) when it covers fewer than min_voxels voxels of the atlas "
            "grid (a lateral structure: on either side)",
            "min_voxels": MIN_VOXELS,
            "dropped": sorted(structures[i].abbreviation for i in dropped),
        },
        "labels_from": "partial-volume (onehot) resampling of the side-split source onto the template grid",
    }
    return write_atlas(Path(out_dir), image, labels, mask, table, info, columns, NOTICES)
