"""Networks: output shapes (deep supervision, 2D/3D), the ConvLSTM cell against a step-by-step
reference, region outputs, mixed pooling, spec validation."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from autoliver.errors import UserError
from autoliver.planning.plan import NetworkSpec
from autoliver.training.networks import NETWORKS, build_network
from autoliver.training.networks.convlstm import ConvLSTM, ConvLSTMCell
from autoliver.training.networks.registry import region_log_probabilities


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


def spec(arch="unet", dims=3, features=(4, 8, 16), downsampling="conv", in_channels=2, strides=None, **kw):
    n = len(features)
    strides = strides or tuple([(1,) * dims] + [(2,) * dims] * (n - 1))
    return NetworkSpec(arch, dims, in_channels, 3, tuple(features), tuple([(3,) * dims] * n), strides,
                       downsampling=downsampling, **kw)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("arch", sorted(NETWORKS))
def test_deep_supervision_and_eval_shapes(arch, dims):
    torch.manual_seed(0)
    s = spec(arch, dims, features=(4, 8, 8, 16),
             strides=tuple([(1,) * dims, (2,) * dims, (1,) + (2,) * (dims - 1), (2,) * dims]))
    net = build_network(s)
    size = (8, 16, 24)[:dims] if dims == 3 else (16, 24)
    x = torch.randn(2, 2, *size)
    outs = net.train()(x)
    # one output per decoder stage, full resolution first; axis 0 was pooled only twice
    factors = [(1, 1, 1), (2, 2, 2), (2, 4, 4)] if dims == 3 else [(1, 1), (2, 2), (2, 4)]
    assert [tuple(o.shape) for o in outs] == [(2, 3, *[n // f for n, f in zip(size, fs)]) for fs in factors]
    with torch.no_grad():
        y = net.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, *size)
    no_ds = build_network(dataclasses.replace(s, deep_supervision=False)).train()
    assert no_ds(x).shape == (2, 3, *size)


@pytest.mark.parametrize("downsampling", ["conv", "max", "avg", "mixed_random", "mixed_learned"])
def test_downsampling_options(downsampling):
    net = build_network(spec(downsampling=downsampling)).eval()
    assert net(torch.randn(1, 2, 8, 8, 8)).shape == (1, 3, 8, 8, 8)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.stride != (1, 1, 1)]
    assert (len(convs) > 0) == (downsampling == "conv")


def test_residual_encoder_has_shortcuts_and_nested_has_dense_skips():
    res = build_network(spec("residual_unet"))
    assert any(type(m).__name__ == "ResidualBlock" for m in res.modules())
    nested = build_network(spec("nested_unet", features=(4, 8, 16, 16)))
    # X[0][3] concatenates X[0][0..2] and the upsampled X[1][2]: 4 × 4 input channels
    assert nested.nodes["0_3"][0][0].in_channels == 16
    assert len(nested.nodes) == 6  # n(n-1)/2 nodes for n = 4


def test_mixed_pooling_uses_the_mixed_pool_op():
    from autoliver.ops.mixed_pool import MixedPool

    for mode, downsampling in (("random", "mixed_random"), ("learned", "mixed_learned")):
        net = build_network(spec(downsampling=downsampling))
        pools = [m for m in net.modules() if isinstance(m, MixedPool)]
        assert len(pools) == 2 and all(p.mode == mode for p in pools)
    learned = build_network(spec(downsampling="mixed_learned")).train()
    sum(o.sum() for o in learned(torch.randn(1, 2, 8, 8, 8))).backward()
    assert all(p.grad is not None for n, p in learned.named_parameters() if "alpha" in n)


def reference_lstm_step(cell: ConvLSTMCell, x, h, c):
    """The ConvLSTM equations written out gate by gate, with separate input and hidden weights."""
    H, cin = cell.hidden_channels, x.shape[1]
    w, b = cell.gates.weight, cell.gates.bias
    pad = tuple(k // 2 for k in w.shape[2:])

    def gate(g):
        wx, wh = w[g * H:(g + 1) * H, :cin], w[g * H:(g + 1) * H, cin:]
        return F.conv3d(x, wx, padding=pad) + F.conv3d(h, wh, padding=pad) + b[g * H:(g + 1) * H].view(1, -1, 1, 1, 1)

    i, f, o, g = torch.sigmoid(gate(0)), torch.sigmoid(gate(1)), torch.sigmoid(gate(2)), torch.tanh(gate(3))
    c_next = f * c + i * g
    return o * torch.tanh(c_next), c_next


def test_convlstm_matches_step_by_step_reference():
    torch.manual_seed(0)
    lstm = ConvLSTM(3, in_channels=2, hidden_channels=3, kernel_size=(1, 3, 3)).double()
    with torch.no_grad():
        lstm.cell.gates.bias.normal_()
    seq = torch.randn(2, 4, 2, 3, 5, 6, dtype=torch.float64)  # (B, T, C, z, y, x)
    outputs, (h_last, c_last) = lstm(seq)
    h = c = torch.zeros(2, 3, 3, 5, 6, dtype=torch.float64)
    for t in range(4):
        h, c = reference_lstm_step(lstm.cell, seq[:, t], h, c)
        torch.testing.assert_close(outputs[:, t], h)
    torch.testing.assert_close(h_last, h)
    torch.testing.assert_close(c_last, c)
    # a fresh cell remembers: forget gates start open (bias 1)
    assert torch.all(ConvLSTMCell(3, 1, 2, (3, 3, 3)).gates.bias[2:4] == 1)


def test_convlstm_unet_uses_every_phase_and_their_order():
    torch.manual_seed(0)
    net = build_network(spec("convlstm_unet", in_channels=3)).eval()
    x = torch.randn(1, 3, 8, 8, 8)
    with torch.no_grad():
        y = net(x)
        y_changed = net(torch.cat([x[:, :2], x[:, 2:] + 1], 1))
        y_swapped = net(x[:, [1, 0, 2]])
    assert y.shape == (1, 3, 8, 8, 8)
    assert not torch.allclose(y, y_changed) and not torch.allclose(y, y_swapped)
    # one encoder shared by the phases: its first convolution reads one channel
    assert net.encoder.stages[0][0][0].in_channels == 1


def test_region_outputs_are_class_log_probabilities():
    r = torch.randn(2, 2, 3, 3)
    p = region_log_probabilities(r).exp()
    torch.testing.assert_close(p.sum(1), torch.ones(2, 3, 3))
    s1, s2 = torch.sigmoid(r[:, 0]), torch.sigmoid(r[:, 1])
    torch.testing.assert_close(p[:, 0], 1 - s1)
    torch.testing.assert_close(p[:, 1], s1 * (1 - s2))
    torch.testing.assert_close(p[:, 2], s1 * s2)
    net = build_network(spec(), region=True)
    assert net.train()(torch.randn(1, 2, 8, 8, 8))[0].shape[1] == 2  # two region logits in training
    assert net.eval()(torch.randn(1, 2, 8, 8, 8)).shape[1] == 3  # three classes for prediction


def test_bad_specs_are_reported_together():
    bad = spec(arch="unett", downsampling="maxx", strides=((2, 2, 2), (2, 2, 2), (2, 2, 2)))
    with pytest.raises(UserError) as e:
        build_network(bad)
    text = str(e.value)
    assert "Did you mean 'unet'" in text and "'max'" in text and "strides[0]" in text
    with pytest.raises(ValueError, match="multiple of"):
        build_network(spec()).eval()(torch.randn(1, 2, 6, 8, 8))
