"""Gurobi through Pyomo's persistent interface (pyomo.contrib.solver), with callbacks,
and the licence checks that decide whether Gurobi may run a model at all."""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentSet
from pyomo.core.expr.visitor import identify_variables

from formulations import Handle
from formulations.complete import SolutionCompleter

from ..errors import ExactCompressError
from . import pyomo_internals
from .base import Reaction, SolveNeeds, SolveOutcome, SolverAdapter, SolveStatus, finite_or_inf

#: variables, and constraints, that the size-limited licence shipped with pip's gurobipy admits
GUROBI_LIMITED_SIZE = 2000
INSTALL_GUROBI = "gurobipy (pip install gurobipy)"


@dataclass(frozen=True)
class _GurobiColumns:
    """Gurobi variables of the inputs and of a completed solution, with their positions."""

    x_at: np.ndarray
    x: list
    sol_at: np.ndarray
    sol: list


class GurobiAdapter(SolverAdapter):
    """Network strategy, one solve as in the paper: every new solution (MIPSOL) goes to
    the driver and the indicators it refutes leave the search as lazy constraints
    z <= 0; the inputs of every optimal node relaxation go to the driver too (witness
    candidates) and, completed by a forward pass, are offered as a solution. With an
    integral objective, an absolute gap under 1 ends the solve as soon as the bound
    shows that no remaining candidate can flip. Neuron strategy: a solve ends once the
    sign is settled, by BestBdStop or by a refuting solution.

    Pyomo builds and updates the model and registers the callback; values move with
    gurobipy's cb* calls on the solver's own model, which spares writing every
    callback's values into the Pyomo variables.
    """

    name = "gurobi"
    lazy_constraints = True

    def __init__(self, verbose: bool = False, threads: int | None = None) -> None:
        super().__init__(verbose, threads)
        import gurobipy
        from pyomo.contrib.solver.solvers.gurobi.gurobi_persistent import GurobiPersistent

        self._gp = gurobipy
        self._opt = GurobiPersistent()
        self._completer: SolutionCompleter | None = None
        self._cols: _GurobiColumns | None = None
        self._zeroed = ComponentSet()
        self._zeroed_cols: list = []
        self._last_node = -1.0

    def load(self, handle: Handle) -> None:
        super().load(handle)
        self._completer = SolutionCompleter(handle)
        self._opt.set_instance(handle.model)
        self._opt.set_callback(self._callback)

    @property
    def _grb(self):
        return pyomo_internals.solver_model(self._opt)

    def _columns(self) -> _GurobiColumns:
        """Read during each solve, after Pyomo's update has added what changed."""
        if self._cols is None:
            x = [pyomo_internals.gurobi_var(self._opt, v) for v in self.handle.x]
            sol = [pyomo_internals.gurobi_var(self._opt, v) for v in self._completer.vars]
            x_at = [i for i, v in enumerate(x) if v is not None]
            sol_at = [i for i, v in enumerate(sol) if v is not None]
            self._cols = _GurobiColumns(
                np.array(x_at, dtype=int),
                [x[i] for i in x_at],
                np.array(sol_at, dtype=int),
                [sol[i] for i in sol_at],
            )
        return self._cols

    def _callback(self, _model, _opt, where: int) -> None:
        cb = self._gp.GRB.Callback
        try:
            if self._ctrl_c:
                self._grb.terminate()
            elif where == cb.MIP:  # the heartbeat's "solver bound"
                self.live_bound = float(self._grb.cbGet(cb.MIP_OBJBND))
            elif where == cb.MIPSOL:
                self._new_solution()
            elif where == cb.MIPNODE:
                self._node_relaxation()
        except BaseException as err:  # raised again after the solve: gurobipy would print it
            self._error, self._stopped = err, True
            self._grb.terminate()

    def _new_solution(self) -> None:
        """Gurobi may offer solutions that break lazy constraints added earlier (its
        manual says so): those are cut off again before the driver sees the inputs."""
        grb, cols = self._grb, self._columns()
        if self._zeroed_cols:
            for col, z in zip(self._zeroed_cols, grb.cbGetSolution(self._zeroed_cols)):
                if z > 0.5:
                    grb.cbLazy(col <= 0)
        x = self._x_default.copy()
        x[cols.x_at] = grb.cbGetSolution(cols.x)
        self._react(x, grb.cbGet(self._gp.GRB.Callback.MIPSOL_OBJ))

    def _node_relaxation(self) -> None:
        """Once per node with an optimal relaxation: its inputs are witness candidates,
        and their forward pass is a full solution to offer."""
        grb, GRB = self._grb, self._gp.GRB
        if grb.cbGet(GRB.Callback.MIPNODE_STATUS) != GRB.OPTIMAL:
            return
        node = grb.cbGet(GRB.Callback.MIPNODE_NODCNT)
        if node == self._last_node:
            return
        self._last_node = node
        cols = self._columns()
        x = self._x_default.copy()
        x[cols.x_at] = grb.cbGetNodeRel(cols.x)
        values = self._completer.complete(x, self._zeroed)
        reaction = self._react(values[: len(x)], self._completer.objective(values))
        if self._should_stop:
            return
        for z in reaction.zero:
            values[self._completer.index[z]] = 0.0
        grb.cbSetSolution(cols.sol, values[cols.sol_at].tolist())
        grb.cbUseSolution()

    def _react(self, x: np.ndarray, objective: float) -> Reaction:
        reaction = self._to_driver(x, objective)
        if self._lazy:
            for z in reaction.zero:
                if z not in self._zeroed:
                    col = pyomo_internals.gurobi_var(self._opt, z)
                    self._zeroed.add(z)
                    self._zeroed_cols.append(col)
                    self._grb.cbLazy(col <= 0)
        if self._should_stop:
            self._grb.terminate()
        return reaction

    def _solve(
        self, time_limit: float, stop_below: float | None, needs: SolveNeeds
    ) -> SolveOutcome:
        GRB = self._gp.GRB
        self._zeroed, self._zeroed_cols = ComponentSet(), []
        self._last_node, self._cols = -1.0, None
        self._completer.refresh()
        opts = {
            "OutputFlag": int(self.verbose),
            "TimeLimit": min(time_limit, GRB.INFINITY),
            "MIPGap": 0.0,
            "MIPGapAbs": 0.99 if needs.integral_objective else 0.0,
            "LazyConstraints": int(self._lazy),
            # a bound strictly below stop_below settles the sign (the drivers test <)
            "BestBdStop": math.inf if stop_below is None else np.nextafter(stop_below, -math.inf),
        }
        if self.threads:
            opts["Threads"] = self.threads
        # quiet before Pyomo sets its parameters, each of which Gurobi would announce
        self._grb.Params.OutputFlag = int(self.verbose)
        try:
            res = self._opt.solve(
                self.handle.model,
                load_solutions=False,
                raise_exception_on_nonoptimal_result=False,
                solver_options=opts,
                # Pyomo swaps sys.stderr for a tee during the solve: without one, the
                # exact stage's heartbeat lines would vanish (OutputFlag keeps Gurobi quiet)
                tee=[sys.stderr],
            )
        except self._gp.GurobiError as err:
            if err.errno == GRB.Error.SIZE_LIMIT_EXCEEDED:
                raise gurobi_size_error(self.handle, GUROBI_LIMITED_SIZE) from None
            raise ExactCompressError(f"Gurobi failed: {err}") from None
        grb = self._grb
        status = {
            GRB.OPTIMAL: SolveStatus.OPTIMAL,
            GRB.USER_OBJ_LIMIT: SolveStatus.STOPPED,  # BestBdStop: stop_below reached
            GRB.TIME_LIMIT: SolveStatus.TIME_LIMIT,
            GRB.INFEASIBLE: SolveStatus.INFEASIBLE,
            # terminate() from a callback, or Gurobi's own Ctrl-C handling
            GRB.INTERRUPTED: SolveStatus.STOPPED if self._stopped else SolveStatus.INTERRUPTED,
        }.get(grb.Status, SolveStatus.ERROR)
        bound = finite_or_inf(res.objective_bound, GRB.INFINITY)
        if status is SolveStatus.OPTIMAL and not grb.IsMIP:  # an LP has no ObjBound
            bound = float(grb.ObjVal)
        best = None
        if res.incumbent_objective is not None:
            best = float(res.incumbent_objective)
            res.solution_loader.load_vars()
        return SolveOutcome(status, bound, best)


