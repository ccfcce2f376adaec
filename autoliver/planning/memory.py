"""What training a configuration costs: memory in bytes and, on a CPU, seconds per iteration.

The estimate walks the network that ``autoliver.training.networks.build_network`` builds for the
plan's :class:`NetworkSpec` — a plain U-Net as in nnU-Net: per stage ``convs_per_stage`` ×
(conv → instance norm → in-place LeakyReLU), the first conv of a stage strided; decoder stages
transposed conv (kernel = stride) → concatenation with the skip → convs; a 1×1 segmentation head
per decoder stage with deep supervision — and counts what autograd keeps for the backward pass:

- per conv block: the conv output (instance norm's backward needs it) and the activation
  (the in-place LeakyReLU's output, which is also the next conv's saved input): 2 tensors;
- per decoder stage: the concatenation (2 × features) that its first conv saves;
- the network input, the logits of each deep-supervision head and what the loss keeps
  (softmax, log-softmax, one-hot target: 3 × classes, always in fp32);
- at the start of the backward pass, gradient buffers for the largest tensors (the full-resolution
  decoder's), which are allocated before anything saved is freed: the peak;
- weights, gradients and optimizer buffers (fp32; with mixed precision also an fp16 copy);
- on the CPU, what glibc keeps resident (heap fragmentation under its 32 MiB mmap threshold) and
  the fixed cost of the first training step; on a GPU, a cuDNN workspace allowance.

Counted in elements per sample, then × batch × bytes (2 with mixed precision, else 4). Measured
against real forward + backward + SGD steps of ``build_network``'s networks on the CPU (peak RSS)
in ``tests/test_planning_memory.py`` (within ±10 % for 2D and 3D plans of three datasets); the
constants below were fitted that way. On a GPU (H100, PyTorch 2.11 with cuDNN, float16 autocast)
the estimate was 1.13–1.38 × torch.cuda.max_memory_allocated of the same steps for ten plans (the
test's six; LiTS 2d and 3d_fullres planned for 4 and 8 GiB) and 1.38 × for a 192×256×256 × 4 LiTS
plan that peaked at 52.7 GiB: gradient buffers and workspace measured 0.35–1.64 × the largest
saved tensor where 5 × is budgeted. The surplus is kept on purpose: it is headroom for the caching
allocator's fragmentation and the CUDA context, and it keeps GPU plans those of nnU-Net (64×192×192
× 2 for LiTS on 8 GiB). The residual, nested and ConvLSTM variants are walked
from their definitions but not fitted.

The time model has two calibrated numbers: conv FLOPs (forward, and backward at twice the
forward) at the machine's conv throughput, plus the elementwise traffic of the norms and
activations at its memory speed (see ``budget.measure_cpu_speed``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from autoliver.planning.plan import Configuration, NetworkSpec

# Gradient buffers alive at the start of the backward pass, in units of the largest saved tensor
# (fitted to peak RSS of forward + backward + SGD steps, see the module docstring).
TRANSIENT_LARGEST = 3.0
# Tensors saved per conv → norm → LeakyReLU block (conv output + in-place activation).
SAVED_PER_CONV = 2
# fp32 tensors kept by a Dice + cross-entropy loss per class and voxel of each supervised output.
LOSS_TENSORS_PER_CLASS = 3
# glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit) and the share of heap-served
# activation bytes that stays resident as fragmentation at the peak (fitted, see above).
MMAP_THRESHOLD_MAX = 32 * 2**20
HEAP_RETENTION = 0.5
# What the first training step adds to a CPU process whatever the network (oneDNN primitive caches
# and scratchpads, optimizer and loss kernels): 80 MiB measured with a 19k-parameter net.
CPU_RUNTIME_BYTES = 80 * 2**20
# Elementwise memory traffic per element of each conv output per iteration (bytes / element size):
# norm forward (2 reads, 1 write), activation (1 + 1), their backward (≈ 5).
ELEMENTWISE_ACCESSES = 10


@dataclass(frozen=True)
class Layer:
    """One convolution of the walk: ``flops`` per sample (forward), ``out_elements`` per sample."""

    kind: str  # "conv" | "transposed" | "head" | "lstm"
    in_channels: int
    out_channels: int
    kernel_voxels: int
    out_voxels: int
    normed: bool  # followed by instance norm + activation
    repeats: int = 1  # applied this many times with the same weights (once per phase)

    @property
    def params(self) -> int:
        return self.in_channels * self.out_channels * self.kernel_voxels + self.out_channels + (
            2 * self.out_channels if self.normed else 0)

    @property
    def flops(self) -> float:
        if self.kind == "transposed":  # every input voxel is spread over kernel_voxels outputs
            return 2.0 * self.in_channels * self.out_channels * self.out_voxels
        return 2.0 * self.in_channels * self.out_channels * self.kernel_voxels * self.out_voxels

    @property
    def out_elements(self) -> int:
        return self.out_channels * self.out_voxels


@dataclass(frozen=True)
class Walk:
    layers: tuple[Layer, ...]
    saved: tuple[int, ...]  # per-sample elements of each tensor kept for backward (activation dtype)
    loss: tuple[int, ...]  # per-sample elements of each fp32 tensor the loss keeps

    @property
    def saved_elements(self) -> int:
        return sum(self.saved)

    @property
    def largest_elements(self) -> int:
        return max(self.saved)


@dataclass(frozen=True)
class MemoryEstimate:
    activations: int
    transient: int
    weights: int
    gradients: int
    optimizer: int
    workspace: int
    parameters: int  # count, not bytes

    @property
    def total(self) -> int:
        return self.activations + self.transient + self.weights + self.gradients + self.optimizer + self.workspace


def stage_shapes(spec: NetworkSpec, patch: tuple[int, ...]) -> list[tuple[int, ...]]:
    shapes = []
    size = tuple(int(p) for p in patch)
    for stride in spec.strides:
        size = tuple(s // st for s, st in zip(size, stride))
        shapes.append(size)
    return shapes


def walk_network(spec: NetworkSpec, patch: tuple[int, ...], phases: int = 1) -> Walk:
    """List the convolutions of ``spec`` at ``patch`` and the tensors backward keeps, per sample."""
    if len(patch) != spec.dims:
        raise ValueError(f"walk_network: patch {patch} does not match a {spec.dims}D network")
    voxels = [math.prod(s) for s in stage_shapes(spec, patch)]
    feats = spec.features_per_stage
    kvox = [math.prod(k) for k in spec.kernel_sizes]
    n, K, S = spec.convs_per_stage, spec.num_classes, len(feats)
    layers: list[Layer] = []
    saved: list[int] = []
    loss: list[int] = []
    steps = phases if spec.architecture == "convlstm_unet" else 1
    residual = spec.architecture == "residual_unet"

    def block(layer: Layer) -> None:  # conv → norm → in-place activation
        layers.append(layer)
        saved.extend([layer.out_elements * layer.repeats] * SAVED_PER_CONV)

    def head(f: int, v: int) -> None:
        layers.append(Layer("head", f, K, 1, v, False))
        saved.append(K * v)
        loss.extend([K * v] * LOSS_TENSORS_PER_CLASS)

    saved.append(spec.in_channels * voxels[0])
    # Encoder. The ConvLSTM network's input channels are the phases: its encoder reads each phase
    # as a one-channel volume (weights shared, so the phases act as a larger batch).
    enc_in = 1 if steps > 1 else spec.in_channels
    for s in range(S):
        prev = enc_in if s == 0 else feats[s - 1]
        if s > 0 and spec.downsampling != "conv":
            # pooling keeps its output for the unstrided conv after it (max pooling also its indices)
            saved.extend([prev * voxels[s] * steps] * (1 if spec.downsampling == "avg" else 2))
        for i in range(n):
            block(Layer("conv", prev if i == 0 else feats[s], feats[s], kvox[s], voxels[s], True, steps))
        if residual:  # the block sum, and a 1×1 projection where the shape changes
            saved.append(feats[s] * voxels[s] * steps)
            layers.append(Layer("conv", prev, feats[s], 1, voxels[s], False, steps))
            saved.append(feats[s] * voxels[s] * steps)

    if spec.architecture == "convlstm_unet":
        # Full resolution fuses the phases with a 1×1 conv block; coarser levels run a ConvLSTM
        # cell over the phases, which per step keeps [x_t, h_{t-1}] (2F) for the gate conv, the
        # four gate nonlinearities' outputs (4F), c_t, tanh(c_t) and h_t (3F).
        block(Layer("conv", steps * feats[0], feats[0], 1, voxels[0], True))
        for s in range(1, S):
            f = feats[s]
            layers.append(Layer("lstm", 2 * f, 4 * f, kvox[s], voxels[s], False, steps))
            saved.extend([2 * f * voxels[s] * steps] + [f * voxels[s] * steps] * 7)

    if spec.architecture == "nested_unet":
        # UNet++: node (level i, column j ≥ 1) takes the j nodes left of it and the upsampled one below.
        for j in range(1, S):
            for i in range(S - j):
                f = feats[i]
                layers.append(Layer("transposed", feats[i + 1], f, math.prod(spec.strides[i + 1]), voxels[i], False))
                saved.append((j + 1) * f * voxels[i])
                for c in range(n):
                    block(Layer("conv", (j + 1) * f if c == 0 else f, f, kvox[i], voxels[i], True))
                if i == 0 and (spec.deep_supervision or j == S - 1):
                    head(f, voxels[0])
        return Walk(tuple(layers), tuple(saved), tuple(loss))

    for s in range(S - 2, -1, -1):
        f = feats[s]
        layers.append(Layer("transposed", feats[s + 1], f, math.prod(spec.strides[s + 1]), voxels[s], False))
        saved.append(2 * f * voxels[s])  # the concatenation [upsampled, skip]
        for i in range(n):
            block(Layer("conv", 2 * f if i == 0 else f, f, kvox[s], voxels[s], True))
        if residual:
            saved.append(f * voxels[s])
        if spec.deep_supervision or s == 0:
            head(f, voxels[s])
    return Walk(tuple(layers), tuple(saved), tuple(loss))


def count_parameters(spec: NetworkSpec, patch: tuple[int, ...] | None = None) -> int:
    patch = patch or tuple(2 ** (len(spec.strides) + 2) for _ in range(spec.dims))
    return int(sum(layer.params for layer in walk_network(spec, patch, phases=1).layers))


def estimate_memory(config: Configuration, *, device: str = "cpu", mixed_precision: bool | None = None,
                    optimizer_states: int = 1) -> MemoryEstimate:
    """Peak training memory of ``config``, itemised. ``mixed_precision`` defaults to True on
    "cuda" (16-bit activations) and False on "cpu"."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"estimate_memory: device must be 'cpu' or 'cuda', got {device!r}")
    if mixed_precision is None:
        mixed_precision = device == "cuda"
    walk = walk_network(config.network, tuple(config.patch_size), config.phases)
    b = config.batch_size
    act_bytes = 2 if mixed_precision else 4
    params = int(sum(layer.params for layer in walk.layers))
    tensors = [b * e * act_bytes for e in walk.saved] + [b * e * 4 for e in walk.loss]
    activations = sum(tensors)
    transient = int(TRANSIENT_LARGEST * b * max(walk.saved) * act_bytes)
    if device == "cpu":
        # glibc serves tensors below its mmap threshold (which grows to 32 MiB once large blocks
        # are freed) from the heap, whose freed holes stay resident: peak RSS exceeds the live bytes.
        transient += int(HEAP_RETENTION * sum(t for t in tensors if t < MMAP_THRESHOLD_MAX))
        workspace = CPU_RUNTIME_BYTES
    else:
        # cuDNN's convolution workspace comes from torch's allocator; budget the largest tensor
        # twice (with the transient buffers a headroom over the measured peak, see the docstring).
        workspace = int(2 * b * max(walk.saved) * act_bytes)
    weights = params * 4 + (params * 2 if mixed_precision else 0)
    return MemoryEstimate(activations=activations, transient=transient, weights=weights, gradients=params * 4,
                          optimizer=params * 4 * optimizer_states, workspace=workspace, parameters=params)


