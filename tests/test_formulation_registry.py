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
