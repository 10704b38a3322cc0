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


def hard_row(model: str, config: str, arch: str, inputs: int, seconds: float, **extra) -> dict:
    n = [int(w) for w in [arch.split("x")[1]] * int(arch.split("x")[0])]
    row = fake_row(model, config, "|".join("U" * w for w in n), extra.pop("complete", True))
    row.update(arch=arch, inputs=str(inputs), seconds=str(seconds), **extra)
    return row


def test_hard_suite_covers_deep_wide_and_both_input_sizes():
    from benchmarks.suite import hard_suite
    from exactcompress.bench_cli import _DEFAULT_TIME_LIMIT, _DEFAULTS

    models = hard_suite()
    assert len({m.name for m in models}) == len(models) >= 10
    recipes = [m.recipe for m in models]
    assert all(r is not None and r.l1 > 0 for r in recipes)  # L1 leaves candidates
    assert any(len(r.arch) >= 4 for r in recipes)  # deep
    assert any(r.arch == (800, 800) for r in recipes)  # wide
    assert {r.dataset for r in recipes} == {"digits28", "digits-rgb32"}  # 784 and 3072 inputs
    assert _DEFAULT_TIME_LIMIT["hard"] == 300
    assert _DEFAULTS["hard"] == (["full", "milp-interval", "paper"], ["network"], ["highs"])
    assert set(_DEFAULTS["hard"][0]) <= set(runner.CONFIGS) and "bab" in runner.CONFIGS


def test_hard_table_counts_candidates_speedups_and_targets(tmp_path):
    from benchmarks import tables

    decided = dict(exact_candidates="5", exact_bab="3", exact_milp="1", exact_undecided="1")
    rows = [
        hard_row("a", "full", "5x100", 784, 2.0, **decided),
        hard_row("a", "milp-interval", "5x100", 784, 300.0, complete=False, exact_candidates="5"),
        hard_row("a", "paper", "5x100", 784, 300.0, complete=False, exact_candidates="40"),
        hard_row(
            "b",
            "full",
            "2x800",
            784,
            400.0,
            complete=False,
            exact_candidates="18",
            undecided_why="L2 n3: time limit",
        ),
        hard_row("e", "full", "2x100", 784, 90.0, complete=False, time_limit="90"),
        hard_row("b", "milp-interval", "2x800", 784, 100.0, exact_candidates="18"),
        hard_row("c", "full", "6x150", 784, 1.0, exact_candidates="0"),  # deep: out of scope
        hard_row("c", "milp-interval", "6x150", 784, 1.0, exact_candidates="0"),
        hard_row("d", "full", "2x400", 3072, 5.0, exact_candidates="2", exact_milp="2"),
        hard_row("d", "milp-interval", "2x400", 3072, 200.0, exact_candidates="2"),
    ]
    text = "\n".join(tables.hard_tables(rows, disagreements=[]))
    assert "## Hard suite: the exact stage" in text
    assert "| a | 784 | 5x100 | 0.001 | 5: bab 3, milp 1, undecided 1 | 5 | 40 |" in text
    assert "150.0x*" in text and "0.2x*" in text  # speed-ups; * where a run is incomplete
    lines = text.splitlines()

    def target(start: str) -> str:
        return next(line for line in lines if line.startswith(f"| {start}"))

    assert "1 of 3 (not: b, e at its 90 s limit)" in target("784 inputs")
    assert "not met" in target("784 inputs")  # b hit the 300 s target; e alone could pass
    assert "1 of 1" in target("3072 inputs") and "**met**" in target("3072 inputs")
    # median of 150x and 40x over a, d (milp-interval > 10 s; b too: 0.25x) = 40x
    speedup = target("median speed-up `full` over `milp-interval`")
    assert "40.0x* over 3 models" in speedup and "**met**" in speedup
    assert "worst full/milp-interval 4.00* (b)" in target(
        "no model more than 1.5x slower with `full` than `milp"
    )
    assert "- b: L2 n3: time limit" in lines  # why the incomplete run left them open
    assert "(reference)" in target("median speed-up `full` over `paper`")
    assert "**met**" in target("same stable sets")
    conflict = "\n".join(tables.hard_tables(rows, disagreements=["a: x and y disagree"]))
    assert "1 disagreement(s) | **not met**" in conflict
    # both runs stopped at the limit: no ratio, and the targets cannot be judged
    stuck = [
        hard_row("g", c, "2x100", 784, 90.0, complete=False, time_limit="90")
        for c in ("full", "milp-interval")
    ]
    stuck_lines = tables.hard_tables(stuck)
    assert any(line.endswith("| 90.0* | 90.0* | ? |") for line in stuck_lines)
    assert sum("**undetermined**" in line for line in stuck_lines) == 3  # g: 90 s < 300 s
    # runs at the limit that cannot move the median below the target leave it met: with
    # a and d at 150x and 40x, two models where both stopped are at worst 0x each, and
    # the median of (0, 0, 40, 150) is still 20x
    both_stuck = [
        hard_row(m, c, "2x100", 784, 300.0, complete=False)
        for m in ("h", "i")
        for c in ("full", "milp-interval")
    ]
    more = [r for r in rows if r["model"] in ("a", "d")] + both_stuck
    more_lines = tables.hard_tables(more)
    speedup = next(x for x in more_lines if x.startswith("| median speed-up `full` over `milp"))
    assert "2 with both runs at the limit, so at least 20.0x" in speedup
    assert "**met**" in speedup
    # ... and with three such models the worst case (0x) is below it: undetermined
    three = more + [
        hard_row("j", c, "2x100", 784, 300.0, complete=False) for c in ("full", "milp-interval")
    ]
    speedup = next(
        x for x in tables.hard_tables(three) if x.startswith("| median speed-up `full` over `milp")
    )
    assert "**undetermined**" in speedup
    # not a hard-suite comparison (no milp-interval run): no hard table
    assert tables.hard_tables([r for r in rows if r["config"] != "milp-interval"]) == []


