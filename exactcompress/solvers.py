"""One adapter per MILP solver, behind the small interface the exact stage drives.

Every adapter maximises the objective of a formulation's model, calls back with the
input values of every solution the solver finds (so the driver can forward-pass
them in float64 and harvest witnesses), and reports the proven bound. What differs
is how refuted candidates leave the search: Gurobi takes lazy constraints inside
one solve; HiGHS and generic Pyomo solvers stop (or run to the end), and the driver
re-solves the same persistent model with those indicators fixed to 0.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentSet
from pyomo.core.expr.visitor import identify_variables

from formulations import Handle
from formulations.complete import SolutionCompleter

from .errors import ExactCompressError

#: what to install for each solver ``--solver`` accepts (named in "not installed" errors)
INSTALL = {
    "highs": "highspy (pip install highspy)",
    "gurobi": "gurobipy (pip install gurobipy)",
    "scip": "pyscipopt (pip install pyscipopt)",
    "cbc": "the cbc executable (apt install coinor-cbc, or conda install coin-or-cbc)",
    "glpk": "the glpsol executable (apt install glpk-utils)",
    "cplex": "the cplex executable (IBM ILOG CPLEX Optimization Studio)",
}

#: variables, and constraints, that the size-limited licence shipped with pip's gurobipy admits
GUROBI_LIMITED_SIZE = 2000


@dataclass
class Reaction:
    """The driver's answer to a solution: indicators to force to 0, and whether to stop."""

    zero: list = field(default_factory=list)
    stop: bool = False


#: called with (input values, objective value) of each solution the solver finds
OnSolution = Callable[[np.ndarray, float], Reaction]


@dataclass
class SolveOutcome:
    """How a maximisation ended: ``bound`` is a proven upper bound of the objective
    (+inf when the solver proved nothing), ``status`` one of optimal, stopped,
    time_limit, interrupted, error."""

    status: str
    bound: float
    best: float | None
    x: np.ndarray | None = None


class SolverAdapter:
    """Base of all adapters; ``load`` once per model, ``maximize`` as often as needed."""

    name = "base"
    lazy_constraints = False

    def __init__(self, verbose: bool = False, threads: int | None = None) -> None:
        self.verbose = verbose
        self.threads = threads
        self.handle: Handle | None = None

    def load(self, handle: Handle) -> None:
        raise NotImplementedError

    def maximize(
        self, time_limit: float, on_solution: OnSolution, stop_below: float | None = None
    ) -> SolveOutcome:
        """Maximise; stop early when the proven bound falls below ``stop_below``."""
        raise NotImplementedError

    def value(self, var) -> float | None:
        """Value of ``var`` in the best solution of the last solve (None if none)."""
        return var.value

    def _offer_best(self, on_solution: OnSolution, best: float) -> np.ndarray:
        """Give the driver the inputs of the best solution, once loaded into the Pyomo
        variables: a solver without callbacks reports nothing else, and a pure LP (the
        neuron strategy on the first layer) runs no MIP callback."""
        defaults = _input_defaults(self.handle)
        x = np.array([d if v.value is None else v.value for d, v in zip(defaults, self.handle.x)])
        on_solution(x, best)
        return x


def _input_defaults(handle: Handle) -> np.ndarray:
    """Values for inputs that no constraint uses (all their weights are 0), so no solver
    sees them: any point of the box will do."""
    return np.array([0.0 if v.lb is None else float(v.lb) for v in handle.x])


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


