"""MILP formulations of ReLU networks, written once in Pyomo.

A formulation is one module that builds a model from a ``MILPInput`` and calls
``register(name, strategy, build)``; importing it makes ``--formulation name`` work.
"""

from . import network, neuron  # noqa: F401  (registration)
from .base import (
    FORMULATIONS,
    Candidate,
    FormulationSpec,
    Handle,
    MILPInput,
    get,
    register,
)
from .network import FLIP_MARGIN
from .relu import RELU_ENCODINGS, affine, build_layers

__all__ = [
    "FORMULATIONS",
    "FLIP_MARGIN",
    "RELU_ENCODINGS",
    "Candidate",
    "FormulationSpec",
    "Handle",
    "MILPInput",
    "affine",
    "build_layers",
    "get",
    "register",
]
