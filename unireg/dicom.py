"""Cohort discovery (one manifest for the whole cohort) and DICOM -> NIfTI conversion.

Indexing (``unireg index``) reads DICOM *headers only* (pydicom, ``stop_before_pixels``) of
every file below a folder, whatever the nesting and file names, and makes one manifest row per
series (SeriesInstanceUID); or it reads a cohort TSV (``subject``, then ``dicom`` (a folder) or
``nifti`` (a file), optional ``reference``). The manifest never holds a patient-identifying
field: no name, PatientID, birth date, accession number, institution, date, time or comment
(series and study UIDs stay: conversion and selection need them).

Subject ids come from the cohort TSV, from a user ``subject_map`` (PatientID -> id), or are
``"s" + sha256(SUBJECT_SALT + PatientID)[:10]`` (StudyInstanceUID when PatientID is empty):
stable across runs, never derived from the name. Every id matches ``^[A-Za-z0-9]+$``.

The list of files of each series travels with the manifest as ``manifest.attrs["files"]``
(``{"<subject>/<series_uid>": [path, ...]}``, :func:`series_key`); :func:`write_manifest` stores it beside the TSV as
``<name>.files.json`` (the paths are the user's own, so they may say whatever the user's folder
names say; the TSV itself holds no path of a DICOM file).

Conversion (``unireg convert``) picks one series per subject (:func:`select_series`: modality /
SeriesDescription regex, localisers skipped) and runs the dcm2niix binary of the ``dcm2niix``
PyPI wheel (or the one on ``PATH``, e.g. from conda-forge) on a private folder that holds only
that series' files (symlinks), with :data:`DCM2NIIX_FLAGS` every time:

    -g i        ignore any ~/.dcm2nii.ini: built-in defaults only, the same on every machine
    -b y -ba y  BIDS sidecar, anonymised (dcm2niix still keeps e.g. InstitutionName and
                AcquisitionTime, hence our own whitelist :data:`SIDECAR_KEYS`)
    -f %j       output named by SeriesInstanceUID (never %n/%i/%t: name, ID, time)
    -z n        uncompressed: we rewrite the header (free-text fields cleared) and gzip
                ourselves, so compressing in dcm2niix would be wasted work
    -i n        convert derived, localiser and 2D images too: selection is our job
    -x n        no cropping; 3-D acquisitions are still reoriented (lossless flips/permutes)
                to the nearest canonical orientation, dcm2niix's default that
                :func:`unireg.demo.predicted_nifti_grid` models
    -l o        keep the original 16-bit storage type
    -p y        Philips: precise (not display) scaling
    -d 0 -w 1   search only the private input folder; overwrite inside the private output
    (no -m)     dcm2niix's built-in automatic merge: MR slices that differ in echo, coil,
                orientation or protocol come out as separate volumes (an error here), CT slices
                that differ only in X-ray exposure (tube-current modulation) are stacked.
                ``-m n`` would split every modulated CT series; ``-m 2``, the documented
                spelling of the default, in v1.0.20260724 also ignores SeriesInstanceUID.

Before dcm2niix runs, the headers must describe one evenly spaced stack (checked by us, because
what dcm2niix makes of an uneven one depends on its version): a missing or moved slice, an
unequal number of images per slice position or no slice geometry at all is a one-line
:class:`UniregError` naming the subject and series. Exactly one 3-D volume must come out; several
(two orientations, echoes, repetitions in one 4-D file) or none is such an error too. The NIfTI
header's free-text fields (``descrip`` holds the acquisition time, ``aux_file``, ``db_name``,
``intent_name``) are cleared and NIfTI extensions dropped; voxel bytes are copied unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .errors import UniregError
from .io import write_atomic, write_text_atomic

SUBJECT_SALT = "unireg-subject-id-v1"  # fixed project constant: the same PatientID gives the same id everywhere
SUBJECT_ID = re.compile(r"^[A-Za-z0-9]+$")
MIN_SLICES = 10  # fewer slices: a localiser / scout, never a registration input
OBLIQUE_DEGREES = 30.0  # slice normal further than this from every axis: "oblique"
MANIFEST_COLUMNS = ["subject", "study_uid", "series_uid", "modality", "series_description", "n_files", "n_slices",
                    "orientation", "rows", "columns", "pixel_spacing", "slice_thickness", "transfer_syntax",
                    "sop_class", "image_type", "n_truncated", "kind", "source", "reference"]
INT_COLUMNS = ("n_files", "n_slices", "rows", "columns", "n_truncated")
SIDECAR_KEYS = ("Modality", "MagneticFieldStrength", "ImagingFrequency", "Manufacturer", "ManufacturersModelName",
                "MRAcquisitionType", "SeriesDescription", "ProtocolName", "ScanningSequence", "SequenceVariant",
                "ScanOptions", "SequenceName", "ImageType", "SeriesNumber", "SliceThickness",
                "SpacingBetweenSlices", "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle",
                "PartialFourier", "PhaseEncodingSteps", "AcquisitionMatrixPE", "ReconMatrixPE",
                "PixelBandwidth", "ImageOrientationPatientDICOM", "InPlanePhaseEncodingDirectionDICOM",
                "ConversionSoftware", "ConversionSoftwareVersion")
DCM2NIIX_FLAGS = ("-g", "i", "-b", "y", "-ba", "y", "-f", "%j", "-z", "n", "-i", "n", "-x", "n", "-l", "o",
                  "-p", "y", "-d", "0", "-w", "1")
DCM2NIIX_TIMEOUT_S = 1800
# Header values that identify a person or a visit: never shown, even inside a dcm2niix message.
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
                "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
                "PerformingPhysicianName", "OperatorsName", "StationName", "DeviceSerialNumber", "StudyID",
                "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime",
                "AcquisitionTime", "ContentTime")
NIFTI_FREE_TEXT = ("descrip", "aux_file", "db_name", "intent_name", "data_type")
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: DICOM without a SOP class, not corrupt
POSITION_TOLERANCE_MM = 0.01  # slice positions closer than this along the normal are the same position
# A gap between neighbouring slices may differ from the series' slice spacing by this fraction of
# it (plus POSITION_TOLERANCE_MM): headers that store positions to 0.1 mm pass, a missing or moved
# slice does not. dcm2niix cannot write an uneven stack as NIfTI (its result depends on its version).
SPACING_TOLERANCE = 0.1


# ---------------------------------------------------------------------------------------------
# Subject ids
# ---------------------------------------------------------------------------------------------

def validate_subject_id(subject: str) -> str:
    """Subject ids are letters and digits only (no ``/``, ``..``, ``-``, spaces): safe in any path."""
    if not isinstance(subject, str) or not SUBJECT_ID.fullmatch(subject):  # "$" alone would accept "x\n"
        raise UniregError(f"invalid subject id {subject!r}: use letters and digits only (e.g. 'sub-01' -> '01')")
    return subject


def anonymous_subject_id(patient_id: str) -> str:
    """``"s"`` + the first 10 hex digits of sha256(:data:`SUBJECT_SALT` + PatientID): stable, not identifying."""
    return "s" + hashlib.sha256((SUBJECT_SALT + str(patient_id)).encode()).hexdigest()[:10]


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
# Reading one file's header
# ---------------------------------------------------------------------------------------------

def _read_header(path: Path):
    """``(dataset, pixel_state)`` from the header only, or ``(None, None)`` for a non-DICOM file.

    ``pixel_state`` is ``"complete"``, ``"truncated"`` (the file ends before its pixel data
    does) or ``"none"`` (no pixel data element at all: cut before it, or never written).
    ``(None, "corrupt")``: the file says it is DICOM (preamble + ``DICM``) but its header
    cannot be parsed, or parses into no SOP class (bytes overwritten); a DICOMDIR is not corrupt.
    """
    try:
        with open(path, "rb") as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:  # no preamble / 'DICM': may still be a bare (ACR-NEMA style) dataset
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in ds:  # forced parsing of other bytes gives garbage, not DICOM
                    return None, None
            else:
                media_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
                if "SOPClassUID" not in ds and media_class != MEDIA_STORAGE_DIRECTORY:
                    return None, "corrupt"
            return ds, _pixel_state(fh, ds)
    except Exception:  # pydicom raises many types on non-DICOM bytes; such files are skipped
        return None, "corrupt" if _has_dicom_preamble(path) else None


def _has_dicom_preamble(path: Path) -> bool:
    """A DICOM part-10 file: 128 bytes of preamble, then ``DICM``."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _pixel_state(fh, ds) -> str:
    """Whether the pixel data element that starts at ``fh.tell()`` fits inside the file."""
    start, size = fh.tell(), os.fstat(fh.fileno()).st_size
    implicit, little = getattr(ds, "original_encoding", (None, None))
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if implicit is None or little is None or transfer_syntax == DeflatedExplicitVRLittleEndian:
        return "complete"  # unknown encoding, or a deflated stream that fh does not address: leave it to dcm2niix
    order = "<" if little else ">"
    head = fh.read(12)
    if len(head) < 8:
        return "none"
    group, _ = struct.unpack(order + "HH", head[:4])
    if group != 0x7FE0:
        return "none"
    if implicit or not head[4:6].isalpha():  # some writers store this one element implicitly
        (length,), offset = struct.unpack(order + "I", head[4:8]), 8
    elif head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN") and len(head) == 12:
        (length,), offset = struct.unpack(order + "I", head[8:12]), 12
    else:
        (length,), offset = struct.unpack(order + "H", head[6:8]), 8
    position = start + offset
    if length != 0xFFFFFFFF:
        return "complete" if position + length <= size else "truncated"
    fh.seek(position)  # encapsulated: walk the items up to the sequence delimiter
    while True:
        item = fh.read(8)
        if len(item) < 8:
            return "truncated"
        item_group, item_element, item_length = struct.unpack("<HHI", item)
        if (item_group, item_element) == (0xFFFE, 0xE0DD):
            return "complete"
        position += 8 + item_length
        if (item_group, item_element) != (0xFFFE, 0xE000) or position > size:
            return "truncated"
        fh.seek(position)