class _OwnInterrupts(logging.Filter):
    """Pyomo's HiGHS interface warns of an unhandled status when a callback interrupts
    the solve, which is how HighsAdapter stops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kInterrupt" not in record.getMessage()


_OWN_INTERRUPTS = _OwnInterrupts()


class HighsAdapter(SolverAdapter):
    """HiGHS through Pyomo's persistent interface; solutions harvested by highspy callbacks."""

    name = "highs"

    def __init__(self, verbose: bool = False, threads: int | None = None) -> None:
        super().__init__(verbose, threads)
        require("highs")
        from pyomo.contrib.solver.solvers.highs import Highs

        logging.getLogger(Highs.__module__).addFilter(_OWN_INTERRUPTS)
        self._opt = Highs()
        self._cols: np.ndarray | None = None
        self._on_solution: OnSolution | None = None
        self._stop_below: float | None = None
        self._stopped = False
        self._ctrl_c = False
        self._error: BaseException | None = None

    def load(self, handle: Handle) -> None:
        self.handle = handle
        self._x_default = _input_defaults(handle)
        self._opt.set_instance(handle.model)
        highs = self._opt._solver_model
        highs.cbMipImprovingSolution.subscribe(self._improving)
        highs.cbMipInterrupt.subscribe(self._interrupt)

    def _input_columns(self) -> np.ndarray:
        """HiGHS column of every input, -1 where unused; read during each solve, after
        Pyomo's update, since changes between solves may add or renumber columns."""
        col = self._opt._pyomo_var_to_solver_var_map
        return np.array([col.get(id(v), -1) for v in self.handle.x], dtype=int)

    def _improving(self, event) -> None:
        sol = np.asarray(event.data_out.mip_solution)
        if self._on_solution is None or sol.size == 0:
            return
        if self._cols is None:
            self._cols = self._input_columns()
        x = np.where(self._cols >= 0, sol[self._cols], self._x_default)
        try:
            reaction = self._on_solution(x, float(event.data_out.objective_function_value))
        except BaseException as err:  # raised again after the solve: HiGHS would swallow it
            self._error, reaction = err, Reaction(stop=True)
        if reaction.stop or reaction.zero:
            self._stopped = True

    def _interrupt(self, event) -> None:
        if self._stop_below is not None and event.data_out.mip_dual_bound < self._stop_below:
            self._stopped = True
        # set either way: HiGHS keeps the flag from the last solve's interrupt
        event.interrupt(self._stopped or self._ctrl_c)

    def _note_ctrl_c(self, _signum, _frame) -> None:
        self._ctrl_c = True

    def maximize(
        self, time_limit: float, on_solution: OnSolution, stop_below: float | None = None
    ) -> SolveOutcome:
        self._on_solution, self._stop_below, self._stopped = on_solution, stop_below, False
        self._cols = None
        opts = {"mip_rel_gap": 0.0, "mip_abs_gap": 0.0, "output_flag": self.verbose}
        if self.threads:
            opts["threads"] = self.threads
        tee = [sys.stderr] if self.verbose else []
        # Ctrl-C raised inside a HiGHS callback would end as a solver error: note it
        # instead, let the interrupt callback stop HiGHS, and raise it after the solve
        self._ctrl_c = False
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._note_ctrl_c) if main else None
        try:
            res = self._opt.solve(
                self.handle.model,
                time_limit=max(time_limit, 0.01),
                load_solutions=False,
                raise_exception_on_nonoptimal_result=False,
                solver_options=opts,
                tee=tee,
            )
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        if self._ctrl_c:
            raise KeyboardInterrupt
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        highs = self._opt._solver_model
        status = highs.modelStatusToString(highs.getModelStatus()).lower()
        if "optimal" in status:
            kind = "optimal"
        elif "time" in status:
            kind = "time_limit"
        elif "interrupt" in status:
            kind = "stopped" if self._stopped else "interrupted"
        else:
            kind = "error"
        if kind == "interrupted":
            raise KeyboardInterrupt
        # Pyomo's bound: the MIP dual bound, or the optimum of a pure LP (whose
        # mip_dual_bound HiGHS leaves at 0)
        bound = math.inf if kind == "error" else _finite_or_inf(res.objective_bound)
        best, x = None, None
        if res.incumbent_objective is not None:
            best = float(res.incumbent_objective)
            res.solution_loader.load_vars()
            x = self._offer_best(on_solution, best)
        return SolveOutcome(kind, bound, best, x)


@dataclass(frozen=True)
class _GurobiColumns:
    """Gurobi variables of the inputs and of a completed solution, with their positions."""

    x_at: np.ndarray
    x: list
    sol_at: np.ndarray
    sol: list