def estimate_training_bytes(config: Configuration, *, device: str = "cpu", mixed_precision: bool | None = None,
                            optimizer_states: int = 1) -> int:
    """Peak memory in bytes of one training iteration (forward, backward, optimizer step) of
    ``config`` at its patch and batch size: peak RSS growth on "cpu", torch.cuda.max_memory_allocated
    on "cuda"."""
    return estimate_memory(config, device=device, mixed_precision=mixed_precision,
                           optimizer_states=optimizer_states).total


@dataclass(frozen=True)
class CpuSpeed:
    """What this CPU does per second: conv FLOPs (forward and backward alike) and bytes of
    elementwise memory traffic. Measured by ``autoliver.planning.budget.calibrate_cpu``."""

    conv_flops_per_s: float
    elementwise_bytes_per_s: float


def training_flops(config: Configuration) -> float:
    """FLOPs of one training iteration: forward, and backward at twice the forward."""
    walk = walk_network(config.network, tuple(config.patch_size), config.phases)
    return 3.0 * config.batch_size * sum(layer.flops * layer.repeats for layer in walk.layers)


def elementwise_bytes(config: Configuration, *, mixed_precision: bool = False) -> float:
    walk = walk_network(config.network, tuple(config.patch_size), config.phases)
    elems = sum(layer.out_elements * layer.repeats for layer in walk.layers if layer.normed)
    return float(ELEMENTWISE_ACCESSES * elems * config.batch_size * (2 if mixed_precision else 4))


def estimate_seconds_per_iteration(config: Configuration, speed: CpuSpeed) -> float:
    """Seconds for one training iteration on a CPU of ``speed`` (fp32)."""
    return training_flops(config) / speed.conv_flops_per_s + elementwise_bytes(config) / speed.elementwise_bytes_per_s
