"""Exact 3D bilateral filter: autoliver against SimpleITK (the same filter) and OpenCV (2D only).

    python -m pytest benchmarks/bench_bilateral.py --benchmark-only

Data: the fixed synthetic CT of ``_synthetic_ct.py`` (200x512x512 int16 at 2.5x0.78x0.78 mm).
Two settings: domain sigma 1 mm (ITK window 9x9x3 at this spacing) and domain sigma 1 voxel
(spacing taken as 1 mm, window 7x7x7), range sigma 50 HU. SimpleITK's BilateralImageFilter needs
tens of seconds per volume, so it filters the first 50 slices and its time is scaled by 4 (the
filter's cost is linear in the number of slices); autoliver is timed on both the 50 slices (the
like-for-like ratio) and the whole volume. OpenCV's bilateralFilter is 2D: it runs slice by slice
(d = 9 pixels, the in-plane window), so it is a different, cheaper filter, listed for reference.
Threads: autoliver AUTOLIVER_NUM_THREADS (default all cores), SimpleITK its default (all cores),
OpenCV its default. On a CUDA machine autoliver's GPU kernel is timed on the whole volume too
(data already on the GPU). At the end a table prints seconds, Mvoxel/s and the ratio to the best library.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu import cuda, device_name, on_gpu, synchronized  # noqa: E402
from _synthetic_ct import SPACING_ZYX_MM, synthetic_ct  # noqa: E402

from autoliver.ops import _ext  # noqa: E402
from autoliver.ops.bilateral import bilateral_filter, window_radius  # noqa: E402

RANGE_SIGMA_HU = 50.0
SITK_SLICES = 50
SETTINGS = {
    "sigma 1 mm": (SPACING_ZYX_MM, 1.0),
    "sigma 1 voxel": ((1.0, 1.0, 1.0), 1.0),
}
_RESULTS: dict[str, list[tuple[str, float, int, str]]] = defaultdict(list)


@pytest.fixture(scope="module")
def ct():
    return synthetic_ct()[0]


def _record(benchmark, group, name, voxels, scale=1.0, note=""):
    if benchmark.stats is not None:  # None when benchmarks are disabled
        _RESULTS[group].append((name, benchmark.stats.stats.median * scale, voxels, note))


@pytest.fixture(scope="module", autouse=True)
def _print_table(request):
    yield
    if not _RESULTS:
        return
    # the table is written past pytest's output capture, so it shows without -s
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    write = tr.write_line if tr else print
    with capture.global_and_fixture_disabled():
        write("")
        write(f"bilateral filter, 200x512x512 int16 CT, range sigma 50 HU, {_ext.num_threads()} autoliver threads")
        write(f"{'setting':<15}{'implementation':<44}{'seconds':>9}{'Mvox/s':>9}{'vs best lib':>12}")
        for group, rows in _RESULTS.items():
            libs = [r for r in rows if not r[0].startswith("autoliver") and "2D" not in r[0]]
            for name, seconds, voxels, note in rows:
                # against the best library on the same kind of processor (GPU rows against GPU ones)
                best = min((r[1] for r in libs if on_gpu(r[0]) == on_gpu(name)), default=None)
                ratio = f"{seconds / best:.3f}" if best else "-"
                write(f"{group:<15}{name:<44}{seconds:9.3f}{voxels / seconds / 1e6:9.1f}{ratio:>12}  {note}")


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_autoliver_volume(benchmark, ct, setting):
    spacing, sigma = SETTINGS[setting]
    out = benchmark.pedantic(bilateral_filter, args=(ct, spacing, sigma, RANGE_SIGMA_HU), rounds=3, iterations=1,
                             warmup_rounds=1)
    assert out.shape == ct.shape
    r = window_radius(spacing, (sigma,) * 3)
    _record(benchmark, setting, "autoliver bilateral_filter (200 slices)", ct.size,
            note=f"window {2 * r[2] + 1}x{2 * r[1] + 1}x{2 * r[0] + 1}")


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_autoliver_cuda_volume(benchmark, ct, setting):
    torch = cuda()
    spacing, sigma = SETTINGS[setting]
    volume = torch.from_numpy(ct).cuda()
    out = benchmark.pedantic(synchronized(bilateral_filter), args=(volume, spacing, sigma, RANGE_SIGMA_HU), rounds=5,
                             iterations=1, warmup_rounds=1)
    # measured the right thing: the first slices (window radius in z <= 3) agree with the CPU kernel
    head = bilateral_filter(np.ascontiguousarray(ct[:16]), spacing, sigma, RANGE_SIGMA_HU)
    np.testing.assert_allclose(out[:10].cpu().numpy(), head[:10], rtol=0, atol=0.05)
    _record(benchmark, setting, "autoliver CUDA (200 slices, on the GPU)", ct.size, note=device_name())


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_autoliver_50_slices(benchmark, ct, setting):
    spacing, sigma = SETTINGS[setting]
    part = np.ascontiguousarray(ct[:SITK_SLICES])
    benchmark.pedantic(bilateral_filter, args=(part, spacing, sigma, RANGE_SIGMA_HU), rounds=3, iterations=1)
    _record(benchmark, setting, f"autoliver ({SITK_SLICES} slices, x4)", ct.size, scale=ct.shape[0] / SITK_SLICES,
            note="like-for-like with SimpleITK")


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_simpleitk_50_slices(benchmark, ct, setting):
    sitk = pytest.importorskip("SimpleITK")
    spacing, sigma = SETTINGS[setting]
    part = np.ascontiguousarray(ct[:SITK_SLICES])

    def run():
        img = sitk.GetImageFromArray(part.astype(np.float32))
        img.SetSpacing(tuple(reversed(spacing)))
        f = sitk.BilateralImageFilter()
        f.SetDomainSigma(sigma)
        f.SetRangeSigma(RANGE_SIGMA_HU)
        return sitk.GetArrayFromImage(f.Execute(img))

    out = benchmark.pedantic(run, rounds=1, iterations=1)
    # same filter up to ITK's range table (see tests/test_ops_bilateral.py::test_simpleitk_parity)
    ours = bilateral_filter(part, spacing, sigma, RANGE_SIGMA_HU)
    assert np.abs(out - ours).mean() < 0.25
    _record(benchmark, setting, f"SimpleITK Bilateral ({SITK_SLICES} slices, x4)", ct.size,
            scale=ct.shape[0] / SITK_SLICES, note=f"{sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads")


def test_opencv_2d_per_slice(benchmark, ct):
    cv2 = pytest.importorskip("cv2")
    sigma_px = 1.0 / SPACING_ZYX_MM[2]

    def run():
        out = np.empty(ct.shape, np.float32)
        for z in range(ct.shape[0]):
            out[z] = cv2.bilateralFilter(ct[z].astype(np.float32), 9, RANGE_SIGMA_HU, sigma_px)
        return out

    benchmark.pedantic(run, rounds=3, iterations=1)
    _record(benchmark, "sigma 1 mm", "OpenCV bilateralFilter, 2D per slice", ct.size,
            note="2D only (d=9): not the same filter")
