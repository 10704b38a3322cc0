"""The paper's published models (../shared/reference-models) against its published results.

Skipped when ../shared is absent (users do not have it). MNIST and CIFAR data are not
on this machine, so refutation uses random points, box corners and witness search:
any point of [0, 1]^n is a valid witness, so the published counts must still come out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exactcompress import Box, StabilityOptions, find_stable_neurons, load_network
from exactcompress.prune import compress as prune_network
from exactcompress.verify import verify

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference-models"
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference-models absent")

FULL = StabilityOptions(solver="highs", samples=4000)


def layer_counts(report):
    keys = ("stably_active", "stably_inactive", "unstable", "undecided")
    return [{k: int((s == k).sum()) for k in keys} for s in report.states]


@pytest.mark.parametrize("folder", ["mnist-2x100", "mnist-2x200"])
def test_mnist_without_l1_has_no_stable_neuron(folder):
    net = load_network(str(REFERENCE / folder / "checkpoint_120.tar"))
    report = find_stable_neurons(net, Box.uniform(784), options=FULL)
    assert report.complete
    for counts in layer_counts(report):
        assert counts["unstable"] == sum(counts.values())
    # every one of them has two real witnesses in the report
    assert sum(len(layer["pos"]) for layer in report.witnesses["layers"]) == sum(net.hidden_widths)


def test_cifar10_pruned_matches_the_published_counts():
    """Published for the unpruned 2x400: layer 1 85 active + 284 inactive, layer 2 137
    active + 131 inactive. Pruning removed the inactive ones (116 and 269 left) and
    folded layer 2's actives down to a basis of at most 116 rows, so what remains must
    be: layer 1 85 active / 31 unstable, layer 2 116 active / 132 unstable."""
    net = load_network(str(REFERENCE / "cifar10-pruned" / "pruned_checkpoint_120.tar"))
    assert net.hidden_widths == [116, 248]
    report = find_stable_neurons(net, Box.uniform(3072), options=FULL)
    assert report.complete
    assert layer_counts(report) == [
        {"stably_active": 85, "stably_inactive": 0, "unstable": 31, "undecided": 0},
        {"stably_active": 116, "stably_inactive": 0, "unstable": 132, "undecided": 0},
    ]
    assert_nothing_left_to_remove(net, report)


def test_cifar100_pruned_has_nothing_left_to_remove():
    net = load_network(str(REFERENCE / "cifar100-pruned" / "pruned_checkpoint_120.tar"))
    report = find_stable_neurons(net, Box.uniform(3072), options=FULL)
    assert report.complete
    counts = layer_counts(report)
    assert all(c["stably_inactive"] == 0 for c in counts)  # the original code removed them
    assert counts[1]["stably_active"] <= net.hidden_widths[0]  # folded to a basis
    assert_nothing_left_to_remove(net, report)


def assert_nothing_left_to_remove(net, report):
    """An already compressed model stays the same size, and the same function."""
    small, summary = prune_network(net, report.states)
    assert summary.parameters_after == summary.parameters_before
    assert verify(net, small, Box.uniform(net.widths[0])).ok


@pytest.mark.slow  # ~50 s each: run with -m slow
def test_cifar10_pruned_paper_configuration_agrees_with_full_pipeline():
    """The paper's route (interval big-M, MILP for every open neuron, here the neuron
    formulation on HiGHS) reaches the same states as CROWN + witnesses."""
    net = load_network(str(REFERENCE / "cifar10-pruned" / "pruned_checkpoint_120.tar"))
    box = Box.uniform(3072)
    full = find_stable_neurons(net, box, options=FULL)
    paper = find_stable_neurons(
        net, box, options=StabilityOptions.paper(formulation="neuron", solver="highs")
    )
    assert paper.complete
    why = paper.extra["milp"]["why_candidates"]
    assert why  # the report names the neurons that reached the MILP, with reasons
    for cand in why:
        lo, up = cand["bounds"]
        assert lo < 0 < up and cand["never_seen"] and cand["outcome"] != "undecided"
    assert all((a == b).all() for a, b in zip(full.states, paper.states))


@pytest.mark.slow  # ~50 s each: run with -m slow
def test_cifar10_vnnlib_exports_match_the_forward_pass(tmp_path):
    """Issue 10's acceptance: the VNN-LIB exports of the CIFAR-10 model's exact-stage
    candidates parse back, and their ONNX networks give the float64 pre-activations to
    1e-12 under onnxruntime, an engine independent of the package."""
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    from exactcompress.vnnlib import export_candidates, read_property

    net = load_network(str(REFERENCE / "cifar10-pruned" / "pruned_checkpoint_120.tar"))
    box = Box.uniform(3072)
    paper = find_stable_neurons(
        net, box, options=StabilityOptions.paper(formulation="neuron", solver="highs")
    )
    why = paper.extra["milp"]["why_candidates"]
    assert why
    exported = export_candidates(net, box, why, tmp_path)
    assert exported
    x = np.random.default_rng(0).random((64, 3072))
    want = net.preactivations(x)
    for onnx_path in sorted({e.onnx for e in exported}):
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        layer = next(e.layer for e in exported if e.onnx == onnx_path)
        got = np.vstack([session.run(None, {"X": row[None, :]})[0] for row in x])
        scale = np.abs(want[layer - 1]).max()
        assert np.abs(got - want[layer - 1]).max() <= 1e-12 * max(1.0, scale)
    for e in exported:
        prop = read_property(e.vnnlib)
        assert (prop.lo == box.lo).all() and (prop.hi == box.hi).all()
        assert prop.output == e.neuron and prop.n_out == net.hidden_widths[e.layer - 1]
