"""Complete input values into a full solution of a formulation's model.

A node relaxation gives inputs inside the box but fractional binaries; a forward
pass through the model's own expressions turns those inputs into a solution the
solver can take as an incumbent (Gurobi's cbSetSolution), so every node can feed
the search. Only the Handle and its Pyomo model are read, never the network: this
works for any formulation that records its pre-activations and variables there.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap
from pyomo.core.expr.visitor import identify_variables
from pyomo.repn import generate_standard_repn

from .base import Handle


class _Rows:
    """Linear expressions over one value vector, evaluated together (numpy only)."""

    def __init__(self, exprs: list, index: ComponentMap) -> None:
        rows, cols, coefs, const = [], [], [], []
        for r, expr in enumerate(exprs):
            repn = generate_standard_repn(expr, compute_values=True)
            if not repn.is_linear():
                raise ValueError(f"cannot complete a solution through nonlinear {expr}")
            const.append(float(pyo.value(repn.constant)))
            for coef, var in zip(repn.linear_coefs, repn.linear_vars):
                if var not in index:
                    raise ValueError(f"{var.name} is not recorded in the formulation's Handle")
                rows.append(r)
                cols.append(index[var])
                coefs.append(float(coef))
        self.rows = np.asarray(rows, dtype=np.intp)
        self.cols = np.asarray(cols, dtype=np.intp)
        self.coefs = np.asarray(coefs, dtype=np.float64)
        self.const = np.asarray(const, dtype=np.float64)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        terms = self.coefs * values[self.cols]
        return self.const + np.bincount(self.rows, terms, minlength=len(self.const))


class SolutionCompleter:
    """Forward pass through a Handle's model: x -> every g, h = max(0, g), each binary
    at its encoding's value for the state g > 0 or g <= 0, z = 1 where all constraints
    holding z are met with z = 1. Variables an encoding adds beyond these are left to
    the solver (Gurobi completes a partial solution).

    ``vars`` lists the variables set, in the order of the arrays ``complete`` returns.
    Fixed variables keep their values. Call ``refresh`` after changing fixings, mutable
    parameters (big-M) or the objective, as the drivers do between solves.
    """

    def __init__(self, handle: Handle) -> None:
        self.handle = handle
        self.vars: list = []
        self.index = ComponentMap()
        for var in [*handle.x, *handle.h.values(), *handle.a.values(), *handle.z.values()]:
            if var.is_variable_type() and var not in self.index:
                self.index[var] = len(self.vars)
                self.vars.append(var)
        self.n_x = len(handle.x)
        self._lo = np.array([_bound(v.lb, -np.inf) for v in handle.x])
        self._hi = np.array([_bound(v.ub, np.inf) for v in handle.x])
        self._layers = []
        for layer in sorted({key[0] for key in handle.g}):
            keys = sorted(key for key in handle.g if key[0] == layer)
            rows = _Rows([handle.g[key] for key in keys], self.index)
            held = [k for k in keys if k in handle.a]
            values = np.array(
                [[handle.relu[k].binary_value(s) for k in held] for s in (False, True)]
            )
            self._layers.append(
                (
                    rows,
                    self._positions(handle.h, keys),
                    self._positions(handle.a, keys),
                    values.reshape(2, len(held)),
                )
            )
        self._z = np.array([self.index[v] for v in handle.z.values()], dtype=np.intp)
        self._z_pos = ComponentMap((v, i) for i, v in enumerate(handle.z.values()))
        self._z_cons, z_of, row_of = [], [], []
        for con in handle.model.component_data_objects(pyo.Constraint, active=True):
            held = {self._z_pos[v] for v in identify_variables(con.body) if v in self._z_pos}
            for i in held:
                z_of.append(i)
                row_of.append(len(self._z_cons))
            if held:
                self._z_cons.append(con)
        self._z_of = np.asarray(z_of, dtype=np.intp)
        self._row_of = np.asarray(row_of, dtype=np.intp)
        self.refresh()

    def _positions(self, vars_by_key: dict, keys: list) -> tuple[np.ndarray, np.ndarray]:
        """(row in the layer, position in the value vector) of the keys holding a variable."""
        held = [(r, self.index[vars_by_key[k]]) for r, k in enumerate(keys) if k in vars_by_key]
        rows = np.asarray([r for r, _ in held], dtype=np.intp)
        return rows, np.asarray([p for _, p in held], dtype=np.intp)

    def refresh(self) -> None:
        """Re-read fixed variables, mutable parameters in the z constraints, the objective."""
        fixed = [(i, v.value) for i, v in enumerate(self.vars) if v.fixed]
        self._fixed_idx = np.asarray([i for i, _ in fixed], dtype=np.intp)
        self._fixed_val = np.asarray([val for _, val in fixed], dtype=np.float64)
        self._z_free = np.array([not self.vars[i].fixed for i in self._z], dtype=bool)
        self._z_rows = _Rows([con.body for con in self._z_cons], self.index)
        self._z_lb = np.array([_bound(con.lb, -np.inf) for con in self._z_cons])
        self._z_ub = np.array([_bound(con.ub, np.inf) for con in self._z_cons])
        objective = next(self.handle.model.component_data_objects(pyo.Objective, active=True))
        self._objective = _Rows([objective.expr], self.index)

    def complete(self, x: np.ndarray, zero: Iterable = ()) -> np.ndarray:
        """Values of ``vars`` for inputs ``x`` (clipped into their bounds); the
        indicators in ``zero`` stay 0."""
        values = np.zeros(len(self.vars))
        values[: self.n_x] = np.clip(np.asarray(x, dtype=np.float64), self._lo, self._hi)
        for rows, (h_row, h_pos), (a_row, a_pos), (off, on) in self._layers:
            g = rows(values)
            values[h_pos] = np.maximum(g[h_row], 0.0)
            values[a_pos] = np.where(g[a_row] > 0, on, off)
        values[self._fixed_idx] = self._fixed_val
        if len(self._z):
            trial = self._z_free.copy()
            trial[[self._z_pos[v] for v in zero]] = False
            values[self._z[trial]] = 1.0
            body = self._z_rows(values)
            broken = np.zeros(len(self._z), dtype=bool)
            np.logical_or.at(
                broken, self._z_of, ((body < self._z_lb) | (body > self._z_ub))[self._row_of]
            )
            values[self._z[trial & broken]] = 0.0
        return values

    def objective(self, values: np.ndarray) -> float:
        """Objective value of a completed solution."""
        return float(self._objective(values)[0])


def complete_solution(handle: Handle, x: np.ndarray) -> ComponentMap:
    """Every recorded variable's value in the solution that inputs ``x`` determine."""
    completer = SolutionCompleter(handle)
    return ComponentMap(zip(completer.vars, completer.complete(x)))


def _bound(value, default: float) -> float:
    return default if value is None else float(value)
