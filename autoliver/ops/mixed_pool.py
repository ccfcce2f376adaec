"""Mixed max/average pooling (Yu et al. 2014, "Mixed pooling for convolutional neural networks").

    y = α · max_pool(x) + (1 - α) · avg_pool(x)        α per layer or per channel, in [0, 1]

Two ways to choose α, as ``MixedPool(mode=...)``:

* ``"random"`` (Yu et al.): at every training forward pass α is drawn as 0 or 1 with equal
  probability — one draw for the layer, or one per channel with ``per_channel=True`` — and the
  draw is what the backward pass differentiates. In evaluation α is deterministic:
  ``eval_rule="majority"`` (default, Yu et al.'s rule) uses the pooling chosen more often during
  training (α = 1 if max was drawn more often, 0 if average was, 0.5 on a tie, which includes a
  layer that never trained); ``eval_rule="expectation"`` uses the fraction of max draws.
  The draw counts are buffers, so they travel with the state dict.
* ``"learned"``: α = sigmoid(θ) with θ a parameter per layer or per channel (θ = 0, α = 0.5 at the
  start); the same α in training and evaluation.

The operator (``mixed_pool``) is a ``torch.autograd.Function`` with fused kernels: the forward
pass computes max, its position and mean in one sweep; the backward pass writes each input
gradient once when windows tile the input. CPU: ``csrc/cpu/mixed_pool.cpp``; CUDA:
``csrc/cuda/mixed_pool.cu``. Other dtypes (half, bfloat16), or a missing kernel, use
``mixed_pool_reference``, the composition of ``F.max_poolNd`` and ``F.avg_poolNd``.
No padding, no ceil mode: the windows a U-Net's downsampling uses ((2, 2, 2), (1, 2, 2), …).
"""
from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from autoliver.errors import UserError, choose
from autoliver.ops import _ext

MODES = ("random", "learned")
EVAL_RULES = ("majority", "expectation")
KERNEL_DTYPES = (torch.float32, torch.float64)
MAX_WINDOW = 255  # the window offset of the maximum is stored in one byte


def _tuple(name: str, value, dims: int) -> tuple[int, ...]:
    t = (value,) * dims if isinstance(value, int) else tuple(value)
    if len(t) != dims or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in t):
        raise UserError(f"mixed_pool: {name} must be a positive integer or {dims} of them, got {value!r}")
    return t


