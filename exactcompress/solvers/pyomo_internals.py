"""The only place that reads private attributes of Pyomo's persistent solver interfaces.

Callbacks need the solver's own model (highspy.Highs, gurobipy.Model) and the column
of each Pyomo variable, which Pyomo keeps in private attributes. Reading them here,
and nowhere else, means a Pyomo release that moves them breaks one module, and
tests/test_pyomo_internals.py says so by name.
"""

from __future__ import annotations

import pyomo

from ..errors import ExactCompressError

_SOLVER_MODEL = "_solver_model"
_VAR_MAP = "_pyomo_var_to_solver_var_map"


def _read(opt, attr: str):
    try:
        return getattr(opt, attr)
    except AttributeError:
        raise ExactCompressError(
            f"Pyomo {pyomo.version.version} has no {type(opt).__name__}.{attr}: "
            "exactcompress/solvers/pyomo_internals.py needs updating for this release"
        ) from None


def solver_model(opt):
    """The solver's own model behind a persistent interface, after ``set_instance``."""
    return _read(opt, _SOLVER_MODEL)


def highs_column(opt, var) -> int:
    """HiGHS column of a Pyomo variable, -1 when the model does not use it. Read during
    each solve: Pyomo's update may add or renumber columns between solves."""
    return _read(opt, _VAR_MAP).get(id(var), -1)


def gurobi_var(opt, var):
    """gurobipy.Var of a Pyomo variable, None when the model does not use it."""
    return _read(opt, _VAR_MAP).get(var)
