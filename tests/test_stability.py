"""The pipeline's stable sets against independent brute force (tests/oracle.py)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import pytest
from oracle import assert_matches, grid_states, milp_extremes, milp_states, random_net

import formulations
from exactcompress import Box, ReLUNetwork, StabilityOptions, find_stable_neurons
from exactcompress.api import compress, render_report
from exactcompress.bounds import compute_bounds
from exactcompress.evidence import NeuronEvidence
from exactcompress.report import UNDECIDED, StabilityReport, undecided_section

FAST = {"samples": 2000}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dim", [1, 2])
def test_low_dimensional_nets_match_dense_grid(seed, dim):
    rng = np.random.default_rng(100 + seed)
    w, b = random_net(rng, [dim, 10, 10, 8, 2], bias_shift=-0.2)
    box = Box.uniform(dim, -1.0, 1.0)
    report = find_stable_neurons(ReLUNetwork(w, b), box, options=StabilityOptions(**FAST))
    truth = grid_states(w, b, box.lo, box.hi, per_dim=20001 if dim == 1 else 401)
    assert_matches(report, truth)
    stable = sum(int((s != "unstable").sum()) for s in report.states)
    assert stable > 0  # the nets are chosen so both kinds occur


@pytest.mark.parametrize("formulation", ["network", "neuron"])
@pytest.mark.parametrize("seed", range(3))
def test_random_nets_match_per_neuron_milp(formulation, seed):
    rng = np.random.default_rng(seed)
    w, b = random_net(rng, [5, 12, 12, 12, 3], bias_shift=-0.3)
    box = Box.uniform(5)
    truth = milp_states(w, b, box.lo, box.hi)
    # the paper's configuration leaves the most to the MILP; the default the least
    for options in (
        StabilityOptions(formulation=formulation, **FAST),
        StabilityOptions.paper(formulation=formulation),
    ):
        report = find_stable_neurons(ReLUNetwork(w, b), box, options=options)
        assert report.complete
        assert_matches(report, truth)


def trained_digits_case(arch):
    from exactcompress.data import load_dataset
    from exactcompress.train import train

    # the benchmark recipe: accurate (> 90 %) and with both kinds of stable neuron
    net, meta = train("digits", arch, l1=1e-3, epochs=40, lr=0.05, seed=0)
    assert meta["test_accuracy"] > 0.9
    x, _ = load_dataset("digits", "train")
    return net, x, Box.uniform(64)


@pytest.mark.parametrize(
    "arch", [[32, 32], pytest.param([32, 32, 32], marks=pytest.mark.slow)], ids=str
)
def test_trained_digits_net_matches_per_neuron_milp(arch):
    net, x, box = trained_digits_case(arch)
    truth = milp_states(net.weights, net.biases, box.lo, box.hi)  # 6 s for 2x32, 90 s for 3x32
    for options in (StabilityOptions(**FAST), StabilityOptions.paper()):
        report = find_stable_neurons(net, box, x, options)
        assert report.complete
        assert_matches(report, truth)
        counts = report.counts()
        assert counts["stably_inactive"] > 0 and counts["stably_active"] > 0


def test_witnesses_recheck_without_solver():
    rng = np.random.default_rng(7)
    w, b = random_net(rng, [4, 16, 16, 2], bias_shift=-0.2)
    net = ReLUNetwork(w, b)
    box = Box.uniform(4)
    data = json.loads(json.dumps(find_stable_neurons(net, box).to_json()))
    points = np.array(data["witnesses"]["points"])
    assert (points >= 0).all() and (points <= 1).all()
    for layer, entry in enumerate(data["layers"]):
        wit = data["witnesses"]["layers"][layer]
        for j in entry["unstable"]:
            x_pos, x_neg = points[wit["pos"][str(j)]], points[wit["neg"][str(j)]]
            pre = [np.asarray(x_pos), np.asarray(x_neg)]
            for x, sign in zip(pre, (1, -1)):
                h = x
                for k in range(layer + 1):
                    g = w[k] @ h + b[k]
                    h = np.maximum(g, 0)
                assert sign * g[j] > 0


def test_json_contract_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    w, b = random_net(rng, [3, 8, 8, 2], bias_shift=-0.5)
    report = find_stable_neurons(ReLUNetwork(w, b), Box.uniform(3))
    path = tmp_path / "stability.json"
    report.save(str(path))
    data = json.loads(path.read_text())
    assert data["format"] == "exactcompress.stability/1"
    assert data["widths"] == [3, 8, 8, 2]
    assert data["domain"] == {"kind": "box", "lo": 0.0, "hi": 1.0}
    assert data["complete"] is True
    for entry in data["layers"]:
        keys = ("stably_active", "stably_inactive", "unstable", "undecided")
        assert sorted(sum((entry[k] for k in keys), [])) == list(range(8))
    for key in ("bounds", "milp", "total"):
        assert key in data["seconds"]
    again = StabilityReport.load(str(path))
    assert all((a == b).all() for a, b in zip(again.states, report.states))


def test_compressed_equals_original_and_is_smaller():
    rng = np.random.default_rng(11)
    w, b = random_net(rng, [6, 24, 24, 24, 4], bias_shift=-0.4)
    net = ReLUNetwork(w, b)
    box = Box.uniform(6)
    result = compress(net, box, options=StabilityOptions(**FAST))
    counts = result.report.counts()
    assert counts["stably_active"] + counts["stably_inactive"] > 0
    assert result.compressed.n_parameters < net.n_parameters
    x = np.concatenate([box.sample(10_000, rng), box.corners(64, rng)])
    ref = net.forward(x)
    assert np.abs(result.compressed.forward(x) - ref).max() <= 1e-9 * max(1, np.abs(ref).max())
    assert result.verification.ok


def test_report_says_why_each_milp_candidate_was_left_open():
    rng = np.random.default_rng(4)
    w, b = random_net(rng, [5, 12, 12, 3], bias_shift=-0.3)
    net, box = ReLUNetwork(w, b), Box.uniform(5)
    result = compress(net, box, options=StabilityOptions.paper(solver="highs"))
    why = result.report.extra["milp"]["why_candidates"]
    assert why
    pre = net.preactivations(np.concatenate([box.sample(20_000, rng), box.corners(64, rng)]))
    for cand in why:
        layer, j = cand["layer"] - 1, cand["neuron"]
        lo, up = cand["bounds"]
        assert lo < 0 < up  # otherwise the bounds would have decided it
        assert cand["outcome"] == result.report.states[layer][j]
        g = pre[layer][:, j]
        assert (g >= lo - 1e-9).all() and (g <= up + 1e-9).all()
    markdown = render_report(result)
    assert f"{len(why)} neurons; outcome:" in markdown


# ---- what an undecided neuron's report says --------------------------------------------


def test_undecided_extremes_enclose_the_true_extreme() -> None:
    """Each open extreme of an undecided neuron is reported between what a point showed
    and the best bound a stage reached (here branch and bound, cut by the time limit);
    scipy's own MILP (tests/oracle.py) finds the true extreme inside that range."""
    weights, biases = random_net(np.random.default_rng(0), [20, 40, 40, 2])
    net, box = ReLUNetwork(weights, biases), Box.uniform(20)
    options = StabilityOptions(bounds="interval", prover="bab", samples=200, time_limit=1.0)
    report = find_stable_neurons(net, box, None, options)
    rows = [(c, e) for c in report.candidates for e in c.extremes]
    assert rows and not report.complete
    assert {c.outcome for c, _ in rows} == {UNDECIDED}
    assert "bab" in {e["bound_by"] for _, e in rows}
    for c, e in rows[:2]:
        gmin, gmax = milp_extremes(weights, biases, box.lo, box.hi, c.layer - 1, c.neuron)
        if e["extreme"] == "max":
            assert e["seen"] <= gmax + 1e-6 and gmax <= e["bound"] + 1e-6
        else:
            assert e["bound"] - 1e-6 <= gmin and gmin <= e["seen"] + 1e-6
    text = "\n".join(undecided_section([asdict(c) for c, _ in rows]))
    assert "## Undecided: where the open extremes lie" in text
    assert f"| {rows[0][0].layer} | {rows[0][0].neuron} |" in text