class GurobiAdapter(SolverAdapter):
    """Gurobi through Pyomo's persistent interface (pyomo.contrib.solver), with callbacks.

    Network strategy, one solve as in the paper: every new solution (MIPSOL) goes to
    the driver and the indicators it refutes leave the search as lazy constraints
    z <= 0; the inputs of every optimal node relaxation go to the driver too (witness
    candidates) and, completed by a forward pass, are offered as a solution. The
    objective counts indicators, so an absolute gap under 1 ends the solve as soon as
    the bound shows that no remaining candidate can flip. Neuron strategy: a solve
    ends once the sign is settled, by BestBdStop or by a refuting solution.

    Pyomo builds and updates the model and registers the callback; values move with
    gurobipy's cb* calls on Pyomo's solver model and variable map, which spares
    writing every callback's values into the Pyomo variables.
    """

    name = "gurobi"
    lazy_constraints = True

    def __init__(self, verbose: bool = False, threads: int | None = None) -> None:
        super().__init__(verbose, threads)
        require("gurobi")
        import gurobipy
        from pyomo.contrib.solver.solvers.gurobi.gurobi_persistent import GurobiPersistent

        self._gp = gurobipy
        self._opt = GurobiPersistent()
        self._completer: SolutionCompleter | None = None
        self._cols: _GurobiColumns | None = None
        self._on_solution: OnSolution | None = None
        self._stopped = False
        self._error: BaseException | None = None
        self._zeroed = ComponentSet()
        self._zeroed_cols: list = []
        self._last_node = -1.0

    def load(self, handle: Handle) -> None:
        self.handle = handle
        self._x_default = _input_defaults(handle)
        self._completer = SolutionCompleter(handle)
        self._opt.set_instance(handle.model)
        self._opt.set_callback(self._callback)

    def _columns(self) -> _GurobiColumns:
        """Read during each solve, after Pyomo's update has added what changed."""
        if self._cols is None:
            vmap = self._opt._pyomo_var_to_solver_var_map
            x_at = [i for i, v in enumerate(self.handle.x) if v in vmap]
            sol_at = [i for i, v in enumerate(self._completer.vars) if v in vmap]
            self._cols = _GurobiColumns(
                np.array(x_at, dtype=int),
                [vmap[self.handle.x[i]] for i in x_at],
                np.array(sol_at, dtype=int),
                [vmap[self._completer.vars[i]] for i in sol_at],
            )
        return self._cols

    def _callback(self, _model, _opt, where: int) -> None:
        cb = self._gp.GRB.Callback
        try:
            if where == cb.MIPSOL:
                self._new_solution()
            elif where == cb.MIPNODE:
                self._node_relaxation()
        except BaseException as err:  # raised again after the solve: gurobipy would print it
            self._error = err
            self._terminate()

    def _new_solution(self) -> None:
        """Gurobi may offer solutions that break lazy constraints added earlier (its
        manual says so): those are cut off again before the driver sees the inputs."""
        grb, cols = self._opt._solver_model, self._columns()
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
        grb, GRB = self._opt._solver_model, self._gp.GRB
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
        if self._stopped:
            return
        for z in reaction.zero:
            values[self._completer.index[z]] = 0.0
        grb.cbSetSolution(cols.sol, values[cols.sol_at].tolist())
        grb.cbUseSolution()

    def _react(self, x: np.ndarray, objective: float) -> Reaction:
        reaction = self._on_solution(x, float(objective))
        vmap = self._opt._pyomo_var_to_solver_var_map
        for z in reaction.zero:
            if z not in self._zeroed:
                self._zeroed.add(z)
                self._zeroed_cols.append(vmap[z])
                self._opt._solver_model.cbLazy(vmap[z] <= 0)
        if reaction.stop:
            self._terminate()
        return reaction

    def _terminate(self) -> None:
        self._stopped = True
        self._opt._solver_model.terminate()

    def maximize(
        self, time_limit: float, on_solution: OnSolution, stop_below: float | None = None
    ) -> SolveOutcome:
        GRB = self._gp.GRB
        self._on_solution, self._stopped, self._error = on_solution, False, None
        self._zeroed, self._zeroed_cols = ComponentSet(), []
        self._last_node, self._cols = -1.0, None
        self._completer.refresh()
        counts = stop_below is None and bool(self.handle.z)
        opts = {
            "OutputFlag": int(self.verbose),
            "TimeLimit": min(max(time_limit, 0.01), GRB.INFINITY),
            "MIPGap": 0.0,
            # the objective counts indicators: a gap under 1 decides as well as 0 does
            "MIPGapAbs": 0.99 if counts else 0.0,
            "LazyConstraints": int(bool(self.handle.z)),
            # a bound strictly below stop_below settles the sign (the drivers test <)
            "BestBdStop": math.inf if stop_below is None else np.nextafter(stop_below, -math.inf),
        }
        if self.threads:
            opts["Threads"] = self.threads
        try:
            res = self._opt.solve(
                self.handle.model,
                load_solutions=False,
                raise_exception_on_nonoptimal_result=False,
                solver_options=opts,
                tee=[sys.stderr] if self.verbose else [],
            )
        except self._gp.GurobiError as err:
            if err.errno == GRB.Error.SIZE_LIMIT_EXCEEDED:
                raise gurobi_size_error(self.handle, GUROBI_LIMITED_SIZE) from None
            raise ExactCompressError(f"Gurobi failed: {err}") from None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        grb = self._opt._solver_model
        kind = {
            GRB.OPTIMAL: "optimal",
            GRB.USER_OBJ_LIMIT: "stopped",
            GRB.TIME_LIMIT: "time_limit",
            GRB.INTERRUPTED: "stopped" if self._stopped else "interrupted",
        }.get(grb.Status, "error")
        if kind == "interrupted":
            raise KeyboardInterrupt
        bound = _finite_or_inf(res.objective_bound, GRB.INFINITY)
        if kind == "optimal" and not grb.IsMIP:  # an LP has no ObjBound: its optimum is one
            bound = float(grb.ObjVal)
        best, x = None, None
        if res.incumbent_objective is not None:
            best = float(res.incumbent_objective)
            res.solution_loader.load_vars()
            x = self._offer_best(on_solution, best)
        return SolveOutcome(kind, math.inf if kind == "error" else bound, best, x)


