"""Property-based tests: random small networks and boxes, compressed by the package and
judged by independent evidence (tests/oracle.py: scipy's MILP, numpy forward passes).

Some networks get one neuron pushed to the edge: its bias is shifted so that its
extreme over the box is (about) delta, with |delta| <= 3e-6, where solver tolerances
and margins decide. Such a neuron may be left undecided; it must never be decided
wrongly. What "wrongly" means is fixed by evidence that needs no tolerance:

- a claim "unstable" needs two witnesses whose exact (rational) forward pass puts the
  neuron strictly on each side;
- a claim "stable" must survive every point tried (the oracle's MILP arg-extremes,
  random points, corners; a float64 sign against the claim is re-evaluated exactly)
  and the oracle's MILP extremes (up to its tolerance 1e-6);
- a neuron the oracle settles with a margin above 1e-6 must get the oracle's state;
- the compressed network must agree with a numpy forward pass of the original, per
  point, within |a - b| <= 1e-9 (max |a| + |a|).

The default run keeps a few dozen examples; ``-m slow`` runs many more.
"""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import classify, forward_pre, milp_extreme_points

import exactcompress as ec
from exactcompress.report import ACTIVE, INACTIVE, UNDECIDED, UNSTABLE

TOL = 1e-6  # the oracle's own MILP tolerance: below it, only point evidence counts
RTOL = 1e-9
DELTAS = [0.0, 1e-9, -1e-9, 1e-7, -1e-7, 1e-6, -1e-6, 3e-6, -3e-6]
HAS_SCIP = importlib.util.find_spec("pyscipopt") is not None

CONFIGS = {
    "full": dict(samples=200, solver="highs"),
    "paper": dict(solver="highs"),  # the MILP refutes and proves alone
    "neuron": dict(formulation="neuron", witness_search=False, samples=20),
}


def options(config: str, solver: str = "highs") -> ec.StabilityOptions:
    if config == "paper":
        return ec.StabilityOptions.paper(solver=solver, time_limit=60)
    return ec.StabilityOptions(**{**CONFIGS[config], "solver": solver, "time_limit": 60})


@st.composite
def problems(draw):
    """(weights, biases, lo, hi, edge) with edge = (layer, neuron, side, delta) or None."""
    seed = draw(st.integers(0, 2**32 - 1))
    n_in = draw(st.integers(1, 3))
    hidden = draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))
    n_out = draw(st.integers(1, 2))
    rng = np.random.default_rng(seed)
    widths = [n_in, *hidden, n_out]
    weights = [rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(widths, widths[1:])]
    shift = draw(st.sampled_from([-0.8, -0.3, 0.0, 0.4]))
    biases = [rng.normal(size=b) * 0.5 + shift for b in widths[1:]]
    lo = rng.uniform(-1.0, 0.5, size=n_in)
    hi = lo + rng.uniform(0.05, 1.5, size=n_in)
    edge = None
    if draw(st.booleans()):
        layer = draw(st.integers(0, len(hidden) - 1))
        j = draw(st.integers(0, hidden[layer] - 1))
        edge = (layer, j, draw(st.sampled_from(["max", "min"])), draw(st.sampled_from(DELTAS)))
    return weights, biases, lo, hi, edge


def push_to_edge(weights, biases, lo, hi, edge) -> np.ndarray | None:
    """Shift the edge neuron's bias so that its max (or min) is about delta; returns the
    oracle's arg-extreme input x*, at which a forward pass now gives g ~= delta (or -delta)."""
    if edge is None:
        return None
    layer, j, side, delta = edge
    found = oracle_points(weights, biases, lo, hi, layer, j)
    if found is None:
        return None
    (_, x_min), (_, x_max) = found
    x = np.clip(x_max if side == "max" else x_min, lo, hi)
    g = forward_pre(weights, biases, x[None, :])[layer][0, j]
    biases[layer][j] += (delta if side == "max" else -delta) - g
    return x


def oracle_points(weights, biases, lo, hi, layer, j):
    """The oracle's ((min, argmin), (max, argmax)), or None on the rare model that scipy's
    HiGHS fails to solve (tiny big-M constants at the edge): point evidence still counts."""
    try:
        return milp_extreme_points(weights, biases, lo, hi, layer, j)
    except AssertionError:
        return None


def exact_g(weights, biases, x, layer: int, j: int) -> Fraction:
    """Pre-activation of neuron j of ``layer`` in exact rational arithmetic: the
    real-valued network, free of any float64 rounding."""
    h = [Fraction(float(v)) for v in x]
    for k in range(layer + 1):
        w, b = weights[k], biases[k]
        rows = [j] if k == layer else range(w.shape[0])
        g = [
            sum((Fraction(float(w[i, m])) * h[m] for m in range(len(h))), Fraction(float(b[i])))
            for i in rows
        ]
        h = [max(v, Fraction(0)) for v in g]
    return g[0]


