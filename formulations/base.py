"""What every formulation receives and returns, and the registry users plug into.

Formulations depend on numpy and pyomo only: they turn weights, bounds and the
states already proved into a Pyomo model and record what they added in a
``Handle``, so the solving side (exactcompress.exact, exactcompress.solvers) can
read inputs out of solutions and change objectives without knowing the encoding.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo

#: side of a candidate: "pos" = never seen active (show g > 0), "neg" = never seen inactive
Candidate = tuple[int, int, str]


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


@dataclass
class Handle:
    """What a formulation added to its model, by the neuron it belongs to.

    ``g``: pre-activation expression of every modelled neuron; ``h``: its output
    (a variable, or absent when the neuron is proved inactive); ``a``: the binary of
    each neuron that has one; ``z``: indicator of each network-formulation candidate,
    1 when the solution shows the candidate in its unseen state; ``lower``/``upper``:
    mutable big-M parameters, so bounds can be tightened on a persistent model.
    """

    model: pyo.ConcreteModel
    x: list
    g: dict[tuple[int, int], object] = field(default_factory=dict)
    h: dict[tuple[int, int], object] = field(default_factory=dict)
    a: dict[tuple[int, int], object] = field(default_factory=dict)
    z: dict[Candidate, object] = field(default_factory=dict)
    lower: dict[tuple[int, int], object] = field(default_factory=dict)
    upper: dict[tuple[int, int], object] = field(default_factory=dict)

    def n_binaries(self) -> int:
        return len(self.a) + len(self.z)


@dataclass(frozen=True)
class FormulationSpec:
    """A registered formulation: how to build its model and which driver solves it.

    ``strategy`` is "network" (one model, indicators maximised, ISA) or "neuron"
    (one objective per candidate on a persistent model, LEO).
    """

    name: str
    strategy: str
    build: Callable[[MILPInput, list[Candidate]], Handle]
    description: str = ""


FORMULATIONS: dict[str, FormulationSpec] = {}
STRATEGIES = ("network", "neuron")


def register(
    name: str, strategy: str, build: Callable[[MILPInput, list[Candidate]], Handle], description=""
) -> FormulationSpec:
    """Make ``build`` available as ``--formulation name``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    spec = FormulationSpec(name, strategy, build, description)
    FORMULATIONS[name] = spec
    return spec


def discover() -> None:
    """Import every module of this package, so that a module dropped into
    ``formulations/`` registers itself without any other edit."""
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        module = f"{__package__}.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as err:  # a user's module: name it rather than hide the cause
            raise ImportError(f"formulation module {module} failed to import: {err}") from err


def get(name: str) -> FormulationSpec:
    """The formulation registered as ``name``, looking through ``formulations/`` first
    when nothing of that name is registered yet."""
    if name not in FORMULATIONS:
        discover()
    try:
        return FORMULATIONS[name]
    except KeyError:
        raise KeyError(
            f"unknown formulation {name!r}; registered: {', '.join(sorted(FORMULATIONS))}"
        ) from None
