"""``autoliver report``: overlays through the liver and the largest lesion, and the measurements;
display orientation independent of the file's."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autoliver.cli import main
from autoliver.errors import UserError
from autoliver.evaluation.pictures import orientation_permutation, to_display
from autoliver.evaluation.report import report
from autoliver.io.images import Geometry, write_image

SHAPE = (24, 64, 64)
GEOMETRY = Geometry(spacing=(0.75, 0.75, 2.0), origin=(-20.0, 5.0, 80.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                    shape_zyx=SHAPE)


def _scan():
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, (2.0, 0.75, 0.75))], indexing="ij")
    body = (y - 24) ** 2 + (x - 24) ** 2 <= 22 ** 2
    liver = ((z - 23) / 18) ** 2 + ((y - 22) / 12) ** 2 + ((x - 20) / 14) ** 2 <= 1
    lesion = (z - 24) ** 2 + (y - 22) ** 2 + (x - 18) ** 2 <= 8 ** 2  # 16 mm across
    small = (z - 16) ** 2 + (y - 18) ** 2 + (x - 28) ** 2 <= 3 ** 2
    seg = np.zeros(SHAPE, np.uint8)
    seg[liver] = 1
    seg[(lesion | small) & liver] = 2
    ct = np.where(body, 40, -1000) + np.where(liver, 20, 0) - np.where(seg == 2, 40, 0)
    return ct.astype(np.int16), seg


def test_report_writes_overlays_and_statistics(tmp_path, capsys):
    ct, seg = _scan()
    write_image(tmp_path / "case_0000.nii.gz", ct, GEOMETRY)
    write_image(tmp_path / "case.nii.gz", seg, GEOMETRY)
    out = tmp_path / "report"
    assert main(["report", "-i", str(tmp_path / "case_0000.nii.gz"), "-s", str(tmp_path / "case.nii.gz"),
                 "-o", str(out)]) == 0
    assert "2 lesion(s)" in capsys.readouterr().out
    import matplotlib.image

    for stem in ("liver", "lesion"):
        for view in ("axial", "coronal", "sagittal"):
            path = out / f"{stem}_{view}.png"
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            picture = matplotlib.image.imread(path)[..., :3]
            # the outlines are drawn: pure-ish green (liver) and red (tumour) pixels are present
            green = (picture[..., 1] > 0.6) & (picture[..., 0] < 0.4) & (picture[..., 2] < 0.4)
            red = (picture[..., 0] > 0.8) & (picture[..., 1] < 0.4) & (picture[..., 2] < 0.4)
            assert green.sum() > 50 and red.sum() > 20, path.name
    assert (out / "overview.png").stat().st_size > 50_000
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["num_lesions"] == 2
    big = stats["lesions"][0]
    assert 15.0 <= big["longest_axial_diameter_mm"] <= 18.0
    assert stats["liver_ml"] == pytest.approx(np.count_nonzero(seg) * 0.75 * 0.75 * 2.0 / 1000)
    assert (out / "statistics.csv").read_text().startswith("structure,id,volume_ml")


def test_report_checks_the_grid_and_the_output_folder(tmp_path):
    ct, seg = _scan()
    write_image(tmp_path / "case_0000.nii.gz", ct, GEOMETRY)
    other = Geometry(GEOMETRY.spacing, (0.0, 0.0, 0.0), GEOMETRY.direction, SHAPE)
    write_image(tmp_path / "case.nii.gz", seg, other)
    with pytest.raises(UserError, match="geometry must match the scan"):
        report(tmp_path / "case_0000.nii.gz", tmp_path / "case.nii.gz", tmp_path / "out")
    write_image(tmp_path / "case.nii.gz", seg, GEOMETRY)
    with pytest.raises(UserError, match="must not be the folder of an input"):
        report(tmp_path / "case_0000.nii.gz", tmp_path / "case.nii.gz", tmp_path)


def test_display_orientation_does_not_depend_on_the_file():
    rng = np.random.default_rng(0)
    lps = rng.standard_normal((4, 5, 6))
    spacing = (3.0, 1.0, 0.5)
    shown = to_display(lps, spacing, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    np.testing.assert_array_equal(shown.array, lps)
    # the same anatomy stored RAS-style (x and y reversed) and with z stored feet-first
    flipped = lps[::-1, ::-1, ::-1]
    np.testing.assert_array_equal(to_display(flipped, spacing, (-1, 0, 0, 0, -1, 0, 0, 0, -1)).array, lps)
    # axes stored in (x, z, y) → ITK x points to world y etc.; spacing follows the axes
    permuted = np.transpose(lps, (1, 0, 2))  # array (y, z, x): ITK index x→x, y→z, z→y
    direction = (1, 0, 0, 0, 0, 1, 0, 1, 0)
    assert orientation_permutation(direction) == ([1, 0, 2], [False, False, False])
    out = to_display(permuted, (1.0, 3.0, 0.5), direction)
    np.testing.assert_array_equal(out.array, lps)
    assert out.spacing_zyx_mm == spacing