def _functional_group_value(ds, sequence: str, keyword: str):
    """A geometry value of an enhanced (multi-frame) image: shared group first, then frame 1."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(groups)
        if items and sequence in items[0] and items[0][sequence].value and keyword in items[0][sequence][0]:
            return items[0][sequence][0][keyword].value
    return None


def _geometry_value(ds, keyword: str, sequence: str):
    value = ds.get(keyword)
    return value if value not in (None, "") else _functional_group_value(ds, sequence, keyword)


def orientation_label(iop) -> str:
    """Slice plane of an ImageOrientationPatient (6 direction cosines, LPS).

    ``axial``/``sagittal``/``coronal`` by the axis nearest to the slice normal, ``oblique``
    when the normal is further than :data:`OBLIQUE_DEGREES` from every axis, ``unknown``
    without a valid value.
    """
    iop = _vector(iop, 6)
    if iop is None:
        return "unknown"
    normal = np.cross(iop[:3], iop[3:])
    axis = int(np.argmax(np.abs(normal)))
    if not np.any(normal) or abs(normal[axis]) < np.cos(np.deg2rad(OBLIQUE_DEGREES)) * np.linalg.norm(normal):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]  # LPS x, y, z normals


def _vector(value, size: int) -> np.ndarray | None:
    """A DICOM multi-value as floats, or None when absent or malformed (headers do not always parse)."""
    try:
        vector = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None
    return vector if vector.size == size and np.all(np.isfinite(vector)) else None


def _number(value, kind=float):
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _slice_positions(ds) -> list[tuple]:
    """The ImagePositionPatient of every slice stored in ``ds`` (one, or one per frame)."""
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if frames:
        values = [f.PlanePositionSequence[0].get("ImagePositionPatient") for f in frames
                  if f.get("PlanePositionSequence")]
    else:
        values = [ds.get("ImagePositionPatient")]
    vectors = [_vector(v, 3) for v in values]
    return [tuple(np.round(v, 3)) for v in vectors if v is not None]


def _mosaic_slices(ds) -> int | None:
    """Siemens mosaic: the number of slices tiled into one file (private tag 0019,100A)."""
    if "MOSAIC" not in [str(v).upper() for v in (ds.get("ImageType") or [])] or (0x0019, 0x100A) not in ds:
        return None
    value = ds[0x0019, 0x100A].value
    return int.from_bytes(value[:2], "little") if isinstance(value, bytes) else _number(value, int)


def _is_image(ds) -> bool:
    sop_class = ds.get("SOPClassUID")
    return "SeriesInstanceUID" in ds and ("Rows" in ds or "Image Storage" in getattr(sop_class, "name", ""))


def _text(value) -> str:
    """One TSV-safe line (no tabs, no newlines)."""
    return " ".join(str(value if value is not None else "").split())


def _series_row(subject: str, uid: str, headers: list, n_truncated: int) -> dict:
    """One manifest row from the headers of a series' files.

    ``n_slices``: distinct ImagePositionPatient values (per frame for enhanced multi-frame
    files), NumberOfFrames where frames carry no position, the mosaic's slice count for a
    Siemens mosaic. ``orientation``: :func:`orientation_label`, or ``mixed`` when the files'
    ImageOrientationPatient differ (dcm2niix then writes one volume per orientation).
    Geometry and sizes come from the first complete file.
    """
    complete = [ds for ds in headers if "Rows" in ds] or headers
    first = complete[0]
    image_type = "\\".join(str(v) for v in (first.get("ImageType") or []))
    iops = [_vector(_geometry_value(ds, "ImageOrientationPatient", "PlaneOrientationSequence"), 6)
            for ds in complete]
    iops = [v for v in iops if v is not None]
    same = all(np.allclose(v, iops[0], atol=1e-4) for v in iops)
    positions = {p for ds in complete for p in _slice_positions(ds)}
    n_frames = sum(_number(ds.get("NumberOfFrames"), int) or 1 for ds in complete)
    mosaic = _mosaic_slices(first)
    n_slices = mosaic or len(positions) or n_frames
    spacing = _vector(_geometry_value(first, "PixelSpacing", "PixelMeasuresSequence"), 2)
    thickness = _number(_geometry_value(first, "SliceThickness", "PixelMeasuresSequence"))
    transfer_syntax = getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "")
    sop_class = first.get("SOPClassUID", "")
    return {
        "subject": subject, "study_uid": str(first.get("StudyInstanceUID", "")), "series_uid": uid,
        "modality": _text(first.get("Modality")), "series_description": _text(first.get("SeriesDescription")),
        "n_files": len(headers), "n_slices": int(n_slices),
        "orientation": orientation_label(iops[0]) if iops and same else ("mixed" if iops else "unknown"),
        "rows": _number(first.get("Rows"), int) or 0, "columns": _number(first.get("Columns"), int) or 0,
        "pixel_spacing": "x".join(f"{v:g}" for v in spacing) if spacing is not None else "",
        "slice_thickness": f"{thickness:g}" if thickness is not None else "",
        "transfer_syntax": str(transfer_syntax), "sop_class": _text(getattr(sop_class, "name", sop_class)),
        "image_type": _text(image_type), "n_truncated": n_truncated, "kind": "dicom", "source": "", "reference": "",
    }


def _manifest_frame(rows: list[dict], files: dict[str, list[str]], skipped: dict) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if len(frame):
        frame = frame.sort_values(["subject", "series_description", "series_uid"], kind="stable").reset_index(drop=True)
    frame.attrs["files"] = files
    frame.attrs["skipped"] = skipped
    return frame


# ---------------------------------------------------------------------------------------------
# Indexing
# ---------------------------------------------------------------------------------------------

def index_dicom(root: str | Path, subject_map: dict | str | Path | None = None, *,
                subject: str | None = None) -> pd.DataFrame:
    """One manifest row per series (SeriesInstanceUID) of the DICOM files below ``root``.

    Args:
        root: a folder; files at any depth, with any names, are read (headers only).
        subject_map: PatientID -> subject id (a dict or a TSV, see :func:`read_subject_map`);
            without it ids are :func:`anonymous_subject_id` of the PatientID.
        subject: force this id for every series (a cohort TSV row names the folder's subject).

    Returns:
        The manifest (:data:`MANIFEST_COLUMNS`), with ``attrs["files"]`` (subject and series
        uid -> its files, sorted, keyed by :func:`series_key`) and ``attrs["skipped"]``: ``not_dicom`` (unreadable or not DICOM) and
        ``not_image`` (DICOM without an image, e.g. a DICOMDIR or a report) counts, and
        ``truncated`` (image files whose pixel data is cut short or missing: they stay in
        their series, so converting it fails loudly instead of silently losing a slice) and
        ``corrupt`` (files that say they are DICOM but whose header cannot be read: they belong
        to no series, so their series misses a slice; :func:`convert_series` refuses a series
        with a gap in its slices).
    """
    root = Path(root)
    if not root.is_dir():
        raise UniregError("DICOM folder not found", subject=subject, path=root)
    mapping = read_subject_map(subject_map)
    headers: dict[str, list] = {}
    files: dict[str, list[str]] = {}
    truncated: list[str] = []
    corrupt: list[str] = []
    skipped = {"not_dicom": 0, "not_image": 0}
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in sorted(names):
            path = Path(folder, name)
            ds, pixels = _read_header(path)
            if ds is None:
                if pixels == "corrupt":
                    corrupt.append(str(path))
                else:
                    skipped["not_dicom"] += 1
                continue
            if not _is_image(ds):
                skipped["not_image"] += 1
                continue
            if pixels != "complete":
                truncated.append(str(path))
            uid = str(ds.SeriesInstanceUID)
            headers.setdefault(uid, []).append(ds)
            files.setdefault(uid, []).append(str(path))
    rows, truncated_set = [], set(truncated)
    for uid, series in headers.items():
        if subject is None:
            patient = _text(series[0].get("PatientID"))
            if mapping is not None:
                if patient not in mapping:
                    raise UniregError(f"series {uid}: its PatientID is not in the subject map; add it (the "
                                      "manifest will not show it)", path=root)
                series_subject = mapping[patient]
            else:
                series_subject = anonymous_subject_id(patient or str(series[0].get("StudyInstanceUID", "")))
        else:
            series_subject = validate_subject_id(subject)
        n_truncated = sum(1 for f in files[uid] if f in truncated_set)
        rows.append(_series_row(series_subject, uid, series, n_truncated))
    listing = {series_key(row["subject"], row["series_uid"]): files[row["series_uid"]] for row in rows}
    return _manifest_frame(rows, listing, {**skipped, "truncated": truncated, "corrupt": corrupt})


def series_key(subject: str, series_uid: str) -> str:
    """Key of a series' file list in ``manifest.attrs["files"]``: per subject, because a cohort TSV
    may name the same series (a copied folder) for two subjects, and each keeps its own files."""
    return f"{subject}/{series_uid}"


def index_cohort(cohort: str | Path, subject_map: dict | str | Path | None = None) -> pd.DataFrame:
    """The manifest of a DICOM folder, or of a cohort TSV (``subject``, ``dicom`` or ``nifti``, ``reference``).

    Paths in the TSV are relative to its folder. A ``nifti`` row becomes one manifest row of
    ``kind`` ``nifti`` whose ``source`` is the file (it is copied, not converted).
    """
    cohort = Path(cohort)
    if cohort.is_dir():
        return index_dicom(cohort, subject_map)
    if not cohort.is_file():
        raise UniregError("cohort not found (a DICOM folder or a cohort TSV)", path=cohort)
    table = pd.read_csv(cohort, sep="\t", dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    if "subject" not in table.columns or not ({"dicom", "nifti"} & set(table.columns)):
        raise UniregError("cohort TSV needs the columns 'subject' and 'dicom' or 'nifti'", path=cohort)
    rows, files = [], {}
    skipped = {"not_dicom": 0, "not_image": 0, "truncated": [], "corrupt": []}
    for record in table.to_dict("records"):
        subject = validate_subject_id(record["subject"].strip())
        reference = record.get("reference", "").strip()
        reference = str((cohort.parent / reference).resolve()) if reference else ""
        if record.get("dicom", "").strip():
            found = index_dicom(cohort.parent / record["dicom"].strip(), subject=subject)
            rows += [{**row, "reference": reference} for row in found.to_dict("records")]
            files.update(found.attrs["files"])
            for key, value in found.attrs["skipped"].items():
                skipped[key] += value
        elif record.get("nifti", "").strip():
            rows.append({**{c: "" for c in MANIFEST_COLUMNS}, **{c: 0 for c in INT_COLUMNS},
                         "subject": subject, "kind": "nifti", "n_files": 1,
                         "source": str((cohort.parent / record["nifti"].strip()).resolve()), "reference": reference})
        else:
            raise UniregError("cohort row has neither a dicom folder nor a nifti file", subject=subject, path=cohort)
    return _manifest_frame(rows, files, skipped)


def files_path(manifest_path: str | Path) -> Path:
    """The JSON beside the manifest that lists each series' files: ``<name>.files.json``."""
    manifest_path = Path(manifest_path)
    stem = manifest_path.name[:-4] if manifest_path.name.endswith(".tsv") else manifest_path.name
    return manifest_path.with_name(stem + ".files.json")


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write the manifest TSV and its ``.files.json`` (from ``manifest.attrs["files"]``), atomically.

    The TSV is written last, so its presence means both are complete.
    """
    path = Path(path)
    write_text_atomic(files_path(path), json.dumps(manifest.attrs.get("files", {}), indent=1) + "\n")
    write_text_atomic(path, manifest.reindex(columns=MANIFEST_COLUMNS).to_csv(sep="\t", index=False,
                                                                               lineterminator="\n"))
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest TSV (integer columns as int, the rest as text) and its ``.files.json``."""
    path = Path(path)
    if not path.is_file():
        raise UniregError("manifest not found; run 'unireg index' first", path=path)
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UniregError(f"cannot read the manifest ({type(exc).__name__}); run 'unireg index' again",
                          path=path) from exc
    missing = [c for c in ("subject", "series_uid", "kind") if c not in frame.columns]
    if missing:
        raise UniregError(f"not a unireg manifest (missing columns {', '.join(missing)})", path=path)
    for column in INT_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column].replace("", "0"), errors="coerce").fillna(0).astype(int)
    listing = files_path(path)
    frame.attrs["files"] = json.loads(listing.read_text()) if listing.is_file() else {}
    return frame


