"""Convolutional layers as exact float64 sparse linear layers.

Every stage that only needs "a linear map" (bounds, witnesses, the MILP, verification)
sees a convolution as its unrolled ``scipy.sparse.csr_matrix``: neurons are numbered in
the flattened C x H x W order of the layer's output, inputs in that of its input. A
``ConvSpec`` keeps what torch needs to run the layer again (kernel, stride, padding,
dilation, an AvgPool2d applied to its input), so pruning can remove whole channels and
the compressed network is an ``nn.Sequential`` with Conv2d layers.

Folded into the linear maps, in float64: BatchNorm2d in eval mode (into the convolution
before it) and AvgPool2d after a ReLU or at the input (into the next layer's matrix: no
ReLU lies between). The composed matrix is rounded once per entry, like any float64
weight; torch runs the same map in another order, within verification's tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ExactCompressError

Shape = tuple[int, int, int]
Pair = tuple[int, int]


@dataclass
class PoolSpec:
    """AvgPool2d(kernel, stride, padding, count_include_pad) as torch runs it."""

    kernel: Pair
    stride: Pair
    padding: Pair
    count_include_pad: bool = True

    def out_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        return (c, *(_out_size(n, k, s, p, 1) for n, k, s, p in zip((h, w), *self._pairs())))

    def _pairs(self) -> tuple[Pair, Pair, Pair]:
        return self.kernel, self.stride, self.padding

    def matrix(self, shape: Shape) -> sp.csr_matrix:
        """The pooling as a (pooled C*H*W, C*H*W) matrix, one channel at a time."""
        c, h, w = shape
        _, ho, wo = self.out_shape(shape)
        rows, cols, count = [], [], np.zeros(ho * wo)
        for ky in range(self.kernel[0]):
            for kx in range(self.kernel[1]):
                r, q = _taps((h, w), (ho, wo), (ky, kx), self.stride, self.padding, (1, 1))
                rows.append(r)
                cols.append(q)
                np.add.at(count, r, 1.0)
        r, q = np.concatenate(rows), np.concatenate(cols)
        div = np.full(r.size, float(self.kernel[0] * self.kernel[1]))
        if not self.count_include_pad:
            div = count[r]
        one = sp.csr_matrix((1.0 / div, (r, q)), shape=(ho * wo, h * w))
        return sp.kron(sp.identity(c, format="csr"), one, format="csr")

    def module(self) -> nn.AvgPool2d:
        return nn.AvgPool2d(
            self.kernel, self.stride, self.padding, count_include_pad=self.count_include_pad
        )


@dataclass
class ConvSpec:
    """One Conv2d (groups = 1, zero padding) reading a C x H x W input, optionally
    average-pooled first; its bias lives in the network's per-neuron bias vector."""

    in_shape: Shape
    kernel: np.ndarray  # (C_out, C_in, kh, kw), float64
    stride: Pair
    padding: Pair
    dilation: Pair
    pool: PoolSpec | None = None

    @property
    def conv_in_shape(self) -> Shape:
        return self.pool.out_shape(self.in_shape) if self.pool else self.in_shape

    @property
    def out_shape(self) -> Shape:
        _, h, w = self.conv_in_shape
        k = self.kernel.shape[2:]
        sizes = zip((h, w), k, self.stride, self.padding, self.dilation)
        return (self.kernel.shape[0], *(_out_size(*a) for a in sizes))

    @property
    def channels(self) -> int:
        return int(self.kernel.shape[0])

    def matrix(self) -> sp.csr_matrix:
        """The whole layer (pool, then convolution) as one sparse (out, in) matrix."""
        conv = conv_matrix(
            self.kernel, self.conv_in_shape, self.stride, self.padding, self.dilation
        )
        return (conv @ self.pool.matrix(self.in_shape)).tocsr() if self.pool else conv

    def module(self, bias: np.ndarray, dtype: torch.dtype) -> nn.Conv2d:
        co, ci, kh, kw = self.kernel.shape
        conv = nn.Conv2d(ci, co, (kh, kw), self.stride, self.padding, self.dilation).to(dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(self.kernel))
            conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
        return conv

    def to_json(self) -> dict:
        pool = None
        if self.pool:
            p = self.pool
            pool = [list(p.kernel), list(p.stride), list(p.padding), p.count_include_pad]
        return {
            "in_shape": list(self.in_shape),
            "kernel_shape": list(self.kernel.shape),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "pool": pool,
        }

    @classmethod
    def from_json(cls, d: dict, kernel: np.ndarray) -> ConvSpec:
        pool = d.get("pool")
        if pool is not None:
            pool = PoolSpec(tuple(pool[0]), tuple(pool[1]), tuple(pool[2]), bool(pool[3]))
        if list(kernel.shape) != list(d["kernel_shape"]):
            raise ExactCompressError(
                f"convolution kernel has shape {list(kernel.shape)}, "
                f"the architecture says {d['kernel_shape']}"
            )
        return cls(
            tuple(d["in_shape"]),
            kernel,
            tuple(d["stride"]),
            tuple(d["padding"]),
            tuple(d["dilation"]),
            pool,
        )


