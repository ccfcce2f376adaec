"""Predicting cases: preprocessing → sliding window → fold averaging → cascade → original grid → file.

Per case and configuration (a *stage*), the scan is preprocessed exactly as for training, every
fold's network slides over it (Gaussian weighting, mirroring), and the folds' logits are
averaged. A cascade configuration first predicts its previous stage (``3d_lowres``) and feeds that
segmentation, one-hot, as extra input channels. A liver-ROI lesion stage (``3d_liver_roi``) first
predicts its first stage, crops the scan to the box of that liver (+ the plan's margin), feeds the
liver mask as one extra channel, and its probabilities are pasted back into the scan's grid
(background outside the box). Probabilities go back to the scan's original grid
(the arithmetic of ``revert_to_original``, streamed a slab at a time by
:mod:`autoliver.inference.original_grid`); several configurations (an ensemble) are averaged
there. Then the post-processing recipe turns them into labels, written in the input's geometry and
file type.

Memory: logits and probabilities are float16 (the sliding window aggregates in float32 slabs),
fold averaging and softmax run slab by slab, and the scan's own voxels are dropped as soon as they
are preprocessed (kept only when the CRF needs them).

:func:`predict_cases` overlaps the work: a reader thread loads and preprocesses the next case while
the network runs, and a writer thread exports the previous one.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoliver import progress
from autoliver.errors import UserError
from autoliver.inference.inputs import InputCase
from autoliver.inference.model import Model, StageModel
from autoliver.inference.original_grid import labels_on_original_grid, probabilities_on_original_grid
from autoliver.inference.sliding_window import predict_logits
from autoliver.io.images import Image, read_image, write_like
from autoliver.planning.plan import Configuration
from autoliver.postprocessing import labels_from_probabilities, postprocess_labels

SLAB = 16  # slices per step of the slab-wise float16 arithmetic
PROBABILITIES_SUFFIX = ".npz"


@dataclass(frozen=True)
class PredictOptions:
    step_size: float = 0.5
    mirror: bool = True  # mirroring test-time augmentation
    device: str | None = None  # None: where the model's networks are (the device is chosen once, at loading)
    save_probabilities: bool = False
    tile_progress: bool = False  # a progress bar per tile (the per-case bar is drawn by predict_cases)
    replace_nonfinite: float | None = None  # the value for NaN/Inf voxels; None: they are an error
    dicom_series: str | None = None  # SeriesInstanceUID to read from a folder of several series
    output_type: str = "nifti"  # nifti (the input's own format; NIfTI for DICOM) | dicom_seg | rtstruct


@dataclass
class StageOutput:
    """Probabilities of one configuration on its network grid, and how to map them back."""

    probabilities: torch.Tensor  # float16 (K, z, y, x)
    properties: dict
    configuration: Configuration


@dataclass
class CaseResult:
    segmentation: np.ndarray  # uint8 (z, y, x) on the input's grid
    probabilities: np.ndarray | None  # float16 (K, z, y, x) on the input's grid, when asked for


# --- one case --------------------------------------------------------------------------------


def read_case(case: InputCase, dicom_series: str | None = None) -> list[Image]:
    return [read_image(p, dicom_series) for p in case.sources]


def check_case(model: Model, images: list[Image], options: PredictOptions) -> tuple[list[Image], list[str]]:
    """Every input image checked (autoliver.io.checks) against what the model expects; raises
    UserError listing the problems, or returns the images (NaN/Inf replaced when asked) and warnings."""
    from autoliver.io.checks import check_image

    configurations, todo = [], list(model.stages)
    while todo:  # every configuration that sees the scan, a cascade's first stage included
        stage = todo.pop(0)
        configurations.append(stage.configuration)
        todo += [stage.previous] if stage.previous is not None else []
    checked = [check_image(im, modality=model.stages[0].plan.modality, replace_nonfinite=options.replace_nonfinite,
                           configurations=configurations) for im in images]
    return [c.image for c in checked], [w for c in checked for w in c.warnings]


def no_liver_warning(case: str, segmentation: np.ndarray, labels: dict[str, int]) -> str | None:
    """A predicted scan without a single liver voxel is worth a word: wrong body part, wrong
    modality or an unusable scan, rather than a patient without a liver."""
    if "liver" in labels and not np.any(segmentation == labels["liver"]):
        return (f"{case}: no liver found (not one voxel labelled liver); check that the scan shows the abdomen "
                "and is what the model was trained on. The segmentation is written anyway.")
    return None


def preprocess_for(stage: StageModel, images: list[Image], previous_seg: np.ndarray | None = None, case: str = ""):
    """(data (C, z, y, x) float32 with the cascade's one-hot channels, properties)."""
    from autoliver.preprocessing.pipeline import preprocess_case

    if stage.preprocess is not None:  # a model trained elsewhere (nnU-Net v2): its own rules
        return stage.preprocess(images, case)
    data, seg, props = preprocess_case(images, stage.plan, stage.configuration, seg=previous_seg, case=case)
    if stage.configuration.previous_stage:
        data = _append_one_hot(data, seg, stage)
    return data, props


def _append_one_hot(data: np.ndarray, seg: np.ndarray | None, stage: StageModel) -> np.ndarray:
    """The previous stage's labels as one channel per label value (the foreground ones when the
    network takes K - 1 extra channels, every label when it takes K)."""
    spec = stage.configuration.network
    extra = spec.in_channels - data.shape[0] * (2 * stage.configuration.context_slices + 1)  # 2.5D: image × slices
    k = spec.num_classes
    if stage.configuration.roi_margin_mm > 0:  # a liver-ROI stage: the first stage's liver, one channel
        if extra != 1 or seg is None:
            raise ValueError(f"{stage.name}: network takes {spec.in_channels} channels; the image has {data.shape[0]} "
                             "and a liver-ROI stage adds one liver channel")
        from autoliver.preprocessing.cropping import liver_channel

        return np.concatenate([data.astype(np.float32, copy=False), liver_channel(seg[0])[None]])
    if extra not in (k - 1, k) or seg is None:
        raise ValueError(f"{stage.name}: network takes {spec.in_channels} channels; the image has {data.shape[0]}, "
                         f"so {extra} one-hot channels would be needed for {k} classes")
    values = range(1, k) if extra == k - 1 else range(k)
    seg0 = seg[0]
    one_hot = np.stack([(seg0 == v) for v in values]).astype(np.float32)
    return np.concatenate([data.astype(np.float32, copy=False), one_hot])


def _mirror_axes(stage: StageModel, options: PredictOptions):
    if not options.mirror:
        return None
    if stage.mirror_axes is not None:
        return stage.mirror_axes
    return tuple(range(len(stage.configuration.patch_size)))


def _device_of(network) -> torch.device:
    """Where a network's weights are (the CPU for one without any)."""
    tensor = next(network.parameters(), None)
    tensor = tensor if tensor is not None else next(network.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def network_passes(model: Model, options: PredictOptions) -> int:
    """Network evaluations per tile position: every fold of every configuration (and of a
    cascade's first stage), times the mirrorings of test-time augmentation."""
    total = 0
    for stage in model.stages:
        while stage is not None:
            total += len(stage.folds) * 2 ** len(set(_mirror_axes(stage, options) or ()))
            stage = stage.previous
    return total


def _slabs(n: int):
    for a in range(0, n, SLAB):
        yield slice(a, min(n, a + SLAB))


@torch.inference_mode()
def network_probabilities(stage: StageModel, data: np.ndarray, options: PredictOptions) -> torch.Tensor:
    """Fold-averaged logits → softmax, float16 (K, z, y, x) on the network grid (the logits
    themselves for a stage with ``softmax_after_resampling``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    mean = None
    for i, network in enumerate(stage.networks):
        device = options.device or _device_of(network)
        logits = predict_logits(network, tensor, stage.configuration.patch_size, step_size=options.step_size,
                                mirror_axes=_mirror_axes(stage, options), device=device,
                                progress=options.tile_progress, out_dtype=torch.float16,
                                weights_1d=stage.tile_weights, context_slices=stage.configuration.context_slices,
                                context_channels=len(stage.configuration.normalization))
        if mean is None:
            mean = logits
            continue
        for s in _slabs(mean.shape[1]):  # running mean, float32 one slab at a time
            m = mean[:, s].float()
            m += (logits[:, s].float() - m) / (i + 1)
            mean[:, s] = m.half()
        del logits
    if stage.softmax_after_resampling:  # logits go back to the scan; original_grid takes the softmax
        return mean
    for s in _slabs(mean.shape[1]):
        mean[:, s] = torch.softmax(mean[:, s].float(), dim=0).half()
    return mean


def predict_stage(stage: StageModel, images: list[Image], options: PredictOptions,
                  preprocessed: tuple[np.ndarray, dict] | None = None) -> StageOutput:
    """One configuration on one case (a cascade predicts its previous stage first)."""
    if preprocessed is None:
        previous_seg = None
        if stage.previous is not None:
            prev = predict_stage(stage.previous, images, options)
            previous_seg = to_original_labels([prev])
            del prev
        preprocessed = preprocess_for(stage, images, previous_seg)
    data, props = preprocessed
    probs = network_probabilities(stage, data, options)
    return StageOutput(probs, props, stage.configuration)


def _stages(outputs: list[StageOutput]) -> list[tuple]:
    return [(o.probabilities, o.properties, o.configuration) for o in outputs]


def to_original_labels(outputs: list[StageOutput]) -> np.ndarray:
    """Argmax of the (averaged) probabilities on the original grid, uint8 (z, y, x), streamed."""
    return labels_on_original_grid(_stages(outputs))


def finish_case(model: Model, outputs: list[StageOutput], like: Image, options: PredictOptions,
                image: np.ndarray | None = None) -> CaseResult:
    """Original grid, ensemble mean, post-processing. Full-resolution probabilities (float16) are
    made only when they are saved or a probability step (CRF, Otsu) needs them."""
    pp = model.postprocessing
    spacing = like.geometry.spacing_zyx_mm
    probs = None
    if pp.needs_probabilities:
        probs = probabilities_on_original_grid(_stages(outputs))
        seg = labels_from_probabilities(probs, pp, model.labels, image=image, spacing_zyx_mm=spacing)
    else:
        # the float32 argmax, whether or not probabilities are saved: --save-probabilities must not
        # change the labels (an argmax of the float16 copy breaks near-ties differently)
        seg = to_original_labels(outputs)
        if options.save_probabilities:
            probs = probabilities_on_original_grid(_stages(outputs))
    seg = postprocess_labels(seg, spacing, pp, model.labels)
    return CaseResult(seg.astype(np.uint8, copy=False), probs if options.save_probabilities else None)


def predict_case(model: Model, images: list[Image], options: PredictOptions = PredictOptions()) -> CaseResult:
    """Everything for one case held in memory (the API; :func:`predict_cases` is the pipelined edge)."""
    outputs = [predict_stage(s, images, options) for s in model.stages]
    image = images[0].array if model.postprocessing.crf else None
    return finish_case(model, outputs, images[0], options, image)


# --- writing ----------------------------------------------------------------------------------


def _geometry_only(image: Image) -> Image:
    """The image without its voxels: enough to write a segmentation on its grid."""
    return dataclasses.replace(image, array=np.empty((0,), dtype=np.uint8))


def write_result(case: InputCase, result: CaseResult, like: Image, output_dir: Path, labels: dict[str, int],
                 options: PredictOptions = PredictOptions()) -> Path:
    """Probabilities first, the segmentation last: its presence marks the case complete. For a
    DICOM series, ``options.output_type`` may ask for a DICOM-SEG or an RTSTRUCT referencing it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if result.probabilities is not None:
        save_probabilities(output_dir / f"{case.name}{PROBABILITIES_SUFFIX}", result.probabilities, like, labels)
    path = case.output_path(output_dir)
    if options.output_type == "nifti":
        write_like(path, result.segmentation, like)
    else:
        from autoliver.io import dicom_out

        write = dicom_out.write_dicom_seg if options.output_type == "dicom_seg" else dicom_out.write_rtstruct
        write(path, result.segmentation, like.geometry, case.sources[0], labels, series_uid=options.dicom_series)
    return path


def save_probabilities(path: Path, probabilities: np.ndarray, like: Image, labels: dict[str, int]) -> None:
    """``{case}.npz``: ``probabilities`` float16 (K, z, y, x) on the input's grid, plus its geometry
    (spacing, origin, direction in ITK order) and the label names, so ``ensemble`` can write labels."""
    g = like.geometry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    try:
        np.savez_compressed(tmp, probabilities=probabilities.astype(np.float16, copy=False),
                            spacing=np.asarray(g.spacing), origin=np.asarray(g.origin),
                            direction=np.asarray(g.direction), label_names=np.asarray(list(labels)),
                            label_values=np.asarray(list(labels.values())), source=np.asarray(like.path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- many cases, pipelined --------------------------------------------------------------------


@dataclass
class _Loaded:
    case: InputCase
    like: Image | None = None  # the first image without its voxels (its grid and header)
    images: list[Image] | None = None  # kept only when a cascade or the CRF needs the voxels later
    preprocessed: list | None = None  # per stage: (data, props), or None for a cascade stage
    error: BaseException | None = None
    warnings: tuple[str, ...] = ()  # what the input checks found (the case is still predicted)


def _load(model: Model, case: InputCase, options: PredictOptions = PredictOptions()) -> _Loaded:
    try:
        images, warns = check_case(model, read_case(case, options.dicom_series), options)
        pre = [None if s.previous is not None else preprocess_for(s, images, case=case.name) for s in model.stages]
        keep = model.postprocessing.crf or any(p is None for p in pre)
        return _Loaded(case, _geometry_only(images[0]), images if keep else None, pre, warnings=tuple(warns))
    except BaseException as e:  # handed to the main thread, which reports it with the case name
        return _Loaded(case, error=e)


def predict_cases(model: Model, cases: list[InputCase], output_dir: str | os.PathLike,
                  options: PredictOptions = PredictOptions(), on_case_done=None) -> dict[str, str]:
    """Predict ``cases`` into ``output_dir``; returns {case name: error message} for failed cases.

    A reader thread prefetches one case ahead and a writer thread exports one case behind, so at
    most three cases are in memory. User errors (an unreadable file) skip that case and are
    reported at the end; anything else stops the run.
    """
    output_dir = Path(output_dir)
    failures: dict[str, str] = {}
    bar = progress.bar(total=len(cases), desc="cases", unit="case")
    prefetch: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def reader():
        for c in cases:
            if stop.is_set():
                break
            prefetch.put(_load(model, c, options))
        prefetch.put(None)

    reader_thread = threading.Thread(target=reader, name="autoliver-reader", daemon=True)
    reader_thread.start()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoliver-writer")
    pending: tuple[str, Future] | None = None

    def collect(p):
        name, fut = p
        try:
            note = fut.result()[1]
            if note:
                progress.say(f"predict: warning: {note}")
        except UserError as e:
            failures[name] = str(e)
        bar.update(1)
        if on_case_done is not None:
            on_case_done(name)

    try:
        while (item := prefetch.get()) is not None:
            for w in item.warnings:
                progress.say(f"predict: warning: {w}")
            if item.error is not None:
                if isinstance(item.error, UserError):
                    failures[item.case.name] = str(item.error)
                    bar.update(1)
                    continue
                raise item.error
            bar.set_postfix_str(item.case.name)
            try:
                outputs = [predict_stage(stage, item.images, options, pre)
                           for stage, pre in zip(model.stages, item.preprocessed)]
            except UserError as e:
                failures[item.case.name] = str(e)
                bar.update(1)
                continue
            except Exception as e:  # a defect, not the input's: stop, but say which case met it
                raise RuntimeError(f"{item.case.name}: prediction failed: {e}") from e
            crf_image = item.images[0].array if model.postprocessing.crf else None
            if pending is not None:  # at most one export in flight: bounds memory
                collect(pending)
                pending = None
            fut = writer.submit(_export, model, item.case, outputs, item.like, options, output_dir, crf_image)
            pending = (item.case.name, fut)
            del outputs, item
        if pending is not None:
            collect(pending)
            pending = None
    finally:
        stop.set()
        while reader_thread.is_alive():  # unblock the reader if it waits on a full queue
            try:
                prefetch.get_nowait()
            except queue.Empty:
                reader_thread.join(timeout=0.1)
        writer.shutdown(wait=True)
        bar.close()
    return failures


def _export(model: Model, case: InputCase, outputs: list[StageOutput], like: Image, options: PredictOptions,
            output_dir: Path, image: np.ndarray | None) -> tuple[Path, str | None]:
    try:
        result = finish_case(model, outputs, like, options, image)
        path = write_result(case, result, like, output_dir, model.labels, options)
        return path, no_liver_warning(case.name, result.segmentation, model.labels)
    except UserError:
        raise
    except Exception as e:
        raise RuntimeError(f"{case.name}: export failed: {e}\n{traceback.format_exc()}") from e