def index_command(dicom_root: str | Path, manifest_out: str | Path,
                  subject_map: dict | str | Path | None = None) -> pd.DataFrame:
    """``unireg index``: index a DICOM folder or cohort TSV, write the manifest, print a summary."""
    manifest = index_cohort(dicom_root, subject_map)
    if not len(manifest):
        raise UniregError("no DICOM image series or NIfTI files found in the cohort", path=dicom_root)
    write_manifest(manifest, manifest_out)
    skipped = manifest.attrs["skipped"]
    print(f"unireg index: {manifest['subject'].nunique()} subjects, {len(manifest)} series/files; skipped "
          f"{skipped['not_dicom']} non-DICOM or unreadable and {skipped['not_image']} non-image files")
    if skipped["truncated"]:
        print(f"unireg index: warning: {len(skipped['truncated'])} truncated DICOM files (their series will not "
              f"convert): {_first_few(skipped['truncated'])}")
    if skipped["corrupt"]:
        print(f"unireg index: warning: {len(skipped['corrupt'])} corrupt DICOM files (header unreadable or "
              f"without a SOP class; skipped, so their series each lack a slice; copy or export them again): "
              f"{_first_few(skipped['corrupt'])}")
    return manifest


def _first_few(paths: list[str], n: int = 5) -> str:
    return ", ".join(paths[:n]) + (" ..." if len(paths) > n else "")


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------

