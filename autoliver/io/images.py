"""Reading and writing scans without losing a millimetre of geometry.

Arrays come out as (z, y, x) — or (t, z, y, x) for a 4D file — exactly as SimpleITK lays them out;
:class:`Geometry` keeps ITK's (x, y, z) spacing, origin and direction so a segmentation can be
written back onto the input's grid.

Files whose NIfTI direction cosines are not orthonormal (ITK refuses them) are read through
nibabel; the direction is re-orthonormalised for computation (with a warning), and writing a
segmentation like such an input reuses the input's own NIfTI header and affine, so the output
lines up with the input voxel for voxel in any viewer.

Reading refuses what would silently give wrong voxels (:mod:`autoliver.io.checks`): a NIfTI file
is decompressed to its end and its voxels taken as stored (ITK reads a truncated file, and NaN,
as zeros); a DICOM folder's series is chosen by SeriesInstanceUID and its slices must be evenly
spaced. ``.mhd``/``.nhdr`` are written with their data file, atomically.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoliver.errors import UserError
from autoliver.schema import publish, temporary_prefix

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
DETACHED_ENDINGS = (".mhd", ".nhdr")  # a header plus a separate data file
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
    # What reading had to assume (e.g. no orientation in the header); shown to the user by the checks.
    notes: tuple[str, ...] = ()

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


def _dicom_tag(path: str, *keys: str) -> list[str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return [reader.GetMetaData(k).strip() if reader.HasMetaDataKey(k) else "" for k in keys]


@contextlib.contextmanager
def _itk_quiet():
    """Silence ITK's raw C++ warnings (printed straight to stderr); what matters is said in our words."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """The folder's image series, chosen by SeriesInstanceUID, read only when its slices are evenly
    spaced (a missing slice must not be stacked as if the series were uniform)."""
    from autoliver.io.checks import NON_IMAGE_MODALITIES, dicom_orientation_problem, slice_spacing_problem

    reader = sitk.ImageSeriesReader()
    with _itk_quiet():  # "no DICOM files / not a series" lines for a folder of other files: said below
        series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise UserError(f"{folder}: no DICOM series found in this folder. Point -i at a folder of .dcm slices.")
    files_per_series = {s: reader.GetGDCMSeriesFileNames(str(folder), s) for s in series}
    about = {}  # uid -> (modality, description)
    for uid, files in files_per_series.items():
        try:
            about[uid] = tuple(_dicom_tag(files[0], "0008|0060", "0008|103e"))
        except RuntimeError:
            about[uid] = ("", "")
    images = [u for u in series if about[u][0].upper() not in NON_IMAGE_MODALITIES]
    listing = "; ".join(f"{u or '(no UID)'}: {about[u][0] or '?'} '{about[u][1]}', {len(files_per_series[u])} "
                        "file(s)" for u in series)
    if series_uid is not None:
        if series_uid not in series:
            raise UserError(f"--dicom-series {series_uid}: not a series of {folder}; it holds {listing}.")
        chosen = series_uid
    elif len(images) == 1:
        chosen = images[0]
    else:
        raise UserError(f"{folder}: holds {len(images) or 'no'} DICOM image series ({listing}); pick one with "
                        "--dicom-series UID.")
    if len(series) > 1:
        warnings.warn(f"{folder}: {len(series)} DICOM series found ({listing}); reading "
                      f"{chosen or '(no UID)'}.", stacklevel=3)
    files = files_per_series[chosen]
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # every slice's tags, read with its voxels (no second pass)
    with _itk_quiet():  # ITK's raw "non uniform sampling" line: said below, in our words
        image = reader.Execute()

    def tag(i: int, key: str) -> list[float] | None:
        text = reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else ""
        try:
            return [float(v) for v in text.split("\\")] if text else None
        except ValueError:
            return None

    positions = [tag(i, "0020|0032") for i in range(len(files))]
    orientations = [tag(i, "0020|0037") for i in range(len(files))]
    if all(p is not None and len(p) == 3 for p in positions) and all(o is not None and len(o) == 6
                                                                    for o in orientations):
        problem = (dicom_orientation_problem(orientations, str(folder))
                   or slice_spacing_problem(positions, orientations[0], str(folder)))
        if problem:
            raise UserError(problem)
    elif len(files) > 1:
        raise UserError(f"{folder}: the slices lack ImagePositionPatient/ImageOrientationPatient, so their order "
                        "and spacing are unknown. Export the series with its geometry tags.")
    return image


def _orthonormalise(direction: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(direction)
    return u @ vt


def _read_with_nibabel(path: Path) -> Image:
    import nibabel as nib

    nii = nib.load(str(path))
    data = np.asanyarray(nii.dataobj)
    affine = nii.affine.astype(np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    from autoliver.io.checks import direction_problems, spacing_problems

    problems = spacing_problems(zooms, str(path)) or direction_problems(affine[:3, :3] / zooms, str(path))
    if problems:  # re-orthonormalising a singular matrix would invent an orientation
        raise UserError(problems[0])
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


def read_image(path: str | os.PathLike, dicom_series: str | None = None) -> Image:
    """Read a scan or label map. Raises UserError naming the file when it cannot be read.

    NIfTI files are read to their end (:func:`autoliver.io.checks.read_nifti_checked`): ITK reads
    a truncated file without a word. ``dicom_series``: the SeriesInstanceUID to read when a DICOM
    folder holds several series.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found.")
    ending = file_ending(path)
    notes: list[str] = []
    try:
        if ending in ("", ".dcm"):
            folder = path if path.is_dir() else path.parent
            img = _read_dicom_series(folder, dicom_series)
            ending = ".nii.gz"  # segmentations of DICOM series are written as NIfTI (see README)
        elif ending in (".nii", ".nii.gz"):
            img, array, notes = _read_nifti(path)
        else:
            img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        msg = str(e)
        if ending in (".nii", ".nii.gz") and ("orthonormal" in msg or "direction" in msg.lower()):
            return _read_with_nibabel(path)
        if "spacing" in msg.lower():
            msg += " (the header's voxel size is zero or invalid)"
        raise UserError(f"{path}: cannot read this image ({msg.strip().splitlines()[-1][:200]}). "
                        "Check that the file is complete and a supported format.") from None
    if isinstance(img, sitk.Image) and img.GetNumberOfComponentsPerPixel() > 1:
        raise UserError(f"{path}: vector-valued (multi-component) pixels are not supported; "
                        "store each channel as its own file (_0000, _0001, …).")
    if isinstance(img, sitk.Image):
        array = sitk.GetArrayFromImage(img)
        if ending in (".nii", ".nii.gz") and np.issubdtype(array.dtype, np.floating):
            array = _with_stored_nonfinite(path, array)
    if array.ndim == 2:
        array = array[None]
    return Image(array, _geometry_of(img), str(path), ending, notes=tuple(notes))


