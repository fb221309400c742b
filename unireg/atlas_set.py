"""Atlas sets: K labelled atlases on one grid, for multi-atlas segmentation (:mod:`unireg.fusion`).

A set folder::

    atlas_set.json          name, members (in order: the order ties are broken in), label ids, checks
    atlas_labels.tsv        the one label table every member shares
    reference/              the atlas every subject is preprocessed onto (its template and mask; the grid)
    members/<id>/           one atlas folder per member (unireg.atlas layout), all on the reference grid

``unireg atlas import-set`` builds one from labelled subjects (a TSV manifest: ``id``, ``image``,
``labels``, optional ``mask``): each member is preprocessed onto the reference atlas exactly as a
subject is (``unireg preprocess``: normalisation, MI affine, resampling onto its grid) and its
labels follow the same affine (nearest neighbour). Checks on import, each a one-line error naming
the member and its file:

* readable images with a usable affine (the checks of ``unireg preprocess``);
* label ids: every id is in the table; the set keeps the ids present in every member (an id that
  only some members have would be voted for by some atlases only) and records the others, per
  member, as dropped (set to background);
* same contrast: each member's preprocessed image must correlate with the reference template at
  >= :data:`MIN_TEMPLATE_CORRELATION` inside the reference brain mask (a T2 among T1 atlases
  correlates negatively; T1 brains correlate ~0.7-0.9 after the affine).
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atlas import Atlas, load_atlas, write_atlas
from .defaults import ATLAS_SET_FILE
from .errors import UniregError
from .io import load_image, read_label_table, write_label_table, write_text_atomic
from .transforms import resample

SET_FILE = ATLAS_SET_FILE
TABLE_FILE = "atlas_labels.tsv"
MIN_TEMPLATE_CORRELATION = 0.5
MANIFEST_COLUMNS = ("id", "image", "labels")


@dataclass(frozen=True)
class AtlasSet:
    members: tuple[Atlas, ...]
    ids: tuple[str, ...]
    reference: Atlas
    table: dict[int, str]
    path: str

    @property
    def grid(self):
        return self.reference.grid


def is_atlas_set(path) -> bool:
    return (Path(path) / SET_FILE).is_file()


def read_manifest(path) -> list[dict]:
    """Rows of a members manifest (TSV with ``id``, ``image``, ``labels``[, ``mask``]; paths relative to it)."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as err:
        raise UniregError(f"cannot read the atlas-set manifest ({err.strerror})", path=path) from None
    missing = [c for c in MANIFEST_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise UniregError(f"the manifest needs the tab-separated columns {', '.join(MANIFEST_COLUMNS)}", path=path)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids) or not all(i and i.replace("-", "").replace("_", "").isalnum() for i in ids):
        raise UniregError("member ids must be unique and made of letters, digits, '-' and '_'", path=path)
    for row in rows:
        for key in ("image", "labels", "mask"):
            if row.get(key):
                row[key] = str((path.parent / row[key]).resolve()) if not Path(row[key]).is_absolute() else row[key]
    return rows


def template_correlation(image: np.ndarray, template: np.ndarray, mask: np.ndarray) -> float:
    inside = mask > 0
    a, b = image[inside].astype(np.float64), template[inside].astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def import_atlas_set(manifest, reference: Atlas, table_path, out_dir, options=None) -> AtlasSet:
    """Build an atlas set in ``out_dir`` from the members of ``manifest`` (see the module docstring);
    ``options``: :class:`unireg.preprocess.PreprocessOptions` for the members (default: no brain
    extraction unless a member has no mask, MI affine)."""
    from .defaults import AFFINE_SIMILARITY
    from .preprocess import OUTPUT_FILES, PreprocessOptions, preprocess_file

    rows = read_manifest(manifest)
    table = read_label_table(table_path)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UniregError("the atlas-set folder exists and is not empty; choose a new --out", path=out)
    work = out / ".import"
    options = options or PreprocessOptions(brain_extraction=False, similarity=AFFINE_SIMILARITY)
    members, present = {}, {}
    for row in rows:
        sid = row["id"]
        labels = load_image(row["labels"], label=True, subject=sid)
        unknown = sorted(set(np.unique(labels.data).tolist()) - {0} - set(table))
        if unknown:
            raise UniregError(
                f"label ids {unknown[:10]} are not in the table {table_path}", subject=sid, path=row["labels"]
            )
        result = preprocess_file(row["image"], reference, work / sid, options, subject=sid)
        r = template_correlation(result.image.data, reference.image.data, reference.mask.data)
        if r < MIN_TEMPLATE_CORRELATION:
            raise UniregError(
                f"after the affine, the image correlates with the reference template at {r:.2f} "
                f"(< {MIN_TEMPLATE_CORRELATION}): not the template's contrast, or a failed alignment",
                subject=sid,
                path=row["image"],
            )
        warped = resample(labels, reference.grid, result.matrix)
        mask = load_image(work / sid / OUTPUT_FILES["mask"], label=True)
        members[sid] = {"image": result.image, "labels": warped, "mask": mask, "correlation": r}
        present[sid] = set(np.unique(warped.data).tolist()) - {0}
    common = set.intersection(*present.values())
    info_members = []
    for sid, m in members.items():
        dropped = sorted(present[sid] - common)
        data = np.where(np.isin(m["labels"].data, sorted(common)), m["labels"].data, 0)
        write_atlas(
            out / "members" / sid,
            m["image"],
            m["labels"].with_data(data.astype(np.int32)),
            m["mask"],
            {k: v for k, v in table.items() if k in common},
            {"name": sid, "member_of": out.name, "template_correlation": round(m["correlation"], 3)},
        )
        info_members.append({"id": sid, "template_correlation": round(m["correlation"], 3), "dropped_ids": dropped})
    shutil.copytree(reference.path, out / "reference")
    write_label_table(out / TABLE_FILE, {k: v for k, v in table.items() if k in common})
    shutil.rmtree(work)
    info = {
        "name": out.name,
        "members": info_members,
        "label_ids": sorted(int(i) for i in common),
        "reference": str(reference.path),
        "checks": {"min_template_correlation": MIN_TEMPLATE_CORRELATION, "label_ids": "present in every member"},
    }
    write_text_atomic(out / SET_FILE, json.dumps(info, indent=2) + "\n")  # last: its presence means complete
    return load_atlas_set(out)


def load_atlas_set(path) -> AtlasSet:
    path = Path(path)
    if not is_atlas_set(path):
        raise UniregError(f"not an atlas set (no {SET_FILE}); build one with 'unireg atlas import-set'", path=path)
    info = json.loads((path / SET_FILE).read_text())
    reference = load_atlas(path / "reference")
    table = read_label_table(path / TABLE_FILE)
    ids = tuple(m["id"] for m in info["members"])
    members = tuple(load_atlas(path / "members" / sid) for sid in ids)
    for sid, member in zip(ids, members):
        if member.image.shape != reference.image.shape or not np.allclose(
            member.image.affine, reference.image.affine, atol=1e-4
        ):
            raise UniregError(f"member {sid} is not on the reference grid", path=member.path)
    return AtlasSet(members=members, ids=ids, reference=reference, table=table, path=str(path))
