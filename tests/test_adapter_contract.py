"""The solver contract, run over every adapter and a fake one.

Every adapter must: prove a bound only when its status says so (a failed solve's bound
is +inf), stop when the driver says so without mistaking that for a Ctrl-C, raise the
driver's own exceptions and Ctrl-C after the solver returns, clamp the time limit, and
hand over the incumbent's inputs. Truths come from tests/oracle.py (scipy's milp) or
by hand. Gurobi runs only tiny models, within its size-limited pip licence.
"""

from __future__ import annotations

import importlib.util
import math
import signal
import time

import numpy as np
import pyomo.environ as pyo
import pytest
from fake_adapter import LyingAdapter, Script, ScriptedAdapter
from oracle import forward_pre, milp_extremes, naive_bounds, random_net

import formulations
from exactcompress.bounds import compute_bounds
from exactcompress.domain import Box
from exactcompress.exact import run_exact_stage
from exactcompress.network import ReLUNetwork
from exactcompress.report import NeuronEvidence
from exactcompress.solvers import (
    MIN_TIME_LIMIT,
    Reaction,
    SolveNeeds,
    SolveStatus,
    gurobi_licence,
    solver_factory,
)

HAS_GUROBI = importlib.util.find_spec("gurobipy") is not None and not gurobi_licence().problem
HAS_SCIP = importlib.util.find_spec("pyscipopt") is not None
GUROBI = [pytest.mark.gurobi, pytest.mark.skipif(not HAS_GUROBI, reason="gurobipy not usable")]
SCIP = [pytest.mark.scip, pytest.mark.skipif(not HAS_SCIP, reason="pyscipopt not installed")]
ADAPTERS = ["fake", "highs", pytest.param("gurobi", marks=GUROBI), pytest.param("scip", marks=SCIP)]
#: adapters whose solver calls back during the solve (the others report the incumbent only)
CALLBACKS = {"fake", "highs", "gurobi"}
TOL = 1e-6

WEIGHTS, BIASES = random_net(np.random.default_rng(1), [3, 8, 7, 2], bias_shift=-0.3)
LO, HI = np.zeros(3), np.ones(3)


def milp_input(weights=WEIGHTS, biases=BIASES) -> formulations.MILPInput:
    bounds = naive_bounds(weights, biases, LO, HI)
    lower, upper = [b[0] for b in bounds], [b[1] for b in bounds]
    fixed = [np.where(u <= 0, -1, np.where(lo >= 0, 1, 0)).astype(np.int8) for lo, u in bounds]
    return formulations.MILPInput(weights[:-1], biases[:-1], LO, HI, lower, upper, fixed)


def open_adapter(kind: str, handle: formulations.Handle, script: Script | None = None):
    adapter = (
        ScriptedAdapter(script or Script()) if kind == "fake" else solver_factory(kind)(handle)
    )
    adapter.load(handle)
    return adapter


def points(n: int = 50) -> np.ndarray:
    return np.random.default_rng(0).uniform(LO, HI, size=(n, len(LO)))


def unstable_neuron() -> tuple[int, float]:
    """A second-layer neuron that flips over the box, and its max g by the oracle."""
    data = milp_input()
    for j in np.flatnonzero(data.fixed[1] == 0):
        g_min, g_max = milp_extremes(WEIGHTS, BIASES, LO, HI, 1, j)
        if g_min < -0.05 and g_max > 0.05:
            return int(j), g_max
    raise AssertionError("the test network has no unstable second-layer neuron")


J, G_MAX = unstable_neuron()


def max_g_handle() -> formulations.Handle:
    """Neuron formulation, objective g of second-layer neuron J: a MILP with binaries."""
    handle = formulations.get("neuron").build(milp_input(), [(1, J, "pos")])
    handle.model.objective.set_value(handle.g[(1, J)])
    return handle


def first_layer_lp() -> tuple[formulations.Handle, float, np.ndarray]:
    """A model without binaries, its max and its maximiser, by hand."""
    w = np.array([[1.0, -2.0, 0.5], [-1.0, -1.0, 0.0]])
    b = np.array([-0.25, 0.5])
    data = milp_input([w, np.ones((1, 2))], [b, np.zeros(1)])
    handle = formulations.get("neuron").build(data, [(0, 0, "pos")])
    handle.model.objective.set_value(handle.g[(0, 0)])
    return handle, float(np.maximum(w[0], 0).sum() + b[0]), (w[0] > 0).astype(float)


