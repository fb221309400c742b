"""The results layout: the one place that names every per-subject file the workflow writes.

``results/`` is a BIDS derivatives dataset (:mod:`unireg.bids` writes its description). Every
per-subject file lies in ``sub-<id>/anat/`` and is named by :func:`derivative_name`, entities in
BIDS order; ``<S>`` is the atlas's space label and ``<A>`` its label set (:func:`atlas_entities`:
``MNI152NLin2009aSym`` and ``AllenHRA`` for the default atlas ``mni2009a-allen``, ``tissue`` for ``mni2009a``)::

    key               file (in sub-<id>/anat/)                                      written by
    image             sub-<id>_T1w.nii.gz (+ .json)                                 convert
    preproc           sub-<id>_space-<S>_desc-preproc_T1w.nii.gz (+ .json: record)  preprocess
    mask              sub-<id>_space-<S>_desc-brain_mask.nii.gz                     preprocess
    affine            sub-<id>_from-<S>_to-T1w_mode-image_desc-affine_xfm.txt       preprocess
    affine_itk        sub-<id>_from-<S>_to-T1w_mode-image_desc-affineitk_xfm.txt    preprocess
    warped            sub-<id>_space-<S>_desc-warpedatlas_T1w.nii.gz (+ .json)      register
    warped_labels     sub-<id>_space-<S>_atlas-<A>_dseg.nii.gz                      register / segment
    confidence        sub-<id>_space-<S>_atlas-<A>_desc-confidence_probseg.nii.gz   segment
    segment_json      sub-<id>_space-<S>_atlas-<A>_dseg.json (record of the fusion) segment
    displacement      sub-<id>_from-<S>_to-T1w_mode-image_desc-nonlinear_xfm.nii.gz (+ .json: record)
    displacement_itk  sub-<id>_from-<S>_to-T1w_mode-image_desc-nonlinearitk_xfm.nii.gz
    labels            sub-<id>_atlas-<A>_dseg.nii.gz (+ _dseg.tsv)                  propagate
    metrics           sub-<id>_atlas-<A>_metrics.tsv                                metrics

The affine files hold the linear part of the atlas -> subject transform (atlas world -> subject
world, :mod:`unireg.affine`); the displacement (on the preprocessed, atlas-sized grid) is its
deformable part, applied first: ``propagate`` composes the two. With an atlas set (multi-atlas
segmentation, ``unireg segment``) there is no displacement: ``warped_labels`` are the members'
fused labels on the preprocessed grid, ``segment_json`` records the fusion and each member's
registration, and ``propagate`` applies the affine alone. Transforms and metrics have no
BIDS 1.11 name (``xfm`` is the BEP014 proposal, as fMRIPrep writes it): ``.bidsignore`` lists them.

The stage commands name their outputs the same way when given ``--subject`` and ``--space``;
without them they write the plain names of :data:`PLAIN_NAMES` into their ``--out`` folder (for
use outside the workflow). Pure standard library: the Snakefile imports this module.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import UniregError

#: A BIDS label, and so every subject id of the workflow: letters and digits only (safe in any path).
SUBJECT_PATTERN = "[A-Za-z0-9]+"
SUBJECT_ID = LABEL = re.compile(f"^{SUBJECT_PATTERN}$")
# A Snakemake wildcard stands for a label in output patterns: derivative_name("{subject}", ...).
WILDCARD = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
# Entities in file-name order: the BIDS 1.11 schema (rules.entities, short names), with BEP014's
# from/to/mode (transforms, not yet in BIDS: such files go in .bidsignore) before desc, as fMRIPrep.
ENTITY_ORDER = (
    "sub",
    "tpl",
    "ses",
    "cohort",
    "sample",
    "task",
    "tracksys",
    "acq",
    "nuc",
    "voi",
    "ce",
    "trc",
    "stain",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "proc",
    "hemi",
    "space",
    "split",
    "recording",
    "chunk",
    "atlas",
    "seg",
    "scale",
    "res",
    "den",
    "label",
    "from",
    "to",
    "mode",
    "desc",
)
INDEX_ENTITIES = ("run", "echo", "flip", "inv", "split", "chunk")  # non-negative integers

#: Built-in atlases (unireg.defaults.BUILTIN_ATLASES): (BIDS space label = the TemplateFlow name of
#: the template, label-set name).
BUILTIN_ATLASES = {"mni2009a-allen": ("MNI152NLin2009aSym", "AllenHRA"), "mni2009a": ("MNI152NLin2009aSym", "tissue")}

#: Stage outputs outside the workflow (no subject or space given): fixed names in the --out folder.
PLAIN_NAMES = {
    "preprocess": {
        "image": "preproc.nii.gz",
        "mask": "brainmask.nii.gz",
        "affine": "affine.txt",
        "affine_itk": "affine_itk.txt",
        "info": "preprocess.json",
    },
    "segment": {"labels": "labels.nii.gz", "confidence": "confidence.nii.gz", "info": "segment.json"},
    "register": {
        "warped": "warped.nii.gz",
        "displacement": "displacement.nii.gz",
        "displacement_itk": "displacement_itk.nii.gz",
        "labels": "warped_labels.nii.gz",
        "info": "registration.json",
        "warped_info": "warped.json",
    },
}


def _check_label(key: str, label: str) -> str:
    label = str(label)
    if WILDCARD.match(label):
        return label
    if not LABEL.match(label):
        raise UniregError(f"BIDS {key}- label {label!r} must be letters and digits only")
    if key in INDEX_ENTITIES and not label.isdigit():
        raise UniregError(f"BIDS {key}- must be a non-negative integer, got {label!r}")
    return label


def derivative_name(
    subject: str | None,
    suffix: str,
    extension: str = ".nii.gz",
    *,
    session: str | None = None,
    datatype: str | None = "anat",
    **entities: str,
) -> str:
    """The relative path of a BIDS-derivatives file, entities in BIDS order (:data:`ENTITY_ORDER`).

    ``derivative_name("01", "T1w", space="MNI152NLin2009aSym", desc="preproc")`` is
    ``sub-01/anat/sub-01_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz``; with ``session="1"``
    it is ``sub-01/ses-1/anat/sub-01_ses-1_...``. Entities use their file-name keys (``desc``,
    ``space``, ``atlas``, ``run``, ...; ``from_`` for ``from``, a Python keyword); ``None`` or ""
    leaves one out. ``datatype=None`` puts the file in the subject (session) folder, ``subject=None``
    at the dataset root (e.g. ``atlas-tissue_dseg.tsv``). Labels are letters and digits, or a
    Snakemake wildcard such as ``"{subject}"``.
    """
    given = {key.rstrip("_"): value for key, value in entities.items() if value not in (None, "")}
    unknown = sorted(key for key in given if key not in ENTITY_ORDER or key in ("sub", "ses"))
    if unknown:
        raise UniregError(
            f"unknown BIDS entities {unknown} (pass subject= and session= as arguments; known: "
            f"{', '.join(k for k in ENTITY_ORDER if k not in ('sub', 'ses'))})"
        )
    if not LABEL.match(suffix) or not re.fullmatch(r"(\.[A-Za-z0-9]+)+", extension):
        raise UniregError(f"bad BIDS suffix {suffix!r} or extension {extension!r} (e.g. 'T1w', '.nii.gz')")
    if subject is not None:
        given["sub"] = subject
    if session:
        given["ses"] = session
    pairs = [f"{key}-{_check_label(key, given[key])}" for key in ENTITY_ORDER if key in given]
    name = "_".join(pairs + [suffix]) + extension
    folders = []
    if subject is not None:
        folders = [f"sub-{subject}"] + ([f"ses-{session}"] if session else []) + ([datatype] if datatype else [])
    return "/".join(folders + [name])


def atlas_entities(atlas: str | Path) -> tuple[str, str]:
    """``(space, atlas)`` labels for an atlas: a built-in's (:data:`BUILTIN_ATLASES`, by name or by
    the name of the folder it is built in), else the atlas folder's name with everything but
    letters and digits removed (``my_atlas-1mm`` -> ``myatlas1mm``) for both."""
    name = Path(str(atlas).rstrip("/")).name
    if name in BUILTIN_ATLASES:  # the name, or the folder the workflow builds it in
        return BUILTIN_ATLASES[name]
    label = re.sub(r"[^A-Za-z0-9]", "", name)
    if not label:
        raise UniregError("the atlas folder's name has no letters or digits to name its space with", path=atlas)
    return label, label


def _xfm(subject: str, space: str, desc: str, extension: str) -> str:
    return derivative_name(subject, "xfm", extension, from_=space, to="T1w", mode="image", desc=desc)


def subject_files(subject: str, space: str, atlas: str) -> dict[str, str]:
    """Every per-subject file of the workflow (module docstring), relative to the results folder.

    ``subject``, ``space`` and ``atlas`` are labels or Snakemake wildcards (``"{subject}"``).
    JSON sidecars are the image's name with ``.json`` (keys ending in ``_json``).
    """
    files = {
        "image": derivative_name(subject, "T1w"),
        "preproc": derivative_name(subject, "T1w", space=space, desc="preproc"),
        "mask": derivative_name(subject, "mask", space=space, desc="brain"),
        "affine": _xfm(subject, space, "affine", ".txt"),
        "affine_itk": _xfm(subject, space, "affineitk", ".txt"),
        "warped": derivative_name(subject, "T1w", space=space, desc="warpedatlas"),
        "warped_labels": derivative_name(subject, "dseg", space=space, atlas=atlas),
        "confidence": derivative_name(subject, "probseg", space=space, atlas=atlas, desc="confidence"),
        "segment_json": derivative_name(subject, "dseg", ".json", space=space, atlas=atlas),
        "displacement": _xfm(subject, space, "nonlinear", ".nii.gz"),
        "displacement_itk": _xfm(subject, space, "nonlinearitk", ".nii.gz"),
        "labels": derivative_name(subject, "dseg", atlas=atlas),
        "labels_tsv": derivative_name(subject, "dseg", ".tsv", atlas=atlas),
        "metrics": derivative_name(subject, "metrics", ".tsv", atlas=atlas),
    }
    for key in ("image", "preproc", "warped", "displacement"):
        files[f"{key}_json"] = re.sub(r"\.nii\.gz$", ".json", files[key])
    return files


def stage_names(
    stage: str, subject: str | None = None, space: str | None = None, atlas: str | None = None
) -> dict[str, str]:
    """File names (no folder) of one stage's outputs, keyed as :data:`PLAIN_NAMES` ``[stage]``:
    the layout's names when ``subject`` and ``space`` are given (``atlas`` too for the labels of
    ``register`` and ``segment``), else the plain names."""
    if stage not in PLAIN_NAMES:
        raise ValueError(f"unknown stage {stage!r}")
    if not (subject and space):
        return dict(PLAIN_NAMES[stage])
    files = {k: Path(v).name for k, v in subject_files(subject, space, atlas or space).items()}
    if stage == "preprocess":
        return {
            "image": files["preproc"],
            "mask": files["mask"],
            "affine": files["affine"],
            "affine_itk": files["affine_itk"],
            "info": files["preproc_json"],
        }
    if stage == "segment":
        return {"labels": files["warped_labels"], "confidence": files["confidence"], "info": files["segment_json"]}
    return {
        "warped": files["warped"],
        "displacement": files["displacement"],
        "displacement_itk": files["displacement_itk"],
        "labels": files["warped_labels"],
        "info": files["displacement_json"],
        "warped_info": files["warped_json"],
    }


def find_subject_file(results_dir: str | Path, subject: str, key: str) -> Path | None:
    """The subject's file ``key`` (:func:`subject_files`) under ``results_dir``, whatever the atlas's
    space and label; None when absent. Several atlases' files: the first by name."""
    pattern = subject_files(subject, "{space}", "{atlas}")[key].replace("{space}", "*").replace("{atlas}", "*")
    found = sorted(Path(results_dir).glob(pattern))
    return found[0] if found else None