def _out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _taps(
    size: Pair, out: Pair, tap: Pair, stride: Pair, padding: Pair, dilation: Pair
) -> tuple[np.ndarray, np.ndarray]:
    """(output position, input position) of every output that kernel tap ``tap`` reads
    inside the (unpadded) input, positions flattened row-major within one channel."""
    axes = []
    for n, m, t, s, p, d in zip(size, out, tap, stride, padding, dilation):
        o = np.arange(m)
        i = o * s - p + t * d
        ok = (i >= 0) & (i < n)
        axes.append((o[ok], i[ok]))
    (oy, iy), (ox, ix) = axes
    rows = (oy[:, None] * out[1] + ox[None, :]).reshape(-1)
    cols = (iy[:, None] * size[1] + ix[None, :]).reshape(-1)
    return rows, cols


def conv_matrix(
    kernel: np.ndarray, in_shape: Shape, stride: Pair, padding: Pair, dilation: Pair
) -> sp.csr_matrix:
    """Conv2d without bias, unrolled: entry (c_o, y, x), (c_i, y', x') is the kernel
    weight joining them; zero weights are left out (they contribute exactly nothing)."""
    co, ci, kh, kw = kernel.shape
    c, h, w = in_shape
    if c != ci:
        raise ExactCompressError(f"convolution expects {ci} input channels, gets {c}")
    size = [_out_size(*a) for a in zip((h, w), (kh, kw), stride, padding, dilation)]
    if min(size) < 1:
        raise ExactCompressError(f"convolution of a {h}x{w} input has no output positions")
    ho, wo = size
    rows, cols, vals = [], [], []
    for ky in range(kh):
        for kx in range(kw):
            r, q = _taps((h, w), (ho, wo), (ky, kx), stride, padding, dilation)
            k = kernel[:, :, ky, kx]  # (co, ci)
            rows.append((np.arange(co)[:, None, None] * ho * wo + r[None, None, :]).repeat(ci, 1))
            cols.append((np.arange(ci)[None, :, None] * h * w + q[None, None, :]).repeat(co, 0))
            vals.append(np.broadcast_to(k[:, :, None], (co, ci, r.size)))
    r, q, v = (np.concatenate([a.reshape(-1) for a in xs]) for xs in (rows, cols, vals))
    keep = v != 0
    return sp.csr_matrix((v[keep], (r[keep], q[keep])), shape=(co * ho * wo, ci * h * w))