def _check_input(x: torch.Tensor, dims: int, kernel: tuple[int, ...], stride: tuple[int, ...]) -> None:
    if not isinstance(x, torch.Tensor):
        raise UserError(f"mixed_pool: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != dims + 2:
        axes = "(N, C, H, W)" if dims == 2 else "(N, C, D, H, W)"
        raise UserError(f"mixed_pool: a {dims}D pooling needs x of shape {axes}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise UserError(f"mixed_pool: x must be a floating-point tensor, got {x.dtype}")
    spatial = tuple(x.shape[2:])
    if any(s < k for s, k in zip(spatial, kernel)):
        raise UserError(f"mixed_pool: the input's spatial size {spatial} is smaller than the window {kernel}; "
                        "pool fewer times or use a larger patch")
    window = 1
    for k in kernel:
        window *= k
    if window > MAX_WINDOW:
        raise UserError(f"mixed_pool: windows of at most {MAX_WINDOW} elements are supported, got {kernel}")


def _alpha_per_channel(alpha, x: torch.Tensor) -> torch.Tensor:
    C = x.shape[1]
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.tensor(float(alpha))
    alpha = alpha.to(device=x.device, dtype=x.dtype)
    if alpha.dim() == 0 or alpha.numel() == 1:
        return alpha.reshape(1).expand(C)
    if alpha.dim() != 1 or alpha.shape[0] != C:
        raise UserError(f"mixed_pool: alpha must be a number, or one value per channel ({C}), got shape {tuple(alpha.shape)}")
    return alpha


def mixed_pool_reference(x: torch.Tensor, alpha, kernel_size, stride=None) -> torch.Tensor:
    """α · max_pool + (1 - α) · avg_pool composed from PyTorch's own pooling (autograd by torch)."""
    dims = x.dim() - 2
    kernel = _tuple("kernel_size", kernel_size, dims)
    stride = kernel if stride is None else _tuple("stride", stride, dims)
    _check_input(x, dims, kernel, stride)
    a = _alpha_per_channel(alpha, x).reshape((1, -1) + (1,) * dims)
    max_pool = F.max_pool2d if dims == 2 else F.max_pool3d
    avg_pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    return a * max_pool(x, kernel, stride) + (1 - a) * avg_pool(x, kernel, stride)


def mixed_pool(x: torch.Tensor, alpha, kernel_size, stride=None) -> torch.Tensor:
    """Mixed pooling of a batch (N, C, H, W) or (N, C, D, H, W); α a number or one per channel.

    Differentiable in x and, when α is a tensor that requires grad, in α.
    """
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"mixed_pool: x must be a tensor (N, C, H, W) or (N, C, D, H, W), got {shape}")
    dims = x.dim() - 2
    kernel = _tuple("kernel_size", kernel_size, dims)
    stride = kernel if stride is None else _tuple("stride", stride, dims)
    _check_input(x, dims, kernel, stride)
    a = _alpha_per_channel(alpha, x)
    kernel_available = _cuda_lib() is not None if x.is_cuda else _ext.load("mixed_pool") is not None
    if x.dtype not in KERNEL_DTYPES or not kernel_available:
        return mixed_pool_reference(x, a, kernel, stride)
    k3 = (1,) * (3 - dims) + kernel
    s3 = (1,) * (3 - dims) + stride
    return _MixedPoolFunction.apply(x, a, k3, s3)


# --------------------------------------------------------------------------- autograd


class _MixedPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, kernel, stride):
        need_alpha_grad = ctx.needs_input_grad[1]
        alpha = alpha.detach().contiguous()  # a per-layer α arrives expanded to the channels
        y, argmax, diff = _forward(x, alpha, kernel, stride, need_alpha_grad)
        ctx.save_for_backward(argmax, alpha, diff if diff is not None else torch.empty(0))
        ctx.geometry = (tuple(x.shape), kernel, stride, need_alpha_grad)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        argmax, alpha, diff = ctx.saved_tensors
        in_shape, kernel, stride, need_alpha_grad = ctx.geometry
        grad_x, grad_alpha = _backward(grad_out, argmax, alpha, in_shape, kernel, stride,
                                       diff if need_alpha_grad else None)
        return grad_x, grad_alpha, None, None


