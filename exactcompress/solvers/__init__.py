"""One adapter per MILP solver, behind the small interface the exact stage drives.

``base`` holds the contract (``SolverAdapter.maximize``, ``SolveStatus``,
``SolveNeeds``, ``Reaction``), ``highs``, ``gurobi`` and ``generic`` one adapter
each, ``select`` the choice behind ``--solver``. What differs between adapters is
how refuted candidates leave the search: Gurobi takes lazy constraints inside one
solve; HiGHS and generic Pyomo solvers stop (or run to the end), and the driver
re-solves the same persistent model with those indicators fixed to 0.
"""

from .base import (
    MIN_TIME_LIMIT,
    OnSolution,
    Reaction,
    SolveNeeds,
    SolveOutcome,
    SolverAdapter,
    SolveStatus,
)
from .generic import GENERIC, PyomoAdapter, PyomoSolver
from .gurobi import (
    GUROBI_LIMITED_SIZE,
    GurobiAdapter,
    GurobiLicence,
    gurobi_licence,
    gurobi_size_error,
    model_size,
)
from .highs import HighsAdapter
from .select import ADAPTERS, INSTALL, choose, require, solver_factory

__all__ = [
    "ADAPTERS",
    "GENERIC",
    "GUROBI_LIMITED_SIZE",
    "INSTALL",
    "MIN_TIME_LIMIT",
    "GurobiAdapter",
    "GurobiLicence",
    "HighsAdapter",
    "OnSolution",
    "PyomoAdapter",
    "PyomoSolver",
    "Reaction",
    "SolveNeeds",
    "SolveOutcome",
    "SolveStatus",
    "SolverAdapter",
    "choose",
    "gurobi_licence",
    "gurobi_size_error",
    "model_size",
    "require",
    "solver_factory",
]
