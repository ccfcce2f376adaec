"""Synthetic phantoms: determinism, plausible anatomy and intensities, DCE-MRI kinetics, geometry,
and the dataset/CLI edge (layout, overwrite refusal, resume)."""
from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
from scipy import ndimage

from autoliver.cli import main
from autoliver.datasets.dataset import parse_dataset_json
from autoliver.datasets.verify import verify_dataset
from autoliver.errors import UserError
from autoliver.io import read_image
from autoliver.synthetic import make_case, make_synthetic_dataset, render_case
from autoliver.synthetic import tissues as T
from autoliver.synthetic.phantom import case_geometry

SMALL = (40, 80, 80)  # ~6 mm in-plane: the whole abdomen, quickly


def _hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ct_cases():
    return [render_case(seed, (56, 112, 112), "ct") for seed in range(6)]


# -- determinism -----------------------------------------------------------------------------------

def test_same_seed_gives_the_same_bytes_and_cases_do_not_depend_on_the_count(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a" / "Dataset001_A", 2, seed=3, shape_zyx=SMALL, progress=False)
    b = make_synthetic_dataset(tmp_path / "b" / "Dataset001_A", 3, seed=3, shape_zyx=SMALL, progress=False)
    c = make_synthetic_dataset(tmp_path / "c" / "Dataset001_A", 2, seed=4, shape_zyx=SMALL, progress=False)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    images = [k for k in ha if k.startswith(("imagesTr/", "labelsTr/"))]
    assert len(images) == 4
    assert all(ha[k] == hb[k] for k in images)  # case i is the same whatever --cases says
    assert all(ha[k] != hc[k] for k in images)  # another seed, other cases
    d = make_synthetic_dataset(tmp_path / "d" / "Dataset001_A", 2, seed=3, shape_zyx=SMALL, progress=False)
    assert _hashes(d) == ha


def test_make_case_accepts_a_seed_or_a_generator_and_is_pure():
    images, label, geometry = make_case(11, SMALL, "ct")
    images2, label2, geometry2 = make_case(np.random.default_rng(11), SMALL, "ct")
    assert len(images) == 1 and images[0].dtype == np.int16 and label.dtype == np.uint8
    assert images[0].shape == label.shape == SMALL == geometry.shape_zyx
    assert np.array_equal(images[0], images2[0]) and np.array_equal(label, label2) and geometry == geometry2


def test_ct_and_mri_of_one_seed_share_the_anatomy():
    ct, mri = render_case(5, SMALL, "ct"), render_case(5, SMALL, "dce_mri")
    assert np.array_equal(ct.label, mri.label) and ct.geometry == mri.geometry
    assert len(mri.images) == 4 and all(im.dtype == np.int16 and im.min() >= 0 for im in mri.images)


# -- anatomy ---------------------------------------------------------------------------------------

def test_labels_and_liver_volume_are_plausible(ct_cases):
    for p in ct_cases:
        assert set(np.unique(p.label)) <= {0, 1, 2}
        voxel_ml = float(np.prod(p.geometry.spacing)) / 1000.0
        liver_ml = np.count_nonzero(p.label) * voxel_ml  # liver incl. tumours, as in LiTS
        assert 1200.0 <= liver_ml <= 2000.0, p.info
        assert abs(liver_ml - p.info["liver_target_ml"]) < 0.05 * p.info["liver_target_ml"]
        assert np.count_nonzero(p.label == 2) < 0.5 * np.count_nonzero(p.label)
        assert 0 <= len(p.info["tumours"]) <= 6
        assert all(5.0 <= t["diameter_mm"] <= 80.0 for t in p.info["tumours"])
        assert 60.0 < p.info["spleen_ml"] < 400.0
        # the liver never touches the edge of the field of view
        lab = p.label > 0
        assert not (lab[[0, -1]].any() or lab[:, [0, -1]].any() or lab[:, :, [0, -1]].any())
    assert sum(len(p.info["tumours"]) for p in ct_cases) > 0


def test_tumours_lie_inside_the_liver(ct_cases):
    checked = 0
    for p in ct_cases:
        components, n = ndimage.label(p.label == 2)
        for c in range(1, n + 1):
            tumour = components == c
            ring = ndimage.binary_dilation(tumour) & ~tumour
            # most of what surrounds a tumour is liver (it may reach the liver's surface)
            assert np.mean(p.label[ring] > 0) >= 0.4
            checked += 1
    assert checked >= 3


def test_a_small_shape_still_holds_the_whole_abdomen():
    small, large = render_case(8, (24, 48, 48), "ct"), render_case(8, (64, 128, 128), "ct")
    assert small.info["spacing_zyx_mm"][1] > 2.0 * large.info["spacing_zyx_mm"][1]
    lab = small.label > 0
    assert not (lab[[0, -1]].any() or lab[:, [0, -1]].any() or lab[:, :, [0, -1]].any())
    # same anatomy in millimetres at both resolutions
    assert abs(small.info["liver_ml"] - large.info["liver_ml"]) < 0.05 * large.info["liver_ml"]
    body = (small.tissue != T.AIR) & (small.tissue != T.TABLE)
    assert not (body[:, [0, -1]].any() or body[:, :, [0, -1]].any())  # the body fits in-plane


def test_spacing_follows_the_field_of_view_rule_and_orientations_vary():
    orientations = set()
    for seed in range(8):
        g512 = case_geometry(seed, (400, 512, 512))
        g256 = case_geometry(seed, (100, 256, 256))
        orientations.add(g256.orientation())
        sx, sy, sz = g512.spacing
        assert sx == sy and 0.6 <= sx <= 0.9 + 1e-3  # clinical in-plane spacing on a 512 matrix
        assert 1.0 <= sz <= 5.0 + 1e-3
        assert abs(g256.spacing[0] - 2 * sx) < 2e-3  # same field of view, half the matrix
        assert 1.0 <= g256.spacing[2] <= 5.0 + 1e-3 and g256.spacing[2] * 100 >= 180.0  # covers the liver
    assert orientations == {"LPS", "RAS", "LAS"}


# -- intensities -----------------------------------------------------------------------------------

def _median(image, mask):
    return float(np.median(image[mask]))


def test_ct_intensities_liver_tumour_spleen(ct_cases):
    n_tumours = 0
    for p in ct_cases:
        img, tissue = p.images[0].astype(np.float64), p.tissue
        liver = ndimage.binary_erosion(tissue == T.LIVER, iterations=2)
        spleen = ndimage.binary_erosion(tissue == T.SPLEEN, iterations=1)
        liver_hu = _median(img, liver)
        assert 45.0 <= liver_hu <= 75.0
        assert abs(_median(img, spleen) - liver_hu) <= 22.0  # a classic look-alike
        assert _median(img, tissue == T.AIR) < -950.0
        assert -130.0 < _median(img, ndimage.binary_erosion(tissue == T.FAT, iterations=1)) < -70.0
        assert _median(img, tissue == T.BONE_CORTEX) > 450.0
        noise = img[liver].std()
        assert 8.0 <= noise <= 30.0  # Gaussian + correlated noise, sigma 10-25 HU (+ texture)
        for i, t in enumerate(p.info["tumours"]):
            core = ndimage.binary_erosion(tissue == T.TUMOUR + i, iterations=1)
            if core.sum() < 30:
                continue
            drop = liver_hu - _median(img, core)
            assert 4.0 <= drop <= 46.0, (drop, t)  # 10-40 HU below the liver, give or take noise
            n_tumours += 1
    assert n_tumours >= 3


def test_dce_mri_tumours_show_in_the_series_not_in_the_portal_phase():
    """Wash-out and progressive tumours are iso-intense in the portal phase (a single-phase scan misses
    them) and stand out in the arterial or delayed phase; hypo-enhancing ones are dark in the portal
    phase; the arterial/delayed log-ratio, free of the liver's texture, separates the kinetics."""
    found = {"washout": 0, "progressive": 0, "hypoenhancing": 0}
    for seed in (12, 6, 0):  # cases with each kind of tumour large enough to measure
        p = render_case(seed, (64, 160, 160), "dce_mri")
        phases = np.stack(p.images).astype(np.float64) + 1.0
        log_washout = np.log(phases[1]) - np.log(phases[3])  # arterial vs delayed: texture and coil cancel
        for i, t in enumerate(p.info["tumours"]):
            tumour = ndimage.binary_erosion(p.tissue == T.TUMOUR + i, iterations=1)
            if tumour.sum() < 40:
                continue
            ring = ndimage.binary_dilation(tumour, iterations=6) & (p.tissue == T.LIVER)
            ring &= ~ndimage.binary_dilation(tumour, iterations=2)
            ratio = [_median(phases[ph], tumour) / _median(phases[ph], ring) for ph in range(4)]
            scale = 1.4826 * np.median(np.abs(log_washout[ring] - np.median(log_washout[ring])))
            kinetic = (np.median(log_washout[tumour]) - np.median(log_washout[ring])) / scale
            m, kind = t["mri_contrast"], t["kinetics"]
            assert 0.2 <= m <= 0.35
            assert abs(ratio[0] - 1.0) < 0.1, (seed, i, ratio)  # iso before contrast
            if kind == "washout":
                assert abs(ratio[2] - 1.0) < 0.1 and ratio[1] > 1.1 and ratio[3] < 0.97, (seed, i, ratio)
                assert kinetic > 1.5, (seed, i, kinetic)
            elif kind == "progressive":
                assert abs(ratio[2] - 1.0) < 0.1 and ratio[1] < 0.97 and ratio[3] > 1.03, (seed, i, ratio)
                assert kinetic < -1.5, (seed, i, kinetic)
            else:
                assert ratio[2] < 0.9 and ratio[3] < 0.9, (seed, i, ratio)
            found[kind] += 1
    assert min(found.values()) >= 1 and sum(found.values()) >= 5, found


# -- files and CLI ---------------------------------------------------------------------------------

def test_dataset_layout_parses_verifies_and_reads_back(tmp_path):
    ct = make_synthetic_dataset(tmp_path / "Dataset001_CT", 2, seed=1, shape_zyx=SMALL, progress=False)
    mri = make_synthetic_dataset(tmp_path / "Dataset002_MR", 1, seed=1, modality="dce_mri", shape_zyx=SMALL,
                                 progress=False)
    info = parse_dataset_json(ct)
    assert info.channel_names == ("CT",) and info.modality == "CT" and info.num_training == 2
    assert info.labels == {"background": 0, "liver": 1, "tumour": 2} and info.file_ending == ".nii.gz"
    assert info.training_cases() == ["phantom_000", "phantom_001"]
    minfo = parse_dataset_json(mri)
    assert minfo.phases == ("pre", "arterial", "portal", "delayed") and minfo.modality == "MRI"
    assert minfo.channel_names == ("MRI_pre", "MRI_arterial", "MRI_portal", "MRI_delayed")
    assert verify_dataset(info, progress=False) == [] and verify_dataset(minfo, progress=False) == []
    facts = json.loads((ct / "synthetic_cases.json").read_text())
    assert set(facts) == {"phantom_000", "phantom_001"} and not list(tmp_path.glob(".*partial"))

    for i, case in enumerate(info.training_cases()):
        expected = render_case(np.random.default_rng(np.random.SeedSequence(1, spawn_key=(i,))), SMALL, "ct")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image, label = read_image(info.image_files(case)[0]), read_image(info.label_file(case))
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert np.array_equal(image.array, expected.images[0]) and np.array_equal(label.array, expected.label)
        for g in (image.geometry, label.geometry):
            assert g.matches(expected.geometry, tol=1e-6)
            assert g.spacing == expected.geometry.spacing and g.origin == expected.geometry.origin  # exact
            assert g.orientation() == facts[case]["orientation"]


def test_cli_writes_then_refuses_to_overwrite(autoliver_dirs, capsys):
    args = ["make_synthetic", "-d", "Demo", "--cases", "1", "--shape", "24", "48", "48", "--no-progress"]
    assert main(args) == 0
    folder = autoliver_dirs["raw"] / "Dataset001_Demo"
    before = _hashes(folder)
    assert main(args + ["--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert _hashes(folder) == before  # untouched
    assert main(args + ["--seed", "9", "--overwrite"]) == 0
    assert _hashes(folder) != before
    # an id that another dataset already uses, and a bare number, are refused
    assert main(["make_synthetic", "-d", "Other", "--cases", "1", "--shape", "24", "48", "48"]) == 2
    assert "Dataset001_Demo" in capsys.readouterr().err
    assert main(["make_synthetic", "-d", "5", "--cases", "1"]) == 2
    assert main(["make_synthetic", "-d", "Dataset007_Seven", "--cases", "1", "--shape", "24", "48", "48",
                 "--modality", "dce_mri"]) == 0
    assert parse_dataset_json(autoliver_dirs["raw"] / "Dataset007_Seven").num_phases == 4


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--cases"):
        make_synthetic_dataset(tmp_path / "Dataset001_X", 0, progress=False)
    with pytest.raises(UserError, match="modality"):
        make_synthetic_dataset(tmp_path / "Dataset001_X", 1, modality="pet", progress=False)
    with pytest.raises(UserError, match="--shape"):
        make_synthetic_dataset(tmp_path / "Dataset001_X", 1, shape_zyx=(4, 64, 64), progress=False)
    assert not (tmp_path / "Dataset001_X").exists()


def test_an_interrupted_run_resumes_and_gives_the_same_bytes(tmp_path, monkeypatch):
    clean = make_synthetic_dataset(tmp_path / "clean" / "Dataset001_R", 3, seed=2, shape_zyx=SMALL, progress=False)
    import autoliver.synthetic.dataset as ds

    real, calls = ds.render_case, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    target = tmp_path / "resumed" / "Dataset001_R"
    monkeypatch.setattr(ds, "render_case", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_dataset(target, 3, seed=2, shape_zyx=SMALL, progress=False)
    assert not target.exists() and (target.parent / ".Dataset001_R.partial").is_dir()
    calls.clear()
    monkeypatch.setattr(ds, "render_case", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    make_synthetic_dataset(target, 3, seed=2, shape_zyx=SMALL, progress=False)
    assert len(calls) == 2  # the first case was kept from the interrupted run
    assert _hashes(target) == _hashes(clean)
