"""OMLT's own ReLU big-M formulation as a peer baseline (``--formulation omlt``).

The hidden layers are built by OMLT (Ceccon et al., JMLR 2022): a NetworkDefinition
of dense layers and its ``ReluBigMFormulation``, with OMLT's variables (z, zhat) and
binaries (q_relu, 1 when active). The numbers are this package's: OMLT's own interval
bounds (computed without outward rounding) are replaced by the given sound ones, so
the model differs from ``network`` in OMLT's encoding alone, and the candidates'
indicators and count objective are the network formulation's. Registered only when
omlt imports (``pip install 'exactcompress[peers]'``).
"""

from __future__ import annotations

import pyomo.environ as pyo
from pyomo.common.log import LoggingIntercept

from formulations import (
    DEFAULT_RELU,
    Candidate,
    FormulationError,
    Handle,
    MILPInput,
    affine,
    mark_unavailable,
    network,
    register,
)

try:
    from omlt import OmltBlock
    from omlt.neuralnet import NetworkDefinition, ReluBigMFormulation
    from omlt.neuralnet.layer import DenseLayer, InputLayer
except ImportError as err:
    OMLT_MISSING: str | None = f"{err}"
else:
    OMLT_MISSING = None


class OmltRelu:
    """OMLT's q_relu is 1 when y = zhat (active) and 0 when y = 0."""

    def binary_value(self, active: bool) -> int:
        return int(active)


OMLT_RELU = OmltRelu()


def build(data: MILPInput, candidates: list[Candidate], relu: str = DEFAULT_RELU) -> Handle:
    if relu != "bigm":
        raise FormulationError(f"it encodes ReLUs with OMLT's own big-M, not --relu {relu}")
    deepest = max(layer for layer, _, _ in candidates)
    data = data.truncated(deepest + 1)
    net = NetworkDefinition(scaled_input_bounds=dict(enumerate(zip(data.lo, data.hi))))
    previous = InputLayer([len(data.lo)])
    net.add_layer(previous)
    layers = [previous]
    for layer, (w, b) in enumerate(zip(data.weights, data.biases)):
        activation = "relu" if layer < deepest else "linear"
        dense = DenseLayer([w.shape[1]], [w.shape[0]], activation=activation, weights=w.T, biases=b)
        net.add_layer(dense)
        net.add_edge(previous, dense)
        layers.append(dense)
        previous = dense
    m = pyo.ConcreteModel(name="omlt_formulation")
    m.nn = OmltBlock()
    # OMLT starts every input at 0, inside the box or not: one Pyomo warning per input
    with LoggingIntercept(module="pyomo.core"):
        m.nn.build_formulation(ReluBigMFormulation(net))
    blocks = [m.nn.layer[id(layer)] for layer in layers]
    handle = Handle(m, [blocks[0].z[i] for i in range(len(data.lo))])
    inputs = handle.x
    for layer, blk in enumerate(blocks[1:]):
        if layer < deepest:
            lower, upper = blk._big_m_lb_relu, blk._big_m_ub_relu
        else:  # linear: OMLT adds no big-M, the indicators need bounds of their own
            n = len(data.biases[layer])
            m.candidate_L = pyo.Param(range(n), initialize=0.0, mutable=True)
            m.candidate_U = pyo.Param(range(n), initialize=0.0, mutable=True)
            lower, upper = m.candidate_L, m.candidate_U
        _link_layer(handle, data, layer, blk, inputs, lower, upper, relu=layer < deepest)
        inputs = [blk.z[j] for j in range(len(data.biases[layer]))]
    network.add_count_objective(handle, candidates)
    return handle


def _link_layer(handle: Handle, data: MILPInput, layer: int, blk, inputs, lower, upper, relu):
    """Record one OMLT layer in the Handle, with the given bounds in place of OMLT's and
    the binaries of proved neurons fixed."""
    for j in range(len(data.biases[layer])):
        key = (layer, j)
        lo, up = float(data.lower[layer][j]), float(data.upper[layer][j])
        handle.g[key] = affine(data.weights[layer][j], data.biases[layer][j], inputs)
        lower[j].set_value(lo)
        upper[j].set_value(up)
        handle.lower[key], handle.upper[key] = lower[j], upper[j]
        blk.zhat[j].setlb(lo)
        blk.zhat[j].setub(up)
        if not relu:
            continue
        blk.z[j].setlb(max(lo, 0.0))
        blk.z[j].setub(max(up, 0.0))
        state = data.fixed[layer][j]
        if state < 0 or up <= 0:
            blk.q_relu[j].fix(OMLT_RELU.binary_value(False))
            handle.h[key] = blk.z[j]
        elif state > 0 or lo >= 0:
            blk.q_relu[j].fix(OMLT_RELU.binary_value(True))
            handle.h[key] = blk.z[j]
        else:
            handle.add_relu(key, blk.z[j], blk.q_relu[j], OMLT_RELU)


if OMLT_MISSING is None:
    register(
        "omlt",
        "network",
        build,
        "network formulation on OMLT's ReLU big-M (peer baseline)",
        relus=(DEFAULT_RELU,),
    )
else:
    mark_unavailable(
        "omlt",
        f"formulation 'omlt' needs the optional package omlt ({OMLT_MISSING}): "
        "pip install 'exactcompress[peers]'",
    )
