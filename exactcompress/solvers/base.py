"""The contract between the exact stage's drivers and the solver adapters.

A driver loads a formulation's model once and calls ``maximize`` as often as it
needs. Every adapter calls back with the inputs of each solution its solver finds
(so the driver can forward-pass them in float64 and harvest witnesses) and reports
a proven bound. What the base class owns, so that no adapter can get it wrong on
its own: the time-limit clamp, Ctrl-C during a solve, exceptions raised by the
driver inside a solver's callback, the rule that a failed solve proves nothing,
and the hand-over of the incumbent. An adapter implements ``_solve`` only.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from formulations import Handle

#: shortest time limit passed to a solver: a limit of 0 means "no time" to some solvers
#: and "no limit" to others, and the driver's clock may already have run out
MIN_TIME_LIMIT = 0.01


class SolveStatus(str, Enum):
    """How a solve ended. A ``str`` so that ``status == "optimal"`` keeps working."""

    OPTIMAL = "optimal"
    STOPPED = "stopped"  # ended early at the driver's request (Reaction or stop_below)
    TIME_LIMIT = "time_limit"
    INTERRUPTED = "interrupted"  # Ctrl-C: maximize raises KeyboardInterrupt, never returns it
    INFEASIBLE = "infeasible"  # the model has no solution: a formulation or numerical fault
    ERROR = "error"

    def __str__(self) -> str:
        return self.value

    @property
    def proves(self) -> bool:
        """Whether the outcome's bound may be used as a proof."""
        return self in (SolveStatus.OPTIMAL, SolveStatus.STOPPED)


@dataclass(frozen=True)
class SolveNeeds:
    """What the driver needs from one solve, declared rather than guessed by the adapter.

    ``integral_objective``: the objective takes integer values only (it counts
    indicators), so a gap under 1 decides as well as a gap of 0; a solver that cannot
    find that out by itself (Gurobi) stops earlier. ``lazy_constraints``: the driver
    will answer solutions with ``Reaction.zero``; an adapter whose solver takes lazy
    constraints keeps solving with those indicators forced to 0, any other stops so
    that the driver can fix them and solve again.
    """

    integral_objective: bool = False
    lazy_constraints: bool = False

    @classmethod
    def guess(cls, handle: Handle, stop_below: float | None) -> SolveNeeds:
        """For drivers that declare nothing: a model with indicators maximised without
        ``stop_below`` is the network strategy's count."""
        return cls(
            integral_objective=stop_below is None and bool(handle.z),
            lazy_constraints=bool(handle.z),
        )


@dataclass
class Reaction:
    """The driver's answer to a solution: indicators to force to 0, and whether to stop."""

    zero: list = field(default_factory=list)
    stop: bool = False


#: called with (input values, objective value) of each solution the solver finds
OnSolution = Callable[[np.ndarray, float], Reaction]


@dataclass
class SolveOutcome:
    """How a maximisation ended. ``bound`` is a proven upper bound of the objective (over
    solutions with the zeroed indicators at 0), +inf whenever ``status`` does not prove;
    ``best`` the incumbent's objective and ``x`` its inputs (None when there is none)."""

    status: SolveStatus
    bound: float
    best: float | None
    x: np.ndarray | None = None


