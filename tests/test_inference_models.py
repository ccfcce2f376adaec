"""Model variants at prediction time: cascade, 2D, ensembles of configurations, --fast, export zip."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from autoliver.cli import main
from autoliver.errors import UserError
from autoliver.inference.export import export_model
from autoliver.inference.model import CHOICE_SCHEMA_VERSION, InferenceChoice, load_model, write_choice
from autoliver.inference.run import PredictRequest, predict
from autoliver.io.images import read_image
from autoliver.postprocessing import Postprocessing
from inference_helpers import save_model, tiny_configuration, tiny_plan
from test_inference_predict import small_scan


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """3d_fullres, 3d_lowres, 3d_cascade_fullres and 2d of one plan, untrained."""
    d = tmp_path_factory.mktemp("zoo")
    full = tiny_configuration("3d_fullres", spacing=(4.0, 4.0, 4.0), data_identifier="plans_3d")
    low = tiny_configuration("3d_lowres", spacing=(8.0, 8.0, 8.0), data_identifier="plans_low")
    cascade = tiny_configuration("3d_cascade_fullres", spacing=(4.0, 4.0, 4.0), data_identifier="plans_3d",
                                 previous_stage="3d_lowres", in_channels=3)
    two_d = tiny_configuration("2d", spacing=(4.0, 4.0, 4.0), patch=(32, 32), dims=2, data_identifier="plans_3d")
    plan = tiny_plan([full, low, cascade, two_d])
    for name in plan.configurations:
        save_model(d, plan, name, folds=("0", "1"), seed=10 * sorted(plan.configurations).index(name))
    return d


@pytest.fixture
def scans(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    small_scan(src / "a_0000.nii.gz", seed=1)
    small_scan(src / "b_0000.nii.gz", seed=2, shape=(9, 30, 41))
    return src


@pytest.mark.parametrize("config", ["3d_fullres", "3d_lowres", "3d_cascade_fullres", "2d"])
def test_every_configuration_predicts_on_the_input_grid(zoo, scans, tmp_path, config):
    out = tmp_path / "out"
    assert predict(PredictRequest(input=scans, output=out, model_dir=zoo, configurations=(config,), tta=False)) == 0
    for case in ("a", "b"):
        inp, seg = read_image(scans / f"{case}_0000.nii.gz"), read_image(out / f"{case}.nii.gz")
        assert seg.geometry.matches(inp.geometry, tol=1e-5) and seg.array.shape == inp.array.shape


def test_cascade_loads_its_previous_stage(zoo):
    m = load_model(zoo, configurations=["3d_cascade_fullres"], folds=["1"])
    stage = m.stages[0]
    assert stage.previous is not None and stage.previous.name == "3d_lowres" and stage.previous.folds == ["1"]


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_cascade_and_fast_use_the_stages_trained_with_their_recipe(zoo, scans, tmp_path):
    """A cascade trained with --recipe adam was trained on 3d_lowres__adam's predictions (see the
    trainer), so prediction and export must use that first stage, not the default recipe's."""
    import shutil

    from autoliver.planning.plan import read_plan
    from autoliver.training.checkpoint import load_trained_model

    d = tmp_path / "m"
    shutil.copytree(zoo, d)
    plan = read_plan(d / "3d_fullres" / "plans.json")
    for name, seed in (("3d_lowres", 100), ("3d_cascade_fullres", 200), ("3d_fullres", 300)):
        save_model(d, plan, name, folds=("0",), seed=seed, recipe="adam")
    adam_lowres, _, _ = load_trained_model(d / "3d_lowres__adam" / "fold_0")
    default_lowres, _, _ = load_trained_model(d / "3d_lowres" / "fold_0")
    assert not _same_weights(adam_lowres, default_lowres)

    m = load_model(d, configurations=["3d_cascade_fullres__adam"], folds=["0"])
    previous = m.stages[0].previous
    assert _same_weights(previous.networks[0], adam_lowres)
    assert m.describe() == "3d_cascade_fullres__adam (folds 0); post-processing: none"
    fast = load_model(d, configurations=["3d_fullres__adam"], fast=True)
    assert _same_weights(fast.stages[0].networks[0], adam_lowres)

    z = export_model(d, tmp_path / "adam.zip", configurations=["3d_cascade_fullres__adam"], folds=["0"])
    with zipfile.ZipFile(z) as f:
        assert sorted(n for n in f.namelist() if n.endswith(".pt")) == [
            "3d_cascade_fullres__adam/fold_0/checkpoint_final.pt", "3d_lowres__adam/fold_0/checkpoint_final.pt"]
    a, b = tmp_path / "a", tmp_path / "b"
    predict(PredictRequest(input=scans, output=a, model_dir=d, configurations=("3d_cascade_fullres__adam",),
                           folds=("0",), tta=False))
    predict(PredictRequest(input=scans, output=b, model_dir=z, tta=False))
    for case in ("a.nii.gz", "b.nii.gz"):
        np.testing.assert_array_equal(read_image(a / case).array, read_image(b / case).array)


