"""compress() against independent evidence: dense grids, hand-built layers, interval bounds.

Stability claims here never come from the package: they come from a brute-force grid
with a Lipschitz margin (so a claim holds on the whole box, not just the grid), from
construction, or from interval arithmetic written in this file.
"""

import json

import numpy as np
import pytest

from exactcompress.domain import Box
from exactcompress.errors import ExactCompressError
from exactcompress.network import ReLUNetwork
from exactcompress.prune import compress
from exactcompress.report import ACTIVE, INACTIVE, UNDECIDED, UNSTABLE

REL = 1e-9


def random_net(widths: list[int], rng: np.random.Generator, bias_scale: float) -> ReLUNetwork:
    ws = [
        rng.normal(size=(m, n)) / np.sqrt(n) for n, m in zip(widths[:-1], widths[1:], strict=True)
    ]
    bs = [rng.normal(scale=bias_scale, size=m) for m in widths[1:]]
    return ReLUNetwork(ws, bs)


def grid(box: Box, n: int) -> tuple[np.ndarray, float]:
    """Regular grid of the 1-D or 2-D box (corners included), and the farthest any
    point of the box can be from it."""
    axes = [np.linspace(lo, hi, n) for lo, hi in zip(box.lo, box.hi, strict=True)]
    points = np.stack([a.reshape(-1) for a in np.meshgrid(*axes)], axis=1)
    gap = np.linalg.norm((box.hi - box.lo) / (n - 1)) / 2
    return points, float(gap)


def grid_states(net: ReLUNetwork, box: Box, n: int) -> list[np.ndarray]:
    """States from the grid: stable only with a margin larger than the Lipschitz
    constant times the gap, unstable when both signs were seen, undecided otherwise."""
    points, gap = grid(box, n)
    lip_in = 1.0  # Lipschitz constant (2-norm) of the layer's input as a function of x
    states = []
    for w, g in zip(net.weights[:-1], net.preactivations(points), strict=True):
        slack = np.linalg.norm(w, axis=1) * lip_in * gap
        s = np.full(w.shape[0], UNDECIDED, dtype=object)
        lo, hi = g.min(axis=0), g.max(axis=0)
        s[(lo < 0) & (hi > 0)] = UNSTABLE
        s[lo > slack] = ACTIVE
        s[hi < -slack] = INACTIVE
        states.append(s)
        lip_in *= np.linalg.norm(w, 2)
    return states


def interval_states(net: ReLUNetwork, box: Box, x: np.ndarray) -> list[np.ndarray]:
    """Stable from interval arithmetic; unstable if the points x show both signs."""
    lo, hi = box.lo, box.hi
    states = []
    for w, b, g in zip(net.weights[:-1], net.biases[:-1], net.preactivations(x), strict=True):
        pos, neg = np.maximum(w, 0), np.minimum(w, 0)
        glo, ghi = pos @ lo + neg @ hi + b, pos @ hi + neg @ lo + b
        s = np.full(w.shape[0], UNDECIDED, dtype=object)
        s[(g.min(axis=0) < 0) & (g.max(axis=0) > 0)] = UNSTABLE
        s[glo > 0] = ACTIVE
        s[ghi < 0] = INACTIVE
        states.append(s)
        lo, hi = np.maximum(glo, 0), np.maximum(ghi, 0)
    return states


def assert_same_function(a: ReLUNetwork, b: ReLUNetwork, x: np.ndarray) -> None:
    ya, yb = a.forward(x), b.forward(x)
    scale = max(1.0, float(np.abs(ya).max()))
    assert np.abs(ya - yb).max() <= REL * scale


def count(states: list[np.ndarray], name: str) -> int:
    return sum(int((s == name).sum()) for s in states)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("seed", range(5))
def test_random_low_dim_nets_match_brute_force(dim: int, seed: int) -> None:
    rng = np.random.default_rng(100 * dim + seed)
    net = random_net([dim, 8, 8, 8, 3], rng, bias_scale=1.5)
    box = Box(-np.ones(dim), np.ones(dim))
    n = 401 if dim == 2 else 20001
    states = grid_states(net, box, n)
    assert count(states, ACTIVE) + count(states, INACTIVE) > 0  # the test is not vacuous

    small, summary = compress(net, states)

    points, _ = grid(box, n)
    assert_same_function(net, small, points)
    assert_same_function(net, small, box.sample(2000, rng))
    assert small.n_parameters <= net.n_parameters
    if count(states, INACTIVE):
        assert small.n_parameters < net.n_parameters
    assert summary.parameters_after == small.n_parameters
    first, s = summary.layers[0], states[0]
    if not first.merged:  # generic rows of `dim` inputs: the active ones have rank <= dim
        n_act = int((s == ACTIVE).sum())
        assert first.after == int(((s == UNSTABLE) | (s == UNDECIDED)).sum()) + min(n_act, dim)