def _run_conv(spec: ConvSpec, h: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Pool, then conv2d (no bias), on a batch of flat inputs; flat outputs."""
    t = h.reshape(-1, *spec.in_shape)
    if spec.pool is not None:
        p = spec.pool
        t = F.avg_pool2d(t, p.kernel, p.stride, p.padding, count_include_pad=p.count_include_pad)
    out = F.conv2d(t, kernel, None, spec.stride, spec.padding, spec.dilation)
    return out.reshape(h.shape[0], -1)


def apply_conv(spec: ConvSpec, h: np.ndarray, absolute: bool = False) -> np.ndarray:
    """The layer's linear map (no bias) on a batch of flat float64 inputs (the kernel's
    absolute value when ``absolute``)."""
    kernel = torch.from_numpy(np.abs(spec.kernel) if absolute else spec.kernel)
    with torch.no_grad():
        return _run_conv(spec, torch.from_numpy(np.ascontiguousarray(h)), kernel).numpy()


def torch_map(spec: ConvSpec, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer's linear map (no bias) on float64 torch tensors, differentiable: for
    the gradient witness search, far faster than the unrolled sparse matrix."""
    kernel = torch.from_numpy(spec.kernel).to(device)
    return lambda h: _run_conv(spec, h, kernel)


# ---- reading torch modules ---------------------------------------------------------

CONV_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.AvgPool2d, nn.Unflatten)


def _pair(v) -> Pair:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_spec(m: nn.AvgPool2d) -> PoolSpec:
    if m.ceil_mode or m.divisor_override is not None:
        raise ExactCompressError("AvgPool2d with ceil_mode or divisor_override is not supported")
    k = _pair(m.kernel_size)
    return PoolSpec(
        k,
        _pair(m.stride if m.stride is not None else k),
        _pair(m.padding),
        bool(m.count_include_pad),
    )


def _conv_spec(m: nn.Conv2d, shape: Shape, pool: PoolSpec | None) -> ConvSpec:
    if m.groups != 1:
        raise ExactCompressError(f"Conv2d with groups={m.groups} is not supported (only groups=1)")
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ExactCompressError(
            "Conv2d needs numeric zero padding (padding_mode='zeros', no 'same'/'valid')"
        )
    kernel = m.weight.detach().cpu().to(torch.float64).numpy().copy()
    spec = ConvSpec(shape, kernel, _pair(m.stride), _pair(m.padding), _pair(m.dilation), pool)
    if spec.conv_in_shape[0] != m.in_channels:
        raise ExactCompressError(
            f"Conv2d expects {m.in_channels} input channels, gets {spec.conv_in_shape[0]}"
        )
    return spec


def _fold_batchnorm(spec: ConvSpec, bias: np.ndarray, bn: nn.BatchNorm2d) -> np.ndarray:
    """Fold an eval-mode BatchNorm2d into the convolution before it; returns the new bias."""
    if bn.training or bn.running_mean is None:
        raise ExactCompressError(
            "BatchNorm2d must be in eval mode with running statistics; call model.eval() first"
        )
    if bn.num_features != spec.channels:
        raise ExactCompressError(
            f"BatchNorm2d has {bn.num_features} features after a {spec.channels}-channel Conv2d"
        )

    def f64(t):
        return t.detach().cpu().to(torch.float64).numpy()

    scale = 1.0 / np.sqrt(f64(bn.running_var) + bn.eps)
    if bn.affine:
        scale = scale * f64(bn.weight)
    spec.kernel = spec.kernel * scale[:, None, None, None]
    shift = f64(bn.bias) if bn.affine else 0.0
    return (bias - f64(bn.running_mean)) * scale + shift


