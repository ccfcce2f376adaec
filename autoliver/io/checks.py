"""Every input image is checked here before anything is computed from it.

Reading (:func:`autoliver.io.images.read_image`) calls :func:`read_nifti_checked` and
:func:`slice_spacing_problem`; ``predict``, ``verify_dataset`` and preprocessing call
:func:`check_image` on what was read. A check returns warnings (the result is still usable, and
the text says what was assumed) or raises :class:`~autoliver.errors.UserErrors` listing every
problem of the image at once. The functions below the I/O edge are pure (arrays and geometry in,
text out).

Why each check exists (each was a silent wrong answer):

* a truncated ``.nii``/``.nii.gz`` is read by ITK without a word, the missing part as zeros;
* ITK reads NaN/Inf voxels of a NIfTI file as 0 (see ``images.read_image``), so a NaN block
  became background;
* ITK replaces a zero voxel size by 1 mm and a negative one by its absolute value;
* a scan that is not in Hounsfield units (rescaled to [-1, 1], wrapped to uint8) is normalised
  with the CT statistics of the training set and segmented as if it were;
* a DICOM series with a missing slice is stacked as if its slices were evenly spaced.
"""
from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import numpy as np

from autoliver.errors import UserError, UserErrors

# Voxel sizes (mm) that no abdominal CT or MR has: beyond them the header is wrong (metres instead
# of mm, a thumbnail, a broken export). In-plane is ITK's x and y, slices its z.
MIN_SPACING_MM = 0.05
MAX_INPLANE_SPACING_MM = 20.0
MAX_SLICE_SPACING_MM = 50.0
# Hounsfield plausibility: a body CT contains air (about -1000 HU: outside the body, lungs,
# bowel) and spans well over 300 HU between its 0.5th and 99.5th percentiles; almost every voxel
# lies in [-1100, 3100] (scanners pad outside the field of view with -1024…-3024, hence "almost").
HU_RANGE = (-1100.0, 3100.0)
AIR_HU = (-1100.0, -900.0)
MIN_AIR_FRACTION = 0.001
MIN_ROBUST_SPAN_HU = 300.0
MIN_FRACTION_IN_HU_RANGE = 0.5
HU_SAMPLE_VOXELS = 1 << 20  # percentiles on about a million voxels: stable, and fast on any scan
# An axis with fewer voxels than this fraction of the patch (after resampling) is mostly padding.
MIN_PATCH_FRACTION = 0.25
# Slice positions may differ from the median spacing by this much (relative) and still be uniform.
SLICE_SPACING_TOLERANCE = 0.1
# Non-image DICOM objects that share a folder with the scan.
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"}


# --- files: complete before they are read --------------------------------------------------------


def _nifti_header(head: bytes):
    import nibabel as nib

    size_le = int(np.frombuffer(head[:4], "<i4")[0]) if len(head) >= 4 else 0
    size_be = int(np.frombuffer(head[:4], ">i4")[0]) if len(head) >= 4 else 0
    cls = nib.Nifti2Header if 540 in (size_le, size_be) else nib.Nifti1Header
    size = 540 if cls is nib.Nifti2Header else 348
    endian = ">" if size_be == size else "<"
    return cls(binaryblock=head[:size], endianness=endian, check=False)


def _nifti_data_bytes(header) -> tuple[int, int]:
    """(vox_offset, bytes of voxel data the header promises)."""
    ndim = int(header["dim"][0])
    dims = [max(int(d), 1) for d in header["dim"][1:ndim + 1]]
    return int(header["vox_offset"]), int(np.prod(dims, dtype=np.int64)) * int(header["bitpix"]) // 8


@dataclasses.dataclass
class NiftiFile:
    """A NIfTI file read whole: its header, its decompressed bytes (header, extensions, voxels;
    exactly as long as the header needs) and what reading had to assume."""

    header: object  # nibabel Nifti1Header / Nifti2Header, as stored (not "fixed" by nibabel)
    buffer: bytearray
    notes: list[str]


