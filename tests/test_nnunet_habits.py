"""nnU-Net's spellings mean what autoliver's do: each alias parses to the same options."""
from __future__ import annotations

import pytest

from autoliver import paths
from autoliver.cli import build_parser
from autoliver.errors import UserError
from autoliver.training.cli import resolve_nnunet_habits


def parsed_train(argv: list[str]) -> dict:
    args = build_parser().parse_args(["train", *argv])
    resolve_nnunet_habits(args)
    return {k: v for k, v in vars(args).items() if k != "func"}


@pytest.mark.parametrize("nnunet,autoliver", [
    (["LiTS", "3d_fullres", "0"], ["3d_fullres", "0", "-d", "LiTS"]),
    (["3", "2d", "all", "-device", "cpu"], ["2d", "all", "-d", "3", "--device", "cpu"]),
    (["3d_fullres", "1", "-num_gpus", "2"], ["3d_fullres", "1", "--num-gpus", "2"]),
    (["LiTS", "3d_lowres", "4", "-tr", "nnUNetTrainer_250epochs", "--c"],
     ["3d_lowres", "4", "-d", "LiTS", "--epochs", "250", "--c"]),
    (["3d_fullres", "0", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans", "--npz", "--val"],
     ["3d_fullres", "0", "--npz", "--val"]),
])
def test_train_aliases_parse_like_autoliver(nnunet, autoliver):
    a, b = parsed_train(nnunet), parsed_train(autoliver)
    for key in ("nnunet_trainer", "nnunet_plans"):  # the spelling itself is kept for messages
        a.pop(key), b.pop(key)
    assert a == b


def test_train_positional_order_fills_the_right_fields():
    args = parsed_train(["Dataset003_LiTS", "3d_cascade_fullres", "2"])
    assert (args["dataset"], args["configuration"], args["fold"]) == ("Dataset003_LiTS", "3d_cascade_fullres", "2")


@pytest.mark.parametrize("argv,message", [
    (["LiTS", "3d_fullres", "0", "-d", "Other"], "the dataset is given twice, 'LiTS' .* -d Other"),
    (["3d_fullres", "0", "-tr", "nnUNetTrainerDA5"], "-tr nnUNetTrainerDA5: autoliver maps nnUNetTrainer and"),
    (["3d_fullres", "0", "-tr", "nnUNetTrainer_100epochs", "--epochs", "5"], "disagree"),
    (["3d_fullres", "0", "-p", "nnUNetResEncUNetLPlans"], "-p nnUNetResEncUNetLPlans: autoliver keeps one plan"),
])
def test_train_aliases_that_do_not_map_say_so(argv, message):
    with pytest.raises(UserError, match=message):
        parsed_train(argv)


def test_raw_folder_falls_back_to_nnunet_raw_only(tmp_path, monkeypatch):
    for var in ("AUTOLIVER_RAW", "AUTOLIVER_PREPROCESSED", "AUTOLIVER_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnunet_raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "nnunet_pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nnunet_results"))
    assert paths.root("raw") == tmp_path / "nnunet_raw"  # the same layout: nnU-Net's datasets are found
    # nnU-Net's preprocessed data and results are formats of its own: never mixed with autoliver's
    assert paths.root("preprocessed") == paths.default_root("preprocessed")
    assert paths.root("results") == paths.default_root("results")
    monkeypatch.setenv("AUTOLIVER_RAW", str(tmp_path / "mine"))
    assert paths.root("raw") == tmp_path / "mine"