def test_two_configurations_are_averaged(zoo, scans, tmp_path):
    outs = {}
    for configs in (("3d_fullres",), ("2d",), ("3d_fullres", "2d")):
        out = tmp_path / "_".join(configs)
        predict(PredictRequest(input=scans, output=out, model_dir=zoo, configurations=configs, tta=False,
                               save_probabilities=True))
        with np.load(out / "a.npz") as z:
            outs[configs] = z["probabilities"].astype(np.float32)
    mean = (outs[("3d_fullres",)] + outs[("2d",)]) / 2
    np.testing.assert_allclose(outs[("3d_fullres", "2d")], mean, atol=2e-3)


def test_fast_mode_uses_lowres_one_fold_no_tta(zoo):
    m = load_model(zoo, configurations=["3d_fullres"], fast=True)
    assert [s.name for s in m.stages] == ["3d_lowres"] and m.stages[0].folds == ["0"]
    m = load_model(zoo, configurations=["2d"], fast=True)
    assert [s.name for s in m.stages] == ["2d"] and len(m.stages[0].networks) == 1


def test_network_passes_count_folds_mirrorings_and_cascade_stages(zoo, scans, tmp_path, capsys):
    from autoliver.inference.predictor import PredictOptions, network_passes

    tta, plain = PredictOptions(mirror=True), PredictOptions(mirror=False)
    both = load_model(zoo, configurations=["3d_fullres", "2d"])
    assert network_passes(both, tta) == 2 * 8 + 2 * 4 and network_passes(both, plain) == 4
    cascade = load_model(zoo, configurations=["3d_cascade_fullres"])
    assert network_passes(cascade, tta) == 2 * 8 + 2 * 8
    assert network_passes(load_model(zoo, configurations=["3d_fullres"], fast=True), plain) == 1
    # on a CPU the user is told, before the work starts, what --fast would save
    predict(PredictRequest(input=scans, output=tmp_path / "o", model_dir=zoo, configurations=("3d_fullres",),
                           device="cpu"))
    assert "every tile runs 16 times" in capsys.readouterr().err
    predict(PredictRequest(input=scans, output=tmp_path / "f", model_dir=zoo, configurations=("3d_fullres",),
                           device="cpu", fast=True))
    assert "every tile runs" not in capsys.readouterr().err


