"""nnU-Net v2 model folders on autoliver's predictor (autoliver.inference.nnunet_model).

The agreement test builds an nnU-Net-format model folder from a known network (nnU-Net's
PlainConvUNet from dynamic-network-architectures, seeded random weights, a hand-written plan with
a non-trivial transpose, anisotropic target spacing and CT normalisation) and predicts a real CT
with nnU-Net v2's own ``nnUNetPredictor`` in this process and with autoliver. It needs nnunetv2
and dynamic-network-architectures; their plain install replaces torch (timm → torchvision pins
another torch), so they are not part of ``autoliver[test]``: README's optional set-up step installs
them with ``--no-deps`` (CI does), and the tests that need them skip without them. The rule tests below compare with nnU-Net's functions
where it is importable and with scipy otherwise.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from autoliver.errors import UserError
from autoliver.preprocessing import nnunet_rules as rules
from conftest import shared_data_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CT = ("real_ct_manual", "chaos_ct_03_0000.nii.gz")
TRANSPOSE = [0, 2, 1]  # nnU-Net's axis i is the file's axis TRANSPOSE[i]
SPACING_T = [9.0, 2.8, 2.6]  # nnU-Net order: file (z, y, x) = (9.0, 2.6, 2.8); z/y > 3: separate z
PATCH_T = [16, 48, 64]
LABELS = {"background": 0, "liver": 1, "liver tumour": 2}
SHARPEN = 8.0
INTENSITY = {"max": 1500.0, "mean": 90.0, "median": 95.0, "min": -1024.0, "percentile_00_5": -160.0,
             "percentile_99_5": 310.0, "std": 70.0}


# --- the rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_in,n_out", [(78, 22), (22, 78), (5, 5 * 3 + 1), (10, 3), (1, 4)])
@pytest.mark.parametrize("order", [0, 1])
def test_through_plane_taps_equal_map_coordinates(n_in, n_out, order):
    """The slice weights along the separate axis are scipy's map_coordinates (mode 'nearest'), as
    nnU-Net calls it."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n_in, 3, 2))
    coords = np.meshgrid((n_in / n_out) * (np.arange(n_out) + 0.5) - 0.5, np.arange(3), np.arange(2), indexing="ij")
    expected = ndimage.map_coordinates(x, np.array(coords, dtype=float), order=order, mode="nearest")
    got = np.stack([sum(w * x[i] for i, w in taps) for taps in rules._through_taps(n_in, n_out, order)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_separate_axis_follows_nnunets_rule():
    plain = rules.ResampleRule(3, 0, None)
    assert rules.separate_axis(plain, (2.0, 1.453, 1.453), (7.0, 2.0, 2.2)) == 0  # target anisotropic
    assert rules.separate_axis(plain, (1.0, 5.0, 1.0), (1.0, 1.0, 1.0)) == 1  # case anisotropic first
    assert rules.separate_axis(plain, (2.0, 1.0, 1.0), (2.5, 1.0, 1.0)) is None  # ratio <= 3
    assert rules.separate_axis(plain, (0.24, 1.25, 1.25), (0.24, 1.25, 1.25)) is None  # two coarse axes
    assert rules.separate_axis(rules.ResampleRule(3, 0, True), (1.0, 1.0, 1.2), (1.0, 1.0, 1.0)) == 2
    assert rules.separate_axis(rules.ResampleRule(3, 0, False), (5.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None


def test_new_shape_and_nonzero_box():
    assert rules.new_shape_for((78, 256, 256), (2.0, 1.453, 1.453), (7.0, 2.0, 2.2)) == (22, 186, 169)
    a = np.zeros((6, 7, 8), np.int16)
    b = np.zeros_like(a)
    a[1:3, 2, 3] = 5
    b[4, 5, 6] = -1
    assert rules.nonzero_box([a]) == ((1, 3), (2, 3), (3, 4))
    assert rules.nonzero_box([a, b]) == ((1, 5), (2, 6), (3, 7))
    assert rules.nonzero_box([np.zeros_like(a)]) == ((0, 6), (0, 7), (0, 8))


def test_normalization_schemes():
    x = np.array([[[-2000.0, 0.0, 100.0, 500.0]]], np.float32)
    ct = rules.normalize_channel(x, rules.ChannelRule("CTNormalization", mean=90.0, std=70.0, lower=-160.0,
                                                      upper=310.0))
    np.testing.assert_allclose(ct, (np.clip(x, -160, 310) - 90) / 70, rtol=1e-6)
    z = rules.normalize_channel(x, rules.ChannelRule("ZScoreNormalization"))
    np.testing.assert_allclose(z, (x - x.mean()) / x.std(), rtol=1e-5)
    with pytest.raises(UserError, match="normalization_schemes"):
        rules.normalize_channel(x, rules.ChannelRule("MyNormalization"))


def _literal_nnunet_resample(vol, new_shape, rule, spacing, new_spacing):
    """nnU-Net's resample_data_or_seg, line by line with scipy (skimage's resize is ndimage.zoom on
    the half-voxel grid, edge mode, clipped to the input range): whole volume, float64."""
    def resize(img, shape, order):
        out = ndimage.zoom(img, [1 / f for f in np.divide(img.shape, shape)], order=order, mode="nearest",
                           grid_mode=True)
        return np.clip(out, img.min(), img.max())

    data = vol.astype(float)
    axis = rules.separate_axis(rule, spacing, new_spacing)
    if axis is None:
        return resize(data, new_shape, rule.order)
    tmp = list(new_shape)
    tmp[axis] = data.shape[axis]
    here = np.zeros(tmp)
    for i in range(data.shape[axis]):
        index = [slice(None)] * 3
        index[axis] = i
        here[tuple(index)] = resize(data[tuple(index)], [n for a, n in enumerate(new_shape) if a != axis], rule.order)
    coords = np.array(np.meshgrid(*[(o / n) * (np.arange(n) + 0.5) - 0.5 for o, n in zip(here.shape, new_shape)],
                                  indexing="ij"))
    return ndimage.map_coordinates(here, coords, order=rule.order_z, mode="nearest")


RESAMPLING_CASES = [
    ((30, 13, 11), (7.0, 1.0, 1.0), (2.0, 1.5, 1.5), rules.ResampleRule(3, 0, None)),  # separate z, upsample
    ((4, 26, 20), (1.0, 1.0, 1.0), (2.2, 0.75, 0.85), rules.ResampleRule(1, 0, None)),  # isotropic: 3D
    ((12, 20, 9), (1.0, 1.0, 4.0), (0.75, 1.0, 8.0), rules.ResampleRule(3, 1, None)),  # separate x, linear
    ((3, 13, 11), (2.0, 1.0, 1.0), (7.0, 1.5, 1.5), rules.ResampleRule(3, 0, None)),  # separate z, downsample
]


@pytest.mark.parametrize("new_shape,spacing,new_spacing,rule", RESAMPLING_CASES)
def test_resampling_equals_a_literal_reference(new_shape, spacing, new_spacing, rule):
    vol = np.random.default_rng(0).normal(size=(9, 20, 17)).astype(np.float32)
    got = rules.resample_volume(vol, new_shape, rule, spacing, new_spacing)
    expected = _literal_nnunet_resample(vol, new_shape, rule, spacing, new_spacing)
    assert got.dtype == np.float32 and got.shape == new_shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_resampling_equals_nnunets_function():
    default_resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling",
                                             reason="nnunetv2 is not installed (see the module docstring)")
    vol = np.random.default_rng(0).normal(size=(9, 20, 17)).astype(np.float32)
    for new_shape, spacing, new_spacing, rule in RESAMPLING_CASES:
        expected = default_resampling.resample_data_or_seg_to_shape(
            vol[None], new_shape, spacing, new_spacing, is_seg=False, order=rule.order, order_z=rule.order_z,
            force_separate_z=rule.force_separate_z)[0]
        got = rules.resample_volume(vol, new_shape, rule, spacing, new_spacing)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_transposed_network_takes_tiles_in_file_order():
    from autoliver.inference.nnunet_model import nnunet_gaussian_1d, wrap

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, (1, 3, 5), padding=(0, 1, 2)).eval()  # anisotropic kernel: order matters
    x = torch.randn(2, 1, 4, 6, 8)
    assert wrap(net, (0, 1, 2)) is net
    wrapped = wrap(net, (0, 2, 1))  # nnU-Net's axes (z, x, y)
    with torch.no_grad():
        expected = net(x.permute(0, 1, 2, 4, 3)).permute(0, 1, 2, 4, 3)
        torch.testing.assert_close(wrapped(x), expected)
    # nnU-Net's importance map along one axis: scipy's Gaussian of a delta at patch // 2
    g = nnunet_gaussian_1d(16)
    assert g.argmax() == 8 and g.max() == 1.0 and g[0] < g[15]
    np.testing.assert_allclose(g[8 + 3], np.exp(-0.5 * (3 / 2.0) ** 2), rtol=1e-2)


# --- loading safely --------------------------------------------------------------------------------


class NotAllowed:  # a pickled class a weights-only load must refuse
    pass


def test_checkpoint_loads_weights_only(tmp_path):
    from autoliver.inference.nnunet_model import load_checkpoint

    good = tmp_path / "good.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "logging": {"mean_fg_dice": [np.float64(0.25)]},
                "_best_ema": np.float64(0.5), "init_args": {"device": torch.device("cpu"), "fold": 0},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, good)
    loaded = load_checkpoint(good)
    assert loaded["logging"]["mean_fg_dice"] == [0.25] and loaded["inference_allowed_mirroring_axes"] == (0, 1, 2)
    bad = tmp_path / "bad.pth"
    torch.save({"network_weights": {}, "trainer": NotAllowed()}, bad)
    with pytest.raises(UserError, match="weights only"):
        load_checkpoint(bad)


def test_missing_network_package_names_the_extra(monkeypatch):
    from autoliver.inference.nnunet_model import INSTALL_HINT, build_network

    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures.architectures", None)
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures.architectures.unet", None)
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet", "arch_kwargs": {}}
    with pytest.raises(UserError, match=INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        build_network(arch, 1, 3, "plans.json configurations.3d_fullres")
    with pytest.raises(UserError, match="must be a class of dynamic-network-architectures"):
        build_network({"network_class_name": "os.system"}, 1, 3, "plans.json")


# --- the model folder --------------------------------------------------------------------------------


def _plans(arch_kwargs: dict) -> dict:
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset990_ChaosPhantom", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.0, 1.453, 1.453],
        "original_median_shape_after_transp": [78, 256, 256], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": TRANSPOSE, "transpose_backward": [int(i) for i in np.argsort(TRANSPOSE)],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": INTENSITY},
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": PATCH_T, "median_image_size_in_voxels": [17, 133, 143],
                "spacing": SPACING_T, "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": arch_kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
                "batch_dice": False},
            # a configuration that inherits, as nnU-Net's 3d_cascade_fullres does
            "3d_tiny": {"inherits_from": "3d_fullres", "patch_size": [8, 32, 32]},
        },
    }


