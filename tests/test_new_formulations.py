"""The formulations added through the public contract (layer, omlt) and the extended
ReLU encoding, against the independent brute force and against ``network``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyomo.environ as pyo
import pytest
from oracle import assert_matches, milp_states, naive_bounds, random_net
from registries import clean_registries  # noqa: F401  (fixture)

import formulations
from exactcompress import (
    Box,
    ReLUNetwork,
    StabilityOptions,
    find_stable_neurons,
    load_network,
    solvers,
)
from exactcompress.errors import ExactCompressError
from formulations.complete import complete_solution

HAS_OMLT = importlib.util.find_spec("omlt") is not None
OMLT = pytest.mark.skipif(not HAS_OMLT, reason="omlt not installed (extra: peers)")
#: (formulation, relu): each new one, and extended under both classic drivers
NEW = [
    ("layer", "bigm"),
    ("network", "extended"),
    ("neuron", "extended"),
    ("network", "psplit2"),
    ("neuron", "psplit4"),
    ("omlt", "bigm"),
]
NETS = [(5, [4, 10, 10, 10, 2]), (21, [6, 12, 12, 3])]
_ORACLE: dict[int, list] = {}


HAS_GUROBI = importlib.util.find_spec("gurobipy") is not None and not (
    solvers.gurobi_licence().problem
)
GUROBI = [pytest.mark.gurobi, pytest.mark.skipif(not HAS_GUROBI, reason="gurobipy not usable")]
#: Gurobi takes the completed solutions of every node: partial where an encoding adds
#: variables the completer does not know (extended, psplit, OMLT's zhat)
CASES = [
    *[(*case, seed, widths, "highs") for case in NEW for seed, widths in NETS],
    *[pytest.param(*case, *NETS[0], "gurobi", marks=GUROBI) for case in NEW],
]


@pytest.mark.parametrize("formulation, relu, seed, widths, solver", CASES)
def test_agrees_with_brute_force(formulation, relu, seed, widths, solver):
    """The paper's configuration sends every neuron the bounds leave open to the MILP."""
    if formulation == "omlt" and not HAS_OMLT:
        pytest.skip("omlt not installed (extra: peers)")
    w, b = random_net(np.random.default_rng(seed), widths, bias_shift=-0.3)
    box = Box.uniform(widths[0])
    options = StabilityOptions.paper(formulation=formulation, relu=relu, solver=solver)
    report = find_stable_neurons(ReLUNetwork(w, b), box, options=options)
    assert report.complete and report.extra["milp"]["candidates"] > 0
    assert report.extra["options"]["relu"] == relu
    if seed not in _ORACLE:
        _ORACLE[seed] = milp_states(w, b, box.lo, box.hi)
    assert_matches(report, _ORACLE[seed])


class OffBinary:
    """Big-M on a binary that is 1 when the neuron is inactive."""

    def binary_value(self, active: bool) -> int:
        return 0 if active else 1

    def encode(self, block, key, g, lower, upper):
        h, off, cons = (
            pyo.Var(bounds=(0, pyo.value(upper))),
            pyo.Var(domain=pyo.Binary),
            pyo.ConstraintList(),
        )
        for name, component in (("h", h), ("off", off), ("cons", cons)):
            block.add_component(f"{name}_{key[0]}_{key[1]}", component)
        cons.add(h >= g)
        cons.add(h <= g - lower * off)
        cons.add(h <= upper * (1 - off))
        return h, off


def small_input(seed: int = 1):
    w, b = random_net(np.random.default_rng(seed), [3, 6, 5, 2], bias_shift=-0.3)
    lo, hi = np.zeros(3), np.ones(3)
    bounds = naive_bounds(w, b, lo, hi)
    lower, upper = [x[0] for x in bounds], [x[1] for x in bounds]
    fixed = [np.where(u <= 0, -1, np.where(v >= 0, 1, 0)).astype(np.int8) for v, u in bounds]
    return formulations.MILPInput(w[:-1], b[:-1], lo, hi, lower, upper, fixed)


