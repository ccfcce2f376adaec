"""Segmentations of DICOM series as DICOM: a DICOM-SEG object (highdicom) or an RTSTRUCT (rt-utils).

Both reference the source series they were predicted from, slice by slice. The label map
(z, y, x) is on the grid SimpleITK read the series into; each z is matched to its source instance
by position along the slice normal (ImagePositionPatient), never by file order or instance
number, and a label map whose slices do not each meet exactly one instance is refused.

Segments: one per foreground label of the model, non-overlapping, so reading the SEG back gives
the label map voxel for voxel — ``liver`` is label 1 (the parenchyma; add the tumour segment for
the whole organ, as LiTS scores it), ``tumour`` label 2, coded as SNOMED CT Liver (10200004) and
Neoplasm (108369006) in the liver. An RTSTRUCT holds one planar contour set per segment (contours
follow voxel edges, so rasterising them back is close to, not exactly, the voxel mask).

highdicom, pydicom and rt-utils are optional: ``pip install "autoliver[dicom]"``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoliver import __version__
from autoliver.errors import UserError
from autoliver.io.images import Geometry
from autoliver.schema import atomic_write

SEG_SUFFIX = "_seg.dcm"
RTSTRUCT_SUFFIX = "_rtstruct.dcm"


@dataclass(frozen=True)
class SegmentCode:
    label: str  # what a viewer shows
    category: tuple[str, str]  # (SNOMED CT code, meaning)
    type: tuple[str, str]
    colour_rgb: tuple[int, int, int]


# By label name in dataset.json; other names get a generic "Tissue" segment with their own name.
SEGMENT_CODES = {
    "liver": SegmentCode("Liver", ("91723000", "Anatomical Structure"), ("10200004", "Liver"), (221, 130, 101)),
    "tumour": SegmentCode("Liver tumour", ("49755003", "Morphologically Abnormal Structure"),
                          ("108369006", "Neoplasm"), (241, 214, 145)),
}
SEGMENT_CODES["tumor"] = SEGMENT_CODES["lesion"] = SEGMENT_CODES["tumour"]
OTHER_CODE = (("85756007", "Tissue"), ("85756007", "Tissue"))


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--output-type: writing DICOM needs the optional package {module.split('.')[0]!r}; "
                        'install it with pip install "autoliver[dicom]"') from None


def _slice_normal(geometry: Geometry) -> np.ndarray:
    return np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)[:, 2]


def read_instance(path: str | os.PathLike):
    """A DICOM file as pydicom reads it, with SOP class and instance UIDs taken from the file meta
    header where the data set leaves them empty (some anonymisers do; a SEG that references an
    empty UID points at nothing). The user's file is not changed."""
    pydicom = _require("pydicom")
    ds = pydicom.dcmread(path)
    meta = getattr(ds, "file_meta", None)
    for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not str(ds.get(key, "") or "") and meta is not None and meta.get(meta_key):
            setattr(ds, key, meta.get(meta_key))
    if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
        del ds.SpecificCharacterSet  # empty means the default repertoire; highdicom refuses ''
    return ds


def source_instances(series_folder: str | os.PathLike, geometry: Geometry, series_uid: str | None = None) -> list:
    """The pydicom datasets of ``series_folder`` in the label map's z order (one per slice).

    Each slice z of ``geometry`` lies at ``origin + z · spacing_z · normal``; the instance whose
    ImagePositionPatient projects there (within a tenth of a slice) is its source. Other series
    and non-image objects in the folder (a SEG, a scout) are skipped; ``series_uid`` names the
    series when the folder holds several (``--dicom-series``).
    """
    folder = Path(series_folder)
    normal = _slice_normal(geometry)
    origin_along = float(np.dot(normal, geometry.origin))
    dz = geometry.spacing[2]
    shape_z = geometry.shape_zyx[0]
    by_z: dict[int, list] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = read_instance(path)
        except Exception:  # not DICOM (a licence file, a NIfTI beside the slices)
            continue
        if "ImagePositionPatient" not in ds or "PixelData" not in ds or ds.get("Modality") == "SEG":
            continue
        if series_uid is not None and ds.get("SeriesInstanceUID") != series_uid:
            continue
        along = float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) - origin_along
        z = int(round(along / dz))
        if abs(along - z * dz) <= 0.1 * dz and 0 <= z < shape_z and (ds.Rows, ds.Columns) == geometry.shape_zyx[1:]:
            by_z.setdefault(z, []).append(ds)
    missing = [z for z in range(shape_z) if z not in by_z]
    if missing:
        raise UserError(f"{folder}: no DICOM instance lies at slice(s) {missing[:10]} of the segmentation's grid; "
                        "the folder must hold the series the segmentation was predicted from")
    out = []
    for z in range(shape_z):
        candidates = by_z[z]
        series = {c.SeriesInstanceUID for c in candidates}
        if len(series) > 1:  # two series at the same positions: take the one that fills the grid
            counts = {s: sum(any(c.SeriesInstanceUID == s for c in by_z[k]) for k in by_z) for s in series}
            full = [s for s, n in counts.items() if n == shape_z]
            if len(full) != 1:
                raise UserError(f"{folder}: several DICOM series cover slice {z}; put the source series in a folder "
                                "of its own")
            candidates = [c for c in candidates if c.SeriesInstanceUID == full[0]]
        if len(candidates) != 1:
            raise UserError(f"{folder}: {len(candidates)} instances of one series lie at slice {z}; "
                            "the series has duplicate slices")
        out.append(candidates[0])
    return out