def fake_script(status=SolveStatus.OPTIMAL, bound=G_MAX) -> Script:
    """What a solver maximising g of neuron J would find: a few points, the best last."""
    pts = points()
    g = forward_pre(WEIGHTS, BIASES, pts)[1][:, J]
    return Script(status, bound, [pts[0], pts[1], pts[np.argmax(g)]])


class Driver:
    """Records every solution and answers with ``react``."""

    def __init__(self, react=lambda x, objective: Reaction()) -> None:
        self.react = react
        self.seen: list[tuple[np.ndarray, float]] = []

    def __call__(self, x: np.ndarray, objective: float) -> Reaction:
        self.seen.append((np.array(x), objective))
        return self.react(x, objective) or Reaction()


def assert_proves_nothing(out) -> None:
    assert not out.status.proves
    assert out.bound == math.inf


# ---- the contract -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ADAPTERS)
def test_pure_lp_bound_and_incumbent(kind) -> None:
    """No binaries, so no MIP callback: the optimum is the bound and its inputs still
    reach the driver."""
    handle, best, argmax = first_layer_lp()
    adapter = open_adapter(kind, handle, Script(SolveStatus.OPTIMAL, best, [argmax]))
    driver = Driver()
    out = adapter.maximize(10.0, driver)
    assert out.status is SolveStatus.OPTIMAL and out.status == "optimal"
    assert out.bound == pytest.approx(best, abs=TOL)
    assert out.best == pytest.approx(best, abs=TOL)
    np.testing.assert_array_equal(out.x, driver.seen[-1][0])
    w, b = np.array([1.0, -2.0, 0.5]), -0.25
    assert w @ out.x + b == pytest.approx(best, abs=TOL)


@pytest.mark.parametrize("kind", ADAPTERS)
def test_stop_is_not_a_ctrl_c(kind) -> None:
    """The driver stops at the first solution: the solve ends as stopped (or optimal when
    the solver had finished anyway), its bound still a valid one, and nothing is read as
    a Ctrl-C (HiGHS reports a callback's stop as "Interrupted by user")."""
    adapter = open_adapter(kind, max_g_handle(), fake_script())
    driver = Driver(lambda x, objective: Reaction(stop=True))
    out = adapter.maximize(10.0, driver)
    assert out.status in (SolveStatus.STOPPED, SolveStatus.OPTIMAL)
    assert driver.seen
    assert out.bound >= G_MAX - TOL
    assert out.best is None or out.best <= out.bound + TOL


@pytest.mark.parametrize("kind", ADAPTERS)
@pytest.mark.parametrize("margin", [0.5, -0.5], ids=["settled", "not-settled"])
def test_stop_below(kind, margin) -> None:
    """A bound below ``stop_below`` may end the solve early (the neuron strategy's sign
    test); a bound that cannot get there leaves the solve to its optimum."""
    stop_below = G_MAX + margin
    adapter = open_adapter(kind, max_g_handle(), fake_script())
    out = adapter.maximize(10.0, Driver(), stop_below=stop_below)
    assert out.bound >= G_MAX - TOL
    if margin < 0:
        assert out.status is SolveStatus.OPTIMAL
        assert out.bound == pytest.approx(G_MAX, abs=TOL)
    else:
        assert out.status in (SolveStatus.STOPPED, SolveStatus.OPTIMAL)
        if out.status is SolveStatus.STOPPED:
            assert out.bound < stop_below


def refuted(x: np.ndarray, cands: list) -> list:
    """Candidates that the forward pass of ``x`` shows on their unseen side."""
    g = forward_pre(WEIGHTS, BIASES, np.atleast_2d(x))
    return [c for c in cands if (g[c[0]][0, c[1]] > 0) == (c[2] == "pos")]


@pytest.mark.parametrize("kind", ADAPTERS)
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "restart"])
def test_zero(kind, lazy) -> None:
    """The network strategy: each solution zeroes the indicators it refutes. With lazy
    constraints declared and supported the solve goes on to its end; otherwise it stops
    for the driver to fix them and solve again."""
    data = milp_input()
    cands = [
        (layer, int(j), side)
        for layer, f in enumerate(data.fixed)
        for j in np.flatnonzero(f == 0)
        for side in ("pos", "neg")
    ]
    handle = formulations.get("network").build(data, cands)
    zeroed: set = set()

    def react(x, _objective):
        gone = [c for c in refuted(x, cands) if c not in zeroed]
        zeroed.update(gone)
        return Reaction(zero=[handle.z[c] for c in gone])

    adapter = open_adapter(kind, handle, Script(SolveStatus.OPTIMAL, len(cands), list(points(5))))
    needs = SolveNeeds(integral_objective=True, lazy_constraints=lazy)
    out = adapter.maximize(10.0, Driver(react), needs=needs)
    assert zeroed
    assert out.status in (SolveStatus.STOPPED, SolveStatus.OPTIMAL)
    assert out.best is None or out.best <= out.bound + TOL
    if kind in CALLBACKS:
        keeps_going = lazy and adapter.lazy_constraints
        assert out.status is (SolveStatus.OPTIMAL if keeps_going else SolveStatus.STOPPED)


