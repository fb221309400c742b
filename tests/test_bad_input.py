"""Bad inputs: each ends in a correct result or in a one-line error naming the subject and the
file or series, never in a silently wrong volume (issue items 1, 2 and 5).

Item 1, DICOM: every series is built with pydicom from the real MPRAGE
(../shared/data/dicom_mprage_vsseg001, files 1-12: axial, 1.5 mm apart) and run the way the
workflow runs it: ``index`` the folder, then ``convert`` the selected series with dcm2niix.
Item 2, images: real IXI heads with broken voxels, shapes or headers, through ``unireg preprocess``.
Item 5, integrity: corrupted checkpoints are refused; ``unireg preprocess`` and ``unireg register``
give bit-identical outputs for the same inputs and seed on CPU.

Where each case of the issue is tested:

=============================================  ============================================================
case                                           test
=============================================  ============================================================
truncated file (native / RLE-compressed)       test_convert::test_convert_truncated_series_is_one_line_error,
                                               here test_broken_series_is_one_line_error[truncated RLE slice]
corrupt file (header bytes overwritten)        test_broken_series_is_one_line_error[corrupt header]
non-image DICOM (structured report)            test_series_converts_to_the_clean_volume[structured reports]
folder mixing two series                       test_two_series_in_one_folder_convert_apart
missing slice / uneven slice spacing           test_broken_series_is_one_line_error[missing slice|moved slice|
                                               all positions jittered], test_series_converts_to_the_clean_volume[
                                               inner positions jittered] (header rounding is tolerated)
incomplete / repeated acquisitions             test_broken_series_is_one_line_error[incomplete|full repetition]
two orientations in one series                 test_convert::test_convert_mixed_orientation_series_is_one_line_error,
                                               here [half the slices tilted]
localiser                                      test_cohort::test_select_errors, here test_localiser_*
a whole session (localisers, field maps, phase test_cohort_selection (each series' selection_reason, the later
images, EPI, DWI, reformats, repeats)          repeat chosen, a patient with nothing to register); series
                                               the rule never selects (4-D, tilted, no geometry) fail at
                                               selection here too, and are refused when converted anyway
same scan under two PatientIDs                 test_cohort_selection::test_same_scan_under_two_patient_ids_*
identifiers, original UIDs, dates in UIDs      test_convert::test_planted_phi_never_reaches_outputs
enhanced multi-frame file                      test_dicom::test_index_enhanced_multiframe (index), here
                                               [enhanced multi-frame] (converts) and [enhanced 2 time points]
compressed transfer syntax                     test_convert::test_transfer_syntax_converts_like_reference (9),
                                               here [RLE lossless] (a whole series)
screenshot without geometry                    test_broken_series_is_one_line_error[secondary capture]
NaN/Inf voxels                                 test_intensity, test_preprocess::test_nan_input_*, here
                                               [inf voxels] and test_affine_1000_mm_off_and_nan_voxels_*
4-D / 2-D image                                test_io::test_single_volume_4d_*, test_2d_image_refused, here
                                               (through the CLI)
empty (all-zero) / constant image              test_preprocess::test_empty_image_*, here [all zero] (with
                                               brain extraction) and [constant]
wildly wrong affine                            test_affine_1000_mm_off_and_nan_voxels_* (succeeds),
                                               here [NaN in the affine], [voxel size x4], [60 mm voxels]
extreme size                                   here [2048^3 header], [3-slice slab]
corrupted checkpoint / extractor weights       test_model::test_checkpoint_round_trip_and_integrity,
                                               test_features::test_corrupted_mobilenet_weights_are_refused,
                                               test_features::test_torchvision_weights_found_in_the_hub_cache,
                                               here test_damaged_checkpoint_is_refused
same inputs + seed -> bit-identical outputs    test_preprocess_and_register_are_bit_identical_on_cpu
=============================================  ============================================================
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import copy_series, dice, mprage_files, shared_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from unireg.affine import read_affine_txt
from unireg.cli import main
from unireg.cohort import hashed_uid, index_dicom, read_uid_salt, select_series, series_key, write_manifest
from unireg.convert import convert_command, convert_series
from unireg.errors import UniregError
from unireg.io import load_image
from unireg.model import DEFAULT_MODEL, load_checkpoint
from unireg.preprocess import OUTPUT_FILES, PreprocessOptions, preprocess_file

pytestmark = pytest.mark.usefixtures("isolated_home_for_module_fixtures")

SUBJECT = "bad01"
N_SLICES = 12
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


# ---------------------------------------------------------------------------------------------
# Building DICOM from the real series
# ---------------------------------------------------------------------------------------------


def sources(first: int = 1, count: int = N_SLICES) -> list[Path]:
    return mprage_files(first, count)


def positions(files: list[Path]) -> list[list[float]]:
    return [[float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient] for f in files]


def series(folder: Path, files: list[Path] | None = None, names: str = "IM{:04d}", **tags) -> list[Path]:
    """The real slices ``files`` rewritten into ``folder`` as one new series, with ``tags`` changed."""
    return copy_series(files or sources(), folder, names, SeriesInstanceUID=generate_uid(), **tags)


def rewrite(paths: list[Path], change) -> list[Path]:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)
    return paths


def item(**tags) -> Dataset:
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def enhanced_file(path: Path, files: list[Path]) -> list[Path]:
    """One enhanced MR file holding ``files`` as frames (geometry in functional groups, as scanners write it)."""
    headers = [pydicom.dcmread(f) for f in files]
    first = headers[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "Modality",
        "Manufacturer",
        "SeriesDescription",
        "SeriesNumber",
        "MagneticFieldStrength",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        setattr(ds, keyword, first.data_element(keyword).value)
    ds.SeriesInstanceUID, ds.InstanceNumber, ds.NumberOfFrames = generate_uid(), 1, len(headers)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SharedFunctionalGroupsSequence = [
        item(
            PlaneOrientationSequence=[item(ImageOrientationPatient=first.ImageOrientationPatient)],
            PixelMeasuresSequence=[item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)],
            MRTimingAndRelatedParametersSequence=[item(RepetitionTime=first.RepetitionTime)],
            MREchoSequence=[item(EffectiveEchoTime=first.EchoTime)],
        )
    ]
    ds.PerFrameFunctionalGroupsSequence = [
        item(
            PlanePositionSequence=[item(ImagePositionPatient=h.ImagePositionPatient)],
            FrameContentSequence=[
                item(InStackPositionNumber=n % N_SLICES + 1, TemporalPositionIndex=n // N_SLICES + 1)
            ],
        )
        for n, h in enumerate(headers)
    ]
    ds.PixelData = b"".join(h.PixelData for h in headers)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return [path]


def structured_report(path: Path, series_uid: str) -> None:
    """A Basic Text SR of the same patient and study: DICOM, but no image."""
    reference = pydicom.dcmread(sources()[0], stop_before_pixels=True)
    code = item(CodeValue="121070", CodingSchemeDesignator="DCM", CodeMeaning="Findings")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.StudyInstanceUID = reference.PatientID, reference.StudyInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesDescription = series_uid, "SR", "report"
    ds.ValueType, ds.ContinuityOfContent, ds.ConceptNameCodeSequence = "CONTAINER", "SEPARATE", [code]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ContentSequence = [
        item(
            RelationshipType="CONTAINS",
            ValueType="TEXT",
            ConceptNameCodeSequence=[code],
            TextValue="No acute intracranial findings.",
        )
    ]
    ds.save_as(path, enforce_file_format=True)


def tilted(degrees: float) -> list[str]:
    """ImageOrientationPatient of an axial slice tilted about the LPS x axis."""
    angle = np.deg2rad(degrees)
    return [f"{v:.6f}" for v in (1, 0, 0, 0, np.cos(angle), np.sin(angle))]


def index_and_convert(folder: Path, out: Path, description: str | None = None):
    """What the workflow does: ``unireg index`` (one manifest) then ``unireg convert`` of the subject."""
    manifest = index_dicom(folder, subject=SUBJECT)
    write_manifest(manifest, out / "manifest.tsv")
    return manifest, convert_command(out / "manifest.tsv", SUBJECT, out / "T1w.nii.gz", None, description)


def canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and affine in the closest RAS orientation: conversions that differ only by flips compare equal."""
    image = nib.as_closest_canonical(nib.load(path))
    return np.asanyarray(image.dataobj), image.affine


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The 12 real slices as an intact series, converted: what every repairable case must give."""
    root = tmp_path_factory.mktemp("clean")
    series(root / "dicom")
    _, nifti = index_and_convert(root / "dicom", root)
    data, affine = canonical(nifti)
    assert data.shape == (512, 512, N_SLICES) and data.std() > 10
    return data, affine


def assert_one_line_error(err, *parts: str) -> str:
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{SUBJECT}: "), message
    for part in parts:
        assert part in message, (part, message)
    return message


# ---------------------------------------------------------------------------------------------
# Item 1: DICOM that must convert to exactly the clean volume
# ---------------------------------------------------------------------------------------------


def jittered(first_slices_exact: bool):
    """Slice positions off by +-0.04 mm (as headers that round them are), inner slices only or all of them.

    With the first two slices exact dcm2niix's spacing is right and the volume is the clean one;
    when they are 0.08 mm further apart than the rest, its 1.58 mm spacing misplaces the last slice.
    """
    original = positions(sources())

    def position(n):
        exact = first_slices_exact and (n < 2 or n == N_SLICES - 1)
        return [*original[n][:2], original[n][2] + (0 if exact else 0.04 if n % 2 else -0.04)]

    return lambda folder: series(folder, ImagePositionPatient=position)


def _rle(folder):
    return rewrite(series(folder), lambda ds: ds.compress(RLELossless))


def _with_reports(folder):
    files = series(folder)
    structured_report(folder / "IM9000", pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    structured_report(folder / "IM9001", generate_uid())  # and one in a series of its own
    return files


def _enhanced(folder):
    return enhanced_file(folder / "enhanced.dcm", sources())


@pytest.mark.parametrize(
    "build, not_image, atol",
    [
        pytest.param(jittered(first_slices_exact=True), 0, 1e-4, id="inner positions jittered 0.04 mm"),
        pytest.param(_rle, 0, 1e-4, id="RLE lossless"),
        pytest.param(_with_reports, 2, 1e-4, id="structured reports in the folder and the series"),
        pytest.param(_enhanced, 0, 1e-4, id="enhanced multi-frame"),
    ],
)
def test_series_converts_to_the_clean_volume(clean, tmp_path, build, not_image, atol):
    build(tmp_path / "dicom")
    manifest, nifti = index_and_convert(tmp_path / "dicom", tmp_path)
    assert len(manifest) == 1 and manifest["n_slices"].iloc[0] == N_SLICES
    assert manifest.attrs["skipped"]["not_image"] == not_image
    data, affine = canonical(nifti)
    np.testing.assert_array_equal(data, clean[0])
    np.testing.assert_allclose(affine, clean[1], rtol=0, atol=atol)


def test_two_series_in_one_folder_convert_apart(clean, tmp_path):
    """Files of two series interleaved in one folder: each converts to its own slices only."""
    folder = tmp_path / "dicom"
    series(folder, names="IM{:04d}0")  # slices 1-12
    second = sources(N_SLICES + 1)  # slices 13-24, another series
    series(folder, second, names="IM{:04d}1", SeriesDescription="t1_second")
    manifest = index_dicom(folder, subject=SUBJECT)
    assert sorted(manifest["n_files"]) == [N_SLICES, N_SLICES]
    write_manifest(manifest, tmp_path / "manifest.tsv")
    first = convert_command(tmp_path / "manifest.tsv", SUBJECT, tmp_path / "a" / "T1w.nii.gz", None, "^t1_mpr")
    np.testing.assert_array_equal(canonical(first)[0], clean[0])
    other = convert_command(tmp_path / "manifest.tsv", SUBJECT, tmp_path / "b" / "T1w.nii.gz", None, "second")
    data, affine = canonical(other)
    # canonical k runs inferior -> superior: slice sums in the order of the DICOM z positions
    by_height = sorted(second, key=lambda f: positions([f])[0][2])
    np.testing.assert_array_equal(
        data.sum(axis=(0, 1), dtype=np.int64), [pydicom.dcmread(f).pixel_array.sum(dtype=np.int64) for f in by_height]
    )
    assert affine[2, 3] == pytest.approx(clean[1][2, 3] + N_SLICES * 1.5, abs=1e-3)  # 12 slices higher


# ---------------------------------------------------------------------------------------------
# Item 1: DICOM that must stop with a one-line error naming the subject and the series
# ---------------------------------------------------------------------------------------------


def _missing_slice(folder):
    files = sources()
    return series(folder, files[:5] + files[6:])


def _moved_slice(folder):
    original = positions(sources())
    return series(folder, ImagePositionPatient=lambda n: [*original[n][:2], original[n][2] + (0.7 if n == 6 else 0)])


def _corrupt_header(folder):
    files = series(folder)
    raw = bytearray(files[5].read_bytes())
    raw[132:700] = np.random.default_rng(0).integers(0, 256, 568, dtype=np.uint8).tobytes()
    files[5].write_bytes(bytes(raw))
    return files


def _truncated_rle(folder):
    files = series(folder)
    rewrite([files[5]], lambda ds: ds.compress(RLELossless))  # encapsulated pixel data, cut short
    raw = files[5].read_bytes()
    files[5].write_bytes(raw[: len(raw) - 5000])
    return files


def _repetitions(count):
    def build(folder):
        files = sources() + sources()[:count]
        return series(folder, files, AcquisitionNumber=lambda n: 1 + n // N_SLICES, InstanceNumber=lambda n: n + 1)

    return build


def _half_tilted(folder):
    return series(folder, ImageOrientationPatient=lambda n: tilted(10.0 if n >= N_SLICES // 2 else 0.0))


def _secondary_capture(folder):
    def screenshot(ds):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
        del ds.ImagePositionPatient, ds.ImageOrientationPatient

    return rewrite(series(folder), screenshot)


def _enhanced_two_time_points(folder):
    return enhanced_file(folder / "enhanced.dcm", sources() + sources())


FOUR_D = "2 images per slice position (echoes, repetitions or time points: 4-D)"


@pytest.mark.parametrize(
    "build, parts, not_chosen",
    [
        pytest.param(
            _missing_slice,
            [
                "has 1 slice missing: 3 mm between the slices at -86.00 and -83.00 mm along the "
                "slice normal, 1.5 mm elsewhere"
            ],
            None,
            id="missing slice",
        ),
        pytest.param(
            _moved_slice,
            [
                "has uneven slice spacing: 2.2 mm between the slices at -84.50 and -82.30 mm",
                "1.5 mm elsewhere (2 uneven gaps in all)",
            ],
            None,
            id="moved slice",
        ),
        pytest.param(
            _corrupt_header,
            ["has 1 slice missing: 3 mm between the slices at -86.00 and -83.00 mm"],
            None,
            id="corrupt header",
        ),
        pytest.param(_truncated_rle, ["IM0005: series", "file is truncated"], None, id="truncated RLE slice"),
        pytest.param(
            _repetitions(5),
            ["has an unequal number of images per slice position (12 positions: 7 with 1, 5 with 2)"],
            FOUR_D,
            id="incomplete repetition",
        ),
        pytest.param(
            _repetitions(N_SLICES),
            ["converts to 2 volumes; it has 2 images at every slice position"],
            FOUR_D,
            id="full repetition",
        ),
        pytest.param(
            _enhanced_two_time_points,
            ["converts to 2 volumes; it has 2 images at every slice position"],
            FOUR_D,
            id="enhanced 2 time points",
        ),
        pytest.param(
            _half_tilted,
            ["converts to 2 volumes; it has 2 slice orientations"],
            "several slice orientations in one series (a multi-plane localiser?)",
            id="half the slices tilted",
        ),
        pytest.param(
            _secondary_capture,
            ["has no slice geometry"],
            "no slice geometry (a screenshot or secondary capture)",
            id="secondary capture",
        ),
        pytest.param(
            jittered(first_slices_exact=False),
            [
                "converts to a volume that puts a slice 0.80 mm from where its header says "
                "(slices 1.58 mm apart in the NIfTI, 1.507 mm on average in the headers): "
                "its slice positions are uneven"
            ],
            None,
            id="all positions jittered",
        ),
    ],
)
def test_broken_series_is_one_line_error(tmp_path, build, parts, not_chosen):
    """Selectable series fail at conversion; a series the rule never selects (``not_chosen``) fails at
    selection with the index's reason, and converted anyway its headers are refused all the same."""
    files = build(tmp_path / "dicom")
    manifest = index_dicom(tmp_path / "dicom", subject=SUBJECT)
    assert len(manifest) == 1
    row = manifest.iloc[0]
    uid = row.series_uid
    write_manifest(manifest, tmp_path / "manifest.tsv")
    out = tmp_path / "out" / "T1w.nii.gz"
    with pytest.raises(UniregError) as err:
        convert_command(tmp_path / "manifest.tsv", SUBJECT, out)
    assert row.selected == (0 if not_chosen else 1)
    if not_chosen:
        assert row.selection_reason == f"not chosen: {not_chosen}"
        assert_one_line_error(
            err,
            f"no anatomical series to register among 1: {uid} 't1_mpr_tra_gk_v4' MR (series "
            f"2, {N_SLICES} slices): {not_chosen}; ",
        )
        with pytest.raises(UniregError) as err:
            convert_series(manifest.attrs["files"][series_key(SUBJECT, uid)], out, SUBJECT, uid)
    assert_one_line_error(err, f"series {uid}", *parts)
    assert not (tmp_path / "out").exists()  # neither the NIfTI nor its sidecar
    if build is _corrupt_header:  # the index names the file it could not read
        assert manifest.attrs["skipped"]["corrupt"] == [str(files[5])]
        assert manifest["n_files"].iloc[0] == N_SLICES - 1