def make_nnunet_folder(root: Path, folds=("0",)) -> Path:
    """``root/Dataset990_ChaosPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres`` with seeded random
    weights of a small PlainConvUNet, checkpoints laid out as nnU-Net's trainer saves them."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    arch_kwargs = {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
    plans = _plans(arch_kwargs)
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 1, "file_ending": ".nii.gz"}
    folder = root / "Dataset990_ChaosPhantom" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (folder / "dataset_fingerprint.json").write_text(json.dumps({"spacings": [[2.0, 1.453, 1.453]]}))
    for f in folds:
        torch.manual_seed(int(f) if f.isdigit() else 99)
        net = PlainConvUNet(input_channels=1, num_classes=len(LABELS), deep_supervision=True,
                            **{**arch_kwargs, "conv_op": torch.nn.Conv3d, "norm_op": torch.nn.InstanceNorm3d,
                               "nonlin": torch.nn.LeakyReLU})
        net.apply(net.initialize)
        with torch.no_grad():  # confident like a trained network: logit gaps well above float16 noise
            for layer in net.decoder.seg_layers:
                layer.weight.mul_(SHARPEN)
        (folder / f"fold_{f}").mkdir()
        torch.save({"network_weights": net.state_dict(), "optimizer_state": {}, "grad_scaler_state": None,
                    "logging": {"mean_fg_dice": [np.float64(0.1)], "ema_fg_dice": [np.float64(0.1)]},
                    "_best_ema": np.float64(0.1), "current_epoch": 1,
                    "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": f, "dataset_json": dataset,
                                  "device": torch.device("cpu")},
                    "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (1,)},
                   folder / f"fold_{f}" / "checkpoint_final.pth")
    return folder


def _standin_network_modules() -> dict:
    """Where dynamic-network-architectures is absent (CI: see the module docstring), a stand-in
    ``PlainConvUNet`` built from the same plans keywords (two convolutions), so that reading the
    folder, loading safely, transposing, nnU-Net's preprocessing and export still run here.
    Agreement with nnU-Net is only claimed with the real package and nnunetv2."""
    import types

    class PlainConvUNet(torch.nn.Module):
        def __init__(self, input_channels, num_classes, features_per_stage, conv_op, kernel_sizes, nonlin,
                     deep_supervision=False, **_):
            super().__init__()
            k = kernel_sizes[0]
            self.encoder = conv_op(input_channels, features_per_stage[0], k, padding=[i // 2 for i in k])
            self.nonlin = nonlin()
            self.decoder = torch.nn.Module()
            self.decoder.seg_layers = torch.nn.ModuleList([conv_op(features_per_stage[0], num_classes, 1)])

        def forward(self, x):
            return self.decoder.seg_layers[-1](self.nonlin(self.encoder(x)))

        @staticmethod
        def initialize(module):
            pass

    names = ("dynamic_network_architectures", "dynamic_network_architectures.architectures",
             "dynamic_network_architectures.architectures.unet")
    modules = {n: types.ModuleType(n) for n in names}
    modules[names[2]].PlainConvUNet = PlainConvUNet
    return modules


@pytest.fixture(scope="module")
def nnunet_case(tmp_path_factory):
    """The real CHAOS CT with a zero border (as scanners pad), so that nnU-Net's crop does something;
    and the model folder (the real network package, else the stand-in)."""
    import importlib.util

    import SimpleITK as sitk

    src = shared_data_path(*CT)
    patch = pytest.MonkeyPatch()
    if importlib.util.find_spec("dynamic_network_architectures") is None:
        for name, module in _standin_network_modules().items():
            patch.setitem(sys.modules, name, module)
    root = tmp_path_factory.mktemp("nnunet")
    img = sitk.ReadImage(str(src))
    arr = sitk.GetArrayFromImage(img)
    arr[:3] = 0
    arr[:, :20] = 0
    arr[:, :, -12:] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    scans = root / "scans"
    scans.mkdir()
    sitk.WriteImage(out, str(scans / "chaos03_0000.nii.gz"))
    yield {"root": root, "scan": scans / "chaos03_0000.nii.gz", "scans": scans,
           "model": make_nnunet_folder(root / "results", folds=("0", "1"))}
    patch.undo()


def _nnunet_prediction(folder: Path, scan: Path, folds, mirror: bool) -> np.ndarray:
    predict = pytest.importorskip("nnunetv2.inference.predict_from_raw_data",
                                  reason="nnunetv2 is not installed (README, Set up: the optional nnU-Net step)")
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    predictor = predict.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                        perform_everything_on_device=False, device=torch.device("cpu"),
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
    image, props = SimpleITKIO().read_images([str(scan)])
    return predictor.predict_single_npy_array(image, props, None, None, False)


def test_model_folder_maps_onto_autoliver(nnunet_case):
    from autoliver.inference.model import load_model

    model = load_model(nnunet_case["model"], device="cpu")
    stage = model.stages[0]
    assert stage.folds == ["0", "1"] and model.labels == LABELS
    assert stage.configuration.patch_size == (16, 64, 48)  # nnU-Net's (16, 48, 64) in file order
    assert stage.configuration.spacing_zyx_mm == (9.0, 2.6, 2.8)
    assert stage.mirror_axes == (2,)  # nnU-Net's axis 1 is the file's x
    fast = load_model(nnunet_case["model"], device="cpu", fast=True)
    assert fast.stages[0].folds == ["0"]
    with pytest.raises(UserError, match="configuration '3d_fullres' only"):
        load_model(nnunet_case["model"], configurations=["2d"])
    with pytest.raises(UserError, match="checkpoint_best.pth"):
        load_model(nnunet_case["model"], checkpoint="best")


def test_agrees_with_nnunet_predictor(nnunet_case):
    """Same labels as nnU-Net v2's predictor on >= 99.9 % of the voxels, same grid: two folds,
    mirroring over the checkpoint's axes, step 0.5 (the CLI test below runs --fast)."""
    mirror = True
    from autoliver.inference.model import load_model
    from autoliver.inference.predictor import PredictOptions, predict_case
    from autoliver.io.images import read_image

    expected = _nnunet_prediction(nnunet_case["model"], nnunet_case["scan"], ("0", "1"), mirror)
    image = read_image(nnunet_case["scan"])
    result = predict_case(load_model(nnunet_case["model"], device="cpu"), [image],
                          PredictOptions(step_size=0.5, mirror=mirror, device="cpu"))
    assert result.segmentation.shape == expected.shape == (78, 256, 256)
    agreement = float(np.mean(result.segmentation == expected))
    counts = np.bincount(expected.reshape(-1), minlength=3)
    assert (counts > 1000).sum() >= 2, f"the test network should predict several labels, got counts {counts}"
    assert agreement >= 0.999, f"label agreement {agreement:.5f} (nnU-Net counts {counts})"
    # nothing outside nnU-Net's crop box: the zero border stays background in both
    assert not result.segmentation[:3].any() and not expected[:3].any()