@dataclass(frozen=True)
class PyomoSolver:
    """How to reach one MILP solver through Pyomo without callbacks.

    ``contrib``: the solver has a pyomo.contrib.solver interface (uniform time limit,
    gaps and bound); otherwise the legacy SolverFactory runs it, with the solver's own
    option names for a zero gap, a time limit in seconds and threads.
    """

    pyomo_name: str
    contrib: bool = False
    exact: dict = field(default_factory=dict)
    time_option: str = ""
    threads_option: str = ""

    def make(self):
        if self.contrib:
            from pyomo.contrib.solver.common.factory import SolverFactory

            return SolverFactory(self.pyomo_name)
        return pyo.SolverFactory(self.pyomo_name)

    def available(self) -> bool:
        opt = self.make()
        return bool(opt.available() if self.contrib else opt.available(exception_flag=False))


#: solvers reached through PyomoAdapter. SCIP uses the direct, not the persistent,
#: interface: the persistent one turns mutable big-M parameters into variables, which
#: makes every ReLU constraint bilinear.
GENERIC = {
    "scip": PyomoSolver("scip_direct", contrib=True),
    "cbc": PyomoSolver(
        "cbc", exact={"ratioGap": 0, "allowableGap": 0}, time_option="sec", threads_option="threads"
    ),
    "glpk": PyomoSolver("glpk", exact={"mipgap": 0}, time_option="tmlim"),
    "cplex": PyomoSolver(
        "cplex",
        exact={"mip_tolerances_mipgap": 0, "mip_tolerances_absmipgap": 0},
        time_option="timelimit",
        threads_option="threads",
    ),
}


