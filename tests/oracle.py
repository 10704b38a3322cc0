"""Independent evidence for the tests, written apart from the package's own code.

``milp_extremes`` solves one MILP per neuron with scipy's milp (its own big-M model,
its own interval bounds), ``grid_states`` enumerates dense grids of 1- or 2-D boxes
with a Lipschitz margin. Neither imports exactcompress's bounds, formulations or
solvers, so agreement with them is evidence, not an echo.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


def naive_bounds(weights, biases, lo, hi):
    out = []
    for w, b in zip(weights[:-1], biases[:-1]):
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)
        gl = wp @ lo + wn @ hi + b
        gu = wp @ hi + wn @ lo + b
        out.append((gl - 1e-9, gu + 1e-9))
        lo, hi = np.maximum(gl, 0), np.maximum(gu, 0)
    return out


def milp_extremes(weights, biases, lo, hi, layer, j):
    """(min g, max g) of hidden neuron j of ``layer`` (0-based) over the box, by MILP."""
    (gmin, _), (gmax, _) = milp_extreme_points(weights, biases, lo, hi, layer, j)
    return gmin, gmax


def milp_extreme_points(weights, biases, lo, hi, layer, j):
    """((min g, its input), (max g, its input)) of hidden neuron j of ``layer``, by MILP."""
    bnds = naive_bounds(weights, biases, lo, hi)
    n0 = len(lo)
    # variables: x, then per hidden layer < layer: h (n), a (n)
    sizes = [len(b) for b in biases[:layer]]
    n_var = n0 + 2 * sum(sizes)
    offs, pos = [], n0
    for n in sizes:
        offs.append(pos)
        pos += 2 * n
    lb = np.concatenate([lo] + [np.concatenate([np.zeros(n), np.zeros(n)]) for n in sizes])
    ub = np.concatenate(
        [hi]
        + [np.concatenate([np.maximum(bnds[k][1], 0), np.ones(n)]) for k, n in enumerate(sizes)]
    )
    integrality = np.zeros(n_var)
    rows, rlo, rhi = [], [], []

    def input_cols(k):
        return list(range(n0)) if k == 0 else list(range(offs[k - 1], offs[k - 1] + sizes[k - 1]))

    for k, n in enumerate(sizes):
        integrality[offs[k] + n : offs[k] + 2 * n] = 1
        cols = input_cols(k)
        gl, gu = bnds[k]
        for i in range(n):
            hcol, acol = offs[k] + i, offs[k] + n + i
            w, b = weights[k][i], biases[k][i]
            # h - w.x >= b
            r = np.zeros(n_var)
            r[hcol] = 1
            r[cols] -= w
            rows.append(r), rlo.append(b), rhi.append(np.inf)
            # h - w.x - L a <= b - L
            r = np.zeros(n_var)
            r[hcol] = 1
            r[cols] -= w
            r[acol] = -gl[i]
            rows.append(r), rlo.append(-np.inf), rhi.append(b - gl[i])
            # h - U a <= 0
            r = np.zeros(n_var)
            r[hcol] = 1
            r[acol] = -gu[i]
            rows.append(r), rlo.append(-np.inf), rhi.append(0.0)
    c = np.zeros(n_var)
    c[input_cols(layer)] = weights[layer][j]
    b = biases[layer][j]
    cons = [LinearConstraint(np.array(rows), rlo, rhi)] if rows else []
    opts = {"mip_rel_gap": 0.0, "disp": False}
    res_min = milp(
        c, constraints=cons, integrality=integrality, bounds=Bounds(lb, ub), options=opts
    )
    res_max = milp(
        -c, constraints=cons, integrality=integrality, bounds=Bounds(lb, ub), options=opts
    )
    assert res_min.success and res_max.success
    return (res_min.fun + b, res_min.x[:n0]), (-res_max.fun + b, res_max.x[:n0])


def milp_states(weights, biases, lo, hi, tol=1e-6):
    """Per hidden layer: state names, 'ambiguous' where an extreme is within tol of 0."""
    out = []
    for layer, b in enumerate(biases[:-1]):
        states = []
        for j in range(len(b)):
            gmin, gmax = milp_extremes(weights, biases, lo, hi, layer, j)
            states.append(classify(gmin, gmax, tol))
        out.append(np.array(states, dtype=object))
    return out


def classify(gmin, gmax, tol):
    if gmax < -tol:
        return "stably_inactive"
    if gmin > tol:
        return "stably_active"
    if gmax > tol and gmin < -tol:
        return "unstable"
    return "ambiguous"


def forward_pre(weights, biases, x):
    out, h = [], x
    for w, b in zip(weights[:-1], biases[:-1]):
        g = h @ w.T + b
        out.append(g)
        h = np.maximum(g, 0)
    return out


def grid_states(weights, biases, lo, hi, per_dim=2001):
    """States from a dense grid of a 1- or 2-D box, 'ambiguous' inside the Lipschitz margin."""
    axes = [np.linspace(a, b, per_dim) for a, b in zip(lo, hi)]
    pts = np.array(list(itertools.product(*axes)))
    step = max((b - a) / (per_dim - 1) for a, b in zip(lo, hi))
    lip = np.ones(len(lo))
    out = []
    for layer, g in enumerate(forward_pre(weights, biases, pts)):
        lip_layer = np.abs(weights[layer]) @ lip  # |d g / d x|_1 bound per neuron
        margin = lip_layer * step * len(lo)
        states = [""] * g.shape[1]
        gmax, gmin = g.max(axis=0), g.min(axis=0)
        for j in range(g.shape[1]):
            if gmax[j] > 0 and gmin[j] < 0:
                states[j] = "unstable"
            elif gmax[j] + margin[j] < 0:
                states[j] = "stably_inactive"
            elif gmin[j] - margin[j] > 0:
                states[j] = "stably_active"
            else:
                states[j] = "ambiguous"
        out.append(np.array(states, dtype=object))
        lip = lip_layer
    return out


def random_net(rng, widths, bias_shift=0.0, scale=1.0):
    weights = [rng.normal(size=(b, a)) * scale / np.sqrt(a) for a, b in zip(widths, widths[1:])]
    biases = [rng.normal(size=b) * 0.5 + bias_shift for b in widths[1:]]
    return weights, biases


def assert_matches(report, truth):
    """Every neuron the oracle settles has the same state in the report."""
    checked = 0
    for layer, (got, want) in enumerate(zip(report.states, truth)):
        for j, (g, w) in enumerate(zip(got, want)):
            if w == "ambiguous":
                continue
            assert g == w, f"layer {layer + 1} neuron {j}: pipeline {g}, brute force {w}"
            checked += 1
    assert checked > 0
