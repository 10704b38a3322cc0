"""Any other MILP solver Pyomo reaches, without callbacks: each solve runs to its end
(or the time limit), the best solution's inputs go to the driver, and the driver's
re-solve loop does the rest."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import pyomo.environ as pyo

from .base import SolveNeeds, SolveOutcome, SolverAdapter, SolveStatus, finite_or_inf


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
    """Without callbacks ``stop_below`` and ``SolveNeeds`` cannot act: the solve ends
    where the solver ends it. The solvers behind it detect an integral objective by
    themselves or not at all."""

    def __init__(self, solver: str, verbose: bool = False, threads: int | None = None) -> None:
        super().__init__(verbose, threads)
        self.name = solver
        self.spec = GENERIC[solver]
        self._opt = self.spec.make()

    def _solve(
        self, time_limit: float, stop_below: float | None, needs: SolveNeeds
    ) -> SolveOutcome:
        solve = self._solve_contrib if self.spec.contrib else self._solve_legacy
        return solve(time_limit)

    def _solve_contrib(self, time_limit: float) -> SolveOutcome:
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
        status = {
            TC.convergenceCriteriaSatisfied: SolveStatus.OPTIMAL,
            TC.maxTimeLimit: SolveStatus.TIME_LIMIT,
            TC.provenInfeasible: SolveStatus.INFEASIBLE,
            TC.interrupted: SolveStatus.INTERRUPTED,  # no callback to stop it: a Ctrl-C
        }.get(res.termination_condition, SolveStatus.ERROR)
        best = None
        if res.incumbent_objective is not None:
            best = float(res.incumbent_objective)
            res.solution_loader.load_vars()
        return SolveOutcome(status, finite_or_inf(res.objective_bound), best)

    def _solve_legacy(self, time_limit: float) -> SolveOutcome:
        from pyomo.opt import TerminationCondition as TC

        options = dict(self.spec.exact)
        if math.isfinite(time_limit):
            options[self.spec.time_option] = max(1, math.ceil(time_limit))
        if self.threads and self.spec.threads_option:
            options[self.spec.threads_option] = self.threads
        res = self._opt.solve(
            self.handle.model, load_solutions=False, tee=self.verbose, options=options
        )
        status = {
            TC.optimal: SolveStatus.OPTIMAL,
            TC.maxTimeLimit: SolveStatus.TIME_LIMIT,
            TC.infeasible: SolveStatus.INFEASIBLE,
            TC.userInterrupt: SolveStatus.INTERRUPTED,
        }.get(res.solver.termination_condition, SolveStatus.ERROR)
        best = None
        if len(res.solution):
            self.handle.model.solutions.load_from(res)
            objective = next(self.handle.model.component_data_objects(pyo.Objective, active=True))
            best = float(pyo.value(objective))
        return SolveOutcome(status, finite_or_inf(res.problem.upper_bound), best)