def is_localizer(row) -> bool:
    """A localiser/scout: ImageType says LOCALIZER, or fewer than :data:`MIN_SLICES` slices."""
    return "LOCALIZER" in str(row["image_type"]).upper() or int(row["n_slices"]) < MIN_SLICES


def select_series(manifest: pd.DataFrame, subject: str, modality: str | None = None,
                  description_regex: str | None = None, *, include_localizers: bool = False) -> pd.Series:
    """The one manifest row of ``subject`` that the filter leaves.

    ``modality`` compares case-insensitively with Modality; ``description_regex`` is searched
    (case-insensitive) in SeriesDescription. Localisers (:func:`is_localizer`) are left out
    unless ``include_localizers``. A subject given as a NIfTI file (cohort TSV) has one row.
    Zero or several matches: a one-line :class:`UniregError` listing the candidates.
    """
    validate_subject_id(subject)
    mine = manifest[manifest["subject"] == subject]
    if not len(mine):
        raise UniregError("subject is not in the manifest; check the id or run 'unireg index' again", subject=subject)
    if (mine["kind"] == "nifti").any():
        return mine[mine["kind"] == "nifti"].iloc[0]
    keep = np.ones(len(mine), dtype=bool)
    if not include_localizers:
        keep &= ~mine.apply(is_localizer, axis=1).to_numpy(dtype=bool)
    if modality:
        keep &= (mine["modality"].str.upper() == modality.strip().upper()).to_numpy()
    if description_regex:
        try:
            pattern = re.compile(description_regex, re.IGNORECASE)
        except re.error as exc:
            raise UniregError(f"series_filter description {description_regex!r} is not a valid regular "
                              f"expression ({exc})", subject=subject) from exc
        keep &= mine["series_description"].map(lambda d: bool(pattern.search(str(d)))).to_numpy(dtype=bool)
    candidates = mine[keep]
    if len(candidates) == 1:
        return candidates.iloc[0]
    shown = candidates if len(candidates) else mine
    listing = "; ".join(
        f"{r.series_uid} '{r.series_description}' {r.modality} ({r.n_slices} slices"
        f"{', localiser' if is_localizer(r._asdict()) else ''})" for r in shown.itertuples())
    what = "no series matches" if not len(candidates) else f"{len(candidates)} series match"
    raise UniregError(f"{what} the series filter (modality={modality or 'any'}, description="
                      f"{description_regex or 'any'}; localisers skipped) among {'' if len(candidates) else 'all '}"
                      f"{len(shown)}: {listing}; refine series_filter (modality / description regex) in the config",
                      subject=subject)


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------

