"""A demo cohort that exists offline: MR DICOM series with reference tissue labels.

Everything comes from the packages unireg installs: the MNI ICBM152 2009a T1 template and its
tissue probability maps (nilearn's wheel) and one real low-resolution T1 (nibabel's test data).

A *synthetic subject* is the template seen through a random deformation. For a point ``x`` of
the subject's scanner world (RAS mm)::

    image(x)  = bias(x) * contrast(template(D(A x))) + Rician noise
    labels(x) = atlas labels(D(A x))                            (nearest: label-preserving)

``A`` is a small random affine (subject world -> MNI world: rotation <= 10 deg, shift <= 10 mm,
scale +-5 % per axis) and ``D(y) = y + u(y)`` a smooth diffeomorphism: a smooth random
stationary velocity integrated by :func:`unireg.fields.integrate` (scaling and squaring). Image
and labels are read at the *same* point ``D(A x)``, so the reference labels are exact for the
image, up to partial volume (the image averages over the slice thickness, labels are taken at
the voxel centre). The reference labels are those of the built-in atlas the cohort is segmented
with (``reference_atlas``), drawn on the 1 mm template grid: the structures of ``mni2009a-allen``
(:func:`unireg.atlas_allen.structure_labels`: the same ids, and the same small structures
dropped, as the atlas at ``atlas_spacing``) or the 3 tissue classes of ``mni2009a`` (1 CSF, 2 GM,
3 WM). The images do not depend on that choice: the same seed gives the same DICOM files.

DICOM geometry (:class:`SliceStack`) is in patient coordinates, LPS mm. The NIfTI grid of a
series is the one dcm2niix writes, computed from the tag values as written (16-character
decimal strings), so it is known without dcm2niix: voxel ``[i, j, k]`` is column ``i``, row
``Rows-1-j`` of the ``k``-th slice along the normal ``ImageOrientationPatient[:3] x [3:]``;
for a 3D acquisition (MRAcquisitionType ``3D``) dcm2niix then flips/permutes the axes to the
closest RAS orientation (losslessly, as :func:`unireg.transforms.reorient_to_ras` does).

Layout written by :func:`make_demo_cohort`::

    dicom/<subject>/IM-<series>-<instance>.dcm  one file per slice, every series of the subject
    reference/sub-<subject>_labels.nii.gz       atlas labels on the dcm2niix grid of the main series
    cohort.tsv                                  subject, dicom, reference (paths relative to out_dir)
    demo.json                                   what :func:`make_demo_cohort` returns (no absolute paths)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel
import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds
from scipy import ndimage

from . import __version__
from .atlas import mni_template_images, tissue_labels
from .defaults import ALLEN_ATLAS, BUILTIN_ATLASES, DEFAULT_ATLAS, TISSUE_ATLAS
from .errors import UniregError
from .fields import from_world_mm, integrate, jacobian_determinant, to_world_mm
from .io import Grid, Image, apply_affine, load_image, save_image, write_atomic, write_text_atomic
from .transforms import DisplacementField, grid_with_spacing, reorient_to_ras

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # its own inverse
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DEMO_FILE = "demo.json"
FIELD_SPACING_MM = 4.0  # grid of the random velocity field
WARP_SMOOTHNESS_MM = 16.0  # Gaussian correlation length of the velocity
WARP_VELOCITY_STD_MM = 2.5  # velocity std over the field grid -> displacements of a few mm
FOV_MARGIN_MM = 12.0  # around the warped brain, in each direction


# ---------------------------------------------------------------------------------------------
# DICOM slice geometry and the NIfTI grid dcm2niix makes of it
# ---------------------------------------------------------------------------------------------


def format_ds(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters)."""
    return format_number_as_ds(float(value))


