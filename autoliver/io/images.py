"""Reading and writing scans without losing a millimetre of geometry.

Arrays come out as (z, y, x) — or (t, z, y, x) for a 4D file — exactly as SimpleITK lays them out;
:class:`Geometry` keeps ITK's (x, y, z) spacing, origin and direction so a segmentation can be
written back onto the input's grid.

Files whose NIfTI direction cosines are not orthonormal (ITK refuses them) are read through
nibabel; the direction is re-orthonormalised for computation (with a warning), and writing a
segmentation like such an input reuses the input's own NIfTI header and affine, so the output
lines up with the input voxel for voxel in any viewer.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoliver.errors import UserError
from autoliver.schema import publish, temporary_prefix

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
# Labels are written with the smallest type that holds them; uint8 covers 0/1/2.
LABEL_DTYPE = np.uint8


def file_ending(path: str | os.PathLike) -> str:
    """'.nii.gz', '.nrrd', … or '' for a DICOM folder; raises for an unsupported file."""
    p = Path(path)
    if p.is_dir():
        return ""
    name = p.name.lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    if name.endswith(".dcm"):
        return ".dcm"
    raise UserError(
        f"{path}: unsupported file type; autoliver reads {', '.join(SUPPORTED_ENDINGS)} and DICOM series folders."
    )


@dataclass(frozen=True)
class Geometry:
    """Where the voxels lie: ITK order (x, y, z), mm, direction row-major 3×3 (LPS world)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    shape_zyx: tuple[int, int, int]

    @property
    def spacing_zyx_mm(self) -> tuple[float, float, float]:
        return tuple(reversed(self.spacing))

    def matches(self, other: "Geometry", tol: float = 1e-3) -> bool:
        return (
            self.shape_zyx == other.shape_zyx
            and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=tol, atol=max(tol, 1e-2))
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def orientation(self) -> str:
        """Three-letter code of the RAS+-style axis letters (e.g. 'LPS', 'RAS', 'LAS')."""
        d = np.asarray(self.direction).reshape(3, 3)
        # ITK directions are in LPS world coordinates; letters name where each axis points.
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        out = []
        for col in range(3):
            v = d[:, col]
            k = int(np.argmax(np.abs(v)))
            out.append(letters[k][0] if v[k] > 0 else letters[k][1])
        return "".join(out)

    def to_sitk(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass
class Image:
    """Voxels plus where they came from. ``array`` is (z, y, x) or (t, z, y, x)."""

    array: np.ndarray
    geometry: Geometry
    path: str = ""
    ending: str = ".nii.gz"
    # Set only for files read through nibabel (non-orthonormal direction): the original affine
    # and header, so that a segmentation written "like" this image keeps them exactly.
    nifti_affine: np.ndarray | None = None
    nifti_header: object | None = None

    @property
    def spacing_zyx_mm(self):
        return self.geometry.spacing_zyx_mm


def _geometry_of(img: sitk.Image) -> Geometry:
    dim = img.GetDimension()
    size = img.GetSize()
    spacing, origin, direction = img.GetSpacing(), img.GetOrigin(), img.GetDirection()
    if dim == 4:  # keep the spatial 3D part; the 4th axis is time/phase
        direction = tuple(direction[r * 4 + c] for r in range(3) for c in range(3))
        spacing, origin, size = spacing[:3], origin[:3], size[:3]
    elif dim == 2:
        spacing, origin, size = (*spacing, 1.0), (*origin, 0.0), (*size, 1)
        direction = (direction[0], direction[1], 0.0, direction[2], direction[3], 0.0, 0.0, 0.0, 1.0)
    return Geometry(
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=tuple(float(d) for d in direction),
        shape_zyx=tuple(int(s) for s in reversed(size)),
    )


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise UserError(f"{folder}: no DICOM series found in this folder. Point -i at a folder of .dcm slices.")
    files_per_series = {s: reader.GetGDCMSeriesFileNames(str(folder), s) for s in series}
    # A folder may also hold a SEG or a scout; the image is the series with the most slices.
    best = max(files_per_series, key=lambda s: len(files_per_series[s]))
    if len(series) > 1:
        warnings.warn(f"{folder}: {len(series)} DICOM series found; reading the largest "
                      f"({len(files_per_series[best])} files).", stacklevel=3)
    reader.SetFileNames(files_per_series[best])
    return reader.Execute()


def _orthonormalise(direction: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(direction)
    return u @ vt


def _read_with_nibabel(path: Path) -> Image:
    import nibabel as nib

    nii = nib.load(str(path))
    data = np.asanyarray(nii.dataobj)
    affine = nii.affine.astype(np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction_ras = affine[:3, :3] / zooms
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = _orthonormalise(lps @ direction_ras)
    origin = lps @ affine[:3, 3]
    warnings.warn(
        f"{path}: direction cosines are not orthonormal (ITK refuses this file); read with nibabel and "
        "re-orthonormalised for processing. Segmentations written for it keep its original header.",
        stacklevel=3,
    )
    # nibabel arrays are (x, y, z[, t]); the pipeline's are (z, y, x) / (t, z, y, x).
    array = np.ascontiguousarray(data.T)
    geometry = Geometry(
        spacing=tuple(float(z) for z in zooms[:3]),
        origin=tuple(float(o) for o in origin),
        direction=tuple(float(d) for d in direction.ravel()),
        shape_zyx=tuple(int(s) for s in array.shape[-3:]),
    )
    return Image(array, geometry, str(path), file_ending(path), nifti_affine=nii.affine.copy(),
                 nifti_header=nii.header.copy())


def read_image(path: str | os.PathLike) -> Image:
    """Read a scan or label map. Raises UserError naming the file when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found.")
    ending = file_ending(path)
    try:
        if ending in ("", ".dcm"):
            folder = path if path.is_dir() else path.parent
            img = _read_dicom_series(folder)
            ending = ".nii.gz"  # segmentations of DICOM series are written as NIfTI (see README)
        else:
            img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        msg = str(e)
        if ending in (".nii", ".nii.gz") and ("orthonormal" in msg or "direction" in msg.lower()):
            return _read_with_nibabel(path)
        raise UserError(f"{path}: cannot read this image ({msg.strip().splitlines()[-1][:200]}). "
                        "Check that the file is complete and a supported format.") from None
    array = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise UserError(f"{path}: vector-valued (multi-component) pixels are not supported; "
                        "store each channel as its own file (_0000, _0001, …).")
    if array.ndim == 2:
        array = array[None]
    return Image(array, _geometry_of(img), str(path), ending)


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real ending last: SimpleITK picks the file format from it
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=file_ending(path) or ".nii.gz", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, *, compress: bool = True) -> None:
    """Write ``array`` (z, y, x) with ``geometry``, atomically (temporary name, then rename)."""
    path = Path(path)
    if tuple(array.shape[-3:]) != tuple(geometry.shape_zyx):
        raise ValueError(f"write_image({path}): array shape {array.shape} does not match geometry {geometry.shape_zyx}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    if array.ndim == 4:
        spacing = (*geometry.spacing, 1.0)
        origin = (*geometry.origin, 0.0)
        d = np.eye(4)
        d[:3, :3] = np.asarray(geometry.direction).reshape(3, 3)
        img.SetSpacing(spacing), img.SetOrigin(origin), img.SetDirection(tuple(d.ravel()))
    else:
        geometry.to_sitk(img)
    tmp = _atomic_target(path)
    try:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_like(path: str | os.PathLike, array: np.ndarray, like: Image) -> None:
    """Write ``array`` on the grid of ``like`` (same geometry; the input's own NIfTI header if it had one)."""
    path = Path(path)
    if like.nifti_affine is not None and file_ending(path) in (".nii", ".nii.gz"):
        import nibabel as nib

        header = like.nifti_header.copy()
        header.set_data_dtype(array.dtype)
        img = nib.Nifti1Image(np.ascontiguousarray(array.T), like.nifti_affine, header)
        tmp = _atomic_target(path)
        try:
            nib.save(img, str(tmp))
            publish(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    write_image(path, array, dataclasses.replace(like.geometry, shape_zyx=tuple(array.shape[-3:])))