class SolverAdapter:
    """Base of all adapters: ``load`` once per model, ``maximize`` as often as needed.

    An adapter implements ``_solve`` and, inside its solver's callbacks, hands every
    solution to ``_to_driver`` and ends the solve soon after ``_should_stop`` turns
    true. ``lazy_constraints`` says whether its solver can take ``Reaction.zero``
    inside one solve.
    """

    name = "base"
    lazy_constraints = False
    #: the solver's proven bound during a solve, where its callbacks tell it (progress only)
    live_bound: float | None = None

    def __init__(self, verbose: bool = False, threads: int | None = None) -> None:
        self.verbose = verbose
        self.threads = threads
        self.handle: Handle | None = None
        self._on_solution: OnSolution | None = None
        self._lazy = False
        self._stopped = False
        self._ctrl_c = False
        self._error: BaseException | None = None

    def load(self, handle: Handle) -> None:
        """Take a model; adapters that build the solver's copy now extend this."""
        self.handle = handle
        self._x_default = input_defaults(handle)

    def maximize(
        self,
        time_limit: float,
        on_solution: OnSolution,
        stop_below: float | None = None,
        needs: SolveNeeds | None = None,
    ) -> SolveOutcome:
        """Maximise the model's objective; stop early once the proven bound falls below
        ``stop_below``. Raises KeyboardInterrupt after a Ctrl-C, and whatever
        ``on_solution`` raised, once the solver has returned."""
        needs = needs or SolveNeeds.guess(self.handle, stop_below)
        self._on_solution = on_solution
        self._lazy = needs.lazy_constraints and self.lazy_constraints
        self._stopped, self._ctrl_c, self._error = False, False, None
        try:
            with self._ctrl_c_noted():
                out = self._solve(max(time_limit, MIN_TIME_LIMIT), stop_below, needs)
        except Exception:
            if self._ctrl_c:  # the solver failed because of the Ctrl-C (a killed subprocess)
                raise KeyboardInterrupt from None
            raise
        if self._ctrl_c or out.status is SolveStatus.INTERRUPTED:
            raise KeyboardInterrupt
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        bound = out.bound if out.status.proves else math.inf
        x = None if out.best is None else self._offer_best(on_solution, out.best)
        return SolveOutcome(out.status, bound, out.best, x)

    def _solve(
        self, time_limit: float, stop_below: float | None, needs: SolveNeeds
    ) -> SolveOutcome:
        """Run the solver. Returns its status, its bound (``finite_or_inf``) and the
        incumbent's objective, with the incumbent's values loaded into the Pyomo
        variables; ``x`` is left unset."""
        raise NotImplementedError

    def value(self, var) -> float | None:
        """Value of ``var`` in the best solution of the last solve (None if none)."""
        return var.value

    @property
    def _should_stop(self) -> bool:
        return self._stopped or self._ctrl_c

    def _to_driver(self, x: np.ndarray, objective: float) -> Reaction:
        """Give a solution to the driver from inside a solver callback. An exception is
        kept for ``maximize`` to raise (solvers swallow or print them) and stops the
        solve; so does a zeroing the solver cannot take as lazy constraints."""
        if self._error is not None:  # keep the first error; the solver is stopping
            return Reaction(stop=True)
        try:
            reaction = self._on_solution(x, float(objective))
        except BaseException as err:
            self._error, reaction = err, Reaction(stop=True)
        if reaction.stop or (reaction.zero and not self._lazy):
            self._stopped = True
        return reaction

    def _offer_best(self, on_solution: OnSolution, best: float) -> np.ndarray:
        """Give the driver the inputs of the best solution, once loaded into the Pyomo
        variables: a solver without callbacks reports nothing else, and a pure LP (the
        neuron strategy on the first layer) runs no MIP callback."""
        x = np.array(
            [d if v.value is None else v.value for d, v in zip(self._x_default, self.handle.x)]
        )
        python_handles_ctrl_c()
        on_solution(x, best)
        return x

    def _note_ctrl_c(self, _signum, _frame) -> None:
        self._ctrl_c = True

    @contextlib.contextmanager
    def _ctrl_c_noted(self) -> Iterator[None]:
        """Ctrl-C raised inside a solver callback would end as a solver error or be
        swallowed: note it instead, let ``_should_stop`` end the solve, and raise it
        after. Signals reach the main thread only, so elsewhere nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._note_ctrl_c)
        try:
            yield
        finally:
            # None: a handler set outside Python, which Python cannot restore
            signal.signal(
                signal.SIGINT, signal.default_int_handler if previous is None else previous
            )


def python_handles_ctrl_c() -> None:
    """Install Python's SIGINT handler again at the C level. Native solvers put their own
    there while they solve and restore the one they found; one was seen left in place
    after a SCIP solve in a full test run (a SIGINT raised nothing), which would make
    Ctrl-C do nothing for the rest of the run. Signals belong to the main thread."""
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGINT)
        if handler is not None:  # None: set outside Python, nothing to put back
            signal.signal(signal.SIGINT, handler)


def input_defaults(handle: Handle) -> np.ndarray:
    """Values for inputs that no constraint uses (all their weights are 0), so no solver
    sees them: any point of the box will do."""
    return np.array([0.0 if v.lb is None else float(v.lb) for v in handle.x])


def finite_or_inf(bound: float | None, infinity: float = math.inf) -> float:
    """A proven bound, or +inf ("no proof") when the solver gave none."""
    if bound is None or not math.isfinite(bound) or abs(bound) >= infinity:
        return math.inf
    return float(bound)
