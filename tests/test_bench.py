"""The benchmark sweep: outputs, resuming, and loud disagreement between exact methods."""

from __future__ import annotations

import argparse
import csv
import io

import pytest

from benchmarks import runner
from benchmarks.runner import FIELDS, RunKey, append_row, read_rows, sweep, write_report
from benchmarks.suite import TrainRecipe, load, trained
from exactcompress.bench_cli import add_bench_parser, cmd_bench
from exactcompress.errors import ExactCompressError
from exactcompress.io import save_model

TINY = [
    trained(TrainRecipe("digits", (8,), 1e-3, epochs=2)),
    trained(TrainRecipe("digits", (8, 8), 1e-3, epochs=2)),
]
SWEEP = dict(
    configs=("full", "paper"), formulations=("network", "neuron"), solvers=("highs",), time_limit=20
)


def csv_lines(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def keys(rows) -> list[RunKey]:
    return [RunKey.of(r) for r in rows]


def test_sweep_writes_outputs_and_resumes(tmp_path, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "models"
    first = sweep(TINY, out, cache_dir=cache, stream=io.StringIO(), **SWEEP)
    assert first.ran == 8 and not first.interrupted and first.problems == []
    assert {p.name for p in out.iterdir()} >= {
        "results.csv",
        "report.md",
        "time_per_config.png",
        "compression_vs_l1.png",
    }
    assert len(list(cache.glob("*.pt"))) == 2  # trained once, cached by recipe
    rows = read_rows(first.csv_path)
    assert len(rows) == 8 and all(r["status"] == "ok" and r["verified"] == "yes" for r in rows)
    assert all(r["complete"] == "True" for r in rows)
    report = first.report_path.read_text()
    assert "DISAGREEMENT" not in report and "## Compression by architecture and L1" in report

    def must_not_run(*_a, **_k):
        raise AssertionError("a completed run was run again")

    monkeypatch.setattr(runner, "find_stable_neurons", must_not_run)
    second = sweep(TINY, out, cache_dir=cache, stream=io.StringIO(), **SWEEP)
    assert second.ran == 0 and len(csv_lines(first.csv_path)) == 8
    monkeypatch.undo()

    # an interrupted sweep lost its last row: only that run is done again
    lines = first.csv_path.read_text().splitlines(keepends=True)
    first.csv_path.write_text("".join(lines[:-1]))
    third = sweep(TINY, out, cache_dir=cache, stream=io.StringIO(), **SWEEP)
    assert third.ran == 1
    all_keys = [RunKey(*line[:4]) for line in csv_lines(first.csv_path)]
    assert len(all_keys) == 8 == len(set(all_keys))


def fake_row(model: str, config: str, states: str, complete: bool = True) -> dict:
    row = dict.fromkeys(FIELDS, "")
    n = [len(layer) for layer in states.split("|")]
    row.update(
        model=model,
        config=config,
        formulation="network",
        solver="highs",
        status="ok",
        dataset="digits",
        arch=f"{len(n)}x{n[0]}",
        l1="0.001",
        seconds="1.0",
        complete=str(complete),
        states=states,
        verified="yes",
        connections_removed_pct="10.0",
        stable_pct_per_layer=";".join("50.0" for _ in n),
        stably_active="1",
        stably_inactive="1",
        unstable="1",
        undecided="0",
    )
    return row


def test_planted_disagreement_is_flagged_first(tmp_path):
    path = tmp_path / "results.csv"
    append_row(path, fake_row("m", "full", "AIU|UU"))
    append_row(path, fake_row("m", "paper", "AUU|UU"))
    append_row(path, fake_row("n", "full", "AID|UU", complete=False))
    append_row(path, fake_row("n", "paper", "AIU|UU"))  # undecided vs decided is no conflict
    report, problems = write_report(read_rows(path), tmp_path, plots=False, time_limit=None)
    assert len(problems) == 1 and "layer 1 neuron 1" in problems[0]
    head = report.read_text().splitlines()[:5]
    assert any("WARNING" in line for line in head)
    assert any(
        "DISAGREEMENT: m: full/network/highs and paper/network/highs" in line for line in head
    )


def test_licence_refusal_is_recorded_as_skipped(tmp_path, monkeypatch):
    def too_large(*_a, **_k):
        raise ExactCompressError("Model too large for size-limited license")

    monkeypatch.setattr(runner, "find_stable_neurons", too_large)
    monkeypatch.setattr(runner, "require", lambda _name: None)  # as if gurobipy could run
    out = sweep(
        TINY[:1],
        tmp_path,
        configs=("paper",),
        formulations=("network",),
        solvers=("gurobi",),
        cache_dir=tmp_path / "models",
        plots=False,
        stream=io.StringIO(),
    )
    assert [r["status"] for r in out.rows] == [
        "skipped: licence: Model too large for size-limited license"
    ]
    assert "Gurobi not run on" in out.report_path.read_text()


def test_cli_bench_on_a_model_file(tmp_path):
    lm = load(TINY[0], tmp_path / "models")
    model = tmp_path / "tiny.pt"
    save_model(model, lm.net, lm.meta)
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "bench",
            "--no-suite",
            "--models",
            str(model),
            "--configs",
            "paper",
            "--formulations",
            "network",
            "--solvers",
            "highs,gurobi",
            "--time-limit",
            "20",
            "--out",
            str(tmp_path / "out"),
            "--no-plots",
        ]
    )
    assert cmd_bench(args) == 0
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert [r["model"] for r in rows] == ["file:tiny", "file:tiny"]
    assert rows[0]["status"] == "ok" and rows[0]["acc_before"]  # the file records its dataset
    assert rows[1]["status"] == "ok" or rows[1]["status"].startswith("skipped")


def test_unknown_config_is_refused(tmp_path):
    with pytest.raises(ExactCompressError, match="unknown config"):
        sweep(TINY, tmp_path, configs=("fastest",))


def test_pipeline_suite_holds_slow_paper_cases_and_tiny_ones():
    from benchmarks.suite import pipeline_suite

    names = [m.name for m in pipeline_suite()]
    assert len(names) == len(set(names))
    recipes = [m.recipe for m in pipeline_suite() if m.recipe is not None]
    assert any(r.dataset == "digits-rgb32" for r in recipes)  # 3072 inputs, as CIFAR
    assert any(r.dataset == "digits" for r in recipes)  # 64 inputs: the MILP is quick
    assert any(r.l1 == 0.0 for r in recipes)  # no L1: all unstable, the paper's slow case
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    assert parser.parse_args(["bench", "--suite", "pipeline"]).suite == "pipeline"
