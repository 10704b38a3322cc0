"""Building blocks shared by the formulations: the input box, affine rows and ReLUs.

``build_layers`` models the hidden layers with the registered ReLU encoding named by
its caller, so every formulation built on it takes ``relu=NAME`` per call; an
encoding of one's own is one class registered with ``register_relu``.
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression

from .base import DEFAULT_RELU, Handle, Key, MILPInput
from .registry import register_relu, relu_encoding


def affine(weights_row, bias: float, inputs: list) -> LinearExpression:
    """w.h + b over the inputs that exist (None marks a neuron proved inactive).

    ``weights_row`` is a dense row or a 1 x n scipy.sparse row (a convolution layer):
    only its nonzeros are read, so a row costs its kernel's size, not the layer's width.
    """
    if hasattr(weights_row, "tocsr"):
        row = weights_row.tocsr()
        index, values = row.indices, row.data
    else:
        index = np.flatnonzero(weights_row)
        values = weights_row[index]
    coefs, vars_ = [], []
    for k, c in zip(index, values):
        v = inputs[k]
        if v is not None and c != 0:
            coefs.append(float(c))
            vars_.append(v)
    return LinearExpression(constant=float(bias), linear_coefs=coefs, linear_vars=vars_)


class BigM:
    """The standard big-M encoding: h >= g, h <= g - L (1 - a), h <= U a, binary a = 1
    when active."""

    def binary_value(self, active: bool) -> int:
        return int(active)

    def encode(self, block: pyo.Block, key: Key, g, lower, upper) -> tuple[pyo.Var, pyo.Var]:
        h = pyo.Var(bounds=(0.0, max(pyo.value(upper), 0.0)))
        a = pyo.Var(domain=pyo.Binary)
        name = f"{key[0]}_{key[1]}"
        block.add_component(f"h_{name}", h)
        block.add_component(f"a_{name}", a)
        block.add_component(f"ge_g_{name}", pyo.Constraint(expr=h >= g))
        block.add_component(f"le_g_{name}", pyo.Constraint(expr=h <= g - lower * (1 - a)))
        block.add_component(f"le_u_{name}", pyo.Constraint(expr=h <= upper * a))
        return h, a


register_relu("bigm", BigM())


def build_layers(
    data: MILPInput, need_output: list[np.ndarray], handle: Handle, relu: str = DEFAULT_RELU
) -> None:
    """Model the hidden layers of ``data`` on ``handle.model``.

    Every neuron gets its pre-activation expression in ``handle.g`` and mutable bounds
    in ``handle.lower``/``upper``; neurons whose output is needed (``need_output[l][j]``)
    also get ``h``: 0 when proved inactive (no variable), g itself when proved active
    (an equality, no binary), and the ReLU encoding registered as ``relu`` otherwise.
    """
    encoding = relu_encoding(relu)
    m = handle.model
    m.x = pyo.Var(range(len(data.lo)), bounds=lambda _, i: (data.lo[i], data.hi[i]))
    handle.x = [m.x[i] for i in range(len(data.lo))]
    inputs: list = handle.x
    for layer, (w, b) in enumerate(zip(data.weights, data.biases)):
        blk = pyo.Block()
        m.add_component(f"layer{layer + 1}", blk)
        blk.L = pyo.Param(
            range(len(b)), initialize=dict(enumerate(data.lower[layer])), mutable=True
        )
        blk.U = pyo.Param(
            range(len(b)), initialize=dict(enumerate(data.upper[layer])), mutable=True
        )
        outputs: list = [None] * len(b)
        for j in range(len(b)):
            key = (layer, j)
            g = affine(w[j], b[j], inputs)
            handle.g[key] = g
            handle.lower[key], handle.upper[key] = blk.L[j], blk.U[j]
            if not need_output[layer][j]:
                continue
            state = data.fixed[layer][j]
            lo, up = data.lower[layer][j], data.upper[layer][j]
            if state < 0 or up <= 0:
                continue
            if state > 0 or lo >= 0:
                h = pyo.Var(bounds=(max(lo, 0.0), up))
                blk.add_component(f"h_{j}", h)
                blk.add_component(f"eq_{j}", pyo.Constraint(expr=h == g))
                handle.h[key] = h
            else:
                h, a = encoding.encode(blk, key, g, blk.L[j], blk.U[j])
                handle.add_relu(key, h, a, encoding)
            outputs[j] = h
        inputs = outputs
