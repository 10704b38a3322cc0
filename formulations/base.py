"""The contract between formulations and the drivers that solve them.

Formulations depend on numpy and pyomo only: they turn weights, bounds and the
states already proved into a Pyomo model and record what they added in a
``Handle``, so the solving side (exactcompress.exact, exactcompress.solvers) can
read inputs out of solutions, change objectives and fix proved neurons without
knowing the encoding. ``Handle.validate`` checks the parts the drivers rely on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pyomo.environ as pyo
from pyomo.core.base.param import ParamData

#: side of a candidate: "pos" = never seen active (show g > 0), "neg" = never seen inactive
Candidate = tuple[int, int, str]
#: (hidden layer from 0, neuron)
Key = tuple[int, int]

#: a candidate counts as flipped in a model once g >= -FLIP_MARGIN ("pos") or
#: g <= FLIP_MARGIN ("neg"), and is proved stable only by a bound beyond it: ten times
#: HiGHS' and Gurobi's feasibility tolerances, so tolerance never makes a proof
FLIP_MARGIN = 1e-5
#: the ReLU encoding a formulation uses unless the caller names another (``relu=``)
DEFAULT_RELU = "bigm"


class FormulationError(ValueError):
    """A model breaks the contract: a driver would misread it, possibly into a false proof."""


@dataclass
class MILPInput:
    """Weights of the hidden layers a model needs, the input box, pre-activation
    bounds and the states already proved (+1 active, -1 inactive, 0 open)."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    lo: np.ndarray
    hi: np.ndarray
    lower: list[np.ndarray]
    upper: list[np.ndarray]
    fixed: list[np.ndarray]

    def truncated(self, n_layers: int) -> MILPInput:
        """Only the first ``n_layers`` hidden layers: later ones cannot affect them."""
        return MILPInput(
            self.weights[:n_layers],
            self.biases[:n_layers],
            self.lo,
            self.hi,
            self.lower[:n_layers],
            self.upper[:n_layers],
            self.fixed[:n_layers],
        )


def needed_outputs(data: MILPInput, deepest: int) -> list[np.ndarray]:
    """Neuron outputs feed only later layers: none is needed in the deepest one."""
    return [np.full(len(b), layer < deepest) for layer, b in enumerate(data.biases)]


@runtime_checkable
class ReluBinary(Protocol):
    """The convention of an open neuron's binary: which value means active.

    Drivers fix the binary of every neuron they prove; fixing it to the value of the
    other state would cut off every input of the domain, and an infeasible model reads
    as a proof. So only the encoding that made the binary says what its values mean.
    """

    def binary_value(self, active: bool) -> int:
        """The binary's value when the neuron is active (h = g) or inactive (h = 0)."""
        ...


@runtime_checkable
class ReluEncoding(ReluBinary, Protocol):
    """h = max(0, g) for one open neuron, g in [lower, upper] with lower < 0 < upper.

    ``lower``/``upper`` are mutable parameters: once a neuron is proved, the drivers fix
    its binary and tighten them with the proven bound, past zero (a neuron proved
    inactive gets upper < 0). Constraints using them must stay valid for those values
    with the binary fixed; one valid only while lower < 0 < upper (a chord, a slope)
    must use their values at build time instead.
    """

    def encode(self, block: pyo.Block, key: Key, g, lower, upper) -> tuple[pyo.Var, pyo.Var]:
        """Add the ReLU's variables and constraints to ``block``; return (h, binary)."""
        ...