# ---------------------------------------------------------------------------------------------
# Item 1: localisers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def with_localiser(tmp_path):
    """The T1 series and a three-plane localiser (axial, sagittal, coronal) of the same subject."""
    folder = tmp_path / "dicom"
    series(folder / "t1")
    planes = [["1", "0", "0", "0", "1", "0"], ["0", "1", "0", "0", "0", "-1"], ["1", "0", "0", "0", "0", "-1"]]
    localiser = series(
        folder / "loc",
        sources(60, 3),
        SeriesDescription="localizer",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        ImageOrientationPatient=lambda n: planes[n],
    )
    return folder, localiser


def test_localiser_is_never_selected(clean, with_localiser, tmp_path):
    folder, _ = with_localiser
    manifest, nifti = index_and_convert(folder, tmp_path)  # no series_filter: the localiser is skipped
    row = manifest[manifest["series_description"] == "localizer"].iloc[0]
    assert (row.orientation, row.n_slices) == ("mixed", 3)
    assert select_series(manifest, SUBJECT)["series_description"] == "t1_mpr_tra_gk_v4"
    np.testing.assert_array_equal(canonical(nifti)[0], clean[0])


def test_localiser_converted_anyway_is_one_line_error(with_localiser, tmp_path):
    _, localiser = with_localiser
    uid = hashed_uid(
        pydicom.dcmread(localiser[0], stop_before_pixels=True).SeriesInstanceUID, read_uid_salt(create=True)
    )
    with pytest.raises(UniregError) as err:
        convert_series(localiser, tmp_path / "loc.nii.gz", SUBJECT, uid)
    assert_one_line_error(err, f"series {uid} converts to 3 volumes; it has 3 slice orientations")


