"""Network formulation (ISA, Serra et al. NeurIPS 2021): one model for all candidates.

Each candidate gets an indicator z, 1 only if the solution puts its pre-activation
within ``FLIP_MARGIN`` of its unseen side; the objective maximises the number of
such indicators. When the proven bound of this maximum drops below 1, no remaining
candidate can come within the margin of flipping, so every one of them is stable
with the margin to spare: float tolerance goes against stability, never for it.
"""

from __future__ import annotations

import pyomo.environ as pyo

from .base import DEFAULT_RELU, FLIP_MARGIN, Candidate, Handle, MILPInput, needed_outputs
from .registry import register
from .relu import build_layers


def build(data: MILPInput, candidates: list[Candidate], relu: str = DEFAULT_RELU) -> Handle:
    deepest = max(layer for layer, _, _ in candidates)
    data = data.truncated(deepest + 1)
    handle = Handle(pyo.ConcreteModel(name="network_formulation"), [])
    build_layers(data, needed_outputs(data, deepest), handle, relu)
    add_count_objective(handle, candidates)
    return handle


def add_count_objective(handle: Handle, candidates: list[Candidate]) -> None:
    """The indicators, their flip constraints and the objective counting them, on any
    model whose Handle records each candidate's g and mutable bounds."""
    m = handle.model
    m.z = pyo.Var(range(len(candidates)), domain=pyo.Binary)
    m.flip = pyo.ConstraintList()
    for i, (layer, j, side) in enumerate(candidates):
        g, z = handle.g[(layer, j)], m.z[i]
        if side == "pos":  # z = 1  =>  g >= -margin
            m.flip.add(g >= -FLIP_MARGIN * z + handle.lower[(layer, j)] * (1 - z))
        else:  # z = 1  =>  g <= margin
            m.flip.add(g <= FLIP_MARGIN * z + handle.upper[(layer, j)] * (1 - z))
        handle.z[(layer, j, side)] = z
    m.objective = pyo.Objective(expr=pyo.quicksum(m.z.values()), sense=pyo.maximize)


register(
    "network",
    "network",
    build,
    "one MILP for all candidates, maximising how many flip (ISA, NeurIPS 2021)",
)
