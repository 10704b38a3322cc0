"""The private Pyomo attributes the adapters' callbacks rely on are where we read them.

If one of these tests fails after a Pyomo upgrade, Pyomo moved an attribute: update
exactcompress/solvers/pyomo_internals.py, the only module that reads them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyomo.environ as pyo
import pytest

from exactcompress.errors import ExactCompressError
from exactcompress.solvers import gurobi_licence, pyomo_internals

PACKAGE = Path(pyomo_internals.__file__).parents[1]
HAS_GUROBI = importlib.util.find_spec("gurobipy") is not None and not gurobi_licence().problem


def tiny_model() -> pyo.ConcreteModel:
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 1))
    m.unused = pyo.Var(bounds=(0, 1))
    m.a = pyo.Var(domain=pyo.Binary)
    m.c = pyo.Constraint(expr=m.x <= m.a)
    m.objective = pyo.Objective(expr=m.x, sense=pyo.maximize)
    return m


def test_highs_model_and_columns() -> None:
    import highspy
    from pyomo.contrib.solver.solvers.highs import Highs

    opt, m = Highs(), tiny_model()
    opt.set_instance(m)
    assert isinstance(pyomo_internals.solver_model(opt), highspy.Highs)
    assert {pyomo_internals.highs_column(opt, v) for v in (m.x, m.a)} == {0, 1}
    assert pyomo_internals.highs_column(opt, m.unused) == -1


@pytest.mark.gurobi
@pytest.mark.skipif(not HAS_GUROBI, reason="gurobipy not usable")
def test_gurobi_model_and_variables() -> None:
    import gurobipy
    from pyomo.contrib.solver.solvers.gurobi.gurobi_persistent import GurobiPersistent

    opt, m = GurobiPersistent(), tiny_model()
    opt.set_instance(m)
    assert isinstance(pyomo_internals.solver_model(opt), gurobipy.Model)
    assert isinstance(pyomo_internals.gurobi_var(opt, m.x), gurobipy.Var)
    assert pyomo_internals.gurobi_var(opt, m.unused) is None


def test_a_moved_attribute_fails_by_name() -> None:
    with pytest.raises(ExactCompressError, match="pyomo_internals.py needs updating"):
        pyomo_internals.solver_model(object())


def test_no_other_module_reads_them() -> None:
    private = ("_solver_model", "_pyomo_var_to_solver_var_map")
    readers = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "pyomo_internals.py" and any(p in path.read_text() for p in private)
    ]
    assert readers == []