# ---------------------------------------------------------------------------------------------
# Item 2: images
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head():
    """A real IXI T1 head (120 x 120 x 90, 2 mm, PSR on disk), not skull-stripped."""
    image = nib.load(shared_file("ixi_t1_dlmuse", "t1", "IXI012-HH-1211_T1.nii.gz"))
    return np.asanyarray(image.dataobj).astype(np.float32), image.affine


@pytest.fixture(scope="module")
def stripped():
    """A real skull-stripped IXI T1 at half resolution (75 x 128 x 128, 2.4 x 1.9 x 1.9 mm): a fast affine."""
    image = nib.load(shared_file("ixi002_t1_t2", "hd_bet_IXI002-Guys-0828-T1.nii.gz"))
    data = np.asanyarray(image.dataobj)[::2, ::2, ::2].astype(np.float32)
    return data, image.affine @ np.diag([2.0, 2.0, 2.0, 1.0])


def _scaled(data, affine, factor):
    affine = affine.copy()
    affine[:3, :3] *= factor
    return data, affine


def _with_nan_srow(path: Path, data, affine) -> None:
    """A header whose sform holds a NaN (bytes 280-283: srow_x[0]), as a broken writer leaves it."""
    nib.save(nib.Nifti1Image(data, affine), path)
    raw = bytearray(path.read_bytes())
    raw[280:284] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(raw))


