"""nnU-Net v2 model folders on autoliver's predictor.

An nnU-Net v2 training output folder (``nnUNet_results/DatasetXXX/nnUNetTrainer__nnUNetPlans__3d_fullres``)::

    plans.json  dataset.json  [dataset_fingerprint.json]
    fold_{k}/checkpoint_{final,best}.pth

is read without nnU-Net itself: the plans' configuration (its ``inherits_from`` resolved), the
labels and channels of ``dataset.json``, and each fold's weights through ``torch.load(...,
weights_only=True)`` (never arbitrary unpickling: nnU-Net's checkpoints hold only plain types,
tensors and NumPy scalars in the training log, and only the NumPy scalar types are allowed in
addition). The network is rebuilt from the plans' architecture with dynamic-network-architectures
(the optional extra ``autoliver[nnunet]``), whose classes and torch.nn layers are looked up by
name in those two packages only.

The result is an ordinary :class:`~autoliver.inference.model.Model`, so autoliver's predictor
runs it: bounded-memory sliding window, mirroring over the checkpoint's allowed axes, fold
averaging, ``--fast``, DICOM input and output. What nnU-Net does differently from autoliver's own
models travels with the stage:

* preprocessing: nnU-Net's crop, normalisation and resampling rules
  (:mod:`autoliver.preprocessing.nnunet_rules`), as the stage's ``preprocess``;
* export: nnU-Net resamples the *logits* back to the scan (linear, nearest along a separate axis)
  and takes the softmax afterwards, so the stage keeps its logits (``softmax_after_resampling``)
  and the properties carry nnU-Net's orders for the way back;
* axis order: nnU-Net transposes each case (``transpose_forward``) before the network sees it.
  Here the case keeps its file order and the network is wrapped to transpose each tile instead;
  the patch and the mirroring axes are given in file order. Tile positions per axis, Gaussian
  weights and interpolation are the same along each physical axis, so the logits are too.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoliver.errors import UserError
from autoliver.preprocessing import nnunet_rules as rules

FOLD_RE = re.compile(r"^fold_(\d+|all)$")
INSTALL_HINT = 'pip install "autoliver[nnunet]"'
_NETWORK_PACKAGE = "dynamic_network_architectures.architectures."
# Layer classes a plans file may name (nnU-Net's "_kw_requires_import"): torch.nn only.
_TORCH_PREFIXES = ("torch.nn.modules.", "torch.nn.")


# --- recognising and reading the folder --------------------------------------------------------


def is_nnunet_model_folder(folder: str | os.PathLike) -> bool:
    """A folder with nnU-Net's plans.json (its keys), dataset.json and some fold_*/checkpoint_*.pth."""
    folder = Path(folder)
    plans = folder / "plans.json"
    if not (plans.is_file() and (folder / "dataset.json").is_file()):
        return False
    try:
        doc = json.loads(plans.read_text())
    except (OSError, ValueError):
        return False
    keys = ("configurations", "transpose_forward", "foreground_intensity_properties_per_channel")
    return isinstance(doc, dict) and all(k in doc for k in keys) and bool(nnunet_folds(folder, "final")
                                                                          or nnunet_folds(folder, "best"))


def nnunet_folds(folder: Path, checkpoint: str = "final") -> list[str]:
    folds = [m.group(1) for p in folder.iterdir() if (m := FOLD_RE.match(p.name))
             and (p / f"checkpoint_{checkpoint}.pth").is_file()]
    return sorted(folds, key=lambda f: (f == "all", int(f) if f.isdigit() else 0))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as JSON ({e}). Is the nnU-Net model folder complete?") from None


def resolved_configuration(plans: dict, name: str, where: str) -> dict:
    """A configuration of nnU-Net's plans with its ``inherits_from`` chain merged (parent first)."""
    configs = plans.get("configurations", {})
    chain, seen = [], set()
    while name:
        if name not in configs:
            raise UserError(f"{where}: configuration {name!r} is not in plans.json (there: "
                            f"{', '.join(configs) or 'none'}).")
        if name in seen:
            raise UserError(f"{where}: configurations inherit from each other in a loop ({' → '.join(chain)}).")
        seen.add(name)
        chain.append(name)
        name = configs[name].get("inherits_from", "")
    merged: dict = {}
    for n in reversed(chain):
        merged.update({k: v for k, v in configs[n].items() if k != "inherits_from"})
    return merged