def hard_handle() -> formulations.Handle:
    """The network formulation of a 6-16-16-16 net with every neuron open: no solver
    finishes it within a minute, and it fits the size-limited Gurobi licence."""
    w, b = random_net(np.random.default_rng(3), [6, 16, 16, 16, 2], bias_shift=-0.2)
    lo, hi = np.zeros(6), np.ones(6)
    bounds = naive_bounds(w, b, lo, hi)
    fixed = [np.zeros(len(v), np.int8) for v in b[:-1]]
    data = formulations.MILPInput(
        w[:-1], b[:-1], lo, hi, [x[0] for x in bounds], [x[1] for x in bounds], fixed
    )
    cands = [
        (la, j, side)
        for la, f in enumerate(fixed)
        for j in range(len(f))
        for side in ("pos", "neg")
    ]
    return formulations.get("network").build(data, cands)


@pytest.mark.parametrize("kind", ADAPTERS)
def test_time_limit_proves_nothing(kind) -> None:
    """A solve cut by the limit (the driver spending the time in its callback helps)
    proves nothing, whatever bound the solver had."""
    handle = hard_handle() if kind != "fake" else max_g_handle()
    adapter = open_adapter(kind, handle, Script(SolveStatus.TIME_LIMIT, -1e9, list(points(1))))
    out = adapter.maximize(0.2, Driver(lambda x, objective: time.sleep(0.3)))
    assert out.status is SolveStatus.TIME_LIMIT
    assert_proves_nothing(out)


@pytest.mark.parametrize("kind", ADAPTERS)
def test_time_limit_is_clamped(kind) -> None:
    """A deadline already passed still gives the solver a positive limit."""
    handle, best, argmax = first_layer_lp()
    adapter = open_adapter(kind, handle, Script(SolveStatus.OPTIMAL, best, [argmax]))
    out = adapter.maximize(-5.0, Driver())
    assert out.status in (SolveStatus.OPTIMAL, SolveStatus.TIME_LIMIT)
    if kind == "fake":
        assert adapter.time_limits == [MIN_TIME_LIMIT]


@pytest.mark.parametrize("kind", ADAPTERS)
def test_infeasible_proves_nothing(kind) -> None:
    """A model without solutions (a formulation fault) would bound the maximum by -inf:
    it must prove nothing."""
    handle = max_g_handle()
    handle.model.contract_infeasible = pyo.Constraint(expr=handle.x[0] >= HI[0] + 1)
    adapter = open_adapter(kind, handle, Script(SolveStatus.INFEASIBLE, -math.inf))
    driver = Driver()
    out = adapter.maximize(10.0, driver)
    assert out.status in (SolveStatus.INFEASIBLE, SolveStatus.ERROR)
    assert_proves_nothing(out)
    assert out.best is None and out.x is None and not driver.seen


@pytest.mark.parametrize("kind", ADAPTERS)
def test_error_proves_nothing(kind) -> None:
    """An unbounded model (inputs without bounds) ends in a solver error: no proof."""
    handle, _best, _argmax = first_layer_lp()
    for var in handle.x:
        var.setlb(None)
        var.setub(None)
    adapter = open_adapter(kind, handle, Script(SolveStatus.ERROR, -1e9))
    out = adapter.maximize(10.0, Driver())
    assert out.status is SolveStatus.ERROR
    assert_proves_nothing(out)


@pytest.mark.parametrize("kind", ADAPTERS)
def test_driver_exception_is_raised_after_the_solve(kind) -> None:
    """An exception in the driver's callback comes out of maximize unchanged (solvers
    would swallow or print it), and the adapter solves again afterwards."""
    adapter = open_adapter(kind, max_g_handle(), fake_script())
    boom = ValueError("boom")

    def fail(_x, _objective):
        raise boom

    with pytest.raises(ValueError) as err:
        adapter.maximize(10.0, fail)
    assert err.value is boom
    out = adapter.maximize(10.0, Driver())
    assert out.status is SolveStatus.OPTIMAL
    assert out.bound == pytest.approx(G_MAX, abs=TOL)