def test_cli_predicts_nnunet_folder(nnunet_case, tmp_path):
    """``autoliver predict -m nnUNet_results/…/nnUNetTrainer__nnUNetPlans__3d_fullres`` writes the
    segmentation on the scan's grid, --fast (one fold, no mirroring)."""
    import SimpleITK as sitk

    from autoliver.cli import main

    out = tmp_path / "out"
    code = main(["predict", "-i", str(nnunet_case["scans"]), "-o", str(out), "-m", str(nnunet_case["model"]),
                 "--fast", "--device", "cpu", "--no-progress"])
    assert code == 0
    written, scan = sitk.ReadImage(str(out / "chaos03.nii.gz")), sitk.ReadImage(str(nnunet_case["scan"]))
    assert written.GetSize() == scan.GetSize() and written.GetDirection() == scan.GetDirection()
    np.testing.assert_allclose(written.GetOrigin(), scan.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), scan.GetSpacing(), atol=1e-6)
    seg = sitk.GetArrayFromImage(written)
    assert set(np.unique(seg)) <= set(LABELS.values())


def test_dicom_series_input_equals_its_nifti(nnunet_case, tmp_path):
    """A DICOM series goes through nnU-Net's rules like the same voxels as NIfTI (20 slices of
    512², fewer network slices than the patch: padded as nnU-Net pads)."""
    from autoliver.cli import main
    from autoliver.io.images import read_image, write_image

    series = shared_data_path("real_dicom", "ts_ct_dicom_20slices")
    as_nifti = tmp_path / "nifti"
    image = read_image(series)
    write_image(as_nifti / "series_0000.nii.gz", image.array, image.geometry)
    outputs = {}
    for name, source in (("dicom", series), ("nifti", as_nifti)):
        out = tmp_path / f"out_{name}"
        assert main(["predict", "-i", str(source), "-o", str(out), "-m", str(nnunet_case["model"]), "--fast",
                     "--device", "cpu", "--no-progress"]) == 0
        outputs[name] = read_image(next(out.glob("*.nii.gz")))
    assert outputs["dicom"].geometry.matches(image.geometry) and outputs["dicom"].array.shape == (20, 512, 512)
    np.testing.assert_array_equal(outputs["dicom"].array, outputs["nifti"].array)
    assert 0 < np.count_nonzero(outputs["dicom"].array) < outputs["dicom"].array.size  # not a constant map


