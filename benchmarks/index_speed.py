"""Files per second of the cohort pass (``unireg index``) over a large synthetic DICOM export (prints a table).

Run: .venv/bin/python benchmarks/index_speed.py [--series 10000] [--files-per-series 10] [--out benchmarks/results]

**The export.** ``--series`` series of ``--files-per-series`` small files each, written into a
temporary folder from the *real* header of ../shared/data/dicom_mprage_vsseg001 (Siemens MPRAGE,
implicit VR little endian, private Siemens tags kept): every subject (PatientID/PatientName) has one
study and ``--series-per-subject`` series (the real ``t1_mpr_tra_gk_v4`` MPRAGE, then T2 and FLAIR
SPACE descriptions with their own timings), so the selection has a choice to make. Each file gets
its own SOPInstanceUID, InstanceNumber and ImagePositionPatient (one axial slice of a volume); study,
series and frame-of-reference UIDs are new per study/series (``pydicom.uid.generate_uid``). The pixel
matrix is 8x8 uint16 (Rows, Columns, PixelSpacing and the pixel value range set to match), so a file
is the real header plus 128 bytes. Folders follow the TCIA layout the source came in:
``<PatientID>/<date>-NA-<study description>-<uid>/<series number>-<description>-<uid>/1-<NNN>.dcm``.
The default of 10 files per series is :data:`unireg.cohort.MIN_SLICES`: with fewer slices every
series is a localiser to the selection rule and no subject would get a series selected.

**What is timed.** The user-facing command, ``python -m unireg index --input EXPORT --out ...
--files-out ... --salt-file ...``, as a subprocess (interpreter start-up and imports included);
start-up is timed separately as the same command on a one-series export and reported on its own.
Peak RSS is that of the big run's process (``os.wait4``). The export was just written, so its files
are in the page cache: this is the CPU cost of the pass, not the cost of a cold disk or a network
share. The manifest is then read back and checked (rows, subjects, one MPRAGE selected per subject,
every file listed), so a broken pass cannot pass for a fast one.

**Header reads per file.** An in-process ``index_command`` on a ``--count-series`` export counts,
with an audit hook (``sys.addaudithook``, the ``open`` event of ``open``/``io.open``/``os.open``),
every opening of each export file by any code, and the calls of ``pydicom.dcmread``: one pass reads
each header once.

Prints a markdown table; ``--out DIR`` also writes it to ``DIR/index_speed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import command_line, provenance  # noqa: E402  (the shared report helpers)

SOURCE = Path(os.environ.get("UNIREG_SHARED_DATA", REPO.parent / "shared" / "data")) / "dicom_mprage_vsseg001"
MATRIX = 8  # rows and columns of every synthetic slice
# The series of a subject after its real MPRAGE (``t1_mpr_tra_gk_v4``, the header as it is): 3-D
# non-T1 series with their own names and timings; None removes the tag. Each kind sets the same tags.
OTHER_SERIES = (
    {
        "SeriesDescription": "t2_spc_tra_iso",
        "ProtocolName": "t2_spc_tra_iso",
        "ScanningSequence": ["SE"],
        "SequenceVariant": ["SK", "SP", "OSP"],
        "SequenceName": "*spc_314ns",
        "RepetitionTime": "3200",
        "EchoTime": "409",
        "InversionTime": None,
    },
    {
        "SeriesDescription": "t2_spc_flair_tra",
        "ProtocolName": "t2_spc_flair_tra",
        "ScanningSequence": ["SE", "IR"],
        "SequenceVariant": ["SK", "SP", "MP", "OSP"],
        "SequenceName": "*spcir_278ns",
        "RepetitionTime": "5000",
        "EchoTime": "388",
        "InversionTime": "1800",
    },
)


# ---------------------------------------------------------------------------------------------
# The synthetic export
# ---------------------------------------------------------------------------------------------


def real_header(source: Path = SOURCE):
    """The real MPRAGE's first slice with an 8x8 pixel matrix: the template of every synthetic file."""
    import pydicom

    path = source / "1-001.dcm"
    if not path.is_file():
        raise SystemExit(f"index_speed: the real MPRAGE series is missing: {path} (../shared/data)")
    ds = pydicom.dcmread(path)
    pixels = np.ascontiguousarray(ds.pixel_array[:: ds.Rows // MATRIX, :: ds.Columns // MATRIX]).astype(np.uint16)
    ds.PixelSpacing = [f"{float(v) * ds.Rows / MATRIX:g}" for v in ds.PixelSpacing]  # the same field of view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.SmallestImagePixelValue, ds.LargestImagePixelValue = int(pixels.min()), int(pixels.max())
    ds.PixelData = pixels.tobytes()
    return ds


def _folder_name(*parts: str) -> str:
    return "-".join(" ".join(str(p).replace("/", " ").split()) for p in parts)


def write_export(root: Path, n_series: int, files_per_series: int, series_per_subject: int = 2, template=None) -> dict:
    """Write the synthetic export (module docstring) below ``root``; returns its counts and the
    description of the series each subject should get selected."""
    import copy

    from pydicom.uid import generate_uid

    template = real_header() if template is None else template
    kinds = [{keyword: template.get(keyword) for keyword in OTHER_SERIES[0]}, *OTHER_SERIES]  # the MPRAGE first
    ds = copy.deepcopy(template)  # mutated and written file by file: a copy per file would dominate the time
    iop = np.asarray(template.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    origin = np.asarray(template.ImagePositionPatient, dtype=float)
    thickness = float(template.SliceThickness)
    n_subjects = -(-n_series // series_per_subject)
    date = str(template.StudyDate)
    n_files = n_bytes = 0
    for s in range(n_subjects):
        patient = f"SYN-{s:06d}"
        study_uid, frame_uid = generate_uid(), generate_uid()
        study_folder = _folder_name(
            f"{date[4:6]}-{date[6:]}-{date[:4]}", "NA", template.StudyDescription, study_uid[-5:]
        )
        for k in range(min(series_per_subject, n_series - s * series_per_subject)):
            ds.PatientID, ds.PatientName = patient, f"SYNTHETIC^{s:06d}"
            ds.StudyInstanceUID, ds.FrameOfReferenceUID = study_uid, frame_uid
            ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 2 + k
            for keyword, value in kinds[k].items():
                if value is None:
                    ds.pop(keyword, None)
                else:
                    setattr(ds, keyword, value)
            folder = root / patient / study_folder
            folder = folder / _folder_name(f"{2 + k}.000000", ds.SeriesDescription, ds.SeriesInstanceUID[-5:])
            folder.mkdir(parents=True)
            for n in range(files_per_series):
                position = origin + n * thickness * normal
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.InstanceNumber = n + 1
                ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
                ds.SliceLocation = f"{position @ normal:.6f}"
                path = folder / f"1-{n + 1:03d}.dcm"
                ds.save_as(path)
                n_files += 1
                n_bytes += path.stat().st_size
    return {
        "series": n_series,
        "subjects": n_subjects,
        "files": n_files,
        "bytes": n_bytes,
        "t1_description": str(kinds[0]["SeriesDescription"]),
    }


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------


def run_index(export: Path, out: Path) -> tuple[float, float]:
    """``python -m unireg index`` on ``export`` as a subprocess: ``(seconds, peak RSS MB)``."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "unireg",
        "index",
        "--input",
        str(export),
        "--out",
        str(out / "manifest.tsv"),
        "--files-out",
        str(out / "manifest.files.json"),
        "--salt-file",
        str(out / "uid_salt"),
    ]
    env = {**os.environ, "UNIREG_HOME": str(out / "unireg_home")}
    with open(out / "index.log", "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"index_speed: unireg index failed:\n{(out / 'index.log').read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def check_manifest(out: Path, export: dict, files_per_series: int) -> dict:
    """Read the manifest back and assert it describes the export: the pass did its job."""
    from unireg.cohort import MIN_SLICES, read_manifest

    manifest = read_manifest(out / "manifest.tsv", out / "manifest.files.json")
    listing = json.loads((out / "manifest.files.json").read_text())
    assert len(manifest) == export["series"], (len(manifest), export["series"])
    assert manifest["subject"].nunique() == export["subjects"], manifest["subject"].nunique()
    assert (manifest["n_files"] == files_per_series).all() and (manifest["n_slices"] == files_per_series).all()
    assert len(listing) == export["series"] and sum(map(len, listing.values())) == export["files"]
    assert (manifest["problem"] == "").all(), manifest.loc[manifest["problem"] != "", "problem"].iloc[0]
    chosen = manifest[manifest["selected"] == 1]
    expected = export["subjects"] if files_per_series >= MIN_SLICES else 0
    assert len(chosen) == expected, (len(chosen), expected)
    assert (chosen["series_description"] == export["t1_description"]).all()
    return {"rows": len(manifest), "subjects": int(manifest["subject"].nunique()), "selected": len(chosen)}


def count_reads(export: Path, out: Path) -> dict:
    """In-process ``index_command`` on ``export``: openings of each export file (audit hook, any code
    path) and ``pydicom.dcmread`` calls, per file."""
    import pydicom

    from unireg import cohort

    prefix = os.path.realpath(export) + os.sep
    opens: Counter = Counter()
    counting = {"on": False}  # an audit hook cannot be removed: it counts only while this is on

    def hook(event, args):
        if counting["on"] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path.startswith(prefix):
                opens[path] += 1

    dcmread, calls = pydicom.dcmread, Counter()

    def counting_dcmread(*args, **kwargs):
        calls["dcmread"] += 1
        return dcmread(*args, **kwargs)

    files = [os.path.realpath(p) for p in export.rglob("*") if p.is_file()]
    sys.addaudithook(hook)
    pydicom.dcmread, counting["on"] = counting_dcmread, True
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cohort.index_command(
                export, out / "manifest.tsv", salt_file=out / "uid_salt", files_out=out / "manifest.files.json"
            )
    finally:
        pydicom.dcmread, counting["on"] = dcmread, False
    per_file = [opens[path] for path in files]
    return {
        "files": len(files),
        "opens_per_file": sum(per_file) / len(files),
        "opens_min": min(per_file),
        "opens_max": max(per_file),
        "dcmread_per_file": calls["dcmread"] / len(files),
    }


def benchmark(series: int, files_per_series: int, series_per_subject: int, count_series: int, tmp: Path) -> dict:
    """Write the exports into ``tmp``, time ``unireg index`` on them, check the manifest, count reads."""
    template = real_header()
    start = time.perf_counter()
    export = write_export(tmp / "export", series, files_per_series, series_per_subject, template)
    generate_s = time.perf_counter() - start
    write_export(tmp / "one", 1, files_per_series, 1, template)
    counted = write_export(tmp / "counted", min(count_series, series), files_per_series, series_per_subject, template)
    startup_s, _ = run_index(tmp / "one", tmp / "out-one")
    seconds, peak_mb = run_index(tmp / "export", tmp / "out")
    checked = check_manifest(tmp / "out", export, files_per_series)
    reads = count_reads(tmp / "counted", tmp / "out-counted")
    assert reads["files"] == counted["files"]
    return {
        **export,
        **checked,
        "files_per_series": files_per_series,
        "seconds": seconds,
        "startup_s": startup_s,
        "peak_mb": peak_mb,
        "generate_s": generate_s,
        "reads": reads,
    }


def render(result: dict, command: str) -> str:
    import pydicom

    r, reads = result, result["reads"]
    details = f"python {sys.version.split()[0]}, pydicom {pydicom.__version__}; warm page cache (export just written)"
    lines = [
        "# Cohort pass speed (`benchmarks/index_speed.py`)",
        "",
        *provenance(datetime.datetime.now().astimezone(), command, details),
        "",
        f"Synthetic export from the real MPRAGE header: {r['subjects']} subjects, {r['files_per_series']} files "
        f"per series (written in {r['generate_s']:.1f} s). `unireg index` timed as a subprocess; start-up = the "
        f"same command on a one-series export. Header reads per file: openings of each file (audit hook) and "
        f"`pydicom.dcmread` calls, in-process on {reads['files']} files; manifest checked: {r['rows']} rows, "
        f"{r['subjects']} subjects, {r['selected']} MPRAGE series selected.",
        "",
        "| series | files | MB on disk | seconds | files / s | start-up s | files / s without start-up | header "
        "reads per file (opens, dcmread) | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| {r['series']} | {r['files']} | {r['bytes'] / 1e6:.1f} | {r['seconds']:.1f} | "
        f"{r['files'] / r['seconds']:.0f} | {r['startup_s']:.1f} | "
        f"{r['files'] / max(r['seconds'] - r['startup_s'], 1e-9):.0f} | "
        f"{reads['opens_per_file']:g}, {reads['dcmread_per_file']:g} | {r['peak_mb']:.0f} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from unireg.cohort import MIN_SLICES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--files-per-series", type=int, default=MIN_SLICES)
    parser.add_argument("--series-per-subject", type=int, default=2, help=f"1 to {1 + len(OTHER_SERIES)}")
    parser.add_argument("--count-series", type=int, default=20, help="series of the export that counts reads")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to OUT/index_speed.md")
    args = parser.parse_args(argv)
    if not 1 <= args.series_per_subject <= 1 + len(OTHER_SERIES):
        parser.error(f"--series-per-subject must be 1 to {1 + len(OTHER_SERIES)}")
    with tempfile.TemporaryDirectory(prefix="unireg-index-speed-") as tmp:
        result = benchmark(args.series, args.files_per_series, args.series_per_subject, args.count_series, Path(tmp))
    text = render(result, command_line(argv, "benchmarks/index_speed.py"))
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "index_speed.md").write_text(text)
    return result


if __name__ == "__main__":
    main()
