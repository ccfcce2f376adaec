"""Connected components and clean-up: autoliver against cc3d, SciPy, SimpleITK and OpenCV (2D).

    python -m pytest benchmarks/bench_components.py --benchmark-only

Data: the fixed mask of ``_synthetic_ct.py`` (200x512x512 bool: a liver plus everything above
100 HU of the synthetic CT, about 28,600 components with 26-connectivity). Tasks:
- label: 26-connected labelling (uint32 labels). cc3d and SciPy are single-threaded; SimpleITK's
  ConnectedComponent (fully connected) includes the array/image conversions a NumPy user pays;
  OpenCV's connectedComponents labels each slice in 2D (8-connected), so it is a different task,
  listed for reference.
- keep largest: the largest component as a bool mask (cc3d + bincount is what nnU-Net-style code
  does with cc3d; cc3d.largest_k is its own shortcut).
- drop small: components under 100 voxels removed (cc3d.dust).
- statistics: voxel count, bounding box and centroid of every label (cc3d.statistics; SciPy's
  find_objects + bincount), given the labels.
On a CUDA machine, autoliver's GPU kernels (label, keep largest, statistics) run beside CuPy's
cupyx.scipy.ndimage.label (+ bincount for the largest), with the mask already on the GPU.
autoliver uses AUTOLIVER_NUM_THREADS threads (default all cores). At the end a table prints
seconds, Mvoxel/s and the ratio to the best library (< 1: faster than every library).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu import cuda, device_name, on_gpu, synchronized  # noqa: E402
from _synthetic_ct import SPACING_ZYX_MM, synthetic_mask  # noqa: E402

from autoliver.ops import _ext  # noqa: E402
from autoliver.ops import components as cc  # noqa: E402

ROUNDS = 7
MIN_VOXELS = 100
_RESULTS: dict[str, list[tuple[str, float, int, str]]] = defaultdict(list)


@pytest.fixture(scope="module")
def mask():
    return synthetic_mask()


@pytest.fixture(scope="module")
def labels(mask):
    return cc.label(mask, 26)


def _record(benchmark, group, name, voxels, note=""):
    if benchmark.stats is not None:  # None when benchmarks are disabled
        _RESULTS[group].append((name, benchmark.stats.stats.median, voxels, note))


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
        write(f"connected components, 200x512x512 mask, 26-connectivity, {_ext.num_threads()} autoliver threads")
        write(f"{'task':<14}{'implementation':<42}{'seconds':>9}{'Mvox/s':>9}{'vs best lib':>12}")
        for group, rows in _RESULTS.items():
            libs = [r for r in rows if not r[0].startswith("autoliver") and "2D" not in r[0]]
            for name, seconds, voxels, note in rows:
                # against the best library on the same kind of processor (GPU rows against GPU ones)
                best = min((r[1] for r in libs if on_gpu(r[0]) == on_gpu(name)), default=None)
                ratio = f"{seconds / best:.3f}" if best else "-"
                write(f"{group:<14}{name:<42}{seconds:9.3f}{voxels / seconds / 1e6:9.1f}{ratio:>12}  {note}")


# --- label ------------------------------------------------------------------------------------


def test_label_autoliver(benchmark, mask, labels):
    out, n = benchmark.pedantic(cc.label, args=(mask, 26), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert n == labels[1]
    _record(benchmark, "label", "autoliver label", mask.size, f"{n} components")


def test_label_cc3d(benchmark, mask, labels):
    cc3d = pytest.importorskip("cc3d")
    out = benchmark.pedantic(cc3d.connected_components, args=(mask,), kwargs={"connectivity": 26}, rounds=ROUNDS,
                             iterations=1, warmup_rounds=1)
    np.testing.assert_array_equal(out, labels[0])  # same numbers, not just the same partition
    _record(benchmark, "label", "cc3d.connected_components", mask.size)


def test_label_scipy(benchmark, mask, labels):
    out, n = benchmark.pedantic(ndimage.label, args=(mask, np.ones((3, 3, 3), bool)), rounds=3, iterations=1)
    np.testing.assert_array_equal(out, labels[0])
    _record(benchmark, "label", "scipy.ndimage.label", mask.size)


def test_label_simpleitk(benchmark, mask, labels):
    sitk = pytest.importorskip("SimpleITK")

    def run():
        img = sitk.GetImageFromArray(mask.view(np.uint8))
        return sitk.GetArrayFromImage(sitk.ConnectedComponent(img, True))

    out = benchmark.pedantic(run, rounds=3, iterations=1)
    assert int(out.max()) == labels[1]
    _record(benchmark, "label", "SimpleITK ConnectedComponent", mask.size, "with array<->image copies")


def test_label_opencv_2d(benchmark, mask):
    cv2 = pytest.importorskip("cv2")
    m8 = mask.view(np.uint8)

    def run():
        out = np.empty(mask.shape, np.int32)
        for z in range(mask.shape[0]):
            cv2.connectedComponents(m8[z], out[z], 8, cv2.CV_32S)
        return out

    benchmark.pedantic(run, rounds=3, iterations=1)
    _record(benchmark, "label", "OpenCV connectedComponents, 2D per slice", mask.size, "2D only: a different task")


def test_label_autoliver_cuda(benchmark, mask, labels):
    torch = cuda()
    m = torch.from_numpy(mask).cuda()
    out, n = benchmark.pedantic(synchronized(cc.label), args=(m, 26), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert n == labels[1]
    np.testing.assert_array_equal(out.cpu().numpy(), labels[0])
    _record(benchmark, "label", "autoliver label, CUDA", mask.size, device_name())


def _cupy_label():
    """cupyx.scipy.ndimage.label with 26-connectivity, synchronized; skips without CuPy."""
    cuda()
    cp = pytest.importorskip("cupy")
    from cupyx.scipy import ndimage as cnd

    structure = cp.ones((3, 3, 3), dtype=bool)

    def label(m):
        out, n = cnd.label(m, structure)
        cp.cuda.Device().synchronize()
        return out, int(n)

    return cp, label


def test_label_cupy(benchmark, mask, labels):
    cp, label = _cupy_label()
    m = cp.asarray(mask)
    out, n = benchmark.pedantic(label, args=(m,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert n == labels[1]
    _record(benchmark, "label", "cupyx.scipy.ndimage.label (GPU)", mask.size, f"CuPy {cp.__version__}")


# --- keep the largest component ----------------------------------------------------------------


def test_largest_autoliver(benchmark, mask, labels):
    out = benchmark.pedantic(cc.largest_component, args=(mask, 26), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    sizes = np.bincount(labels[0].ravel())
    assert out.sum() == sizes[1:].max()
    _record(benchmark, "keep largest", "autoliver largest_component", mask.size)


def test_largest_cc3d_bincount(benchmark, mask):
    cc3d = pytest.importorskip("cc3d")

    def run():
        lab = cc3d.connected_components(mask, connectivity=26)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        return lab == np.argmax(sizes)

    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    np.testing.assert_array_equal(out, cc.largest_component(mask))
    _record(benchmark, "keep largest", "cc3d + bincount", mask.size)


def test_largest_cc3d_largest_k(benchmark, mask):
    cc3d = pytest.importorskip("cc3d")
    out = benchmark.pedantic(lambda: cc3d.largest_k(mask, k=1, connectivity=26) > 0, rounds=ROUNDS, iterations=1,
                             warmup_rounds=1)
    np.testing.assert_array_equal(out, cc.largest_component(mask))
    _record(benchmark, "keep largest", "cc3d.largest_k(k=1)", mask.size)


def test_largest_scipy(benchmark, mask):
    def run():
        lab, n = ndimage.label(mask, np.ones((3, 3, 3), bool))
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        return lab == np.argmax(sizes)

    benchmark.pedantic(run, rounds=3, iterations=1)
    _record(benchmark, "keep largest", "scipy label + bincount", mask.size)


def test_largest_autoliver_cuda(benchmark, mask):
    torch = cuda()
    m = torch.from_numpy(mask).cuda()
    out = benchmark.pedantic(synchronized(cc.largest_component), args=(m, 26), rounds=ROUNDS, iterations=1,
                             warmup_rounds=1)
    np.testing.assert_array_equal(out.cpu().numpy(), cc.largest_component(mask))
    _record(benchmark, "keep largest", "autoliver largest_component, CUDA", mask.size, device_name())


def test_largest_cupy_bincount(benchmark, mask):
    cp, label = _cupy_label()
    m = cp.asarray(mask)

    def run():
        lab, _ = label(m)
        sizes = cp.bincount(lab.ravel())
        sizes[0] = 0
        out = lab == sizes.argmax()
        cp.cuda.Device().synchronize()
        return out

    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    np.testing.assert_array_equal(cp.asnumpy(out), cc.largest_component(mask))
    _record(benchmark, "keep largest", "CuPy label + bincount (GPU)", mask.size)


# --- remove small components ------------------------------------------------------------------


def test_small_autoliver(benchmark, mask):
    out = benchmark.pedantic(cc.remove_small_components, args=(mask, MIN_VOXELS), rounds=ROUNDS, iterations=1,
                             warmup_rounds=1)
    assert out.any()
    _record(benchmark, "drop small", "autoliver remove_small_components", mask.size, f"< {MIN_VOXELS} voxels")


def test_small_cc3d_dust(benchmark, mask):
    cc3d = pytest.importorskip("cc3d")
    out = benchmark.pedantic(cc3d.dust, args=(mask,), kwargs={"threshold": MIN_VOXELS, "connectivity": 26},
                             rounds=ROUNDS, iterations=1, warmup_rounds=1)
    np.testing.assert_array_equal(out, cc.remove_small_components(mask, MIN_VOXELS))
    _record(benchmark, "drop small", "cc3d.dust", mask.size)


# --- statistics ---------------------------------------------------------------------------------


def test_stats_autoliver(benchmark, labels):
    lab, n = labels
    s = benchmark.pedantic(cc.component_stats, args=(lab, SPACING_ZYX_MM), rounds=ROUNDS, iterations=1,
                           warmup_rounds=1)
    assert s.num_labels == n
    _record(benchmark, "statistics", "autoliver component_stats", lab.size, "count, bbox, centroid mm")


def test_stats_autoliver_cuda(benchmark, labels):
    torch = cuda()
    lab, n = labels
    t = torch.from_numpy(lab.astype(np.int32)).cuda()
    s = benchmark.pedantic(synchronized(cc.component_stats), args=(t, SPACING_ZYX_MM), rounds=ROUNDS, iterations=1,
                           warmup_rounds=1)
    np.testing.assert_array_equal(s.voxel_count, cc.component_stats(lab, SPACING_ZYX_MM).voxel_count)
    _record(benchmark, "statistics", "autoliver component_stats, CUDA", lab.size, device_name())


def test_stats_cc3d(benchmark, labels):
    cc3d = pytest.importorskip("cc3d")
    lab, n = labels
    st = benchmark.pedantic(cc3d.statistics, args=(lab,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    np.testing.assert_array_equal(st["voxel_counts"][1:], cc.component_stats(lab, SPACING_ZYX_MM).voxel_count)
    _record(benchmark, "statistics", "cc3d.statistics", lab.size)


def test_stats_scipy(benchmark, labels):
    lab, n = labels

    def run():
        flat = lab.ravel()
        count = np.bincount(flat, minlength=n + 1)
        objects = ndimage.find_objects(lab)
        centroids = ndimage.center_of_mass(lab > 0, lab, np.arange(1, n + 1))
        return count, objects, centroids

    benchmark.pedantic(run, rounds=3, iterations=1)
    _record(benchmark, "statistics", "scipy bincount+find_objects+center_of_mass", lab.size)