def dcm2niix_binary() -> str:
    """The dcm2niix executable: the PyPI wheel's (``dcm2niix.bin``), else the one on ``PATH``."""
    try:
        import dcm2niix
        candidate = Path(dcm2niix.bin)
    except (ImportError, AttributeError):
        candidate = None
    if candidate is None or not candidate.is_file():
        found = shutil.which("dcm2niix")
        candidate = Path(found) if found else None
    if candidate is None:
        raise UniregError("dcm2niix not found: pip install dcm2niix (or conda install -c conda-forge dcm2niix)")
    return str(candidate)


def sidecar_path(nifti_path: str | Path) -> Path:
    """``x.nii.gz`` -> ``x.json``."""
    nifti_path = Path(nifti_path)
    return nifti_path.with_name(re.sub(r"\.nii(\.gz)?$", "", nifti_path.name) + ".json")


def scrub_sidecar(sidecar: dict) -> dict:
    """Only the acquisition keys of :data:`SIDECAR_KEYS` (no dates, times, names, IDs, institution)."""
    return {key: sidecar[key] for key in SIDECAR_KEYS if key in sidecar}


def write_scrubbed_nifti(source: str | Path, out_nifti: str | Path, *, subject: str | None = None) -> Path:
    """Copy a NIfTI (``.nii`` or ``.nii.gz``) to ``out_nifti`` (``.nii.gz``) with no free text in it.

    The header fields :data:`NIFTI_FREE_TEXT` are cleared and any NIfTI extension is dropped
    (its bytes zeroed, flag 0); the affine, scaling and voxel bytes are copied unchanged. A
    file with more than one volume is an error. Written atomically, gzip without name or time.
    """
    source, out_nifti = Path(source), Path(out_nifti)
    if not out_nifti.name.endswith(".nii.gz"):
        raise UniregError("output must end in .nii.gz", subject=subject, path=out_nifti)
    try:
        with (gzip.open if source.name.endswith(".gz") else open)(source, "rb") as fin:
            first = fin.read(4)
            sizes = {order: struct.unpack(order + "i", first)[0] for order in "<>"} if len(first) == 4 else {}
            endian = next((order for order, size in sizes.items() if size in (348, 540)), None)
            if endian is None:
                raise UniregError("not a NIfTI file (bad header size)", subject=subject, path=source)
            sizeof_hdr = sizes[endian]  # 348: NIfTI-1, 540: NIfTI-2
            block = first + fin.read(sizeof_hdr - 4)
            header_class = nib.Nifti1Header if sizeof_hdr == 348 else nib.Nifti2Header
            header = header_class(binaryblock=block, endianness=endian, check=False)
            shape = header.get_data_shape()
            if len(shape) < 3 or int(np.prod(shape[3:], dtype=np.int64)) > 1:
                raise UniregError(f"expected one 3-D volume, got shape {shape}; choose a 3-D series",
                                  subject=subject, path=source)
            for name in NIFTI_FREE_TEXT:
                if name in header:
                    header[name] = b""
            vox_offset = int(header["vox_offset"])
            if vox_offset == 0:  # some writers leave it 0 in a single file: the data follow the 4-byte flag
                vox_offset = sizeof_hdr + 4
                header["vox_offset"] = vox_offset
            if vox_offset < sizeof_hdr + 4:
                raise UniregError("not a single-file NIfTI (.nii/.nii.gz)", subject=subject, path=source)
            fin.read(vox_offset - sizeof_hdr)  # extension flag and extensions: dropped

            def write_gzip(tmp):
                with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                           compresslevel=6, mtime=0) as gz:
                    gz.write(header.binaryblock)
                    gz.write(b"\0" * (vox_offset - sizeof_hdr))
                    shutil.copyfileobj(fin, gz, 1 << 20)
            write_atomic(out_nifti, write_gzip, ".nii.gz")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UniregError(f"cannot read as NIfTI ({type(exc).__name__})", subject=subject, path=source) from exc
    return out_nifti