# ITK pixel types whose voxels are the file's stored values (no scaling, one component).
_PLAIN_PIXELS = {sitk.sitkUInt8: np.uint8, sitk.sitkInt8: np.int8, sitk.sitkUInt16: np.uint16,
                 sitk.sitkInt16: np.int16, sitk.sitkUInt32: np.uint32, sitk.sitkInt32: np.int32,
                 sitk.sitkUInt64: np.uint64, sitk.sitkInt64: np.int64, sitk.sitkFloat32: np.float32,
                 sitk.sitkFloat64: np.float64}


def _read_nifti(path: Path):
    """(ITK image or header-only reader, voxels or None, notes). The file is decompressed once, by
    the check that reads it to its end; ITK reads only the header (its geometry and pixel type are
    the reference). Voxels come from those bytes: as stored, or scaled by scl_slope/scl_inter in
    float64 and cast to ITK's output type (float32, float64 for float64 data), which gives ITK's
    values to the bit (tests/test_io_checks.py). Anything else (several components, odd types) is
    read by ITK."""
    from autoliver.io.checks import read_nifti_checked

    nifti = read_nifti_checked(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    header = nifti.header
    slope, inter = (float(header["scl_slope"]), float(header["scl_inter"]))
    unscaled = (np.isnan(slope) or slope in (0.0, 1.0)) and (np.isnan(inter) or inter == 0.0)
    dtype = np.dtype(header.get_data_dtype())
    shape = tuple(reversed(reader.GetSize()))
    offset = int(header["vox_offset"])
    itk_type = _PLAIN_PIXELS.get(reader.GetPixelID())
    stored_type = dtype.newbyteorder("=")
    if unscaled:
        out_type = stored_type
    else:
        out_type = np.dtype(np.float64 if stored_type == np.float64 else np.float32)
    if (reader.GetNumberOfComponents() == 1 and itk_type is not None and np.dtype(itk_type) == out_type
            and stored_type in {np.dtype(t) for t in _PLAIN_PIXELS.values()}
            and offset >= int(header["sizeof_hdr"])
            and int(np.prod(shape)) * dtype.itemsize == len(nifti.buffer) - offset):
        # stored values as they are: NaN/Inf stay NaN/Inf (ITK would read them as 0)
        stored = np.frombuffer(nifti.buffer, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
        if unscaled:
            array = stored if dtype.isnative else stored.astype(stored_type)
        else:
            slope = 1.0 if np.isnan(slope) or slope == 0.0 else slope
            inter = 0.0 if np.isnan(inter) else inter
            array = np.empty(shape, out_type)
            for z in range(0, shape[0], 16):  # float64 a slab at a time: bounded memory
                array[z:z + 16] = stored[z:z + 16].astype(np.float64) * slope + inter
        return reader, array, nifti.notes
    notes = nifti.notes
    del nifti
    return reader.Execute(), None, notes


def _with_stored_nonfinite(path: Path, array: np.ndarray) -> np.ndarray:
    """ITK reads NaN/Inf voxels of a NIfTI file as 0; put the stored values back so that the
    checks see them (a NaN block must not become background silently)."""
    import nibabel as nib

    stored = np.asanyarray(nib.load(str(path)).dataobj).T
    if stored.shape != array.shape:
        return array
    bad = ~np.isfinite(stored)
    if bad.any():
        array = array.copy()
        array[bad] = stored[bad]
    return array


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
    if file_ending(path) in DETACHED_ENDINGS:
        _write_detached(img, path, compress)
        return
    tmp = _atomic_target(path)
    try:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_detached(img: sitk.Image, path: Path, compress: bool) -> None:
    """A header with a separate data file (.mhd + .raw/.zraw, .nhdr + .raw/.raw.gz): both are
    written under their final names inside a hidden temporary folder beside ``path`` (the header
    names its data file, so the names must be final), then the data file is moved into place and
    the header last: a header in place means its data is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".dir", dir=path.parent))
    try:
        sitk.WriteImage(img, str(folder / path.name), useCompression=compress)
        for f in sorted(folder.iterdir()):
            if f.name != path.name:
                publish(f, path.parent / f.name)
        publish(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
