"""DICOM headers: reading them, the fields and slice geometry they give, and the values that identify a person.

Only headers are read (pydicom, ``stop_before_pixels``), whatever the file's name: :func:`read_header`
tells a DICOM file from any other file, a header that cannot be parsed (a corrupt file) from one that
can, and whether the pixel data after the header fit inside the file (``complete``, ``truncated`` or
``none``) without reading them. A DICOMDIR is DICOM, not corrupt; :func:`is_image` tells an image
from a DICOMDIR or a report.

Header values are read where each writer puts them: at the top level, or in an enhanced
(multi-frame) file's shared or per-frame functional groups; Siemens private tags give a mosaic's
slice count and the b-value. A malformed value reads as missing, never as an error.
:class:`SeriesHeaders` gathers, file by file, what one series' manifest row needs from its files'
headers (a small :class:`FileHeader` per file: a cohort pass never holds every dataset it read), and
:func:`series_fields` turns that into the header fields of the row (:mod:`unireg.cohort` adds the
subject and replaces the UIDs by hashed ones).

Slice geometry, in DICOM's patient coordinates (LPS, mm): the slice plane of an
ImageOrientationPatient (:func:`orientation_label`), the distinct orientations of a series' files,
the slice normal, and the distinct slice positions along it with the number of images at each
(:func:`_stack`; positions closer than :data:`POSITION_TOLERANCE_MM` are one). The checks that judge
a stack before and after conversion live in :mod:`unireg.convert`.

:data:`PHI_KEYWORDS` are the header fields that identify a person or a visit; :func:`phi_values`
gives a header's values of them, so that :mod:`unireg.convert` can remove them from dcm2niix's
messages. This module imports neither :mod:`unireg.cohort` nor :mod:`unireg.convert`: both build on it.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

OBLIQUE_DEGREES = 30.0  # slice normal further than this from every axis: "oblique"
# Header values that identify a person or a visit: never shown, even inside a dcm2niix message.
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: DICOM without a SOP class, not corrupt
POSITION_TOLERANCE_MM = 0.01  # slice positions closer than this along the normal are the same position


# ---------------------------------------------------------------------------------------------
# Reading one file's header
# ---------------------------------------------------------------------------------------------


def read_header(path: Path):
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


# ---------------------------------------------------------------------------------------------
# Header fields
# ---------------------------------------------------------------------------------------------


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
        values = [
            f.PlanePositionSequence[0].get("ImagePositionPatient") for f in frames if f.get("PlanePositionSequence")
        ]
    else:
        values = [ds.get("ImagePositionPatient")]
    vectors = [_vector(v, 3) for v in values]
    return [tuple(np.round(v, 3)) for v in vectors if v is not None]


def mosaic_slices(ds) -> int | None:
    """Siemens mosaic: the number of slices tiled into one file (private tag 0019,100A)."""
    if "MOSAIC" not in [str(v).upper() for v in (ds.get("ImageType") or [])] or (0x0019, 0x100A) not in ds:
        return None
    value = ds[0x0019, 0x100A].value
    return int.from_bytes(value[:2], "little") if isinstance(value, bytes) else _number(value, int)


def is_image(ds) -> bool:
    sop_class = ds.get("SOPClassUID")
    return "SeriesInstanceUID" in ds and ("Rows" in ds or "Image Storage" in getattr(sop_class, "name", ""))


def _text(value) -> str:
    """One TSV-safe line (no tabs, no newlines)."""
    return " ".join(str(value if value is not None else "").split())


def _codes(value) -> str:
    """A multi-valued code string (ImageType, ScanningSequence, ...) as one ``\\``-joined line."""
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value] if value not in (None, "") else []
    return _text("\\".join(str(v).strip() for v in items))


def _ms(ds, keyword: str, sequence: str, group_keyword: str | None = None) -> str:
    """A timing value (ms) as text, from the top level or an enhanced file's functional groups."""
    value = ds.get(keyword)
    if value in (None, ""):
        value = _functional_group_value(ds, sequence, group_keyword or keyword)
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    number = _number(value)
    return f"{number:g}" if number is not None and np.isfinite(number) else ""


def _scanning_sequence(ds) -> str:
    """ScanningSequence, or its equivalent from an enhanced MR file's pulse-sequence attributes."""
    if ds.get("ScanningSequence") not in (None, ""):
        return _codes(ds.get("ScanningSequence"))
    codes = {"GRADIENT": ["GR"], "SPIN": ["SE"], "BOTH": ["GR", "SE"]}.get(str(ds.get("EchoPulseSequence", "")), [])
    if str(ds.get("InversionRecovery", "")).upper() == "YES":
        codes.append("IR")
    if str(ds.get("EchoPlanarPulseSequence", "")).upper() == "YES":
        codes.append("EP")
    return "\\".join(codes)


