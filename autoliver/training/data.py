"""Training batches: patches read lazily from the preprocessed files, augmented, in worker processes.

Batch number ``i`` is a pure function of ``(seed, rank, i)``: which cases, where the patches lie,
and every random augmentation parameter are drawn from generators seeded with that triple. Worker
processes may therefore run ahead, and a run resumed at epoch ``e`` gets exactly the batches it
would have got without the interruption.

A patch is never read whole-case: for each sample the spatial augmentation (rotation, scaling,
optional elastic deformation; batchgenerators' coordinate functions) is drawn first, the bounding
box of the transformed sampling grid is read from the Blosc2 file (only the chunks it touches are
decompressed) and resampled with ``scipy.ndimage.map_coordinates``. The intensity augmentations
and mirroring are batchgenerators transforms applied to the batch, as in nnU-Net.

Foreground oversampling: on average ``oversample_foreground`` of the samples are centred on a
voxel of a foreground class picked uniformly among the classes the case has (so tumours get as
many forced patches as the liver), using the ``class_locations`` stored with each case.

Lesion-centred sampling: a further ``oversample_lesions`` of the samples (the recipe's) are centred
on a lesion — a case with lesions, then one of its lesions, each with equal chance, then a voxel of
it (``lesion_locations``) — so a 5 mm metastasis is drawn as often as a 60 mm one.

A liver-ROI lesion stage (``liver_channel``) gets the liver mask (every labelled voxel) of its own
reference as one extra channel, made to look like a first stage's (:func:`perturb_liver`: coarsened,
dilated or eroded, notched, spilt over into a neighbour, sometimes dropped), so the network learns
to use a first stage's imperfect liver, not to copy it.

2D configurations (patch (y, x)) sample one slice per sample; with ``context_slices`` k > 0 (2.5D)
the k slices on each side come with it as extra channels (channel-major: every slice of channel 0,
then of channel 1; beyond the first and last slice the nearest slice is repeated, as prediction
does), augmented together: one spatial transform for all of them, and the intensity augmentations
drawn once per sample instead of per channel, so the neighbours stay the same scan. The cascade adds the previous
stage's prediction as one-hot channels (one per foreground class) after the spatial transform
(nearest-neighbour, like the labels) and, with some probability, dilates or erodes it so the
network learns not to copy it blindly.

Synthetic lesions (``p_synthetic_lesion`` of the recipe's augmentation, :mod:`synthetic_lesions`):
painted into a sample after its spatial transform and before the intensity augmentations, so
noise, blur, contrast and low resolution act on them as on real lesions; the sample's spacing
(``spacing_zyx``) turns millimetres into voxels.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from autoliver.errors import UserError
from autoliver.inference.sliding_window import context_indices
from autoliver.preprocessing import storage
from autoliver.training.recipes import Augmentation
from autoliver.training.synthetic_lesions import hu_scales, paint_lesions

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net: a 3D patch this much thinner in z gets in-plane augmentation only


def is_anisotropic(patch_size) -> bool:
    return len(patch_size) == 3 and max(patch_size) / patch_size[0] > ANISOTROPY_THRESHOLD


def _class_locations(properties: dict) -> dict[int, np.ndarray]:
    out = {}
    for label, locs in (properties.get("class_locations") or {}).items():
        arr = np.asarray(locs, dtype=np.int64).reshape(-1, 3)
        if int(label) > 0 and len(arr):
            out[int(label)] = arr
    return out


def read_region(array, start, size, fill=0) -> np.ndarray:
    """``array[:, start:start+size]`` over the spatial axes, with ``fill`` outside the array."""
    shape = array.shape[1:]
    out = np.full((array.shape[0], *size), fill, dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, n, dim in zip(start, size, shape):
        lo, hi = max(0, s), min(dim, s + n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchBatches(torch.utils.data.Dataset):
    """Index ``i`` → batch ``{"data": (B, C, *patch) float32, "target": (B, 1, *patch) int8, "index": i}``.

    folder: preprocessed configuration folder; cases: case ids to sample from.
    augmentation: None for plain patches (validation pseudo-Dice).
    previous_stage: folder of the previous stage's predictions (``{case}.b2nd``, (1, z, y, x) int8
        on this configuration's grid) for the cascade, else None.
    """

    def __init__(self, folder: str | os.PathLike, cases: list[str], patch_size, batch_size: int, num_classes: int, *,
                 augmentation: Augmentation | None, oversample_foreground: float = 1 / 3, seed: int = 0,
                 rank: int = 0, previous_stage: str | os.PathLike | None = None, oversample_lesions: float = 0.0,
                 liver_channel: bool = False, context_slices: int = 0, tumour_label: int | None = None,
                 liver_label: int | None = None, spacing_zyx=(1.0, 1.0, 1.0)):
        if not cases:
            raise UserError(f"{folder}: no cases to train on")
        self.folder, self.cases = Path(folder), list(cases)
        self.patch = tuple(int(p) for p in patch_size)
        self.dims = len(self.patch)
        self.context = int(context_slices)
        if self.context and self.dims != 2:
            raise ValueError(f"context_slices is for 2D patches, got patch {self.patch}")
        self.batch_size, self.num_classes = int(batch_size), int(num_classes)
        self.aug = augmentation if augmentation is not None and augmentation.enabled else None
        self.oversample = float(oversample_foreground)
        self.seed, self.rank = int(seed), int(rank)
        self.previous_stage = Path(previous_stage) if previous_stage else None
        self.oversample_lesions, self.liver_channel = float(oversample_lesions), bool(liver_channel)
        self.tumour_label = tumour_label  # lesions cut out of the liver channel (perturb_liver); painted lesions
        self.liver_label, self.spacing = liver_label, tuple(float(s) for s in spacing_zyx)
        self.synthetic = self.aug is not None and self.aug.p_synthetic_lesion > 0
        if self.synthetic and (liver_label is None or tumour_label is None):
            raise UserError(f"{folder}: synthetic lesions (p_synthetic_lesion > 0) need a liver and a tumour label in "
                            "the dataset; train with a recipe without them")
        self.locations, self.lesions, self.hu_scales = [], [], []
        for case in self.cases:
            if not storage.is_complete(self.folder, case):
                raise UserError(f"{self.folder}: case {case!r} is not preprocessed (or incomplete). "
                                "Run `autoliver preprocess` again; it resumes.")
            props = storage.read_properties(self.folder, case)
            self.locations.append(_class_locations(props))
            self.lesions.append([np.asarray(v, dtype=np.int64).reshape(-1, 3)
                                 for v in props.get("lesion_locations") or [] if len(v)])
            if self.synthetic:
                self.hu_scales.append(hu_scales(props.get("normalization") or [], f"{self.folder}: case {case!r}"))
            if self.previous_stage and not (self.previous_stage / f"{case}{storage.IMAGE_SUFFIX}").is_file():
                raise UserError(f"{self.previous_stage}: the previous stage's prediction of {case!r} is missing. "
                                "Train all five folds of the previous stage first (their validation writes them).")
        self.lesion_cases = [i for i, les in enumerate(self.lesions) if les]
        self.anisotropic = is_anisotropic(self.patch)
        self.transforms = (_intensity_transforms(self.aug, self.dims, self.anisotropic, joint=self.context > 0)
                           if self.aug else None)
        self._handles: dict = {}

    def __getstate__(self):  # open file handles stay in the process that opened them
        return {**self.__dict__, "_handles": {}}

    def __len__(self):  # a stream: the sampler decides which batch numbers are drawn
        return 2 ** 62

    def _open(self, i: int):
        key = (os.getpid(), i)
        if key not in self._handles:
            import blosc2

            c = storage.open_case(self.folder, self.cases[i])
            if c.seg is None:
                raise UserError(f"{self.folder}: case {self.cases[i]!r} has no labels ({storage.SEG_SUFFIX} missing)")
            prev = None
            if self.previous_stage:
                prev = blosc2.open(str(self.previous_stage / f"{self.cases[i]}{storage.IMAGE_SUFFIX}"), mode="r")
                if tuple(prev.shape[1:]) != c.shape_zyx:
                    raise UserError(f"{self.previous_stage}: prediction of {self.cases[i]!r} has shape {prev.shape[1:]}, "
                                    f"the preprocessed case {c.shape_zyx}. Re-run the previous stage's validation.")
            self._handles[key] = (c.image, c.seg, prev)
        return self._handles[key]

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.rank, int(index)])
        # batchgenerators draws from the global generators: seed them from this batch's generator
        # and put the caller's state back afterwards.
        saved = np.random.get_state(), random.getstate()
        np.random.seed(int(rng.integers(2 ** 32)))
        random.seed(int(rng.integers(2 ** 32)))
        try:
            return self._make_batch(rng, index)
        finally:
            np.random.set_state(saved[0])
            random.setstate(saved[1])

    def _make_batch(self, rng: np.random.Generator, index: int) -> dict:
        expected = self.batch_size * self.oversample
        forced = int(math.floor(expected)) + int(rng.random() < expected - math.floor(expected))
        on_lesion = 0
        if self.oversample_lesions > 0 and self.lesion_cases:  # (no extra draws otherwise: same batches)
            want = self.batch_size * self.oversample_lesions
            on_lesion = min(self.batch_size, int(math.floor(want)) + int(rng.random() < want - math.floor(want)))
        data, segs = [], []
        for b in range(self.batch_size):
            if b < on_lesion:
                i = self.lesion_cases[int(rng.integers(len(self.lesion_cases)))]
                lesion = self.lesions[i][int(rng.integers(len(self.lesions[i])))]
                d, s = self._sample(i, force=False, rng=rng, at=lesion[int(rng.integers(len(lesion)))])
            else:
                i = int(rng.integers(len(self.cases)))
                d, s = self._sample(i, force=b >= self.batch_size - forced, rng=rng)
            data.append(d)
            segs.append(s)
        batch = {"data": np.stack(data), "seg": np.stack(segs)}
        if self.transforms is not None:
            batch = self.transforms(**batch)
        seg = batch["seg"]
        target = seg[:, :1].astype(np.int8)
        x = batch["data"].astype(np.float32, copy=False)
        if self.previous_stage:
            prev = seg[:, 1]
            if self.aug and self.aug.p_cascade_morphology > 0:
                prev = _perturb_masks(prev, self.aug.p_cascade_morphology, self.num_classes, rng)
            onehot = np.stack([prev == k for k in range(1, self.num_classes)], axis=1).astype(np.float32)
            x = np.concatenate((x, onehot), axis=1)
        if self.liver_channel:
            liver = seg[:, 0] > 0
            if self.aug:
                tumour = seg[:, 0] == self.tumour_label if self.tumour_label is not None else [None] * len(liver)
                liver = np.stack([perturb_liver(m, rng, self.aug.p_liver_perturbation, self.aug.p_liver_dropout, t)
                                  for m, t in zip(liver, tumour)])
            x = np.concatenate((x, liver[:, None].astype(np.float32)), axis=1)
        x, target = np.ascontiguousarray(x), np.ascontiguousarray(target)
        # a fingerprint of exactly what was drawn (resume tests compare it), computed here in the
        # worker: hashing a 3D batch costs tens of milliseconds, which the training loop would pay
        digest = hashlib.blake2b(memoryview(x).cast("B"), digest_size=8)
        digest.update(memoryview(target).cast("B"))
        return {"data": torch.from_numpy(x), "target": torch.from_numpy(target), "index": int(index),
                "digest": digest.digest()}

    # ---- one sample ---------------------------------------------------------------------------
    def _sample(self, i: int, force: bool, rng: np.random.Generator, at=None):
        """One sample of case ``i``: centred on voxel ``at`` when given, on a voxel of a random
        foreground class when ``force``, anywhere otherwise."""
        image, seg, prev = self._open(i)
        shape = tuple(image.shape[1:])
        locations = self.locations[i]
        loc = at
        if loc is None and force and locations:
            label = list(locations)[int(rng.integers(len(locations)))]
            loc = locations[label][int(rng.integers(len(locations[label])))]
        if self.dims == 2:
            z = int(loc[0]) if loc is not None else int(rng.integers(shape[0]))
            start = self._start(shape[1:], None if loc is None else loc[1:], rng)
        else:
            z = None
            start = self._start(shape, loc, rng)
        coords = self._spatial_coords(start) if self.aug else None
        sources = [(image, 0.0, self.aug.order_data if self.aug else 0, self.context), (seg, 0, 0, 0)]
        if prev is not None:
            sources.append((prev, 0, 0, 0))
        out = []
        for array, fill, order, context in sources:
            if coords is None:
                region = self._read(array, z, start, self.patch, fill, context)
            else:
                lo = np.floor(coords.reshape(self.dims, -1).min(1)).astype(int) - 1
                hi = np.ceil(coords.reshape(self.dims, -1).max(1)).astype(int) + 2
                region = self._read(array, z, tuple(lo), tuple(hi - lo), fill, context)
                local = coords - lo.reshape(-1, *([1] * self.dims))
                region = np.stack([ndimage.map_coordinates(c.astype(np.float32, copy=False), local, order=order,
                                                           mode="constant", cval=fill, prefilter=order > 1)
                                   for c in region])
            out.append(region)
        data = out[0].astype(np.float32, copy=False)
        labels = np.concatenate(out[1:]).astype(np.int16)
        labels[labels < 0] = 0  # -1 marks voxels outside the body crop: background for the loss
        if self.synthetic and rng.random() < self.aug.p_synthetic_lesion:
            self._paint(i, data, labels, z, shape[0], rng)
        return data, labels

    def _paint(self, i: int, data: np.ndarray, labels: np.ndarray, z, slices: int, rng: np.random.Generator) -> None:
        """Synthetic lesions into sample ``data`` / ``labels[0]`` of case ``i`` (in place)."""
        a, scales = self.aug, self.hu_scales[i]
        if self.dims == 2:  # the 2k + 1 slices of each channel at their heights; the centre one labelled
            image = data.reshape(len(scales), -1, *self.patch)
            z_mm = (context_indices(z, self.context, slices) - z) * self.spacing[0]
            labelled, seg = np.array([self.context]), labels[:1]
        else:
            image, seg = data, labels[0]
            z_mm, labelled = np.arange(self.patch[0]) * self.spacing[0], np.arange(self.patch[0])
        paint_lesions(image, seg, z_mm=z_mm, labelled=labelled, spacing_yx=self.spacing[1:], scales=scales, rng=rng,
                      liver_label=self.liver_label, tumour_label=self.tumour_label, count=a.synthetic_lesion_count,
                      diameter_mm=a.synthetic_lesion_diameter_mm, contrast_hu=a.synthetic_lesion_hu)

    def _read(self, array, z, start, size, fill, context=0):
        if z is None:
            return read_region(array, start, size, fill)
        if not context:
            return read_region(array, (z, *start), (1, *size), fill)[:, 0]
        lo, hi = max(0, z - context), min(array.shape[1] - 1, z + context)
        block = read_region(array, (lo, *start), (hi - lo + 1, *size), fill)  # (C, slices, *size)
        return block[:, context_indices(z, context, array.shape[1]) - lo].reshape(-1, *size)

    def _start(self, shape, loc, rng) -> tuple[int, ...]:
        """Patch start per axis; a patch larger than the case is centred (nnU-Net's padding rule)."""
        start = []
        for d, (s, p) in enumerate(zip(shape, self.patch)):
            need = max(0, p - s)
            lo, hi = -(need // 2), s + need // 2 + need % 2 - p
            if loc is None:
                start.append(int(rng.integers(lo, hi + 1)))
            else:
                start.append(int(np.clip(int(loc[d]) - p // 2, lo, hi)))
        return tuple(start)

    def _spatial_coords(self, start) -> np.ndarray | None:
        """The transformed sampling grid in case coordinates, or None when no spatial augmentation
        was drawn for this sample (then the patch is read as it is)."""
        from batchgenerators.augmentations.utils import (create_zero_centered_coordinate_mesh, elastic_deform_coordinates,
                                                         rotate_coords_2d, rotate_coords_3d, scale_coords)

        a = self.aug
        coords = create_zero_centered_coordinate_mesh(self.patch)
        modified = False
        in_plane = self.dims == 2 or self.anisotropic
        if a.p_elastic > 0 and np.random.uniform() < a.p_elastic:
            alpha, sigma = np.random.uniform(*a.elastic_alpha), np.random.uniform(*a.elastic_sigma)
            deformed = elastic_deform_coordinates(coords, alpha, sigma)
            if self.anisotropic:
                deformed[0] = coords[0]
            coords, modified = deformed, True
        if a.p_rotation > 0 and np.random.uniform() < a.p_rotation:
            if self.dims == 2:
                coords = rotate_coords_2d(coords, np.deg2rad(np.random.uniform(-a.rotation_2d_deg, a.rotation_2d_deg)))
            elif in_plane:  # rotation about z only: angle_x turns the (y, x) plane of (z, y, x) arrays
                coords = rotate_coords_3d(coords, np.deg2rad(np.random.uniform(-a.rotation_2d_deg, a.rotation_2d_deg)), 0, 0)
            else:
                angles = np.deg2rad(np.random.uniform(-a.rotation_3d_deg, a.rotation_3d_deg, size=3))
                coords = rotate_coords_3d(coords, *angles)
            modified = True
        if a.p_scale > 0 and np.random.uniform() < a.p_scale:
            lo, hi = a.scale_range
            s = np.random.uniform(lo, 1) if (np.random.random() < 0.5 and lo < 1) else np.random.uniform(max(lo, 1), hi)
            coords = scale_coords(coords, [1.0, s, s] if self.anisotropic else s)
            modified = True
        if not modified:
            return None
        for d in range(self.dims):
            coords[d] += start[d] + (self.patch[d] - 1) / 2
        return coords


def _intensity_transforms(a: Augmentation, dims: int, anisotropic: bool, joint: bool = False):
    """nnU-Net's intensity augmentation and mirroring, as batchgenerators transforms.

    joint: draw each augmentation once per sample for all channels (2.5D: the channels are
    neighbouring slices of one scan) instead of per channel (nnU-Net's way for modalities)."""
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                             ContrastAugmentationTransform, GammaTransform)
    from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform

    ts = [
        GaussianNoiseTransform(noise_variance=tuple(a.noise_variance), p_per_sample=a.p_noise),
        GaussianBlurTransform(tuple(a.blur_sigma), different_sigma_per_channel=not joint, p_per_sample=a.p_blur,
                              p_per_channel=1.0 if joint else 0.5),
        BrightnessMultiplicativeTransform(multiplier_range=tuple(a.brightness_range), per_channel=not joint,
                                          p_per_sample=a.p_brightness),
        ContrastAugmentationTransform(contrast_range=tuple(a.contrast_range), per_channel=not joint,
                                      p_per_sample=a.p_contrast),
        SimulateLowResolutionTransform(zoom_range=tuple(a.low_resolution_zoom), per_channel=not joint,
                                       p_per_channel=1.0 if joint else 0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=a.p_low_resolution,
                                       ignore_axes=(0,) if anisotropic else None),
        GammaTransform(tuple(a.gamma_range), invert_image=True, per_channel=not joint, retain_stats=True,
                       p_per_sample=a.p_gamma_inverted),
        GammaTransform(tuple(a.gamma_range), invert_image=False, per_channel=not joint, retain_stats=True,
                       p_per_sample=a.p_gamma),
    ]
    if a.mirror:
        ts.append(MirrorTransform(axes=tuple(range(dims))))
    return Compose([t for t in ts if getattr(t, "p_per_sample", 1) > 0])


def _perturb_masks(prev: np.ndarray, p: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Dilate or erode one foreground class of the previous stage's labels, per sample with prob. p."""
    prev = prev.copy()
    for b in range(prev.shape[0]):
        if rng.random() >= p:
            continue
        k = int(rng.integers(1, num_classes)) if num_classes > 1 else 0
        mask = prev[b] == k
        if not mask.any():
            continue
        op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
        changed = op(mask, iterations=int(rng.integers(1, 3)))
        prev[b][mask & ~changed] = 0
        prev[b][changed & (prev[b] < k)] = k
    return prev


def perturb_liver(mask: np.ndarray, rng: np.random.Generator, p: float, p_dropout: float,
                  lesions: np.ndarray | None = None) -> np.ndarray:
    """A reference liver mask (one patch, 2D or 3D) made to look like what a first stage gives a
    liver-ROI stage, so the stage learns to read the liver from the image and use the mask as a
    hint, not to copy it (trained on exact masks, it copies them: its tumours vanish wherever a
    first stage's mask has a hole or a notch). Each with probability ``p``: coarsened (in-plane
    2-5× coarser and back, thresholded at a random level: the blocky edge of a first stage on a
    coarse grid), dilated or eroded in-plane by 1-4 voxels, notched by 1-3 balls of 2-12 voxels (a
    missed lesion at the edge), and spilt over by 1-2 balls of 3-16 voxels centred on its edge (a
    first stage that claims a piece of stomach, bowel, kidney or vessel: the tissue a stage trained
    without it marks as tumour, darker than liver and inside the mask it was given); with
    ``lesions`` (the patch's tumour mask) each lesion cut out of the mask with probability p / 2 (a
    first stage that calls a dark lesion background: the stage must still find it, whatever its
    size); with ``p_dropout`` all zero."""
    if rng.random() < p_dropout:
        return np.zeros_like(mask, dtype=bool)
    m = mask.astype(bool, copy=True)
    if not m.any():
        return m
    if rng.random() < p:
        f = int(rng.integers(2, 6))
        zoom = [1.0] * (m.ndim - 2) + [1.0 / f, 1.0 / f]
        small = ndimage.zoom(m.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest")
        back = ndimage.zoom(small, [a / b for a, b in zip(m.shape, small.shape)], order=1, grid_mode=True,
                            mode="nearest")
        fit = np.zeros(m.shape, np.float32)
        region = tuple(slice(0, min(a, b)) for a, b in zip(m.shape, back.shape))
        fit[region] = back[region]
        m = fit > rng.uniform(0.3, 0.7)
    if rng.random() < p:  # in-plane only: a few slices of a 3D patch must not erode away
        op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
        structure = ndimage.generate_binary_structure(m.ndim, 1)
        if m.ndim == 3:
            structure[0], structure[2] = False, False
        m = op(m, structure=structure, iterations=int(rng.integers(1, 5)))
    if rng.random() < p and m.any():
        m &= ~_random_balls(np.argwhere(m), m.shape, rng, count=(1, 4), radius=(2, 12))
    if lesions is not None and p > 0 and lesions.any():
        components, n = ndimage.label(lesions, structure=np.ones((3,) * lesions.ndim, bool))
        cut = np.flatnonzero(rng.random(n) < p / 2) + 1
        if len(cut):
            m &= ~np.isin(components, cut)
    if rng.random() < p and m.any():
        m |= _random_balls(np.argwhere(m & ~ndimage.binary_erosion(m)), m.shape, rng, count=(1, 3), radius=(3, 16))
    return m


def _random_balls(points: np.ndarray, shape, rng: np.random.Generator, count: tuple[int, int],
                  radius: tuple[float, float]) -> np.ndarray:
    """The union of ``count`` (integers' [low, high)) balls of a uniform radius in voxels, each
    centred on one of ``points`` (N × ndim)."""
    grid = np.indices(shape, sparse=True)
    out = np.zeros(shape, bool)
    for _ in range(int(rng.integers(*count))):
        centre = points[int(rng.integers(len(points)))]
        r = float(rng.uniform(*radius))
        out |= sum((g - c) ** 2 for g, c in zip(grid, centre)) <= r * r
    return out


def _worker_init(_):
    import blosc2

    blosc2.set_nthreads(1)
    torch.set_num_threads(1)


def batch_loader(dataset: PatchBatches, start: int, stop: int, num_workers: int, pin_memory: bool = False):
    """Batches ``start … stop−1`` in order, prepared by ``num_workers`` background processes
    (0: in this process)."""
    kwargs = {}
    if num_workers > 0:
        kwargs = {"prefetch_factor": 2, "worker_init_fn": _worker_init, "persistent_workers": False,
                  "multiprocessing_context": "fork" if os.name == "posix" else None}
    # Its own generator: starting the workers draws a seed, and from the global generator that draw
    # would shift every later random number of a resumed run against an uninterrupted one.
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(int(start), int(stop)),
                                       num_workers=num_workers, pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(0), **kwargs)
