"""Extract a dataset's fingerprint: read each training case once, in parallel workers, and write
``{preprocessed}/{dataset}/fingerprint.json``.

One case in memory per worker; workers return only the case's summary and a bounded random sample
of its foreground intensities, which the parent pools for the dataset-wide statistics (as nnU-Net
does, with a fixed seed so a re-run gives the same numbers). A finished fingerprint is reused
unless ``overwrite`` is set or the dataset's cases changed.
"""
from __future__ import annotations

import multiprocessing
import zlib
from pathlib import Path

import numpy as np

from autoliver import progress
from autoliver.datasets.dataset import DatasetInfo
from autoliver.errors import UserError
from autoliver.fingerprint import stats
from autoliver.fingerprint.fingerprint import (
    SCHEMA_VERSION,
    CaseFingerprint,
    Fingerprint,
    read_fingerprint,
    write_fingerprint,
)
from autoliver.io import orientation

FINGERPRINT_FILE = "fingerprint.json"
# Foreground intensity samples kept over the whole dataset (split evenly across cases): enough for
# stable 0.5 / 99.5 percentiles, small enough (40 MB per channel) to pool in one process.
FOREGROUND_SAMPLES_TOTAL = 10_000_000
MIN_SAMPLES_PER_CASE = 10_000


def channel_names_of(info: DatasetInfo) -> tuple[str, ...]:
    """Network input channels: dataset channels, or one per phase of a 4D file."""
    if info.phases_in_file:
        return tuple(f"{info.channel_names[0]}_t{t}" for t in range(info.phases_in_file))
    return tuple(info.channel_names)


def load_case_arrays(info: DatasetInfo, case: str):
    """(channels (C, z, y, x), seg (z, y, x), geometry) of one training case, raw units."""
    from autoliver.io.images import read_image

    files = info.image_files(case)
    images = [read_image(f) for f in files]
    from autoliver.io.checks import training_image_problems

    # NaN/Inf voxels or an impossible voxel size would poison the dataset's statistics (and the plan)
    problems = [p for img in images for p in training_image_problems(img, info.modality)]
    if problems:
        raise UserError(" ".join(problems))
    if info.phases_in_file:
        arr = images[0].array
        if arr.ndim != 4 or arr.shape[0] != info.phases_in_file:
            raise UserError(f"{files[0]}: must be a 4D image with {info.phases_in_file} phases (dataset.json "
                            f"phases_in_file), got shape {arr.shape}")
        channels = arr
    else:
        for f, img in zip(files, images):
            if img.array.ndim != 3:
                raise UserError(f"{f}: must be a 3D image, got shape {img.array.shape}. A 4D DCE-MRI file needs "
                                "'phases_in_file' in dataset.json.")
        channels = np.stack([img.array for img in images]) if len(images) > 1 else images[0].array[None]
    seg_image = read_image(info.label_file(case))
    seg = seg_image.array
    if seg.shape != channels.shape[1:]:
        raise UserError(f"{info.label_file(case)}: label shape (z, y, x) {seg.shape} must match the image "
                        f"{channels.shape[1:]}. Re-export the label on the image's grid.")
    return channels, seg, images[0].geometry


def labelled_box(seg: np.ndarray):
    """[start, stop) per axis of every voxel with a label > 0 (the liver with its tumours), or None."""
    from autoliver.preprocessing.resampling import bounding_box

    box = bounding_box(seg)
    return None if box is None else tuple((int(a), int(b)) for a, b in box)


