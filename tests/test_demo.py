"""`autoliver demo` end to end in miniature: every stage runs for real, on tiny phantoms, briefly.

Accuracy is not asserted here (two epochs of training); the full demo's Dice is the README's
figure. What is asserted: each stage leaves its output where the summary says, predictions lie on
the held-out scans' grids, the evaluation covers every held-out case, and a second run resumes
instead of redoing the work.
"""
from __future__ import annotations

import math

import pytest

from autoliver.cli import main
from autoliver.io.images import read_image

pytestmark = pytest.mark.slow


def test_demo_runs_every_stage_and_resumes(tmp_path, capsys):
    work = tmp_path / "demo"
    args = ["demo", "--workdir", str(work), "--train-cases", "4", "--test-cases", "2", "--shape", "24", "48", "48",
            "--epochs", "2", "--iters", "2", "--disable-tta", "-np", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mean liver Dice" in out and "where things are" in out
    predictions = sorted((work / "predictions").glob("*.nii.gz"))
    scans = sorted((work / "heldout").glob("*/imagesTr/*_0000.nii.gz"))
    assert len(predictions) == len(scans) == 2
    for pred, scan in zip(predictions, scans):
        assert read_image(pred).geometry.matches(read_image(scan).geometry)
    assert (work / "evaluation" / "summary.json").is_file() and (work / "evaluation" / "summary.html").is_file()
    fold = next((work / "results").glob("*/3d_*/fold_all"))
    assert (fold / "checkpoint_final.pt").is_file() and (fold / "progress.png").is_file()
    dice_line = next(line for line in out.splitlines() if line.startswith("mean liver Dice"))
    assert not math.isnan(float(dice_line.split()[3].rstrip(",")))
    stamp = (fold / "checkpoint_final.pt").stat().st_mtime_ns
    assert main(args) == 0  # resumes: the trained fold is reused
    assert (fold / "checkpoint_final.pt").stat().st_mtime_ns == stamp
    assert "reusing it" in capsys.readouterr().err


def test_demo_rejects_bad_settings(tmp_path):
    assert main(["demo", "--workdir", str(tmp_path), "--train-cases", "0"]) == 2
    assert main(["demo", "--workdir", str(tmp_path), "--train-minutes", "-1"]) == 2
