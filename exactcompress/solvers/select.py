"""Choosing a solver for ``--solver``: what each name needs installed, whether it can
run here, and for 'auto' which one suits a model."""

from __future__ import annotations

import functools
from collections.abc import Callable

from formulations import Handle

from ..errors import ExactCompressError
from .base import SolverAdapter
from .generic import GENERIC, PyomoAdapter
from .gurobi import (
    INSTALL_GUROBI,
    GurobiAdapter,
    gurobi_licence,
    gurobi_size_error,
    model_size,
)
from .highs import HighsAdapter, highs_available

#: what to install for each solver ``--solver`` accepts (named in "not installed" errors)
INSTALL = {
    "highs": "highspy (pip install highspy)",
    "gurobi": INSTALL_GUROBI,
    "scip": "pyscipopt (pip install pyscipopt)",
    "cbc": "the cbc executable (apt install coinor-cbc, or conda install coin-or-cbc)",
    "glpk": "the glpsol executable (apt install glpk-utils)",
    "cplex": "the cplex executable (IBM ILOG CPLEX Optimization Studio)",
}

#: what --solver accepts besides 'auto'
ADAPTERS: dict[str, Callable[..., SolverAdapter]] = {
    "highs": HighsAdapter,
    "gurobi": GurobiAdapter,
    **{name: functools.partial(PyomoAdapter, name) for name in GENERIC},
}


def require(name: str) -> None:
    """Fail with one line naming what to install when solver ``name`` cannot run."""
    if name == "gurobi":
        problem = gurobi_licence().problem
        if problem:
            raise ExactCompressError(problem)
        return
    if name == "highs":
        ok = highs_available()
    elif name in GENERIC:
        ok = GENERIC[name].available()
    else:
        raise ExactCompressError(f"unknown solver {name!r}; choose from {', '.join(ADAPTERS)}")
    if not ok:
        raise ExactCompressError(f"solver {name!r} is not installed: install {INSTALL[name]}")


def choose(handle: Handle) -> tuple[str, str]:
    """For 'auto': Gurobi when its licence admits the model, otherwise HiGHS; and why."""
    licence = gurobi_licence()
    if licence.problem:
        return "highs", licence.problem.split(":")[0]
    if licence.limit is None:
        return "gurobi", "full Gurobi licence"
    n_vars, n_cons = model_size(handle)
    size = f"MILP of {n_vars} variables and {n_cons} constraints"
    if max(n_vars, n_cons) <= licence.limit:
        return "gurobi", f"{size}, within the size-limited Gurobi licence"
    return "highs", f"{size}, over the size-limited Gurobi licence's {licence.limit}"


def solver_factory(
    name: str, verbose: bool = False, threads: int | None = None, say: Callable[[str], None] = print
) -> Callable[[Handle], SolverAdapter]:
    """Adapter maker for ``--solver name``.

    A named solver is checked now, so a missing one fails before any work; 'auto'
    picks per model (see ``choose``) and says which and why through ``say``. The
    maker's ``chosen`` attribute names the solver it used, for the report.
    """
    if name != "auto" and name not in ADAPTERS:
        raise ExactCompressError(
            f"unknown solver {name!r}; choose from auto, {', '.join(ADAPTERS)}"
        )
    if name != "auto":
        require(name)

    def make(handle: Handle) -> SolverAdapter:
        chosen = name
        if name == "auto":
            chosen, why = choose(handle)
            require(chosen)
            say(f"solver: {chosen} ({why})")
        elif name == "gurobi" and gurobi_licence().limit is not None:
            if max(model_size(handle)) > gurobi_licence().limit:
                raise gurobi_size_error(handle, gurobi_licence().limit)
        make.chosen = chosen
        return ADAPTERS[chosen](verbose=verbose, threads=threads)

    if name != "auto":
        make.chosen = name
    return make
