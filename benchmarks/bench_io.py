"""What the checked reader costs: ``autoliver.io.read_image`` (a .nii.gz read to the end of its gzip
stream, each voxel decompressed once, then checked) beside SimpleITK's plain ``ReadImage`` (which
reads a truncated file without a word) and nibabel.

    python -m pytest benchmarks/bench_io.py --benchmark-only

Files: the real CT ``ts_s0009`` of ../shared/data (3.4 MB), the benchmarks' synthetic
512×512×200 CT (int16, written once with SimpleITK's compression) and the same stored as uint16
with ``scl_inter`` −1024 (read as float32 by both).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from _synthetic_ct import SPACING_ZYX_MM, synthetic_ct
from autoliver.io.images import Geometry, read_image, write_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module", params=["real_ct_ts_s0009", "synthetic_512x512x200", "scaled_512x512x200"])
def nifti(request, tmp_path_factory) -> Path:
    if request.param.startswith("real"):
        path = SHARED / "real_ct_liver" / "imagesTr" / "ts_s0009_0000.nii.gz"
        if not path.is_file():
            pytest.skip(f"real scans not available: {path} is absent")
        return path
    ct, _ = synthetic_ct()
    path = tmp_path_factory.mktemp("io") / "ct.nii.gz"
    if request.param.startswith("scaled"):  # as many converters store CT: uint16 + scl_inter -1024
        nii = nib.Nifti1Image((np.asarray(ct).T.astype(np.int32) + 1024).astype(np.uint16),
                              np.diag([*reversed(SPACING_ZYX_MM), 1.0]))
        nii.header.set_slope_inter(1.0, -1024.0)
        nib.save(nii, str(path))
        return path
    write_image(path, ct, Geometry(tuple(reversed(SPACING_ZYX_MM)), (0.0, 0.0, 0.0),
                                   (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), ct.shape))
    return path


def test_autoliver_read_image(benchmark, nifti):
    image = benchmark(read_image, nifti)
    assert np.array_equal(image.array, sitk.GetArrayFromImage(sitk.ReadImage(str(nifti))))


def test_simpleitk_read_image(benchmark, nifti):
    benchmark(lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(nifti))))


def test_nibabel_load(benchmark, nifti):
    benchmark(lambda: np.asanyarray(nib.load(str(nifti)).dataobj))
