"""Atlases: a template image, a label map on the same grid, and a label table.

An atlas lives in a folder with a fixed layout (written by ``unireg atlas prepare`` for the
built-in atlases, or ``unireg atlas import`` for your own)::

    atlas.nii.gz          template, intensities normalised to [0, 1], RAS, shape divisible by 16
    atlas_labels.nii.gz   integer label map on the same grid (0 = background)
    atlas_labels.tsv      columns ``index`` and ``name`` (then any others): one row per label id
    atlas_brainmask.nii.gz  brain (foreground) mask on the same grid
    atlas.json            where it came from and how it was made

Both built-in atlases (:data:`unireg.defaults.BUILTIN_ATLASES`) use the MNI ICBM152 2009a
nonlinear symmetric T1 template (shipped inside the nilearn wheel, so they are built offline):

* ``mni2009a-allen`` (the default): the structures of the Allen Human Reference Atlas 3D (2020),
  shipped in the package, split into left and right (:mod:`unireg.atlas_allen`).
* ``mni2009a``: tissue labels 1 = CSF (intracranial, neither GM nor WM), 2 = grey matter,
  3 = white matter, from the argmax of the template's tissue probability maps.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .defaults import BUILTIN_ATLASES, DEFAULT_ATLAS, TISSUE_ATLAS
from .errors import UniregError
from .intensity import normalise_intensity
from .io import Image, load_image, read_label_table, save_image, write_label_table, write_text_atomic
from .transforms import crop_or_pad, crop_to_multiple, grid_with_spacing, reorient_to_ras, resample

ATLAS_FILES = {
    "image": "atlas.nii.gz",
    "labels": "atlas_labels.nii.gz",
    "table": "atlas_labels.tsv",
    "mask": "atlas_brainmask.nii.gz",
    "info": "atlas.json",
}
MNI_TISSUE_TABLE = {1: "CSF", 2: "grey_matter", 3: "white_matter"}
_NILEARN_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class Atlas:
    image: Image
    labels: Image
    mask: Image
    table: dict[int, str]
    path: str | None = None

    @property
    def grid(self):
        return self.image.grid


def load_atlas(path: str | Path) -> Atlas:
    """Load an atlas folder; a built-in atlas's name (``"mni2009a"``, ``"mni2009a-allen"``) means
    that atlas at 2 mm in the cache (built there if needed)."""
    if str(path) in BUILTIN_ATLASES:
        return builtin_atlas(str(path))
    path = Path(path)
    if not path.is_dir():
        raise UniregError(
            f"atlas folder not found (use {' or '.join(repr(n) for n in BUILTIN_ATLASES)} for a built-in atlas, "
            "or build one with 'unireg atlas prepare' / 'unireg atlas import')",
            path=path,
        )
    image = load_image(path / ATLAS_FILES["image"])
    labels = load_image(path / ATLAS_FILES["labels"], label=True)
    mask = load_image(path / ATLAS_FILES["mask"], label=True)
    table = read_label_table(path / ATLAS_FILES["table"])
    for other, name in ((labels, "labels"), (mask, "mask")):
        if other.shape != image.shape or not np.allclose(other.affine, image.affine, atol=1e-4):
            raise UniregError(f"atlas {name} are not on the template's grid", path=other.path)
    missing = sorted(set(np.unique(labels.data).tolist()) - {0} - set(table))
    if missing:
        raise UniregError(
            f"label ids {missing[:10]} are in the label map but not in the table", path=path / ATLAS_FILES["table"]
        )
    return Atlas(image=image, labels=labels, mask=mask, table=table, path=str(path))


def default_atlas_dir(spacing: float = 2.0, name: str = DEFAULT_ATLAS) -> Path:
    """Cache folder of a built-in atlas, ``atlas-<name>-<spacing>mm`` in ``$UNIREG_HOME`` or
    ``~/.cache/unireg``: each atlas and spacing has its own."""
    home = Path(os.environ.get("UNIREG_HOME", Path.home() / ".cache" / "unireg"))
    return home / f"atlas-{name}-{spacing:g}mm"


def builtin_atlas(name: str, spacing: float = 2.0) -> Atlas:
    """The built-in atlas ``name`` at ``spacing`` mm from the cache (:func:`default_atlas_dir`),
    built there first if it is not yet."""
    folder = default_atlas_dir(spacing, name)
    if (folder / ATLAS_FILES["image"]).is_file():
        return load_atlas(folder)
    return prepare_atlas(name, folder, spacing)


def prepare_atlas(name: str, out_dir: str | Path, spacing: float = 2.0) -> Atlas:
    """Build the built-in atlas ``name`` (:data:`unireg.defaults.BUILTIN_ATLASES`) at ``spacing`` mm, offline."""
    if name not in BUILTIN_ATLASES:
        raise UniregError(f"unknown built-in atlas {name!r}; choose one of {', '.join(BUILTIN_ATLASES)}")
    if name == TISSUE_ATLAS:
        return prepare_tissue_atlas(out_dir, spacing)
    from .atlas_allen import prepare_allen_atlas  # it builds on this module

    return prepare_allen_atlas(out_dir, spacing)


def _nilearn_file(key: str) -> Path:
    try:
        import nilearn
    except ImportError as exc:  # pragma: no cover - nilearn is a dependency
        raise UniregError("the built-in atlases need the nilearn package: pip install nilearn") from exc
    path = Path(nilearn.__file__).parent / "datasets" / "data" / _NILEARN_FILES[key]
    if not path.is_file():
        raise UniregError("nilearn does not ship the MNI ICBM152 2009a template in this version", path=path)
    return path


def write_atlas(
    out_dir: Path,
    image: Image,
    labels: Image,
    mask: Image,
    table: dict[int, str],
    info: dict,
    columns: dict[str, dict[int, object]] | None = None,
    files: tuple[Path, ...] = (),
) -> Atlas:
    """Write the atlas layout; ``columns`` are the label table's extra columns, ``files`` are
    copied beside the atlas (licence and attribution notices)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_image(image, out_dir / ATLAS_FILES["image"])
    save_image(labels, out_dir / ATLAS_FILES["labels"])
    save_image(mask, out_dir / ATLAS_FILES["mask"])
    write_label_table(out_dir / ATLAS_FILES["table"], table, columns)
    for source in files:
        write_text_atomic(out_dir / source.name, source.read_text())
    info = dict(
        info,
        shape=list(image.shape),
        spacing_mm=list(image.spacing),
        labels={str(k): v for k, v in sorted(table.items())},
    )
    write_text_atomic(out_dir / ATLAS_FILES["info"], json.dumps(info, indent=2) + "\n")
    return load_atlas(out_dir)


