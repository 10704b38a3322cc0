"""MILP formulations of ReLU networks, written once in Pyomo.

A formulation is one module that builds a model from a ``MILPInput`` and calls
``register(name, strategy, build)``; a ReLU encoding is one class registered with
``register_relu(name, encoding)``. Modules in this package and entry points of the
group ``exactcompress.formulations`` are found by name (``registry.discover``).
"""

from . import network, neuron  # noqa: F401  (registration)
from .base import (
    DEFAULT_RELU,
    FLIP_MARGIN,
    Candidate,
    FormulationError,
    FormulationSpec,
    Handle,
    Key,
    MILPInput,
    ReluBinary,
    ReluEncoding,
    needed_outputs,
)
from .registry import (
    ENTRY_POINT_GROUP,
    FORMULATIONS,
    RELU_ENCODINGS,
    discover,
    formulation_names,
    get,
    mark_unavailable,
    register,
    register_relu,
    relu_encoding,
    relu_names,
)
from .relu import affine, build_layers

__all__ = [
    "DEFAULT_RELU",
    "ENTRY_POINT_GROUP",
    "FLIP_MARGIN",
    "FORMULATIONS",
    "RELU_ENCODINGS",
    "Candidate",
    "FormulationError",
    "FormulationSpec",
    "Handle",
    "Key",
    "MILPInput",
    "ReluBinary",
    "ReluEncoding",
    "affine",
    "build_layers",
    "discover",
    "formulation_names",
    "get",
    "mark_unavailable",
    "needed_outputs",
    "register",
    "register_relu",
    "relu_encoding",
    "relu_names",
]