def test_undecided_neurons_are_listed_with_their_reason():
    import numpy as np

    from exactcompress.report import StabilityReport

    states = [np.array(["unstable", "undecided"], object), np.array(["undecided"], object)]
    report = StabilityReport(
        [4, 2, 1, 1], {}, "network", "highs", states, {}, {}, notes=["layer 1 neuron 1: solver"]
    )
    assert runner.undecided_why(report) == "L1 n1: solver; L2 n0: no reason recorded"
    report.extra["milp"] = {
        "why_candidates": [
            {
                "layer": 2,
                "neuron": 0,
                "bounds": [-1.0, 0.5],
                "outcome": "undecided",
                "extremes": [{"extreme": "max", "seen": -0.002, "bound": 0.01, "bound_by": "bab"}],
            }
        ]
    }
    assert runner.undecided_why(report) == (
        "L1 n1: solver; L2 n0: no reason recorded, max g in [-0.002, 0.01] (bab)"
    )


def test_new_configs_are_checked_for_agreement_and_old_csvs_upgrade(tmp_path):
    path = tmp_path / "results.csv"
    append_row(path, fake_row("m", "bab", "AIU|UU"))
    append_row(path, fake_row("m", "milp-interval", "AUU|UU"))
    assert len(runner.disagreements(read_rows(path))) == 1
    old = tmp_path / "old.csv"
    legacy = [f for f in FIELDS if not f.startswith("exact_") and f != "inputs"]
    with open(old, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=legacy)
        writer.writeheader()
        writer.writerow({k: v for k, v in fake_row("m", "full", "AI").items() if k in legacy})
    runner.upgrade_csv(old)
    append_row(old, fake_row("m", "paper", "AI"))
    rows = read_rows(old)
    assert [r["config"] for r in rows] == ["full", "paper"] and rows[0]["exact_candidates"] == ""


def test_bounds_suite_is_runner_configs():
    """The bounds-and-tightening comparison is configs of the one runner, not a script."""
    from benchmarks import suite
    from exactcompress.bench_cli import _DEFAULTS

    configs, formulations, solvers = _DEFAULTS["bounds"]
    assert set(configs) <= set(runner.CONFIGS)
    for name in configs:
        runner.CONFIGS[name]()  # every config builds valid options
    assert runner.CONFIGS["crown-lp"]().tighten == "lp"
    assert runner.CONFIGS["milp-certify"]().certify
    assert len(suite.bounds_suite()) >= 3


def test_targets_come_from_the_readme_table(tmp_path):
    from benchmarks import tables, targets

    assert tables.TARGET_SPEEDUP == targets.TARGETS.speedup
    assert tables.HARD_SCOPE[784] == ((2, 800), (5, 100))
    text = targets.README.read_text(encoding="utf-8")
    edited = tmp_path / "README.md"
    edited.write_text(text.replace("| `speedup` | 10 |", "| `speedup` | 7.5 |"), encoding="utf-8")
    assert targets.load(edited).speedup == 7.5
    edited.write_text(text.replace("| `hard_limit_s` | 300 |", ""), encoding="utf-8")
    with pytest.raises(RuntimeError, match="hard_limit_s"):
        targets.load(edited)