class _Reader:
    """Walks Conv2d / BatchNorm2d / AvgPool2d / ReLU / Flatten / Linear layers in order,
    building one linear map per ReLU layer (and the output layer)."""

    def __init__(self, input_shape: Shape | None):
        self.shape: Shape | None = input_shape
        self.flat = input_shape is None
        self.pool: PoolSpec | None = None
        self.pool_in: Shape | None = None
        self.weights: list = []
        self.biases: list[np.ndarray] = []
        self.convs: list[ConvSpec | None] = []
        self.open = False  # a linear map waits for its ReLU
        self.last_conv: ConvSpec | None = None
        self.channel_bias: np.ndarray | None = None

    def need_shape(self, what: str) -> Shape:
        if self.shape is None or self.flat:
            raise ExactCompressError(
                f"{what} needs an image input: give input_shape=(C, H, W) "
                "or start the Sequential with nn.Unflatten(1, (C, H, W))"
            )
        return self.shape

    def add(self, m: nn.Module) -> None:
        if isinstance(m, nn.Unflatten):
            if self.weights or self.open or self.pool:
                raise ExactCompressError("Unflatten is only supported as the first layer")
            self.shape, self.flat = tuple(int(v) for v in m.unflattened_size), False
        elif isinstance(m, nn.AvgPool2d):
            self.add_pool(m)
        elif isinstance(m, nn.Conv2d):
            self.start_layer("Conv2d")
            spec = _conv_spec(m, self.pool_in or self.need_shape("Conv2d"), self.pool)
            self.pool = self.pool_in = None
            bias = (
                np.zeros(spec.channels)
                if m.bias is None
                else m.bias.detach().cpu().double().numpy()
            )
            self.last_conv, self.channel_bias = spec, np.asarray(bias, dtype=np.float64)
            self.shape = spec.out_shape
        elif isinstance(m, nn.BatchNorm2d):
            if self.last_conv is None or not self.open:
                raise ExactCompressError("BatchNorm2d is only supported right after a Conv2d")
            self.channel_bias = _fold_batchnorm(self.last_conv, self.channel_bias, m)
        elif isinstance(m, nn.Flatten):
            if self.open:
                raise ExactCompressError("Flatten before a ReLU is not supported")
            self.flat = True
        elif isinstance(m, nn.Linear):
            self.add_linear(m)
        elif isinstance(m, nn.ReLU):
            self.close_layer()

    def add_pool(self, m: nn.AvgPool2d) -> None:
        if self.open or self.pool is not None:
            raise ExactCompressError(
                "AvgPool2d is only supported at the input or right after a ReLU (once)"
            )
        self.pool, self.pool_in = _pool_spec(m), self.need_shape("AvgPool2d")
        self.shape = self.pool.out_shape(self.pool_in)

    def start_layer(self, what: str) -> None:
        if self.open:
            raise ExactCompressError(f"{what} right after a linear layer: put a ReLU between them")
        self.open = True

    def add_linear(self, m: nn.Linear) -> None:
        self.start_layer("Linear")
        if self.shape is not None and not self.flat:
            raise ExactCompressError("Linear after an image layer needs a Flatten before it")
        w = m.weight.detach().cpu().to(torch.float64).numpy()
        if self.pool is not None:
            w = np.asarray((sp.csr_matrix(w) @ self.pool.matrix(self.pool_in)).todense())
            self.pool = self.pool_in = None
        self.weights.append(w)
        b = m.bias
        self.biases.append(np.zeros(w.shape[0]) if b is None else b.detach().cpu().double().numpy())
        self.convs.append(None)
        self.last_conv = None

    def close_layer(self) -> None:
        if not self.open:
            raise ExactCompressError("ReLU without a Conv2d or Linear layer before it")
        self.open = False
        if self.last_conv is not None:
            self.finish_conv()

    def finish_conv(self) -> None:
        spec, (_, h, w) = self.last_conv, self.last_conv.out_shape
        self.weights.append(spec.matrix())
        self.biases.append(np.repeat(self.channel_bias, h * w))
        self.convs.append(spec)
        self.last_conv = None