def test_neuron_strategy_shares_the_time_left_over_its_candidates(monkeypatch) -> None:
    """One MILP per candidate gets an equal share of what is left: a hard first candidate
    must not take the whole limit from those after it (it did: one solve in 140 s)."""
    from exactcompress import exact

    weights, biases = random_net(np.random.default_rng(0), [20, 60, 60, 60, 3])
    net, box = ReLUNetwork(weights, biases), Box.uniform(20)
    evidence = NeuronEvidence(net, box)
    bounds = compute_bounds(net, box, "interval")
    cands = exact.open_candidates(evidence)[:3]
    monkeypatch.setattr(exact, "open_candidates", lambda ev: cands)
    given = []

    def decide(evidence, handle, solver, cand, deadline):
        given.append(deadline - time.monotonic())
        time.sleep(0.2)  # a candidate decided quickly leaves its share to the others
        return "optimal"

    monkeypatch.setattr(exact, "decide_by_extreme", decide)
    monkeypatch.setattr(exact, "build_model", lambda *a: _FakeHandle())
    exact.run_neuron_strategy(
        evidence,
        formulations.get("neuron"),
        bounds,
        lambda h: _FakeSolver(),
        time.monotonic() + 30.0,
        lambda m: None,
    )
    assert len(given) == 3
    assert 9.0 < given[0] <= 10.0
    assert 14.0 < given[1] <= 14.9  # (30 - 0.2) / 2
    assert 29.0 < given[2] <= 29.6


def test_neuron_strategy_keeps_to_the_limit_when_solves_overrun(monkeypatch) -> None:
    """A solve that runs past its share (Pyomo updates a large model before HiGHS' clock
    starts: 12 s per solve on 2x800, 38 s past a 300 s limit over 3 candidates) makes
    the shares after it smaller, so the stage still ends at its deadline."""
    from exactcompress import exact

    weights, biases = random_net(np.random.default_rng(0), [20, 60, 60, 60, 3])
    net, box = ReLUNetwork(weights, biases), Box.uniform(20)
    evidence = NeuronEvidence(net, box)
    cands = exact.open_candidates(evidence)[:3]
    monkeypatch.setattr(exact, "open_candidates", lambda ev: cands)

    def decide(evidence, handle, solver, cand, deadline):
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.3)  # its share, then 0.3 s more
        return "time_limit"

    monkeypatch.setattr(exact, "decide_by_extreme", decide)
    monkeypatch.setattr(exact, "build_model", lambda *a: _FakeHandle())
    start = time.monotonic()
    exact.run_neuron_strategy(
        evidence,
        formulations.get("neuron"),
        compute_bounds(net, box, "interval"),
        lambda h: _FakeSolver(),
        start + 3.0,
        lambda m: None,
    )
    assert time.monotonic() - start < 3.0 + 0.2


class _FakeHandle:
    def n_binaries(self) -> int:
        return 0


class _FakeSolver:
    def load(self, handle) -> None:
        pass
