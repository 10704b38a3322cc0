"""Adapters that do what a test tells them, to drive every branch of the solver contract.

``ScriptedAdapter`` is a SolverAdapter like the real ones: it "finds" the given input
points (completed into full solutions by the formulation's own forward pass), reacts
to the driver as a solver with callbacks would, and ends with the given status and
bound. ``LyingAdapter`` bypasses the base class and returns exactly what it is told,
as a careless third-party adapter might: the drivers must not trust it either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pyomo.common.collections import ComponentSet

from exactcompress.solvers import SolveNeeds, SolveOutcome, SolverAdapter, SolveStatus
from formulations.complete import SolutionCompleter


@dataclass
class Script:
    status: SolveStatus = SolveStatus.OPTIMAL
    bound: float = float("inf")
    points: list[np.ndarray] = field(default_factory=list)


class ScriptedAdapter(SolverAdapter):
    name = "fake"
    lazy_constraints = True

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.time_limits: list[float] = []

    def load(self, handle) -> None:
        super().load(handle)
        self._completer = SolutionCompleter(handle)

    def _solve(
        self, time_limit: float, stop_below: float | None, needs: SolveNeeds
    ) -> SolveOutcome:
        self.time_limits.append(time_limit)
        self._completer.refresh()
        zeroed = ComponentSet()
        found = []
        for x in self.script.points:
            values = self._completer.complete(x, zeroed)
            reaction = self._to_driver(values[: len(x)], self._completer.objective(values))
            if self._lazy:
                zeroed.update(reaction.zero)
            found.append(x)
            if self._should_stop:
                break
        # lazy constraints cut off earlier solutions that break them: re-complete
        solutions = [self._completer.complete(x, zeroed) for x in found]
        best, best_values = None, None
        for values in solutions:
            objective = self._completer.objective(values)
            if best is None or objective > best:
                best, best_values = objective, values
        status = self.script.status
        settled = stop_below is not None and self.script.bound < stop_below
        if status is SolveStatus.OPTIMAL and (self._stopped or settled):
            status = SolveStatus.STOPPED
        if best_values is not None:
            for var, value in zip(self._completer.vars, best_values):
                var.set_value(float(value), skip_validation=True)
        return SolveOutcome(status, self.script.bound, best)


class LyingAdapter(SolverAdapter):
    name = "lying"

    def __init__(self, status: SolveStatus, bound: float) -> None:
        super().__init__()
        self.status, self.bound = status, bound

    def maximize(self, time_limit, on_solution, stop_below=None, **_needs) -> SolveOutcome:
        return SolveOutcome(self.status, self.bound, None)

    def value(self, var) -> float | None:
        return None