@dataclass
class Handle:
    """What a formulation added to its model, by the neuron it belongs to.

    ``g``: pre-activation expression of every modelled neuron, linear in ``x`` and
    ``h``; ``h``: its output (a variable, or absent when the neuron is proved inactive
    or its output feeds nothing); ``a``: the binary of each open neuron and ``relu`` the
    encoding that owns it; ``z``: indicator of each network-formulation candidate, 1
    when the solution shows the candidate in its unseen state; ``lower``/``upper``:
    mutable big-M parameters, so bounds can be tightened on a persistent model. The
    drivers maximise ``model.objective``.
    """

    model: pyo.ConcreteModel
    x: list
    g: dict[Key, object] = field(default_factory=dict)
    h: dict[Key, object] = field(default_factory=dict)
    a: dict[Key, object] = field(default_factory=dict)
    relu: dict[Key, ReluBinary] = field(default_factory=dict)
    z: dict[Candidate, object] = field(default_factory=dict)
    lower: dict[Key, object] = field(default_factory=dict)
    upper: dict[Key, object] = field(default_factory=dict)

    def n_binaries(self) -> int:
        return len(self.a) + len(self.z)

    def add_relu(self, key: Key, h, binary, encoding: ReluBinary) -> None:
        """Record an open neuron's output and the binary that ``encoding`` owns."""
        self.h[key] = h
        self.a[key] = binary
        self.relu[key] = encoding

    def fix_state(self, key: Key, active: bool) -> None:
        """Fix a proved neuron's binary to its state, in its encoding's convention; a
        neuron without a binary is already linear or absent in this model."""
        if key in self.a:
            self.a[key].fix(self.relu[key].binary_value(active))

    def validate(self) -> None:
        """Raise FormulationError unless the drivers can rely on this model: one active
        objective ``model.objective`` to maximise; mutable bounds for every neuron with a
        binary and every candidate; exactly one binary, with its encoding, per open neuron."""
        objectives = list(self.model.component_data_objects(pyo.Objective, active=True))
        objective = getattr(self.model, "objective", None)
        if len(objectives) != 1 or objectives[0] is not objective:
            raise FormulationError("the model needs exactly one active objective, named objective")
        if objective.sense != pyo.maximize:
            raise FormulationError("the drivers maximise: objective must have sense=maximize")
        keys = set(self.a) | {(layer, j) for layer, j, _ in self.z}
        for key in keys:
            for name, params in (("lower", self.lower), ("upper", self.upper)):
                if not _is_mutable_param(params.get(key)):
                    raise FormulationError(f"{name} bound of neuron {key} is not a mutable Param")
        if set(self.a) != set(self.relu) or not set(self.a) <= set(self.h) & set(self.g):
            raise FormulationError("every binary in a needs its encoding in relu, its g and h")
        if len({id(v) for v in self.a.values()}) != len(self.a):
            raise FormulationError("two neurons share one binary")
        for key, var in [*self.a.items(), *self.z.items()]:
            if not (var.is_variable_type() and var.is_binary()):
                raise FormulationError(f"{var.name} of {key} is not a binary variable")
        for key, encoding in self.relu.items():
            if {encoding.binary_value(True), encoding.binary_value(False)} != {0, 1}:
                raise FormulationError(f"the encoding of neuron {key} gives no 0/1 convention")


def _is_mutable_param(p) -> bool:
    return isinstance(p, ParamData) and p.parent_component().mutable


class Build(Protocol):
    """``build(data, candidates, relu=NAME)``: the model for these candidates, its open
    neurons encoded by the registered ReLU encoding ``relu``."""

    def __call__(
        self, data: MILPInput, candidates: list[Candidate], relu: str = DEFAULT_RELU
    ) -> Handle: ...


@dataclass(frozen=True)
class FormulationSpec:
    """A registered formulation: how to build its model and which driver solves it.

    ``strategy`` names a driver of ``exactcompress.exact.STRATEGIES``: "network" (one
    model, indicators maximised, ISA), "neuron" (one objective per candidate on a
    persistent model, LEO) or "layer" (one network model per hidden layer, in order).
    """

    name: str
    strategy: str
    build: Build | Callable[..., Handle]
    description: str = ""
    #: the ReLU encodings ``build`` accepts; None: every registered one
    relus: tuple[str, ...] | None = None