#: A subject's registration record: the displacement's sidecar (single atlas, ``unireg register``)
#: or the fused labels' (atlas set, ``unireg segment``); both hold ``jacobian`` and ``qc``.
REGISTRATION_RECORDS = ("displacement_json", "segment_json")


def find_registration_record(results_dir: str | Path, subject: str) -> Path | None:
    """The subject's registration record (:data:`REGISTRATION_RECORDS`, first found), or None."""
    for key in REGISTRATION_RECORDS:
        path = find_subject_file(results_dir, subject, key)
        if path is not None:
            return path
    return None


def find_all(results_dir: str | Path, key: str) -> dict[str, Path]:
    """File ``key`` of every subject folder (``sub-<id>``, id of letters and digits) that has one,
    by subject id, sorted."""
    found = {}
    for folder in sorted(Path(results_dir).glob("sub-*")):
        subject = folder.name[len("sub-") :]
        if folder.is_dir() and LABEL.match(subject):
            path = find_subject_file(results_dir, subject, key)
            if path is not None:
                found[subject] = path
    return found


def sibling(path: str | Path, key: str) -> Path:
    """File ``key`` of the same subject, space and atlas as ``path`` (a file of the layout), e.g.
    the metrics table beside a label map."""
    path = Path(path)
    entities = dict(part.split("-", 1) for part in path.name.split(".")[0].split("_") if "-" in part)
    if "sub" not in entities:
        raise UniregError("not a file of the results layout (no sub- entity)", path=path)
    space = entities.get("space") or entities.get("from") or "{space}"
    atlas = entities.get("atlas") or "{atlas}"
    name = Path(subject_files(entities["sub"], space, atlas)[key]).name
    if "{" in name:
        raise UniregError(f"cannot name the {key} file from this file's name alone", path=path)
    return path.with_name(name)
