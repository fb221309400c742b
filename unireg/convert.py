"""DICOM -> NIfTI conversion of a subject's selected series (``unireg convert``), with de-identified outputs.

``unireg convert`` converts the row the index selected (:mod:`unireg.cohort`); given a series
filter it applies the same selection rule with that filter. A subject given as a NIfTI file (cohort
TSV or BIDS dataset) is copied with a cleared header instead.

Conversion runs the dcm2niix binary of the ``dcm2niix`` PyPI wheel (or
the one on ``PATH``, e.g. from conda-forge) on a private folder that holds only the selected
series' files (symlinks), with :data:`DCM2NIIX_FLAGS` every time:

    -g i        ignore any ~/.dcm2nii.ini: built-in defaults only, the same on every machine
    -b y -ba y  BIDS sidecar, anonymised (dcm2niix still keeps e.g. InstitutionName and
                AcquisitionTime, hence our own whitelist :data:`SIDECAR_KEYS`)
    -f %j       output named by SeriesInstanceUID inside the private folder only (never
                %n/%i/%t: name, ID, time); its messages show the hashed UID instead
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
dcm2niix's error and warning lines reach the log (and the error message) without the private
folder, the header's identifying values (:func:`unireg.dicom.phi_values`) or any original UID
(:func:`_redact`).
"""

from __future__ import annotations

import gzip
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

from .cohort import (
    files_path,
    hashed_uid,
    nothing_chosen,
    read_manifest,
    read_uid_salt,
    select_series,
    series_key,
    validate_subject_id,
)
from .dicom import (
    POSITION_TOLERANCE_MM,
    _orientations,
    _stack,
    is_image,
    mosaic_slices,
    phi_values,
    read_header,
    slice_normal,
)
from .errors import UniregError
from .io import write_atomic, write_text_atomic

SIDECAR_KEYS = (
    "Modality",
    "MagneticFieldStrength",
    "ImagingFrequency",
    "Manufacturer",
    "ManufacturersModelName",
    "MRAcquisitionType",
    "SeriesDescription",
    "ProtocolName",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "SequenceName",
    "ImageType",
    "SeriesNumber",
    "SliceThickness",
    "SpacingBetweenSlices",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "PartialFourier",
    "PhaseEncodingSteps",
    "AcquisitionMatrixPE",
    "ReconMatrixPE",
    "PixelBandwidth",
    "ImageOrientationPatientDICOM",
    "InPlanePhaseEncodingDirectionDICOM",
    "ConversionSoftware",
    "ConversionSoftwareVersion",
)
SIDECAR_ADDED = {"SkullStripped": False}  # a scanner's image; a BIDS derivatives T1w sidecar requires the key
DCM2NIIX_FLAGS = (
    "-g",
    "i",
    "-b",
    "y",
    "-ba",
    "y",
    "-f",
    "%j",
    "-z",
    "n",
    "-i",
    "n",
    "-x",
    "n",
    "-l",
    "o",
    "-p",
    "y",
    "-d",
    "0",
    "-w",
    "1",
)
DCM2NIIX_TIMEOUT_S = 1800
NIFTI_FREE_TEXT = ("descrip", "aux_file", "db_name", "intent_name", "data_type")
UID_TEXT = re.compile(r"(?<![\d.])\d+(?:\.\d+){4,}(?![\d.])")  # a UID in a message: 1.2.840.113619...
# A gap between neighbouring slices may differ from the series' slice spacing by this fraction of
# it (plus POSITION_TOLERANCE_MM): headers that store positions to 0.1 mm pass, a missing or moved
# slice does not. dcm2niix cannot write an uneven stack as NIfTI (its result depends on its version).
SPACING_TOLERANCE = 0.1


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
    """Only the acquisition keys of :data:`SIDECAR_KEYS` (no dates, times, names, IDs, institution),
    plus :data:`SIDECAR_ADDED`."""
    return {**{key: sidecar[key] for key in SIDECAR_KEYS if key in sidecar}, **SIDECAR_ADDED}


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
                raise UniregError(
                    f"expected one 3-D volume, got shape {shape}; choose a 3-D series", subject=subject, path=source
                )
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
                with (
                    open(tmp, "wb") as raw,
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz,
                ):
                    gz.write(header.binaryblock)
                    gz.write(b"\0" * (vox_offset - sizeof_hdr))
                    shutil.copyfileobj(fin, gz, 1 << 20)

            write_atomic(out_nifti, write_gzip, ".nii.gz")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UniregError(f"cannot read as NIfTI ({type(exc).__name__})", subject=subject, path=source) from exc
    return out_nifti