def _planes(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(N, C, [D,] H, W) → (N·C, D, H, W) with D = 1 for 2D."""
    n, c = shape[0], shape[1]
    spatial = tuple(shape[2:])
    if len(spatial) == 2:
        spatial = (1,) + spatial
    return (n * c,) + spatial


def _out_shape(in_shape, kernel, stride):
    planes = _planes(in_shape)
    return tuple((s - k) // st + 1 for s, k, st in zip(planes[1:], kernel, stride))


def _forward(x, alpha, kernel, stride, need_diff):
    xc = x.detach().contiguous()
    planes = _planes(tuple(x.shape))
    out_sp = _out_shape(tuple(x.shape), kernel, stride)
    final_shape = tuple(x.shape[:2]) + (out_sp if x.dim() == 5 else out_sp[1:])
    y = torch.empty((planes[0],) + out_sp, dtype=x.dtype, device=x.device)
    argmax = torch.empty((planes[0],) + out_sp, dtype=torch.uint8, device=x.device)
    diff = torch.empty_like(y) if need_diff else None
    alpha = alpha.contiguous()
    if x.is_cuda:
        _cuda_forward(xc.view(planes), alpha, kernel, stride, y, argmax, diff)
    else:
        mod = _ext.load("mixed_pool")
        mod.forward(xc.view(planes).numpy(), alpha.numpy(), list(kernel), list(stride), y.numpy(), argmax.numpy(),
                    None if diff is None else diff.numpy(), _ext.num_threads())
    y = y.view(final_shape)
    return y, argmax, diff


def _backward(grad_out, argmax, alpha, in_shape, kernel, stride, diff):
    g = grad_out.contiguous()
    planes = _planes(in_shape)
    grad_x = torch.empty(planes, dtype=g.dtype, device=g.device)
    per_plane = None
    if g.is_cuda:
        # the CUDA kernel writes a fixed number of partial sums per plane; adding them up here
        # keeps the α gradient deterministic
        partial = torch.empty((planes[0], _cuda_alpha_chunks()), dtype=torch.float64, device=g.device) \
            if diff is not None else None
        _cuda_backward(g.view(argmax.shape), argmax, alpha, kernel, stride, grad_x, diff, partial)
        per_plane = partial.sum(1) if partial is not None else None
    else:
        per_plane = torch.empty(planes[0], dtype=torch.float64, device=g.device) if diff is not None else None
        mod = _ext.load("mixed_pool")
        mod.backward(g.view(argmax.shape).numpy(), argmax.numpy(), alpha.numpy(), list(kernel), list(stride),
                     grad_x.numpy(), None if diff is None else diff.numpy(),
                     None if per_plane is None else per_plane.numpy(), _ext.num_threads())
    grad_alpha = None
    if per_plane is not None:
        grad_alpha = per_plane.view(in_shape[0], in_shape[1]).sum(0).to(g.dtype)
    return grad_x.view(in_shape), grad_alpha


# --------------------------------------------------------------------------- CUDA


def _cuda_lib():
    from autoliver.ops._cuda import try_load_cuda

    return try_load_cuda("mixed_pool", "using max_pool + avg_pool instead")


@functools.lru_cache(maxsize=1)
def _cuda_alpha_chunks() -> int:
    """Partial sums per plane the CUDA backward writes (a constant of the kernel; asked once)."""
    lib = _cuda_lib()
    lib.autoliver_mixed_pool_alpha_chunks.restype = ctypes.c_int
    return int(lib.autoliver_mixed_pool_alpha_chunks())


def _cuda_args(shape_planes, alpha, kernel, stride):
    P, D, H, W = shape_planes
    i64 = ctypes.c_int64
    return [i64(P), i64(alpha.shape[0]), i64(D), i64(H), i64(W), *(i64(k) for k in kernel), *(i64(s) for s in stride)]


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else ctypes.c_void_p(0)


def _cuda_forward(x, alpha, kernel, stride, y, argmax, diff):
    from autoliver.ops._cuda import current_stream_ptr

    lib = _cuda_lib()
    suffix = "f32" if x.dtype == torch.float32 else "f64"
    fn = getattr(lib, f"autoliver_mixed_pool_forward_{suffix}")
    fn.restype = ctypes.c_int
    with torch.cuda.device(x.device):
        err = fn(_ptr(x), _ptr(alpha), _ptr(y), _ptr(argmax), _ptr(diff),
                 *_cuda_args(tuple(x.shape), alpha, kernel, stride), current_stream_ptr(x.device))
    if err != 0:
        raise RuntimeError(f"mixed_pool: the CUDA forward kernel failed with CUDA error {err}")


def _cuda_backward(g, argmax, alpha, kernel, stride, grad_x, diff, per_plane):
    from autoliver.ops._cuda import current_stream_ptr

    lib = _cuda_lib()
    suffix = "f32" if g.dtype == torch.float32 else "f64"
    fn = getattr(lib, f"autoliver_mixed_pool_backward_{suffix}")
    fn.restype = ctypes.c_int
    with torch.cuda.device(g.device):
        err = fn(_ptr(g), _ptr(argmax), _ptr(alpha), _ptr(grad_x), _ptr(diff), _ptr(per_plane),
                 *_cuda_args(tuple(grad_x.shape), alpha, kernel, stride),
                 current_stream_ptr(g.device))
    if err != 0:
        raise RuntimeError(f"mixed_pool: the CUDA backward kernel failed with CUDA error {err}")


# --------------------------------------------------------------------------- module


class MixedPool(nn.Module):
    """Mixed max/average pooling layer for a U-Net's downsampling (see the module docstring).

    dims: 2 or 3; kernel_size / stride: int or per-axis tuple (stride defaults to kernel_size);
    mode: "random" or "learned"; channels: the input's channel count (needed with per_channel,
    checked at forward when given); per_channel: one α per channel instead of one per layer;
    eval_rule (random mode): "majority" or "expectation".
    """

    def __init__(self, dims: int, kernel_size, stride=None, mode: str = "random", channels: int | None = None,
                 per_channel: bool = False, eval_rule: str = "majority"):
        super().__init__()
        if dims not in (2, 3):
            raise UserError(f"MixedPool: dims must be 2 or 3, got {dims!r}")
        self.dims = dims
        self.kernel_size = _tuple("kernel_size", kernel_size, dims)
        self.stride = self.kernel_size if stride is None else _tuple("stride", stride, dims)
        self.mode = choose("MixedPool: mode", mode, MODES)
        self.eval_rule = choose("MixedPool: eval_rule", eval_rule, EVAL_RULES)
        if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
            raise UserError(f"MixedPool: channels must be a positive integer or None, got {channels!r}")
        if per_channel and channels is None:
            raise UserError("MixedPool: per_channel=True needs channels=<the input's channel count>")
        self.channels = channels
        self.per_channel = bool(per_channel)
        n_alpha = channels if per_channel else 1
        if self.mode == "learned":
            self.alpha_logit = nn.Parameter(torch.zeros(n_alpha))
        else:
            # Draw counts (float64: exact up to 2**53 draws) for the evaluation rule.
            self.register_buffer("max_draws", torch.zeros(n_alpha, dtype=torch.float64))
            self.register_buffer("draws", torch.zeros((), dtype=torch.float64))
        self.last_alpha: torch.Tensor | None = None  # α of the latest forward pass, for replay and inspection

    def extra_repr(self) -> str:
        return (f"dims={self.dims}, kernel_size={self.kernel_size}, stride={self.stride}, mode={self.mode!r}, "
                f"channels={self.channels}, per_channel={self.per_channel}")

    def alpha(self) -> torch.Tensor:
        """The α the next forward pass would use in evaluation (learned or the evaluation rule)."""
        if self.mode == "learned":
            return torch.sigmoid(self.alpha_logit)
        if self.eval_rule == "expectation":
            return torch.where(self.draws > 0, self.max_draws / self.draws.clamp(min=1), torch.full_like(self.max_draws, 0.5))
        half = self.draws / 2
        return torch.where(self.max_draws > half, 1.0, torch.where(self.max_draws < half, 0.0, 0.5)).to(self.max_draws)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[1] != self.channels:
            raise UserError(f"MixedPool: expected {self.channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        if self.mode == "learned":
            alpha = torch.sigmoid(self.alpha_logit)
        elif self.training:
            n = self.max_draws.shape[0]
            alpha = (torch.rand(n, device=self.max_draws.device) < 0.5).to(torch.float64)
            with torch.no_grad():
                self.max_draws += alpha
                self.draws += 1
        else:
            alpha = self.alpha()
        self.last_alpha = alpha.detach()
        return mixed_pool(x, alpha.to(x.dtype), self.kernel_size, self.stride)


__all__ = ["MixedPool", "mixed_pool", "mixed_pool_reference"]
