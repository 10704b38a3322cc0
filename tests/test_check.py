"""``exactcompress check``: reports written by the package pass, edited ones fail with one
line naming the neuron, and stable claims that bounds cannot prove go to branch and
bound (and, with --solver, to a MILP)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from oracle import random_net

from exactcompress import ReLUNetwork, save_model
from exactcompress import check as check_mod
from exactcompress.cli import main

HAS_SCIP = importlib.util.find_spec("pyscipopt") is not None


def bab_available() -> bool:
    try:
        from exactcompress.bab import certify  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def model_and_report(tmp_path):
    """A 4-12-12-3 net (stable and unstable neurons in both layers) and its report."""
    rng = np.random.default_rng(0)
    w, b = random_net(rng, [4, 12, 12, 3], bias_shift=-0.4)
    model, js = tmp_path / "model.pt", tmp_path / "s.json"
    save_model(model, ReLUNetwork(w, b), {})
    assert main(["stability", str(model), "--json", str(js), "--samples", "500"]) == 0
    data = json.loads(js.read_text())
    assert data["complete"]
    return model, js, data


def fallback() -> list[str]:
    """Until exactcompress.bab.certify exists, what bounds leave goes to HiGHS."""
    return [] if bab_available() else ["--solver", "highs"]


def run_check(capsys, model, data, tmp_path, *extra) -> tuple[int, list[str]]:
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    code = main(["check", str(model), str(path), *extra])
    out = capsys.readouterr().out.strip().splitlines()
    return code, [line for line in out if line.startswith("layer ")]


def first(data, state):
    """(layer from 1, neuron) of the first neuron the report puts in ``state``."""
    for entry in data["layers"]:
        if entry[state]:
            return entry["layer"], entry[state][0]
    pytest.skip(f"no {state} neuron in this report")


def move(data, layer, j, src, dst):
    entry = data["layers"][layer - 1]
    entry[src].remove(j)
    entry[dst].append(j)


def test_report_written_by_the_package_passes(tmp_path, model_and_report, capsys):
    model, js, data = model_and_report
    code = main(["check", str(model), str(js), *fallback()])
    out = capsys.readouterr().out
    assert code == 0, out
    n = sum(len(e[k]) for e in data["layers"] for k in ("stably_active", "stably_inactive"))
    n += sum(len(e["unstable"]) for e in data["layers"])
    assert f"check: {n} claims, {n} confirmed" in out


def test_unstable_relabelled_stable_is_false(tmp_path, model_and_report, capsys):
    model, _, data = model_and_report
    layer, j = first(data, "unstable")
    move(data, layer, j, "unstable", "stably_active")
    code, lines = run_check(capsys, model, data, tmp_path, *fallback())
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"layer {layer} neuron {j}: claimed")
    assert "FALSE" in lines[0]


def test_stable_relabelled_unstable_is_false(tmp_path, model_and_report, capsys):
    model, _, data = model_and_report
    layer, j = first(data, "stably_inactive")
    move(data, layer, j, "stably_inactive", "unstable")
    code, lines = run_check(capsys, model, data, tmp_path, *fallback())
    assert code == 1
    assert lines == [
        f"layer {layer} neuron {j}: claimed unstable: FALSE: "
        "no witness point for g > 0 (report names None)"
    ]


def test_witness_outside_the_domain_is_false(tmp_path, model_and_report, capsys):
    model, _, data = model_and_report
    layer, j = first(data, "unstable")
    wit = data["witnesses"]
    idx = wit["layers"][layer - 1]["pos"][str(j)]
    moved = list(wit["points"][idx])
    moved[0] = 1.5  # the domain is [0, 1]
    wit["points"].append(moved)
    wit["layers"][layer - 1]["pos"][str(j)] = len(wit["points"]) - 1
    code, lines = run_check(capsys, model, data, tmp_path, *fallback())
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"layer {layer} neuron {j}: claimed unstable")
    assert "outside the domain" in lines[0]


def test_hand_edited_nonsense_is_reported_not_raised(tmp_path, model_and_report, capsys):
    model, _, data = model_and_report
    data["layers"][0]["stably_active"].append(99)
    data["layers"][1]["stably_inactive"].append("x")
    code, lines = run_check(capsys, model, data, tmp_path, *fallback())
    assert code == 1
    assert any("neuron 99" in line and "no such neuron" in line for line in lines)
    assert any("'x' is not a neuron index" in line for line in lines)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(widths=[4, 5, 3]), "widths"),
        (lambda d: d.update(domain={"kind": "box"}), "domain"),
        (lambda d: d.update(format="other"), "not a stability file"),
        (lambda d: d.update(layers={"1": []}), "layers"),
    ],
)
def test_malformed_report_is_one_line_error(tmp_path, model_and_report, capsys, edit, message):
    model, _, data = model_and_report
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert main(["check", str(model), str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("exactcompress: error:") and message in err[0]


# ---- a true claim that CROWN cannot prove ------------------------------------------


def diamond_net() -> ReLUNetwork:
    """On [-1, 1]^2: relu(x+y) + relu(x-y) + relu(-x+y) + relu(-x-y) = 2 max(|x|, |y|) <= 2,
    so g = that - 2.1 <= -0.1: stably inactive. Each ReLU spans [-2, 2], and CROWN's
    triangles bound the sum by 4 (alpha changes only lower slopes): bounds cannot prove
    it, splitting the four ReLUs can."""
    w1 = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    w2 = np.array([[1.0, 1.0, 1.0, 1.0]])
    return ReLUNetwork([w1, w2, np.ones((1, 1))], [np.zeros(4), np.array([-2.1]), np.zeros(1)])


def diamond_report() -> dict:
    """Written by hand: the 4 first-layer neurons unstable (with witnesses), the
    second-layer neuron stably inactive."""
    points = [[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]
    pos = {"0": 0, "1": 2, "2": 3, "3": 1}
    neg = {"0": 1, "1": 3, "2": 2, "3": 0}
    return {
        "format": "exactcompress.stability/1",
        "widths": [2, 4, 1, 1],
        "domain": {"kind": "box", "lo": -1.0, "hi": 1.0},
        "layers": [
            {"layer": 1, "unstable": [0, 1, 2, 3]},
            {"layer": 2, "stably_inactive": [0]},
        ],
        "witnesses": {"points": points, "layers": [{"pos": pos, "neg": neg}, {}]},
    }


def test_bounds_cannot_prove_the_diamond_claim():
    from exactcompress.bounds import alpha_crown_bounds
    from exactcompress.domain import Box

    bounds = alpha_crown_bounds(diamond_net(), Box.uniform(2, -1.0, 1.0), device="cpu")
    assert bounds.upper[1][0] > 0


@pytest.fixture
def diamond(tmp_path):
    model = tmp_path / "diamond.pt"
    save_model(model, diamond_net(), {})
    return model, diamond_report()


def test_true_claim_beyond_bounds_goes_to_branch_and_bound(tmp_path, diamond, capsys):
    model, data = diamond
    code, lines = run_check(capsys, model, data, tmp_path, "--time-limit", "60")
    if bab_available():
        assert code == 0, lines
        assert lines == []
    else:  # until exactcompress.bab.certify exists: unconfirmed, not false
        assert code == 3
        assert lines and "UNCONFIRMED" in lines[0] and "not available" in lines[0]


def fake_bab(status: str):
    def certify(net, box, claims, time_limit, device):
        return {(layer, j): status for layer, j, _ in claims}

    return certify


@pytest.mark.parametrize(
    "status, code, word", [("proved", 0, None), ("refuted", 1, "FALSE"), ("unknown", 3, "UNCONF")]
)
def test_branch_and_bound_verdicts(tmp_path, diamond, capsys, monkeypatch, status, code, word):
    model, data = diamond
    monkeypatch.setattr(check_mod, "certify_by_bab", fake_bab(status))
    got, lines = run_check(capsys, model, data, tmp_path)
    assert got == code
    if word:
        assert len(lines) == 1 and lines[0].startswith("layer 2 neuron 0") and word in lines[0]


def test_solver_confirms_what_bab_leaves(tmp_path, diamond, capsys, monkeypatch):
    model, data = diamond
    monkeypatch.setattr(check_mod, "certify_by_bab", fake_bab("unknown"))
    code, lines = run_check(capsys, model, data, tmp_path, "--solver", "highs")
    assert code == 0 and lines == []


@pytest.mark.scip
@pytest.mark.skipif(not HAS_SCIP, reason="pyscipopt not installed")
def test_scip_as_second_solver(tmp_path, diamond, capsys, monkeypatch):
    model, data = diamond
    monkeypatch.setattr(check_mod, "certify_by_bab", fake_bab("unknown"))
    code, lines = run_check(capsys, model, data, tmp_path, "--solver", "scip")
    assert code == 0 and lines == []


def test_false_claim_beyond_bounds_is_refuted_by_points(tmp_path, capsys, monkeypatch):
    """The same net with bias -1.9: max(|x|, |y|) = 1 at the corners gives g = 0.1 > 0,
    so 'stably inactive' is false, and a corner point shows it without any solver."""
    net = diamond_net()
    net.biases[1][0] = -1.9
    model = tmp_path / "m.pt"
    save_model(model, net, {})
    monkeypatch.setattr(check_mod, "certify_by_bab", fake_bab("unknown"))
    code, lines = run_check(capsys, model, diamond_report(), tmp_path)
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(
        "layer 2 neuron 0: claimed stably_inactive: FALSE: "
        "a report witness point of the domain gives g = 0.1"
    )


def test_layerwise_bounds_use_fixed_states():
    """Neurons fixed inactive (here by hand, not proved: only the mechanism is tested)
    contribute 0 to the interval bounds of the next layer; a layer already relaxed
    cannot be fixed any more."""
    from exactcompress.bounds import LayerwiseBounds
    from exactcompress.domain import Box

    net = diamond_net()
    box = Box.uniform(2, -1.0, 1.0)
    lb = LayerwiseBounds(net, box, device="cpu")
    lb.fix(0, np.array([False] * 4), np.array([False, True, True, True]))  # pretend
    lb.interval(1)
    lower, upper = lb.bounds(1)
    assert upper[0] == pytest.approx(2.0 - 2.1, abs=1e-9)  # only relu(x+y) <= 2 is left
    with pytest.raises(ValueError):
        lb.back_substitute(1, np.array([0]))
        lb.fix(0, np.zeros(4, bool), np.zeros(4, bool))
