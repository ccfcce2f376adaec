"""Follow-up scans: RECIST 1.1 rules, lesion correspondence (split, merged, new, disappeared), and
``track`` end to end on a synthetic patient whose follow-up is moved by a known rigid transform."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from autoliver.evaluation.recist import recist_response
from autoliver.evaluation.track import Lesion, correspond, track, track_lesions
from autoliver.io.images import Geometry, write_image

# ---------------------------------------------------------------------------------------- RECIST


@pytest.mark.parametrize("base, follow, new, expected", [
    ({1: 30.0, 2: 20.0}, {1: 20.0, 2: 14.0}, 0, "PR"),  # 50 → 34 mm: -32 %
    ({1: 30.0, 2: 20.0}, {1: 25.0, 2: 18.0}, 0, "SD"),  # -14 %
    ({1: 30.0, 2: 20.0}, {1: 38.0, 2: 22.0}, 0, "PD"),  # +20 %, +10 mm
    ({1: 12.0, 2: 10.0}, {1: 15.0, 2: 12.0}, 0, "PD"),  # +22.7 %, exactly +5 mm
    ({1: 30.0, 2: 20.0}, {1: 30.0, 2: 20.0}, 1, "PD"),  # a new lesion
    ({1: 30.0, 2: 20.0}, {1: 0.0, 2: 0.0}, 0, "CR"),
    ({1: 30.0, 2: 20.0, 3: 8.0}, {1: 0.0, 2: 0.0, 3: 6.0}, 0, "PR"),  # targets gone, a non-target remains
    ({1: 8.0}, {1: 6.0}, 0, "non-CR/non-PD"),  # nothing measurable at baseline
    ({}, {}, 0, "NE"),
])
def test_recist_categories(base, follow, new, expected):
    assert recist_response(base, follow, new).response == expected


def test_recist_needs_5_mm_absolute_growth_and_at_most_two_targets_in_the_liver():
    r = recist_response({1: 12.0, 2: 10.0}, {1: 15.0, 2: 11.5}, 0)  # +20.5 % but +4.5 mm
    assert r.response == "SD" and r.change_percent == pytest.approx(20.45, abs=0.01)
    r = recist_response({1: 40.0, 2: 30.0, 3: 20.0, 4: 15.0}, {1: 40.0, 2: 30.0, 3: 0.0, 4: 0.0}, 0)
    assert r.target_ids == [1, 2] and r.response == "SD" and r.non_target_response == "CR"
    assert recist_response({1: 40.0, 2: 30.0, 3: 20.0}, {1: 40, 2: 30, 3: 0.0}, 0, max_targets=5).response == "SD"


# --------------------------------------------------------------------------------- correspondence


def _lesion(i, d, v=1.0):
    return Lesion(id=i, voxels=int(v * 100), volume_ml=v, diameter_mm=d, centroid_lps_mm=(0.0, 0.0, 0.0))


def test_correspondence_split_merged_new_disappeared_and_near():
    # baseline 1 splits into follow-up 1 + 2; baseline 2 and 3 merge into follow-up 3; baseline 4
    # disappears; follow-up 4 is new; baseline 5 and follow-up 5 do not overlap but lie 6 mm apart.
    overlap = np.zeros((5, 5), int)
    overlap[0, 0], overlap[0, 1] = 50, 20
    overlap[1, 2], overlap[2, 2] = 30, 10
    distance = np.full((5, 5), 100.0)
    distance[4, 4] = 6.0
    sizes = np.array([100, 40, 30, 20, 10])
    c = correspond(overlap, distance, sizes, sizes, max_distance_mm=15.0)
    base = [_lesion(1, 30.0, 5.0), _lesion(2, 15.0), _lesion(3, 12.0), _lesion(4, 11.0), _lesion(5, 9.0)]
    follow = [_lesion(1, 20.0, 2.0), _lesion(2, 8.0, 0.5), _lesion(3, 25.0), _lesion(4, 7.0), _lesion(5, 9.0)]
    rows, recist, below = track_lesions(base, follow, c, distance)
    by_base = {r.baseline_id: r for r in rows if r.baseline_id}
    assert by_base[1].status == "split" and by_base[1].followup_ids == (1, 2)
    assert by_base[1].followup_diameter_mm == pytest.approx(28.0)  # RECIST: fragments add up
    assert by_base[1].followup_volume_ml == pytest.approx(2.5)
    assert by_base[1].volume_change_percent == pytest.approx(-50)
    assert by_base[2].status == by_base[3].status == "merged"
    assert by_base[2].followup_ids == (3,) and by_base[3].followup_ids == ()  # the merged lesion counts once
    assert by_base[4].status == "disappeared" and by_base[4].followup_diameter_mm == 0.0
    assert by_base[5].status == "matched" and by_base[5].distance_mm == pytest.approx(6.0)
    new = [r for r in rows if r.status == "new"]
    assert [r.followup_ids for r in new] == [(4,)]
    # targets: the two largest measurable (30, 15 mm) → 45 mm before, 28 + 25 = 53 mm after;
    # +17.8 % alone is SD, but the new 7 mm lesion makes it PD.
    assert recist.target_ids == [1, 2] and recist.sum_followup_mm == pytest.approx(53.0)
    assert recist.response == "PD" and recist.new_lesions == 1 and below == 0
    assert [r.baseline_id for r in rows if r.target] == [1, 2]


# ------------------------------------------------------------------------------------ end to end

SHAPE = (36, 80, 80)
SPACING_ZYX = (2.5, 0.9, 0.9)
GEOMETRY = Geometry(spacing=(0.9, 0.9, 2.5), origin=(-30.0, 12.0, 200.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                    shape_zyx=SHAPE)
CENTRE = np.array([(n - 1) * s / 2 for n, s in zip(SHAPE, SPACING_ZYX)])  # (z, y, x) mm from the first voxel


def _patient(lesions, shift_zyx_mm=(0.0, 0.0, 0.0), rotate_deg=0.0, seed=0):
    """A CT-like phantom (body, ellipsoid liver, spine, lesions) whose content is turned by
    ``rotate_deg`` about the z axis through the centre and then moved by ``shift_zyx_mm``.
    Lesions: ((z, y, x) mm from the centre, radius mm)."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING_ZYX)], indexing="ij")
    z, y, x = (g - c - s for g, c, s in zip(grids, CENTRE, shift_zyx_mm))
    a = np.deg2rad(rotate_deg)
    y, x = np.cos(a) * y + np.sin(a) * x, -np.sin(a) * y + np.cos(a) * x  # undo the rotation
    body = (y / 33) ** 2 + (x / 34) ** 2 <= 1
    liver = (z / 36) ** 2 + ((y + 4) / 15) ** 2 + ((x + 5) / 25) ** 2 <= 1
    spine = ((y - 22) / 5) ** 2 + (x / 5) ** 2 <= 1
    seg = np.zeros(SHAPE, np.uint8)
    seg[liver] = 1
    for (lz, ly, lx), r in lesions:
        seg[((z - lz) ** 2 + (y - ly) ** 2 + (x - lx) ** 2 <= r ** 2) & liver] = 2
    ct = np.full(SHAPE, -1000.0)
    ct[body], ct[liver], ct[seg == 2], ct[spine] = 40, 60, 20, 700
    ct += ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(SHAPE), 1.0) * 15 * body
    return ct.astype(np.int16), seg


