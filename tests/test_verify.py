"""verify() passes equal networks and, above all, fails on networks that differ in the box."""

import json

import numpy as np
import pytest

from exactcompress.domain import Box
from exactcompress.errors import ExactCompressError
from exactcompress.network import ReLUNetwork
from exactcompress.prune import compress
from exactcompress.report import ACTIVE, INACTIVE, UNSTABLE
from exactcompress.verify import verify

BOX2 = Box.uniform(2)


def three_neuron_net() -> ReLUNetwork:
    """On [0,1]^2: g0 = x0 - 0.5 is unstable, g1 = x1 + 1 active, g2 = -x0 - x1 - 1 inactive."""
    w1 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    b1 = np.array([-0.5, 1.0, -1.0])
    return ReLUNetwork([w1, np.array([[1.0, 2.0, 3.0]])], [b1, np.array([0.25])])


def states(*names: str) -> list[np.ndarray]:
    return [np.array(names, dtype=object)]


def test_true_states_verify() -> None:
    net = three_neuron_net()
    small, _ = compress(net, states(UNSTABLE, ACTIVE, INACTIVE))
    result = verify(net, small, BOX2)
    assert result.ok
    assert result.max_abs <= 1e-15
    assert result.n_points == 10_000 + 1  # all 4 corners, the rest uniform, and the centre


def test_unstable_neuron_claimed_inactive_is_caught() -> None:
    net = three_neuron_net()
    wrong, _ = compress(net, states(INACTIVE, ACTIVE, INACTIVE))
    result = verify(net, wrong, BOX2)
    assert not result.ok
    assert result.max_abs == pytest.approx(0.5)  # relu(x0 - 0.5) at the corners x0 = 1
    assert "DIFFERENT" in result.summary()


def test_unstable_neuron_claimed_active_is_caught() -> None:
    net = three_neuron_net()
    wrong, _ = compress(net, states(ACTIVE, ACTIVE, INACTIVE))
    result = verify(net, wrong, BOX2)
    assert not result.ok
    assert result.max_abs == pytest.approx(0.5)  # the neuron goes down to -0.5 at x0 = 0


@pytest.mark.parametrize("seed", range(4))
def test_wrong_claim_in_random_net_is_caught(seed: int) -> None:
    """Claim a grid-witnessed unstable neuron inactive; when a dense grid sees the outputs
    differ, so must verify."""
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(6, 2)), rng.normal(size=(6, 6)), rng.normal(size=(2, 6))]
    net = ReLUNetwork(ws, [rng.normal(size=6), rng.normal(size=6), rng.normal(size=2)])
    axes = np.linspace(0.0, 1.0, 201)
    grid = np.stack([a.reshape(-1) for a in np.meshgrid(axes, axes)], axis=1)
    g = net.preactivations(grid)
    layer = int(seed % 2)
    unstable = np.flatnonzero((g[layer].min(axis=0) < 0) & (g[layer].max(axis=0) > 0))
    assert unstable.size
    claims = [np.full(6, UNSTABLE, dtype=object) for _ in range(2)]
    claims[layer][unstable[0]] = INACTIVE

    wrong, _ = compress(net, claims)

    gap = np.abs(net.forward(grid) - wrong.forward(grid)).max()
    assert gap > 1e-3 * np.abs(net.forward(grid)).max()
    result = verify(net, wrong, BOX2, seed=seed)
    assert not result.ok
    assert result.max_abs >= 0.5 * gap


def corner_net() -> ReLUNetwork:
    """Only near the vertex (1, 1) of [0,1]^2 does the neuron x0 + x1 - 1.9 turn on."""
    return ReLUNetwork(
        [np.array([[1.0, 1.0]]), np.array([[1.0]])], [np.array([-1.9]), np.array([0.0])]
    )


def test_data_inside_the_box_are_checked() -> None:
    net = corner_net()
    wrong, _ = compress(net, states(INACTIVE))
    result = verify(net, wrong, BOX2, data=np.array([[0.2, 0.3], [1.0, 1.0]]), n_samples=0)
    assert not result.ok
    assert result.worst_source == "data"
    assert result.max_abs == pytest.approx(0.1)
    assert (result.n_points, result.n_data, result.n_data_outside) == (3, 2, 0)


