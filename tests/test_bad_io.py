"""Every subcommand, given outputs it cannot write, inputs it cannot read, or a write
interrupted half-way: one line naming the problem, no traceback, no partial file.

Tests run as root here, where permission bits do not stop reads or writes, so the
unusable paths are ones no user can use: a path through a regular file (ENOTDIR), a
directory where a file is expected, and a folder where a file should be written.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from oracle import random_net

from exactcompress import ReLUNetwork, save_model
from exactcompress.cli import main

FAST = ["--samples", "50"]


@pytest.fixture
def files(tmp_path):
    """A model, its stability.json, a regular file to block paths with, and a folder."""
    rng = np.random.default_rng(0)
    w, b = random_net(rng, [4, 8, 3], bias_shift=-0.3)
    model, js = tmp_path / "model.pt", tmp_path / "s.json"
    save_model(model, ReLUNetwork(w, b), {"dataset": "digits"})
    assert main(["stability", str(model), "--json", str(js), *FAST]) == 0
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    return {"model": str(model), "json": str(js), "blocked": str(blocker / "sub"), "dir": folder}


def one_line_error(capsys, argv: list[str]) -> str:
    """Run argv; it must fail with one 'exactcompress: error:' line and no traceback
    (an exception escaping main fails the test by itself)."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("exactcompress: error:"), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def fast_demo_training(monkeypatch):
    """demo trains for 40 epochs: one is enough to test its file handling."""
    from exactcompress import train as train_mod

    real = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: real(*a, **{**k, "epochs": 1}))


def unwritable_cases(f) -> dict[str, list[str]]:
    blocked, folder = f["blocked"], str(f["dir"])
    return {
        "train": ["train", "--arch", "4", "--epochs", "1", "-o", f"{blocked}/m.pt"],
        "stability": ["stability", f["model"], *FAST, "--json", f"{blocked}/s.json"],
        "stability-json-is-a-folder": ["stability", f["model"], *FAST, "--json", folder],
        "prune": ["prune", f["model"], f["json"], "-o", f"{blocked}/c.pt"],
        "prune-output-is-a-folder": ["prune", f["model"], f["json"], "-o", folder],
        "compress": ["compress", f["model"], *FAST, "-o", f"{blocked}/out"],
        "compress-output-is-a-file": ["compress", f["model"], *FAST, "-o", f["json"]],
        "demo": ["demo", "-o", f"{blocked}/demo"],
        "bench": [
            "bench", "--no-suite", "--models", f["model"], "--configs", "full",
            "--formulations", "neuron", "--solvers", "highs", "--no-plots",
            "--out", f"{blocked}/bench", "--cache", f"{blocked}/cache",
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        "train",
        "stability",
        "stability-json-is-a-folder",
        "prune",
        "prune-output-is-a-folder",
        "compress",
        "compress-output-is-a-file",
        "demo",
        "bench",
    ],
)
def test_unwritable_output(files, capsys, monkeypatch, case):
    fast_demo_training(monkeypatch)
    argv = unwritable_cases(files)[case]
    line = one_line_error(capsys, argv)
    assert "plain-file" in line or "a-folder" in line or "s.json" in line


def unreadable_cases(f) -> dict[str, list[str]]:
    blocked, folder = f["blocked"], str(f["dir"])
    out = str(f["dir"].parent / "fresh")
    return {
        "stability-model-is-a-folder": ["stability", folder],
        "stability-model-through-a-file": ["stability", f"{blocked}/m.pt"],
        "stability-data-is-a-folder": ["stability", f["model"], "--data", f"{folder}/x.npy"],
        "stability-domain-is-a-folder": ["stability", f["model"], "--domain", f"{folder}/d.npy"],
        "prune-model": ["prune", folder, f["json"], "-o", f"{out}/c.pt"],
        "prune-report-is-a-folder": ["prune", f["model"], folder, "-o", f"{out}/c.pt"],
        "prune-report-through-a-file": ["prune", f["model"], f"{blocked}/s.json", "-o", out],
        "compress-model": ["compress", f"{blocked}/m.pt", "-o", out],
        "evaluate-model": ["evaluate", folder],
        "evaluate-data-dir": ["evaluate", f["model"], "--dataset", "mnist", "--data-dir", blocked],
        "check-model": ["check", folder, f["json"]],
        "check-report": ["check", f["model"], folder],
        "check-report-through-a-file": ["check", f["model"], f"{blocked}/s.json"],
        "train-data-dir": ["train", "--dataset", "mnist", "--data-dir", blocked, "-o", out],
        "bench-model": ["bench", "--no-suite", "--models", folder, "--out", out],
    }


@pytest.mark.parametrize(
    "case",
    [
        "stability-model-is-a-folder",
        "stability-model-through-a-file",
        "stability-data-is-a-folder",
        "stability-domain-is-a-folder",
        "prune-model",
        "prune-report-is-a-folder",
        "prune-report-through-a-file",
        "compress-model",
        "evaluate-model",
        "evaluate-data-dir",
        "check-model",
        "check-report",
        "check-report-through-a-file",
        "train-data-dir",
        "bench-model",
    ],
)
def test_unreadable_input(files, capsys, case):
    os.mkdir(files["dir"] / "x.npy")
    os.mkdir(files["dir"] / "d.npy")
    one_line_error(capsys, unreadable_cases(files)[case])
    assert not (files["dir"].parent / "fresh").exists() or case.startswith("bench")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(files, capsys):
    os.chmod(files["model"], 0)
    try:
        assert "model.pt" in one_line_error(capsys, ["stability", files["model"]])
    finally:
        os.chmod(files["model"], 0o644)


def interrupting_writes(monkeypatch, after: int = 0):
    """Ctrl-C inside the (after + 1)-th file write, after the bytes went out but before
    they reached the disk: what a user's Ctrl-C or a full disk does to a plain write."""
    from exactcompress import io as io_mod

    calls = {"n": 0}
    real = io_mod.os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return real(fd)

    monkeypatch.setattr(io_mod.os, "fsync", fsync)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


@pytest.mark.parametrize(
    "case, written",
    [
        ("train", []),
        ("stability", []),
        ("prune", []),
        ("compress", []),
        ("compress-second-file", ["stability.json"]),
        ("demo", []),
    ],
)
def test_interrupted_write_leaves_no_partial_file(files, capsys, monkeypatch, case, written):
    fast_demo_training(monkeypatch)
    out = files["dir"] / "out"
    argv = {
        "train": ["train", "--arch", "4", "--epochs", "1", "-o", str(out / "m.pt")],
        "stability": ["stability", files["model"], *FAST, "--json", str(out / "s.json")],
        "prune": ["prune", files["model"], files["json"], "-o", str(out / "c.pt")],
        "compress": ["compress", files["model"], *FAST, "-o", str(out)],
        "compress-second-file": ["compress", files["model"], *FAST, "-o", str(out)],
        "demo": ["demo", "-o", str(out)],
    }[case]
    out.mkdir()
    interrupting_writes(monkeypatch, after=1 if case == "compress-second-file" else 0)
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == written
    assert leftovers(files["dir"].parent) == []
