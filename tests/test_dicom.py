"""DICOM headers (unireg.dicom) on real DICOM files: what indexing reads from each one.

References no one here wrote: pydicom's own test files (malformed values, deflate, RLE/JPEG, a
truncated MR) and dcm_qa_ts (one MR volume in nine transfer syntaxes, a Siemens mosaic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file
from pydicom.uid import generate_uid

from unireg.cohort import index_dicom, series_key
from unireg.dicom import orientation_label

# ---------------------------------------------------------------------------------------------
# Orientation labels
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iop, label",
    [
        ([1, 0, 0, 0, 1, 0], "axial"),
        ([0, 1, 0, 0, 0, -1], "sagittal"),
        ([1, 0, 0, 0, 0, -1], "coronal"),
        ([1, 0, 0, 0, np.cos(0.35), -np.sin(0.35)], "axial"),  # 20 degrees tilted: still axial
        ([1, 0, 0, 0, np.cos(0.8), -np.sin(0.8)], "oblique"),  # 46 degrees
        (None, "unknown"),
    ],
)
def test_orientation_label(iop, label):
    assert orientation_label(iop) == label


# ---------------------------------------------------------------------------------------------
# Reading headers: odd files, enhanced multi-frame, nine transfer syntaxes
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore")  # pydicom warns about the odd files it ships on purpose
def test_index_survives_pydicom_test_files():
    """pydicom's own test files: malformed values, deflate, RLE/JPEG, a deliberately truncated MR."""
    from pydicom.data import get_testdata_file

    manifest = index_dicom(Path(get_testdata_file("CT_small.dcm")).parent)
    truncated = {Path(p).name for p in manifest.attrs["skipped"]["truncated"]}
    assert "MR_truncated.dcm" in truncated
    assert not truncated & {
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "SC_rgb_jpeg.dcm",
        "image_dfl.dcm",
    }
    assert manifest.attrs["skipped"]["not_dicom"] > 0 and len(manifest) > 10
    cine = manifest[manifest["sop_class"] == "Ultrasound Multi-frame Image Storage"]
    assert len(cine) == 1 and cine["n_slices"].iloc[0] > 1  # frames without positions: NumberOfFrames


def test_index_enhanced_multiframe(tmp_path):
    """An enhanced MR file: geometry in functional groups, slices = distinct per-frame positions."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    def item(**tags):
        ds = Dataset()
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        return ds

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID, ds.Modality = generate_uid(), generate_uid(), "P1", "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 4, 4, 6
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SharedFunctionalGroupsSequence = [
        item(
            PlaneOrientationSequence=[item(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])],
            PixelMeasuresSequence=[item(PixelSpacing=[0.5, 0.5], SliceThickness=2)],
        )
    ]
    ds.PerFrameFunctionalGroupsSequence = [  # 3 slices x 2 time points
        item(PlanePositionSequence=[item(ImagePositionPatient=[2.0 * (n % 3), 0, 0])]) for n in range(6)
    ]
    ds.PixelData = bytes(4 * 4 * 6 * 2)
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    row = index_dicom(tmp_path).iloc[0]
    assert (row.n_files, row.n_slices, row.orientation) == (1, 3, "sagittal")
    assert (row.pixel_spacing, row.slice_thickness, row.sop_class) == ("0.5x0.5", "2", "Enhanced MR Image Storage")
    assert row.n_truncated == 0


def test_index_dcm_qa_ts_reads_headers_of_every_transfer_syntax():
    manifest = index_dicom(shared_file("dcm_qa_ts", "In"))
    # the nine files are one image (one SeriesInstanceUID) in nine encodings, a Siemens mosaic
    assert len(manifest) == 1 and manifest.attrs["skipped"]["truncated"] == []
    row = manifest.iloc[0]
    assert (row.n_files, row.n_slices, row.rows, row.columns) == (9, 35, 384, 384)
    assert (row.orientation, row.modality, row.sop_class) == ("axial", "MR", "MR Image Storage")
    assert len(manifest.attrs["files"][series_key(row.subject, row.series_uid)]) == 9


def test_index_keeps_no_header_it_has_read(monkeypatch):
    """The cohort pass keeps a few fields per file (unireg.dicom.FileHeader), never a file's dataset
    (~65 kB each for a Siemens header): kept to the end, they made memory grow with the cohort's files."""
    import weakref

    from unireg import cohort

    read, seen, alive = cohort.read_header, [], []

    def read_and_watch(path):
        alive.append(sum(ref() is not None for ref in seen))  # datasets still held when the next is read
        ds, pixels = read(path)
        seen.extend([weakref.ref(ds)] if ds is not None else [])  # the folder holds a README too
        return ds, pixels

    monkeypatch.setattr(cohort, "read_header", read_and_watch)
    row = index_dicom(shared_file("dicom_mprage_vsseg001")).iloc[0]
    assert (row.n_files, row.n_slices, row.orientation, row.pixel_spacing) == (120, 120, "axial", "0.410156x0.410156")
    assert len(seen) == 120 and max(alive) <= 1  # at most the one just read