def _redact(text: str, values: list[str], folder: str) -> str:
    text = text.replace(folder + os.sep, "").replace(folder, "")
    for value in values:
        text = text.replace(value, "[removed]")
    return text


def _phi_values(ds) -> list[str]:
    """The identifying values of a header, longest first (for :func:`_redact`)."""
    values = set()
    for keyword in PHI_KEYWORDS:
        value = ds.get(keyword) if ds is not None else None
        for item in (value if isinstance(value, (list, tuple, MultiValue)) else [value]):
            text = str(item or "").strip()
            if len(text) >= 3:
                values |= {text, text.replace("^", " ")}
    return sorted(values, key=len, reverse=True)


def _orientations(headers: list) -> set[tuple]:
    """The distinct ImageOrientationPatient values (rounded to 1e-3) of a series' files."""
    iops = [_vector(_geometry_value(ds, "ImageOrientationPatient", "PlaneOrientationSequence"), 6) for ds in headers]
    return {tuple(np.round(v, 3)) for v in iops if v is not None}


def _slice_normal(iop: tuple) -> np.ndarray:
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def _stack(headers: list, iop: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct slice positions of a one-orientation series, ordered along its slice normal.

    Returns ``(points, along, counts)``: one ImagePositionPatient (LPS mm) per distinct position,
    its distance along the normal (mm, ascending) and how many images sit there (echoes, repetitions).
    """
    normal = _slice_normal(iop)
    points = np.array([p for ds in headers for p in _slice_positions(ds)], dtype=float).reshape(-1, 3)
    order = np.argsort(points @ normal, kind="stable")
    points, along = points[order], (points @ normal)[order]
    if not along.size:
        return points, along, np.zeros(0, dtype=int)
    starts = np.r_[0, np.flatnonzero(np.diff(along) > POSITION_TOLERANCE_MM) + 1]
    return points[starts], along[starts], np.diff(np.r_[starts, along.size])


def _slice_geometry_problem(headers: list) -> str | None:
    """Why a series' slices cannot stack into one evenly spaced volume, or None.

    Checked before dcm2niix, from the headers alone: a series with no slice geometry (a
    screenshot), a missing or moved slice (uneven spacing along the slice normal) or an unequal
    number of images per slice position (an incomplete repetition or echo). Series with several
    orientations are left to dcm2niix, which splits them (see :func:`_why_not_one_volume`).
    """
    orientations = _orientations(headers)
    if not orientations:
        return ("has no slice geometry (no ImageOrientationPatient): a screenshot or secondary capture, not an "
                "acquisition")
    if len(orientations) > 1:
        return None
    _, positions, counts = _stack(headers, next(iter(orientations)))
    if len(set(counts.tolist())) > 1:
        values, how_many = np.unique(counts, return_counts=True)
        detail = ", ".join(f"{n} with {v}" for v, n in zip(values.tolist(), how_many.tolist()))
        return (f"has an unequal number of images per slice position ({len(positions)} positions: {detail}): an "
                "incomplete repetition or echo, or missing files")
    if len(positions) < 3:
        return None
    gaps = np.diff(positions)
    step = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step + POSITION_TOLERANCE_MM)
    if not uneven.size:
        return None
    first = int(uneven[0])
    where = (f"{gaps[first]:.4g} mm between the slices at {positions[first]:.2f} and {positions[first + 1]:.2f} mm "
             f"along the slice normal, {step:.4g} mm elsewhere")
    missing = gaps[first] / step
    if abs(missing - round(missing)) < SPACING_TOLERANCE and round(missing) >= 2:
        what = f"{round(missing) - 1} slice{'s' if round(missing) > 2 else ''} missing"
    else:
        what = "uneven slice spacing"
    more = f" ({len(uneven)} uneven gaps in all)" if len(uneven) > 1 else ""
    return f"has {what}: {where}{more}"


def _misplaced_slices(headers: list, nifti_path: Path) -> str | None:
    """Whether the converted volume puts every slice where its header says, or why not.

    The check that no conversion is silently wrong whatever dcm2niix did: each slice's
    ImagePositionPatient (the centre of its first pixel) must be, by the NIfTI affine, the
    centre of a corner voxel of the matching NIfTI slice, within :data:`SPACING_TOLERANCE` of
    the slice spacing. A uniform spacing that is not the headers' (e.g. taken from the first two
    of slightly uneven positions) misplaces the far slices and is caught here. Mosaics and series
    with several orientations (several volumes, refused before) are not checked.
    """
    orientations = _orientations(headers)
    if len(orientations) != 1 or _mosaic_slices(headers[0]):
        return None
    iop = next(iter(orientations))
    points, along, counts = _stack(headers, iop)
    if len(points) < 3 or counts.max() > 1:
        return None
    image = nib.load(nifti_path)
    affine, shape = image.affine, image.shape[:3]
    to_ras = np.array([-1.0, -1.0, 1.0])
    points_ras, normal_ras = points * to_ras, _slice_normal(iop) * to_ras
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(columns.T @ normal_ras)))
    if shape[axis] != len(points):
        return f"converts to a volume of {shape[axis]} slices but its headers give {len(points)} slice positions"
    rank = np.arange(len(points))
    voxels = np.tile(np.rint(np.linalg.solve(affine[:3, :3], points_ras[0] - affine[:3, 3])), (len(points), 1))
    voxels[:, axis] = rank if columns[:, axis] @ normal_ras > 0 else len(points) - 1 - rank
    errors = np.linalg.norm(voxels @ affine[:3, :3].T + affine[:3, 3] - points_ras, axis=1)
    mean_step = (along[-1] - along[0]) / (len(along) - 1)
    if errors.max() <= SPACING_TOLERANCE * mean_step:
        return None
    return (f"converts to a volume that puts a slice {errors.max():.2f} mm from where its header says (slices "
            f"{np.linalg.norm(affine[:3, axis]):.4g} mm apart in the NIfTI, {mean_step:.4g} mm on average in the "
            "headers): its slice positions are uneven")


def _why_not_one_volume(headers: list, n_outputs: int) -> str:
    """What the headers say about a series that dcm2niix did not turn into exactly one volume."""
    if not n_outputs:
        return "no volume"
    reasons = []
    orientations = _orientations(headers)
    if len(orientations) > 1:
        reasons.append(f"{len(orientations)} slice orientations")
    n_echoes = len({str(ds.get("EchoTime", "")) for ds in headers})
    if n_echoes > 1:
        reasons.append(f"{n_echoes} echo times")
    if len(orientations) == 1 and not reasons:
        _, _, counts = _stack(headers, next(iter(orientations)))
        if counts.size and counts.min() > 1:
            reasons.append(f"{counts.min()} images at every slice position (repeated acquisitions)")
    because = "; it has " + " and ".join(reasons) if reasons else " (several echoes, volumes or a gap in the slices?)"
    return f"{n_outputs} volumes{because}"


def convert_series(files: list[str | Path], out_nifti: str | Path, subject: str, series_uid: str = "") -> Path:
    """Convert one series' files with dcm2niix into ``out_nifti`` (.nii.gz) + a de-identified ``.json``.

    The files are linked into a private folder, so dcm2niix sees that series only, and
    converted with :data:`DCM2NIIX_FLAGS`. Exactly one 3-D volume must come out. The sidecar
    (``out_nifti`` with ``.json``) keeps :data:`SIDECAR_KEYS` only and is written before the
    NIfTI, both atomically, so an existing ``out_nifti`` always has its sidecar.
    """
    out_nifti = Path(out_nifti)
    if not out_nifti.name.endswith(".nii.gz"):
        raise UniregError("output must end in .nii.gz", subject=subject, path=out_nifti)
    files = [Path(f) for f in files]
    label = f"series {series_uid}" if series_uid else "series"
    if not files:
        raise UniregError(f"{label} has no files; run 'unireg index' again", subject=subject)
    headers = []
    for path in files:
        if not path.is_file():
            raise UniregError(f"{label}: file missing (moved since 'unireg index'?)", subject=subject, path=path)
        ds, pixels = _read_header(path)
        if ds is None or not _is_image(ds):
            raise UniregError(f"{label}: not a readable DICOM image", subject=subject, path=path)
        if pixels != "complete":
            raise UniregError(f"{label}: file is truncated (its pixel data is cut short or missing); copy or "
                              "export the series again", subject=subject, path=path)
        if series_uid and str(ds.SeriesInstanceUID) != series_uid:
            raise UniregError(f"{label}: file belongs to another series; run 'unireg index' again",
                              subject=subject, path=path)
        headers.append(ds)
    problem = _slice_geometry_problem(headers)
    if problem:
        raise UniregError(f"{label} {problem}; copy or export the series again, or choose another with "
                          "series_filter", subject=subject)
    with tempfile.TemporaryDirectory(prefix="unireg-dcm2niix-") as tmp:
        source, target = Path(tmp, "in"), Path(tmp, "out")
        source.mkdir()
        target.mkdir()
        for number, path in enumerate(files):
            link = source / f"{number:06d}.dcm"  # neutral names: the user's file names never reach dcm2niix
            try:
                os.symlink(path.resolve(), link)
            except OSError:
                shutil.copyfile(path, link)
        try:
            proc = subprocess.run([dcm2niix_binary(), *DCM2NIIX_FLAGS, "-o", str(target), str(source)],
                                  capture_output=True, text=True, errors="replace", timeout=DCM2NIIX_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise UniregError(f"{label}: dcm2niix did not finish in {DCM2NIIX_TIMEOUT_S} s", subject=subject) from exc
        outputs = sorted(target.glob("*.nii"))
        log = (proc.stdout + "\n" + proc.stderr).splitlines()
        phi = _phi_values(headers[0])
        messages = [_redact(ln.strip(), phi, tmp) for ln in log
                    if re.match(r"\s*(error|warning|slices not stacked)", ln, re.I)]
        for message in messages:  # for the rule's log: QC hints such as varying slice spacing
            print(f"unireg convert: {subject}: dcm2niix: {message[:300]}")
        n_volumes = len(outputs)
        if n_volumes == 1:  # one file may still hold several volumes (4-D): repetitions of the same slices
            shape = nib.load(outputs[0]).shape
            n_volumes = int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1
        if n_volumes != 1:
            messages = [m for m in messages if "interpolated protocol" not in m]  # noise on every Siemens 3-D series
            detail = f" (dcm2niix: {messages[-1][:200]})" if messages else ""
            raise UniregError(f"{label} converts to {_why_not_one_volume(headers, n_volumes)}{detail}; check the "
                              "series or choose another with series_filter", subject=subject)
        misplaced = _misplaced_slices(headers, outputs[0])
        if misplaced:
            raise UniregError(f"{label} {misplaced}; copy or export the series again, or choose another with "
                              "series_filter", subject=subject)
        sidecar_file = outputs[0].with_suffix(".json")
        sidecar = json.loads(sidecar_file.read_text()) if sidecar_file.is_file() else {}
        return _write_converted(outputs[0], scrub_sidecar(sidecar), out_nifti, subject)


def _write_converted(source: Path, sidecar: dict, out_nifti: Path, subject: str) -> Path:
    """Sidecar first, then the NIfTI (its presence means both are complete); no sidecar left on failure."""
    json_path = sidecar_path(out_nifti)
    write_text_atomic(json_path, json.dumps(sidecar, indent=2) + "\n")
    try:
        return write_scrubbed_nifti(source, out_nifti, subject=subject)
    except BaseException:
        json_path.unlink(missing_ok=True)
        raise


def convert_command(manifest_path: str | Path, subject: str, out_nifti: str | Path, modality: str | None = None,
                    description_regex: str | None = None) -> Path:
    """``unireg convert``: select the subject's series in the manifest and convert it.

    A subject given as a NIfTI file (cohort TSV) is copied with a cleared header instead.
    """
    validate_subject_id(subject)
    manifest = read_manifest(manifest_path)
    row = select_series(manifest, subject, modality, description_regex)
    if row["kind"] == "nifti":
        return _write_converted(Path(row["source"]), {"Source": "NIfTI from the cohort TSV"}, Path(out_nifti), subject)
    listing = manifest.attrs["files"]
    files = listing.get(series_key(subject, row["series_uid"])) or listing.get(row["series_uid"])  # or an older manifest
    if not files:
        raise UniregError(f"series {row['series_uid']} has no file list beside the manifest "
                          f"({files_path(manifest_path).name}); run 'unireg index' again", subject=subject)
    return convert_series(files, out_nifti, subject, row["series_uid"])
