"""Mixed max/average pooling: fused kernels against the max_pool/avg_pool composition, gradients,
the random and learned modes, input checks, backends."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

from autoliver.errors import UserError
from autoliver.ops import _ext
from autoliver.ops.mixed_pool import MixedPool, mixed_pool, mixed_pool_reference

HAVE_EXT = _ext.load("mixed_pool") is not None
needs_ext = pytest.mark.skipif(not HAVE_EXT, reason="compiled mixed_pool kernel not built (reference fallback in use)")

# (input shape, kernel, stride): U-Net downsampling, anisotropic, overlapping, gapped, remainders.
CASES = [
    ((2, 3, 6, 8, 10), (2, 2, 2), None),
    ((2, 3, 5, 9, 11), (1, 2, 2), None),
    ((1, 2, 7, 7, 7), 3, 1),
    ((1, 2, 7, 9, 8), (2, 3, 2), (3, 2, 3)),
    ((2, 3, 9, 11), 2, None),
    ((2, 3, 9, 11), 3, 2),
    ((2, 4, 8, 8), 2, 3),
]
# Smaller inputs for gradcheck (one numerical derivative per input element).
GRAD_CASES = [
    ((1, 2, 4, 4, 6), (2, 2, 2), None),
    ((1, 2, 3, 4, 5), (1, 2, 2), None),
    ((1, 1, 5, 5, 5), 3, 1),
    ((1, 1, 5, 7, 6), (2, 3, 2), (3, 2, 3)),
    ((1, 2, 5, 7), 2, None),
    ((1, 2, 7, 7), 3, 2),
    ((2, 2, 8, 8), 2, 3),
]


def grads(fn, x, alpha, g):
    x = x.detach().requires_grad_(True)
    alpha = alpha.detach().requires_grad_(True)
    y = fn(x, alpha)
    gx, ga = torch.autograd.grad(y, (x, alpha), g)
    return y.detach(), gx, ga


@pytest.mark.parametrize("shape,kernel,stride", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_composition_forward_and_backward(shape, kernel, stride, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    alpha = torch.rand(shape[1], generator=gen, dtype=dtype)
    y_ref = mixed_pool_reference(x, alpha, kernel, stride)
    g = torch.randn(y_ref.shape, generator=gen, dtype=dtype)
    y, gx, ga = grads(lambda a, b: mixed_pool(a, b, kernel, stride), x, alpha, g)
    y_r, gx_r, ga_r = grads(lambda a, b: mixed_pool_reference(a, b, kernel, stride), x, alpha, g)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(y, y_r, atol=tol, rtol=tol)
    torch.testing.assert_close(gx, gx_r, atol=tol, rtol=tol)
    torch.testing.assert_close(ga, ga_r, atol=10 * tol, rtol=10 * tol)


def test_alpha_one_is_max_pooling_and_zero_is_average_pooling():
    x = torch.randn(2, 4, 6, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(mixed_pool(x, 1.0, 2), F.max_pool3d(x, 2), rtol=0, atol=0)
    torch.testing.assert_close(mixed_pool(x, 0.0, 2), F.avg_pool3d(x, 2), rtol=0, atol=1e-15)
    x2 = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(mixed_pool(x2, 1.0, (1, 2)), F.max_pool2d(x2, (1, 2)), rtol=0, atol=0)
    # Gradients too: all of it to the maximum, or spread evenly.
    x = x.requires_grad_(True)
    (gmax,) = torch.autograd.grad(mixed_pool(x, 1.0, 2).sum(), x)
    (gref,) = torch.autograd.grad(F.max_pool3d(x, 2).sum(), x)
    torch.testing.assert_close(gmax, gref, rtol=0, atol=0)
    (gavg,) = torch.autograd.grad(mixed_pool(x, 0.0, 2).sum(), x)
    torch.testing.assert_close(gavg, torch.full_like(x, 1 / 8))


@pytest.mark.parametrize("shape,kernel,stride", GRAD_CASES)
def test_gradcheck(shape, kernel, stride):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mixed_pool(a, b, kernel, stride), (x, alpha))


class _WrongBackward(torch.autograd.Function):
    """The fused forward with a backward that forgets the maximum's share (as a broken kernel would)."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(alpha)
        ctx.shape = x.shape
        return mixed_pool(x.detach(), alpha.detach(), 2)

    @staticmethod
    def backward(ctx, g):
        (alpha,) = ctx.saved_tensors
        gx = F.interpolate(g, size=ctx.shape[2:], mode="nearest") * (1 - alpha).reshape(1, -1, 1, 1, 1) / 8
        return gx, torch.zeros_like(alpha)


def test_gradcheck_detects_a_wrong_backward():
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(_WrongBackward.apply, (x, alpha))