def fingerprint_case(info: DatasetInfo, case: str, num_samples: int) -> tuple[CaseFingerprint, np.ndarray]:
    """Measure one case; returns its summary and (C, n) foreground intensity samples."""
    channels, seg, geometry = load_case_arrays(info, case)
    rng = np.random.default_rng(zlib.crc32(case.encode()))  # per case, reproducible in any worker
    box, _ = stats.crop_bbox(channels, info.modality, seg)
    crop = tuple(slice(a, b) for a, b in box)
    spacing = tuple(float(s) for s in geometry.spacing_zyx_mm)
    samples = stats.sample_foreground(channels, seg, num_samples, rng)
    liver = stats.find_label(info.labels, stats.LIVER_NAMES)
    liver_mask = seg == liver if liver is not None and (seg == liver).any() else seg > 0
    noise, liver_mean = [], []
    for c in range(channels.shape[0]):
        noise.append(float(stats.estimate_noise_sigma(channels[c][crop], liver_mask[crop], rng)))
        liver_mean.append(float(channels[c][liver_mask].mean()) if liver_mask.any() else 0.0)
    # Geometry in the canonical voxel order the pipeline works in (axial slices first, whatever the
    # file's order); the statistics above and the labels' are the same in any order.
    orient = orientation.canonical_axes(geometry.direction)
    liver_box = labelled_box(seg)
    body_box = orientation.canonical_box(box, seg.shape, orient)
    summary = CaseFingerprint(
        case=case, shape_zyx=tuple(int(s) for s in orientation.canonical_zyx(seg.shape, orient)),
        spacing_zyx_mm=orientation.canonical_zyx(spacing, orient),
        orientation=geometry.orientation(), crop_bbox_zyx=body_box,
        shape_after_crop_zyx=tuple(int(b - a) for a, b in body_box),
        labels=stats.label_stats(seg, spacing, info.labels),
        intensity=tuple(stats.intensity_stats(samples[c]) for c in range(samples.shape[0])),
        noise_sigma=tuple(noise), liver_mean=tuple(liver_mean),
        liver_bbox_zyx=orientation.canonical_box(liver_box, seg.shape, orient) if liver_box else None)
    return summary, samples


def _worker(args):
    folder, case, num_samples = args
    from autoliver.datasets.dataset import parse_dataset_json

    return fingerprint_case(parse_dataset_json(Path(folder)), case, num_samples)


def _run_cases(info: DatasetInfo, cases: list[str], num_samples: int, num_processes: int):
    jobs = [(str(info.folder), c, num_samples) for c in cases]
    results = {}
    if num_processes <= 1 or len(cases) == 1:
        for job in progress.bar(jobs, desc="fingerprint", unit="case"):
            results[job[1]] = _worker(job)
        return results
    # spawn: workers start clean (no inherited threads or locks), the same on Linux, macOS, Windows.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(num_processes, len(cases))) as pool:
        for summary, samples in progress.bar(pool.imap_unordered(_worker, jobs), total=len(jobs),
                                             desc="fingerprint", unit="case"):
            results[summary.case] = (summary, samples)
    return results


def extract_fingerprint(info: DatasetInfo, preprocessed_dir: Path, num_processes: int = 2, overwrite: bool = False
                        ) -> Fingerprint:
    """Fingerprint of the dataset ``info``, written to ``{preprocessed_dir}/{dataset}/fingerprint.json``
    (reused when it exists for the same cases, unless ``overwrite``)."""
    out = Path(preprocessed_dir) / info.name / FINGERPRINT_FILE
    cases = info.training_cases()
    if not cases:
        raise UserError(f"{info.labels_dir}: no labelled training cases (*{info.file_ending}). "
                        "A fingerprint needs imagesTr/ and labelsTr/.")
    if out.is_file() and not overwrite:
        try:
            cached = read_fingerprint(out)
        except UserError as e:
            progress.say(f"fingerprint: {out} cannot be reused ({e}); computing it again.")
        else:
            if [c.case for c in cached.cases] == cases and cached.phases_in_file == info.phases_in_file:
                return cached
            progress.say(f"fingerprint: the cases (or phases_in_file) of {info.name} changed since {out} was written; "
                         "computing it again.")
    num_samples = max(MIN_SAMPLES_PER_CASE, FOREGROUND_SAMPLES_TOTAL // len(cases))
    results = _run_cases(info, cases, num_samples, num_processes)
    summaries = [results[c][0] for c in cases]
    pooled = np.concatenate([results[c][1] for c in cases], axis=1)
    del results
    channels = channel_names_of(info)
    rule = "body_ct" if info.modality == "CT" else "nonzero"
    noise = tuple(float(np.median([s.noise_sigma[c] for s in summaries if s.noise_sigma[c] > 0] or [0.0]))
                  for c in range(len(channels)))
    fingerprint = Fingerprint(
        schema_version=SCHEMA_VERSION, dataset_name=info.name, modality=info.modality, channel_names=channels,
        labels=dict(info.labels), num_phases=info.num_phases, crop_rule=rule,
        foreground_intensity=tuple(stats.intensity_stats(pooled[c]) for c in range(pooled.shape[0])),
        noise_sigma=noise, cases=tuple(summaries), phases_in_file=info.phases_in_file)
    write_fingerprint(out, fingerprint)
    return fingerprint