BASELINE_LESIONS = [((0.0, -4.0, -12.0), 12.0),  # target, ~25 mm
                    ((-10.0, -2.0, 8.0), 6.0),  # target, ~12 mm
                    ((15.0, -6.0, 6.0), 4.0)]  # non-target, ~8 mm


def _write_case(tmp_path, name, ct, seg):
    write_image(tmp_path / f"{name}.nii.gz", ct, GEOMETRY)
    write_image(tmp_path / f"{name}_seg.nii.gz", seg, GEOMETRY)
    return tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_seg.nii.gz"


def _expected_followup_point(p_xyz, shift_zyx, rotate_deg):
    """Where the follow-up shows the anatomy found at baseline world point ``p_xyz``."""
    centre_xyz = np.asarray(GEOMETRY.origin) + CENTRE[::-1]
    a = np.deg2rad(rotate_deg)
    v = np.asarray(p_xyz) - centre_xyz
    # _patient shows at q the anatomy of R(a)(q - shift) (x, y rotated), so p appears at R(-a) p + shift
    rotated = np.array([np.cos(a) * v[0] + np.sin(a) * v[1], -np.sin(a) * v[0] + np.cos(a) * v[1], v[2]])
    return centre_xyz + rotated + np.asarray(shift_zyx)[::-1]