class PyomoAdapter(SolverAdapter):
    """Any other MILP solver Pyomo reaches, without callbacks: each solve runs to its end
    (or the time limit), the best solution's inputs go to the driver, and the driver's
    re-solve loop does the rest."""

    def __init__(self, solver: str, verbose: bool = False, threads: int | None = None) -> None:
        super().__init__(verbose, threads)
        require(solver)
        self.name = solver
        self.spec = GENERIC[solver]
        self._opt = self.spec.make()

    def load(self, handle: Handle) -> None:
        self.handle = handle

    def maximize(
        self, time_limit: float, on_solution: OnSolution, stop_below: float | None = None
    ) -> SolveOutcome:
        solve = self._solve_contrib if self.spec.contrib else self._solve_legacy
        kind, bound, best = solve(max(time_limit, 0.01))
        if kind == "interrupted":
            raise KeyboardInterrupt
        x = None if best is None else self._offer_best(on_solution, best)
        return SolveOutcome(kind, math.inf if kind == "error" else bound, best, x)

    def _solve_contrib(self, time_limit: float) -> tuple[str, float, float | None]:
        from pyomo.contrib.solver.common.results import TerminationCondition as TC

        res = self._opt.solve(
            self.handle.model,
            time_limit=time_limit if math.isfinite(time_limit) else None,
            rel_gap=0.0,
            abs_gap=0.0,
            threads=self.threads,
            load_solutions=False,
            raise_exception_on_nonoptimal_result=False,
            tee=[sys.stderr] if self.verbose else [],
        )
        kind = {
            TC.convergenceCriteriaSatisfied: "optimal",
            TC.maxTimeLimit: "time_limit",
            TC.interrupted: "interrupted",
        }.get(res.termination_condition, "error")
        best = res.incumbent_objective
        if best is not None:
            res.solution_loader.load_vars()
        return kind, _finite_or_inf(res.objective_bound), best

    def _solve_legacy(self, time_limit: float) -> tuple[str, float, float | None]:
        from pyomo.opt import TerminationCondition as TC

        options = dict(self.spec.exact)
        if math.isfinite(time_limit):
            options[self.spec.time_option] = max(1, math.ceil(time_limit))
        if self.threads and self.spec.threads_option:
            options[self.spec.threads_option] = self.threads
        res = self._opt.solve(
            self.handle.model, load_solutions=False, tee=self.verbose, options=options
        )
        kind = {
            TC.optimal: "optimal",
            TC.maxTimeLimit: "time_limit",
            TC.userInterrupt: "interrupted",
        }.get(res.solver.termination_condition, "error")
        best = None
        if len(res.solution):
            self.handle.model.solutions.load_from(res)
            objective = next(self.handle.model.component_data_objects(pyo.Objective, active=True))
            best = float(pyo.value(objective))
        return kind, _finite_or_inf(res.problem.upper_bound), best


def _finite_or_inf(bound, infinity: float = math.inf) -> float:
    """A proven bound, or +inf ("no proof") when the solver gave none."""
    if bound is None or not math.isfinite(bound) or abs(bound) >= infinity:
        return math.inf
    return float(bound)


# ---- choosing a solver -----------------------------------------------------------------


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
        return GurobiLicence(f"gurobipy is not installed: install {INSTALL['gurobi']}", None)
    # GurobiDirect: a GurobiPersistent that never loads a model miscounts its licence users
    available = GurobiDirect().available()
    if available == Availability.FullLicense:
        return GurobiLicence("", None)
    if available == Availability.LimitedLicense:
        return GurobiLicence("", GUROBI_LIMITED_SIZE)
    return GurobiLicence(f"Gurobi cannot run here ({available.name}): check its licence", None)


def gurobi_size_error(handle: Handle, limit: int) -> ExactCompressError:
    n_vars, n_cons = model_size(handle)
    return ExactCompressError(
        f"the MILP has {n_vars} variables and {n_cons} constraints, but the size-limited "
        f"Gurobi licence allows at most {limit} of each; use --solver highs "
        "(or a full Gurobi licence)"
    )


def require(name: str) -> None:
    """Fail with one line naming what to install when solver ``name`` cannot run."""
    if name == "gurobi":
        problem = gurobi_licence().problem
        if problem:
            raise ExactCompressError(problem)
        return
    if name == "highs":
        from pyomo.contrib.solver.solvers.highs import Highs

        ok = bool(Highs().available())
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


#: what --solver accepts besides 'auto'
ADAPTERS: dict[str, Callable[..., SolverAdapter]] = {
    "highs": HighsAdapter,
    "gurobi": GurobiAdapter,
    **{name: functools.partial(PyomoAdapter, name) for name in GENERIC},
}


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
            say(f"solver: {chosen} ({why})")
        elif name == "gurobi" and gurobi_licence().limit is not None:
            if max(model_size(handle)) > gurobi_licence().limit:
                raise gurobi_size_error(handle, gurobi_licence().limit)
        make.chosen = chosen
        return ADAPTERS[chosen](verbose=verbose, threads=threads)

    if name != "auto":
        make.chosen = name
    return make