def _b_value(ds) -> float | None:
    """The diffusion b-value (s/mm^2) of one file: standard DiffusionBValue or Siemens (0019,100C)."""
    value = ds.get("DiffusionBValue")
    if value in (None, ""):
        creator = ds.get((0x0019, 0x0010))
        try:
            if creator is not None and creator.value == "SIEMENS MR HEADER":
                value = ds[0x0019, 0x100C].value  # its usual block, directly: pydicom's search sorts the header
            else:
                value = ds.get_private_item(0x0019, 0x0C, "SIEMENS MR HEADER").value
        except (KeyError, ValueError):
            value = None
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace").strip("\0 ")
    if value in (None, ""):
        value = _functional_group_value(ds, "MRDiffusionSequence", "DiffusionBValue")
    return _number(value)


class FileHeader(NamedTuple):
    """What a series' manifest row needs from each of its files' headers (:class:`SeriesHeaders`).

    A few hundred bytes instead of the file's dataset (~65 kB with a Siemens header), so that
    indexing a cohort holds one of these per file rather than every header it has read.
    """

    complete: bool  # has Rows: a whole image header (files without one count only when no file has)
    sop_uid: str | None  # SOPInstanceUID; "" when empty, None without the element
    orientation: np.ndarray | None  # ImageOrientationPatient (6 direction cosines), top level or functional groups
    positions: list[tuple]  # ImagePositionPatient of every slice in the file (:func:`_slice_positions`)
    temporal_positions: int  # NumberOfTemporalPositions (1 when absent)
    frames: int  # NumberOfFrames (1 when absent)
    b_value: float | None  # :func:`_b_value`
    mosaic: int | None  # :func:`mosaic_slices`


def file_header(ds) -> FileHeader:
    """The :class:`FileHeader` of one file's dataset."""
    sop = ds.get("SOPInstanceUID")
    return FileHeader(
        complete="Rows" in ds,
        sop_uid=str(sop) if sop else "" if "SOPInstanceUID" in ds else None,
        orientation=_vector(_geometry_value(ds, "ImageOrientationPatient", "PlaneOrientationSequence"), 6),
        positions=_slice_positions(ds),
        temporal_positions=_number(ds.get("NumberOfTemporalPositions"), int) or 1,
        frames=_number(ds.get("NumberOfFrames"), int) or 1,
        b_value=_b_value(ds),
        mosaic=mosaic_slices(ds),
    )


def _first_file_fields(ds) -> dict:
    """The manifest fields a series takes from one file: its first complete one (:func:`series_fields`)."""
    spacing = _vector(_geometry_value(ds, "PixelSpacing", "PixelMeasuresSequence"), 2)
    thickness = _number(_geometry_value(ds, "SliceThickness", "PixelMeasuresSequence"))
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")
    sop_class = ds.get("SOPClassUID", "")
    agent = _text(ds.get("ContrastBolusAgent")) or (ds.get("ContrastBolusUsageSequence") or None)
    return {
        "study_uid": ds.get("StudyInstanceUID", ""),
        "series_uid": ds.SeriesInstanceUID,
        "series_number": _number(ds.get("SeriesNumber"), int) or 0,
        "modality": _text(ds.get("Modality")),
        "series_description": _text(ds.get("SeriesDescription")),
        "protocol_name": _text(ds.get("ProtocolName")),
        "rows": _number(ds.get("Rows"), int) or 0,
        "columns": _number(ds.get("Columns"), int) or 0,
        "pixel_spacing": "x".join(f"{v:g}" for v in spacing) if spacing is not None else "",
        "slice_thickness": f"{thickness:g}" if thickness is not None else "",
        "mr_acquisition_type": _text(ds.get("MRAcquisitionType")).upper(),
        "scanning_sequence": _scanning_sequence(ds),
        "sequence_variant": _codes(ds.get("SequenceVariant")),
        "sequence_name": _text(ds.get("SequenceName") or ds.get("PulseSequenceName")),
        "echo_time": _ms(ds, "EchoTime", "MREchoSequence", "EffectiveEchoTime"),
        "repetition_time": _ms(ds, "RepetitionTime", "MRTimingAndRelatedParametersSequence"),
        "inversion_time": _ms(ds, "InversionTime", "MRModifierSequence", "InversionTimes"),
        "contrast_agent": int(bool(agent)),
        "transfer_syntax": str(transfer_syntax),
        "sop_class": _text(getattr(sop_class, "name", sop_class)),
        "image_type": _codes(ds.get("ImageType")),
    }