def contradicts(weights, biases, points, g, layer, j, sign) -> bool:
    """Whether some point puts neuron j strictly on the side ``sign`` (exactly)."""
    for i in np.flatnonzero(sign * g > 0):
        if sign * exact_g(weights, biases, points[i], layer, j) > 0:
            return True
    return False


def check_claims(report, weights, biases, lo, hi, extra_points, edge=None) -> None:
    """Every claim of the report against independent evidence (see the module doc).
    ``edge`` (layer, neuron) is the neuron pushed to the edge: it may stay undecided even
    where the oracle's extreme clears 1e-6 by a rounding error (delta = -1e-6 once gave
    an oracle max of -1.0000001e-6 and an undecided neuron under SCIP)."""
    rng = np.random.default_rng(1)
    pts = [lo + (hi - lo) * rng.random((500, len(lo))), np.array([lo, hi, (lo + hi) / 2])]
    pts += [p[None, :] for p in extra_points]
    pts = np.vstack(pts)
    tried = forward_pre(weights, biases, pts)
    witness = report.witnesses
    points = np.array(witness.get("points", []), dtype=float).reshape(-1, len(lo))
    for layer, states in enumerate(report.states):
        for j, state in enumerate(states):
            found = oracle_points(weights, biases, lo, hi, layer, j)
            # without the oracle's extremes (None), only point evidence counts
            (gmin, x_min), (gmax, x_max) = found or ((np.inf, lo), (-np.inf, hi))
            at = np.array([x_min, x_max]).clip(lo, hi)
            here = np.vstack([pts, at])
            g = np.concatenate([tried[layer][:, j], forward_pre(weights, biases, at)[layer][:, j]])
            where = f"layer {layer + 1} neuron {j} (oracle [{gmin:.3g}, {gmax:.3g}])"
            if state == UNSTABLE:
                for side, sign in (("pos", 1), ("neg", -1)):
                    x = points[witness["layers"][layer][side][str(j)]]
                    assert ((x >= lo) & (x <= hi)).all(), where
                    assert sign * exact_g(weights, biases, x, layer, j) > 0, f"{where} {side}"
            elif state == INACTIVE:
                assert gmax <= TOL, f"{where}: claimed inactive"
                assert not contradicts(weights, biases, here, g, layer, j, 1), where
            elif state == ACTIVE:
                assert gmin >= -TOL, f"{where}: claimed active"
                assert not contradicts(weights, biases, here, g, layer, j, -1), where
            truth = classify(gmin, gmax, TOL) if found else "ambiguous"
            if truth != "ambiguous" and state != UNDECIDED:
                assert state == truth, f"{where}: package {state}, oracle {truth}"
            if truth != "ambiguous" and (layer, j) != edge:
                assert state != UNDECIDED, f"{where}: undecided, oracle {truth}"


def check_function(result, weights, biases, lo, hi) -> None:
    rng = np.random.default_rng(2)
    x = np.vstack([lo + (hi - lo) * rng.random((2000, len(lo))), [lo, hi]])
    h = x
    for k, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.T + b
        if k < len(weights) - 1:
            h = np.maximum(h, 0.0)
    got = result.compressed.forward(x)
    allowed = RTOL * (np.abs(h).max(axis=0) + np.abs(h))
    assert (np.abs(got - h) <= allowed).all()


def run_property(problem, config: str, solver: str = "highs") -> None:
    weights, biases, lo, hi, edge = problem
    weights, biases = [w.copy() for w in weights], [b.copy() for b in biases]
    x_edge = push_to_edge(weights, biases, lo, hi, edge)
    net = ec.ReLUNetwork([w.copy() for w in weights], [b.copy() for b in biases])
    result = ec.compress(net, ec.Box(lo, hi), options=options(config, solver))
    pushed = None if edge is None else edge[:2]
    extra = [] if x_edge is None else [x_edge]
    check_claims(result.report, weights, biases, lo, hi, extra, pushed)
    check_function(result, weights, biases, lo, hi)
    assert result.verification.ok
    if edge is not None and edge[3] > 0:
        layer, j, side, _ = edge  # x_edge is a witness: the neuron crosses to that side
        sign = 1 if side == "max" else -1
        assert sign * exact_g(weights, biases, x_edge, layer, j) > 0
        assert result.report.states[layer][j] != (INACTIVE if sign > 0 else ACTIVE)


FAST = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(problem=problems(), config=st.sampled_from(sorted(CONFIGS)))
def test_compress_matches_brute_force(problem, config) -> None:
    run_property(problem, config)


@pytest.mark.slow
@SLOW
@given(problem=problems(), config=st.sampled_from(sorted(CONFIGS)))
def test_compress_matches_brute_force_long(problem, config) -> None:
    run_property(problem, config)


@pytest.mark.scip
@pytest.mark.skipif(not HAS_SCIP, reason="pyscipopt not installed")
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(problem=problems(), config=st.sampled_from(["paper", "neuron"]))
def test_scip_matches_brute_force(problem, config) -> None:
    """The generic Pyomo path, with a second solver than HiGHS."""
    run_property(problem, config, solver="scip")
