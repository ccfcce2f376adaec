"""Which cases `predict -i` finds, how outputs are named, and which output folders are refused."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from autoliver.errors import UserError
from autoliver.inference.inputs import check_output_folder, find_cases
from autoliver.inference.api import remove_stale_temporaries, select_part
from autoliver.io.images import Geometry, write_image
from conftest import shared_data_path

GEOM = Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape_zyx=(3, 4, 5))


def put(path, shape=(3, 4, 5)):
    write_image(path, np.zeros(shape, np.int16), GEOM)
    return path


def test_folder_of_nnunet_style_and_plain_files(tmp_path):
    put(tmp_path / "a_0000.nii.gz")
    put(tmp_path / "b_0000.nrrd")
    put(tmp_path / "scan.mha")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden_0000.nii.gz").write_text("ignored")
    cases = find_cases(tmp_path, 1)
    assert [(c.name, c.ending) for c in cases] == [("a", ".nii.gz"), ("b", ".nrrd"), ("scan", ".mha")]
    assert cases[0].output_path(tmp_path / "out") == tmp_path / "out" / "a.nii.gz"


def test_multichannel_grouping_and_every_problem_reported(tmp_path):
    for c in range(3):
        put(tmp_path / f"full_{c:04d}.nii.gz")
    put(tmp_path / "partial_0000.nii.gz")
    put(tmp_path / "partial_0002.nii.gz")
    put(tmp_path / "plain.nii.gz")
    with pytest.raises(UserError) as e:
        find_cases(tmp_path, 3)
    msg = str(e.value)
    assert "partial_0001.nii.gz" in msg and "plain.nii.gz" in msg and "(2)" in msg
    (tmp_path / "partial_0000.nii.gz").unlink(), (tmp_path / "partial_0002.nii.gz").unlink(), (tmp_path / "plain.nii.gz").unlink()
    (case,) = find_cases(tmp_path, 3)
    assert case.name == "full" and [p.name for p in case.sources] == [f"full_{c:04d}.nii.gz" for c in range(3)]
    # a single channel file given directly pulls in its siblings
    (case,) = find_cases(tmp_path / "full_0001.nii.gz", 3)
    assert len(case.sources) == 3


def test_single_file_names(tmp_path):
    assert find_cases(put(tmp_path / "x_0000.nii.gz"), 1)[0].name == "x"
    assert find_cases(put(tmp_path / "liver scan.nrrd"), 1)[0].name == "liver scan"
    with pytest.raises(UserError, match="unsupported file type"):
        (tmp_path / "a.png").write_bytes(b"x")
        find_cases(tmp_path / "a.png", 1)
    with pytest.raises(UserError, match="does not exist"):
        find_cases(tmp_path / "missing.nii.gz", 1)


def test_duplicate_output_names_are_refused(tmp_path):
    put(tmp_path / "a_0000.nii.gz")
    put(tmp_path / "a.nrrd")
    with pytest.raises(UserError, match="same output name"):
        find_cases(tmp_path, 1)


def test_dicom_series_folder_and_subfolders(tmp_path):
    series = shared_data_path("real_dicom", "ts_ct_dicom_20slices")
    (case,) = find_cases(series, 1)
    assert case.name == "ts_ct_dicom_20slices" and case.ending == ".nii.gz" and case.sources == (series,)
    shutil.copytree(series, tmp_path / "patient1")
    put(tmp_path / "other_0000.nii.gz")
    cases = find_cases(tmp_path, 1)
    assert [(c.name, c.ending) for c in cases] == [("other", ".nii.gz"), ("patient1", ".nii.gz")]


def test_output_folder_never_the_input_folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    f = put(src / "a_0000.nii.gz")
    for bad in (src, src / "sub", src / "." / "deeper" / ".."):
        with pytest.raises(UserError, match="must not be the input folder"):
            check_output_folder(bad, src)
    with pytest.raises(UserError, match="must not be the input folder"):
        check_output_folder(src, f)  # a file's folder is its input folder
    assert check_output_folder(tmp_path / "out", src) == (tmp_path / "out").resolve()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_output_folder(tmp_path / "afile", src)


def test_parts_split_cases_disjointly(tmp_path):
    for i in range(7):
        put(tmp_path / f"c{i}_0000.nii.gz")
    cases = find_cases(tmp_path, 1)
    parts = [select_part(cases, 3, k) for k in range(3)]
    names = [c.name for p in parts for c in p]
    assert sorted(names) == sorted(c.name for c in cases) and len(names) == len(set(names))
    with pytest.raises(UserError, match="--part-id"):
        select_part(cases, 3, 3)


def test_stale_temporaries_are_removed_but_nothing_else(tmp_path):
    keep = [tmp_path / "a.nii.gz", tmp_path / "a.npz", tmp_path / ".keepme"]
    stale = [tmp_path / ".a.k2j4h_s9.nii.gz", tmp_path / ".b.npz.tmp1234.npz", tmp_path / ".c.x8a7d6f5.nrrd"]
    for p in keep + stale:
        p.write_text("x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep)
