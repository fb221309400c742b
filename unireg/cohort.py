"""The cohort and its manifest: subject ids, hashed UIDs, indexing, manifest I/O and series selection.

Indexing (``unireg index``) reads DICOM *headers only* (:mod:`unireg.dicom`) of
every file below a folder, whatever the nesting and file names, and makes one manifest row per
series of each patient (PatientID and SeriesInstanceUID: the same series under two PatientIDs
is two rows of two subjects, never merged); or it reads a cohort TSV (``subject``, then
``dicom`` (a folder) or ``nifti`` (a file), optional ``reference``). The manifest never holds a
patient-identifying field: no name, PatientID, birth date, accession number, institution, date,
time or comment, and no original UID.

Subject ids come from the cohort TSV, from a user ``subject_map`` (PatientID -> id), or are
``"s" + sha256(SUBJECT_SALT + PatientID)[:10]`` (StudyInstanceUID when PatientID is empty):
stable across runs, never derived from the name. Every id matches ``^[A-Za-z0-9]+$``. Every
PatientID found becomes a subject, even one whose only series are localisers.

UIDs. Study and series UIDs are replaced, as DICOM PS3.15's basic de-identification profile
replaces UIDs, by :func:`hashed_uid`: ``"2.25." + str(int(sha256(salt + uid)[:32 hex digits], 16))``
(a valid UID; Siemens UIDs embed the acquisition date and time, which must not leak). The salt is
a secret of the cohort's owner, stable across reruns: the file ``--salt-file`` (created once with
``secrets.token_hex(32)`` when missing), by default :func:`default_salt_file`
(``$UNIREG_HOME/uid_salt``, else ``~/.cache/unireg/uid_salt``: outside any results folder, so the
salt is not shared with the results). The manifest's ``study_uid``/``series_uid``, the file-list
keys, the messages and the logs only ever show hashed UIDs; ``unireg convert`` needs the same salt
(it checks that the files still belong to the series by hashing their SeriesInstanceUID).

The list of files of each series travels with the manifest as ``manifest.attrs["files"]``
(``{"<subject>/<hashed series_uid>": [path, ...]}``, :func:`series_key`); :func:`write_manifest`
stores it in its own JSON, ``files`` (default :func:`files_path`: ``<name>.files.json`` beside the
TSV), and :func:`read_manifest` reads it back from there. The paths are the user's own and say
whatever the user's folder and file names say: many exports name files by SOPInstanceUID, so the
list is *not* a shareable result. The workflow keeps it in its work folder
(``<work>/manifest.files.json``), never under ``results/``; the TSV itself holds no path of a
DICOM file.

``problem`` column: empty, or one line saying why the subject must not be converted as it is:
the same images (SOPInstanceUID) found under two or more subjects (the same scan exported under
two PatientIDs: every row of each of those subjects names the others), or the same image stored
in several files of one series (an export copied twice). ``unireg index`` prints a warning per
problem; ``unireg convert`` of such a subject fails with that line.

Selection (:func:`select_series`, at index time; ``selected`` = 1 on the chosen row of each
subject, ``selection_reason`` on every row says why or why not). Candidates: the series that
match the series filter (``modality`` compared case-insensitively, ``description`` a regex
searched in SeriesDescription; no filter: every series), of an anatomical modality (MR or CT, or
the one the filter names), and that are none of, checked in this order (the first that applies is
the reason given): a localiser (ImageType LOCALIZER/SCOUT or the name says so), fewer than
:data:`MIN_SLICES` slices, a field map (gre_field_mapping, B0/B1 maps: ImageType FIELDMAP/B0,
the name, or a Siemens ``fm`` sequence), a phase, real or imaginary image (ImageType P/PHASE/R/I),
diffusion-weighted (a b-value > 0, ImageType DIFFUSION/TRACEW/ADC/FA, the name), EPI
(ScanningSequence EP, a mosaic, an ``ep`` sequence name or a BOLD/fMRI/ASL name), several images
per slice position (``n_temporal`` > 1: echoes, repetitions, time points), a derived image
(ImageType DERIVED or a reformat/projection: MPR, MIP, ...; the MP2RAGE UNI image, DERIVED\\PRIMARY
\\...\\UNI, is accepted), without slice geometry, or with several slice orientations. The
candidates are ranked by, in this order: (1) volumetric first: 3-D (MRAcquisitionType 3D) or
slices at most :data:`THIN_SLICE_MM` thick; (2) T1-weighted first (the default atlas' contrast):
by name (MPRAGE, MP2RAGE, SPGR, FSPGR, BRAVO, TFE, TFL, T1 in SeriesDescription, else in
ProtocolName; a name saying another contrast, T2, FLAIR, PD, ..., or an MP2RAGE inversion image
INV1/INV2 is not T1), else, when neither name says, by timing (inversion recovery with TI
300-1500 ms, spoiled gradient echo with TR < 50 ms and TE < 10 ms, or spin echo with TR < 800
ms; TE at most 15 ms in every case); (3) without contrast agent first (ContrastBolusAgent empty and
no post-contrast name); (4) 3-D first; (5) most slices; (6) finest voxels (smallest voxel
volume). Ties on all six (a repeated acquisition) are broken by the highest SeriesNumber (the
later repeat, usually acquired because the first was degraded), then by the hashed series UID,
and the reason says so. A thick-slice 2-D series is chosen only when no volumetric one exists
(its reason says so). No candidate: ``selected`` is 0 on every row and ``unireg convert`` fails
with one line listing the subject's series and why each was not chosen.

The selection rule lives here, beside the manifest whose ``selected`` and ``selection_reason``
columns record its outcome: ``unireg index`` applies it, and :mod:`unireg.convert` converts the
selected row (or applies the rule again with a series filter).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .dicom import SeriesHeaders, _number, _text, is_image, read_header, series_fields
from .errors import UniregError
from .io import write_text_atomic
from .layout import SUBJECT_ID

SUBJECT_SALT = "unireg-subject-id-v1"  # fixed project constant: the same PatientID gives the same id everywhere
UID_SALT_FILE = "uid_salt"  # in $UNIREG_HOME (default ~/.cache/unireg): see default_salt_file
UID_SALT = re.compile(r"^[0-9a-f]{64}$")  # secrets.token_hex(32)
MIN_SLICES = 10  # fewer slices: a localiser / scout, never a registration input
THIN_SLICE_MM = 2.0  # a 2-D series with slices at most this thick is "thin-slice" (volumetric enough)
MANIFEST_COLUMNS = [
    "subject",
    "study_uid",
    "series_uid",
    "series_number",
    "modality",
    "series_description",
    "protocol_name",
    "n_files",
    "n_slices",
    "n_temporal",
    "orientation",
    "rows",
    "columns",
    "pixel_spacing",
    "slice_thickness",
    "mr_acquisition_type",
    "scanning_sequence",
    "sequence_variant",
    "sequence_name",
    "echo_time",
    "repetition_time",
    "inversion_time",
    "b_value",
    "contrast_agent",
    "transfer_syntax",
    "sop_class",
    "image_type",
    "n_truncated",
    "kind",
    "source",
    "reference",
    "selected",
    "selection_reason",
    "problem",
]
INT_COLUMNS = (
    "series_number",
    "n_files",
    "n_slices",
    "n_temporal",
    "rows",
    "columns",
    "contrast_agent",
    "n_truncated",
    "selected",
)
ANATOMICAL_MODALITIES = ("MR", "CT")
# Selection vocabulary (searched case-insensitively in SeriesDescription + ProtocolName; ImageType
# values compared exactly): see the module docstring for the rule that uses them.
LOCALISER_NAME = re.compile(r"locali[sz]er|scout|survey|tri-?pilot|3-?plane|aahead|(?<![a-z])loc(?![a-z])", re.I)
LOCALISER_TYPES = {"LOCALIZER", "LOCALISER", "SCOUT"}
FIELD_MAP_NAME = re.compile(r"field_?map|fmap|b[01]_?map|phase_?diff|sefm|topup", re.I)
FIELD_MAP_SEQUENCE = re.compile(r"^\*?fm\d", re.I)  # Siemens gre_field_mapping: *fm2d2r
FIELD_MAP_TYPES = {"FIELDMAP", "FIELD_MAP", "B0", "B0MAP", "B1", "B1MAP"}
PHASE_TYPES = {
    "P": "phase",
    "PHASE": "phase",
    "PHASE MAP": "phase",
    "R": "real",
    "REAL": "real",
    "I": "imaginary",
    "IMAGINARY": "imaginary",
}
DIFFUSION_NAME = re.compile(r"dwi|dti|diffusion|tensor|(?<![a-z])dw(?![a-z])|ep_b\d", re.I)
DIFFUSION_TYPES = {"DIFFUSION", "TRACEW", "TRACE", "ADC", "EADC", "FA", "TENSOR"}
EPI_NAME = re.compile(r"bold|fmri|(?<![a-z])(epi|asl|pcasl|pasl|dsc)(?![a-z])|resting|ep2d", re.I)
EPI_SEQUENCE = re.compile(r"^\*?ep", re.I)  # Siemens *epfid2d1_64, *ep_b1000
REFORMAT_TYPES = {"MPR", "MIP", "MINIP", "MNIP", "REFORMATTED", "PROJECTION IMAGE", "CSA MPR", "CSAPARALLEL"}
T1_NAME = re.compile(r"t1(?![0-9])|mp-?rage|mp2rage|spgr|bravo|tfe|tfl|(?<![a-z])mpr(?![a-z])", re.I)
MP2RAGE_INVERSION_NAME = re.compile(r"inv[-_ ]?[12](?![0-9])", re.I)
OTHER_CONTRAST_NAME = re.compile(
    r"t2|flair|(?<![a-z])(pd|pdw|swi|swan|tof|dir|stir|space|cube|vista|ciss|fiesta|"
    r"medic|haste)(?![a-z])|angio",
    re.I,
)
POST_CONTRAST_NAME = re.compile(r"(?<![a-z])(post|gad|gd|ce|c\+)(?![a-z])|\+c(?![a-z])|contrast|kontrast", re.I)


# ---------------------------------------------------------------------------------------------
# Subject ids, hashed UIDs and their salt
# ---------------------------------------------------------------------------------------------


def validate_subject_id(subject: str) -> str:
    """Subject ids are letters and digits only (no ``/``, ``..``, ``-``, spaces): safe in any path."""
    if not isinstance(subject, str) or not SUBJECT_ID.fullmatch(subject):  # "$" alone would accept "x\n"
        raise UniregError(f"invalid subject id {subject!r}: use letters and digits only (e.g. 'sub-01' -> '01')")
    return subject


def anonymous_subject_id(patient_id: str) -> str:
    """``"s"`` + the first 10 hex digits of sha256(:data:`SUBJECT_SALT` + PatientID): stable, not identifying."""
    return "s" + hashlib.sha256((SUBJECT_SALT + str(patient_id)).encode()).hexdigest()[:10]


def hashed_uid(uid: str, salt: str) -> str:
    """A UID replaced as PS3.15's de-identification does: ``"2.25."`` + 128 bits of sha256(salt + uid).

    A valid UID (``2.25.<decimal>``, at most 44 characters, no leading zero), the same for the
    same UID and salt, unrelated to the original without the salt. An empty UID stays empty.
    """
    uid = str(uid or "").strip()
    if not uid:
        return ""
    return "2.25." + str(int(hashlib.sha256((salt + uid).encode()).hexdigest()[:32], 16))


def default_salt_file() -> Path:
    """Where the UID salt lives without ``--salt-file``: ``$UNIREG_HOME/uid_salt``, else
    ``~/.cache/unireg/uid_salt`` (the user's unireg folder: never inside a results tree)."""
    return Path(os.environ.get("UNIREG_HOME", Path.home() / ".cache" / "unireg")) / UID_SALT_FILE


def read_uid_salt(path: str | Path | None = None, *, create: bool = False) -> str:
    """The UID salt (64 hex digits) in ``path`` (default :func:`default_salt_file`).

    ``create``: a missing file is made once with ``secrets.token_hex(32)``, readable by its owner
    only; two processes racing to create it end up with the same salt (the first link wins).
    Without ``create`` (``unireg convert``) a missing file is an error: the salt must be the one
    ``unireg index`` used.
    """
    path = Path(path) if path else default_salt_file()
    if not path.is_file():
        if not create:
            raise UniregError(
                "UID salt file not found: pass the --salt-file that 'unireg index' used (or run 'unireg index' again)",
                path=path,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".uid_salt.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)  # atomic and exclusive: never replaces a salt already in use
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: exclusive create instead
                try:
                    with open(path, "x") as fh:
                        fh.write(Path(tmp).read_text())
                except FileExistsError:
                    pass
        finally:
            os.unlink(tmp)
    try:
        salt = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UniregError(f"cannot read the UID salt file ({type(exc).__name__})", path=path) from exc
    if not UID_SALT.fullmatch(salt):
        raise UniregError(
            "UID salt file holds no salt (64 hex digits); delete it to make a new one, then run 'unireg index' again",
            path=path,
        )
    return salt


def read_subject_map(source: dict | str | Path | None) -> dict[str, str] | None:
    """PatientID -> subject id, from a dict or a TSV with columns ``patient_id`` and ``subject``."""
    if source is None:
        return None
    if not isinstance(source, dict):
        path = Path(source)
        if not path.is_file():
            raise UniregError("subject map not found", path=path)
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        if not {"patient_id", "subject"} <= set(table.columns):
            raise UniregError("subject map needs the columns 'patient_id' and 'subject'", path=path)
        source = dict(zip(table["patient_id"].str.strip(), table["subject"].str.strip()))
    for subject in source.values():
        validate_subject_id(subject)
    return {str(k).strip(): v for k, v in source.items()}


# ---------------------------------------------------------------------------------------------
# Indexing
# ---------------------------------------------------------------------------------------------


def _series_row(subject: str, series: SeriesHeaders, n_truncated: int, salt: str) -> dict:
    """One manifest row from the headers of a series' files (:func:`unireg.dicom.series_fields`), UIDs
    hashed with ``salt``."""
    fields = series_fields(series)
    return {
        "subject": subject,
        **fields,
        "study_uid": hashed_uid(fields["study_uid"], salt),
        "series_uid": hashed_uid(fields["series_uid"], salt),
        "n_truncated": n_truncated,
        "kind": "dicom",
        "source": "",
        "reference": "",
        "selected": 0,
        "selection_reason": "",
        "problem": "",
    }


def _manifest_frame(
    rows: list[dict],
    files: dict[str, list[str]],
    skipped: dict,
    modality: str | None = None,
    description_regex: str | None = None,
) -> pd.DataFrame:
    """The manifest of ``rows``, sorted, with every subject's series selected (:func:`choose_series`)."""
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if len(frame):
        frame = frame.sort_values(
            ["subject", "series_number", "series_description", "series_uid"], kind="stable"
        ).reset_index(drop=True)
    # Selection first, attrs after: pandas deep-copies attrs (the whole file list) into every row and
    # subset taken, and the rule takes many per subject, which made indexing quadratic in the cohort.
    reasons, chosen = [], []
    for subject, rows_of_subject in frame.groupby("subject", sort=False):
        choice = _choose(rows_of_subject, subject, modality, description_regex)
        reasons.append(choice.reasons)
        if choice.row is not None:
            chosen.append(choice.row.name)
    if reasons:
        labels = pd.concat(reasons)
        frame.loc[labels.index, "selection_reason"] = labels
        frame.loc[labels.index, "selected"] = 0
        frame.loc[chosen, "selected"] = 1
    frame.attrs["files"] = files
    frame.attrs["skipped"] = skipped
    return frame


def index_dicom(
    root: str | Path,
    subject_map: dict | str | Path | None = None,
    *,
    subject: str | None = None,
    salt: str | None = None,
    modality: str | None = None,
    description_regex: str | None = None,
) -> pd.DataFrame:
    """One manifest row per series (PatientID and SeriesInstanceUID) of the DICOM files below ``root``.

    Args:
        root: a folder; files at any depth, with any names, are read (headers only).
        subject_map: PatientID -> subject id (a dict or a TSV, see :func:`read_subject_map`);
            without it ids are :func:`anonymous_subject_id` of the PatientID.
        subject: force this id for every series (a cohort TSV row names the folder's subject).
        salt: the UID salt (:func:`read_uid_salt`); default: the one in :func:`default_salt_file`,
            created when missing.
        modality, description_regex: the series filter of the selection (:func:`select_series`).

    Returns:
        The manifest (:data:`MANIFEST_COLUMNS`; UIDs hashed, one series selected per subject),
        with ``attrs["files"]`` (subject and hashed series uid -> its files, sorted, keyed by
        :func:`series_key`) and ``attrs["skipped"]``: ``not_dicom`` (unreadable or not DICOM) and
        ``not_image`` (DICOM without an image, e.g. a DICOMDIR or a report) counts, and
        ``truncated`` (image files whose pixel data is cut short or missing: they stay in
        their series, so converting it fails loudly instead of silently losing a slice) and
        ``corrupt`` (files that say they are DICOM but whose header cannot be read: they belong
        to no series, so their series misses a slice; :func:`unireg.convert.convert_series`
        refuses a series with a gap in its slices). Rows whose images also appear elsewhere carry
        a ``problem`` (see the module docstring).
    """
    root = Path(root)
    if not root.is_dir():
        raise UniregError("DICOM folder not found", subject=subject, path=root)
    salt = read_uid_salt(create=True) if salt is None else salt
    mapping = read_subject_map(subject_map)
    forced = validate_subject_id(subject) if subject is not None else None
    headers: dict[tuple[str, str], SeriesHeaders] = {}  # (subject, SeriesInstanceUID) -> its files' header fields
    files: dict[tuple[str, str], list[str]] = {}
    truncated: list[str] = []
    corrupt: list[str] = []
    skipped = {"not_dicom": 0, "not_image": 0}
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in sorted(names):
            path = Path(folder, name)
            ds, pixels = read_header(path)
            if ds is None:
                if pixels == "corrupt":
                    corrupt.append(str(path))
                else:
                    skipped["not_dicom"] += 1
                continue
            if not is_image(ds):
                skipped["not_image"] += 1
                continue
            if pixels != "complete":
                truncated.append(str(path))
            key = (forced or _patient_subject(ds, mapping, root, salt), str(ds.SeriesInstanceUID))
            headers.setdefault(key, SeriesHeaders()).add(ds)  # the fields it needs, not the whole header
            files.setdefault(key, []).append(str(path))
    rows, truncated_set = [], set(truncated)
    problems, duplicates = _duplicate_image_problems(headers, salt)
    for key, series in headers.items():
        row = _series_row(key[0], series, sum(1 for f in files[key] if f in truncated_set), salt)
        row["problem"] = problems.get(key, "")
        rows.append(row)
    listing = {series_key(key[0], hashed_uid(key[1], salt)): paths for key, paths in files.items()}
    frame = _manifest_frame(
        rows, listing, {**skipped, "truncated": truncated, "corrupt": corrupt}, modality, description_regex
    )
    frame.attrs["duplicates"] = duplicates
    return frame


def _patient_subject(ds, mapping: dict[str, str] | None, root: Path, salt: str) -> str:
    """The subject id of a file's patient: from the subject map, else the anonymous id of its PatientID."""
    patient = _text(ds.get("PatientID"))
    if mapping is None:
        return anonymous_subject_id(patient or str(ds.get("StudyInstanceUID", "")))
    if patient not in mapping:
        raise UniregError(
            f"series {hashed_uid(ds.SeriesInstanceUID, salt)}: its PatientID is not in the subject "
            "map; add it (the manifest will not show it)",
            path=root,
        )
    return mapping[patient]


def _duplicate_image_problems(headers: dict[tuple[str, str], SeriesHeaders], salt: str) -> tuple[dict, list[str]]:
    """``problem`` text per (subject, series) whose images (SOPInstanceUID) are not unique, and
    one warning line per duplication (for ``unireg index`` to print).

    The same image under two or more subjects (the same scan exported under two PatientIDs) marks
    every series of each of those subjects, naming the others; the same image in several files
    of one series (an export copied twice) marks that series.
    """
    owners: dict[str, set[str]] = {}
    repeated: dict[tuple[str, str], int] = {}
    for key, series in headers.items():
        counts = Counter(f.sop_uid for f in series.files if f.sop_uid)
        repeated[key] = sum(1 for n in counts.values() if n > 1)
        for sop in counts:
            owners.setdefault(sop, set()).add(key[0])
    shared: dict[str, set[str]] = {}
    groups = sorted({tuple(sorted(subjects)) for subjects in owners.values() if len(subjects) > 1})
    for group in groups:
        for subject in group:
            shared.setdefault(subject, set()).update(set(group) - {subject})
    warnings = [
        f"subjects {', '.join(group[:-1])} and {group[-1]} hold the same images (SOPInstanceUID): the same "
        "scan exported under two PatientIDs? none of them will convert; remove one copy and run 'unireg "
        "index' again"
        for group in groups
    ]
    problems = {}
    for key in headers:
        parts = []
        others = sorted(shared.get(key[0], ()))
        if others:
            parts.append(
                f"the same images (SOPInstanceUID) also appear under subject{'s' if len(others) > 1 else ''} "
                f"{', '.join(others)}: the same scan exported under two PatientIDs? remove one copy and run "
                "'unireg index' again"
            )
        if repeated[key]:
            warnings.append(
                f"{key[0]}: series {hashed_uid(key[1], salt)}: {repeated[key]} images are stored in "
                "more than one file (the same SOPInstanceUID): the subject will not convert; remove the "
                "copies and run 'unireg index' again"
            )
            parts.append(
                f"series {hashed_uid(key[1], salt)}: {repeated[key]} images are stored in more than one "
                "file (the same SOPInstanceUID): the export copied twice? remove the copies and run "
                "'unireg index' again"
            )
        if parts:
            problems[key] = "; ".join(parts)
    return problems, warnings


def series_key(subject: str, series_uid: str) -> str:
    """Key of a series' file list in ``manifest.attrs["files"]`` (hashed series uid): per subject,
    because a cohort TSV may name the same series (a copied folder) for two subjects, and each keeps
    its own files."""
    return f"{subject}/{series_uid}"


def index_cohort(
    cohort: str | Path,
    subject_map: dict | str | Path | None = None,
    *,
    salt: str | None = None,
    modality: str | None = None,
    description_regex: str | None = None,
) -> pd.DataFrame:
    """The manifest of a DICOM folder, or of a cohort TSV (``subject``, ``dicom`` or ``nifti``, ``reference``).

    Paths in the TSV are relative to its folder. A ``nifti`` row becomes one manifest row of
    ``kind`` ``nifti`` whose ``source`` is the file (it is copied, not converted). ``salt``,
    ``modality`` and ``description_regex``: as in :func:`index_dicom`.
    """
    cohort = Path(cohort)
    salt = read_uid_salt(create=True) if salt is None else salt
    from .bids import index_bids, is_bids_root  # bids builds on this module: imported here, not at the top

    if is_bids_root(cohort):
        manifest = index_bids(cohort)
        manifest.attrs["skipped"] = {"not_dicom": 0, "not_image": 0, "truncated": [], "corrupt": []}
        return manifest
    if cohort.is_dir():
        return index_dicom(cohort, subject_map, salt=salt, modality=modality, description_regex=description_regex)
    if not cohort.is_file():
        raise UniregError("cohort not found (a DICOM folder or a cohort TSV)", path=cohort)
    table = pd.read_csv(cohort, sep="\t", dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    if "subject" not in table.columns or not ({"dicom", "nifti"} & set(table.columns)):
        raise UniregError("cohort TSV needs the columns 'subject' and 'dicom' or 'nifti'", path=cohort)
    rows, files, duplicates = [], {}, []
    skipped = {"not_dicom": 0, "not_image": 0, "truncated": [], "corrupt": []}
    for record in table.to_dict("records"):
        subject = validate_subject_id(record["subject"].strip())
        reference = record.get("reference", "").strip()
        reference = str((cohort.parent / reference).resolve()) if reference else ""
        if record.get("dicom", "").strip():
            found = index_dicom(cohort.parent / record["dicom"].strip(), subject=subject, salt=salt)
            rows += [{**row, "reference": reference} for row in found.to_dict("records")]
            files.update(found.attrs["files"])
            duplicates += found.attrs["duplicates"]
            for key, value in found.attrs["skipped"].items():
                skipped[key] += value
        elif record.get("nifti", "").strip():
            rows.append(
                {
                    **{c: "" for c in MANIFEST_COLUMNS},
                    **{c: 0 for c in INT_COLUMNS},
                    "subject": subject,
                    "kind": "nifti",
                    "n_files": 1,
                    "source": str((cohort.parent / record["nifti"].strip()).resolve()),
                    "reference": reference,
                }
            )
        else:
            raise UniregError("cohort row has neither a dicom folder nor a nifti file", subject=subject, path=cohort)
    frame = _manifest_frame(rows, files, skipped, modality, description_regex)
    frame.attrs["duplicates"] = duplicates
    return frame


def files_path(manifest_path: str | Path) -> Path:
    """The default place of the list of each series' files: ``<name>.files.json`` beside the manifest.

    It holds the input files' paths, which may carry identifying names (SOPInstanceUIDs): the
    workflow passes a path in its work folder instead (``unireg index --files-out``,
    ``unireg convert --files``).
    """
    manifest_path = Path(manifest_path)
    stem = manifest_path.name[:-4] if manifest_path.name.endswith(".tsv") else manifest_path.name
    return manifest_path.with_name(stem + ".files.json")


def write_manifest(manifest: pd.DataFrame, path: str | Path, files: str | Path | None = None) -> Path:
    """Write the manifest TSV ``path`` and its file list (``manifest.attrs["files"]``) to ``files``
    (default :func:`files_path`: beside the TSV), atomically.

    The TSV is written last, so its presence means both are complete.
    """
    path = Path(path)
    files = Path(files) if files is not None else files_path(path)
    write_text_atomic(files, json.dumps(manifest.attrs.get("files", {}), indent=1) + "\n")
    columns = MANIFEST_COLUMNS + [c for c in manifest.columns if c not in MANIFEST_COLUMNS]  # e.g. bids_*
    write_text_atomic(path, manifest.reindex(columns=columns).to_csv(sep="\t", index=False, lineterminator="\n"))
    return path


def read_manifest(path: str | Path, files: str | Path | None = None) -> pd.DataFrame:
    """Read a manifest TSV (integer columns as int, the rest as text) and, into ``attrs["files"]``,
    its file list ``files`` (default :func:`files_path`: beside the TSV; absent: empty)."""
    path = Path(path)
    if not path.is_file():
        raise UniregError("manifest not found; run 'unireg index' first", path=path)
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UniregError(
            f"cannot read the manifest ({type(exc).__name__}); run 'unireg index' again", path=path
        ) from exc
    missing = [c for c in ("subject", "series_uid", "kind") if c not in frame.columns]
    if missing:
        raise UniregError(f"not a unireg manifest (missing columns {', '.join(missing)})", path=path)
    for column in INT_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column].replace("", "0"), errors="coerce").fillna(0).astype(int)
    listing = Path(files) if files is not None else files_path(path)
    frame.attrs["files"] = json.loads(listing.read_text()) if listing.is_file() else {}
    return frame


def index_command(
    dicom_root: str | Path,
    manifest_out: str | Path,
    subject_map: dict | str | Path | None = None,
    *,
    modality: str | None = None,
    description_regex: str | None = None,
    salt_file: str | Path | None = None,
    files_out: str | Path | None = None,
) -> pd.DataFrame:
    """``unireg index``: index a DICOM folder or cohort TSV, select each subject's series, write the
    manifest, print a summary (and one warning line per problem).

    ``modality``/``description_regex``: the series filter (config ``series_filter``); ``salt_file``:
    the UID salt (default :func:`default_salt_file`), created when missing; ``files_out``: where the
    list of each series' files goes (default :func:`files_path`, beside the manifest; the workflow
    keeps it in its work folder, out of the shareable results: the input files' names may be UIDs).
    """
    salt = read_uid_salt(salt_file, create=True)
    manifest = index_cohort(dicom_root, subject_map, salt=salt, modality=modality, description_regex=description_regex)
    if not len(manifest):
        raise UniregError("no DICOM image series or NIfTI files found in the cohort", path=dicom_root)
    write_manifest(manifest, manifest_out, files_out)
    from .bids import is_bids_root, write_dataset_description

    # the results folder the manifest lies in is a BIDS derivatives dataset (README "Outputs")
    write_dataset_description(Path(manifest_out).parent, dicom_root if is_bids_root(dicom_root) else None)
    skipped = manifest.attrs["skipped"]
    print(
        f"unireg index: {manifest['subject'].nunique()} subjects, {len(manifest)} series/files; skipped "
        f"{skipped['not_dicom']} non-DICOM or unreadable and {skipped['not_image']} non-image files"
    )
    unselected = sorted(set(manifest["subject"]) - set(manifest.loc[manifest["selected"] == 1, "subject"]))
    if unselected:
        print(
            f"unireg index: warning: {len(unselected)} subjects have no anatomical series to register (they will "
            f"not convert; the manifest's selection_reason says why): {_first_few(unselected, 10)}"
        )
    for line in manifest.attrs.get("duplicates", []):
        print(f"unireg index: warning: {line}")
    if skipped["truncated"]:
        print(
            f"unireg index: warning: {len(skipped['truncated'])} truncated DICOM files (their series will not "
            f"convert): {_first_few(skipped['truncated'])}"
        )
    if skipped["corrupt"]:
        print(
            f"unireg index: warning: {len(skipped['corrupt'])} corrupt DICOM files (header unreadable or "
            f"without a SOP class; skipped, so their series each lack a slice; copy or export them again): "
            f"{_first_few(skipped['corrupt'])}"
        )
    return manifest


def _first_few(paths: list[str], n: int = 5) -> str:
    return ", ".join(paths[:n]) + (" ..." if len(paths) > n else "")


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


def _field(row, column: str) -> str:
    """A manifest field as text ('' when the column is missing: a manifest from an older version)."""
    value = row.get(column, "") if hasattr(row, "get") else getattr(row, column, "")
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def _float(row, column: str) -> float | None:
    number = _number(_field(row, column) or None)
    return number if number is not None and np.isfinite(number) else None


def _image_types(row) -> list[str]:
    return [t.strip().upper() for t in _field(row, "image_type").split("\\") if t.strip()]


def _names(row) -> str:
    """SeriesDescription and ProtocolName, where the selection looks for words."""
    return f"{_field(row, 'series_description')} {_field(row, 'protocol_name')}"


def _not_anatomical(row) -> str | None:
    """Why a series can never be the registration input (the rule's exclusions, in order), or None."""
    types, names = _image_types(row), _names(row)
    sequence = _field(row, "sequence_name")
    scanning = _field(row, "scanning_sequence").upper().split("\\")
    n_slices, n_temporal = int(_float(row, "n_slices") or 0), int(_float(row, "n_temporal") or 1)
    if LOCALISER_TYPES & set(types) or LOCALISER_NAME.search(names):
        return "localiser"
    if n_slices < MIN_SLICES:
        return f"only {n_slices} slice{'s' if n_slices != 1 else ''} (fewer than {MIN_SLICES}: a localiser or scout)"
    if FIELD_MAP_TYPES & set(types) or FIELD_MAP_NAME.search(names) or FIELD_MAP_SEQUENCE.search(sequence):
        return "field map"
    phase = next((PHASE_TYPES[t] for t in types[2:] if t in PHASE_TYPES), None)
    if phase:
        return f"{phase} image (ImageType {_field(row, 'image_type')}), not a magnitude image"
    if (_float(row, "b_value") or 0) > 0 or DIFFUSION_TYPES & set(types) or DIFFUSION_NAME.search(names):
        return "diffusion-weighted"
    if "EP" in scanning or "MOSAIC" in types or EPI_SEQUENCE.search(sequence) or EPI_NAME.search(names):
        return "EPI (fMRI, diffusion or perfusion), not an anatomical image"
    if n_temporal > 1:
        return f"{n_temporal} images per slice position (echoes, repetitions or time points: 4-D)"
    if (types[:1] == ["DERIVED"] and "UNI" not in types) or REFORMAT_TYPES & set(types):
        return (
            f"derived image (ImageType {_field(row, 'image_type')}): a reformat, projection or computed map, "
            "not an acquisition"
        )
    orientation = _field(row, "orientation")
    if orientation == "unknown":
        return "no slice geometry (a screenshot or secondary capture)"
    if orientation == "mixed":
        return "several slice orientations in one series (a multi-plane localiser?)"
    return None


def _t1_evidence(row) -> str | None:
    """Why a series counts as T1-weighted (the default atlas' contrast), or None."""
    if _field(row, "modality").upper() != "MR":
        return None
    for name in (_field(row, "series_description"), _field(row, "protocol_name")):  # the description first
        if MP2RAGE_INVERSION_NAME.search(name):
            return None  # an MP2RAGE inversion image: its UNI image is the T1-weighted one
        if T1_NAME.search(name):
            return "by its name"
        if OTHER_CONTRAST_NAME.search(name):
            return None
    te, tr, ti = _float(row, "echo_time"), _float(row, "repetition_time"), _float(row, "inversion_time")
    scanning = _field(row, "scanning_sequence").upper().split("\\")
    variant = _field(row, "sequence_variant").upper().split("\\")
    if te is None or te > 15:
        return None
    if ("IR" in scanning or "MP" in variant) and ti is not None and 300 <= ti <= 1500:
        return f"by its timing: inversion recovery, TI {ti:g} ms, TE {te:g} ms"
    if "GR" in scanning and tr is not None and tr < 50 and te < 10:
        return f"by its timing: spoiled gradient echo, TR {tr:g} ms, TE {te:g} ms"
    if "SE" in scanning and "IR" not in scanning and tr is not None and tr < 800:
        return f"by its timing: spin echo, TR {tr:g} ms, TE {te:g} ms"
    return None


def _rank(row) -> tuple:
    """The six ranking criteria of a candidate (each larger is better): see the module docstring."""
    thickness = _float(row, "slice_thickness")
    is_3d = _field(row, "mr_acquisition_type").upper() == "3D"
    spacing = [_number(v) for v in _field(row, "pixel_spacing").split("x")]
    voxel = (
        float(np.prod(spacing)) * thickness if thickness and len(spacing) == 2 and None not in spacing else float("inf")
    )
    post_contrast = int(_float(row, "contrast_agent") or 0) > 0 or bool(POST_CONTRAST_NAME.search(_names(row)))
    return (
        is_3d or (thickness is not None and thickness <= THIN_SLICE_MM),
        _t1_evidence(row) is not None,
        not post_contrast,
        is_3d,
        int(_float(row, "n_slices") or 0),
        -round(voxel, 4),
    )


def _describe(row) -> str:
    """What a candidate is, for its ``selection_reason``: e.g. '3-D T1-weighted MR series (T1 by its name), ...'."""
    is_3d = _field(row, "mr_acquisition_type").upper() == "3D"
    thickness = _field(row, "slice_thickness")
    evidence = _t1_evidence(row)
    what = " ".join(
        part
        for part in (
            "post-contrast" if not _rank(row)[2] else "",
            "3-D" if is_3d else "2-D" if _field(row, "mr_acquisition_type") else "",
            "MP2RAGE UNI" if "UNI" in _image_types(row) else "",
            "T1-weighted" if evidence else "non-T1" if _field(row, "modality").upper() == "MR" else "",
            f"{_field(row, 'modality') or 'unknown-modality'} series",
            f"(T1 {evidence})" if evidence else "",
        )
        if part
    )
    size = "x".join(filter(None, (_field(row, "pixel_spacing"), thickness)))
    return f"{what}, {int(_float(row, 'n_slices') or 0)} slices" + (f" of {size} mm" if size else "")


class SeriesChoice(NamedTuple):
    """The outcome of the selection rule for one subject (:func:`choose_series`)."""

    row: pd.Series | None  # the chosen manifest row, or None
    reasons: pd.Series  # one selection_reason per row of the subject, indexed like the manifest
    error: str | None  # the one-line message when nothing is chosen


def _filter_reason(row, modality: str | None, pattern: re.Pattern | None) -> str | None:
    if modality and _field(row, "modality").upper() != modality.strip().upper():
        return f"modality {_field(row, 'modality') or 'unknown'}, not {modality.strip().upper()} (series_filter)"
    if pattern is not None and not pattern.search(_field(row, "series_description")):
        return f"description does not match series_filter {pattern.pattern!r}"
    if not modality and _field(row, "modality").upper() not in ANATOMICAL_MODALITIES:
        return (
            f"modality {_field(row, 'modality') or 'unknown'} is not an anatomical modality "
            f"({' or '.join(ANATOMICAL_MODALITIES)}; name another with series_filter)"
        )
    return None


def choose_series(
    manifest: pd.DataFrame, subject: str, modality: str | None = None, description_regex: str | None = None
) -> SeriesChoice:
    """The selection rule (module docstring) applied to one subject's rows: chosen row + every reason.

    This is the one implementation of the rule: ``unireg index`` records its outcome in the
    ``selected``/``selection_reason`` columns, :func:`select_series` returns its row or raises.
    """
    validate_subject_id(subject)
    mine = manifest[manifest["subject"] == subject]
    if not len(mine):
        raise UniregError("subject is not in the manifest; check the id or run 'unireg index' again", subject=subject)
    mine.attrs = {}  # pandas would deep-copy the file list into every row the rule takes: it needs none of it
    return _choose(mine, subject, modality, description_regex)


def _choose(
    mine: pd.DataFrame, subject: str, modality: str | None = None, description_regex: str | None = None
) -> SeriesChoice:
    """:func:`choose_series` on ``mine``, the subject's rows of the manifest (without attrs)."""
    if (mine["kind"] == "nifti").any():
        nifti = mine[mine["kind"] == "nifti"]
        if "selected" in nifti.columns and nifti["selection_reason"].astype(str).str.len().all():
            # a BIDS dataset (unireg.bids.index_bids): its own rule already chose, and said why
            chosen = nifti[pd.to_numeric(nifti["selected"], errors="coerce").fillna(0).astype(int) == 1]
            error = None if len(chosen) else (nifti["problem"].iloc[0] or "no image chosen") + "; check the dataset"
            return SeriesChoice(chosen.iloc[0] if len(chosen) else None, mine["selection_reason"], error)
        reasons = pd.Series("not chosen: the cohort TSV gives a NIfTI file for this subject", index=mine.index)
        reasons[nifti.index[0]] = "chosen: the NIfTI file of the cohort TSV"
        return SeriesChoice(nifti.iloc[0], reasons, None)
    pattern = None
    if description_regex:
        try:
            pattern = re.compile(description_regex, re.IGNORECASE)
        except re.error as exc:
            raise UniregError(
                f"series_filter description {description_regex!r} is not a valid regular expression ({exc})",
                subject=subject,
            ) from exc
    # plain dicts, one per row: a Series per look-up (mine.loc, iterrows) costs ~0.1 ms
    rows = {label: dict(zip(mine.columns, values)) for label, values in zip(mine.index, mine.to_numpy(dtype=object))}
    texts: dict = {}  # label -> selection_reason

    def reasons() -> pd.Series:
        return pd.Series([texts.get(label, "") for label in mine.index], index=mine.index, dtype=object)

    candidates = []
    for label, row in rows.items():
        excluded = _filter_reason(row, modality, pattern) or _not_anatomical(row)
        if excluded:
            texts[label] = f"not chosen: {excluded}"
        else:
            candidates.append(label)
    if not candidates:
        why_not = reasons()
        return SeriesChoice(None, why_not, nothing_chosen(mine, why_not, modality, description_regex))
    rank = {label: _rank(rows[label]) for label in candidates}
    # best first: the six criteria, then the highest series number, then the hashed series uid
    ordered = sorted(
        candidates,
        key=lambda k: (rank[k], int(_float(rows[k], "series_number") or 0), _field(rows[k], "series_uid")),
        reverse=True,
    )
    best = rows[ordered[0]]
    tied = [k for k in ordered[1:] if rank[k] == rank[ordered[0]]]
    reason = f"chosen: {_describe(best)}"
    others = len(ordered) - 1
    if tied:
        same_number = any(
            int(_float(rows[k], "series_number") or 0) == int(_float(best, "series_number") or 0) for k in tied
        )
        reason += f"; tie with {len(tied)} other{'s' if len(tied) > 1 else ''} of the same rank (a repeat?) broken " + (
            "by the series uid order (the same series number)"
            if same_number
            else "by the highest series number (the later repeat)"
        )
    if others > len(tied):
        reason += f"; ranked above {others - len(tied)} other candidate{'s' if others - len(tied) > 1 else ''}"
    elif not others:
        reason += "; the only candidate"
    if not rank[ordered[0]][0]:
        reason += f"; its slices are thicker than {THIN_SLICE_MM:g} mm, but no 3-D or thin-slice series is there"
    texts[ordered[0]] = reason
    number = int(_float(best, "series_number") or 0)
    for label in ordered[1:]:
        row = rows[label]
        if label in tied:
            why = (
                "the same rank, lower series number (an earlier repeat)"
                if int(_float(row, "series_number") or 0) < number
                else "the same rank and series number, lower in series uid order"
            )
        else:
            criterion = next(i for i, (a, b) in enumerate(zip(rank[label], rank[ordered[0]])) if a != b)
            why = {
                0: f"ranked below: 2-D with slices thicker than {THIN_SLICE_MM:g} mm, the chosen series is volumetric",
                1: "ranked below: not T1-weighted, the chosen series is",
                2: "ranked below: post-contrast, the chosen series is not",
                3: "ranked below: 2-D, the chosen series is 3-D",
                4: f"ranked below: fewer slices than the chosen series ({int(_float(best, 'n_slices') or 0)})",
                5: "ranked below: coarser voxels than the chosen series",
            }[criterion]
        texts[label] = f"not chosen: {_describe(row)}; {why}"
    return SeriesChoice(mine.loc[ordered[0]], reasons(), None)


def nothing_chosen(rows: pd.DataFrame, reasons: pd.Series, modality: str | None, description_regex: str | None) -> str:
    """The one-line error for a subject whose rows hold no candidate (``reasons`` as recorded)."""
    listing = "; ".join(
        f"{_field(row, 'series_uid')} '{_field(row, 'series_description')}' {_field(row, 'modality')} "
        f"(series {int(_float(row, 'series_number') or 0)}, {int(_float(row, 'n_slices') or 0)} slices): "
        f"{str(reasons[label]).removeprefix('not chosen: ')}"
        for label, row in rows.iterrows()
    )
    filtered = modality or description_regex
    if filtered and all("series_filter" in str(reasons[label]) for label in rows.index):
        what = (
            f"no series matches the series filter (modality={modality or 'any'}, description="
            f"{description_regex or 'any'})"
        )
    else:
        what = "no anatomical series to register" + (
            f" (series filter modality={modality or 'any'}, description={description_regex or 'any'})"
            if filtered
            else ""
        )
    todo = (
        "widen or remove series_filter (modality / description regex)"
        if filtered
        else "export an original 3-D or thin-slice anatomical series (a T1 for the default atlas) and run 'unireg "
        "index' again"
    )
    return f"{what} among {len(rows)}: {listing}; {todo}"


def select_series(
    manifest: pd.DataFrame, subject: str, modality: str | None = None, description_regex: str | None = None
) -> pd.Series:
    """The manifest row of ``subject`` that the selection rule (module docstring) chooses.

    ``modality`` compares case-insensitively with Modality; ``description_regex`` is searched
    (case-insensitive) in SeriesDescription: when given, only matching series are candidates.
    Localisers, field maps, phase images, EPI/DWI/4-D series and derived images are never
    chosen. A subject given as a NIfTI file (cohort TSV) has one row. No candidate: a one-line
    :class:`UniregError` listing every series of the subject and why it was not chosen.
    """
    choice = choose_series(manifest, subject, modality, description_regex)
    if choice.row is None:
        raise UniregError(choice.error, subject=subject)
    return choice.row
