"""The README's worked example of a user formulation, checked against the brute force."""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
from oracle import milp_states, random_net

import formulations
from exactcompress import Box, ReLUNetwork, StabilityOptions, find_stable_neurons
from formulations import network, relu


def my_relu(block, key, g, lower, upper, handle):
    """max(0, g) with g in [lower, upper]: big-M plus the triangle cut."""
    h = relu.bigm_relu(block, key, g, lower, upper, handle)
    lo, up = pyo.value(lower), pyo.value(upper)
    cut = pyo.Constraint(expr=h <= up * (g - lo) / (up - lo))
    block.add_component(f"tri_{key[0]}_{key[1]}", cut)
    return h


def build(data, candidates):
    return network.build(data, candidates, relu="bigm-tri")


def test_registered_variant_is_used_and_exact():
    formulations.RELU_ENCODINGS["bigm-tri"] = my_relu
    formulations.register("network-tri", "network", build, "network formulation with cuts")
    try:
        rng = np.random.default_rng(5)
        w, b = random_net(rng, [4, 10, 10, 10, 2], bias_shift=-0.3)
        box = Box.uniform(4)
        options = StabilityOptions.paper(formulation="network-tri")
        report = find_stable_neurons(ReLUNetwork(w, b), box, options=options)
        assert report.formulation == "network-tri"
        assert report.extra["milp"]["candidates"] > 0  # the variant really solved something
        truth = milp_states(w, b, box.lo, box.hi)
        for got, want in zip(report.states, truth):
            keep = want != "ambiguous"
            assert (got[keep] == want[keep]).all()
    finally:
        formulations.FORMULATIONS.pop("network-tri", None)
        formulations.RELU_ENCODINGS.pop("bigm-tri", None)


VARIANT_MODULE = """
import formulations
from formulations import network


def build(data, candidates):
    return network.build(data, candidates)


formulations.register("dropped-in", "network", build, "a module dropped into formulations/")
"""


def test_module_dropped_into_the_package_is_found_by_name(tmp_path, monkeypatch, capsys):
    """--formulation NAME finds a module placed in formulations/ with no other edit."""
    import sys

    from exactcompress.cli import main
    from exactcompress.io import save_model

    (tmp_path / "dropped_in_variant.py").write_text(VARIANT_MODULE)
    monkeypatch.setattr(formulations, "__path__", [*formulations.__path__, str(tmp_path)])
    rng = np.random.default_rng(2)
    w, b = random_net(rng, [3, 8, 8, 2], bias_shift=-0.3)
    model = tmp_path / "net.pt"
    save_model(str(model), ReLUNetwork(w, b), {})
    try:
        args = ["stability", str(model), "--formulation", "dropped-in", "--paper"]
        assert main([*args, "--solver", "highs", "--json", str(tmp_path / "s.json")]) == 0
        import json

        assert json.loads((tmp_path / "s.json").read_text())["formulation"] == "dropped-in"
    finally:
        formulations.FORMULATIONS.pop("dropped-in", None)
        sys.modules.pop("formulations.dropped_in_variant", None)


def test_unknown_formulation_lists_the_registered_ones(tmp_path, capsys):
    from exactcompress.cli import main
    from exactcompress.io import save_model

    w, b = random_net(np.random.default_rng(0), [3, 4, 2])
    save_model(str(tmp_path / "net.pt"), ReLUNetwork(w, b), {})
    assert main(["stability", str(tmp_path / "net.pt"), "--formulation", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown formulation 'nope'" in err and "network, neuron" in err
    assert "\n" not in err