def _redact(text: str, values: list[str], folder: str, uids: dict[str, str] | None = None) -> str:
    """``text`` without the private folder, the identifying ``values`` and any original UID
    (those in ``uids`` by their replacement, e.g. the hashed series uid; any other by ``[uid]``)."""
    text = text.replace(folder + os.sep, "").replace(folder, "")
    for value in values:
        text = text.replace(value, "[removed]")
    for uid, replacement in (uids or {}).items():
        text = text.replace(uid, replacement)
    return UID_TEXT.sub("[uid]", text)


def _slice_geometry_problem(headers: list) -> str | None:
    """Why a series' slices cannot stack into one evenly spaced volume, or None.

    Checked before dcm2niix, from the headers alone: a series with no slice geometry (a
    screenshot), a missing or moved slice (uneven spacing along the slice normal) or an unequal
    number of images per slice position (an incomplete repetition or echo). Series with several
    orientations are left to dcm2niix, which splits them (see :func:`_why_not_one_volume`).
    """
    orientations = _orientations(headers)
    if not orientations:
        return (
            "has no slice geometry (no ImageOrientationPatient): a screenshot or secondary capture, not an acquisition"
        )
    if len(orientations) > 1:
        return None
    _, positions, counts = _stack(headers, next(iter(orientations)))
    if len(set(counts.tolist())) > 1:
        values, how_many = np.unique(counts, return_counts=True)
        detail = ", ".join(f"{n} with {v}" for v, n in zip(values.tolist(), how_many.tolist()))
        return (
            f"has an unequal number of images per slice position ({len(positions)} positions: {detail}): an "
            "incomplete repetition or echo, or missing files"
        )
    if len(positions) < 3:
        return None
    gaps = np.diff(positions)
    step = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step + POSITION_TOLERANCE_MM)
    if not uneven.size:
        return None
    first = int(uneven[0])
    where = (
        f"{gaps[first]:.4g} mm between the slices at {positions[first]:.2f} and {positions[first + 1]:.2f} mm "
        f"along the slice normal, {step:.4g} mm elsewhere"
    )
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
    if len(orientations) != 1 or mosaic_slices(headers[0]):
        return None
    iop = next(iter(orientations))
    points, along, counts = _stack(headers, iop)
    if len(points) < 3 or counts.max() > 1:
        return None
    image = nib.load(nifti_path)
    affine, shape = image.affine, image.shape[:3]
    to_ras = np.array([-1.0, -1.0, 1.0])
    points_ras, normal_ras = points * to_ras, slice_normal(iop) * to_ras
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
    return (
        f"converts to a volume that puts a slice {errors.max():.2f} mm from where its header says (slices "
        f"{np.linalg.norm(affine[:3, axis]):.4g} mm apart in the NIfTI, {mean_step:.4g} mm on average in the "
        "headers): its slice positions are uneven"
    )


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