def test_ties_and_nan_follow_max_pooling():
    # Integer values: many ties; the gradient goes to the first maximum in scan order, as in PyTorch.
    x = torch.randint(0, 3, (2, 3, 6, 6, 6)).double().requires_grad_(True)
    (g,) = torch.autograd.grad(mixed_pool(x, 1.0, 2).sum(), x)
    (g_ref,) = torch.autograd.grad(F.max_pool3d(x, 2).sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    x = torch.randn(1, 1, 4, 4, 4)
    x[0, 0, 1, 0, 1] = float("nan")
    y = mixed_pool(x, 0.5, 2)
    assert torch.isnan(y[0, 0, 0, 0, 0]) and torch.isfinite(y).sum() == y.numel() - 1


def test_layouts_and_edge_cases():
    x = torch.randn(2, 3, 8, 10, 12)
    base = mixed_pool(x, 0.3, 2)
    # Non-contiguous (channels-last, a transposed view) gives the same result.
    torch.testing.assert_close(mixed_pool(x.to(memory_format=torch.channels_last_3d), 0.3, 2), base)
    xt = x.transpose(3, 4).contiguous().transpose(3, 4)
    torch.testing.assert_close(mixed_pool(xt, 0.3, 2), base)
    # Window as large as the input; one channel; batch of one.
    one = torch.randn(1, 1, 2, 2, 2)
    torch.testing.assert_close(mixed_pool(one, 0.25, 2).reshape(()), 0.25 * one.max() + 0.75 * one.mean())
    # Half precision falls back to the composition.
    h = torch.randn(1, 2, 4, 4).bfloat16()
    torch.testing.assert_close(mixed_pool(h, 0.5, 2), mixed_pool_reference(h, 0.5, 2))
    # Per-layer α as a one-element tensor receives the summed gradient.
    a = torch.tensor([0.4], dtype=torch.float64, requires_grad=True)
    xd = torch.randn(2, 3, 4, 4, 4, dtype=torch.float64)
    (ga,) = torch.autograd.grad(mixed_pool(xd, a, 2).sum(), a)
    (ga_ref,) = torch.autograd.grad(mixed_pool_reference(xd, a, 2).sum(), a)
    torch.testing.assert_close(ga, ga_ref)


@pytest.mark.parametrize("call,message", [
    (lambda: mixed_pool(torch.randn(2, 3, 4), 0.5, 2), "(N, C, H, W)"),
    (lambda: mixed_pool(torch.randn(1, 2, 3, 3), 0.5, 4), "smaller than the window"),
    (lambda: mixed_pool(torch.randn(1, 2, 4, 4), 0.5, 0), "kernel_size"),
    (lambda: mixed_pool(torch.randn(1, 2, 4, 4), 0.5, (2, 2, 2)), "kernel_size"),
    (lambda: mixed_pool(torch.randn(1, 2, 4, 4), torch.ones(3), 2), "one value per channel"),
    (lambda: mixed_pool(torch.zeros(1, 2, 4, 4, dtype=torch.int64), 0.5, 2), "floating-point"),
    (lambda: mixed_pool(torch.randn(1, 1, 16, 16, 16), 0.5, 7), "at most 255"),
    (lambda: MixedPool(3, 2, mode="learn"), "Did you mean 'learned'"),
    (lambda: MixedPool(3, 2, per_channel=True), "channels"),
    (lambda: MixedPool(4, 2), "dims"),
    (lambda: MixedPool(3, 2, channels=4)(torch.randn(1, 3, 4, 4, 4)), "expected 4 input channels"),
])
def test_invalid_input_is_reported(call, message):
    with pytest.raises(UserError) as info:
        call()
    assert message in str(info.value)


def test_random_mode_draws_records_and_replays():
    torch.manual_seed(0)
    pool = MixedPool(3, (1, 2, 2), mode="random", channels=4, per_channel=True)
    x = torch.randn(2, 4, 3, 8, 8, requires_grad=True)
    seen = []
    for _ in range(40):
        y = pool(x)
        alpha = pool.last_alpha
        assert set(alpha.tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(y, mixed_pool_reference(x, alpha.float(), (1, 2, 2)))
        seen.append(alpha)
    drawn = torch.stack(seen)
    assert 0.2 < drawn.mean() < 0.8 and (drawn.std(0) > 0).all()  # random, per channel
    torch.testing.assert_close(pool.max_draws, drawn.sum(0))
    assert pool.draws.item() == 40
    # The draw is what backward differentiates.
    y = pool(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (g_ref,) = torch.autograd.grad(mixed_pool_reference(x, pool.last_alpha.float(), (1, 2, 2)).sum(), x)
    torch.testing.assert_close(gx, g_ref)
    # Draws come from torch's generator: the same seed replays them.
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        layer = MixedPool(2, 2, channels=4, per_channel=True)
        runs.append(torch.stack([layer(torch.randn(1, 4, 4, 4)) is not None and layer.last_alpha for _ in range(5)]))
    torch.testing.assert_close(runs[0], runs[1])


def test_random_mode_evaluation_rules():
    pool = MixedPool(2, 2, mode="random", channels=3, per_channel=True).eval()
    torch.testing.assert_close(pool.alpha(), torch.full((3,), 0.5, dtype=torch.float64))  # never trained: a tie
    pool.max_draws.copy_(torch.tensor([7.0, 2.0, 5.0]))
    pool.draws.fill_(10)
    torch.testing.assert_close(pool.alpha(), torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64))
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(pool(x), mixed_pool_reference(x, torch.tensor([1.0, 0.0, 0.5]), 2))
    expectation = MixedPool(2, 2, mode="random", eval_rule="expectation").eval()
    expectation.max_draws.fill_(3)
    expectation.draws.fill_(4)
    torch.testing.assert_close(expectation.alpha(), torch.tensor([0.75], dtype=torch.float64))
    # Counts are buffers: they survive a state-dict round trip.
    fresh = MixedPool(2, 2, mode="random", channels=3, per_channel=True)
    fresh.load_state_dict(pool.state_dict())
    torch.testing.assert_close(fresh.eval().alpha(), pool.alpha())


def test_learned_mode_trains_alpha():
    torch.manual_seed(0)
    pool = MixedPool(3, 2, mode="learned", channels=2, per_channel=True)
    torch.testing.assert_close(pool.alpha(), torch.full((2,), 0.5))
    x = torch.randn(4, 2, 4, 4, 4)
    target = mixed_pool_reference(x, torch.tensor([0.9, 0.1]), 2)  # channel 0 wants max, 1 wants average
    opt = torch.optim.SGD(pool.parameters(), lr=20.0)
    for _ in range(60):
        opt.zero_grad()
        F.mse_loss(pool(x), target).backward()
        opt.step()
    alpha = pool.alpha().detach()
    assert alpha[0] > 0.8 and alpha[1] < 0.2
    layer = MixedPool(2, 2, mode="learned")
    assert layer.alpha_logit.shape == (1,)
    x2 = torch.randn(1, 5, 4, 4)
    layer(x2).sum().backward()
    # d/dlogit of sum(a·max + (1-a)·avg) at a = sigmoid(0) = 1/2: a(1-a)·sum(max - avg)
    expected = 0.25 * (F.max_pool2d(x2, 2) - F.avg_pool2d(x2, 2)).sum()
    torch.testing.assert_close(layer.alpha_logit.grad[0], expected, rtol=1e-4, atol=1e-5)


@needs_ext
def test_fallback_matches_the_kernel(monkeypatch):
    x = torch.randn(2, 3, 6, 8, 8, dtype=torch.float64, requires_grad=True)
    a = torch.rand(3, dtype=torch.float64)
    fused = mixed_pool(x, a, (1, 2, 2))
    assert fused.grad_fn.__class__.__name__.startswith("_MixedPool")
    monkeypatch.setenv("AUTOLIVER_DISABLE_EXT", "1")
    xr = x.clone().requires_grad_(True)
    y = mixed_pool(xr, a, (1, 2, 2))
    assert not y.grad_fn.__class__.__name__.startswith("_MixedPool")
    torch.testing.assert_close(y.detach(), fused.detach())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# more output slices (planes × depth) than one CUDA grid dimension holds: the kernels loop over them
@pytest.mark.parametrize("shape,kernel,stride", CASES + [((1, 70000, 2, 2, 3), 2, None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_composition(shape, kernel, stride, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dtype).cuda()
    alpha = torch.rand(shape[1], generator=gen, dtype=dtype).cuda()
    y_ref = mixed_pool_reference(x, alpha, kernel, stride)
    g = torch.randn_like(y_ref)
    y, gx, ga = grads(lambda a, b: mixed_pool(a, b, kernel, stride), x, alpha, g)
    y_r, gx_r, ga_r = grads(lambda a, b: mixed_pool_reference(a, b, kernel, stride), x, alpha, g)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(y, y_r, atol=tol, rtol=tol)
    torch.testing.assert_close(gx, gx_r, atol=tol, rtol=tol)
    torch.testing.assert_close(ga, ga_r, atol=10 * tol, rtol=10 * tol)
    # the α gradient is reduced in a fixed order: the same bits every run
    assert torch.equal(ga, grads(lambda a, b: mixed_pool(a, b, kernel, stride), x, alpha, g)[2])
    if dtype == torch.float64 and x.numel() < 10_000:  # one numerical derivative per element
        xg = x[:1].clone().requires_grad_(True)
        ag = alpha.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: mixed_pool(a, b, kernel, stride), (xg, ag))

