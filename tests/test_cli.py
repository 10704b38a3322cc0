"""The command line: contracts, outputs, and one-line errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from oracle import random_net
from torch import nn

from exactcompress import ReLUNetwork, save_model
from exactcompress.cli import main
from exactcompress.stability import usable_cores


@pytest.fixture
def model_file(tmp_path):
    rng = np.random.default_rng(0)
    w, b = random_net(rng, [4, 12, 12, 3], bias_shift=-0.4)
    path = tmp_path / "model.pt"
    save_model(path, ReLUNetwork(w, b), {"note": "test"})
    return path


def run_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err and err[-1].startswith("exactcompress: error:")
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_stability_then_prune_then_compress(tmp_path, model_file, capsys):
    js = tmp_path / "s.json"
    assert main(["stability", str(model_file), "-o", str(js), "--samples", "500"]) == 0
    data = json.loads(js.read_text())
    assert data["widths"] == [4, 12, 12, 3] and data["complete"]
    out = tmp_path / "small.pt"
    assert main(["prune", str(model_file), str(js), "-o", str(out)]) == 0
    small = torch.load(out, weights_only=True)
    assert small["format"] == "exactcompress.model/1"
    outdir = tmp_path / "out"
    assert main(["compress", str(model_file), "-o", str(outdir), "--formulation", "neuron"]) == 0
    for name in ("stability.json", "compressed.pt", "report.md"):
        assert (outdir / name).exists()
    assert "Verification" in (outdir / "report.md").read_text()


def test_unsupported_layer_is_named(tmp_path, capsys):
    path = tmp_path / "conv.pt"
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2)).state_dict(), path)
    msg = run_error(capsys, ["stability", str(path)])
    assert str(path) in msg


def test_unsupported_module_type_named_in_api():
    from exactcompress import ExactCompressError, load_network

    with pytest.raises(ExactCompressError, match="Sigmoid"):
        load_network(nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1)))


def test_domain_of_wrong_size(tmp_path, model_file, capsys):
    dom = tmp_path / "dom.npy"
    np.save(dom, np.array([[0.0] * 3, [1.0] * 3]))
    msg = run_error(capsys, ["stability", str(model_file), "--domain", str(dom)])
    assert "(2, 4)" in msg or "4" in msg


def test_missing_file(tmp_path, capsys):
    msg = run_error(capsys, ["stability", str(tmp_path / "nope.pt")])
    assert "nope.pt" in msg


def test_corrupt_file(tmp_path, capsys):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x00garbage" * 50)
    assert "bad.pt" in run_error(capsys, ["compress", str(path), "-o", str(tmp_path / "o")])


def test_nan_weights(tmp_path, capsys):
    sd = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict()
    sd["0.weight"][1, 2] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(sd, path)
    assert "NaN" in run_error(capsys, ["stability", str(path)])


def test_unknown_solver(model_file, capsys):
    assert "nosuchsolver" in run_error(
        capsys, ["stability", str(model_file), "--solver", "nosuchsolver"]
    )


def test_unknown_formulation(model_file, capsys):
    msg = run_error(capsys, ["stability", str(model_file), "--formulation", "nosuch"])
    assert "network" in msg and "neuron" in msg


def test_stability_file_for_another_model(tmp_path, model_file, capsys):
    other = tmp_path / "other.pt"
    rng = np.random.default_rng(1)
    save_model(other, ReLUNetwork(*random_net(rng, [4, 5, 3])), {})
    js = tmp_path / "s.json"
    assert main(["stability", str(other), "--json", str(js), "--samples", "100"]) == 0
    assert "widths" in run_error(
        capsys, ["prune", str(model_file), str(js), "-o", str(tmp_path / "x.pt")]
    )


def test_demo_runs_and_reports(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "Parameters:" in out and "verify: equivalent" in out
    assert (tmp_path / "demo" / "compressed.pt").exists()


@pytest.mark.gurobi
def test_gurobi_licence_size_on_the_command_line(tmp_path, capsys):
    """Over 2000 variables: --solver gurobi names the sizes and --solver highs; auto
    falls back to HiGHS and says why."""
    from exactcompress import solvers

    licence = solvers.gurobi_licence()
    if licence.problem or licence.limit != solvers.GUROBI_LIMITED_SIZE:
        pytest.skip("needs gurobipy with the size-limited licence")
    rng = np.random.default_rng(1)
    w, b = random_net(rng, [2500, 6, 2], bias_shift=-0.2)
    path = tmp_path / "wide.pt"
    save_model(path, ReLUNetwork(w, b), {})
    line = run_error(capsys, ["stability", str(path), "--paper", "--solver", "gurobi"])
    assert "2000" in line and "--solver highs" in line and "variables" in line

    out_json = tmp_path / "s.json"
    assert main(["stability", str(path), "--paper", "--json", str(out_json)]) == 0
    said = capsys.readouterr()
    assert "solver: highs (" in said.out + said.err
    assert json.loads(out_json.read_text())["solver"] == "highs"


def test_ctrl_c_in_the_milp_keeps_what_was_decided(tmp_path, monkeypatch, capsys):
    """Interrupted during the exact stage: exit 130, an incomplete stability.json with
    the neurons decided before, undecided ones kept, and a compressed model that is
    still exact (checked here by forward passes, not by the package's verify)."""
    from exactcompress import stability
    from exactcompress.io import load_network

    def interrupt(evidence, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stability.SERIAL, "run_exact_stage", interrupt)
    rng = np.random.default_rng(3)
    w, b = random_net(rng, [5, 16, 16, 3], bias_shift=-0.3)
    model = tmp_path / "m.pt"
    save_model(model, ReLUNetwork(w, b), {})
    out = tmp_path / "out"
    assert main(["compress", str(model), "--paper", "--solver", "highs", "-o", str(out)]) == 130
    data = json.loads((out / "stability.json").read_text())
    assert data["interrupted"] is True and data["complete"] is False
    undecided = sum(len(layer["undecided"]) for layer in data["layers"])
    decided = sum(
        len(layer[k]) for layer in data["layers"] for k in ("unstable", "stably_inactive")
    )
    assert undecided > 0 and decided > 0
    assert "interrupted" in (out / "report.md").read_text()
    small = load_network(str(out / "compressed.pt"))
    x = rng.uniform(size=(20_000, 5))
    h = x
    for k, (wk, bk) in enumerate(zip(w, b)):
        h = h @ wk.T + bk
        if k < len(w) - 1:
            h = np.maximum(h, 0)
    assert np.abs(small.forward(x) - h).max() <= 1e-9 * max(1.0, np.abs(h).max())
    hidden_kept = sum(small.hidden_widths)
    assert hidden_kept >= undecided + sum(len(layer["unstable"]) for layer in data["layers"])


# ---- option precedence and the -o convention ------------------------------------------


def stability_options(*argv):
    from exactcompress.cli import build_parser, options_from

    return options_from(build_parser().parse_args(["stability", "m.pt", *argv]))


def test_explicit_options_win_over_paper():
    """--paper sets the paper's defaults; what the user spells out still wins."""
    from exactcompress import StabilityOptions

    assert stability_options() == StabilityOptions()
    assert stability_options("--paper") == StabilityOptions.paper()
    opts = stability_options("--paper", "--bounds", "crown", "--samples", "50")
    assert opts == StabilityOptions.paper(bounds="crown", samples=50)
    assert stability_options("--paper", "--witness-search").witness_search is True
    assert stability_options("--samples", "0").bounds == StabilityOptions().bounds


def test_paper_with_explicit_samples_on_the_command_line(tmp_path, model_file):
    js = tmp_path / "s.json"
    argv = ["stability", str(model_file), "--paper", "--samples", "300", "--json", str(js)]
    assert main([*argv, "--bounds", "crown"]) == 0
    options = json.loads(js.read_text())["options"]
    assert (options["samples"], options["bounds"]) == (300, "crown")
    assert options["witness_search"] is False  # from --paper


def test_every_writing_subcommand_takes_o(capsys):
    """One convention: a subcommand that writes files takes -o; bench's old --out still
    works but is no longer shown."""
    import argparse

    from exactcompress.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    writers = {
        name: [s for a in sub._actions if a.dest == "output" for s in a.option_strings]
        for name, sub in subs.choices.items()
    }
    for name in ("demo", "train", "prune", "compress", "bench"):
        assert "-o" in writers[name], name
    assert parser.parse_args(["bench", "-o", "a"]).output == "a"
    assert parser.parse_args(["bench", "--out", "b"]).output == "b"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--help"])
    shown = capsys.readouterr().out
    assert "-o DIR, --output DIR" in shown and "--out " not in shown


def test_prover_and_certify_on_the_command_line(tmp_path, model_file):
    """--prover, --jobs and --certify reach the pipeline; stability.json says which
    proofs rest on sound arithmetic."""
    js = tmp_path / "s.json"
    argv = ["stability", str(model_file), "--samples", "0", "--no-witness-search"]
    assert main([*argv, "--prover", "bab", "--jobs", "2", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["options"]["prover"] == "bab" and data["options"]["jobs"] == 2
    assert data["proofs"]["solver"] == 0
    assert "bab" in data["seconds"] and "tighten" in data["seconds"]
    assert main([*argv, "--prover", "milp", "--certify", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["options"]["certify"] and "certify" in data["stages"]
    # without --jobs: every core this process may use, recorded as a number
    assert data["options"]["jobs"] == usable_cores() >= 1
    assert data["proofs"]["solver"] == 0  # every MILP proof re-proved, or withdrawn
