"""Bounds hold for every input of the box, and each method is at least as tight as the last."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from exactcompress.bounds import (
    alpha_crown_bounds,
    compute_bounds,
    crown_bounds,
    decide_from_bounds,
    interval_bounds,
)
from exactcompress.domain import Box
from exactcompress.errors import ExactCompressError
from exactcompress.network import ReLUNetwork

# (widths, box lo, box hi): input dims 1..20, boxes other than [0, 1]
CASES = [
    ([1, 8, 8, 1], -2.0, 3.0),
    ([2, 16, 16, 16, 2], -1.0, 1.0),
    ([5, 30, 10, 30, 3], 0.2, 0.7),
    ([12, 40, 40, 1], -0.5, 0.25),
    ([20, 64, 32, 16, 8, 4], 0.0, 2.0),
]


def random_net(widths: list[int], seed: int, bias: float = 0.3) -> ReLUNetwork:
    rng = np.random.default_rng(seed)
    return ReLUNetwork(
        [rng.normal(size=(o, i)) / np.sqrt(i) for i, o in zip(widths[:-1], widths[1:])],
        [bias * rng.normal(size=o) for o in widths[1:]],
    )


def random_box(n: int, lo: float, hi: float, seed: int) -> Box:
    """A box with per-feature bounds inside [lo, hi]."""
    rng = np.random.default_rng(seed)
    a, b = np.sort(lo + (hi - lo) * rng.random((2, n)), axis=0)
    return Box(a, b)


def probe(box: Box, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([box.sample(80_000, rng), box.corners(20_000, rng)])


@pytest.fixture(scope="module", params=range(len(CASES)))
def case(request):
    """A network, its box, the bounds of every method and the pre-activations of 100k points."""
    widths, lo, hi = CASES[request.param]
    net = random_net(widths, request.param)
    if request.param % 2:
        box = random_box(widths[0], lo, hi, request.param)
    else:
        box = Box.uniform(widths[0], lo, hi)
    methods = {
        name: compute_bounds(net, box, name) for name in ("interval", "crown", "alpha-crown")
    }
    return net, box, methods, net.preactivations(probe(box, request.param))


@pytest.mark.parametrize("method", ["interval", "crown", "alpha-crown"])
def test_bounds_hold_on_100k_points(case, method):
    _, _, methods, preactivations = case
    bounds = methods[method]
    for layer, g in enumerate(preactivations):
        assert (g >= bounds.lower[layer]).all()
        assert (g <= bounds.upper[layer]).all()


def test_each_method_at_least_as_tight_as_the_previous(case):
    _, _, m, _ = case
    for looser, tighter in (("interval", "crown"), ("crown", "alpha-crown")):
        for layer in range(len(m["interval"].lower)):
            assert (m[tighter].lower[layer] >= m[looser].lower[layer]).all()
            assert (m[tighter].upper[layer] <= m[looser].upper[layer]).all()


def test_crown_and_alpha_crown_are_tighter_somewhere(case):
    net, _, m, _ = case
    if net.n_hidden < 2:
        pytest.skip("one hidden layer: every method is exact there")
    width = {
        k: sum((b.upper[i] - b.lower[i]).sum() for i in range(1, net.n_hidden))
        for k, b in m.items()
    }
    assert width["crown"] < width["interval"]
    assert width["alpha-crown"] < width["crown"]


def test_one_input_bounds_contain_the_grid_extremes():
    net = random_net([1, 12, 12, 12, 1], seed=11)
    box = Box.uniform(1, -1.5, 2.5)
    grid = np.linspace(-1.5, 2.5, 200_001)[:, None]
    for method in ("interval", "crown", "alpha-crown"):
        bounds = compute_bounds(net, box, method)
        for layer, g in enumerate(net.preactivations(grid)):
            assert (bounds.lower[layer] <= g.min(axis=0)).all()
            assert (bounds.upper[layer] >= g.max(axis=0)).all()


def duplicated_neuron_net() -> ReLUNetwork:
    """g2 = relu(x + 0.5) - relu(x + 0.5) - 0.1 = -0.1 on [0, 1]; interval sees [-1.1, 0.9]."""
    return ReLUNetwork(
        [np.array([[1.0], [1.0]]), np.array([[1.0, -1.0]]), np.array([[1.0]])],
        [np.array([0.5, 0.5]), np.array([-0.1]), np.array([0.0])],
    )


def test_crown_proves_what_interval_cannot():
    net, box = duplicated_neuron_net(), Box.uniform(1)
    _, inactive_interval = decide_from_bounds(interval_bounds(net, box))
    _, inactive_crown = decide_from_bounds(crown_bounds(net, box))
    assert not inactive_interval[1][0]
    assert inactive_crown[1][0]


def test_crown_proves_more_neurons_stable_on_a_random_net():
    net = random_net([10, 60, 60, 60, 1], seed=3, bias=0.5)
    box = Box.uniform(10, 0.3, 0.6)
    counts = {}
    for method in ("interval", "crown", "alpha-crown"):
        active, inactive = decide_from_bounds(compute_bounds(net, box, method))
        counts[method] = sum(int((a | i).sum()) for a, i in zip(active[1:], inactive[1:]))
    assert counts["interval"] < counts["crown"] <= counts["alpha-crown"]


def exact_extremes(net: ReLUNetwork, box: Box) -> tuple[Fraction, Fraction]:
    """Real min and max of g2 when every first-layer neuron is stably active (g2 affine in x)."""
    w1 = [[Fraction(v) for v in row] for row in net.weights[0]]
    b1 = [Fraction(v) for v in net.biases[0]]
    w2, b2 = [Fraction(v) for v in net.weights[1][0]], Fraction(net.biases[1][0])
    coef = [sum(w2[j] * w1[j][i] for j in range(len(w2))) for i in range(len(w1[0]))]
    const = sum(w2[j] * b1[j] for j in range(len(w2))) + b2
    lo, hi = [Fraction(v) for v in box.lo], [Fraction(v) for v in box.hi]
    top = const + sum(max(c * a, c * b) for c, a, b in zip(coef, lo, hi))
    bottom = const + sum(min(c * a, c * b) for c, a, b in zip(coef, lo, hi))
    return bottom, top


@pytest.mark.parametrize("seed", range(40))
def test_crown_is_sound_in_exact_arithmetic(seed):
    """The bias puts the real extreme within rounding distance of the float64 one."""
    rng = np.random.default_rng(seed)
    n, m = 6, 30
    w1, b1 = rng.normal(size=(m, n)) / 10, 3.0 + rng.random(m)
    w2 = rng.normal(size=(1, m))
    box = Box(np.zeros(n) + rng.random(n) / 3, np.ones(n))
    net = ReLUNetwork([w1, w2, np.ones((1, 1))], [b1, np.zeros(1), np.zeros(1)])
    _, top = exact_extremes(net, box)
    net.biases[1][0] = -float(top)
    bottom, top = exact_extremes(net, box)
    bounds = crown_bounds(net, box)
    assert Fraction(bounds.upper[1][0]) >= top
    assert Fraction(bounds.lower[1][0]) <= bottom
    assert bounds.upper[1][0] - float(top) < 1e-10


def test_alpha_crown_respects_its_step_budget():
    net = random_net([4, 20, 20, 1], seed=5)
    box = Box.uniform(4, -1.0, 1.0)
    none = alpha_crown_bounds(net, box, steps=0)
    crown = crown_bounds(net, box)
    for a, b in zip(none.upper + none.lower, crown.upper + crown.lower):
        np.testing.assert_array_equal(a, b)


def test_unknown_method_lists_the_choices():
    net = random_net([2, 3, 1], seed=0)
    with pytest.raises(ExactCompressError, match="interval, crown, alpha-crown"):
        compute_bounds(net, Box.uniform(2), "zonotope")


def test_decide_from_bounds_reads_signs():
    net = duplicated_neuron_net()
    active, inactive = decide_from_bounds(crown_bounds(net, Box.uniform(1)))
    np.testing.assert_array_equal(active[0], [True, True])
    np.testing.assert_array_equal(inactive[0], [False, False])
    np.testing.assert_array_equal(inactive[1], [True])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_decide_the_same():
    net = random_net([10, 60, 60, 60, 1], seed=3, bias=0.5)
    box = Box.uniform(10, 0.3, 0.6)
    for method in ("interval", "crown", "alpha-crown"):
        cpu = decide_from_bounds(compute_bounds(net, box, method, device="cpu"))
        gpu = decide_from_bounds(compute_bounds(net, box, method, device="cuda"))
        for a, b in zip(cpu[0] + cpu[1], gpu[0] + gpu[1]):
            np.testing.assert_array_equal(a, b)