@pytest.mark.usefixtures("clean_registries")
@pytest.mark.parametrize("relu", ["bigm", "off"])
def test_binaries_follow_their_encoding(relu):
    """Completing a solution and fixing a proved neuron both take each binary's value
    from its encoding: with an "off" binary the completed solution stays feasible and a
    neuron proved active is fixed to 0."""
    formulations.register_relu("off", OffBinary())
    data = small_input()
    handle = formulations.get("network").build(data, [(1, 0, "pos"), (1, 1, "neg")], relu=relu)
    handle.validate()
    rng = np.random.default_rng(0)
    for x in rng.uniform(size=(20, 3)):
        for var, val in complete_solution(handle, x).items():
            var.set_value(float(val), skip_validation=True)
        for con in handle.model.component_data_objects(pyo.Constraint, active=True):
            body = pyo.value(con.body)
            assert con.lb is None or body >= con.lb - 1e-9, con.name
            assert con.ub is None or body <= con.ub + 1e-9, con.name
    key = next(iter(handle.a))
    handle.fix_state(key, active=True)
    assert handle.a[key].fixed and handle.a[key].value == (0 if relu == "off" else 1)


@OMLT
def test_omlt_keeps_its_own_encoding():
    w, b = random_net(np.random.default_rng(5), [4, 8, 8, 2], bias_shift=-0.3)
    options = StabilityOptions.paper(formulation="omlt", relu="extended", solver="highs")
    said: list[str] = []
    with pytest.raises(ExactCompressError, match="omlt takes --relu bigm, not extended"):
        find_stable_neurons(
            ReLUNetwork(w, b), Box.uniform(4), options=options, progress=said.append
        )
    assert said == []  # refused before any stage ran


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference-models"
CIFAR10 = REFERENCE / "cifar10-pruned" / "pruned_checkpoint_120.tar"
SLOW = pytest.mark.slow
#: (formulation, relu, half-width of a box around a random image or None for [0, 1]^3072,
#: random points): each leaves the MILP candidates in both hidden layers, with binaries
#: for layer 1's unstable neurons; the small box keeps the extended models small
CIFAR_CASES = [
    ("neuron", "psplit4", 0.005, 2000),
    pytest.param("neuron", "extended", 0.005, 2000, marks=SLOW),  # about 8 minutes
    pytest.param("layer", "bigm", None, 10_000, marks=SLOW),
    pytest.param("omlt", "bigm", None, 10_000, marks=[SLOW, OMLT]),
]
_TRUTH: dict = {}


def cifar10_box(radius: float | None) -> Box:
    if radius is None:
        return Box.uniform(3072)
    centre = np.random.default_rng(0).uniform(size=3072)
    return Box(np.clip(centre - radius, 0, 1), np.clip(centre + radius, 0, 1))


@pytest.mark.skipif(not CIFAR10.is_file(), reason="../shared/reference-models absent")
@pytest.mark.parametrize("formulation, relu, radius, samples", CIFAR_CASES)
def test_agrees_with_network_on_cifar10(formulation, relu, radius, samples):
    """The paper's configuration with a few random points leaves 12 to 32 candidates
    to the MILP, which must reach the states of the network formulation's pipeline."""
    net = load_network(str(CIFAR10))
    box = cifar10_box(radius)
    if radius not in _TRUTH:
        options = StabilityOptions(solver="highs", samples=4000)
        _TRUTH[radius] = find_stable_neurons(net, box, options=options).states
    options = StabilityOptions.paper(
        formulation=formulation, relu=relu, solver="highs", samples=samples, time_limit=1800
    )
    report = find_stable_neurons(net, box, options=options)
    assert report.complete and report.extra["milp"]["candidates"] > 0
    assert all((a == b).all() for a, b in zip(report.states, _TRUTH[radius]))