def read_nifti_checked(path: str | Path) -> NiftiFile:
    """Read a NIfTI file to its end: a truncated or corrupt file is an error, not zeros.

    ITK reads a ``.nii``/``.nii.gz`` cut short without a word (the missing voxels become 0), and
    a gzip stream with a damaged middle too. Here ``.nii.gz`` is decompressed to the end of its
    gzip stream (zlib checks its CRC and length), and the voxel data must be as long as the header
    says. The header's voxel sizes (pixdim), which ITK silently "fixes", must be positive. The
    bytes are kept, so that the voxels need not be decompressed a second time.
    """
    path = Path(path)
    fix = "re-export or re-download it"
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":  # gzip magic; ITK also reads an uncompressed file named .nii.gz
                f.seek(0)
                sink = _Sink(path, limit=1100 * path.stat().st_size + (1 << 20))  # deflate packs at most ~1032:1
                _stream_gzip(f, path, sink)
            else:
                f.seek(0)
                sink = _Sink(path, limit=path.stat().st_size, exact=True)
                sink.add(f.read(544))
                if sink.buffer is not None:
                    f.seek(0)
                    sink.total = f.readinto(memoryview(sink.buffer))
    except OSError as e:
        raise UserError(f"{path}: cannot read this file ({e.strerror}).") from None
    if sink.buffer is None:
        sink.allocate()  # a file shorter than 544 bytes: valid only as a tiny NIfTI-1
    header, offset, needed = sink.header, sink.offset, len(sink.buffer) - sink.offset
    if sink.total < offset + needed:
        raise UserError(f"{path}: the image data ends early: it holds {max(sink.total - offset, 0)} bytes where the "
                        f"header needs {needed} (truncated file); {fix}.")
    ndim = min(int(header["dim"][0]), 3)
    pixdim = [float(p) for p in header["pixdim"][1:ndim + 1]]
    if any(not np.isfinite(p) or p <= 0 for p in pixdim):
        raise UserError(f"{path}: voxel size (NIfTI pixdim) must be positive mm, got "
                        f"{tuple(round(p, 4) for p in pixdim)} (ITK would silently read 1 mm for 0 and the absolute "
                        "value of a negative size). Fix the header (e.g. re-export the scan from the scanner's DICOM).")
    notes = []
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        notes.append(f"{path}: the NIfTI header has no orientation (qform_code and sform_code are 0); assumed the "
                     "voxel axes point to the patient's left, posterior and superior (LPS, ITK's default). Check "
                     "left and right in the result, or fix the header.")
    return NiftiFile(header, sink.buffer, notes)


class _Sink:
    """Decompressed bytes: collected until the header is complete, then written into a buffer of
    exactly the size the header promises (bytes beyond it are counted, not kept)."""

    def __init__(self, path: Path, limit: int, exact: bool = False):
        # limit: bytes the file can hold (exact: its size, uncompressed; else a bound for deflate)
        self.path, self.limit, self.exact = path, limit, exact
        self.head = bytearray()
        self.buffer: bytearray | None = None
        self.total = 0
        self.header, self.offset = None, 0

    def add(self, out: bytes) -> None:
        if self.buffer is None:
            self.head += out
            self.total += len(out)
            if len(self.head) >= 544:
                self.allocate()
            return
        room = len(self.buffer) - self.total
        if room > 0:
            self.buffer[self.total:self.total + min(room, len(out))] = out[:room]
        self.total += len(out)

    def allocate(self) -> None:
        try:
            self.header = _nifti_header(bytes(self.head[:544]))
            self.offset, needed = _nifti_data_bytes(self.header)
        except Exception:  # noqa: BLE001 - any header nibabel cannot parse
            raise UserError(f"{self.path}: cannot read this image (not a valid NIfTI header). Check that the file is "
                            "complete and a supported format.") from None
        if self.offset + needed > self.limit and self.exact:
            raise UserError(f"{self.path}: the image data ends early: it holds {max(self.limit - self.offset, 0)} "
                            f"bytes where the header needs {needed} (truncated file); re-export or re-download it.")
        if self.offset + needed > self.limit:
            raise UserError(f"{self.path}: the image data ends early: the header needs {needed} bytes, more than this "
                            "file can hold (truncated file or broken header); re-export or re-download it.")
        self.buffer = bytearray(self.offset + needed)
        kept = min(len(self.head), len(self.buffer))
        self.buffer[:kept] = self.head[:kept]
        self.head = bytearray()