def _with_inf_block(data):
    data = data.copy()
    data[60:65, 60:65, 40:45] = np.inf  # 125 voxels
    return data


def _huge_header(path: Path) -> None:
    """A header announcing 2048^3 float32 voxels (32 GiB) in front of a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 4096)


IMAGE_CASES = {
    "2-D slice": (lambda d, a: (d[:, :, 45], a), [], "expected a 3-D image, got shape (120, 120); extract one volume"),
    "4-D, 2 volumes": (
        lambda d, a: (np.stack([d, d], axis=-1), a),
        [],
        "expected a 3-D image, got shape (120, 120, 90, 2); extract one volume",
    ),
    "all zero": (lambda d, a: (np.zeros_like(d), a), [], "image is empty (all voxels are zero)"),
    "constant": (lambda d, a: (np.full_like(d, 7.0), a), [], "image has constant intensity 7; it holds no anatomy"),
    "inf voxels": (
        lambda d, a: (_with_inf_block(d), a),
        [],
        "125 NaN/Inf voxels (0.0096 %); fix the image or set nonfinite: zero to mask them",
    ),
    "3-slice slab": (
        lambda d, a: (d[:, :, 40:43], a),
        [],
        "image has only 3 voxels along one axis (shape (120, 120, 3)); a 3-D head image needs at least 10",
    ),
    "60 mm voxels": (lambda d, a: _scaled(d, a, 30.0), [], "implausible voxel size (60.0, 60.0, 60.0) mm"),
    "partial field of view": (
        lambda d, a: (d[30:90, 30:90, 30:55], a),
        [],
        "partial field of view: the image covers 50 x 120 x 120 mm (R x A x S), less than 60% "
        "of the atlas brain's 148 x 182 x 156 mm along an axis",
    ),
    "NaN in the affine": (_with_nan_srow, [], "the affine (voxel-to-world matrix) has NaN/Inf values"),
    "2048^3 header": (
        _huge_header,
        [],
        "image has 8,589,934,592 voxels (shape (2048, 2048, 2048)), more than the "
        "134,217,728 supported; downsample it first",
    ),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_image_is_one_line_error(default_atlas, head, tmp_path, capsys, case):
    make, extra, expected = IMAGE_CASES[case]
    path = tmp_path / ("sub-s1_T1w.nii" if make in (_with_nan_srow, _huge_header) else "sub-s1_T1w.nii.gz")
    if make is _huge_header:
        make(path)
    elif make is _with_nan_srow:
        make(path, *head)
    else:
        nib.save(nib.Nifti1Image(*make(*head)), path)
    rc = main(
        [
            "preprocess",
            "--image",
            str(path),
            "--atlas",
            default_atlas.path,
            "--out",
            str(tmp_path / "out"),
            "--subject",
            "s1",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(f"unireg: s1: {path}: {expected}"), err
    assert not (tmp_path / "out").exists()


def test_voxel_size_four_times_too_large_is_refused_after_alignment(default_atlas, stripped, tmp_path):
    """The header says 7.6-9.6 mm voxels for a 1.9-2.4 mm image: the affine cannot bring that onto the atlas."""
    path = tmp_path / "sub-s1_T1w.nii.gz"
    nib.save(nib.Nifti1Image(*_scaled(*stripped, 4.0)), path)
    with pytest.raises(UniregError) as err:
        preprocess_file(path, default_atlas, tmp_path / "out", PreprocessOptions(brain_extraction=False), subject="s1")
    message = str(err.value)
    assert message.startswith(f"s1: {path}: affine alignment to the atlas is implausible: it scales the atlas by ")
    scales = [float(v) for v in message.split("scales the atlas by ")[1].split(" (")[0].split(" x ")]
    assert max(scales) / min(scales) > 1.8 and "check the header's voxel size" in message
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Item 5: the same inputs and seed give the same bytes (and a wildly wrong origin changes nothing)
# ---------------------------------------------------------------------------------------------


def preprocess_cli(image: Path, atlas, out: Path, *extra: str) -> Path:
    assert (
        main(
            [
                "preprocess",
                "--image",
                str(image),
                "--atlas",
                atlas.path,
                "--out",
                str(out),
                "--subject",
                "s1",
                "--seed",
                "3",
                *extra,
            ]
        )
        == 0
    )
    return out


def without_timings(path: Path) -> dict:
    info = json.loads(path.read_text())
    return {k: v for k, v in info.items() if k not in ("timings_s", "environment")}


@pytest.fixture(scope="module")
def preprocessed_twice(default_atlas, tmp_path_factory):
    """``unireg preprocess`` (deepbet + MI affine) run twice on the same real head with the same seed."""
    root = tmp_path_factory.mktemp("twice")
    head_path = shared_file("ixi_t1_dlmuse", "t1", "IXI012-HH-1211_T1.nii.gz")
    return (
        head_path,
        preprocess_cli(head_path, default_atlas, root / "a"),
        preprocess_cli(head_path, default_atlas, root / "b"),
    )


def assert_same_outputs(first: Path, second: Path, json_name: str) -> list[str]:
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        if name == json_name:
            assert without_timings(first / name) == without_timings(second / name)
        else:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    return names


def test_preprocess_and_register_are_bit_identical_on_cpu(default_atlas, preprocessed_twice, tmp_path, capsys):
    _, a, b = preprocessed_twice
    assert assert_same_outputs(a, b, OUTPUT_FILES["info"]) == sorted(OUTPUT_FILES.values())
    assert dice(load_image(a / OUTPUT_FILES["mask"], label=True).data, default_atlas.mask.data) > 0.9  # not trivial

    atlas_dir = Path(default_atlas.path)
    runs = []
    for name in ("r1", "r2"):
        assert (
            main(
                [
                    "register",
                    "--fixed",
                    str(a / OUTPUT_FILES["image"]),
                    "--moving",
                    str(atlas_dir / "atlas.nii.gz"),
                    "--moving-labels",
                    str(atlas_dir / "atlas_labels.nii.gz"),
                    "--out",
                    str(tmp_path / name),
                    "--instance-opt",
                    "1",
                    "--device",
                    "cpu",
                    "--subject",
                    "s1",
                ]
            )
            == 0
        )
        runs.append(tmp_path / name)
    names = assert_same_outputs(*runs, "registration.json")
    assert {"warped.nii.gz", "displacement.nii.gz", "displacement_itk.nii.gz", "warped_labels.nii.gz"} <= set(names)
    field = np.asanyarray(nib.load(runs[0] / "displacement.nii.gz").dataobj)
    assert np.abs(field).max() > 0.5  # a real deformation was compared, not an empty one


def test_affine_1000_mm_off_and_nan_voxels_still_land_on_the_atlas(default_atlas, preprocessed_twice, tmp_path):
    """The same head with its origin moved by (1000, -700, 400) mm and 64 NaN voxels in the brain,
    preprocessed with ``--nonfinite zero``: the centre-of-mass start absorbs the offset, the NaN
    voxels are zeroed and masked, and the result is the unbroken head's."""
    head_path, reference, _ = preprocessed_twice
    image = nib.load(head_path)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[58:62, 58:62, 43:47] = np.nan
    shift = np.array([1000.0, -700.0, 400.0])
    moved = image.affine.copy()
    moved[:3, 3] += shift
    path = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(data, moved), path)
    out = preprocess_cli(path, default_atlas, tmp_path / "out", "--nonfinite", "zero")
    assert json.loads((out / OUTPUT_FILES["info"]).read_text())["input"]["nonfinite_voxels"] == 64
    preprocessed = load_image(out / OUTPUT_FILES["image"]).data
    assert np.all(np.isfinite(preprocessed)) and preprocessed.min() >= 0 and 0.9 < preprocessed.max() <= 1
    mask = load_image(out / OUTPUT_FILES["mask"], label=True).data
    assert dice(mask, default_atlas.mask.data) > 0.9
    assert dice(mask, load_image(reference / OUTPUT_FILES["mask"], label=True).data) > 0.97
    matrix, matrix_reference = (
        read_affine_txt(out / OUTPUT_FILES["affine"]),
        read_affine_txt(reference / OUTPUT_FILES["affine"]),
    )
    np.testing.assert_allclose(matrix[:3, :3], matrix_reference[:3, :3], atol=0.02)
    np.testing.assert_allclose(matrix[:3, 3] - matrix_reference[:3, 3], shift, atol=1.0)  # mm