def _segments(labels_zyx: np.ndarray, labels: dict[str, int]) -> list[tuple[int, str]]:
    """(label value, label name) of the model's foreground labels, in value order."""
    return sorted((int(v), n) for n, v in labels.items() if int(v) > 0)


def write_dicom_seg(path: str | os.PathLike, labels_zyx: np.ndarray, geometry: Geometry,
                    series_folder: str | os.PathLike, labels: dict[str, int], series_uid: str | None = None) -> Path:
    """A binary DICOM-SEG, one segment per foreground label, referencing every source slice."""
    hd = _require("highdicom")
    from pydicom.sr.coding import Code

    sources = source_instances(series_folder, geometry, series_uid)
    values = _segments(labels_zyx, labels)
    descriptions, stack = [], np.zeros(labels_zyx.shape, dtype=np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(name="autoliver", version=__version__,
                                                   family=Code("239136004", "SCT", "Artificial Intelligence"))
    for number, (value, name) in enumerate(values, start=1):
        code = SEGMENT_CODES.get(name.lower())
        category, kind = (code.category, code.type) if code else OTHER_CODE
        liver_region = [Code("10200004", "SCT", "Liver")] if code and name.lower() != "liver" else None
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=code.label if code else name,
            segmented_property_category=Code(category[0], "SCT", category[1]),
            segmented_property_type=Code(kind[0], "SCT", kind[1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=liver_region))
        stack[labels_zyx == value] = number
    with warnings.catch_warnings():  # source headers with one-part patient names: not ours to fix
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(hd, sources, stack, descriptions)
    atomic_write(path, seg.save_as)
    return Path(path)


def _segmentation(hd, sources, stack, descriptions):
    first = sources[0]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=stack, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=int(first.get("SeriesNumber", 0) or 0) + 1000, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="autoliver", manufacturer_model_name="autoliver", software_versions=__version__,
        device_serial_number="none", content_description="liver and liver tumour segmentation (autoliver)",
        series_description="autoliver segmentation", omit_empty_frames=False)


def write_rtstruct(path: str | os.PathLike, labels_zyx: np.ndarray, geometry: Geometry,
                   series_folder: str | os.PathLike, labels: dict[str, int], series_uid: str | None = None) -> Path:
    """An RTSTRUCT with one ROI per foreground label present, contours on the source slices."""
    rt_utils = _require("rt_utils")
    sources = source_instances(series_folder, geometry, series_uid)
    from rt_utils import ds_helper, image_helper

    # rt-utils' own loader reads every file with pixels under the folder (a SEG too) as it is on
    # disk; give it the checked, UID-repaired source slices, in its order (ascending along the normal).
    series = sorted(sources, key=image_helper.get_slice_position)
    order = {id(ds): z for z, ds in enumerate(sources)}
    z_of_rt = [order[id(ds)] for ds in series]
    rt = rt_utils.RTStruct(series, ds_helper.create_rtstruct_dataset(series))
    for value, name in _segments(labels_zyx, labels):
        mask = labels_zyx == value
        if not mask.any():
            continue  # an empty ROI has no contour to write
        code = SEGMENT_CODES.get(name.lower())
        mask_rcs = np.moveaxis(mask[z_of_rt], 0, -1)  # rt-utils: (rows, columns, slices in its order)
        rt.add_roi(mask=mask_rcs, name=code.label if code else name, color=list(code.colour_rgb) if code else None,
                   approximate_contours=False)
    atomic_write(path, rt.ds.save_as)  # not rt.save(): it prints and picks its own file name
    return Path(path)