def mni_template_images(keys: tuple[str, ...] = ("t1", "gm", "wm")) -> tuple[Image, ...]:
    """The MNI ICBM152 2009a T1 template and its GM and WM probability maps (0..255), 1 mm, RAS
    (``keys``: which of them)."""
    return tuple(reorient_to_ras(load_image(_nilearn_file(key))) for key in keys)


def template_brain(t1: Image) -> np.ndarray:
    """The brain of the (skull-stripped) template: voxels above 5 % of its maximum."""
    return t1.data > 0.05 * t1.data.max()


def tissue_labels(t1: Image, gm: Image, wm: Image) -> Image:
    """Tissue labels (1 CSF, 2 GM, 3 WM) on ``t1``'s grid from probability maps stored 0..255.

    The argmax of (255 - GM - WM, GM, WM) inside the template brain: the rest of the
    intracranial volume counts as CSF.
    """
    probs = np.stack([np.clip(255.0 - gm.data - wm.data, 0, None), gm.data, wm.data])
    tissue = (np.argmax(probs, axis=0) + 1) * template_brain(t1)
    return t1.with_data(tissue.astype(np.int32), is_label=True)


def template_atlas_images(t1: Image, labels: Image) -> tuple[Image, Image, Image]:
    """Template, labels and brain mask of an atlas on the MNI template ``t1`` (``t1`` and ``labels``
    already on the atlas grid): the template brain is the mask, and the grid is cropped around it
    to a shape divisible by 16."""
    brain = template_brain(t1)
    mask = t1.with_data(brain.astype(np.uint8), is_label=True)
    image, start = crop_to_multiple(normalise_intensity(t1, mask=brain), brain, multiple=16)
    return image, crop_or_pad(labels, start, image.shape), crop_or_pad(mask, start, image.shape)


def prepare_tissue_atlas(out_dir: str | Path, spacing: float = 2.0) -> Atlas:
    """Build the tissue atlas ``mni2009a`` at ``spacing`` mm from nilearn's files (offline)."""
    t1, gm, wm = mni_template_images()
    grid = grid_with_spacing(t1.grid, spacing)
    t1_r, gm_r, wm_r = (resample(img, grid) for img in (t1, gm, wm))
    info = {
        "name": TISSUE_ATLAS,
        "source": "MNI ICBM152 2009a nonlinear symmetric T1 template and GM/WM probability maps, "
        "as shipped in the nilearn package (datasets/data)",
        "licence": "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
        "Montreal Neurological Institute, McGill University; free use with attribution",
        "labels_from": "argmax of (255 - GM - WM, GM, WM) probabilities inside the template brain",
    }
    image, labels, mask = template_atlas_images(t1_r, tissue_labels(t1_r, gm_r, wm_r))
    return write_atlas(Path(out_dir), image, labels, mask, dict(MNI_TISSUE_TABLE), info)


def import_atlas(
    image_path: str | Path,
    labels_path: str | Path,
    table_path: str | Path,
    out_dir: str | Path,
    spacing: float | None = None,
    mask_path: str | Path | None = None,
) -> Atlas:
    """Bring a user atlas into the atlas layout: RAS, optional new spacing, shape divisible by 16.

    The template should be brain-only (skull-stripped) when subjects are brain-extracted.
    """
    table = read_label_table(table_path)
    image = reorient_to_ras(load_image(image_path))
    labels = reorient_to_ras(load_image(labels_path, label=True))
    grid = grid_with_spacing(image.grid, spacing) if spacing else image.grid
    image = resample(image, grid)
    labels = resample(labels, grid, label_mode="onehot" if spacing else "nearest")
    if mask_path is not None:
        brain = resample(reorient_to_ras(load_image(mask_path, label=True)), grid).data > 0
    else:
        brain = (labels.data > 0) | (image.data > 0.05 * np.nanmax(image.data))
    missing = sorted(set(np.unique(labels.data).tolist()) - {0} - set(table))
    if missing:
        raise UniregError(f"label ids {missing[:10]} are in the label map but not in the table", path=table_path)
    mask = labels.with_data(brain.astype(np.uint8))
    image, start = crop_to_multiple(normalise_intensity(image, mask=brain), brain, multiple=16)
    labels = crop_or_pad(labels, start, image.shape)
    mask = crop_or_pad(mask, start, image.shape)
    info = {
        "name": Path(out_dir).name,
        "source": {"image": str(image_path), "labels": str(labels_path), "table": str(table_path)},
    }
    return write_atlas(Path(out_dir), image, labels, mask, table, info)
