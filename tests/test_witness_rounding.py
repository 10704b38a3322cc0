"""A witness must show its sign in the real-valued network, not only in one float64
evaluation: the sign of a pre-activation within rounding error of 0 depends on the BLAS
kernel (a batch and a single row differ), so such a point proves nothing."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from exactcompress import Box, ReLUNetwork, save_model
from exactcompress.cli import main
from exactcompress.report import NeuronEvidence


def exact_pre(net: ReLUNetwork, x: np.ndarray) -> list[list[Fraction]]:
    """Every pre-activation at x in exact rational arithmetic."""
    h = [Fraction(float(v)) for v in x]
    out = []
    for w, b in zip(net.weights[:-1], net.biases[:-1]):
        g = [
            sum((Fraction(float(w[i, k])) * h[k] for k in range(len(h))), Fraction(float(b[i])))
            for i in range(w.shape[0])
        ]
        out.append(g)
        h = [max(v, Fraction(0)) for v in g]
    return out


def cancelling_net() -> ReLUNetwork:
    """x in [0, 1] copied to four neurons, then g = h0 + 1.2e-16 h1 - h2 - 1.5e-16 h3:
    exactly -3e-17 x <= 0 (stably inactive), but a one-row float64 pass at x = 1 sums
    left to right and gives +7e-17."""
    w2 = np.array([[1.0, 1.2e-16, -1.0, -1.5e-16]])
    return ReLUNetwork(
        [np.ones((4, 1)), w2, np.ones((1, 1))], [np.zeros(4), np.zeros(1), np.zeros(1)]
    )


def test_error_bound_covers_the_exact_value() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        widths = [3, 6, 5, 2]
        ws = [
            rng.normal(size=(m, n)) * 10.0 ** rng.integers(-3, 4)
            for n, m in zip(widths, widths[1:])
        ]
        net = ReLUNetwork(ws, [rng.normal(size=m) for m in widths[1:]])
        x = rng.uniform(-1, 1, size=(4, 3))
        gs, errs = net.preactivations_with_error(x)
        for i in range(len(x)):
            exact = exact_pre(net, x[i])
            for layer, (g, e) in enumerate(zip(gs, errs)):
                gap = [abs(Fraction(float(g[i, j])) - exact[layer][j]) for j in range(g.shape[1])]
                assert all(d <= Fraction(float(e[i, j])) for j, d in enumerate(gap))


def test_rounding_level_point_is_no_witness() -> None:
    net = cancelling_net()
    assert exact_pre(net, np.array([1.0]))[1][0] < 0
    evidence = NeuronEvidence(net, Box.uniform(1))
    for x in ([1.0], [0.5], [0.25]):  # one row at a time, as a solver's solution arrives
        evidence.observe(np.array([x]), "test")
    assert not evidence.seen_pos[1][0]
    assert not evidence.unstable(1)[0]


def test_check_rejects_a_rounding_level_witness(tmp_path, capsys) -> None:
    net = cancelling_net()
    model, js = tmp_path / "m.pt", tmp_path / "s.json"
    save_model(model, net, {})
    report = {
        "format": "exactcompress.stability/1",
        "widths": [1, 4, 1, 1],
        "domain": {"kind": "box", "lo": 0.0, "hi": 1.0},
        "layers": [{"layer": 1}, {"layer": 2, "unstable": [0]}],
        "witnesses": {"points": [[1.0], [0.5]], "layers": [{}, {"pos": {"0": 0}, "neg": {"0": 1}}]},
    }
    js.write_text(json.dumps(report))
    assert main(["check", str(model), str(js)]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("layer")]
    assert len(lines) == 1
    assert lines[0].startswith("layer 2 neuron 0: claimed unstable: FALSE: witness point 0")
    # by kernel, the pass gives +7e-17 (within rounding error) or the exact sign, -3e-17
    assert "rounding error" in lines[0] or "not g > 0" in lines[0]


@pytest.mark.parametrize("x", [[1.0], [0.75]])
def test_clear_signs_still_witness(x) -> None:
    """Away from 0 nothing changes: first-layer neurons at x > 0 are seen positive."""
    evidence = NeuronEvidence(cancelling_net(), Box.uniform(1))
    evidence.observe(np.array([x]), "test")
    assert evidence.seen_pos[0].all()


def test_check_names_a_sign_within_rounding_error() -> None:
    """Whatever the BLAS kernel: a witness whose g is positive but inside its error
    bound is false, and the line says so."""
    from exactcompress.check import ClaimCheck, check_unstable

    class Values:
        def at(self, idx, layer, j):
            return 1e-20, 1e-15

    c = ClaimCheck(1, 0, "unstable")
    data = {"witnesses": {"layers": [{"pos": {"0": 0}, "neg": {"0": 0}}]}}
    check_unstable(c, data, [np.array([0.5])], Values(), Box.uniform(1))
    assert c.verdict == "false"
    assert c.why == "witness point 0 gives g = 1e-20, within its rounding error 1e-15"