# ---- the licence ------------------------------------------------------------------------


@dataclass(frozen=True)
class GurobiLicence:
    """Whether Gurobi runs here: ``problem`` says why not ('' when it does); ``limit`` is
    the most variables, and constraints, a model may have (None: no limit)."""

    problem: str
    limit: int | None


@functools.cache
def gurobi_licence() -> GurobiLicence:
    """Checked once per process; Pyomo detects the size-limited licence by optimising an
    empty model with 2001 variables."""
    try:
        import gurobipy  # noqa: F401
        from pyomo.contrib.solver.common.base import Availability
        from pyomo.contrib.solver.solvers.gurobi.gurobi_direct import GurobiDirect
    except ImportError:
        return GurobiLicence(f"gurobipy is not installed: install {INSTALL_GUROBI}", None)
    # GurobiDirect: a GurobiPersistent that never loads a model miscounts its licence users
    available = GurobiDirect().available()
    if available == Availability.FullLicense:
        return GurobiLicence("", None)
    if available == Availability.LimitedLicense:
        return GurobiLicence("", GUROBI_LIMITED_SIZE)
    return GurobiLicence(f"Gurobi cannot run here ({available.name}): check its licence", None)


def model_size(handle: Handle) -> tuple[int, int]:
    """(variables, constraints) as a solver will see the model: the active constraints,
    and the variables they, the objective and any candidate's objective g use."""
    model = handle.model
    used = ComponentSet()
    n_cons = 0
    for con in model.component_data_objects(pyo.Constraint, active=True):
        n_cons += 1
        used.update(identify_variables(con.body))
    for obj in model.component_data_objects(pyo.Objective, active=True):
        used.update(identify_variables(obj.expr))
    for g in handle.g.values():
        used.update(identify_variables(g))
    return len(used), n_cons


def gurobi_size_error(handle: Handle, limit: int) -> ExactCompressError:
    n_vars, n_cons = model_size(handle)
    return ExactCompressError(
        f"the MILP has {n_vars} variables and {n_cons} constraints, but the size-limited "
        f"Gurobi licence allows at most {limit} of each; use --solver highs "
        "(or a full Gurobi licence)"
    )
