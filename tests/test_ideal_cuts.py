"""Ideal cuts in the subdomain LPs: checked against the network's own points in exact
rational arithmetic, and against brute force and scipy's MILP."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from test_bab import CPU, _net, _truth

from exactcompress import bab
from exactcompress.bab_lp import SubdomainLP
from exactcompress.bounds import interval_bounds
from exactcompress.domain import Box
from exactcompress.network import ReLUNetwork


def _lp(
    net: ReLUNetwork, box: Box, layer: int, j: int, sign: float, cuts: bool, crown: bool = True
) -> SubdomainLP:
    bounds = interval_bounds(net, box)
    if crown:
        bounds = bab.with_crown(net, box, bounds, CPU)
    fixed = [np.zeros(n, dtype=np.int8) for n in net.hidden_widths]
    prover = bab.CandidateProver(net, box, bounds, fixed, layer, j, sign, CPU)
    lower = [t.numpy() for t in prover.root_lower]
    upper = [t.numpy() for t in prover.root_upper]
    return SubdomainLP(net, box, layer, j, sign, lower, upper, cuts=cuts)


def _exact_columns(lp: SubdomainLP, net: ReLUNetwork, x: np.ndarray) -> list[Fraction]:
    """The model's column vector at the network's point for input x, in exact rationals:
    inputs, every pre-activation, h = relu(g) and z = [g > 0] of every triangle neuron."""
    model = lp.lp
    col = [Fraction(0)] * model.n_cols
    v = [Fraction(float(t)) for t in x]
    for i, c in enumerate(model.inputs):
        col[c] = v[i]
    for k, (uns, g_cols, h_cols, _) in enumerate(model.triangles):
        w, b = net.weights[k], net.biases[k]
        g = [
            sum((Fraction(float(w[j, i])) * v[i] for i in range(len(v))), Fraction(float(b[j])))
            for j in range(w.shape[0])
        ]
        out = model.out_cols[k]
        for j in np.flatnonzero(out >= 0):
            col[out[j]] = max(g[j], Fraction(0))
        for pos, j in enumerate(uns):
            col[g_cols[pos]] = g[j]
            col[h_cols[pos]] = max(g[j], Fraction(0))
            col[lp.cuts.z_cols[k][pos]] = Fraction(int(g[j] > 0))
        v = [max(t, Fraction(0)) for t in g]
    return col


def test_ideal_cuts_hold_exactly_at_points_of_the_network():
    """Every row the cuts added (big-M rows and separated cuts, their coefficients and
    right sides as stored in float64) holds in exact rational arithmetic at points of
    the network: box corners, where rounding is tightest, and random points."""
    net, box = _net(5, (4, 8, 8, 8, 2))
    rng = np.random.default_rng(0)
    corners = rng.integers(0, 2, size=(12, 4)).astype(np.float64)
    points = np.concatenate(
        [box.lo + corners * (box.hi - box.lo), rng.uniform(box.lo, box.hi, (12, 4))]
    )
    cuts = 0
    for j, sign in ((0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0)):
        # interval bounds: loose triangles, so that the LP optimum violates many cuts
        lp = _lp(net, box, 3, j, sign, cuts=True, crown=False)
        lp.strengthen([np.zeros(n, dtype=np.int8) for n in net.hidden_widths[:3]], 10, 30.0)
        for _ in range(3):  # more cuts from random subdomains' optima
            split = [rng.choice([-1, 0, 0, 1], size=n).astype(np.int8) for n in (8, 8, 8)]
            lp.strengthen(split, 3, 30.0)
        rows = lp.cuts.rows
        cuts += lp.n_cuts()
        a = lp.lp.matrix()[rows].tocoo()
        entries: list[list[tuple[int, Fraction]]] = [[] for _ in rows]
        for r, c, val in zip(a.row, a.col, a.data):
            entries[r].append((int(c), Fraction(float(val))))
        right = [Fraction(float(lp.lp.row_hi[r])) for r in rows]
        for x in points:
            col = _exact_columns(lp, net, x)
            for row, limit in zip(entries, right):
                assert sum((val * col[c] for c, val in row), Fraction(0)) <= limit
    assert cuts > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cuts_tighten_the_lp_and_never_past_the_network(seed):
    """The LP with cuts is never above the triangle LP's optimum, never below the
    neuron's true extreme (scipy's MILP), and strictly tighter on some candidate (the
    test would fail if the cuts did nothing)."""
    net, box = _net(seed, (4, 10, 10, 10, 2))
    gains = 0
    for j in range(10):
        gmin, gmax = _truth(net, box, 2, j)
        for sign, extreme in ((1.0, gmax), (-1.0, -gmin)):
            free = [np.zeros(n, dtype=np.int8) for n in net.hidden_widths[:2]]
            plain, _ = _lp(net, box, 2, j, sign, cuts=False).bound(free, 30.0)
            strong = _lp(net, box, 2, j, sign, cuts=True).strengthen(free, 10, 30.0)
            assert plain is not None and strong is not None
            assert extreme <= min(strong, plain)
            if plain > 0:  # the LP's optimum (a bound <= 0 may stop short of it)
                assert strong <= plain + 1e-9 * (1 + abs(plain))
                gains += strong < plain - 1e-6 * (1 + abs(plain))
    assert gains > 0


def test_split_indicators_bound_every_point_of_their_subdomain():
    """With cuts, a subdomain's splits fix its indicators: the LP bound is still above
    the target at every sampled point that satisfies the splits."""
    net, box = _net(4, (4, 10, 10, 10, 10, 2))
    layer, j = 3, 0
    lp = _lp(net, box, layer, j, 1.0, cuts=True)
    lp.strengthen([np.zeros(n, dtype=np.int8) for n in net.hidden_widths[:layer]], 5, 30.0)
    rng = np.random.default_rng(3)
    xs = rng.uniform(box.lo, box.hi, size=(20000, 4))
    gs = net.preactivations(xs)
    for trial in range(6):
        split = [
            np.where(rng.random(n) < 0.3, np.where(g[trial] > 0, 1, -1), 0).astype(np.int8)
            for n, g in zip(net.hidden_widths[:layer], gs)
        ]
        inside = np.ones(len(xs), dtype=bool)
        for k in range(layer):
            on = split[k] != 0
            inside &= ((gs[k][:, on] > 0) == (split[k][on] > 0)).all(axis=1)
        value, _ = lp.bound(split, 10.0)
        assert value is not None and gs[layer][inside, j].max() <= value
