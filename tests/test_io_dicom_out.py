"""DICOM-SEG and RTSTRUCT written for a real DICOM series: every frame and contour references the
source slice it lies on, and the masks read back equal the label map."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from autoliver.errors import UserError
from autoliver.io import dicom_out
from autoliver.io.images import read_image
from conftest import shared_data_path

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

LABELS = {"background": 0, "liver": 1, "tumour": 2}


@pytest.fixture(scope="module")
def series():
    """The 20-slice real CT series and a liver + tumour label map on its grid."""
    folder = shared_data_path("real_dicom", "ts_ct_dicom_20slices")
    image = read_image(folder)
    total = read_image(shared_data_path("real_dicom", "ts_ct_dicom_20slices_seg_total.nii.gz"))
    # the label file stores the same voxels with y flipped (direction -1 in y): bring it onto the series' grid
    assert np.allclose(np.asarray(total.geometry.direction).reshape(3, 3), np.diag([1.0, -1.0, 1.0]))
    liver = total.array[:, ::-1, :] == 5
    labels = liver.astype(np.uint8)
    zz, yy, xx = np.nonzero(liver)
    c = np.array([zz.mean(), yy.mean(), xx.mean()]).round().astype(int)
    ball = (np.indices(liver.shape) - c[:, None, None, None]) * np.array([2.0, 0.977, 0.977])[:, None, None, None]
    labels[(np.sqrt((ball ** 2).sum(0)) < 12) & liver] = 2  # a 24 mm "tumour" inside the liver
    assert 300_000 < (labels == 1).sum() and 1_000 < (labels == 2).sum()
    return folder, image, labels


def z_of_instance(image, ds) -> int:
    """The slice index of a source instance, by SimpleITK's own physical-point mapping."""
    img = sitk.Image(*reversed(image.geometry.shape_zyx), sitk.sitkUInt8)
    image.geometry.to_sitk(img)
    index = img.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient])
    assert abs(index[0]) < 1e-3 and abs(index[1]) < 1e-3 and abs(index[2] - round(index[2])) < 1e-3
    return int(round(index[2]))


def test_dicom_seg_frames_reference_their_slices_and_equal_the_label_map(series, tmp_path):
    folder, image, labels = series
    path = dicom_out.write_dicom_seg(tmp_path / "case_seg.dcm", labels, image.geometry, folder, LABELS)
    seg = hd.seg.segread(path)
    sources = {ds.SOPInstanceUID: ds for ds in (dicom_out.read_instance(p) for p in sorted(folder.iterdir()))}
    assert seg.SegmentationType == "BINARY" and int(seg.NumberOfFrames) == 2 * 20
    assert [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence] == [
        ("Liver", "10200004"), ("Liver tumour", "108369006")]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == next(iter(sources.values())).SeriesInstanceUID
    rebuilt = np.zeros_like(labels)
    frames = seg.pixel_array
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = z_of_instance(image, sources[uid])
        assert list(map(float, fg.PlanePositionSequence[0].ImagePositionPatient)) == pytest.approx(
            list(map(float, sources[uid].ImagePositionPatient)), abs=1e-3)
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        rebuilt[z][frames[i] > 0] = number
    np.testing.assert_array_equal(rebuilt, labels)


def test_our_seg_agrees_with_a_seg_made_by_dcmqi(tmp_path):
    """The dcmqi folder holds the CT slices (stored feet-first: 01.dcm is the top slice), a SEG and an
    NRRD: ours is made from the NRRD and must put each frame on the same instance as dcmqi's."""
    folder = shared_data_path("real_dicom", "dcmqi_ct_3slices")
    with pytest.warns(UserWarning, match="2 DICOM series found"):
        image = read_image(folder)
    mask = read_image(folder / "liver_seg.nrrd")
    assert mask.geometry.matches(image.geometry)
    ours = hd.seg.segread(dicom_out.write_dicom_seg(tmp_path / "s.dcm", (mask.array > 0).astype(np.uint8),
                                                    image.geometry, folder, {"background": 0, "liver": 1}))
    theirs = hd.seg.segread(folder / "liver.dcm")

    def by_instance(seg):
        return {fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID: seg.pixel_array[i] > 0
                for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence)}

    a, b = by_instance(ours), by_instance(theirs)
    assert sorted(a) == sorted(b) and len(a) == 3
    for uid in a:
        np.testing.assert_array_equal(a[uid], b[uid])
    # the same concept: dcmqi codes the liver with the legacy SRT T-62000, we with SNOMED CT 10200004
    assert theirs.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    assert ours.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"


def test_rtstruct_contours_lie_on_their_slices_and_rasterise_back(series, tmp_path):
    rt_utils = pytest.importorskip("rt_utils")
    folder, image, labels = series
    path = dicom_out.write_rtstruct(tmp_path / "case_rtstruct.dcm", labels, image.geometry, folder, LABELS)
    ds = pydicom.dcmread(path)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Liver", "Liver tumour"]
    sources = {d.SOPInstanceUID: d for d in (dicom_out.read_instance(p) for p in sorted(folder.iterdir()))}
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            assert np.allclose(points[:, 2], float(sources[uid].ImagePositionPatient[2]), atol=1e-3)
    # rt-utils' own loader would read the files' empty SOP instance UIDs: read back with the repaired ones
    series = sorted(sources.values(), key=rt_utils.image_helper.get_slice_position)
    rt = rt_utils.RTStruct(series, ds)
    order = [z_of_instance(image, d) for d in series]
    for name, value in (("Liver", 1), ("Liver tumour", 2)):
        back = np.moveaxis(rt.get_roi_mask_by_name(name), -1, 0)  # (slices in rt-utils' order, rows, cols)
        ours = labels[order] == value
        dice = 2 * (back & ours).sum() / (back.sum() + ours.sum())
        assert dice > 0.97, (name, dice)  # contours trace voxel edges; rasterising them is close, not exact


def test_a_series_with_a_missing_slice_is_refused(series, tmp_path):
    folder, image, labels = series
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    victim = sorted(broken.iterdir())[7]
    z = z_of_instance(image, dicom_out.read_instance(victim))
    victim.unlink()
    with pytest.raises(UserError, match=rf"no DICOM instance lies at slice\(s\) \[{z}\]"):
        dicom_out.write_dicom_seg(tmp_path / "x.dcm", labels, image.geometry, broken, LABELS)
    assert not (tmp_path / "x.dcm").exists()