def dependent_first_layer(rng: np.random.Generator) -> tuple[ReLUNetwork, Box, list[np.ndarray]]:
    """4 inputs; hidden layer: 5 active neurons spanning rank 2, then one unstable."""
    r0, r1 = rng.uniform(-1, 1, size=(2, 4))
    active = np.stack([r0, r1, 2 * r0 - r1, r0 + 0.5 * r1, -r0])
    w1 = np.vstack([active, [1.0, -1.0, 0.0, 0.0]])
    b1 = np.array([50.0, 40.0, 60.0, 45.0, 55.0, 0.0])
    net = ReLUNetwork([w1, rng.normal(size=(3, 6))], [b1, rng.normal(size=3)])
    box = Box.uniform(4)
    witnesses = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # g_5 = +1 and -1
    states = interval_states(net, box, witnesses)
    return net, box, states


def test_dependent_active_rows_fold_to_their_rank() -> None:
    rng = np.random.default_rng(7)
    net, box, states = dependent_first_layer(rng)
    assert list(states[0]) == [ACTIVE] * 5 + [UNSTABLE]
    rank = np.linalg.matrix_rank(net.weights[0][:5])
    assert rank == 2

    small, summary = compress(net, states)

    assert small.hidden_widths == [rank + 1]
    assert summary.layers[0].active_folded == 5 - rank
    assert summary.layers[0].fold_residual < 1e-12
    assert not summary.merged_layers
    assert_same_function(net, small, box.sample(5000, rng))
    assert_same_function(net, small, box.corners(16, rng))


def test_layer_with_only_stable_neurons_merges() -> None:
    rng = np.random.default_rng(3)
    ws = [rng.normal(size=(5, 3)), 0.01 * rng.normal(size=(6, 5)), rng.normal(size=(4, 6))]
    ws.append(rng.normal(size=(2, 4)))
    bs = [rng.normal(size=5), np.array([100.0, 100, -100, 100, -100, 100]), rng.normal(size=4)]
    bs.append(rng.normal(size=2))
    net = ReLUNetwork(ws, bs)
    box = Box.uniform(3, -1.0, 1.0)
    states = interval_states(net, box, box.sample(5000, rng))
    assert list(states[1]) == [ACTIVE, ACTIVE, INACTIVE, ACTIVE, INACTIVE, ACTIVE]

    small, summary = compress(net, states)

    assert summary.merged_layers == [2]
    assert small.n_hidden == 2
    assert summary.layers[1].after == 0
    assert small.n_parameters < net.n_parameters
    assert_same_function(net, small, box.sample(5000, rng))
    assert_same_function(net, small, box.corners(8, rng))


def test_fully_stable_network_becomes_one_affine_layer() -> None:
    rng = np.random.default_rng(5)
    ws = [rng.uniform(-1, 1, size=(4, 3)), 0.1 * rng.uniform(-1, 1, size=(4, 4))]
    ws.append(rng.normal(size=(2, 4)))
    bs = [np.array([50.0, -50, 50, 50]), np.array([-50.0, 50, 50, 50]), rng.normal(size=2)]
    net = ReLUNetwork(ws, bs)
    box = Box.uniform(3)
    states = interval_states(net, box, box.sample(100, rng))
    assert all((s == ACTIVE) | (s == INACTIVE) for layer in states for s in layer)

    small, summary = compress(net, states)

    assert small.n_hidden == 0
    assert summary.merged_layers == [1, 2]
    assert small.n_parameters == 3 * 2 + 2
    assert_same_function(net, small, box.sample(2000, rng))


def test_affine_layer_is_kept_when_merging_would_add_parameters() -> None:
    rng = np.random.default_rng(11)
    ws = [0.01 * rng.normal(size=(2, 10)), rng.normal(size=(10, 2)), rng.normal(size=(3, 10))]
    bs = [np.array([100.0, 100.0]), rng.normal(size=10), rng.normal(size=3)]
    net = ReLUNetwork(ws, bs)
    box = Box.uniform(10)
    states = [np.array([ACTIVE, ACTIVE], dtype=object), np.full(10, UNDECIDED, dtype=object)]

    small, summary = compress(net, states)

    assert summary.merged_layers == []
    assert small.hidden_widths == [2, 10]
    assert_same_function(net, small, box.sample(1000, rng))