@dataclass(frozen=True)
class SliceStack:
    """Geometry of a stack of parallel slices in DICOM patient coordinates (LPS mm).

    ``row_direction`` / ``column_direction`` are ImageOrientationPatient[:3] / [3:] (the
    direction the column index / the row index grows to), ``pixel_spacing`` is PixelSpacing
    (between rows, between columns), ``first_position`` the ImagePositionPatient of slice 0;
    slice ``k`` is at ``first_position + k * slice_spacing * normal``.
    """

    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    n_slices: int
    first_position: tuple[float, float, float]
    slice_spacing: float
    slice_thickness: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    def positions(self) -> np.ndarray:
        """ImagePositionPatient of every slice, ``(n_slices, 3)`` LPS mm."""
        steps = np.arange(self.n_slices, dtype=float)[:, None] * self.slice_spacing
        return np.asarray(self.first_position, dtype=float) + steps * self.normal

    def as_written(self) -> SliceStack:
        """The same stack with every value as its DICOM decimal string holds it."""

        def rounded(values):
            return tuple(float(format_ds(v)) for v in values)

        return replace(
            self,
            row_direction=rounded(self.row_direction),
            column_direction=rounded(self.column_direction),
            pixel_spacing=rounded(self.pixel_spacing),
            first_position=rounded(self.first_position),
            slice_spacing=float(format_ds(self.slice_spacing)),
            slice_thickness=float(format_ds(self.slice_thickness)),
        )

    def nifti_grid(self, acquisition_3d: bool = False) -> Grid:
        """The NIfTI grid dcm2niix writes for this stack (RAS world).

        2D acquisitions keep the storage order: shape ``(columns, rows, n_slices)``, rows
        bottom-up. 3D acquisitions are reoriented to the closest RAS axes.
        """
        if acquisition_3d:
            stored = self.nifti_grid()
            return reorient_to_ras(Image(np.zeros(stored.shape, np.uint8), stored.affine)).grid
        row, col = np.asarray(self.row_direction), np.asarray(self.column_direction)
        between_rows, between_columns = self.pixel_spacing
        affine = np.eye(4)
        affine[:3, 0] = LPS_TO_RAS @ row * between_columns
        affine[:3, 1] = -LPS_TO_RAS @ col * between_rows  # rows are stored bottom-up
        affine[:3, 2] = LPS_TO_RAS @ self.normal * self.slice_spacing
        affine[:3, 3] = LPS_TO_RAS @ (np.asarray(self.first_position) + (self.rows - 1) * between_rows * col)
        return Grid((self.columns, self.rows, self.n_slices), affine)

    @classmethod
    def from_grid(cls, grid: Grid, slice_thickness: float | None = None) -> SliceStack:
        """The stack whose :meth:`nifti_grid` is ``grid`` (which must have a negative determinant)."""
        spacing = np.asarray(grid.spacing)
        row = LPS_TO_RAS @ grid.affine[:3, 0] / spacing[0]
        col = -LPS_TO_RAS @ grid.affine[:3, 1] / spacing[1]
        if not np.allclose(np.cross(row, col), LPS_TO_RAS @ grid.affine[:3, 2] / spacing[2], atol=1e-6):
            raise ValueError(
                "a DICOM slice stack needs a grid with a negative determinant (e.g. LAS); flip its first axis"
            )
        first = LPS_TO_RAS @ grid.affine[:3, 3] - (grid.shape[1] - 1) * spacing[1] * col
        return cls(
            tuple(row),
            tuple(col),
            (spacing[1], spacing[0]),
            grid.shape[1],
            grid.shape[0],
            grid.shape[2],
            tuple(first),
            spacing[2],
            spacing[2] if slice_thickness is None else slice_thickness,
        )

    @classmethod
    def from_datasets(cls, datasets) -> SliceStack:
        """Read the geometry of one series of parallel, evenly spaced slices (pydicom datasets)."""
        orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        if any(
            not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), orientation, atol=1e-4)
            for ds in datasets
        ):
            raise UniregError("slices have different ImageOrientationPatient")
        row, col = orientation[:3], orientation[3:]
        positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in datasets])
        along = positions @ np.cross(row, col)
        order = np.argsort(along)
        steps = np.diff(along[order])
        step = float(np.mean(steps)) if len(datasets) > 1 else float(datasets[0].SliceThickness)
        if len(datasets) > 1 and (np.ptp(steps) > 1e-3 or step <= 0):
            raise UniregError("slices are not evenly spaced along the slice normal")
        first = datasets[int(order[0])]
        return cls(
            tuple(row),
            tuple(col),
            tuple(float(v) for v in first.PixelSpacing),
            int(first.Rows),
            int(first.Columns),
            len(datasets),
            tuple(positions[order[0]]),
            step,
            float(first.SliceThickness),
        )


def predicted_nifti_grid(datasets) -> Grid:
    """The grid dcm2niix will write for one series (pydicom datasets of its slices), from the tags."""
    acquisition_3d = str(datasets[0].get("MRAcquisitionType", "")).upper() == "3D"
    return SliceStack.from_datasets(datasets).nifti_grid(acquisition_3d)


def slice_pixels(volume: np.ndarray, k: int) -> np.ndarray:
    """Pixel array ``(Rows, Columns)`` of slice ``k`` of a volume on :meth:`SliceStack.nifti_grid`."""
    return np.ascontiguousarray(volume[:, ::-1, k].T)