# ---------------------------------------------------------------------------------------------
# Item 5: damaged checkpoints
# ---------------------------------------------------------------------------------------------


def _flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_flip_a_byte, "checkpoint sha256 does not match model.pt.sha256: the file is corrupted or was replaced"),
        (lambda p: p.with_name(p.name + ".sha256").unlink(), "checkpoint has no model.pt.sha256 beside it"),
        (lambda p: p.with_name(p.name + ".sha256").write_text(""), "model.pt.sha256 holds no sha256 (64 hex digits)"),
    ],
    ids=["one bit flipped", "no .sha256", "empty .sha256"],
)
def test_damaged_checkpoint_is_refused(tmp_path, capsys, damage, expected):
    """A copy of the packaged default model, damaged: refused before torch.load, by the library and the CLI."""
    path = tmp_path / "model.pt"
    path.write_bytes(DEFAULT_MODEL.read_bytes())
    path.with_name("model.pt.sha256").write_text(DEFAULT_MODEL.with_name(DEFAULT_MODEL.name + ".sha256").read_text())
    load_checkpoint(path)  # the intact copy loads
    damage(path)
    with pytest.raises(UniregError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: {expected}") and "\n" not in str(err.value)
    image = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), image)
    assert (
        main(
            [
                "register",
                "--fixed",
                str(image),
                "--moving",
                str(image),
                "--model",
                str(path),
                "--out",
                str(tmp_path / "reg"),
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and f"{path}: {expected}" in message
    assert not (tmp_path / "reg").exists()
