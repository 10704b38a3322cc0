"""Every solver and formulation finds the same stable neurons as an independent MILP.

The oracle (tests/oracle.py) solves its own big-M model with scipy's milp, so
agreement with HiGHS, Gurobi and SCIP through the package's formulations and
adapters is evidence, not an echo. Gurobi tests need gurobipy (the size-limited
pip licence is enough), SCIP tests pyscipopt; both skip cleanly without them.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pyomo.environ as pyo
import pytest
from oracle import milp_states, naive_bounds, random_net

import formulations
from exactcompress import solvers
from exactcompress.domain import Box
from exactcompress.errors import ExactCompressError
from exactcompress.network import ReLUNetwork
from exactcompress.prune import compress
from exactcompress.report import UNDECIDED
from exactcompress.solvers import (
    GurobiLicence,
    Reaction,
    model_size,
    pyomo_internals,
    select,
    solver_factory,
)
from exactcompress.stability import StabilityOptions, find_stable_neurons
from exactcompress.verify import verify
from formulations.complete import complete_solution

HAS_GUROBI = importlib.util.find_spec("gurobipy") is not None and not (
    solvers.gurobi_licence().problem
)
HAS_SCIP = importlib.util.find_spec("pyscipopt") is not None
GUROBI = [pytest.mark.gurobi, pytest.mark.skipif(not HAS_GUROBI, reason="gurobipy not usable")]
SCIP = [pytest.mark.scip, pytest.mark.skipif(not HAS_SCIP, reason="pyscipopt not installed")]
SOLVERS = ["highs", pytest.param("gurobi", marks=GUROBI), pytest.param("scip", marks=SCIP)]

#: (seed, widths): 2-6 inputs, 2-3 hidden layers of 4-8 neurons, 2 outputs
NETS = [(1, [3, 8, 7, 2]), (2, [6, 7, 8, 2]), (3, [2, 6, 5, 8, 2]), (4, [4, 7, 8, 4, 2])]


def make_net(seed: int, widths: list[int]) -> tuple[list, list]:
    return random_net(np.random.default_rng(seed), widths, bias_shift=-0.3)


_ORACLE: dict[int, list[np.ndarray]] = {}


def oracle_states(seed: int, widths: list[int]) -> list[np.ndarray]:
    if seed not in _ORACLE:
        weights, biases = make_net(seed, widths)
        _ORACLE[seed] = milp_states(weights, biases, np.zeros(widths[0]), np.ones(widths[0]))
    return _ORACLE[seed]


def assert_matches_oracle(report, expected: list[np.ndarray]) -> None:
    for layer, (got, want) in enumerate(zip(report.states, expected)):
        clear = want != "ambiguous"
        assert list(got[clear]) == list(want[clear]), f"hidden layer {layer + 1}"
    if all((want != "ambiguous").all() for want in expected):
        assert report.complete


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("formulation", ["network", "neuron"])
@pytest.mark.parametrize(("seed", "widths"), NETS)
def test_milp_decides_like_the_oracle(seed, widths, formulation, solver) -> None:
    """samples=0 and no witness search: the MILP decides almost every neuron."""
    weights, biases = make_net(seed, widths)
    options = StabilityOptions(
        formulation=formulation,
        solver=solver,
        bounds="interval",
        prover="milp",
        witness_search=False,
        samples=0,
    )
    report = find_stable_neurons(
        ReLUNetwork(weights, biases), Box.uniform(widths[0]), None, options
    )
    assert report.solver == solver
    assert report.decided_by.get("milp", 0) > 0
    assert_matches_oracle(report, oracle_states(seed, widths))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("formulation", ["network", "neuron"])
def test_default_pipeline_decides_like_the_oracle(formulation, solver) -> None:
    for seed, widths in NETS[:2]:
        weights, biases = make_net(seed, widths)
        options = StabilityOptions(formulation=formulation, solver=solver)
        net = ReLUNetwork(weights, biases)
        report = find_stable_neurons(net, Box.uniform(widths[0]), None, options)
        assert_matches_oracle(report, oracle_states(seed, widths))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("formulation", ["network", "neuron"])
def test_input_no_weight_uses(formulation, solver) -> None:
    """No solver sees an input whose weights are all 0 (a border pixel after L1 training)."""
    seed, widths = NETS[0]
    weights, biases = make_net(seed, widths)
    weights[0][:, 1] = 0.0
    options = StabilityOptions(
        formulation=formulation,
        solver=solver,
        bounds="interval",
        prover="milp",
        witness_search=False,
        samples=0,
    )
    report = find_stable_neurons(ReLUNetwork(weights, biases), Box.uniform(3), None, options)
    lo = np.zeros(widths[0])
    assert_matches_oracle(report, milp_states(weights, biases, lo, lo + 1))


def test_auto_reports_the_solver_it_chose() -> None:
    said: list[str] = []
    seed, widths = NETS[1]
    options = StabilityOptions(bounds="interval", prover="milp", witness_search=False, samples=0)
    report = find_stable_neurons(
        ReLUNetwork(*make_net(seed, widths)), Box.uniform(widths[0]), None, options, said.append
    )
    chosen = "gurobi" if HAS_GUROBI else "highs"
    assert report.solver == chosen
    assert [m for m in said if m.startswith(f"solver: {chosen} (")]


# ---- adapters and formulations/complete.py ----------------------------------------------


def milp_input(weights, biases, lo, hi) -> formulations.MILPInput:
    bounds = naive_bounds(weights, biases, lo, hi)
    lower, upper = [b[0] for b in bounds], [b[1] for b in bounds]
    fixed = [np.where(u <= 0, -1, np.where(lo_ >= 0, 1, 0)).astype(np.int8) for lo_, u in bounds]
    return formulations.MILPInput(weights[:-1], biases[:-1], lo, hi, lower, upper, fixed)


def open_candidates(data: formulations.MILPInput) -> list:
    return [
        (layer, j, side)
        for layer, f in enumerate(data.fixed)
        for j in np.flatnonzero(f == 0)
        for side in ("pos", "neg")
    ]


@pytest.mark.parametrize("formulation", ["network", "neuron"])
def test_completed_solution_is_feasible(formulation) -> None:
    """h = relu(g), a = [g > 0], z where its flip constraint holds: every constraint holds."""
    rng = np.random.default_rng(0)
    weights, biases = random_net(rng, [4, 6, 6, 5, 2])
    data = milp_input(weights, biases, np.zeros(4), np.ones(4))
    handle = formulations.get(formulation).build(data, open_candidates(data))
    if handle.z:
        next(iter(handle.z.values())).fix(0)
    for x in rng.uniform(-0.2, 1.2, size=(30, 4)):  # outside points are clipped into the box
        for var, val in complete_solution(handle, x).items():
            var.set_value(float(val), skip_validation=True)
        for con in handle.model.component_data_objects(pyo.Constraint, active=True):
            body = pyo.value(con.body)
            assert con.lb is None or body >= con.lb - 1e-9, con.name
            assert con.ub is None or body <= con.ub + 1e-9, con.name
        for (layer, j, side), z in handle.z.items():
            g = pyo.value(handle.g[(layer, j)])
            flips = (
                g >= -formulations.FLIP_MARGIN if side == "pos" else g <= formulations.FLIP_MARGIN
            )
            assert z.value == (0 if z.fixed else float(flips))


@pytest.mark.gurobi
@pytest.mark.skipif(not HAS_GUROBI, reason="gurobipy not usable")
def test_model_size_is_what_gurobi_sees() -> None:
    weights, biases = make_net(*NETS[1])
    data = milp_input(weights, biases, np.zeros(6), np.ones(6))
    handle = formulations.get("network").build(data, open_candidates(data))
    adapter = solver_factory("gurobi")(handle)
    adapter.load(handle)
    adapter.maximize(10.0, lambda _x, _obj: Reaction())
    grb = pyomo_internals.solver_model(adapter._opt)
    assert model_size(handle) == (grb.NumVars, grb.NumConstrs)


# ---- choosing a solver ------------------------------------------------------------------


def oversized_handle() -> formulations.Handle:
    """A neuron-formulation model of 1610 variables and 2400 constraints (sparse weights
    keep it quick to build)."""
    rng = np.random.default_rng(0)
    widths = [10, 400, 400, 400]
    weights = [
        rng.normal(size=(m, n)) * (rng.random((m, n)) < 0.05) for n, m in zip(widths, widths[1:])
    ]
    biases = [rng.normal(size=m) for m in widths[1:]]
    lower = [np.full(m, -10.0) for m in widths[1:]]
    upper = [np.full(m, 10.0) for m in widths[1:]]
    fixed = [np.zeros(m, np.int8) for m in widths[1:]]
    data = formulations.MILPInput(weights, biases, np.zeros(10), np.ones(10), lower, upper, fixed)
    return formulations.get("neuron").build(data, [(2, 0, "pos")])


LIMITED = HAS_GUROBI and solvers.gurobi_licence().limit == solvers.GUROBI_LIMITED_SIZE


@pytest.mark.gurobi
@pytest.mark.skipif(not LIMITED, reason="needs gurobipy with the size-limited licence")
def test_gurobi_over_the_licence_names_size_limit_and_highs() -> None:
    handle = oversized_handle()
    n_vars, n_cons = model_size(handle)
    assert max(n_vars, n_cons) > solvers.GUROBI_LIMITED_SIZE
    with pytest.raises(ExactCompressError) as err:
        solver_factory("gurobi")(handle)
    message = str(err.value)
    assert "\n" not in message
    for part in (str(n_vars), str(n_cons), str(solvers.GUROBI_LIMITED_SIZE), "--solver highs"):
        assert part in message

    said: list[str] = []
    make = solver_factory("auto", say=said.append)
    assert make(handle).name == "highs"
    assert make.chosen == "highs"
    assert len(said) == 1 and said[0].startswith("solver: highs (")
    assert str(solvers.GUROBI_LIMITED_SIZE) in said[0]


def test_auto_without_gurobi_uses_highs(monkeypatch) -> None:
    problem = "gurobipy is not installed: install gurobipy (pip install gurobipy)"
    monkeypatch.setattr(select, "gurobi_licence", lambda: GurobiLicence(problem, None))
    said: list[str] = []
    make = solver_factory("auto", say=said.append)
    weights, biases = make_net(*NETS[0])
    data = milp_input(weights, biases, np.zeros(3), np.ones(3))
    assert make(formulations.get("network").build(data, open_candidates(data))).name == "highs"
    assert said == ["solver: highs (gurobipy is not installed)"]
    with pytest.raises(ExactCompressError, match="pip install gurobipy"):
        solver_factory("gurobi")


def test_unknown_and_missing_solvers_fail_in_one_line() -> None:
    with pytest.raises(ExactCompressError, match="unknown solver 'nope'; choose from auto, highs"):
        solver_factory("nope")
    missing = [name for name in solvers.GENERIC if not solvers.GENERIC[name].available()]
    for name in missing:
        with pytest.raises(ExactCompressError, match=f"solver '{name}' is not installed: install"):
            solver_factory(name)


# ---- time limit -------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
def test_time_limit_leaves_undecided_neurons_that_pruning_keeps(solver) -> None:
    weights, biases = random_net(np.random.default_rng(0), [20, 60, 60, 60, 3])
    net, box = ReLUNetwork(weights, biases), Box.uniform(20)
    options = StabilityOptions(
        solver=solver,
        bounds="interval",
        prover="milp",
        witness_search=False,
        samples=0,
        time_limit=0.5,
    )
    start = time.monotonic()
    report = find_stable_neurons(net, box, None, options)
    assert time.monotonic() - start < 3.0
    assert not report.complete
    undecided = sum(int((s == UNDECIDED).sum()) for s in report.states)
    assert undecided > 0
    small, summary = compress(net, report.states)
    kept = sum(small.hidden_widths)
    assert kept >= undecided
    assert verify(net, small, box, n_samples=2000).ok


@pytest.mark.parametrize("solver", ["highs", pytest.param("gurobi", marks=GUROBI)])
def test_lines_printed_while_the_solver_runs_reach_stderr(capfd, monkeypatch, solver) -> None:
    """Pyomo captures the output around a solve (HiGHS: fds 1 and 2; Gurobi:
    sys.stderr): the exact stage's heartbeat, printed by another thread to stderr,
    must still reach the person watching."""
    import sys

    from exactcompress.solvers.gurobi import GurobiAdapter
    from exactcompress.solvers.highs import HighsAdapter

    cls, name = (HighsAdapter, "_interrupt") if solver == "highs" else (GurobiAdapter, "_callback")
    callback = getattr(cls, name)

    def loud(self, *args) -> None:
        print("said during the solve", file=sys.stderr, flush=True)
        callback(self, *args)

    monkeypatch.setattr(cls, name, loud)
    w, b = random_net(np.random.default_rng(3), [5, 12, 10, 2], bias_shift=-0.2)
    options = StabilityOptions.paper(solver=solver)
    find_stable_neurons(ReLUNetwork(w, b), Box.uniform(5), options=options)
    err = capfd.readouterr().err
    assert "said during the solve" in err
    assert "Set parameter" not in err and "Running HiGHS" not in err  # solvers stay quiet