def test_checkpoint_saved_by_nnunets_trainer_loads_weights_only(nnunet_case, tmp_path, monkeypatch):
    """What nnUNetTrainer.save_checkpoint writes (optimizer state after a step, NumPy scalars in the
    log, the device in init_args) loads with weights only, and predicts."""
    pytest.importorskip("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", reason="nnunetv2 is not installed")
    import shutil

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from autoliver.inference.model import load_model

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path / name))
    folder = tmp_path / "model"
    shutil.copytree(nnunet_case["model"], folder)
    plans = {**json.loads((folder / "plans.json").read_text()), "continue_training": False}
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, json.loads((folder / "dataset.json").read_text()),
                            device=torch.device("cpu"))
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 3,
                                                         True)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.network(torch.randn(1, 1, *PATCH_T))[0].sum().backward()
    trainer.optimizer.step()
    trainer.logger.log("mean_fg_dice", np.float64(0.3), 0)
    trainer.logger.log("dice_per_class_or_region", [np.float64(0.2), np.float64(0.4)], 0)
    trainer._best_ema = np.float64(0.3)
    trainer.save_checkpoint(str(folder / "fold_0" / "checkpoint_final.pth"))
    model = load_model(folder, folds=["0"])
    weights = model.stages[0].networks[0].network.state_dict()  # (wrapped: the plan transposes)
    for key, value in trainer.network.state_dict().items():
        torch.testing.assert_close(weights[key], value)


def test_probabilities_are_the_softmax_of_resampled_logits(nnunet_case):
    """With probabilities asked for, they are nnU-Net's (softmax after resampling the logits): they
    sum to 1, are background-only outside the crop box, and their argmax is the segmentation."""
    from autoliver.inference.model import load_model
    from autoliver.inference.predictor import PredictOptions, predict_case
    from autoliver.io.images import read_image

    result = predict_case(load_model(nnunet_case["model"], folds=["0"]), [read_image(nnunet_case["scan"])],
                          PredictOptions(step_size=0.9, mirror=False, device="cpu", save_probabilities=True))
    p = result.probabilities.astype(np.float32)
    assert p.shape == (3, 78, 256, 256)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=2e-3)
    assert np.all(p[0, :3] == 1.0)  # the zero-padded slices lie outside nnU-Net's crop box
    assert np.mean(p.argmax(axis=0) == result.segmentation) > 0.9999  # float16 storage may tie
