"""Witness proposals: corners that are exact extremes, gradient search that beats sampling."""

import itertools

import numpy as np
import pytest
import torch

from exactcompress.domain import Box
from exactcompress.network import ReLUNetwork
from exactcompress.refute import first_layer_extremes, gradient_search, sampling_points


def random_net(widths: list[int], seed: int) -> ReLUNetwork:
    rng = np.random.default_rng(seed)
    return ReLUNetwork(
        [rng.normal(size=(o, i)) / np.sqrt(i) for i, o in zip(widths[:-1], widths[1:])],
        [0.3 * rng.normal(size=o) for o in widths[1:]],
    )


def needle_net() -> ReLUNetwork:
    """On [0, 1]^10: g1[0] = sum(x) - 9.5 is positive only near the all-ones corner;
    g2[0] = relu(sum(x) - 9) - 10 relu(x0 - 0.7) - 10 relu(0.3 - x0) - 0.1 only where
    x0 is in about (0.3, 0.7) and every other feature is near 1: no vertex, no luck."""
    n = 10
    w1 = np.zeros((4, n))
    w1[0], w1[1] = 1.0, 1.0
    w1[2, 0], w1[3, 0] = 1.0, -1.0
    b1 = np.array([-9.5, -9.0, -0.7, 0.3])
    w2 = np.array([[0.0, 1.0, -10.0, -10.0], [1.0, 0.0, 0.0, 0.0]])
    b2 = np.array([-0.1, 0.0])
    return ReLUNetwork([w1, w2, np.ones((1, 2))], [b1, b2, np.zeros(1)])


def test_sampling_points_are_in_the_box_and_include_corners_and_centre():
    box = Box(np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 3.0]))
    pts = sampling_points(box, 50, 8, np.random.default_rng(0))
    assert pts.shape == (59, 3)
    assert box.contains(pts).all()
    corners = {tuple(c) for c in itertools.product(*zip(box.lo, box.hi))}
    assert corners <= {tuple(p) for p in pts}
    assert any(np.array_equal(p, (box.lo + box.hi) / 2) for p in pts)


def test_first_layer_extremes_are_the_exact_max_and_min():
    net = random_net([8, 30, 5], seed=1)
    box = Box(np.linspace(-1, 0, 8), np.linspace(0.5, 2, 8))
    every_corner = np.array(list(itertools.product(*zip(box.lo, box.hi))))
    g_all = net.preactivations(every_corner)[0]
    neurons = np.arange(30)
    pts = first_layer_extremes(net, box, neurons, neurons)
    g = net.preactivations(pts)[0]
    np.testing.assert_allclose(g[neurons, neurons], g_all.max(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(g[30 + neurons, neurons], g_all.min(axis=0), rtol=0, atol=1e-12)
    assert box.contains(pts).all()


def test_random_sampling_misses_the_needles():
    net, box = needle_net(), Box.uniform(10)
    pts = sampling_points(box, 100_000, 2**10, np.random.default_rng(0))
    g1, g2 = net.preactivations(pts)
    assert (g2[:, 0] <= 0).all()
    assert (g1[np.all(pts < 1, axis=1), 0] <= 0).all()  # only a vertex finds g1[0] > 0


def test_gradient_search_finds_the_needles():
    net, box = needle_net(), Box.uniform(10)
    starts = box.sample(64, np.random.default_rng(1))
    pts = gradient_search(
        net, box, [np.array([0]), np.array([0])], [np.array([]), np.array([])], starts
    )
    assert box.contains(pts).all()
    g1, g2 = net.preactivations(pts)
    assert (g1[:, 0] > 0).any()
    assert (g2[:, 0] > 0).any()


def test_gradient_search_pushes_down_too_and_stays_in_the_box():
    net = random_net([6, 40, 40, 1], seed=2)
    box = Box(np.full(6, -0.5), np.full(6, 1.5))
    starts = sampling_points(box, 200, 0, np.random.default_rng(3))
    g_start = net.preactivations(starts)
    never_neg = [np.flatnonzero((g >= 0).all(axis=0)) for g in g_start]
    never_pos = [np.flatnonzero((g <= 0).all(axis=0)) for g in g_start]
    pts = gradient_search(net, box, never_pos, never_neg, starts, starts_per_candidate=3)
    assert box.contains(pts).all()
    assert len(pts) == 3 * sum(len(a) + len(b) for a, b in zip(never_pos, never_neg))
    g_found = net.preactivations(pts)
    flipped = sum(int((g[:, j] < 0).any()) for g, idx in zip(g_found, never_neg) for j in idx)
    flipped += sum(int((g[:, j] > 0).any()) for g, idx in zip(g_found, never_pos) for j in idx)
    assert flipped > 0


def test_gradient_search_with_no_candidates_returns_no_points():
    net, box = needle_net(), Box.uniform(10)
    empty = [np.array([], dtype=int)] * 2
    assert gradient_search(
        net, box, empty, empty, box.sample(4, np.random.default_rng(0))
    ).shape == (
        0,
        10,
    )


def test_gradient_search_chunks_give_the_same_points():
    net = random_net([5, 20, 20, 1], seed=4)
    box = Box.uniform(5, -1.0, 1.0)
    starts = box.sample(32, np.random.default_rng(5))
    cands = [np.arange(20), np.arange(20)]
    whole = gradient_search(net, box, cands, cands, starts)
    chunked = gradient_search(net, box, cands, cands, starts, batch_limit=7)
    np.testing.assert_allclose(whole, chunked, rtol=0, atol=1e-12)


def test_gradient_search_stops_at_its_deadline_with_what_it_has(monkeypatch):
    """A deadline reached after the first batch: the points of that batch come back,
    the rest is not searched (the witness stage keeps to the time limit)."""
    import exactcompress.refute as refute

    net = random_net([5, 20, 20, 1], seed=4)
    box = Box.uniform(5, -1.0, 1.0)
    starts = box.sample(32, np.random.default_rng(5))
    cands = [np.arange(20), np.arange(20)]
    clock = iter([0.0, 10.0])  # first check before the deadline, every later one after
    monkeypatch.setattr(refute.time, "monotonic", lambda: next(clock, 10.0))
    pts = gradient_search(net, box, cands, cands, starts, batch_limit=7, deadline=5.0)
    assert len(pts) == 7 and box.contains(pts).all()
    assert gradient_search(net, box, cands, cands, starts, deadline=0.0).shape == (0, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_find_the_needles_alike():
    net, box = needle_net(), Box.uniform(10)
    starts = box.sample(64, np.random.default_rng(1))
    args = (net, box, [np.array([0]), np.array([0])], [np.array([]), np.array([])], starts)
    for device in ("cpu", "cuda"):
        g1, g2 = net.preactivations(gradient_search(*args, device=device))
        assert (g1[:, 0] > 0).any() and (g2[:, 0] > 0).any()
