"""--export-vnnlib: every exported property parses back to the domain and the right
output condition, and every ONNX network matches the package's forward pass (1e-12)
under onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from oracle import random_net

from exactcompress import Box, ReLUNetwork, save_model
from exactcompress.cli import main
from exactcompress.vnnlib import export_candidates, property_text, read_property

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def onnx_preactivations(path: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.vstack([session.run(None, {"X": row[None, :]})[0] for row in x])


def check_exports(net: ReLUNetwork, box: Box, cands: list[dict], outdir) -> int:
    """Parse every file back and compare; returns how many properties were checked."""
    rows = (outdir / "instances.csv").read_text().split()
    n = 0
    for cand in cands:
        layer, j = cand["layer"], cand["neuron"]
        model = outdir / f"layer{layer}.onnx"
        onnx.checker.check_model(onnx.load(str(model)))
        for seen, claim, sense in (
            ("active", "stably_inactive", ">="),
            ("inactive", "stably_active", "<="),
        ):
            path = outdir / f"layer{layer}_neuron{j}_{claim}.vnnlib"
            assert path.exists() == (seen in cand["never_seen"])
            if not path.exists():
                continue
            prop = read_property(path)
            np.testing.assert_array_equal(prop.lo, box.lo)
            np.testing.assert_array_equal(prop.hi, box.hi)
            assert (prop.n_out, prop.output, prop.sense) == (net.hidden_widths[layer - 1], j, sense)
            assert prop.value == (1e-5 if sense == ">=" else -1e-5)
            assert f"{model.name},{path.name},300" in rows
            rng = np.random.default_rng(n)
            x = np.vstack([prop.lo + (prop.hi - prop.lo) * rng.random((50, box.dim)), prop.lo])
            got = onnx_preactivations(str(model), x)
            want = net.preactivations(x)[layer - 1]
            assert np.abs(got - want).max() <= 1e-12 * max(1.0, np.abs(want).max())
            n += 1
    assert len(rows) == n
    return n


def test_stability_exports_the_exact_stage_candidates(tmp_path, capsys):
    """The paper's configuration (no sampling, no witness search) sends neurons to the
    MILP; each of them is exported."""
    rng = np.random.default_rng(4)
    w, b = random_net(rng, [5, 10, 8, 3], bias_shift=-0.2)
    net = ReLUNetwork(w, b)
    model, js, outdir = tmp_path / "m.pt", tmp_path / "s.json", tmp_path / "vnn"
    save_model(model, net, {})
    argv = ["stability", str(model), "--paper", "--solver", "highs", "--json", str(js)]
    assert main([*argv, "--export-vnnlib", str(outdir)]) == 0
    cands = json.loads(js.read_text())["milp"]["why_candidates"]
    assert cands
    assert check_exports(net, Box.uniform(5), cands, outdir) >= len(cands)
    assert "VNN-LIB properties" in capsys.readouterr().err


def test_per_feature_box_and_both_sides(tmp_path):
    rng = np.random.default_rng(1)
    w, b = random_net(rng, [3, 4, 5, 2])
    net = ReLUNetwork(w, b)
    box = Box(np.array([-1.0, 0.25, 1e-3]), np.array([0.5, 0.75, 3.0]))
    cands = [
        {"layer": 2, "neuron": 3, "never_seen": ["active", "inactive"]},
        {"layer": 1, "neuron": 0, "never_seen": ["inactive"]},
    ]
    done = export_candidates(net, box, cands, tmp_path / "out")
    assert [(e.layer, e.neuron, e.claim) for e in done] == [
        (2, 3, "stably_inactive"),
        (2, 3, "stably_active"),
        (1, 0, "stably_active"),
    ]
    assert check_exports(net, box, cands, tmp_path / "out") == 3


def test_property_text_is_plain_vnnlib():
    text = property_text(Box.uniform(2), 3, 1, "stably_active", note="why")
    assert text.splitlines() == [
        "; why",
        "(declare-const X_0 Real)",
        "(declare-const X_1 Real)",
        "(declare-const Y_0 Real)",
        "(declare-const Y_1 Real)",
        "(declare-const Y_2 Real)",
        "(assert (>= X_0 0.0))",
        "(assert (<= X_0 1.0))",
        "(assert (>= X_1 0.0))",
        "(assert (<= X_1 1.0))",
        "(assert (<= Y_1 -1e-05))",
    ]
    with pytest.raises(ValueError):
        property_text(Box.uniform(2), 3, 1, "unstable")
