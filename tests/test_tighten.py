"""LP tightening (--tighten lp): stable sets against brute force, sound and never looser bounds."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import assert_matches, milp_extremes, milp_states, naive_bounds, random_net

from exactcompress import Box, ReLUNetwork, StabilityOptions, find_stable_neurons
from exactcompress.bounds import compute_bounds, decide_from_bounds
from exactcompress.cli import build_parser, options_from
from exactcompress.errors import ExactCompressError
from exactcompress.report import NeuronEvidence
from exactcompress.tighten import RelaxationLP, cost_scale, lp_tighten

FAST = {"samples": 2000}
SHAPE = [5, 12, 12, 12, 3]


def lp_proofs(report) -> int:
    """Neurons the lp stage proved stable (it also refutes some by its LP points)."""
    return sum(
        int(d == "lp" and s in ("stably_active", "stably_inactive"))
        for deciders, states in zip(report.deciders, report.states)
        for d, s in zip(deciders, states)
    )


@pytest.mark.parametrize("formulation", ["network", "neuron"])
@pytest.mark.parametrize("seed", range(3))
def test_stable_sets_match_per_neuron_milp(formulation, seed):
    rng = np.random.default_rng(seed)
    w, b = random_net(rng, SHAPE, bias_shift=-0.3)
    box = Box.uniform(5)
    truth = milp_states(w, b, box.lo, box.hi)
    for options in (
        StabilityOptions(formulation=formulation, tighten="lp", **FAST),
        StabilityOptions.paper(formulation=formulation, tighten="lp"),
        StabilityOptions.paper(formulation=formulation, tighten="lp", bounds="alpha-crown"),
    ):
        report = find_stable_neurons(ReLUNetwork(w, b), box, options=options)
        assert report.complete
        assert_matches(report, truth)
        assert "lp" in report.seconds


def all_open_tightening(seed: int, method: str, widths=(4, 16, 16, 16, 2)):
    """lp_tighten with nothing observed: every neuron after layer 1 is solved both ways."""
    rng = np.random.default_rng(seed)
    w, b = random_net(rng, list(widths), bias_shift=-0.2)
    net = ReLUNetwork(w, b)
    box = Box(np.full(widths[0], -1.0), np.linspace(0.5, 1.5, widths[0]))
    before = compute_bounds(net, box, method)
    evidence = NeuronEvidence(net, box)
    active, inactive = decide_from_bounds(before)
    for layer, (pa, pi) in enumerate(zip(active, inactive)):
        evidence.prove(layer, np.flatnonzero(pi), active=False, stage="bounds")
        evidence.prove(layer, np.flatnonzero(pa & ~pi), active=True, stage="bounds")
    after, stats = lp_tighten(evidence, before, method)
    return net, box, before, after, stats


@pytest.mark.parametrize("method", ["interval", "crown"])
@pytest.mark.parametrize("seed", range(3))
def test_tightened_bounds_hold_and_never_loosen(seed, method):
    net, box, before, after, stats = all_open_tightening(seed, method)
    assert stats["solves"] > 0 and stats["tightened"] > 0
    rng = np.random.default_rng(1000 + seed)
    points = np.concatenate([box.sample(80_000, rng), box.corners(20_000, rng)])
    strictly = 0
    for layer, g in enumerate(net.preactivations(points)):
        lo, up = after.lower[layer], after.upper[layer]
        assert (g >= lo).all() and (g <= up).all(), f"layer {layer + 1} bound violated"
        assert (lo >= before.lower[layer]).all() and (up <= before.upper[layer]).all()
        strictly += int((lo > before.lower[layer]).sum() + (up < before.upper[layer]).sum())
    assert strictly > 0


def test_lp_decides_what_crown_leaves():
    """On this net CROWN, sampling and the gradient witnesses leave neurons the LP proves."""
    rng = np.random.default_rng(0)
    w, b = random_net(rng, SHAPE, bias_shift=-0.3)
    net, box = ReLUNetwork(w, b), Box.uniform(5)
    crown = {"bounds": "crown", "prover": "milp", **FAST}
    without = find_stable_neurons(net, box, options=StabilityOptions(**crown))
    report = find_stable_neurons(net, box, options=StabilityOptions(tighten="lp", **crown))
    assert lp_proofs(report) > 0
    assert lp_proofs(without) == 0 and "lp" not in without.decided_by
    assert report.decided_by["lp"] >= lp_proofs(report)
    assert report.decided_by.get("milp", 0) < without.decided_by.get("milp", 0)
    assert all((a == b).all() for a, b in zip(report.states, without.states))


def test_cli_option_and_validation():
    args = build_parser().parse_args(["stability", "m.pt", "--tighten", "lp"])
    assert options_from(args).tighten == "lp"
    args = build_parser().parse_args(["stability", "m.pt", "--paper", "--tighten", "lp"])
    opts = options_from(args)
    assert opts.tighten == "lp" and opts.bounds == "interval"
    assert options_from(build_parser().parse_args(["stability", "m.pt"])).tighten == "none"
    with pytest.raises(ExactCompressError):
        StabilityOptions(tighten="milp")


def test_each_lp_solve_gets_its_own_time_limit():
    """HiGHS checks its time limit against the run time of every solve of a model so far:
    passing a per-solve limit as is made every solve after the first ones stop at once
    (no bound: the LP tightening and the subdomain LPs silently gave up)."""
    weights, biases = random_net(np.random.default_rng(3), [60, 200, 1])
    box = Box.uniform(60)
    lower, upper = (np.array(t) for t in naive_bounds(weights, biases, box.lo, box.hi)[0])
    lp = RelaxationLP(box.lo, box.hi)
    lp.add_layer(weights[0], biases[0], lower, upper, np.zeros(200, dtype=np.int8))
    limit, values = 0.2, []
    while lp.highs.getRunTime() < 3 * limit:
        for s in (1.0, -1.0):
            values.append(lp.extreme(s * weights[1][0], 0.0, True, limit)[0])
    assert None not in values


def test_cost_scale_is_a_power_of_two_near_the_largest_coefficient():
    for big in (2.3e-5, 1.0, 0.7, 3e4):
        scale = cost_scale(np.array([big / 3, -big]))
        assert np.log2(scale) == np.round(np.log2(scale))
        assert 0.7 <= big * scale <= 1.5
    assert cost_scale(np.zeros(4)) == 1.0
    assert cost_scale(np.zeros(0)) == 1.0
    assert cost_scale(np.array([1e-300])) == 2.0**60  # capped: bias * scale stays finite


@pytest.mark.parametrize("tiny", [2.0**-17, 3e-6])
def test_tiny_objectives_give_the_same_sound_bound(tiny):
    """An L1-regularised neuron's weights can be 1e-5: the LP objective is scaled before
    HiGHS sees it (its dual tolerance is absolute) and scaled back exactly, outward pad
    included. The bound of a tiny multiple of a row is that multiple of the row's bound
    (to 1e-6 of it: the pad is relative to the objective's scale, not an absolute 1e-6
    that would be a third of this bound) and never below the true maximum (scipy's
    MILP)."""
    rng = np.random.default_rng(5)
    weights, biases = random_net(rng, [6, 20, 20, 4, 1])
    box = Box.uniform(6)
    layer_bounds = naive_bounds(weights, biases, box.lo, box.hi)
    lp = RelaxationLP(box.lo, box.hi)
    for k in range(2):
        lower, upper = (np.array(t) for t in layer_bounds[k])
        lp.add_layer(weights[k], biases[k], lower, upper, np.zeros(20, dtype=np.int8))
    row, bias = weights[2][0], float(biases[2][0])
    _, gmax = milp_extremes(weights, biases, box.lo, box.hi, 2, 0)
    plain, _ = lp.extreme(row, bias, True, 10.0)
    small, _ = lp.extreme(tiny * row, tiny * bias, True, 10.0)
    assert small >= tiny * gmax
    assert small == pytest.approx(tiny * plain, rel=1e-6, abs=0.0)
    held = np.abs(np.asarray(lp.highs.getLp().col_cost_)).max()
    assert 0.5 <= held <= 2.0  # what HiGHS was given