def test_all_inactive_layer_gives_constant_network() -> None:
    rng = np.random.default_rng(13)
    ws = [rng.normal(size=(6, 2)), 0.01 * rng.normal(size=(5, 6)), rng.normal(size=(4, 5))]
    ws.append(rng.normal(size=(3, 4)))
    bs = [rng.normal(size=6), np.full(5, -100.0), np.array([1.0, -2.0, 0.5, -0.3])]
    bs.append(rng.normal(size=3))
    net = ReLUNetwork(ws, bs)
    box = Box.uniform(2, -1.0, 1.0)
    states = grid_states(net, box, 101)
    assert (states[1] == INACTIVE).all()
    assert list(states[2]) == [ACTIVE, INACTIVE, ACTIVE, INACTIVE]  # constant pre-activations

    small, summary = compress(net, states)

    assert small.n_hidden == 0
    assert not small.weights[0].any()
    expected = ws[3] @ np.maximum(bs[2], 0) + bs[3]
    np.testing.assert_allclose(small.biases[0], expected, rtol=1e-12)
    assert summary.layers[0].dead_removed == 6
    assert_same_function(net, small, box.sample(2000, rng))


def test_undecided_and_unstable_neurons_are_kept_untouched() -> None:
    rng = np.random.default_rng(17)
    net = random_net([3, 7, 5, 2], rng, bias_scale=1.0)
    states = [np.full(7, UNDECIDED, dtype=object), np.array([UNSTABLE] * 5, dtype=object)]

    small, summary = compress(net, states)

    for a, b in zip(net.weights + net.biases, small.weights + small.biases, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [layer.after for layer in summary.layers] == [7, 5]


def test_wrong_states_are_refused() -> None:
    net = random_net([2, 3, 1], np.random.default_rng(0), bias_scale=1.0)
    with pytest.raises(ExactCompressError, match="hidden layers"):
        compress(net, [])
    with pytest.raises(ExactCompressError, match="cover 2 neurons"):
        compress(net, [np.array([ACTIVE, ACTIVE], dtype=object)])
    with pytest.raises(ExactCompressError, match="unknown neuron state"):
        compress(net, [np.array([ACTIVE, "stable", ACTIVE], dtype=object)])


def test_summary_serialises() -> None:
    rng = np.random.default_rng(7)
    net, _, states = dependent_first_layer(rng)
    _, summary = compress(net, states)
    data = json.loads(json.dumps(summary.to_json()))
    assert data["parameters_before"] == net.n_parameters
    assert data["hidden_widths_after"] == [3]
    assert data["layers"][0]["active_folded"] == 3
    table = summary.to_markdown()
    assert "| 1 | 6 | 0 | 3 | 0 | 3 |" in table
    assert f"{net.n_parameters} -> {summary.parameters_after}" in table


def forced_wide_net(
    rng: np.random.Generator, box: Box, forced: list[tuple[int, int]]
) -> ReLUNetwork:
    """10-32-32-32-4 net; in layer l, forced[l] = (n_active, n_inactive) neurons get a
    bias that interval arithmetic (computed here) proves puts them on that side."""
    widths = [10, 32, 32, 32, 4]
    ws, bs = [], []
    lo, hi = box.lo, box.hi
    for layer, (n, m) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        w = rng.normal(size=(m, n)) / np.sqrt(n)
        b = rng.normal(scale=0.5, size=m)
        if layer < len(forced):
            n_act, n_inact = forced[layer]
            pos, neg = np.maximum(w, 0), np.minimum(w, 0)
            wlo, whi = pos @ lo + neg @ hi, pos @ hi + neg @ lo
            b[:n_act] = -wlo[:n_act] + rng.uniform(0.1, 2.0, size=n_act)
            b[n_act : n_act + n_inact] = -whi[n_act : n_act + n_inact] - 0.1
            glo, ghi = wlo + b, whi + b
            lo, hi = np.maximum(glo, 0), np.maximum(ghi, 0)
        ws.append(w)
        bs.append(b)
    return ReLUNetwork(ws, bs)


@pytest.mark.parametrize(
    "forced",
    [
        [(16, 6), (5, 5), (3, 3)],
        [(4, 4), (32, 0), (8, 8)],
        [(20, 12), (0, 10), (24, 0)],
    ],
)
def test_wide_nets_with_forced_stability(forced: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(sum(a * 7 + b for a, b in forced))
    box = Box.uniform(10)
    net = forced_wide_net(rng, box, forced)
    states = interval_states(net, box, box.sample(4000, rng))
    for s, (n_act, n_inact) in zip(states, forced, strict=True):
        assert (s[:n_act] == ACTIVE).all() and (s[n_act : n_act + n_inact] == INACTIVE).all()

    small, summary = compress(net, states)

    assert small.n_parameters < net.n_parameters
    assert_same_function(net, small, box.sample(5000, rng))
    assert_same_function(net, small, box.corners(1024, rng))
    first = summary.layers[0]
    if not first.merged:  # generic rows of 10 inputs: the active ones have rank min(n, 10)
        n_act = int((states[0] == ACTIVE).sum())
        n_inact = int((states[0] == INACTIVE).sum())
        assert first.after == 32 - n_inact - n_act + min(n_act, 10)
    merged = [i + 1 for i, s in enumerate(states) if ((s == ACTIVE) | (s == INACTIVE)).all()]
    assert set(merged) <= set(summary.merged_layers)
