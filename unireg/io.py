"""The one image type that crosses module boundaries, and NIfTI input/output.

Conventions (the single source of truth, see README "Conventions"):

* ``Image.data`` is a 3-D array indexed ``[i, j, k]`` in the file's voxel order.
* ``Image.affine`` is the 4x4 voxel-to-world matrix of NIfTI: world = affine @ [i, j, k, 1],
  world coordinates are RAS+ millimetres (x grows to the Right, y Anterior, z Superior).
* A label map is an ``Image`` with ``is_label=True`` and integer data; geometry functions
  never interpolate its values (see :mod:`unireg.transforms`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import UniregError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Grid:
    """A voxel grid in world space: ``shape`` (3 ints) and its 4x4 voxel-to-world ``affine``."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64).reshape(4, 4))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Axis codes such as ``('R', 'A', 'S')``: the world direction each voxel axis grows to."""
        return tuple(nib.aff2axcodes(self.affine))

    def world_coordinates(self) -> np.ndarray:
        """World (RAS mm) coordinates of every voxel centre, shape ``(*shape, 3)``."""
        idx = np.indices(self.shape, dtype=np.float64).reshape(3, -1)
        world = self.affine[:3, :3] @ idx + self.affine[:3, 3:4]
        return world.T.reshape(*self.shape, 3)

    def corners_world(self) -> np.ndarray:
        """World coordinates of the 8 corner voxel centres, shape ``(8, 3)``."""
        lo, hi = np.zeros(3), np.asarray(self.shape, dtype=float) - 1
        corners = np.array(
            [[(hi if b else lo)[a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)], dtype=float
        )
        return apply_affine(self.affine, corners)


@dataclass(frozen=True)
class Image:
    """Voxel data with its affine and where it came from. Never pass a bare array instead."""

    data: np.ndarray
    affine: np.ndarray
    path: str | None = None
    is_label: bool = False
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        data = np.asarray(self.data)
        if data.ndim != 3:
            raise UniregError(f"expected a 3-D image, got shape {data.shape}", path=self.path)
        affine = np.asarray(self.affine, dtype=np.float64).reshape(4, 4)
        if not np.all(np.isfinite(affine)):
            raise UniregError(
                "the affine (voxel-to-world matrix) has NaN/Inf values; fix the header's sform/qform", path=self.path
            )
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", affine)

    @property
    def grid(self) -> Grid:
        return Grid(self.data.shape, self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    @property
    def orientation(self) -> tuple[str, str, str]:
        return self.grid.orientation

    def with_data(self, data: np.ndarray, *, is_label: bool | None = None, affine: np.ndarray | None = None) -> Image:
        """A new image on the same grid (or ``affine``) with other voxel values."""
        return replace(
            self,
            data=data,
            affine=self.affine if affine is None else affine,
            is_label=self.is_label if is_label is None else is_label,
            meta=dict(self.meta),
        )


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 matrix to points of shape ``(..., 3)``."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def load_image(
    path: str | Path, *, label: bool = False, subject: str | None = None, max_voxels: int | None = None
) -> Image:
    """Load a NIfTI file as a 3-D :class:`Image`.

    A 4-D file with a single volume is squeezed to 3-D; more volumes, or fewer than three
    dimensions, give a :class:`UniregError` naming the file, as does an affine with NaN/Inf
    values. Intensities load as float32, label maps as their integer values (non-integer label
    values are an error). ``max_voxels``: refuse larger images from the header alone, before
    their data are read (a corrupt or huge header must not exhaust memory).
    """
    path = Path(path)
    if not path.is_file():
        raise UniregError("file not found", subject=subject, path=path)
    try:
        img = nib.load(str(path))
        shape = img.shape
    except Exception as exc:  # nibabel raises many types for broken files
        raise UniregError(f"cannot read as NIfTI ({type(exc).__name__}: {exc})", subject=subject, path=path) from exc
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if max_voxels is not None and n_voxels > max_voxels:
        raise UniregError(
            f"image has {n_voxels:,} voxels (shape {tuple(shape)}), more than the {max_voxels:,} "
            "supported; downsample it first",
            subject=subject,
            path=path,
        )
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise UniregError(f"cannot read as NIfTI ({type(exc).__name__}: {exc})", subject=subject, path=path) from exc
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise UniregError(
            f"expected a 3-D image, got shape {tuple(shape)}; extract one volume first", subject=subject, path=path
        )
    if min(raw.shape) < 2:
        raise UniregError(f"image is not a volume (shape {tuple(shape)})", subject=subject, path=path)
    if label:
        values = np.asarray(raw)
        if not np.issubdtype(values.dtype, np.integer):
            if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
                raise UniregError("label map has non-integer values", subject=subject, path=path)
        data = values.astype(np.int32)
    else:
        data = np.asarray(raw, dtype=np.float32)
    meta = {"source_path": str(path), "source_shape": tuple(int(s) for s in shape)}
    try:
        return Image(data=data, affine=img.affine, path=str(path), is_label=label, meta=meta)
    except UniregError as err:
        err.with_context(subject=subject)
        raise


def save_image(image: Image, path: str | Path) -> Path:
    """Write ``image`` as NIfTI atomically (temp file + rename in the same folder).

    Label maps are stored as the smallest fitting integer type, intensities as float32.
    The header's description fields are left empty, so no free text leaks into outputs.
    """
    path = Path(path)
    if not str(path).endswith(NIFTI_SUFFIXES):
        raise UniregError("output must end in .nii or .nii.gz", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.is_label:
        data = image.data
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        dtype = np.uint8 if lo >= 0 and hi < 256 else np.int16 if -32768 <= lo and hi < 32768 else np.int32
        data = data.astype(dtype)
    else:
        data = image.data.astype(np.float32)
    nii = nib.Nifti1Image(data, image.affine)
    nii.set_qform(image.affine, code=1)
    nii.set_sform(image.affine, code=1)
    nii.header.set_xyzt_units("mm", "sec")
    return _save_atomic(nii, path)


def save_displacement(displacement_mm: np.ndarray, affine: np.ndarray, path: str | Path, *, lps: bool = False) -> Path:
    """Write a displacement field ``(3, X, Y, Z)`` in RAS mm as a NIfTI vector image (X, Y, Z, 1, 3).

    ``lps=True`` negates the x and y components: the ITK/ANTs displacement-field convention.
    """
    field = np.asarray(displacement_mm, dtype=np.float32)
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"displacement must be (3, X, Y, Z), got {field.shape}")
    if lps:
        field = field * np.array([-1.0, -1.0, 1.0], dtype=np.float32)[:, None, None, None]
    data = np.moveaxis(field, 0, -1)[:, :, :, None, :]
    nii = nib.Nifti1Image(data, affine)
    nii.header.set_intent("vector")
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    nii.header.set_xyzt_units("mm", "sec")
    return _save_atomic(nii, Path(path))


def load_displacement(path: str | Path, *, subject: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a field written by :func:`save_displacement` (RAS): ``(3, X, Y, Z)`` mm and its affine."""
    try:
        nii = nib.load(str(path))
        data = np.asarray(nii.dataobj, dtype=np.float32)
    except Exception as exc:
        raise UniregError(f"cannot read displacement field ({type(exc).__name__})", subject=subject, path=path) from exc
    if data.ndim != 5 or data.shape[3:] != (1, 3):
        raise UniregError(
            f"not a displacement field (shape {data.shape}, expected X,Y,Z,1,3)", subject=subject, path=path
        )
    return np.moveaxis(data[:, :, :, 0, :], -1, 0), nii.affine


def publish(tmp: str | Path, path: str | Path) -> None:
    """Give a finished temporary file normal permissions (umask) and rename it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_atomic(path: str | Path, write, suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A killed job never leaves a complete-looking ``path``: either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _save_atomic(nii, path: Path) -> Path:
    return write_atomic(path, lambda tmp: nib.save(nii, tmp), ".nii.gz" if str(path).endswith(".nii.gz") else ".nii")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small text file (JSON, TSV, transform) atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def read_label_table(path: str | Path) -> dict[int, str]:
    """Read a TSV whose first columns are ``index`` and ``name`` (a header row is required; any
    further columns, such as an atlas's ``side`` or ``abbreviation``, are left to their readers)."""
    path = Path(path)
    if not path.is_file():
        raise UniregError("label table not found", path=path)
    lines = [ln.rstrip("\n").split("\t") for ln in path.read_text().splitlines() if ln.strip()]
    if not lines or [c.strip().lower() for c in lines[0][:2]] != ["index", "name"]:
        raise UniregError("label table must be a TSV whose header starts with 'index<TAB>name'", path=path)
    table = {}
    for n, row in enumerate(lines[1:], start=2):
        try:
            idx = int(row[0])
            name = row[1].strip()
        except (ValueError, IndexError) as exc:
            raise UniregError(f"line {n}: expected an integer index and a name", path=path) from exc
        if idx in table:
            raise UniregError(f"line {n}: label {idx} listed twice", path=path)
        table[idx] = name
    return table


def write_label_table(
    path: str | Path, table: dict[int, str], columns: dict[str, dict[int, object]] | None = None
) -> None:
    """Write ``index``, ``name`` and then each of ``columns`` (column name -> value per index)."""
    columns = columns or {}
    rows = ["\t".join(["index", "name", *columns])]
    rows += ["\t".join([str(k), v, *(str(values[k]) for values in columns.values())]) for k, v in sorted(table.items())]
    write_text_atomic(path, "\n".join(rows) + "\n")


# --------------------------------------------------------------------------- affine matrix files
# (conventions in unireg.affine: fixed(atlas) world -> moving(subject) world, RAS mm)

LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_affine_txt(path, matrix: np.ndarray) -> str:
    """The 4x4 RAS matrix as plain text (numpy ``loadtxt`` reads it back)."""
    header = (
        "unireg affine: fixed(atlas) world -> moving(subject) world, RAS+ mm, applied to column vectors [x y z 1]\n"
    )
    rows = "\n".join(" ".join(f"{v:.10g}" for v in row) for row in matrix)
    text = "# " + header + rows + "\n"
    write_text_atomic(path, text)
    return text


def read_affine_txt(path) -> np.ndarray:
    matrix = np.loadtxt(path, comments="#")
    if matrix.shape != (4, 4):
        raise UniregError(f"expected a 4x4 matrix, found shape {matrix.shape}", path=path)
    return matrix


def write_itk_affine(path, matrix: np.ndarray) -> str:
    """Write ``matrix`` (RAS, fixed -> moving) as an ITK ``AffineTransform_double_3_3`` text file (LPS)."""
    lps = LPS_FLIP @ matrix @ LPS_FLIP
    params = list(lps[:3, :3].ravel()) + list(lps[:3, 3])
    text = (
        "#Insight Transform File V1.0\n#Transform 0\n"
        "Transform: AffineTransform_double_3_3\n"
        f"Parameters: {' '.join(f'{v:.10g}' for v in params)}\n"
        "FixedParameters: 0 0 0\n"
    )
    write_text_atomic(path, text)
    return text


def read_itk_affine(path) -> np.ndarray:
    """Read an ITK affine text file (as written by ITK/ANTs or :func:`write_itk_affine`) into RAS."""
    fields = {}
    with open(path) as fh:
        for line in fh:
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields[key.strip()] = value.split()
    try:
        params = np.array(fields["Parameters"], dtype=float)
        center = np.array(fields.get("FixedParameters", ["0", "0", "0"]), dtype=float)
    except (KeyError, ValueError) as exc:
        raise UniregError("not an ITK affine transform file", path=path) from exc
    lin, trans = params[:9].reshape(3, 3), params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = lin
    lps[:3, 3] = trans + center - lin @ center
    return LPS_FLIP @ lps @ LPS_FLIP
