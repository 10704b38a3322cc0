"""The network strategy on HiGHS (restarts, with mining from every MILP solution)
against independent brute force (tests/oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import forward_pre, milp_states, random_net

from exactcompress import Box, ReLUNetwork, StabilityOptions, find_stable_neurons, stability
from exactcompress.exact import Miner
from exactcompress.report import NeuronEvidence

SLOW = pytest.mark.slow  # 7-19 s each: the two quickest seeds run by default


@pytest.mark.parametrize("mine", [True, False], ids=["mining", "paper"])
@pytest.mark.parametrize("seed", [0, 3, pytest.param(1, marks=SLOW), pytest.param(2, marks=SLOW)])
def test_paper_network_on_highs_matches_per_neuron_milp(seed, mine, monkeypatch):
    """Data-only refutation, then the MILP; with mining, the gradient search runs only
    from the MILP's solutions (the pipeline's own witness stage is switched off)."""
    rng = np.random.default_rng(20 + seed)
    w, b = random_net(rng, [6, 16, 16, 16, 3], bias_shift=-0.3)
    box = Box.uniform(6)
    truth = milp_states(w, b, box.lo, box.hi)
    data = rng.uniform(size=(30, 6))
    options = StabilityOptions.paper(formulation="network", solver="highs", witness_search=mine)
    monkeypatch.setattr(stability, "_witness_stage", lambda *args: None)
    report = find_stable_neurons(ReLUNetwork(w, b), box, data, options)
    assert report.complete
    assert report.extra["milp"]["candidates"] > 0
    for layer, (got, want) in enumerate(zip(report.states, truth)):
        for j, (g, t) in enumerate(zip(got, want)):
            if t != "ambiguous":
                assert g == t, f"layer {layer + 1} neuron {j}: pipeline {g}, brute force {t}"
    # every witness, mined ones included, is a float64 forward pass showing the sign
    wit = report.witnesses
    points = np.array(wit["points"])
    for layer, entry in enumerate(wit["layers"]):
        for j in report.indices(layer, "unstable"):
            g_pos = forward_pre(w, b, points[entry["pos"][str(j)]])[layer][j]
            g_neg = forward_pre(w, b, points[entry["neg"][str(j)]])[layer][j]
            assert g_pos > 0 > g_neg


def near_flip(net, layer, j, below, above, margin=1e-7):
    """A point on the segment [below, above] where g_j is in [-margin, 0): what a MILP
    solution that only needs g >= -FLIP_MARGIN looks like."""
    for _ in range(200):
        mid = (below + above) / 2
        g = net.preactivations(mid)[layer][0, j]
        if -margin <= g < 0:
            return mid
        below, above = (mid, above) if g < 0 else (below, mid)
    raise AssertionError("no near-flip point found")


def test_mining_flips_a_candidate_its_solution_left_just_short():
    rng = np.random.default_rng(5)
    w, b = random_net(rng, [4, 12, 12, 2])
    net, box = ReLUNetwork(w, b), Box.uniform(4)
    pts = rng.uniform(size=(4000, 4))
    g = net.preactivations(pts)[1]
    j = int(np.flatnonzero((g > 0).any(axis=0) & (g < 0).any(axis=0))[0])
    below, above = pts[np.argmin(g[:, j])], pts[np.argmax(g[:, j])]
    x = near_flip(net, 1, j, below, above)

    evidence = NeuronEvidence(net, box)
    evidence.observe(np.stack([below, x]), "data")
    assert not evidence.seen_pos[1][j]
    Miner(evidence)(x, [(1, j, "pos")])
    assert evidence.unstable(1)[j] and evidence.decider[1][j] == "milp"
    assert net.preactivations(evidence.witness_pos[1][j])[1][0, j] > 0
