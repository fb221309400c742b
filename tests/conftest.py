"""Shared fixtures: real data from ../shared (skipped with a reason when absent), small atlases,
torchvision-format weight files, and DICOM series re-written from a real MPRAGE (test_cohort,
test_convert, test_cohort_selection, test_bad_input)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UNIREG_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test saying which file is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} (../shared/data is absent)")
    return path


@pytest.fixture(scope="session")
def default_atlas(tmp_path_factory):
    """The default MNI 2009a tissue atlas at 2 mm, built offline from nilearn's files."""
    from unireg.atlas import prepare_tissue_atlas

    return prepare_tissue_atlas(tmp_path_factory.mktemp("atlas") / "mni2009a-2mm", spacing=2.0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write into the user's ~/.cache from tests."""
    monkeypatch.setenv("UNIREG_HOME", str(tmp_path_factory.getbasetemp() / "unireg_home"))


# later-layer keys of the full torchvision files, so the test files look like the real ones
TORCHVISION_EXTRA_KEYS = {
    "resnet18": {
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer4.1.bn2.running_var": (512,),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    },
    "vgg16": {
        "features.10.weight": (256, 128, 3, 3),
        "features.28.bias": (512,),
        "classifier.6.weight": (1000, 4096),
        "classifier.6.bias": (1000,),
    },
}


def write_torchvision_file(name: str, path: Path, seed: int = 0) -> dict:
    """A torchvision-format state dict (``resnet18``, ``vgg16``) with random weights: the early-layer
    keys/shapes of our module (torchvision names, no num_batches_tracked, like the official files)
    plus later keys. Used by tests/test_weights.py and tests/test_features.py."""
    import torch

    from unireg.features import ResNet18Early, VGG16Early

    torch.manual_seed(seed)
    state = {
        key: torch.randn(value.shape) * 0.1 if value.is_floating_point() else value
        for key, value in {"resnet18": ResNet18Early, "vgg16": VGG16Early}[name]().state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    state.update({key: value.abs() + 0.5 for key, value in state.items() if key.endswith("running_var")})
    state.update({key: torch.randn(shape) for key, shape in TORCHVISION_EXTRA_KEYS[name].items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def read_commented_csv(path) -> list[dict]:
    """Rows of a benchmark CSV whose provenance lines start with '#'."""
    import csv

    with open(path) as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def run_benchmark_smoke(
    script: str, out: Path, data: tuple[str, ...] = ("ixi_t1_dlmuse/t1", "ixi002_t1_t2"), args: tuple[str, ...] = ()
) -> str:
    """Run ``benchmarks/<script> --smoke --out <out> [args]`` on the shared data it needs (``data``:
    folders under ../shared/data; default the IXI ones; skips without them), with its own UNIREG_HOME
    (never the user's cache); returns its stdout."""
    import subprocess
    import sys

    for folder in data:
        shared_file(*folder.split("/"))
    env = {**os.environ, "UNIREG_HOME": str(out / "unireg_home")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# ---------------------------------------------------------------------------------------------
# DICOM series from the real MPRAGE (../shared/data/dicom_mprage_vsseg001: 120 axial slices)
# ---------------------------------------------------------------------------------------------

MPRAGE_UID = "1.3.6.1.4.1.14519.5.2.1.149357697745643823053302398129943470751"  # its SeriesInstanceUID


@pytest.fixture(scope="module")
def isolated_home_for_module_fixtures(tmp_path_factory):
    """UNIREG_HOME (where index and convert keep the default UID salt) for module-scoped fixtures too:
    they run before the per-test isolation (:func:`_isolated_cache`); the same folder, never the user's
    ~/.cache. A module whose fixtures index or convert uses it with ``pytestmark =
    pytest.mark.usefixtures("isolated_home_for_module_fixtures")``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNIREG_HOME", str(tmp_path_factory.getbasetemp() / "unireg_home"))
        yield


def mprage_files(first: int, count: int) -> list[Path]:
    root = shared_file("dicom_mprage_vsseg001")
    return [root / f"1-{n:03d}.dcm" for n in range(first, first + count)]


def copy_series(
    sources: list[Path], folder: Path, names: str, *, shrink: int = 1, drop: tuple[str, ...] = (), **tags
) -> list[Path]:
    """Re-write real slices into ``folder`` as a new series, with ``tags`` changed (a callable gets the
    file's number) and the tags ``drop`` removed; fresh SOP instance UIDs unless ``tags`` sets them.

    ``shrink``: keep every ``shrink``-th pixel of each row and column (PixelSpacing scaled to match):
    small files with the real header, for series that are indexed but never converted (EPI, DWI, ...).
    """
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        if shrink > 1:
            pixels = np.ascontiguousarray(ds.pixel_array[::shrink, ::shrink])
            ds.Rows, ds.Columns = pixels.shape
            ds.PixelSpacing = [f"{float(v) * shrink:g}" for v in ds.PixelSpacing]
            ds.PixelData = pixels.tobytes()
        for keyword in drop:
            if keyword in ds:
                delattr(ds, keyword)
        for keyword, value in tags.items():
            setattr(ds, keyword, value(number) if callable(value) else value)
        if "SOPInstanceUID" not in tags:
            ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(folder / names.format(number))
        ds.save_as(paths[-1])
    return paths


def by_description(manifest, description: str):
    return manifest[manifest["series_description"] == description].iloc[0]


@pytest.fixture(scope="module")
def mprage_index(isolated_home_for_module_fixtures, tmp_path_factory):
    """The real 120-slice MPRAGE indexed: ``(root, out, manifest)``, the manifest written in ``out``."""
    from unireg.cohort import index_command

    root = shared_file("dicom_mprage_vsseg001")
    out = tmp_path_factory.mktemp("mprage")
    return root, out, index_command(root, out / "manifest.tsv")


@pytest.fixture(scope="module")
def dicom_cohort(isolated_home_for_module_fixtures, tmp_path_factory):
    """One subject: T1 (one slice truncated), T2-named, mixed-orientation and localiser series + a text file."""
    from pydicom.uid import generate_uid

    from unireg.cohort import index_command

    root = tmp_path_factory.mktemp("cohort")
    dicom = root / "dicom"
    t1 = copy_series(mprage_files(1, 12), dicom / "a", "{}", SeriesInstanceUID=generate_uid())
    cut = t1[5].read_bytes()
    t1[5].write_bytes(cut[: len(cut) // 2])
    copy_series(
        mprage_files(13, 12),
        dicom / "b" / "c",
        "slice{}.dcm",
        SeriesInstanceUID=generate_uid(),
        SeriesDescription="t2_tse_tra",
    )
    sagittal = ["0", "1", "0", "0", "0", "-1"]
    copy_series(
        mprage_files(25, 12),
        dicom / "d",
        "x{}",
        SeriesInstanceUID=generate_uid(),
        SeriesDescription="mixed_orientation",
        ImageOrientationPatient=lambda n: sagittal if n % 2 else ["1", "0", "0", "0", "1", "0"],
    )
    copy_series(
        mprage_files(40, 3),
        dicom / "e",
        "loc{}",
        SeriesInstanceUID=generate_uid(),
        SeriesDescription="localizer",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
    )
    (dicom / "b" / "notes.txt").write_text("not a DICOM file\n" * 50)
    manifest = index_command(dicom, root / "manifest.tsv")
    return root, manifest, t1[5]


def blobs(seed: int, shape=(32, 40, 36)):
    """A brain-like test volume ``(1, 1, *shape)``: smooth random blobs inside an ellipsoid, zero outside."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, *(s // 4 for s in shape), generator=g)
    volume = F.interpolate(noise, size=shape, mode="trilinear", align_corners=False)
    axes = [torch.linspace(-1, 1, s) for s in shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    inside = (zz**2 / 0.6 + yy**2 / 0.7 + xx**2 / 0.65) < 1
    return volume * inside


# ---------------------------------------------------------------------------------------------
# Atlas-set members: the MNI tissue atlas moved by known affines, and bad members (unireg.atlas_set)
# ---------------------------------------------------------------------------------------------


def shifted(image, mm):
    """``image`` moved by ``mm`` in world space."""
    from unireg.io import Image

    affine = image.affine.copy()
    affine[:3, 3] += np.asarray(mm, float)
    return Image(image.data, affine, is_label=image.is_label)


@pytest.fixture(scope="module")
def atlas_set_members(default_atlas, tmp_path_factory):
    """Write members (image, labels) and return a function that writes a manifest of some of them."""
    from unireg.atlas import ATLAS_FILES
    from unireg.io import load_image, save_image

    atlas_dir = default_atlas.path
    template = load_image(f"{atlas_dir}/{ATLAS_FILES['image']}")
    labels = load_image(f"{atlas_dir}/{ATLAS_FILES['labels']}", label=True)
    tmp_path = tmp_path_factory.mktemp("atlas_set_members")
    src = tmp_path / "src"
    src.mkdir()
    extra = labels.data.copy()
    extra[labels.data == 3] = 3
    extra[40:44, 40:44, 40:44] = 99  # an id only this member has
    made = {
        "a": (template, labels),
        "b": (shifted(template, (6, -4, 3)), shifted(labels, (6, -4, 3))),
        "c": (template, labels.with_data(extra)),
        "inverted": (template.with_data(np.where(template.data > 0, 1.0 - template.data, 0.0)), labels),
    }
    for name, (image, lab) in made.items():
        save_image(image, src / f"{name}_t1.nii.gz")
        save_image(lab, src / f"{name}_labels.nii.gz")
    table = tmp_path / "table.tsv"
    table.write_text("index\tname\n1\tCSF\n2\tgrey\n3\twhite\n99\tblob\n")

    def manifest(*names):
        path = src / "members.tsv"
        path.write_text("id\timage\tlabels\n" + "".join(f"{n}\t{n}_t1.nii.gz\t{n}_labels.nii.gz\n" for n in names))
        return path

    return manifest, table


def _ellipsoids(shape, centre, radii):
    grid = np.indices(shape).astype(float)
    r = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, radii))
    labels = np.zeros(shape, np.int16)
    labels[r < 1.0] = 1
    labels[r < 0.5] = 2
    image = np.where(labels == 1, 0.5, 0.0) + np.where(labels == 2, 1.0, 0.0)
    return image.astype(np.float32), labels


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """5 synthetic subjects (two nested ellipsoids, labels 1-2, 32^3 at 2 mm) and a matching atlas, for
    training tests (preprocessing without brain extraction)."""
    import nibabel as nib

    from unireg.cli import main

    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for k in range(5):
        image, labels = _ellipsoids((32, 32, 32), 16 + rng.uniform(-2, 2, 3), rng.uniform(7, 11, 3))
        nib.save(nib.Nifti1Image(image, affine), root / "images" / f"s{k}_T1.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), root / "labels" / f"s{k}_T1_seg.nii.gz")
    atlas_img, atlas_lab = _ellipsoids((32, 32, 32), (16, 16, 16), (9, 9, 9))
    nib.save(nib.Nifti1Image(atlas_img, affine), root / "atlas.nii.gz")
    nib.save(nib.Nifti1Image(atlas_lab, affine), root / "atlas_labels.nii.gz")
    (root / "atlas.tsv").write_text("index\tname\n1\touter\n2\tinner\n")
    assert (
        main(
            [
                "atlas",
                "import",
                "--image",
                str(root / "atlas.nii.gz"),
                "--labels",
                str(root / "atlas_labels.nii.gz"),
                "--table",
                str(root / "atlas.tsv"),
                "--out",
                str(root / "atlas"),
            ]
        )
        == 0
    )
    return root
