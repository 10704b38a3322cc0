"""Exact compression of a network with convolutions: whole channels go, dense layers fold.

A convolution neuron is one channel at one position, so only a channel stably inactive
at every position can leave the layer: its filter (kernel rows, bias) and the next
layer's input channel (kernel slice, or the Linear columns of its positions) are
deleted. A stably inactive position of a kept channel always outputs 0, so where the
next layer is Linear its columns are zeroed. Stably active conv neurons are kept as
they are (folding them would break the convolution's weight sharing). The dense layers
after the last convolution are compressed by ``prune.compress`` as a network whose
input box is [0, the proved upper bound] of the last convolution's ReLU outputs.
Finally a channel that the next layer no longer reads (all its weights zero) goes too.
"""

from __future__ import annotations

import numpy as np

from .bounds import interval_bounds
from .conv import ConvSpec, with_kernel
from .domain import Box
from .network import ReLUNetwork
from .prune import CompressionSummary, LayerSummary, _checked_states, compress
from .report import INACTIVE


class _ConvLayers:
    """The convolution layers and the first dense layer being edited in place."""

    def __init__(self, net: ReLUNetwork):
        self.n = sum(c is not None for c in net.convs)
        self.specs: list[ConvSpec] = list(net.convs[: self.n])
        self.ws = [w.copy() for w in net.weights]  # never edit the caller's network
        self.bs = [b.copy() for b in net.biases]

    def grid(self, layer: int, values: np.ndarray) -> np.ndarray:
        """Per-neuron values of conv ``layer`` as (channels, positions)."""
        return np.asarray(values).reshape(self.specs[layer].channels, -1)

    def keep_channels(self, layer: int, keep: np.ndarray) -> None:
        """Delete the channels not in ``keep`` and the next layer's inputs from them."""
        spec, hw = self.specs[layer], self.grid(layer, self.bs[layer]).shape[1]
        self.specs[layer] = with_kernel(spec, spec.kernel[keep])
        self.bs[layer] = self.bs[layer].reshape(spec.channels, hw)[keep].reshape(-1)
        self.ws[layer] = self.specs[layer].matrix()
        nxt = layer + 1
        if nxt < self.n:
            k = self.specs[nxt].kernel[:, keep]
            self.specs[nxt] = with_kernel(self.specs[nxt], k, int(keep.sum()))
            self.ws[nxt] = self.specs[nxt].matrix()
        else:
            self.ws[nxt] = np.ascontiguousarray(self.ws[nxt][:, np.repeat(keep, hw)])

    def unread(self, layer: int) -> np.ndarray:
        """Channels of ``layer`` whose every weight in the next layer is zero."""
        nxt = layer + 1
        if nxt < self.n:
            return ~(self.specs[nxt].kernel != 0).any(axis=(0, 2, 3))
        c = self.specs[layer].channels
        return ~(self.ws[nxt].reshape(self.ws[nxt].shape[0], c, -1) != 0).any(axis=(0, 2))

    def network(self, tail: ReLUNetwork | None = None) -> ReLUNetwork:
        ws, bs = self.ws, self.bs
        if tail is not None:
            ws, bs = ws[: self.n] + tail.weights, bs[: self.n] + tail.biases
        convs = self.specs + [None] * (len(ws) - self.n)
        return ReLUNetwork(ws, bs, convs=convs)


def _keep_at_least_one(drop: np.ndarray, layers: _ConvLayers, layer: int) -> np.ndarray:
    """A layer cannot have 0 channels: keep the first dropped one with a zero filter and
    bias (it then outputs relu(0) = 0, as every dropped channel did)."""
    if not drop.all():
        return drop
    drop = drop.copy()
    drop[0] = False
    spec = layers.specs[layer]
    kernel = spec.kernel.copy()
    kernel[0] = 0.0
    layers.specs[layer] = with_kernel(spec, kernel)
    layers.bs[layer][: layers.grid(layer, layers.bs[layer]).shape[1]] = 0.0
    return drop


def _remove_inactive(
    layers: _ConvLayers, states: list[np.ndarray]
) -> tuple[list[LayerSummary], list[dict]]:
    summaries, channels = [], []
    for layer in range(layers.n):
        inactive = layers.grid(layer, states[layer] == INACTIVE)
        c, hw = inactive.shape
        drop = _keep_at_least_one(inactive.all(axis=1), layers, layer)
        layers.keep_channels(layer, ~drop)
        folded = 0
        if layer + 1 == layers.n:  # the next layer is Linear: zero what it reads at 0
            cols = inactive[~drop].reshape(-1)
            layers.ws[layer + 1][:, cols] = 0.0
            folded = int(cols.sum())
        summaries.append(LayerSummary(layer + 1, c * hw, int(drop.sum()) * hw, 0, 0, 0, False, 0.0))
        channels.append(
            {
                "layer": layer + 1,
                "shape": list(layers.specs[layer].out_shape[1:]),
                "channels_before": c,
                "inactive_channels_removed": int(drop.sum()),
                "dead_channels_removed": 0,
                "channels_after": c - int(drop.sum()),
                "stably_inactive_neurons": int(inactive.sum()),
                "positions_zeroed_in_next_linear": folded,
            }
        )
    return summaries, channels


def _drop_unread(layers: _ConvLayers, summaries: list[LayerSummary], channels: list[dict]) -> None:
    """Last conv layer first: drop channels the next layer no longer reads."""
    for layer in range(layers.n - 1, -1, -1):
        dead = layers.unread(layer)
        if dead.all():
            dead[0] = False
        hw = layers.grid(layer, layers.bs[layer]).shape[1]
        layers.keep_channels(layer, ~dead)
        summaries[layer].dead_removed = int(dead.sum()) * hw
        channels[layer]["dead_channels_removed"] = int(dead.sum())
        channels[layer]["channels_after"] -= int(dead.sum())


def compress_conv(
    net: ReLUNetwork, states: list[np.ndarray], rank_rtol: float, box: Box, fold_rtol: float
) -> tuple[ReLUNetwork, CompressionSummary]:
    """``prune.compress`` for a network with convolutions (``net.convs``)."""
    states = _checked_states(net, states)
    layers = _ConvLayers(net)
    summaries, channels = _remove_inactive(layers, states)
    head = ReLUNetwork(layers.ws[: layers.n + 1], layers.bs[: layers.n + 1])
    top = interval_bounds(head, box, device="cpu").upper[-1]
    tail_box = Box(np.zeros(top.size), np.maximum(top, 0.0))
    tail, tail_summary = compress(
        ReLUNetwork(layers.ws[layers.n :], layers.bs[layers.n :]),
        states[layers.n :],
        rank_rtol,
        tail_box,
        fold_rtol,
    )
    layers.ws[layers.n :], layers.bs[layers.n :] = tail.weights, tail.biases
    _drop_unread(layers, summaries, channels)
    out = layers.network()
    for s in tail_summary.layers:
        s.layer += layers.n
    for s, spec in zip(summaries, layers.specs):
        s.after = spec.channels * (s.before // channels[s.layer - 1]["channels_before"])
    return out, CompressionSummary(
        layers=summaries + tail_summary.layers,
        parameters_before=net.n_parameters,
        parameters_after=out.n_parameters,
        hidden_widths_before=net.hidden_widths,
        hidden_widths_after=out.hidden_widths,
        channels=channels,
    )