@pytest.mark.parametrize("kind", ADAPTERS)
def test_ctrl_c_is_raised_after_the_solve(kind) -> None:
    """Ctrl-C during a solve ends it with KeyboardInterrupt, the SIGINT handler is put
    back, and the adapter solves again afterwards."""
    handler = signal.getsignal(signal.SIGINT)
    adapter = open_adapter(kind, max_g_handle(), fake_script())
    driver = Driver(lambda x, objective: signal.raise_signal(signal.SIGINT))
    try:
        out = adapter.maximize(10.0, driver)
    except KeyboardInterrupt:
        pass
    else:  # seen in full runs with SCIP before python_handles_ctrl_c: say what happened
        pytest.fail(
            f"no KeyboardInterrupt: {out}, {len(driver.seen)} solutions to the driver, "
            f"Python's handler {signal.getsignal(signal.SIGINT)!r}"
        )
    assert signal.getsignal(signal.SIGINT) is handler
    out = adapter.maximize(10.0, Driver())
    assert out.status is SolveStatus.OPTIMAL


def test_statuses_compare_as_strings() -> None:
    assert SolveStatus.TIME_LIMIT == "time_limit"
    assert f"{SolveStatus.TIME_LIMIT}" == "time_limit"
    assert SolveStatus("stopped") is SolveStatus.STOPPED
    assert {s for s in SolveStatus if s.proves} == {SolveStatus.OPTIMAL, SolveStatus.STOPPED}


def test_highs_statuses_by_enum_not_by_text() -> None:
    """HiGHS' "Interrupted by user" follows a callback's stop and "Interrupted by HiGHS"
    is its own: neither is a Ctrl-C, and one the driver did not ask for proves nothing."""
    import highspy

    from exactcompress.solvers.highs import highs_status

    status = highspy.HighsModelStatus
    assert highs_status(status.kInterrupt, stopped=True) is SolveStatus.STOPPED
    assert highs_status(status.kInterrupt, stopped=False) is SolveStatus.ERROR
    assert highs_status(status.kHighsInterrupt, stopped=False) is SolveStatus.ERROR
    assert highs_status(status.kOptimal, stopped=True) is SolveStatus.OPTIMAL
    assert highs_status(status.kTimeLimit, stopped=False) is SolveStatus.TIME_LIMIT
    assert highs_status(status.kInfeasible, stopped=False) is SolveStatus.INFEASIBLE
    assert highs_status(status.kUnboundedOrInfeasible, stopped=False) is SolveStatus.ERROR
    assert highs_status(status.kSolutionLimit, stopped=False) is SolveStatus.ERROR


# ---- a failed solve proves nothing in the drivers -----------------------------------------


FAILURES = [SolveStatus.TIME_LIMIT, SolveStatus.ERROR, SolveStatus.INFEASIBLE]


def drive(strategy: str, adapter) -> NeuronEvidence:
    """The exact stage on a fresh record: every neuron open on both sides."""
    net, box = ReLUNetwork(WEIGHTS, BIASES), Box(LO, HI)
    evidence = NeuronEvidence(net, box)
    bounds = compute_bounds(net, box, "interval")
    spec = formulations.get(strategy)
    run_exact_stage(
        evidence,
        spec,
        bounds,
        lambda h: adapter,
        time.monotonic() + 30,
        lambda _m: None,
        mine=False,
    )
    return evidence


def n_proved(evidence: NeuronEvidence) -> int:
    """Neurons with a proof of either sign."""
    return sum(int((a | i).sum()) for a, i in zip(evidence.proved_active, evidence.proved_inactive))


@pytest.mark.parametrize("strategy", ["network", "neuron"])
@pytest.mark.parametrize("status", FAILURES, ids=str)
@pytest.mark.parametrize("adapter", ["lying", "scripted"])
def test_failed_solve_with_a_low_bound_proves_nothing(strategy, status, adapter) -> None:
    """A bound of -1e9 would prove every candidate stable, were the status trusted."""
    fake = (
        LyingAdapter(status, -1e9) if adapter == "lying" else ScriptedAdapter(Script(status, -1e9))
    )
    evidence = drive(strategy, fake)
    assert n_proved(evidence) == 0
    assert not any(d == "milp" for layer in evidence.decider for d in layer)


@pytest.mark.parametrize("strategy", ["network", "neuron"])
def test_the_same_bound_proves_when_the_solve_succeeded(strategy) -> None:
    """The control: with an optimal status the fake's bound does prove, so the test above
    really exercised the drivers' checks."""
    evidence = drive(strategy, LyingAdapter(SolveStatus.OPTIMAL, -1e9))
    assert n_proved(evidence) == sum(evidence.net.hidden_widths)