def write_dicom_series(
    folder: str | Path, volume: Image, stack: SliceStack, tags: dict, *, first_instance: int = 1
) -> list[Path]:
    """Write ``volume`` as an MR series, one file per slice.

    ``volume`` holds the stored values (integers 0..65535) on ``stack.nifti_grid()`` (the 2D
    storage order, also for 3D acquisitions).

    ``tags`` holds everything that is the same for every slice (patient, study, series,
    sequence, ``SeriesInstanceUID``, optional ``RescaleIntercept``/``RescaleSlope``); geometry,
    pixel and instance tags are added here. SOP instance UIDs derive from the series UID and
    the instance number, so the same inputs give byte-identical files. Files are named
    ``IM-<SeriesNumber>-<InstanceNumber>.dcm`` (4 digits each, as OsiriX/Horos exports do): never
    by a UID, which would carry an identifier into every path that lists them.
    """
    grid = stack.nifti_grid()
    if volume.shape != grid.shape or not np.allclose(volume.affine, grid.affine, atol=1e-4):
        raise ValueError(f"volume {volume.shape} is not on the stack's grid {grid.shape}")
    data = np.asarray(volume.data)
    if data.min() < 0 or data.max() > 65535 or not np.all(data == np.round(data)):
        raise ValueError("stored DICOM values must be integers in 0..65535")
    data = data.astype(np.uint16)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    orientation = [format_ds(v) for v in (*stack.row_direction, *stack.column_direction)]
    normal = stack.normal
    paths = []
    for k, position in enumerate(stack.positions()):
        instance = first_instance + k
        sop_uid = generate_uid(entropy_srcs=[str(tags["SeriesInstanceUID"]), "instance", str(instance)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = [format_ds(v) for v in position]
        ds.ImageOrientationPatient = orientation
        ds.SliceLocation = format_ds(float(position @ normal))
        ds.PixelSpacing = [format_ds(v) for v in stack.pixel_spacing]
        ds.SliceThickness = format_ds(stack.slice_thickness)
        if stack.n_slices > 1:
            ds.SpacingBetweenSlices = format_ds(stack.slice_spacing)
        pixels = slice_pixels(data, k)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 12 if data.max() < 4096 else 16
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.astype("<u2").tobytes()
        path = folder / f"IM-{int(tags.get('SeriesNumber', 0)):04d}-{instance:04d}.dcm"
        write_atomic(path, lambda tmp, ds=ds: ds.save_as(tmp, enforce_file_format=True))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Anatomy: the MNI template with tissue labels, and random deformations of it
# ---------------------------------------------------------------------------------------------


def mni_tissue_labels() -> tuple[Image, Image]:
    """The MNI ICBM152 2009a T1 template (values 0..255) and its tissue labels, 1 mm, RAS.

    Labels are those of the default atlas (:mod:`unireg.atlas`): argmax of
    (255 - GM - WM, GM, WM) probabilities inside the template brain, 1 CSF, 2 GM, 3 WM.
    """
    t1, gm, wm = mni_template_images()
    return t1, tissue_labels(t1, gm, wm)


@dataclass(frozen=True)
class SubjectWarp:
    """Subject world -> MNI world, ``x -> D(A x)`` with ``D`` a world-space
    :class:`~unireg.transforms.DisplacementField` ``y -> y + u(y)`` (all RAS mm).

    ``affine`` is ``A`` (4x4); ``field`` is ``D``, on the template's field grid.
    """

    affine: np.ndarray
    field: DisplacementField

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` subject-world points to MNI world."""
        return self.field(apply_affine(self.affine, points))


def random_affine(
    rng: np.random.Generator,
    centre: np.ndarray,
    max_rotation_deg: float = 10.0,
    max_shift_mm: float = 10.0,
    max_scale: float = 0.05,
) -> np.ndarray:
    """``y = centre + R S (x - centre) + t``: rotation about a random axis, per-axis scale, shift."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0.3, 1.0) * max_rotation_deg)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    linear = rotation @ np.diag(1.0 + rng.uniform(-max_scale, max_scale, 3))
    shift = rng.standard_normal(3)
    shift *= rng.uniform(0.3, 1.0) * max_shift_mm / np.linalg.norm(shift)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre - linear @ centre + shift
    return affine


def random_displacement(
    rng: np.random.Generator,
    field_grid: Grid,
    velocity_std_mm: float = WARP_VELOCITY_STD_MM,
    smoothness_mm: float = WARP_SMOOTHNESS_MM,
) -> np.ndarray:
    """A smooth random diffeomorphic displacement ``(3, *field_grid.shape)`` in RAS mm.

    White noise smoothed by a Gaussian (``smoothness_mm``) is a stationary velocity with std
    ``velocity_std_mm``; :func:`unireg.fields.integrate` integrates it (voxel units of the grid).
    """
    spacing = np.asarray(field_grid.spacing)
    noise = rng.standard_normal((3, *field_grid.shape))
    velocity = np.stack([ndimage.gaussian_filter(c, smoothness_mm / spacing, mode="wrap") for c in noise])
    velocity *= velocity_std_mm / velocity.std()
    # RAS mm -> voxel units along i, j, k (the grid's axes need not be RAS-aligned), and back
    with torch.no_grad():
        ddf = integrate(from_world_mm(velocity, field_grid.affine).float())
    return to_world_mm(ddf, field_grid.affine)


# ---------------------------------------------------------------------------------------------
# Contrasts, slice planes and rendering
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contrast:
    """Signal as a piecewise-linear function of the template T1 value (0 background .. 255 WM)."""

    name: str
    description: str
    series_number: int
    knots: tuple[float, ...]
    signal: tuple[float, ...]
    noise: float  # Rician sigma, relative to the 99.5th percentile of the brain's signal
    sequence: dict

    def __call__(self, t1: np.ndarray) -> np.ndarray:
        return np.interp(t1, self.knots, self.signal).astype(np.float32)


# template T1 values: brain edge 28, pure CSF ~60, GM ~170, WM ~215
CONTRASTS = {
    "T1w": Contrast(
        "T1w",
        "T1w_MPRAGE_demo",
        2,
        (0, 255),
        (0.0, 1.0),
        0.02,
        {
            "ScanningSequence": ["GR", "IR"],
            "SequenceVariant": ["SK", "SP", "MP"],
            "MRAcquisitionType": "3D",
            "RepetitionTime": "2300",
            "EchoTime": "2.98",
            "InversionTime": "900",
            "FlipAngle": "9",
        },
    ),
    "T2w": Contrast(
        "T2w",
        "T2w_demo",
        5,
        (0, 28, 60, 100, 170, 215, 255),
        (0.0, 0.9, 1.0, 0.85, 0.5, 0.33, 0.3),
        0.025,
        {
            "ScanningSequence": "SE",
            "SequenceVariant": ["SK", "SP"],
            "MRAcquisitionType": "2D",
            "RepetitionTime": "5000",
            "EchoTime": "90",
            "FlipAngle": "150",
            "EchoTrainLength": "16",
        },
    ),
    "PDw": Contrast(
        "PDw",
        "PDw_demo",
        7,
        (0, 28, 60, 120, 170, 215, 255),
        (0.0, 0.8, 0.9, 0.85, 0.8, 0.66, 0.62),
        0.02,
        {
            "ScanningSequence": "SE",
            "SequenceVariant": ["SK", "SP"],
            "MRAcquisitionType": "2D",
            "RepetitionTime": "3000",
            "EchoTime": "12",
            "FlipAngle": "90",
            "EchoTrainLength": "8",
        },
    ),
}
LOCALIZER = Contrast(
    "localizer",
    "localizer",
    1,
    (0, 255),
    (0.0, 1.0),
    0.04,
    {
        "ScanningSequence": "GR",
        "SequenceVariant": "SP",
        "MRAcquisitionType": "2D",
        "RepetitionTime": "8.6",
        "EchoTime": "4",
        "FlipAngle": "20",
    },
)

# (row direction, column direction) in LPS of the standard planes
PLANES = {"axial": ((1, 0, 0), (0, 1, 0)), "coronal": ((1, 0, 0), (0, 0, -1)), "sagittal": ((0, 1, 0), (0, 0, -1))}
# synthetic subject n uses SUBJECT_PLANS[n % 4]: contrast, plane, tilt about the row direction (deg)
SUBJECT_PLANS = (("T1w", "axial", 0.0), ("T2w", "sagittal", 8.0), ("PDw", "axial", 15.0), ("T1w", "coronal", 0.0))


def plane_directions(plane: str, tilt_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions (LPS) of a standard plane tilted about its row direction."""
    row, col = (np.asarray(v, dtype=float) for v in PLANES[plane])
    normal = np.cross(row, col)
    angle = np.deg2rad(tilt_deg)
    return row, np.cos(angle) * col + np.sin(angle) * normal


def stack_around(
    points_ras: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    spacing: float,
    slice_spacing: float,
    slice_thickness: float,
    margin_mm: float = FOV_MARGIN_MM,
) -> SliceStack:
    """The smallest stack of the given orientation covering ``points_ras`` plus ``margin_mm``."""
    normal = np.cross(row, col)
    frame = np.stack([row, col, normal])
    along = (points_ras @ LPS_TO_RAS) @ frame.T  # LPS coordinates projected on the frame axes
    lo, hi = along.min(axis=0) - margin_mm, along.max(axis=0) + margin_mm
    steps = np.array([spacing, spacing, slice_spacing])
    counts = np.ceil((hi - lo) / steps).astype(int) + 1
    centre = frame.T @ ((lo + hi) / 2)
    first = centre - frame.T @ ((counts - 1) * steps / 2)
    return SliceStack(
        tuple(row),
        tuple(col),
        (spacing, spacing),
        int(counts[1]),
        int(counts[0]),
        int(counts[2]),
        tuple(first),
        slice_spacing,
        slice_thickness,
    )


def centred_slice(
    centre_ras: np.ndarray, row: np.ndarray, col: np.ndarray, spacing: float, fov_mm: float, thickness: float
) -> SliceStack:
    """One square slice of side ``fov_mm`` centred on ``centre_ras`` (a localiser slice)."""
    n = int(np.ceil(fov_mm / spacing))
    first = LPS_TO_RAS @ centre_ras - (n - 1) / 2 * spacing * (row + col)
    return SliceStack(tuple(row), tuple(col), (spacing, spacing), n, n, 1, tuple(first), thickness, thickness)


def _sample_points(
    template_affine: np.ndarray, warp: SubjectWarp, grid: Grid, k: int, offset: float = 0.0
) -> np.ndarray:
    """Template voxel coordinates ``(3, n)`` of ``D(A x)`` for the voxel centres ``x`` of slice ``k``
    of ``grid``, moved by ``offset`` mm along the slice normal."""
    ij = np.indices(grid.shape[:2], dtype=float).reshape(2, -1)
    voxels = np.vstack([ij, np.full(ij.shape[1], float(k))])
    centres = (grid.affine[:3, :3] @ voxels + grid.affine[:3, 3:4]).T
    k_direction = grid.affine[:3, 2] / np.linalg.norm(grid.affine[:3, 2])
    return apply_affine(np.linalg.inv(template_affine), warp(centres + offset * k_direction)).T


def render(signal: np.ndarray, template_affine: np.ndarray, warp: SubjectWarp, grid: Grid, slice_thickness: float):
    """Sample ``signal(D(A x))`` for every voxel ``x`` of ``grid``, averaged over the slice
    thickness (an odd number of samples about 1 mm apart along the grid's third axis); ``signal``
    is an array on the template grid (``template_affine``)."""
    n_samples = max(1, int(round(slice_thickness)))
    n_samples += 1 - n_samples % 2
    offsets = ((np.arange(n_samples) + 0.5) / n_samples - 0.5) * slice_thickness
    image = np.zeros(grid.shape, dtype=np.float32)
    for k in range(grid.shape[2]):
        total = sum(
            ndimage.map_coordinates(signal, _sample_points(template_affine, warp, grid, k, offset), order=1, cval=0.0)
            for offset in offsets
        )
        image[:, :, k] = (total / n_samples).reshape(grid.shape[:2])
    return image


def render_labels(
    label_maps: list[np.ndarray], template_affine: np.ndarray, warp: SubjectWarp, grid: Grid
) -> list[np.ndarray]:
    """``labels(D(A x))`` of each label map at every voxel centre ``x`` of ``grid`` (nearest
    neighbour: label-preserving); the points are computed once for all maps."""
    out = [np.zeros(grid.shape, dtype=np.int32) for _ in label_maps]
    for k in range(grid.shape[2]):
        where = _sample_points(template_affine, warp, grid, k)
        for labels, rendered in zip(label_maps, out):
            rendered[:, :, k] = ndimage.map_coordinates(labels, where, order=0, cval=0).reshape(grid.shape[:2])
    return out


def scanner_effects(
    rng: np.random.Generator, image: np.ndarray, grid: Grid, centre: np.ndarray, noise: float, reference_level: float
) -> np.ndarray:
    """Smooth multiplicative bias (quadratic in RAS, within about +-30 %) and Rician noise."""
    world = (grid.world_coordinates() - centre) / 100.0
    gradient = rng.normal(0.0, 0.1, 3)
    curvature = rng.normal(0.0, 0.05, (3, 3))
    log_bias = world @ gradient + np.einsum("...a,ab,...b->...", world, (curvature + curvature.T) / 2, world)
    biased = image * np.exp(np.clip(log_bias, -0.3, 0.3))
    sigma = noise * reference_level
    real = biased + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def to_stored(image: np.ndarray, reference_level: float, top: int = 3000) -> np.ndarray:
    """Scale so that ``reference_level`` maps to ``top``; round and clip to 12 bits."""
    return np.clip(np.round(image * (top / reference_level)), 0, 4095).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# The cohort
# ---------------------------------------------------------------------------------------------


def _uid(seed: int, *parts) -> str:
    return generate_uid(entropy_srcs=["unireg-demo", str(seed), *[str(p) for p in parts]])


def _common_tags(seed: int, number: int, subject: str) -> dict:
    """Patient, study and equipment tags: plausible, obviously fake, never to reach an output."""
    return {
        "SpecificCharacterSet": "ISO_IR 100",
        "PatientName": f"Demo^Subject{number:02d}",
        "PatientID": f"DEMO{number:02d}",
        "PatientBirthDate": f"19{60 + 3 * number % 40:02d}0{1 + number % 9}15",
        "PatientSex": "FM"[number % 2],
        "PatientAge": f"{40 + 3 * number % 40:03d}Y",
        "PatientWeight": "70",
        "StudyInstanceUID": _uid(seed, subject, "study"),
        "StudyID": f"{number}",
        "StudyDate": "20200101",
        "StudyTime": f"{8 + number % 10:02d}0000",
        "AccessionNumber": f"DEMOACC{number:02d}",
        "StudyDescription": "unireg demo head",
        "ReferringPhysicianName": "Demo^Referrer",
        "InstitutionName": "unireg demo hospital",
        "OperatorsName": "Demo^Operator",
        "FrameOfReferenceUID": _uid(seed, subject, "frame"),
        "PositionReferenceIndicator": "",
        "Modality": "MR",
        "Manufacturer": "unireg (synthetic demo)",
        "ManufacturerModelName": "demo",
        "SoftwareVersions": f"unireg {__version__}",
        "MagneticFieldStrength": "3",
        "ImagingFrequency": "123.2",
        "ImagedNucleus": "1H",
        "PatientPosition": "HFS",
        "BodyPartExamined": "HEAD",
    }


def _series_tags(common: dict, seed: int, subject: str, contrast: Contrast, localizer: bool = False) -> dict:
    tags = dict(common)
    tags.update(contrast.sequence)
    tags.update(
        {
            "SeriesInstanceUID": _uid(seed, subject, "series", contrast.description),
            "SeriesNumber": contrast.series_number,
            "SeriesDescription": contrast.description,
            "ProtocolName": contrast.description,
            "SeriesDate": common["StudyDate"],
            "SeriesTime": common["StudyTime"],
            "AcquisitionNumber": 1,
            "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "M"],
            "WindowCenter": "1500",
            "WindowWidth": "3000",
        }
    )
    return tags


@dataclass(frozen=True)
class _Template:
    t1: Image
    labels: Image | None  # the reference labels on the template grid; None: no reference labels
    brain: np.ndarray  # the template brain (tissue labels > 0), uint8
    brain_centre: np.ndarray  # RAS mm
    brain_corners: np.ndarray  # (8, 3) RAS mm
    field_grid: Grid


def _load_template(reference_atlas: str | None, atlas_spacing: float) -> _Template:
    t1, tissue = mni_tissue_labels()
    if reference_atlas == ALLEN_ATLAS:
        from .atlas_allen import structure_labels

        labels = structure_labels(t1.grid, atlas_spacing)
    else:
        labels = tissue if reference_atlas == TISSUE_ATLAS else None
    brain = np.argwhere(tissue.data > 0)  # the field of view does not depend on the reference labels
    lo, hi = brain.min(axis=0), brain.max(axis=0)
    corners = apply_affine(t1.affine, np.array([np.where(bits, hi, lo) for bits in np.ndindex(2, 2, 2)], dtype=float))
    return _Template(
        t1,
        labels,
        (tissue.data > 0).astype(np.uint8),
        corners.mean(axis=0),
        corners,
        grid_with_spacing(t1.grid, FIELD_SPACING_MM),
    )


def _synthetic_subject(
    folder: Path,
    template: _Template,
    index: int,
    number: int,
    subject: str,
    *,
    seed: int,
    spacing: float,
    slice_thickness: float,
    localizer: bool,
) -> tuple[dict, Image | None]:
    """Write one synthetic subject's series; return its description and reference labels (None
    when the template has none)."""
    contrast_name, plane, tilt = SUBJECT_PLANS[index % len(SUBJECT_PLANS)]
    contrast = CONTRASTS[contrast_name]
    rng = np.random.default_rng([seed, number])
    affine = random_affine(rng, template.brain_centre)
    warp = SubjectWarp(
        affine, DisplacementField(random_displacement(rng, template.field_grid), template.field_grid.affine)
    )
    # where the warped brain lies in the subject's world (D moves it by a few mm: the margin)
    corners = apply_affine(np.linalg.inv(affine), template.brain_corners)
    row, col = plane_directions(plane, tilt)
    stack = stack_around(corners, row, col, spacing, slice_thickness, slice_thickness).as_written()
    grid = stack.nifti_grid()

    in_plane_sigma = 0.5 * np.sqrt(max(spacing**2 - 1.0, 0.0)) / np.asarray(template.t1.spacing)
    signal = ndimage.gaussian_filter(contrast(template.t1.data), in_plane_sigma)
    image = render(signal, template.t1.affine, warp, grid, stack.slice_thickness)
    maps = [template.brain] + ([] if template.labels is None else [template.labels.data])
    brain, *labels = render_labels(maps, template.t1.affine, warp, grid)
    level = float(np.percentile(image[brain > 0], 99.5))
    labels = labels[0] if labels else None
    centre = corners.mean(axis=0)
    stored = to_stored(scanner_effects(rng, image, grid, centre, contrast.noise, level), level)

    common = _common_tags(seed, number, subject)
    series = []
    if localizer:
        tags = _series_tags(common, seed, subject, LOCALIZER, localizer=True)
        signal = ndimage.gaussian_filter(LOCALIZER(template.t1.data), in_plane_sigma)
        # subject 1 is T1w: the localiser has the same signal scale, so the same `level`
        for n, scout_plane in enumerate(("sagittal", "coronal", "axial")):
            scout = centred_slice(
                centre, *plane_directions(scout_plane), spacing, fov_mm=240.0, thickness=8.0
            ).as_written()
            scout_image = render(signal, template.t1.affine, warp, scout.nifti_grid(), 8.0)
            scout_image = scanner_effects(rng, scout_image, scout.nifti_grid(), centre, LOCALIZER.noise, level)
            write_dicom_series(
                folder,
                Image(to_stored(scout_image, level), scout.nifti_grid().affine),
                scout,
                tags,
                first_instance=n + 1,
            )
        series.append(_series_entry(tags, 3, orientation="sagittal, coronal, axial (one slice each)"))
    tags = _series_tags(common, seed, subject, contrast)
    write_dicom_series(folder, Image(stored, grid.affine), stack, tags)
    orientation = plane if tilt == 0 else f"{plane}, tilted {tilt:g} deg"
    series.append(_series_entry(tags, stack.n_slices, orientation=orientation))
    acquisition_3d = tags["MRAcquisitionType"] == "3D"
    reference = None if labels is None else Image(labels, grid.affine, is_label=True)
    if acquisition_3d and reference is not None:
        reference = reorient_to_ras(reference)
    displacement = np.linalg.norm(warp.field.data, axis=0)
    info = {
        "source": "MNI ICBM152 2009a T1 template (nilearn), randomly deformed",
        "contrast": contrast.name,
        "orientation": orientation,
        "series": series,
        "main_series": tags["SeriesInstanceUID"],
        **_grid_entry(stack, acquisition_3d),
        "subject_to_mni_affine": affine.round(10).tolist(),
        "displacement_mm": {
            "max": round(float(displacement.max()), 3),
            "rms": round(float(np.sqrt(np.mean(displacement**2))), 3),
        },
        "jacobian_min": round(_jacobian_min(warp), 4),
    }
    return info, reference


def _jacobian_min(warp: SubjectWarp) -> float:
    """Smallest Jacobian determinant of ``D`` on its grid (> 0: no folding)."""
    return float(jacobian_determinant(from_world_mm(warp.field.data, warp.field.affine)).min())


def _nibabel_subject(folder: Path, number: int, subject: str, *, seed: int) -> dict:
    """nibabel's real low-resolution T1 (LAS, 2 mm) as an axial series; exact values via RescaleIntercept."""
    image = load_image(Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii")
    stack = SliceStack.from_grid(image.grid).as_written()
    intercept = float(np.floor(image.data.min()))
    tags = _series_tags(
        _common_tags(seed, number, subject),
        seed,
        subject,
        replace(CONTRASTS["T1w"], description="T1w_nibabel_anatomical"),
    )
    tags.update(
        {"MRAcquisitionType": "3D", "RescaleIntercept": format_ds(intercept), "RescaleSlope": "1", "RescaleType": "US"}
    )
    write_dicom_series(folder, image.with_data(image.data - intercept, affine=stack.nifti_grid().affine), stack, tags)
    return {
        "source": "nibabel tests/data/anatomical.nii (a real low-resolution T1)",
        "contrast": "T1w",
        "orientation": "axial",
        "series": [_series_entry(tags, stack.n_slices, orientation="axial")],
        "main_series": tags["SeriesInstanceUID"],
        **_grid_entry(stack, acquisition_3d=True),
        "reference_note": "real subject: no reference labels exist for it",
    }


def _grid_entry(stack: SliceStack, acquisition_3d: bool) -> dict:
    grid = stack.nifti_grid(acquisition_3d)
    return {
        "acquisition": "3D" if acquisition_3d else "2D",
        "shape": list(grid.shape),
        "spacing_mm": [round(s, 6) for s in grid.spacing],
        "nifti_orientation": "".join(grid.orientation),
        "nifti_affine": grid.affine.round(6).tolist(),
    }


def _series_entry(tags: dict, n_files: int, orientation: str) -> dict:
    return {
        "description": tags["SeriesDescription"],
        "series_number": int(tags["SeriesNumber"]),
        "series_uid": tags["SeriesInstanceUID"],
        "image_type": "\\".join(tags["ImageType"]),
        "n_files": n_files,
        "orientation": orientation,
    }


def make_demo_cohort(
    out_dir: str | Path,
    n_subjects: int | None = None,
    spacing: float | None = None,
    slice_thickness: float | None = None,
    seed: int = 0,
    low_res: bool = False,
    real_subject: bool = False,
    reference_atlas: str | None = DEFAULT_ATLAS,
    atlas_spacing: float = 2.0,
) -> dict:
    """Write the demo cohort (DICOM series, reference labels, ``cohort.tsv``) into ``out_dir``.

    Args:
        out_dir: created if needed; its ``dicom/``, ``reference/``, ``cohort.tsv`` and
            ``demo.json`` are replaced when they come from an earlier demo (``demo.json``
            present), else existing ``dicom/`` or ``reference/`` folders are an error.
        n_subjects: synthetic subjects in ``cohort.tsv`` (default 3; 2 with ``low_res``).
        spacing: in-plane pixel spacing in mm (default 1.5; 3.0 with ``low_res``).
        slice_thickness: slice thickness = spacing between slices, mm (default 3.0; 4.0 with ``low_res``).
        seed: the same seed gives byte-identical files.
        low_res: the small, fast version for CI (coarse voxels; the deformations are the same
            as at full resolution).
        real_subject: also write nibabel's real low-resolution T1 as the last subject. It is a
            partial field of view (66 x 82 x 50 mm, the centre of a brain), which preprocessing
            refuses by design (:data:`unireg.preprocess.MIN_FOV_FRACTION`), so the shipped demo leaves
            it out; tests use it.
        reference_atlas: whose labels are the reference labels, a built-in atlas
            (:data:`unireg.defaults.BUILTIN_ATLASES`), or None for none (``reference`` is then
            empty in ``cohort.tsv``: e.g. for a cohort segmented with an atlas of your own).
        atlas_spacing: the spacing of the atlas the cohort is segmented with: ``mni2009a-allen``
            drops structures too small at that spacing, and so do its reference labels.

    Returns:
        What ``demo.json`` holds: ``seed``, settings, ``cohort`` (the TSV path) and ``subjects``:
        one dict per subject (``subject``, ``dicom``, ``reference`` relative to ``out_dir`` or
        None, ``series`` with their descriptions and UIDs, ``main_series`` UID, the NIfTI grid
        dcm2niix makes of it, and for synthetic subjects the affine ``A`` and displacement size),
        plus ``out_dir``.
    """
    n_subjects = (2 if low_res else 3) if n_subjects is None else int(n_subjects)
    spacing = float(spacing if spacing is not None else 3.0 if low_res else 1.5)
    slice_thickness = float(slice_thickness if slice_thickness is not None else 4.0 if low_res else 3.0)
    n_synthetic = n_subjects
    n_subjects += int(real_subject)
    if n_subjects < 1 or n_synthetic < 0 or spacing <= 0 or slice_thickness <= 0:
        raise UniregError("demo cohort: at least one subject, and spacing, slice_thickness > 0")
    if reference_atlas is not None and reference_atlas not in BUILTIN_ATLASES:
        raise UniregError(
            f"demo cohort: reference labels come from a built-in atlas ({', '.join(BUILTIN_ATLASES)}), "
            f"not {reference_atlas!r}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier_demo = (out_dir / DEMO_FILE).is_file()
    for name in ("dicom", "reference"):
        if (out_dir / name).exists() and not earlier_demo:
            raise UniregError(f"{name}/ exists and was not written by the demo; choose an empty folder", path=out_dir)

    work = Path(tempfile.mkdtemp(prefix=".demo-", dir=out_dir))
    try:
        template = _load_template(reference_atlas, atlas_spacing) if n_synthetic > 0 else None
        subjects = []
        for number in range(1, n_subjects + 1):
            subject = f"demo{number:02d}"
            dicom = f"dicom/{subject}"
            if number <= n_synthetic:
                info, labels = _synthetic_subject(
                    work / dicom,
                    template,
                    number - 1,
                    number,
                    subject,
                    seed=seed,
                    spacing=spacing,
                    slice_thickness=slice_thickness,
                    localizer=number == 1,
                )
                reference = None if labels is None else f"reference/sub-{subject}_labels.nii.gz"
                if labels is not None:
                    save_image(labels, work / reference)
            else:
                info, reference = _nibabel_subject(work / dicom, number, subject, seed=seed), None
            subjects.append({"subject": subject, "dicom": dicom, "reference": reference, **info})
        for name in ("dicom", "reference"):
            if (out_dir / name).exists():
                shutil.rmtree(out_dir / name)
            if (work / name).exists():
                os.replace(work / name, out_dir / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = ["subject\tdicom\treference"] + [f"{s['subject']}\t{s['dicom']}\t{s['reference'] or ''}" for s in subjects]
    write_text_atomic(out_dir / "cohort.tsv", "\n".join(rows) + "\n")
    result = {
        "seed": seed,
        "low_res": low_res,
        "spacing_mm": spacing,
        "slice_thickness_mm": slice_thickness,
        "reference_labels": None
        if reference_atlas is None
        else {"atlas": reference_atlas, "atlas_spacing_mm": float(atlas_spacing)},
        "cohort": "cohort.tsv",
        "subjects": subjects,
    }
    write_text_atomic(out_dir / DEMO_FILE, json.dumps(result, indent=2) + "\n")
    return dict(result, out_dir=str(out_dir))