def _stream_gzip(f, path: Path, sink: _Sink) -> None:
    """Decompress the whole gzip stream of ``f`` into ``sink``."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    fix = "(truncated or corrupt gzip); re-export or re-download it"
    first = True  # a small first read: an error in it means the file is not gzip at all
    try:
        while chunk := f.read(1 << 10 if first else 1 << 22):
            while chunk:
                sink.add(d.decompress(chunk))
                chunk, first = b"", False
                # concatenated gzip members are one valid file; trailing zero padding is ignored
                if d.eof and d.unused_data.strip(b"\0"):
                    chunk, d = d.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
    except zlib.error:
        if first:  # not even the start decompresses: not a gzip file at all
            raise UserError(f"{path}: cannot read this image (invalid gzip data). Check that the file is complete "
                            "and a supported format.") from None
        raise UserError(f"{path}: the compressed data is corrupt {fix}.") from None
    if not d.eof:
        raise UserError(f"{path}: the compressed data ends early {fix}.")


# --- one image: geometry, voxels, size ---------------------------------------------------------


def spacing_problems(spacing_xyz_mm, where: str) -> list[str]:
    """Errors for voxel sizes no scan can have (ITK order: x, y in-plane; z between slices)."""
    s = tuple(float(v) for v in spacing_xyz_mm)
    shown = "(x, y, z) " + str(tuple(round(v, 4) for v in s)) + " mm"
    if not all(np.isfinite(v) and v > 0 for v in s):
        return [f"{where}: voxel size must be positive and finite, got {shown}. Fix the file's header."]
    problems = []
    if min(s) < MIN_SPACING_MM:
        problems.append(f"{where}: voxel size must be at least {MIN_SPACING_MM} mm, got {shown} (metres instead "
                        "of millimetres?). Fix the file's header.")
    if max(s[:2]) > MAX_INPLANE_SPACING_MM or s[2] > MAX_SLICE_SPACING_MM:
        problems.append(f"{where}: voxel size must be at most {MAX_INPLANE_SPACING_MM:g} mm in-plane and "
                        f"{MAX_SLICE_SPACING_MM:g} mm between slices, got {shown}. Fix the file's header.")
    return problems


def direction_problems(direction, where: str) -> list[str]:
    """The direction matrix must be a rotation (up to a flip); a singular one has no orientation."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(d).all():
        return [f"{where}: the direction matrix has NaN/Inf entries; the scan has no orientation. Fix the header."]
    sv = np.linalg.svd(d, compute_uv=False)
    if sv.min() < 0.1 * max(sv.max(), 1e-12):
        return [f"{where}: the direction matrix is singular (two voxel axes point the same way; singular values "
                f"{', '.join(f'{v:.3g}' for v in sv)}), so the scan has no valid orientation. Fix the header "
                "(sform/qform)."]
    return []