def test_data_outside_the_box_are_counted_not_used() -> None:
    net = corner_net()
    wrong, _ = compress(net, states(INACTIVE))
    result = verify(net, wrong, BOX2, data=np.array([[2.0, 2.0], [0.1, 0.1]]), n_samples=0)
    assert result.ok  # the networks agree on the box, not at (2, 2)
    assert (result.n_data, result.n_data_outside) == (1, 1)
    assert "1 data points outside the box skipped" in result.summary()


def test_corners_catch_a_difference_at_a_vertex() -> None:
    net = corner_net()
    wrong, _ = compress(net, states(INACTIVE))
    assert not verify(net, wrong, BOX2, n_samples=8).ok  # 4 corners = all of them


def test_relative_error_is_scaled_by_the_largest_output() -> None:
    zero = np.zeros((1, 2))
    a = ReLUNetwork([zero], [np.array([1000.0])])
    b = ReLUNetwork([zero], [np.array([1000.5])])
    result = verify(a, b, BOX2, n_samples=10)
    assert result.max_abs == pytest.approx(0.5)
    assert result.max_rel == pytest.approx(0.5 / 1000)
    assert not result.ok
    assert verify(a, b, BOX2, n_samples=10, rtol=1e-3).ok


def test_result_serialises() -> None:
    net = three_neuron_net()
    result = verify(net, net, BOX2, n_samples=100)
    data = json.loads(json.dumps(result.to_json()))
    assert data["ok"] is True and data["max_abs"] == 0.0
    assert "\n" not in result.summary() and "equivalent" in result.summary()


def test_mismatched_shapes_are_refused() -> None:
    net = three_neuron_net()
    other = ReLUNetwork([np.ones((1, 3))], [np.zeros(1)])
    with pytest.raises(ExactCompressError, match="differ in shape"):
        verify(net, other, BOX2)
    with pytest.raises(ExactCompressError, match="features"):
        verify(net, net, BOX2, data=np.ones((4, 3)))
    with pytest.raises(ExactCompressError, match="domain has 3 features"):
        verify(net, net, Box.uniform(3))


def test_small_output_next_to_a_large_one_is_judged_per_point() -> None:
    """Output 0 is off by 1e-3 next to output 1 of 1e6: 1e-9 of the largest output
    overall, which a global relative check would pass; per point it is 1e-3 of |a|."""
    w = np.array([[1.0, 0.0], [0.0, 0.0]])
    a = ReLUNetwork([w], [np.array([0.0, 1e6])])
    b = ReLUNetwork([w], [np.array([1e-3, 1e6])])
    result = verify(a, b, BOX2, n_samples=100)
    assert result.max_rel < 1e-8
    assert not result.ok
    assert result.worst_output == 0
    assert result.max_ratio > 1
    assert verify(a, b, BOX2, n_samples=100, atol=1e-2).ok


def test_points_by_source_and_witnesses() -> None:
    """Witness points inside the box are checked (and reported as the worst source when
    they are), those outside are counted and skipped."""
    net = corner_net()
    wrong, _ = compress(net, states(INACTIVE))
    wit = np.array([[0.98, 0.99], [3.0, 3.0]])
    result = verify(net, wrong, BOX2, n_samples=0, witnesses=wit)
    assert not result.ok
    assert result.worst_source == "witness"
    assert result.worst_point == [0.98, 0.99]
    assert result.points_by_source == {"witness": 1, "centre": 1}
    assert result.n_witness_outside == 1
    text = result.summary()
    assert "1 witness" in text and "1 witnesses outside the box skipped" in text
    full = verify(net, net, BOX2, data=np.array([[0.1, 0.2]]), n_samples=10)
    assert full.points_by_source == {"data": 1, "uniform": 6, "corner": 4, "centre": 1}


def test_nan_output_fails() -> None:
    net = three_neuron_net()
    bad = ReLUNetwork([np.zeros((1, 2))], [np.array([0.0])])
    bad.biases[0][0] = np.nan
    assert not verify(net, bad, BOX2, n_samples=4).ok


def test_witness_points_of_a_report() -> None:
    from exactcompress.verify import witness_points

    assert witness_points({}) is None
    pts = witness_points({"points": [[0.0, 1.0], [1.0, 0.0]]})
    assert pts.shape == (2, 2)
