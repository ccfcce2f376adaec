"""Generator versions 2 and 3 (``make_synthetic --randomize``): byte-deterministic per seed and
version, older versions unchanged, every tissue in its documented range, the framing rules kept,
version 3's pelvis where the field reaches it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from autoliver.errors import UserError
from autoliver.io.orientation import canonical_axes, to_canonical
from autoliver.synthetic import randomize as R
from autoliver.synthetic import tissues as T
from autoliver.synthetic.dataset import make_synthetic_dataset
from autoliver.synthetic.phantom import _draw, render_case

SMALL = (24, 48, 48)
# sha256 of the voxels of cases (seed 0, CT), (seed 1, CT), (seed 0, DCE-MRI) at SMALL, as generator
# version 1 made them before version 2 existed, and of versions 2 and 3's (seed 0, 1) when each was made.
GOLDEN = {1: "a1aa64f36e11498d67f0af0810f7fefa2765c2743d9590454f0cb17c8ebd463f",
          2: "c727077eb3c6fe42df83bc1adcd072d336f560fb4fb8f189de2aa9b5c2f77058",
          3: "b9c25f44fab7ceb8df403b214a6782ba35feb27a41bf1548e0058f22259339c5"}


def digest(version: int) -> str:
    h = hashlib.sha256()
    for seed, modality in ((0, "ct"), (1, "ct"), (0, "dce_mri")):
        if version > 1 and modality != "ct":
            continue
        p = render_case(seed, SMALL, modality, randomize=version if version > 1 else False)
        for a in (*p.images, p.label):
            h.update(a.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_each_version_makes_the_same_bytes_it_always_made(version):
    assert digest(version) == GOLDEN[version]


def test_the_dataset_records_its_version_and_repeats_byte_for_byte(tmp_path):
    def files(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*.nii.gz"))}

    a = make_synthetic_dataset(tmp_path / "a" / "Dataset001_R", 2, seed=5, shape_zyx=SMALL, progress=False,
                               randomize=True)
    b = make_synthetic_dataset(tmp_path / "b" / "Dataset001_R", 2, seed=5, shape_zyx=SMALL, progress=False,
                               randomize=True)
    v1 = make_synthetic_dataset(tmp_path / "c" / "Dataset001_R", 2, seed=5, shape_zyx=SMALL, progress=False)
    assert files(a) == files(b) != files(v1)
    meta = json.loads((a / "dataset.json").read_text())
    assert meta["synthetic"]["generator_version"] == R.LATEST and f"--randomize {R.LATEST}" in meta["description"]
    assert json.loads((v1 / "dataset.json").read_text())["synthetic"]["generator_version"] == 1
    facts = json.loads((a / "synthetic_cases.json").read_text())
    assert {f["phase"] for f in facts.values()} <= set(R.PHASE_WEIGHTS)
    with pytest.raises(UserError, match="only for --modality ct"):
        make_synthetic_dataset(tmp_path / "d" / "Dataset001_M", 1, modality="dce_mri", randomize=True, progress=False)


@pytest.mark.parametrize("version", [2, 3])
def test_every_tissue_is_drawn_in_its_range_and_rendered_at_its_value(version):
    seen_wild = seen_oral = seen_fatty = False
    for seed in range(12):
        p = render_case(seed, (32, 64, 64), "ct", randomize=version)
        scan = _draw(seed, (32, 64, 64), version)[5]
        assert scan.version == version == p.info["generator_version"]
        hu = p.info["tissue_hu"]
        assert (T.NAMES[T.BLADDER] in hu) == (version >= 3)
        for tissue, (lo, hi) in R.tissue_ranges(scan).items():
            value = hu[T.NAMES[tissue]]
            if tissue == T.LIVER:
                value += scan.steatosis_hu
            if scan.oral_contrast and tissue in (T.BOWEL_CONTENT if version >= 3 else T.BOWEL, T.STOMACH_CONTENT):
                lo, hi = R.ORAL_CONTRAST_HU
            if tissue == T.BLADDER and scan.phase == "delayed" and value > hi:  # excreted contrast
                lo, hi = R.BLADDER_CONTRAST_HU
            assert lo - 0.01 <= value <= hi + 0.01, (seed, T.NAMES[tissue], value, (lo, hi), scan.phase)
        seen_wild |= scan.wild
        seen_oral |= scan.oral_contrast
        seen_fatty |= scan.steatosis_hu > 0
        # the liver's voxels show the liver's value (through gain, offset, cupping, texture and noise)
        liver = ndimage.binary_erosion(p.tissue == T.LIVER, iterations=2)
        if liver.sum() > 200:
            v = scan.values
            expected = hu["liver"] * v["hu_gain"] + v["hu_offset"]
            assert abs(float(np.median(p.images[0][liver])) - expected) <= abs(v["cupping_hu"]) + 15.0, seed
    assert seen_wild and seen_oral and seen_fatty  # these 12 seeds cover every kind of case


def test_scan_draws_follow_the_tables():
    rng = np.random.default_rng(0)
    scans = [R.draw_scan(rng) for _ in range(600)]
    for phase, weight in R.PHASE_WEIGHTS.items():
        assert abs(np.mean([s.phase == phase for s in scans]) - weight) < 0.06, phase
    assert abs(np.mean([s.wild for s in scans]) - R.WILD_P) < 0.05
    assert abs(np.mean([s.liver_cut != 0 for s in scans]) - R.FRAMING["liver_cut_p"]) < 0.06
    assert {s.orientation for s in scans} == set(R.ORIENTATIONS)
    for name, (lo, hi) in R.SCANNER.items():
        values = [s.values[name] for s in scans]
        if name == "cupping_hu":
            values = np.abs(values)
        assert lo <= min(values) and max(values) <= hi, name


def test_a_field_cut_through_the_liver_ends_in_it():
    cut_top = cut_bottom = 0
    for seed in range(40):
        scan = _draw(seed, (32, 64, 64), R.LATEST)[5]
        if not scan.liver_cut:
            continue
        p = render_case(seed, (32, 64, 64), "ct", randomize=True)
        label = to_canonical(p.label, canonical_axes(p.geometry.direction))  # z towards the head
        slices = np.flatnonzero(label.any(axis=(1, 2)))
        if scan.liver_cut > 0:
            assert slices.max() == label.shape[0] - 1, seed  # the liver reaches the top slice
            cut_top += 1
        else:
            assert slices.min() == 0, seed
            cut_bottom += 1
        if cut_top and cut_bottom:
            break
    assert cut_top and cut_bottom


def test_the_randomisation_table_is_documented():
    rows = R.table_rows()
    assert set(R.PHASE_WEIGHTS) <= {k.split()[0] for k, _ in rows if k.endswith(" HU")}
    values = {v for _, v in rows}
    assert all(f"{lo:g} to {hi:g}" in values for lo, hi in R.SCANNER.values())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [f"| {k} | {v} |" for k, v in rows if f"| {k} | {v} |" not in readme]
    assert not missing, f"README's table of generator version 2 is out of date: {missing}"


def test_version_3_adds_a_pelvis_below_the_liver_and_nothing_else_changes_above_it():
    """A field that goes on into the pelvis shows version 3's pelvis (bladder in the basin between the
    iliac wings, muscles and bones around it, no liver); above the iliac crests the anatomy and the
    liver are version 2's, and a case whose field stays above the crests paints no pelvic tissue."""
    pelvic = (T.BLADDER, T.PELVIC_ORGAN)
    seen_pelvis = seen_above = False
    for seed in range(30):
        rng, anat, grid, *_ = _draw(seed, (48, 64, 64), 3)
        pv = anat.pelvis
        assert pv.pubis_z < pv.hip_z < pv.sacrum_z < pv.crest_z < min(k.centre[2] for k in anat.kidneys)
        p3 = render_case(seed, (48, 64, 64), "ct", randomize=3)
        axes = canonical_axes(p3.geometry.direction)
        tissue = to_canonical(p3.tissue, axes)
        z = np.sort(grid.z)  # canonical slices go from the feet to the head
        below = z < pv.crest_z
        if not below.any():
            assert not np.isin(tissue, pelvic).any(), seed
            seen_above = True
            continue
        label = to_canonical(p3.label, axes)
        assert not label[z < pv.hip_z].any(), seed  # no liver in the pelvis
        if z.min() < pv.hip_z and pv.bladder is not None:
            bladder = np.argwhere(tissue == T.BLADDER)
            assert len(bladder) > 0, seed
            assert z[bladder[:, 0]].max() < pv.crest_z, seed
            bone = np.isin(tissue[below], (T.BONE_CORTEX, T.BONE_MARROW)).sum()
            muscle = (tissue[below] == T.MUSCLE).sum()
            assert bone > 0 and muscle > bone, seed
            seen_pelvis = True
        # above the crest the body is version 2's (same draws), apart from the bowel's content and
        # the iliac vessels (which start above the crest)
        p2 = render_case(seed, (48, 64, 64), "ct", randomize=2)
        t2 = to_canonical(p2.tissue, canonical_axes(p2.geometry.direction))
        above = z > pv.crest_z + 40.0
        same = (t2[above] == tissue[above]) | np.isin(tissue[above], (T.BOWEL, T.BOWEL_CONTENT, T.BOWEL_GAS))
        assert same.mean() > 0.999, seed
        np.testing.assert_array_equal(to_canonical(p2.label, axes)[above] > 0, label[above] > 0)
        if seen_pelvis and seen_above:
            break
    assert seen_pelvis and seen_above
