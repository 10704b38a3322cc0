"""HiGHS through Pyomo's persistent interface; solutions harvested by highspy callbacks.

HiGHS takes no lazy constraints: when the driver zeroes indicators the solve stops
(a callback interrupt) and the driver re-solves the same persistent model with them
fixed to 0.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from formulations import Handle

from . import pyomo_internals
from .base import SolveNeeds, SolveOutcome, SolverAdapter, SolveStatus, finite_or_inf


def highs_available() -> bool:
    from pyomo.contrib.solver.solvers.highs import Highs

    return bool(Highs().available())


def highs_status(model_status, stopped: bool) -> SolveStatus:
    """Map HiGHS' model status by its enum, never by its text: "Interrupted by user" is
    how HiGHS reports a callback's stop, and "Interrupted by HiGHS" its own; neither is
    a Ctrl-C (``maximize`` knows those from the signal). An interrupt the driver did
    not ask for proves nothing."""
    import highspy

    status = highspy.HighsModelStatus
    interrupts = {
        getattr(status, n) for n in ("kInterrupt", "kHighsInterrupt") if hasattr(status, n)
    }
    if model_status in interrupts:
        return SolveStatus.STOPPED if stopped else SolveStatus.ERROR
    return {
        status.kOptimal: SolveStatus.OPTIMAL,
        status.kTimeLimit: SolveStatus.TIME_LIMIT,
        status.kInfeasible: SolveStatus.INFEASIBLE,
    }.get(model_status, SolveStatus.ERROR)


class _OwnInterrupts(logging.Filter):
    """Pyomo's HiGHS interface warns of an unhandled status when a callback interrupts
    the solve, which is how HighsAdapter stops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kInterrupt" not in record.getMessage()


_OWN_INTERRUPTS = _OwnInterrupts()


class HighsAdapter(SolverAdapter):
    """HiGHS detects an integral objective by itself, so ``SolveNeeds`` changes nothing
    here; the zero gap makes "optimal" mean proven optimal."""

    name = "highs"

    def __init__(self, verbose: bool = False, threads: int | None = None) -> None:
        super().__init__(verbose, threads)
        from pyomo.contrib.solver.solvers.highs import Highs

        logging.getLogger(Highs.__module__).addFilter(_OWN_INTERRUPTS)
        self._opt = Highs()
        self._cols: np.ndarray | None = None
        self._stop_below: float | None = None

    def load(self, handle: Handle) -> None:
        super().load(handle)
        self._opt.set_instance(handle.model)
        highs = pyomo_internals.solver_model(self._opt)
        highs.cbMipImprovingSolution.subscribe(self._improving)
        highs.cbMipInterrupt.subscribe(self._interrupt)

    def _improving(self, event) -> None:
        sol = np.asarray(event.data_out.mip_solution)
        if sol.size == 0:
            return
        if self._cols is None:  # after Pyomo's update, which may add or renumber columns
            self._cols = np.array(
                [pyomo_internals.highs_column(self._opt, v) for v in self.handle.x], dtype=int
            )
        x = np.where(self._cols >= 0, sol[self._cols], self._x_default)
        self._to_driver(x, event.data_out.objective_function_value)

    def _interrupt(self, event) -> None:
        self.live_bound = float(event.data_out.mip_dual_bound)
        if self._stop_below is not None and event.data_out.mip_dual_bound < self._stop_below:
            self._stopped = True
        # set either way: HiGHS keeps the flag from the last solve's interrupt
        event.interrupt(self._should_stop)

    def _solve(
        self, time_limit: float, stop_below: float | None, needs: SolveNeeds
    ) -> SolveOutcome:
        self._stop_below, self._cols = stop_below, None
        opts = {"mip_rel_gap": 0.0, "mip_abs_gap": 0.0, "output_flag": self.verbose}
        if self.threads:
            opts["threads"] = self.threads
        res = self._opt.solve(
            self.handle.model,
            time_limit=time_limit,
            load_solutions=False,
            raise_exception_on_nonoptimal_result=False,
            solver_options=opts,
            # Pyomo captures fds 1 and 2 during the solve: without a tee, the exact
            # stage's heartbeat lines (another thread) would vanish until it ends; HiGHS
            # itself stays quiet through output_flag unless verbose
            tee=[sys.stderr],
        )
        highs = pyomo_internals.solver_model(self._opt)
        status = highs_status(highs.getModelStatus(), self._stopped)
        best = None
        if res.incumbent_objective is not None:
            best = float(res.incumbent_objective)
            res.solution_loader.load_vars()
        # Pyomo's bound: the MIP dual bound, or the optimum of a pure LP (whose
        # mip_dual_bound HiGHS leaves at 0)
        return SolveOutcome(status, finite_or_inf(res.objective_bound), best)