def convert_series(
    files: list[str | Path], out_nifti: str | Path, subject: str, series_uid: str = "", *, salt: str | None = None
) -> Path:
    """Convert one series' files with dcm2niix into ``out_nifti`` (.nii.gz) + a de-identified ``.json``.

    The files are linked into a private folder, so dcm2niix sees that series only, and
    converted with :data:`DCM2NIIX_FLAGS`. Exactly one 3-D volume must come out. The sidecar
    (``out_nifti`` with ``.json``) keeps :data:`SIDECAR_KEYS` only and is written before the
    NIfTI, both atomically, so an existing ``out_nifti`` always has its sidecar. ``series_uid``
    (hashed, as in the manifest): every file's SeriesInstanceUID must hash to it with ``salt``
    (default: the salt of :func:`unireg.cohort.default_salt_file`, which must exist).
    """
    out_nifti = Path(out_nifti)
    if not out_nifti.name.endswith(".nii.gz"):
        raise UniregError("output must end in .nii.gz", subject=subject, path=out_nifti)
    files = [Path(f) for f in files]
    label = f"series {series_uid}" if series_uid else "series"
    if series_uid and salt is None:
        salt = read_uid_salt()
    if not files:
        raise UniregError(f"{label} has no files; run 'unireg index' again", subject=subject)
    headers = []
    for path in files:
        if not path.is_file():
            raise UniregError(f"{label}: file missing (moved since 'unireg index'?)", subject=subject, path=path)
        ds, pixels = read_header(path)
        if ds is None or not is_image(ds):
            raise UniregError(f"{label}: not a readable DICOM image", subject=subject, path=path)
        if pixels != "complete":
            raise UniregError(
                f"{label}: file is truncated (its pixel data is cut short or missing); copy or export the series again",
                subject=subject,
                path=path,
            )
        if series_uid and hashed_uid(ds.SeriesInstanceUID, salt) != series_uid:
            raise UniregError(
                f"{label}: file belongs to another series (changed since 'unireg index', or a UID "
                "salt other than the one index used: pass the same --salt-file); run 'unireg index' "
                "again",
                subject=subject,
                path=path,
            )
        headers.append(ds)
    problem = _slice_geometry_problem(headers)
    if problem:
        raise UniregError(
            f"{label} {problem}; copy or export the series again, or choose another with series_filter", subject=subject
        )
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
            proc = subprocess.run(
                [dcm2niix_binary(), *DCM2NIIX_FLAGS, "-o", str(target), str(source)],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=DCM2NIIX_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise UniregError(f"{label}: dcm2niix did not finish in {DCM2NIIX_TIMEOUT_S} s", subject=subject) from exc
        outputs = sorted(target.glob("*.nii"))
        log = (proc.stdout + "\n" + proc.stderr).splitlines()
        phi = phi_values(headers[0])
        uids = {str(headers[0].SeriesInstanceUID): series_uid or "[series]"}
        messages = [
            _redact(ln.strip(), phi, tmp, uids)
            for ln in log
            if re.match(r"\s*(error|warning|slices not stacked)", ln, re.I)
        ]
        for message in messages:  # for the rule's log: QC hints such as varying slice spacing
            print(f"unireg convert: {subject}: dcm2niix: {message[:300]}")
        n_volumes = len(outputs)
        if n_volumes == 1:  # one file may still hold several volumes (4-D): repetitions of the same slices
            shape = nib.load(outputs[0]).shape
            n_volumes = int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1
        if n_volumes != 1:
            messages = [m for m in messages if "interpolated protocol" not in m]  # noise on every Siemens 3-D series
            detail = f" (dcm2niix: {messages[-1][:200]})" if messages else ""
            raise UniregError(
                f"{label} converts to {_why_not_one_volume(headers, n_volumes)}{detail}; check the "
                "series or choose another with series_filter",
                subject=subject,
            )
        misplaced = _misplaced_slices(headers, outputs[0])
        if misplaced:
            raise UniregError(
                f"{label} {misplaced}; copy or export the series again, or choose another with series_filter",
                subject=subject,
            )
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


def convert_command(
    manifest_path: str | Path,
    subject: str,
    out_nifti: str | Path,
    modality: str | None = None,
    description_regex: str | None = None,
    salt_file: str | Path | None = None,
    files: str | Path | None = None,
) -> Path:
    """``unireg convert``: convert the subject's selected series (the manifest's ``selected`` row).

    A series filter (``modality``, ``description_regex``) re-applies the selection rule with that
    filter instead. A subject with a ``problem`` (:mod:`unireg.cohort`) or without a selected series
    is a one-line error. A subject given as a NIfTI file (cohort TSV) is copied with a cleared
    header instead. ``salt_file``: the UID salt ``unireg index`` used (default
    :func:`unireg.cohort.default_salt_file`); ``files``: the list of each series' files that
    ``unireg index`` wrote (its ``files_out``; default :func:`unireg.cohort.files_path`, beside the
    manifest).
    """
    validate_subject_id(subject)
    files_list = Path(files) if files is not None else files_path(manifest_path)
    manifest = read_manifest(manifest_path, files_list)
    mine = manifest[manifest["subject"] == subject]
    if not len(mine):
        raise UniregError("subject is not in the manifest; check the id or run 'unireg index' again", subject=subject)
    problems = [p for p in dict.fromkeys(mine.get("problem", pd.Series(dtype=str)).astype(str).str.strip()) if p]
    if problems:
        raise UniregError("; ".join(problems), subject=subject)
    if modality or description_regex or "selected" not in manifest.columns:  # or a manifest of an older version
        row = select_series(manifest, subject, modality, description_regex)
    elif (mine["selected"] == 1).sum() == 1:
        row = mine[mine["selected"] == 1].iloc[0]
    else:
        raise UniregError(nothing_chosen(mine, mine["selection_reason"], None, None), subject=subject)
    if row["kind"] == "nifti":
        source = Path(row["source"])
        given = sidecar_path(source)  # a BIDS dataset's own sidecar: its acquisition keys only
        sidecar = scrub_sidecar(json.loads(given.read_text())) if given.is_file() else {}
        return _write_converted(source, {**sidecar, "Source": "NIfTI from the cohort"}, Path(out_nifti), subject)
    salt = read_uid_salt(salt_file)
    series_files = manifest.attrs["files"].get(series_key(subject, row["series_uid"]))
    if not series_files:
        raise UniregError(
            f"series {row['series_uid']} is not in the file list {files_list}; run 'unireg index' again "
            "(with --files-out where 'unireg convert' reads --files)",
            subject=subject,
        )
    return convert_series(series_files, out_nifti, subject, row["series_uid"], salt=salt)
