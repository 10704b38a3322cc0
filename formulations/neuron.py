"""Neuron formulation (LEO, Serra et al. CPAIOR 2020): one objective per candidate.

The model holds every hidden layer once; the driver re-solves it with the objective
set to one candidate's pre-activation (maximised for a candidate for stably
inactive, minimised for one for stably active), fixing the binaries of neurons as
they are proved stable and tightening the big-M parameters with proven optima.
"""

from __future__ import annotations

import pyomo.environ as pyo

from .base import DEFAULT_RELU, Candidate, Handle, MILPInput, needed_outputs
from .registry import register
from .relu import build_layers


def build(data: MILPInput, candidates: list[Candidate], relu: str = DEFAULT_RELU) -> Handle:
    deepest = max(layer for layer, _, _ in candidates)
    data = data.truncated(deepest + 1)
    handle = Handle(pyo.ConcreteModel(name="neuron_formulation"), [])
    build_layers(data, needed_outputs(data, deepest), handle, relu)
    handle.model.objective = pyo.Objective(expr=0.0, sense=pyo.maximize)
    return handle


register(
    "neuron",
    "neuron",
    build,
    "one MILP objective per candidate neuron, layer by layer (LEO, CPAIOR 2020)",
)