def test_track_recovers_a_rigid_move_and_classifies_partial_response(tmp_path):
    shift, angle = (5.0, -4.0, 6.3), 4.0
    base = _write_case(tmp_path, "base", *_patient(BASELINE_LESIONS))
    # After treatment: the large lesion shrinks to 6 mm radius, the non-target one is gone.
    follow_lesions = [((0.0, -4.0, -12.0), 6.0), BASELINE_LESIONS[1]]
    follow = _write_case(tmp_path, "follow", *_patient(follow_lesions, shift, angle, seed=1))
    out = tmp_path / "tracking"
    result = track(base[0], follow[0], base[1], follow[1], out)

    import SimpleITK as sitk

    transform = sitk.ReadTransform(str(out / "transform.tfm"))
    for p in ([-10.0, 20.0, 240.0], [10.0, 40.0, 220.0], [0.0, 30.0, 250.0]):
        expected = _expected_followup_point(p, shift, angle)
        assert np.linalg.norm(np.array(transform.TransformPoint(p)) - expected) < 1.0
    assert result.registration.liver_dice > 0.97

    statuses = sorted((r.status, r.baseline_id) for r in result.lesions)
    assert [s for s, _ in statuses] == ["disappeared", "matched", "matched"]
    big = max((r for r in result.lesions if r.status == "matched"), key=lambda r: r.baseline_diameter_mm)
    assert big.target and big.diameter_change_percent < -40 and big.volume_change_percent < -80
    assert big.distance_mm < 1.5
    assert result.recist.response == "PR" and result.recist.non_target_response == "CR"

    saved = json.loads((out / "track.json").read_text())
    assert saved["recist"]["response"] == "PR"
    assert (out / "track.csv").read_text().count("\n") == 4
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    moved = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "followup_lesions_in_baseline.nii.gz")))
    assert moved.shape == SHAPE and len(np.unique(moved)) == 3  # background + the 2 follow-up lesions


def test_track_new_lesion_means_progression(tmp_path):
    base = _write_case(tmp_path, "base", *_patient(BASELINE_LESIONS))
    follow_lesions = [*BASELINE_LESIONS, ((-20.0, -8.0, -5.0), 5.0)]
    follow = _write_case(tmp_path, "follow", *_patient(follow_lesions, (-3.0, 2.0, 0.0), seed=2))
    result = track(base[0], follow[0], base[1], follow[1], kind="affine")
    assert [r.status for r in result.lesions].count("new") == 1
    assert [r.status for r in result.lesions].count("matched") == 3
    assert result.recist.response == "PD" and result.recist.new_lesions == 1
    assert abs(result.recist.change_percent) < 5


def test_track_asks_for_the_segmentations(tmp_path):
    from autoliver.errors import UserError

    base = _write_case(tmp_path, "base", *_patient(BASELINE_LESIONS))
    with pytest.raises(UserError, match="--seg-followup is required"):
        track(base[0], base[0], base[1], None)