def load_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint, unpickled with weights only.

    Its training log holds NumPy scalars (mean Dice per epoch); their reconstructors are the only
    classes allowed beyond torch's own safe set, and only while this file loads.
    """
    import torch

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import scalar
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25 pickles a scalar's dtype by its class
    allowed = [scalar, np.dtype] + [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType",
                                                                   "Int32DType", "BoolDType") if hasattr(dtypes, n)]
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        if allow is None:
            return torch.load(path, map_location="cpu", weights_only=True)
        with allow(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling error names the class it refused
        raise UserError(f"{path}: cannot be loaded safely (weights only): {str(e).splitlines()[0]}. autoliver loads "
                        "nnU-Net checkpoints without running pickled code; a checkpoint holding other objects "
                        "needs nnU-Net's own predictor.") from None


# --- the network -------------------------------------------------------------------------------


def _torch_layer(name: str | None, where: str):
    import torch

    if name is None:
        return None
    if not name.startswith(_TORCH_PREFIXES):
        raise UserError(f"{where}: must name a torch.nn layer, got {name!r}. Custom layers need nnU-Net's own "
                        "predictor.")
    obj = getattr(torch.nn, name.rsplit(".", 1)[-1], None)
    if obj is None:
        raise UserError(f"{where}: {name!r} is not a torch.nn layer of this torch version.")
    return obj


def build_network(architecture: dict, in_channels: int, num_classes: int, where: str):
    """The plans' network (deep supervision off) from dynamic-network-architectures."""
    import importlib

    class_name = architecture.get("network_class_name", "")
    if not class_name.startswith(_NETWORK_PACKAGE):
        raise UserError(f"{where}.architecture.network_class_name: must be a class of dynamic-network-architectures "
                        f"({_NETWORK_PACKAGE}…), got {class_name!r}.")
    module_name, _, cls = class_name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if "dynamic_network_architectures" in str(e):
            raise UserError(f"{where}: nnU-Net models need dynamic-network-architectures to build the network; "
                            f"install it with {INSTALL_HINT} (or `pip install --no-deps dynamic-network-architectures` "
                            "to keep the installed torch).") from None
        raise UserError(f"{where}.architecture.network_class_name: {class_name!r} cannot be imported ({e}); "
                        "update dynamic-network-architectures.") from None
    network_class = getattr(module, cls, None)
    if network_class is None:
        raise UserError(f"{where}.architecture.network_class_name: {module_name} has no class {cls!r}; update "
                        "dynamic-network-architectures.")
    kwargs = dict(architecture.get("arch_kwargs", {}))
    for key in architecture.get("_kw_requires_import", ()):
        kwargs[key] = _torch_layer(kwargs.get(key), f"{where}.architecture.arch_kwargs.{key}")
    kwargs["deep_supervision"] = False
    return network_class(input_channels=in_channels, num_classes=num_classes, **kwargs)


def _transposed_network_class():
    import torch

    class TransposedNetwork(torch.nn.Module):
        """A network trained on nnU-Net's transposed axes, taking tiles in file order: the tile's
        spatial axes move into nnU-Net's order, and the logits move back."""

        def __init__(self, network, transpose_forward: tuple[int, ...]):
            super().__init__()
            self.network = network
            inverse = [int(i) for i in np.argsort(transpose_forward)]
            self.to_network = (0, 1, *[2 + int(t) for t in transpose_forward])
            self.from_network = (0, 1, *[2 + t for t in inverse])

        def forward(self, x):
            y = self.network(x.permute(self.to_network).contiguous())
            if isinstance(y, (list, tuple)):
                y = y[0]
            return y.permute(self.from_network)

    return TransposedNetwork


def wrap(network, transpose: tuple[int, ...]):
    """The network as is for the identity transpose, else wrapped to take tiles in file order."""
    if tuple(transpose) == tuple(range(len(transpose))):
        return network
    return _transposed_network_class()(network, transpose).eval()


