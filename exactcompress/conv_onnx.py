"""ONNX Conv, BatchNormalization and AveragePool nodes for ``onnx_io``'s reader.

A Conv becomes the Chain's pending affine map: its unrolled sparse matrix, tagged with
its ConvSpec so that ``network_of`` rebuilds the network's convolution layers (and
pruning can remove channels). A BatchNormalization right after a Conv folds into it;
an AveragePool on the input or after a Relu stays pending as a pooling matrix and is
composed into the Conv that follows (as ``conv.py`` does for torch modules).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .capture import Chain
from .conv import ConvSpec, Pair, PoolSpec, Shape
from .errors import ExactCompressError
from .network import ReLUNetwork
from .onnx_io import Value, register

#: attributes of the matrices these handlers put into a Chain
SPEC, POOL, POOL_IN = "conv_spec", "pool_spec", "pool_in"


def _tagged(matrix, **tags):
    for name, value in tags.items():
        setattr(matrix, name, value)
    return matrix


def _image(x: Value | None, what: str) -> tuple[Chain, Shape]:
    if not isinstance(x, Chain) or x.shape is None or len(x.shape) != 3:
        raise ExactCompressError(f"{what} needs a computed (batch, C, H, W) tensor")
    x.require_batch_first(what)
    return x, tuple(int(d) for d in x.shape)


def _pair(attrs: dict[str, Any], name: str, default: int) -> Pair:
    values = [int(v) for v in attrs.get(name, [default, default])]
    if len(values) != 2:
        raise ExactCompressError(f"{name} {values}: only 2-D images are supported")
    return values[0], values[1]


def _pads(attrs: dict[str, Any]) -> Pair:
    auto = attrs.get("auto_pad", "NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else auto) != "NOTSET":
        raise ExactCompressError(f"auto_pad={auto!r} is not supported (give pads)")
    top, left, bottom, right = (int(v) for v in attrs.get("pads", [0, 0, 0, 0]))
    if (top, left) != (bottom, right):
        raise ExactCompressError(f"asymmetric pads {[top, left, bottom, right]} are not supported")
    return top, left


@register("Conv")
def _conv(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    x, shape = _image(inputs[0], "Conv")
    kernel = inputs[1]
    if not isinstance(kernel, np.ndarray) or kernel.ndim != 4:
        raise ExactCompressError("Conv weights must be a constant (C_out, C_in, kh, kw) tensor")
    if int(attrs.get("group", 1)) != 1:
        raise ExactCompressError(f"Conv with group={attrs['group']} is not supported (only 1)")
    pool, in_shape = getattr(x.w, POOL, None), shape
    if pool is not None:  # compose the pending AveragePool into this convolution
        in_shape, x = getattr(x.w, POOL_IN), replace(x, w=None, b=None)
    spec = ConvSpec(
        in_shape,
        kernel.astype(np.float64),
        _pair(attrs, "strides", 1),
        _pads(attrs),
        _pair(attrs, "dilations", 1),
        pool,
    )
    if spec.conv_in_shape[0] != kernel.shape[1]:
        raise ExactCompressError(
            f"Conv weights expect {kernel.shape[1]} channels, the tensor has {shape[0]}"
        )
    bias = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros(spec.channels)
    _, h, w = spec.out_shape
    matrix = _tagged(spec.matrix(), **{SPEC: spec})
    return [x.affine(matrix, np.repeat(np.asarray(bias, np.float64), h * w), spec.out_shape)]


@register("BatchNormalization")
def _batch_norm(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    """Inference-mode batch norm, folded into the Conv just before it."""
    x, scale, shift, mean, var = inputs[:5]
    spec = getattr(x.w, SPEC, None) if isinstance(x, Chain) else None
    if spec is None:
        raise ExactCompressError("BatchNormalization is only supported right after a Conv")
    if attrs.get("training_mode", 0):
        raise ExactCompressError("BatchNormalization in training mode is not supported")
    factor = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    folded = replace(spec, kernel=spec.kernel * factor[:, None, None, None])
    b = x.b.reshape(spec.channels, -1)
    b = (b - mean[:, None]) * factor[:, None] + shift[:, None]
    return [replace(x, w=_tagged(folded.matrix(), **{SPEC: folded}), b=b.reshape(-1))]


@register("AveragePool")
def _average_pool(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    x, shape = _image(inputs[0], "AveragePool")
    if x.w is not None:
        raise ExactCompressError("AveragePool is only supported on the input or after a Relu")
    if attrs.get("ceil_mode", 0) or _pair(attrs, "dilations", 1) != (1, 1):
        raise ExactCompressError("AveragePool with ceil_mode or dilations is not supported")
    pool = PoolSpec(
        _pair(attrs, "kernel_shape", 1),
        _pair(attrs, "strides", 1),
        _pads(attrs),
        bool(attrs.get("count_include_pad", 0)),
    )
    matrix = _tagged(pool.matrix(shape), **{POOL: pool, POOL_IN: shape})
    return [x.affine(matrix, np.zeros(matrix.shape[0]), pool.out_shape(shape))]


def network_of(chain: Chain) -> ReLUNetwork:
    """The chain's network, with its convolution layers when it has any."""
    layers = [*chain.weights, chain.w]
    convs = [getattr(w, SPEC, None) for w in layers]
    if chain.w is None or all(c is None for c in convs):
        return chain.network()
    if any(getattr(w, POOL, None) is not None for w in layers):
        raise ExactCompressError("AveragePool is only supported right before a Conv")
    return ReLUNetwork(layers, [*chain.biases, chain.b], convs=convs)