class SeriesHeaders:
    """One series' headers, gathered file by file (:meth:`add`) without keeping any dataset: a
    :class:`FileHeader` per file, and the fields of the first complete file (of the first file
    while none is complete). :func:`series_fields` turns them into the series' manifest fields."""

    def __init__(self) -> None:
        self.files: list[FileHeader] = []
        self.first: dict | None = None
        self._first_complete = False

    def add(self, ds) -> None:
        record = file_header(ds)
        if self.first is None or (record.complete and not self._first_complete):
            self.first, self._first_complete = _first_file_fields(ds), record.complete
        self.files.append(record)


def series_fields(series: SeriesHeaders) -> dict:
    """The manifest fields that the headers of one series' files give (:data:`unireg.cohort.MANIFEST_COLUMNS`).

    ``n_slices``: distinct ImagePositionPatient values (per frame for enhanced multi-frame
    files), NumberOfFrames where frames carry no position, the mosaic's slice count for a
    Siemens mosaic. ``n_temporal``: images per slice position (the most at any position, or
    NumberOfTemporalPositions if larger): 1 for a 3-D volume, more for echoes, repetitions,
    fMRI/DWI volumes (a mosaic file is one volume). Files holding the same image twice
    (SOPInstanceUID) count once there. ``orientation``: :func:`orientation_label`, or ``mixed``
    when the files' ImageOrientationPatient differ (dcm2niix then writes one volume per
    orientation). Geometry, sizes and acquisition fields come from the first complete file;
    ``b_value`` is the largest of the series (empty without any), ``contrast_agent`` is 1 when
    ContrastBolusAgent is set. ``study_uid`` and ``series_uid`` are the original UIDs here:
    :mod:`unireg.cohort` replaces them by hashed ones before a row is kept, shown or written.
    """
    complete = [f for f in series.files if f.complete] or series.files
    iops = [f.orientation for f in complete if f.orientation is not None]
    same = all(np.allclose(v, iops[0], atol=1e-4) for v in iops)
    positions = {p for f in complete for p in f.positions}
    # the same image (SOPInstanceUID) once, as the last file holding it; a file without the element is its own image
    distinct = list({f.sop_uid if f.sop_uid is not None else id(f): f for f in complete}.values())
    per_position = Counter(p for f in distinct for p in f.positions)
    n_temporal = max([max(per_position.values(), default=1)] + [f.temporal_positions for f in distinct])
    n_frames = sum(f.frames for f in complete)
    n_slices = complete[0].mosaic or len(positions) or n_frames
    b_values = [f.b_value for f in distinct if f.b_value is not None]
    return {
        **series.first,
        "n_files": len(series.files),
        "n_slices": int(n_slices),
        "n_temporal": int(n_temporal),
        "orientation": orientation_label(iops[0]) if iops and same else ("mixed" if iops else "unknown"),
        "b_value": f"{max(b_values):g}" if b_values else "",
    }


# ---------------------------------------------------------------------------------------------
# Slice geometry of a series
# ---------------------------------------------------------------------------------------------


def _orientations(headers: list) -> set[tuple]:
    """The distinct ImageOrientationPatient values (rounded to 1e-3) of a series' files."""
    iops = [_vector(_geometry_value(ds, "ImageOrientationPatient", "PlaneOrientationSequence"), 6) for ds in headers]
    return {tuple(np.round(v, 3)) for v in iops if v is not None}


def slice_normal(iop: tuple) -> np.ndarray:
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def _stack(headers: list, iop: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct slice positions of a one-orientation series, ordered along its slice normal.

    Returns ``(points, along, counts)``: one ImagePositionPatient (LPS mm) per distinct position,
    its distance along the normal (mm, ascending) and how many images sit there (echoes, repetitions).
    """
    normal = slice_normal(iop)
    points = np.array([p for ds in headers for p in _slice_positions(ds)], dtype=float).reshape(-1, 3)
    order = np.argsort(points @ normal, kind="stable")
    points, along = points[order], (points @ normal)[order]
    if not along.size:
        return points, along, np.zeros(0, dtype=int)
    starts = np.r_[0, np.flatnonzero(np.diff(along) > POSITION_TOLERANCE_MM) + 1]
    return points[starts], along[starts], np.diff(np.r_[starts, along.size])


# ---------------------------------------------------------------------------------------------
# Identifying values
# ---------------------------------------------------------------------------------------------


def phi_values(ds) -> list[str]:
    """The identifying values of a header, longest first (for :func:`unireg.convert._redact`)."""
    values = set()
    for keyword in PHI_KEYWORDS:
        value = ds.get(keyword) if ds is not None else None
        for item in value if isinstance(value, (list, tuple, MultiValue)) else [value]:
            text = str(item or "").strip()
            if len(text) >= 3:
                values |= {text, text.replace("^", " ")}
    return sorted(values, key=len, reverse=True)