def nnunet_gaussian_1d(patch: int, sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """nnU-Net's tile weights along one axis: its importance map is scipy's ``gaussian_filter`` of
    a delta at ``patch // 2`` (σ = patch / 8, truncated at 4 σ), a product of these 1D factors.
    autoliver's own map is centred on ``(patch - 1) / 2``; for an even patch the half-voxel shift
    changes the border weights by a factor of two or more, which moves logits where tiles overlap."""
    from scipy import ndimage

    delta = np.zeros(int(patch))
    delta[int(patch) // 2] = 1.0
    g = ndimage.gaussian_filter1d(delta, patch * sigma_scale, mode="constant", cval=0.0)
    g /= g.max()
    g[g == 0] = g[g > 0].min()  # nnU-Net: no zero weights
    return g


# --- preprocessing and the stage ------------------------------------------------------------------


@dataclass(frozen=True)
class NnUNetPreprocessor:
    """nnU-Net's DefaultPreprocessor for one configuration, in file axis order.

    spacing_zyx_mm: the target spacing in file order (a 2D configuration's axis 0 keeps the case's).
    """

    spacing_zyx_mm: tuple[float, float, float]
    dims: int
    channels: tuple[rules.ChannelRule, ...]
    data: rules.ResampleRule
    logits: rules.ResampleRule  # the way back (nnU-Net's resampling_fn_probabilities)
    plan: object  # the autoliver Plan (its channels, for the input checks)

    def target_spacing(self, spacing: tuple[float, ...]) -> tuple[float, float, float]:
        if self.dims == 2:
            return (float(spacing[0]), *self.spacing_zyx_mm[1:])
        return self.spacing_zyx_mm

    def __call__(self, images, case: str = "") -> tuple[np.ndarray, dict]:
        from autoliver.preprocessing.pipeline import check_input_layout, grid_properties, stack_channels

        check_input_layout(images, self.plan, case)
        arrays, first = stack_channels(images, case)
        shape = tuple(int(n) for n in arrays[0].shape)
        spacing = tuple(float(s) for s in first.geometry.spacing_zyx_mm)
        if len(arrays) != len(self.channels):
            raise UserError(f"case {case}: the model normalises {len(self.channels)} channel(s), the case has "
                            f"{len(arrays)}.")
        box = rules.nonzero_box(arrays)
        cropped = [a[tuple(slice(lo, hi) for lo, hi in box)] for a in arrays]
        crop_shape = tuple(hi - lo for lo, hi in box)
        target = self.target_spacing(spacing)
        new_shape = rules.new_shape_for(crop_shape, spacing, target)
        mask = (rules.filled_nonzero_mask(cropped) if any(c.use_mask and c.scheme == "ZScoreNormalization"
                                                          for c in self.channels) else None)
        data = np.empty((len(cropped), *new_shape), dtype=np.float32)
        for c, (channel, rule) in enumerate(zip(cropped, self.channels)):
            normalized = rules.normalize_channel(channel, rule, mask)
            data[c] = rules.resample_volume(normalized, new_shape, self.data, spacing, target)
            del normalized
        # The way back, as nnU-Net's export: from the network's spacing to the case's.
        axis = rules.separate_axis(self.logits, target, spacing)
        orders = [self.logits.order] * 3
        if axis is not None:
            orders[axis] = self.logits.order_z
        properties = {
            **grid_properties(case, first.geometry, len(arrays), box, shape, crop_shape, new_shape, spacing, target),
            "resampling": {"orders_label_zyx": orders, "through_plane_axis": axis},
            "values": "logits",  # softmax after resampling back (autoliver.inference.original_grid)
            "preprocessing": "nnunetv2",
        }
        return data, properties


def _channel_rules(plans: dict, config: dict, n_channels: int, where: str) -> tuple[rules.ChannelRule, ...]:
    schemes = list(config.get("normalization_schemes", []))
    masks = list(config.get("use_mask_for_norm", [False] * len(schemes)))
    props = plans.get("foreground_intensity_properties_per_channel", {})
    if len(schemes) != n_channels:
        raise UserError(f"{where}.normalization_schemes: must have one entry per channel of dataset.json "
                        f"({n_channels}), got {schemes}.")
    out = []
    for c, scheme in enumerate(schemes):
        if scheme not in rules.NORMALIZATION_SCHEMES:
            raise UserError(f"{where}.normalization_schemes[{c}]: must be one of "
                            f"{', '.join(rules.NORMALIZATION_SCHEMES)}, got {scheme!r}. A model with a custom "
                            "normaliser needs nnU-Net's own predictor.")
        p = props.get(str(c), {})
        if scheme == "CTNormalization" and not all(k in p for k in ("mean", "std", "percentile_00_5",
                                                                      "percentile_99_5")):
            raise UserError(f"plans.json foreground_intensity_properties_per_channel.{c}: CTNormalization needs "
                            f"mean, std, percentile_00_5 and percentile_99_5, got {sorted(p)}.")
        out.append(rules.ChannelRule(scheme, bool(masks[c]) if c < len(masks) else False, float(p.get("mean", 0.0)),
                                     float(p.get("std", 1.0)), float(p.get("percentile_00_5", 0.0)),
                                     float(p.get("percentile_99_5", 0.0))))
    return tuple(out)


def _resample_rule(config: dict, key: str, where: str) -> rules.ResampleRule:
    fn = config.get(f"resampling_fn_{key}", "resample_data_or_seg_to_shape")
    if fn != "resample_data_or_seg_to_shape":
        raise UserError(f"{where}.resampling_fn_{key}: only nnU-Net's resample_data_or_seg_to_shape is "
                        f"reproduced, got {fn!r}.")
    kw = config.get(f"resampling_fn_{key}_kwargs", {})
    # nnU-Net's function defaults (order 3, order_z 0, force_separate_z False) where the plans are silent.
    return rules.ResampleRule(int(kw.get("order", 3)), int(kw.get("order_z", 0)), kw.get("force_separate_z", False))


def _labels(dataset: dict, where: str) -> dict[str, int]:
    labels = dataset.get("labels", {})
    regions = [k for k, v in labels.items() if not isinstance(v, int)]
    if regions or not labels:
        raise UserError(f"{where}/dataset.json labels: must map names to integers, got "
                        f"{ {k: labels[k] for k in regions} or labels}. Region-based nnU-Net models are not "
                        "supported; predict them with nnU-Net.")
    if dataset.get("ignore_label") is not None or "ignore" in labels:
        labels = {k: v for k, v in labels.items() if k != "ignore"}
    return dict(sorted(labels.items(), key=lambda kv: kv[1]))


def _in_file_order(values, transpose: tuple[int, ...]) -> tuple:
    """nnU-Net's per-axis values (transposed order) in the file's axis order."""
    out = [None] * len(transpose)
    for i, t in enumerate(transpose):
        out[t] = values[i]
    return tuple(out)


def load_nnunet_model(folder: str | os.PathLike, configurations=None, folds=None, checkpoint: str | None = None,
                      device: str = "cpu", fast: bool = False):
    """An nnU-Net v2 model folder as an autoliver :class:`Model` (one configuration, its folds).

    fast: one fold (``all`` when trained, else the first); the CLI also turns mirroring off and
    widens the step. nnU-Net's post-processing (``postprocessing.pkl``) is not applied.
    """
    import torch

    from autoliver.inference.model import Model, StageModel
    from autoliver.planning.plan import (ChannelNormalization, Configuration, Denoise, NetworkSpec, Plan,
                                         Resampling)

    folder = Path(folder)
    checkpoint = checkpoint or "final"
    plans = read_json(folder / "plans.json")
    dataset = read_json(folder / "dataset.json")
    available = nnunet_folds(folder, checkpoint)
    if not available:
        raise UserError(f"-m {folder}: no fold_*/checkpoint_{checkpoint}.pth (nnU-Net model folder); "
                        f"try --checkpoint {'best' if checkpoint == 'final' else 'final'}.")
    if folds:
        missing = [f for f in folds if f not in available]
        if missing:
            raise UserError(f"-f: fold(s) {', '.join(missing)} have no checkpoint_{checkpoint}.pth in {folder} "
                            f"(there: {', '.join(available)}).")
        use = list(folds)
    else:
        use = [f for f in available if f != "all"] or available
    if fast:  # one network: the one trained on all cases when there is one
        use = ["all"] if not folds and "all" in available else use[:1]
    loaded = [load_checkpoint(folder / f"fold_{f}" / f"checkpoint_{checkpoint}.pth") for f in use]
    first = loaded[0]
    name = str(first.get("init_args", {}).get("configuration") or folder.name.rsplit("__", 1)[-1])
    if configurations and list(configurations) != [name]:
        raise UserError(f"-c {' '.join(configurations)}: this nnU-Net model folder holds configuration {name!r} "
                        "only; leave -c out or give that.")
    where = f"plans.json configurations.{name}"
    config = resolved_configuration(plans, name, f"{folder}/plans.json")
    if config.get("previous_stage"):
        raise UserError(f"{where}: cascade configurations (previous_stage {config['previous_stage']!r}) are not "
                        "supported; predict with nnU-Net or use the 3d_fullres / 3d_lowres model.")
    if plans.get("image_reader_writer") == "NibabelIOWithReorient":
        raise UserError("plans.json image_reader_writer: NibabelIOWithReorient reorients scans to RAS before the "
                        "network; autoliver keeps the file's voxel order and does not reproduce it.")
    transpose = tuple(int(t) for t in plans["transpose_forward"])
    channel_names = tuple(str(v) for _, v in sorted(dataset.get("channel_names", dataset.get("modality", {})).items(),
                                                    key=lambda kv: int(kv[0])))
    labels = _labels(dataset, str(folder))
    patch = tuple(int(p) for p in config["patch_size"])
    dims = len(patch)
    if dims == 2 and transpose[0] != 0:
        raise UserError(f"{where}: a 2D configuration whose transpose_forward {list(transpose)} moves the slice "
                        "axis is not supported.")
    spacing_t = [float(s) for s in config["spacing"]]
    if dims == 2:
        spacing_file = (0.0, *_in_file_order([1.0] + spacing_t, transpose)[1:])
        patch_file = tuple(_in_file_order((1, *patch), transpose)[1:])
        net_transpose = tuple(t - 1 for t in transpose[1:])
    else:
        spacing_file = _in_file_order(spacing_t, transpose)
        patch_file = _in_file_order(patch, transpose)
        net_transpose = transpose
    channel_rules = _channel_rules(plans, config, len(channel_names), where)
    modality = "CT" if channel_rules and all(c.scheme == "CTNormalization" for c in channel_rules) else "MRI"
    arch = config.get("architecture", {})
    ak = arch.get("arch_kwargs", {})
    spec = NetworkSpec(architecture=f"nnunetv2:{arch.get('network_class_name', '')}", dims=dims,
                       in_channels=len(channel_names), num_classes=len(labels),
                       features_per_stage=tuple(int(f) for f in ak.get("features_per_stage", ())),
                       kernel_sizes=tuple(tuple(k) for k in ak.get("kernel_sizes", ())),
                       strides=tuple(tuple(s) for s in ak.get("strides", ())), deep_supervision=False)
    data_rule = _resample_rule(config, "data", where)
    norms = tuple(ChannelNormalization("ct", c.lower, c.upper, c.mean, c.std) if c.scheme == "CTNormalization"
                  else ChannelNormalization("zscore" if c.scheme == "ZScoreNormalization" else "none")
                  for c in channel_rules)  # for describing the model; nnunet_rules does the arithmetic
    configuration = Configuration(
        name=name, data_identifier=str(config.get("data_identifier", name)),
        spacing_zyx_mm=spacing_file, median_shape_zyx=tuple(int(n) for n in _in_file_order(
            config.get("median_image_size_in_voxels", [0] * 3)[-3:], transpose)) if dims == 3 else (0, 0, 0),
        patch_size=patch_file, batch_size=int(config.get("batch_size", 1)), normalization=norms,
        resampling=Resampling(order_image=data_rule.order, order_z_image=data_rule.order_z,
                              separate_z=data_rule.force_separate_z is not False),
        denoise=Denoise(), network=spec, reasons={"source": f"nnU-Net v2 model folder {folder.name}"})
    plan = Plan(schema_version=1, dataset_name=str(plans.get("dataset_name", folder.parent.name)), preset="nnunetv2",
                modality=modality, channel_names=channel_names, labels=labels, num_phases=1, device=device,
                memory_budget_bytes=0, configurations={name: configuration})
    preprocess = NnUNetPreprocessor(spacing_file, dims, channel_rules, data_rule,
                                    _resample_rule(config, "probabilities", where), plan)
    networks = []
    for f, ckpt in zip(use, loaded):
        if "network_weights" not in ckpt:
            raise UserError(f"{folder}/fold_{f}/checkpoint_{checkpoint}.pth: has no 'network_weights'; not an nnU-Net "
                            "v2 checkpoint.")
        net = build_network(arch, len(channel_names), len(labels), where)
        try:
            net.load_state_dict(ckpt["network_weights"])
        except RuntimeError as e:
            raise UserError(f"{folder}/fold_{f}: the weights do not fit the network of plans.json ({str(e)[:300]}).") \
                from None
        net.to(torch.device(device)).eval()
        networks.append(wrap(net, net_transpose))
    mirror = first.get("inference_allowed_mirroring_axes")
    # nnU-Net mirrors nothing when the checkpoint names no axes (autoliver's None would mean all).
    mirror_file = () if mirror is None else tuple(sorted(net_transpose[int(a)] for a in mirror))
    stage = StageModel(plan, configuration, networks, list(use), mirror_axes=mirror_file, folder=folder.name,
                       preprocess=preprocess, softmax_after_resampling=True, tile_weights=nnunet_gaussian_1d)
    return Model([stage])