def network_from_layers(layers: list[nn.Module], input_shape: Shape | None):
    """A ReLUNetwork (sparse conv layers, dense Linear layers) from flattened layers."""
    from .network import ReLUNetwork

    reader = _Reader(None if input_shape is None else tuple(int(v) for v in input_shape))
    for m in layers:
        reader.add(m)
    if reader.last_conv is not None:
        raise ExactCompressError("the output layer must be Linear, not Conv2d")
    if not reader.open:
        raise ExactCompressError("module ends with a ReLU: the output layer must be Linear")
    if reader.pool is not None:
        raise ExactCompressError("AvgPool2d at the end: the output layer must be Linear")
    return ReLUNetwork(reader.weights, reader.biases, convs=reader.convs)


# ---- writing torch modules ----------------------------------------------------------


def channel_bias(net, layer: int) -> np.ndarray:
    """The per-channel bias of conv layer ``layer`` (its per-neuron bias is constant per
    channel by construction)."""
    c, h, w = net.convs[layer].out_shape
    return net.biases[layer].reshape(c, h * w)[:, 0]


def to_sequential(net, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Unflatten(1, input shape), [AvgPool2d], Conv2d, ReLU, ..., Flatten, Linear, ..."""
    layers: list[nn.Module] = [nn.Unflatten(1, net.convs[0].in_shape)]
    last = len(net.weights) - 1
    for i, spec in enumerate(net.convs):
        if spec is None:
            if i and net.convs[i - 1] is not None:
                layers.append(nn.Flatten())
            w, b = net.weights[i], net.biases[i]
            lin = nn.Linear(w.shape[1], w.shape[0]).to(dtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
        else:
            if spec.pool is not None:
                layers.append(spec.pool.module())
            layers.append(spec.module(channel_bias(net, i), dtype))
        if i < last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def architecture(net) -> list[dict | None]:
    """Per layer, the ConvSpec fields a model file needs to rebuild it (None: Linear)."""
    return [None if s is None else s.to_json() for s in net.convs]


def network_from_state(arch: list, state_dict) -> object:
    """The network a model file describes: ``architecture`` plus ``to_sequential``'s
    state dict (float32 or float64)."""
    from .network import ReLUNetwork

    if not isinstance(arch, list) or not arch or arch[0] is None:
        raise ExactCompressError(
            "model file's conv architecture is not a list starting with a conv"
        )
    keys = _param_keys(arch)
    weights, biases, convs = [], [], []
    for spec_json, key in zip(arch, keys):
        w, b = _tensor(state_dict, f"{key}.weight"), _tensor(state_dict, f"{key}.bias")
        if spec_json is None:
            weights.append(w)
            biases.append(b)
            convs.append(None)
            continue
        spec = ConvSpec.from_json(spec_json, w)
        _, h, wd = spec.out_shape
        weights.append(spec.matrix())
        biases.append(np.repeat(b, h * wd))
        convs.append(spec)
    return ReLUNetwork(weights, biases, convs=convs)


def _param_keys(arch: list) -> list[str]:
    """Sequential indices of the Conv2d/Linear modules ``to_sequential`` writes."""
    keys, pos = [], 1  # 0 is the Unflatten
    for i, spec in enumerate(arch):
        if spec is None and i and arch[i - 1] is not None:
            pos += 1  # Flatten
        if spec is not None and spec.get("pool") is not None:
            pos += 1
        keys.append(str(pos))
        pos += 2  # the layer and its ReLU
    return keys


def _tensor(sd, key: str) -> np.ndarray:
    if key not in sd:
        raise ExactCompressError(f"model file's state dict has no {key!r}")
    return sd[key].detach().cpu().to(torch.float64).numpy()


def with_kernel(spec: ConvSpec, kernel: np.ndarray, in_channels: int | None = None) -> ConvSpec:
    """A copy of ``spec`` with a new kernel (and input channel count)."""
    c, h, w = spec.in_shape
    shape = (c if in_channels is None else in_channels, h, w)
    return replace(spec, kernel=kernel, in_shape=shape)
