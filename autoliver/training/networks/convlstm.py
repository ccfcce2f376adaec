"""3D CNN + ConvLSTM for dynamic contrast-enhanced (4D) MRI: architecture ``convlstm_unet``.

The input's channels are the time phases (B, T, z, y, x), one image channel per phase. One
encoder with shared weights reads every phase on its own (the phases go through it as a batch of
B·T single-channel volumes). At every resolution level below the full one, a convolutional LSTM
runs over the phase axis and its last hidden state becomes the skip for that level: it sees how
each voxel's enhancement evolves, which is what tells a lesion from liver parenchyma in DCE-MRI.
At full resolution a 1×1 convolution over the concatenated phases fuses them instead (an LSTM
there would cost more than the rest of the network). The decoder is the plain U-Net's.

PyTorch has no ConvLSTM; :class:`ConvLSTMCell` is the cell of Shi et al. (2015) without
peepholes: one convolution of [x, h] gives the input, forget, output and candidate gates.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoliver.planning.plan import NetworkSpec
from autoliver.training.networks.blocks import ConvNormAct, conv_class, padding
from autoliver.training.networks.unet import Decoder, Encoder, check_input, init_weights

LSTM_FROM_LEVEL = 1  # levels >= this one fuse the phases with a ConvLSTM; finer ones with a 1×1 conv


class ConvLSTMCell(nn.Module):
    """One step: (x, (h, c)) → (h', c').

        i, f, o, g = split(conv([x, h]))
        c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)
        h' = σ(o) ⊙ tanh(c')

    The gate convolution's output channels are ordered i, f, o, g (``hidden`` each); the forget
    bias starts at 1 so early training remembers rather than forgets.
    """

    def __init__(self, dims: int, in_channels: int, hidden_channels: int, kernel_size: Sequence[int]):
        super().__init__()
        self.hidden_channels = hidden_channels
        kernel = tuple(kernel_size)
        self.gates = conv_class(dims)(in_channels + hidden_channels, 4 * hidden_channels, kernel, padding=padding(kernel))
        with torch.no_grad():
            self.gates.bias.zero_()
            self.gates.bias[hidden_channels:2 * hidden_channels].fill_(1.0)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if state is None:
            zeros = x.new_zeros((x.shape[0], self.hidden_channels, *x.shape[2:]))
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = self.gates(torch.cat((x, h), dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """A cell unrolled over time: (B, T, C, *spatial) → hidden states (B, T, H, *spatial), (h_T, c_T)."""

    def __init__(self, dims: int, in_channels: int, hidden_channels: int, kernel_size: Sequence[int]):
        super().__init__()
        self.cell = ConvLSTMCell(dims, in_channels, hidden_channels, kernel_size)

    def forward(self, sequence: torch.Tensor, state=None):
        hidden = []
        for t in range(sequence.shape[1]):
            state = self.cell(sequence[:, t], state)
            hidden.append(state[0])
        return torch.stack(hidden, dim=1), state


class ConvLSTMUNet(nn.Module):
    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        self.deep_supervision = spec.deep_supervision
        self.phases = spec.in_channels
        feats, n = spec.features_per_stage, len(spec.features_per_stage)
        self.lstm_from = min(LSTM_FROM_LEVEL, n - 1)
        self.encoder = Encoder(spec, in_channels=1)
        self.fuse = nn.ModuleList(ConvNormAct(spec.dims, self.phases * feats[s], feats[s], (1,) * spec.dims)
                                  for s in range(self.lstm_from))
        self.lstms = nn.ModuleList(ConvLSTM(spec.dims, feats[s], feats[s], spec.kernel_sizes[s])
                                   for s in range(self.lstm_from, n))
        self.decoder = Decoder(spec)
        init_weights(self)
        for lstm in self.lstms:  # init_weights zeroed the biases: restore the forget bias
            with torch.no_grad():
                hc = lstm.cell.hidden_channels
                lstm.cell.gates.bias[hc:2 * hc].fill_(1.0)

    def forward(self, x):
        check_input(self.spec, x, self.phases)
        b, t = x.shape[:2]
        skips = self.encoder(x.reshape(b * t, 1, *x.shape[2:]))
        fused = []
        for s, skip in enumerate(skips):
            per_phase = skip.reshape(b, t, *skip.shape[1:])
            if s < self.lstm_from:
                fused.append(self.fuse[s](per_phase.reshape(b, t * skip.shape[1], *skip.shape[2:])))
            else:
                _, (h, _) = self.lstms[s - self.lstm_from](per_phase)
                fused.append(h)
        deep = self.training and self.deep_supervision
        outputs = self.decoder(fused, all_scales=deep)
        return outputs if deep else outputs[0]