def test_choice_file_drives_the_default_model(zoo, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(zoo, d)
    with pytest.raises(UserError, match="several trained configurations"):
        load_model(d)
    pp = Postprocessing(keep_largest_liver=True)
    write_choice(d, InferenceChoice(CHOICE_SCHEMA_VERSION, "Dataset001_Tiny", ("3d_fullres", "2d"), ("1",), "final",
                                    pp, {"liver": 0.9}))
    m = load_model(d)
    assert [s.name for s in m.stages] == ["3d_fullres", "2d"] and m.stages[0].folds == ["1"]
    assert m.postprocessing == pp
    # naming other configurations drops the choice's post-processing (it was decided for the choice)
    assert load_model(d, configurations=["3d_lowres"]).postprocessing == Postprocessing()


def test_export_zip_is_self_contained_and_predicts_identically(zoo, scans, tmp_path):
    z = export_model(zoo, tmp_path / "model.zip", configurations=["3d_cascade_fullres"], folds=["0"])
    with zipfile.ZipFile(z) as f:
        names = sorted(f.namelist())
    assert names == ["3d_cascade_fullres/fold_0/checkpoint_final.pt", "3d_cascade_fullres/plans.json",
                     "3d_lowres/fold_0/checkpoint_final.pt", "3d_lowres/plans.json", "inference_choice.json"]
    a, b = tmp_path / "a", tmp_path / "b"
    predict(PredictRequest(input=scans, output=a, model_dir=zoo, configurations=("3d_cascade_fullres",),
                           folds=("0",), tta=False))
    predict(PredictRequest(input=scans, output=b, model_dir=z, tta=False))
    for case in ("a.nii.gz", "b.nii.gz"):
        np.testing.assert_array_equal(read_image(a / case).array, read_image(b / case).array)


def test_export_cli_and_broken_zips(zoo, tmp_path, autoliver_dirs, capsys):
    import shutil

    shutil.copytree(zoo, autoliver_dirs["results"] / "Dataset001_Tiny")
    out = tmp_path / "m.zip"
    assert main(["export", "-d", "1", "-c", "3d_fullres", "-f", "1", "-o", str(out)]) == 0
    assert "predict -m" in capsys.readouterr().err
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as f:
        f.writestr("../outside.txt", "x")
        f.writestr("a/checkpoint_final.pt", "x")
    src = tmp_path / "in"
    src.mkdir()
    small_scan(src / "x_0000.nii.gz")
    with pytest.raises(UserError, match="refuses"):
        predict(PredictRequest(input=src, output=tmp_path / "o", model_dir=evil))
    assert not (tmp_path / "outside.txt").exists()
    assert main(["export", "-d", "1", "-c", "3d_fullres", "-o", str(tmp_path / "m.tar")]) == 2


def test_predict_cli_end_to_end(zoo, scans, tmp_path, autoliver_dirs):
    import shutil

    shutil.copytree(zoo, autoliver_dirs["results"] / "Dataset001_Tiny")
    out = tmp_path / "cli"
    assert main(["predict", "-i", str(scans), "-o", str(out), "-d", "Tiny", "-c", "3d_lowres", "--fast",
                 "--no-progress", "--save-probabilities"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "a.npz", "b.nii.gz", "b.npz"]
    assert main(["predict", "-i", str(scans), "-o", str(scans), "-d", "Tiny"]) == 2
    assert main(["predict", "-i", str(scans), "-o", str(out), "-d", "Tiny", "-c", "3d_fullres",
                 "--num-parts", "2", "--part-id", "2"]) == 2
    assert main(["predict", "-i", str(scans), "-o", str(out), "-d", "Tiny", "--step-size", "0"]) == 2
    assert main(["predict", "-i", str(scans), "-o", str(out), "-d", "Tiny", "-c", "3dfullres"]) == 2
    if not torch.cuda.is_available():
        assert main(["predict", "-i", str(scans), "-o", str(out), "-d", "Tiny", "--device", "cuda"]) == 2


def test_postprocessing_is_applied_at_prediction(zoo, scans, tmp_path):
    """The chosen recipe runs at prediction: with keep_largest_liver at most one organ component
    remains, and post-processing only removes voxels from the plain argmax."""
    from scipy import ndimage

    m_dir = tmp_path / "m"
    import shutil

    shutil.copytree(zoo, m_dir)
    write_choice(m_dir, InferenceChoice(CHOICE_SCHEMA_VERSION, "Dataset001_Tiny", ("3d_fullres",), ("0",), "final",
                                        Postprocessing(keep_largest_liver=True), {}))
    out = tmp_path / "pp"
    predict(PredictRequest(input=scans, output=out, model_dir=m_dir, tta=False))
    raw = tmp_path / "raw"
    predict(PredictRequest(input=scans, output=raw, model_dir=m_dir, tta=False, postprocessing="none"))
    for case in ("a", "b"):
        seg = read_image(out / f"{case}.nii.gz").array
        assert ndimage.label(seg > 0, structure=np.ones((3, 3, 3)))[1] <= 1
        plain = read_image(raw / f"{case}.nii.gz").array
        assert np.all((seg > 0) <= (plain > 0))  # only removes
    # The untrained networks above find one component anyway; a network whose answer is known
    # (liver above 50 HU) on two separate organs shows the step at work, voxel for voxel.
    from autoliver.inference.predictor import PredictOptions, predict_case
    from autoliver.io.images import Geometry, Image
    from test_inference_predict import threshold_model

    hu = np.zeros((12, 40, 40), np.int16)
    hu[2:8, 5:15, 5:15] = 120  # 600 voxels
    hu[3:7, 25:31, 25:31] = 120  # 144 voxels, 10 voxels away
    scan = Image(hu, Geometry((3.0, 3.0, 3.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), hu.shape))
    model = threshold_model((3.0, 3.0, 3.0), patch=(16, 32, 32))
    plain = predict_case(model, [scan], PredictOptions(mirror=False)).segmentation
    model.postprocessing = Postprocessing(keep_largest_liver=True)
    kept = predict_case(model, [scan], PredictOptions(mirror=False)).segmentation
    assert (ndimage.label(plain)[1], int((plain == 1).sum())) == (2, 744)
    np.testing.assert_array_equal(kept, (hu == 120) & (np.arange(40)[None, :, None] < 20))


def test_export_onnx_without_c_or_f_uses_the_choice_or_says_what_is_missing(zoo, tmp_path, autoliver_dirs, capsys):
    """`export --onnx` picks the configuration and fold the model would predict with, and says
    which; where nothing says which, it names what to pass (before: a traceback either way)."""
    ort = pytest.importorskip("onnxruntime")  # in the test extra: CI runs this
    pytest.importorskip("onnx")
    import shutil

    from autoliver.training.checkpoint import load_trained_model

    d = autoliver_dirs["results"] / "Dataset001_Tiny"
    shutil.copytree(zoo, d)
    assert main(["export", "-d", "1", "-o", str(tmp_path / "m.zip"), "--onnx"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"autoliver export: error: --onnx: {d} has 4 trained configurations (2d, 3d_cascade_fullres, 3d_fullres, "
        "3d_lowres) and no inference_choice.json; pass -c CONFIGURATION or run find_best_configuration first.")
    assert not (tmp_path / "m.zip").exists()  # nothing half done
    write_choice(d, InferenceChoice(CHOICE_SCHEMA_VERSION, "Dataset001_Tiny", ("3d_fullres", "2d"), ("1",), "final",
                                    Postprocessing(), {"liver": 0.9}))
    assert main(["export", "-d", "1", "-o", str(tmp_path / "m.zip"), "--onnx"]) == 0
    assert (f"export: wrote {tmp_path / 'm.onnx'}: the network of 3d_fullres, fold 1 (the chosen ensemble's "
            "first configuration and fold; ONNX holds one network: pass -c and -f for another)") in capsys.readouterr().err
    x = np.random.default_rng(1).standard_normal((1, 1, 16, 32, 32)).astype(np.float32)
    y = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": x})[0]
    net, _, _ = load_trained_model(d / "3d_fullres" / "fold_1")
    with torch.no_grad():
        np.testing.assert_allclose(y, net(torch.from_numpy(x)).numpy(), atol=1e-4)
    # -c without -f: that configuration's first trained fold
    assert main(["export", "-d", "1", "-c", "3d_lowres", "-o", str(tmp_path / "low.zip"), "--onnx"]) == 0
    assert (f"export: wrote {tmp_path / 'low.onnx'}: the network of 3d_lowres, fold 0 (its first trained fold; "
            "ONNX holds one network: pass -c and -f for another)") in capsys.readouterr().err
    assert main(["export", "-d", "1", "-c", "3d_lowres", "-f", "7", "-o", str(tmp_path / "x.zip"), "--onnx"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "autoliver export: error: --onnx: fold 7 of 3d_lowres has no checkpoint_final.pt (trained: 0, 1); "
        "pass -f with one of them.")


def test_onnx_export_matches_torch(zoo, tmp_path):
    ort = pytest.importorskip("onnxruntime")  # in the test extra: CI runs this
    pytest.importorskip("onnx")
    from autoliver.inference.export import export_onnx
    from autoliver.training.checkpoint import load_trained_model

    path = export_onnx(zoo, "3d_fullres", "0", tmp_path / "net.onnx")
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 64, 32)).astype(np.float32)  # not the patch size
    y = ort.InferenceSession(str(path)).run(None, {"image": x})[0]
    net, plan, config = load_trained_model(zoo / "3d_fullres" / "fold_0")
    with torch.no_grad():
        np.testing.assert_allclose(y, net(torch.from_numpy(x)).numpy(), atol=1e-4)
    # the file says how to use it without autoliver: grid, normalisation, channels, patch, labels
    meta = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["spacing_zyx_mm"]) == list(config.spacing_zyx_mm)
    assert json.loads(meta["patch_size"]) == list(config.patch_size)
    assert json.loads(meta["labels"]) == plan.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert json.loads(meta["channel_names"]) == list(plan.channel_names) and meta["modality"] == plan.modality
    norm = json.loads(meta["normalization"])
    assert [(n["scheme"], n["lower"], n["upper"], n["mean"], n["std"]) for n in norm] == [
        (c.scheme, c.lower, c.upper, c.mean, c.std) for c in config.normalization]
    assert json.loads(meta["autoliver.model"]) == {"dataset": plan.dataset_name, "configuration": "3d_fullres",
                                                   "fold": "0", "checkpoint": "final", "recipe": "default"}
    assert "softmax over axis 1" in meta["output"]
    assert meta["context_slices"] == "0" and "2.5D" not in meta["input"]


def test_onnx_metadata_of_a_2_5d_network_says_how_its_channels_are_stacked(zoo):
    """A runtime without autoliver must stack the neighbouring slices exactly as prediction does."""
    from dataclasses import replace

    from autoliver.inference.export import onnx_metadata
    from autoliver.inference.sliding_window import context_slab
    from autoliver.training.checkpoint import load_trained_model
    from autoliver.training.recipes import get_recipe

    _, plan, config = load_trained_model(zoo / "2d" / "fold_0")
    meta = onnx_metadata(plan, replace(config, context_slices=2), get_recipe("default"), "2d", "0", "final")
    assert meta["context_slices"] == "2"
    assert "the first 1 image channel(s) × 5 slices of C" in meta["input"] and "input channel c*5 + d + 2" in meta["input"]
    # the formula is the one prediction uses: two image channels, slices numbered, both ends clamped
    z = 6
    data = torch.stack([torch.arange(z, dtype=torch.float32) + 100 * c for c in range(2)])[:, :, None, None]
    batch = context_slab(data.expand(2, z, 3, 3).contiguous(), 0, z, 2, 2)
    for s in range(z):
        for c in range(2):
            for d in range(-2, 3):
                assert batch[s, c * 5 + d + 2, 0, 0] == 100 * c + min(max(s + d, 0), z - 1)