def nonfinite_count(array: np.ndarray) -> int:
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def hu_evidence(array: np.ndarray) -> str | None:
    """Why the voxels cannot be Hounsfield units, or None when they look like HU."""
    flat = array.reshape(-1)
    step = max(1, flat.size // HU_SAMPLE_VOXELS)
    sample = flat[::step].astype(np.float32, copy=False)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    air = float(np.mean((sample >= AIR_HU[0]) & (sample <= AIR_HU[1])))
    inside = float(np.mean((sample >= HU_RANGE[0]) & (sample <= HU_RANGE[1])))
    if hi - lo >= MIN_ROBUST_SPAN_HU and air >= MIN_AIR_FRACTION and inside >= MIN_FRACTION_IN_HU_RANGE:
        return None
    return (f"robust range (0.5-99.5th percentile) [{lo:.4g}, {hi:.4g}]"
            f"{' spans under ' + format(MIN_ROBUST_SPAN_HU, 'g') + ' HU' if hi - lo < MIN_ROBUST_SPAN_HU else ''}, "
            f"{'no air near -1000 HU' if air < MIN_AIR_FRACTION else 'air near -1000 HU'} "
            f"({100 * air:.2f}% of voxels in [{AIR_HU[0]:g}, {AIR_HU[1]:g}]), "
            f"{100 * inside:.1f}% of voxels in [{HU_RANGE[0]:g}, {HU_RANGE[1]:g}]")


def size_problems(shape_zyx, spacing_zyx_mm, patch_size, target_spacing_zyx_mm,
                  where: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a scan too small for the network's patch.

    The sliding window zero-pads (in normalised units: the training set's mean intensity) a scan
    smaller than the patch. A single slice gives a 3D network no context at all (an error); an
    axis that fills under a quarter of the patch is segmented mostly from padding (a warning).
    """
    errors, warns = [], []
    dims = len(patch_size)
    axes = "zyx"[-dims:]  # a 2D model sees (y, x) slices: z may have any length
    shape = tuple(shape_zyx)[-dims:]
    spacing = tuple(spacing_zyx_mm)[-dims:]
    target = tuple(target_spacing_zyx_mm)[-dims:]
    for ax, n, s, t, p in zip(axes, shape, spacing, target, patch_size):
        if n <= 1:
            errors.append(f"{where}: a {dims}D model needs more than one voxel along {ax}, got {n}. Give the whole "
                          f"series{' or use a 2d configuration (-c 2d)' if ax == 'z' else ''}.")
            continue
        resampled = n * s / t
        if resampled < MIN_PATCH_FRACTION * p:
            warns.append(f"{where}: only {n} voxels ({n * s:.1f} mm) along {ax}, where the network's patch spans "
                         f"{p} voxels ({p * t:.0f} mm); the scan was padded to the patch and the result is "
                         "unreliable. Give a scan that covers the whole liver.")
    return errors, warns


@dataclasses.dataclass(frozen=True)
class CheckedImage:
    """An image that passed :func:`check_image`, and what the user should be told about it."""

    image: object  # autoliver.io.images.Image (possibly with non-finite voxels replaced)
    warnings: tuple[str, ...]


def check_image(image, *, modality: str | None = None, training: bool = False,
                replace_nonfinite: float | None = None, configurations=()) -> CheckedImage:
    """Check one image that was read; raise UserErrors listing every problem, or return it with
    its warnings.

    ``training``: NaN/Inf are always an error (the label and the statistics would be wrong).
    In prediction they are an error unless ``replace_nonfinite`` gives the value to use instead.
    ``modality`` "CT" adds the Hounsfield check. ``configurations``: the model's configurations,
    whose patch sizes the scan must be able to fill.
    """
    where = image.path or "image"
    errors: list[str] = []
    warns: list[str] = list(getattr(image, "notes", ()))
    g = image.geometry
    errors += spacing_problems(g.spacing, where)
    errors += direction_problems(g.direction, where)
    n_bad = nonfinite_count(image.array)
    if n_bad:
        if training:
            errors.append(f"{where}: {n_bad} NaN/Inf voxels. Replace them (e.g. with the minimum intensity).")
        elif replace_nonfinite is None:
            errors.append(f"{where}: {n_bad} NaN/Inf voxels; the model cannot use them. Re-export the scan, or "
                          "pass --replace-nonfinite VALUE to replace them (e.g. -1000, air, for CT).")
        else:
            array = image.array.copy()
            array[~np.isfinite(array)] = replace_nonfinite
            image = dataclasses.replace(image, array=array)
            warns.append(f"{where}: replaced {n_bad} NaN/Inf voxels with {replace_nonfinite:g} "
                         "(--replace-nonfinite).")
    if not errors and configurations:
        from autoliver.preprocessing.pipeline import target_spacing  # the grid the network will see

        for config in configurations:
            spacing = g.spacing_zyx_mm
            e, w = size_problems(g.shape_zyx, spacing, config.patch_size, target_spacing(config, spacing),
                                 f"{where} ({config.name})")
            errors += e
            warns += w
    if errors:
        raise UserErrors(errors, headline=f"{where}: cannot be used") if len(errors) > 1 else UserError(errors[0])
    if modality == "CT":
        evidence = hu_evidence(image.array)
        if evidence:
            warns.append(f"{where}: the intensities do not look like CT Hounsfield units: {evidence}. The model "
                         "expects HU; the result may be wrong. Re-export the scan in HU (with the DICOM "
                         "RescaleSlope/RescaleIntercept applied).")
    return CheckedImage(image, tuple(warns))


# --- DICOM: one series, evenly spaced ---------------------------------------------------------


def slice_spacing_problem(positions, orientation, where: str) -> str | None:
    """Slices must be evenly spaced along the slice normal (ImagePositionPatient projected on the
    cross product of ImageOrientationPatient's row and column cosines), or None."""
    o = np.asarray(orientation, dtype=np.float64)
    p = np.asarray(positions, dtype=np.float64)
    if len(p) < 3:
        return None
    normal = np.cross(o[:3], o[3:6])
    z = np.sort(p @ normal)
    gaps = np.diff(z)
    step = float(np.median(gaps))
    if step <= 0:
        return (f"{where}: {int(np.sum(gaps <= 1e-6))} slice(s) share a position with another; the series holds "
                "duplicates or several volumes. Export one series with one slice per position.")
    off = np.abs(gaps - step) > SLICE_SPACING_TOLERANCE * step
    if not off.any():
        return None
    i = int(np.argmax(np.abs(gaps - step)))
    missing = int(round(gaps[i] / step)) - 1
    what = (f"about {missing} slice(s) missing between {z[i]:.2f} and {z[i + 1]:.2f} mm" if missing >= 1 and
            abs(gaps[i] - (missing + 1) * step) < SLICE_SPACING_TOLERANCE * step
            else f"a gap of {gaps[i]:.2f} mm between {z[i]:.2f} and {z[i + 1]:.2f} mm")
    return (f"{where}: slices are not evenly spaced ({step:.3g} mm apart, but {what}; {int(off.sum())} uneven "
            "gap(s)). Stacking them as uniform would distort the anatomy; export the complete series or "
            "resample it to even spacing first.")


def dicom_orientation_problem(orientations, where: str) -> str | None:
    o = np.asarray(orientations, dtype=np.float64)
    if len(o) and np.abs(o - o[0]).max() > 1e-3:
        return f"{where}: the slices have different orientations (ImageOrientationPatient); export one series."
    return None


def training_image_problems(image, modality: str | None = None) -> list[str]:
    """The errors :func:`check_image` finds in a training image, one line each (none: usable)."""
    try:
        check_image(image, modality=modality, training=True)
    except UserErrors as e:
        return list(e.problems)
    except UserError as e:
        return [str(e)]
    return []
