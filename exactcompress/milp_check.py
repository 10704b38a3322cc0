"""One MILP extreme of one neuron, for ``exactcompress check --solver NAME``.

A second opinion from a solver of the user's choice on a stable claim that sound
bounds and branch and bound left open: the neuron formulation of the layers up to the
neuron's, with the states already proved soundly fixed, maximising g (a claim of
inactivity) or -g (of activity). Its proven bound is the solver's floating-point word,
and the check reports it as such.
"""

from __future__ import annotations

import numpy as np

import formulations
from formulations import MILPInput

from .domain import Box
from .network import ReLUNetwork

#: seconds given to a solve when the check has no time limit
NO_LIMIT = 1e6


def milp_extreme(
    net: ReLUNetwork,
    box: Box,
    layer: int,
    neuron: int,
    side: str,
    lower: list[np.ndarray],
    upper: list[np.ndarray],
    fixed: list[np.ndarray],
    solver: str,
    time_limit: float | None,
    stop_below: float = -1e-5,
) -> tuple[str, float, np.ndarray | None]:
    """Maximise g (``side`` "pos") or -g ("neg") of ``neuron`` of hidden ``layer`` (from
    0) over the box. Returns (status, proven upper bound, an input whose forward pass
    shows the other side strictly, else the solver's best input or None). The solve
    stops at such an input, or once the bound falls below ``stop_below``."""
    from .solvers import Reaction, solver_factory

    n = layer + 1
    data = MILPInput(
        net.weights[:n], net.biases[:n], box.lo, box.hi, lower[:n], upper[:n], fixed[:n]
    )
    handle = formulations.get("neuron").build(data, [(layer, neuron, side)])
    adapter = solver_factory(solver, say=lambda _msg: None)(handle)
    adapter.load(handle)
    g = handle.g[(layer, neuron)]
    handle.model.objective.set_value(g if side == "pos" else -g)
    flip: list[np.ndarray] = []

    def on_solution(x: np.ndarray, _objective: float) -> Reaction:
        x = box.clip(np.asarray(x, dtype=np.float64))
        gs, errs = net.preactivations_with_error(x[None, :])
        value, err = float(gs[layer][0, neuron]), float(errs[layer][0, neuron])
        if (value > err) if side == "pos" else (value < -err):
            flip.append(x)
        return Reaction(stop=bool(flip))

    limit = NO_LIMIT if time_limit is None else max(time_limit, 1e-3)
    outcome = adapter.maximize(limit, on_solution, stop_below=stop_below)
    x = flip[0] if flip else outcome.x
    return str(outcome.status), float(outcome.bound), x
