"""The paper's tables and plots, computed from the rows of results.csv.

Everything here reads CSV rows (dicts of strings), so a report can be rebuilt from
the file alone, and rows from an older sweep mix with new ones. Time ratios pair
runs that differ in one setting only (same model, the other settings equal); a
ratio involving a run that hit the time limit is marked ``*``, since that run's
time is only a lower bound of what completing it would take.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path

from .targets import TARGETS

SETTINGS = ("config", "formulation", "solver")
_ORDER = {
    **{c: i for i, c in enumerate(("full", "full-lp", "bab", "milp-interval", "paper"))},
    **{"network": 0, "neuron": 1, "highs": 0, "gurobi": 1},
}

Row = dict


def _f(row: Row, key: str) -> float | None:
    try:
        return float(row.get(key, ""))
    except ValueError:
        return None


def _complete(row: Row) -> bool:
    return str(row.get("complete")).lower() == "true"


def _ok(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r["status"] == "ok"]


def _values(rows: Sequence[Row], key: str) -> list[str]:
    return sorted({r[key] for r in rows}, key=lambda v: (_ORDER.get(v, 9), v))


def _l1_key(row: Row) -> float:
    v = _f(row, "l1")
    return -1.0 if v is None else v


def representative(runs: Sequence[Row]) -> Row:
    """A complete run when there is one (they all agree), else the one that proved most."""
    complete = [r for r in runs if _complete(r)]
    if complete:
        return complete[0]
    return max(runs, key=lambda r: (_f(r, "stably_active") or 0) + (_f(r, "stably_inactive") or 0))


def pair_ratios(runs: Sequence[Row], field: str, num: str, den: str) -> list[tuple[float, bool]]:
    """seconds(num) / seconds(den) over runs equal in every setting but ``field``,
    each with whether either side is incomplete."""
    others = [s for s in SETTINGS if s != field]
    base = {(r["model"], *(r[o] for o in others)): r for r in runs if r[field] == den}
    out = []
    for r in runs:
        if r[field] != num:
            continue
        d = base.get((r["model"], *(r[o] for o in others)))
        t_num, t_den = _f(r, "seconds"), _f(d, "seconds") if d else None
        if t_num is not None and t_den:
            out.append((t_num / t_den, not (_complete(r) and _complete(d))))
    return out


def _median_cell(pairs: Sequence[tuple[float, bool]]) -> str:
    if not pairs:
        return "–"
    med = statistics.median(p for p, _ in pairs)
    return f"{med:.2f}" + ("*" if any(flag for _, flag in pairs) else "")


def _seconds_cell(runs: Sequence[Row]) -> str:
    secs = [_f(r, "seconds") for r in runs if _f(r, "seconds") is not None]
    if not secs:
        return "–"
    return f"{statistics.median(secs):.1f}" + ("" if all(map(_complete, runs)) else "*")


def _pct(row: Row, key: str) -> str:
    v = _f(row, key)
    return "–" if v is None else f"{100 * v:.2f}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(map(str, row)) + " |" for row in body),
        "",
    ]


# ---- tables ----------------------------------------------------------------------


def compression_table(rows: Sequence[Row]) -> list[str]:
    """The paper's main table: per dataset, architecture and L1, what stability buys."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in _ok(rows):
        groups.setdefault((r["dataset"], r["arch"], r["l1"]), []).append(r)
    body = []
    for (dataset, arch, l1), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], _l1_key(kv[1][0]))
    ):
        by_model: dict[str, list[Row]] = {}
        for r in runs:
            by_model.setdefault(r["model"], []).append(r)
        reps = [representative(v) for v in by_model.values()]
        mark = "" if all(map(_complete, reps)) else "≥ "
        layers = [list(map(float, r["stable_pct_per_layer"].split(";"))) for r in reps]
        stable = " / ".join(f"{statistics.mean(col):.0f}" for col in zip(*layers, strict=True))
        removed = statistics.mean(_f(r, "connections_removed_pct") or 0.0 for r in reps)
        net = [r for r in runs if r["formulation"] == "network"]
        neuron = [r for r in runs if r["formulation"] == "neuron"]
        body.append(
            [
                dataset or "?",
                arch,
                l1 or "?",
                len(by_model),
                _pct(reps[0], "acc_before"),
                _pct(reps[0], "acc_after"),
                mark + stable,
                f"{mark}{removed:.1f}",
                _seconds_cell(net),
                _seconds_cell(neuron),
                _median_cell(pair_ratios(runs, "formulation", "neuron", "network")),
            ]
        )
    header = [
        "dataset",
        "arch",
        "L1",
        "models",
        "accuracy %",
        "accuracy after %",
        "stable % per layer",
        "connections removed %",
        "network s",
        "neuron s",
        "neuron/network",
    ]
    return [
        "## Compression by architecture and L1",
        "",
        "Stable neurons and removed connections come from a complete run (`≥`: no run "
        "completed, so these are lower bounds); accuracy is on the test split of the "
        "model's dataset, before and after pruning (– where that dataset is not on disk); "
        "times are medians over configs and solvers, the ratio the median of paired runs.",
        "",
        *_table(header, body, "lllrrrlrrrr"),
    ]


def ratio_table(rows: Sequence[Row]) -> list[str]:
    """Per model: neuron against network formulation, full pipeline against paper config."""
    ok = _ok(rows)
    configs, forms = _values(ok, "config"), _values(ok, "formulation")
    columns: list[tuple[str, str, str, str, str]] = []  # header, field, num, den, fixed value
    if {"network", "neuron"} <= set(forms):
        columns += [
            (f"neuron/network ({c})", "formulation", "neuron", "network", c) for c in configs
        ]
    for full in [c for c in configs if c.startswith("full")]:
        if "paper" in configs:
            columns += [(f"{full}/paper ({f})", "config", full, "paper", f) for f in forms]
    if not columns:
        return []
    body = []
    for model in dict.fromkeys(r["model"] for r in ok):
        runs = [r for r in ok if r["model"] == model]
        cells = []
        for _, field, num, den, fixed in columns:
            fixed_field = "config" if field == "formulation" else "formulation"
            subset = [r for r in runs if r[fixed_field] == fixed]
            cells.append(_median_cell(pair_ratios(subset, field, num, den)))
        body.append([model, *cells])
    return [
        "## Time ratios per model",
        "",
        "Seconds of one setting over the other, same run of the benchmarks, median over "
        "solvers: above 1 means the first is slower. Where no candidate reaches the MILP "
        "(MILP candidates 0 in the runs table), both formulations run the same stages and "
        "their ratio is only timing noise.",
        "",
        *_table(["model", *(c[0] for c in columns)], body, "l" + "r" * len(columns)),
    ]


#: targets (benchmarks/README.md, *Targets*): median speed-up where the paper's
#: configuration is slow, worst slow-down
SLOW_PAPER_S, TARGET_SPEEDUP, TARGET_WORST = (
    TARGETS.slow_paper_s,
    TARGETS.speedup,
    TARGETS.worst,
)


def _target_met(median: float | None, worst: float) -> str:
    if worst > TARGET_WORST:
        return "no"
    if median is None:
        return f"n/a (no paper run > {SLOW_PAPER_S:g} s)"
    return "yes" if median >= TARGET_SPEEDUP else "no"


def pipeline_target(rows: Sequence[Row]) -> list[str]:
    """Full pipeline against the paper's configuration, per formulation and solver: the
    median speed-up over the models where the paper's run takes more than 10 s, and the
    worst ratio over all models."""
    ok = _ok(rows)
    lines = []
    settings = itertools.product(
        [c for c in _values(ok, "config") if c.startswith("full")],
        _values(ok, "formulation"),
        _values(ok, "solver"),
    )
    for config, form, solver in settings:
        runs = [r for r in ok if r["formulation"] == form and r["solver"] == solver]
        paper = {r["model"]: r for r in runs if r["config"] == "paper"}
        full = {r["model"]: r for r in runs if r["config"] == config}
        both = [m for m in full if m in paper and _f(full[m], "seconds")]
        if not both:
            continue
        ratios = {m: _f(paper[m], "seconds") / _f(full[m], "seconds") for m in both}
        slow = [m for m in both if _f(paper[m], "seconds") > SLOW_PAPER_S]
        worst = min(ratios, key=ratios.get)
        median = statistics.median(ratios[m] for m in slow) if slow else None
        lines.append(
            [
                f"{config}/{form}/{solver}",
                str(len(slow)),
                "–" if median is None else f"{median:.1f}x",
                f"{1 / ratios[worst]:.2f} ({worst})",
                _target_met(median, 1 / ratios[worst]),
            ]
        )
    if not lines:
        return []
    return [
        "## Full pipeline against the paper's configuration",
        "",
        f"Speed-up = paper seconds / full seconds, same solver and formulation, same run. "
        f"Target: median speed-up >= {TARGET_SPEEDUP:g}x over the models where the paper's "
        f"configuration takes more than {SLOW_PAPER_S:g} s, and no model more than "
        f"{TARGET_WORST:g}x slower (full/paper <= {TARGET_WORST:g}). A `*`-marked run in "
        "the tables below hit the time limit, so its seconds are a lower bound.",
        "",
        *_table(
            ["setting", "models > 10 s", "median speed-up", "worst full/paper", "target met"],
            lines,
            "lrrll",
        ),
    ]


def solver_table(rows: Sequence[Row]) -> list[str]:
    """Gurobi against HiGHS on the models whose MILPs fit the Gurobi licence."""
    ok = _ok(rows)
    skipped = sorted({r["model"] for r in rows if r["solver"] == "gurobi" and r["status"] != "ok"})
    body = []
    for model in dict.fromkeys(r["model"] for r in ok):
        runs = [r for r in ok if r["model"] == model]
        pairs = pair_ratios(runs, "solver", "gurobi", "highs")
        if pairs:
            paired = {(r["config"], r["formulation"]) for r in runs if r["solver"] == "gurobi"}
            both = [r for r in runs if (r["config"], r["formulation"]) in paired]
            highs = [r for r in both if r["solver"] == "highs"]
            gurobi = [r for r in both if r["solver"] == "gurobi"]
            body.append(
                [
                    model,
                    len(pairs),
                    _seconds_cell(highs),
                    _seconds_cell(gurobi),
                    _median_cell(pairs),
                ]
            )
    if not body and not skipped:
        return []
    lines = ["## Gurobi against HiGHS", ""]
    if body:
        header = ["model", "paired runs", "HiGHS s", "Gurobi s", "Gurobi/HiGHS"]
        lines += _table(header, body, "lrrrr")
    if skipped:
        why = {
            r["model"]: r["status"] for r in rows if r["solver"] == "gurobi" and r["status"] != "ok"
        }
        lines += [f"Gurobi not run on {m} ({why[m]})." for m in skipped] + [""]
    return lines


def runs_table(rows: Sequence[Row]) -> list[str]:
    """Every run, as measured."""
    stage_names = _stage_names(rows)
    body = []
    for r in rows:
        if r["status"] != "ok":
            short = ":".join(r["status"].split(":")[:2])  # the details are in the CSV
            body.append([r["model"], r["config"], r["formulation"], r["solver"], short] + [""] * 10)
            continue
        stages = " / ".join(f"{_f(r, f'seconds_{s}') or 0:.1f}" for s in stage_names)
        acc = f"{_pct(r, 'acc_before')} → {_pct(r, 'acc_after')}" if r.get("acc_before") else "–"
        body.append(
            [
                r["model"],
                r["config"],
                r["formulation"],
                r["solver"],
                "complete" if _complete(r) else "incomplete",
                f"{_f(r, 'seconds') or 0:.1f}",
                stages,
                r["stably_active"],
                r["stably_inactive"],
                r["unstable"],
                r["undecided"],
                r["milp_candidates"],
                r["connections_removed_pct"],
                acc,
                r["verified"],
            ]
        )
    header = [
        "model",
        "config",
        "formulation",
        "solver",
        "result",
        "s",
        f"s {'/'.join(stage_names)}",
        "active",
        "inactive",
        "unstable",
        "undecided",
        "MILP candidates",
        "conn. removed %",
        "accuracy %",
        "verified",
    ]
    return ["## All runs", "", *_table(header, body, "lllllrlrrrrrrll")]


def _stage_names(rows: Sequence[Row]) -> list[str]:
    """The stages timed in the CSV (its ``seconds_*`` columns), in column order."""
    first = rows[0] if rows else {}
    return [k.removeprefix("seconds_") for k in first if k.startswith("seconds_")]


def times_table(rows: Sequence[Row]) -> list[str]:
    """Seconds of every configuration on every model: the time plot as numbers."""
    labels = sorted(
        {tuple(r[k] for k in SETTINGS) for r in rows},
        key=lambda t: tuple(_ORDER.get(v, 9) for v in t),
    )
    index = {(r["model"], *(r[k] for k in SETTINGS)): r for r in rows}
    body = []
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = []
        for label in labels:
            r = index.get((model, *label))
            if r is None or r["status"] != "ok":
                cells.append("–" if r is None else r["status"].split(":")[0])
            else:
                cells.append(f"{_f(r, 'seconds') or 0:.1f}" + ("" if _complete(r) else "*"))
        body.append([model, *cells])
    header = ["model", *("/".join(label) for label in labels)]
    return [
        "## Seconds per configuration",
        "",
        "config/formulation/solver; `*`: hit the time limit with neurons left undecided.",
        "",
        *_table(header, body, "l" + "r" * len(labels)),
    ]


def models_table(rows: Sequence[Row]) -> list[str]:
    """What each model is, and which data its runs used to refute stability."""
    body, seen = [], set()
    for r in rows:
        if r["status"] == "ok" and r["model"] not in seen:
            seen.add(r["model"])
            body.append(
                [
                    r["model"],
                    r["arch"],
                    r["dataset"] or "?",
                    r["l1"] or "?",
                    r["data"],
                    r["connections_before"],
                ]
            )
    header = ["model", "hidden layers", "dataset", "L1", "refutation data", "connections"]
    return [
        "## Models",
        "",
        "Refutation data are the training inputs (the paper's preprocessing); a digits "
        "stand-in of the same input size replaces a dataset that is not on disk (its points "
        "are in the box, so its witnesses are as valid; there is then no accuracy).",
        "",
        *_table(header, body, "lllllr"),
    ]


# ---- the hard suite: the exact stage --------------------------------------------

#: issue 9's acceptance: the new default (``full``) against the old exact stage
#: (``milp-interval``), and the shapes that must complete within HARD_LIMIT_S
NEW, OLD = "full", "milp-interval"
HARD_LIMIT_S, HARD_SLOW_S = TARGETS.hard_limit_s, TARGETS.hard_slow_s
#: per input size, the (depth, width) shapes up to which every model must complete
HARD_SCOPE = TARGETS.hard_scope
_EXACT = ("tighten", "bab", "milp", "other", "undecided")


def widths_of(arch: str) -> list[int]:
    """Hidden widths from an arch label: '5x100' or '116-248'."""
    if "x" in arch:
        depth, width = arch.split("x")
        return [int(width)] * int(depth)
    return [int(w) for w in arch.split("-")]


def in_hard_scope(inputs: int, arch: str) -> bool:
    """Whether issue 9 requires this model to complete within the limit."""
    widths = widths_of(arch)
    caps = HARD_SCOPE.get(inputs, ())
    return any(len(widths) <= depth and max(widths) <= width for depth, width in caps)


def _decided_cell(row: Row | None) -> str:
    """'5: bab 3, milp 1, undecided 1' for a run whose exact stage had 5 candidates."""
    if row is None or row["status"] != "ok" or row.get("exact_candidates", "") == "":
        return "–" if row is None else row["status"].split(":")[0]
    parts = [f"{k} {row[f'exact_{k}']}" for k in _EXACT if (_f(row, f"exact_{k}") or 0) > 0]
    return row["exact_candidates"] + (": " + ", ".join(parts) if parts else "")


def _time_cell(row: Row | None) -> str:
    if row is None or row["status"] != "ok":
        return "–" if row is None else row["status"].split(":")[0]
    return f"{_f(row, 'seconds') or 0:.1f}" + ("" if _complete(row) else "*")


def _speedup(slow: Row | None, fast: Row | None) -> tuple[float, int] | None:
    """seconds(slow) / seconds(fast), with how many of the two runs are incomplete: with
    one the ratio is a bound, with both it says nothing (each stopped at the limit)."""
    if not (slow and fast and slow["status"] == fast["status"] == "ok"):
        return None
    t_slow, t_fast = _f(slow, "seconds"), _f(fast, "seconds")
    if t_slow is None or not t_fast:
        return None
    return t_slow / t_fast, (not _complete(slow)) + (not _complete(fast))


def _ratio_cell(pair: tuple[float, int] | None) -> str:
    if pair is None:
        return "–"
    return "?" if pair[1] == 2 else f"{pair[0]:.1f}x" + "*" * pair[1]


def _hard_settings(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(formulation, solver) settings measured with both the new and the old exact stage."""
    have = {(r["config"], r["formulation"], r["solver"]) for r in rows}
    pairs = {(f, s) for c, f, s in have if c == NEW and (OLD, f, s) in have}
    return sorted(pairs, key=lambda p: (_ORDER.get(p[0], 9), _ORDER.get(p[1], 9), p))


def hard_tables(rows: Sequence[Row], disagreements: Sequence[str] = ()) -> list[str]:
    """Per model: the neurons that reached the exact stage and how each config decided
    them, seconds per config and speed-ups; then issue 9's acceptance targets."""
    settings = _hard_settings(rows)
    if not settings:
        return []
    configs = [c for c in _values(rows, "config") if c in (NEW, OLD, "bab", "paper")]
    index = {(r["model"], r["config"], r["formulation"], r["solver"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = [
        "## Hard suite: the exact stage",
        "",
        "Neurons that reached the exact stage (survived bounds, sampling and, except in "
        "`paper`, the witness search) and the stage that decided each: `tighten` the "
        "tightened bounds before the prover, `bab` the branch-and-bound prover, `milp` the "
        "MILP (a proof, a solution, or a witness mined from one), `other` any other stage, "
        "`undecided` none. Seconds are the whole "
        "pipeline; `*` hit the time limit with neurons undecided. Speed-ups are "
        f"seconds of the other config over `{NEW}`, same run; `*` involves an incomplete run "
        "(its seconds are a lower bound, so the ratio is a bound), `?` both runs stopped at "
        "the limit (no ratio).",
        "",
    ]
    for form, solver in settings:
        head = ["model", "inputs", "arch", "L1"]
        head += [f"{c}: candidates" for c in configs] + [f"{c} s" for c in configs]
        head += [f"{c}/{NEW}" for c in configs if c != NEW]
        body = []
        for model in models:
            runs = {c: index.get((model, c, form, solver)) for c in configs}
            any_run = next((r for r in runs.values() if r), None)
            if any_run is None or runs[NEW] is None:
                continue
            body.append(
                [model, any_run["inputs"] or "?", any_run["arch"], any_run["l1"] or "?"]
                + [_decided_cell(runs[c]) for c in configs]
                + [_time_cell(runs[c]) for c in configs]
                + [_ratio_cell(_speedup(runs[c], runs[NEW])) for c in configs if c != NEW]
            )
        align = "lrll" + "l" * len(configs) + "r" * (2 * len(configs) - 1)
        lines += [f"Formulation {form}, solver {solver}:", "", *_table(head, body, align)]
        lines += _undecided_lines([index.get((m, NEW, form, solver)) for m in models])
        lines += hard_acceptance(rows, form, solver, disagreements)
    return lines


def _undecided_lines(runs: Sequence[Row | None], most: int = 12) -> list[str]:
    """Which neurons each incomplete ``full`` run left undecided, and why."""
    out = []
    for r in runs:
        if r and r["status"] == "ok" and not _complete(r) and r.get("undecided_why"):
            items = r["undecided_why"].split("; ")
            more = f"; … {len(items) - most} more" if len(items) > most else ""
            out.append(f"- {r['model']}: {'; '.join(items[:most])}{more}")
    if not out:
        return []
    return [f"Undecided in the incomplete `{NEW}` runs (L layer, n neuron: why):", "", *out, ""]


def hard_acceptance(
    rows: Sequence[Row], form: str, solver: str, disagreements: Sequence[str] = ()
) -> list[str]:
    """Issue 9's targets, met or not, for one formulation and solver."""
    runs = [r for r in rows if r["formulation"] == form and r["solver"] == solver]
    new = {r["model"]: r for r in runs if r["config"] == NEW}
    body = []
    for inputs, caps in HARD_SCOPE.items():
        shapes = " and ".join(f"{d}x{w}" for d, w in caps)
        scope = [
            m
            for m, r in new.items()
            if r["inputs"]
            and in_hard_scope(int(r["inputs"]), r["arch"])
            and int(r["inputs"]) == inputs
        ]
        late = [m for m in scope if not _within(new[m], HARD_LIMIT_S)]
        cut_short = [m for m in late if _cut_short(new[m])]
        verdict = _met(bool(scope) and not late, bool(scope))
        if cut_short and len(cut_short) == len(late):
            verdict = "**undetermined**"  # they may still complete within the target
        body.append(
            [
                f"{inputs} inputs, up to {shapes}: `{NEW}` complete within {HARD_LIMIT_S:g} s",
                f"{len(scope) - len(late)} of {len(scope)}"
                + (f" (not: {', '.join(_late(new[m]) for m in late)})" if late else ""),
                verdict,
            ]
        )
    for other, targeted in ((OLD, True), ("paper", False)):
        of = {r["model"]: r for r in runs if r["config"] == other}
        pairs = {m: _speedup(of.get(m), new[m]) for m in new}
        pairs = {m: p for m, p in pairs.items() if p is not None}
        if not pairs:
            continue
        slow = [m for m in pairs if (_f(of[m], "seconds") or 0) > HARD_SLOW_S]
        known = [m for m in slow if pairs[m][1] < 2]
        unknown = len(slow) - len(known)
        star = "*" if any(pairs[m][1] for m in known) else ""
        median = statistics.median(pairs[m][0] for m in known) if known else None
        measured = "no such model" if not slow else "no ratio"
        if median is not None:
            measured = f"{median:.1f}x{star} over {len(known)} models"
        if unknown:
            measured += f"; {unknown} with both runs at the limit"
        worst_median, best_median = _median_range(slow, pairs, of, new)
        verdict = _met(worst_median >= TARGET_SPEEDUP, bool(slow))
        if unknown and worst_median >= TARGET_SPEEDUP:
            measured += f", so at least {worst_median:.1f}x whatever those would take"
        elif worst_median < TARGET_SPEEDUP <= best_median:
            verdict = "**undetermined**"
        elif star and median is not None and median < TARGET_SPEEDUP:
            verdict += " (`*`: a bound)"
        determined = {m: p for m, p in pairs.items() if p[1] < 2}
        worst_text, worst_verdict = "no pair with a complete run", "**undetermined**"
        if determined:
            worst = min(determined, key=lambda m: determined[m][0])
            slowdown = 1 / determined[worst][0]
            worst_text = f"worst {NEW}/{other} {slowdown:.2f}{'*' * determined[worst][1]} ({worst})"
            worst_verdict = _met(slowdown <= TARGET_WORST, True)
            if slowdown <= TARGET_WORST and len(determined) < len(pairs):
                worst_verdict = "**undetermined**"
            if len(determined) < len(pairs):
                worst_text += f"; {len(pairs) - len(determined)} with both runs at the limit"
        body += [
            [
                f"median speed-up `{NEW}` over `{other}` >= {TARGET_SPEEDUP:g}x, models where "
                f"`{other}` takes > {HARD_SLOW_S:g} s",
                measured,
                verdict if targeted else "(reference)",
            ],
            [
                f"no model more than {TARGET_WORST:g}x slower with `{NEW}` than `{other}`",
                worst_text,
                worst_verdict if targeted else "(reference)",
            ],
        ]
    body.append(
        [
            "same stable sets in every run of a model (agreement check, all settings)",
            f"{len(disagreements)} disagreement(s)",
            _met(not disagreements, True),
        ]
    )
    return [
        f"Acceptance (issue 9), formulation {form}, solver {solver}:",
        "",
        *_table(["target", "measured", ""], body, "lrl"),
    ]


def _median_range(
    models: Sequence[str],
    pairs: dict[str, tuple[float, int]],
    old: dict[str, Row],
    new: dict[str, Row],
) -> tuple[float, float]:
    """The median speed-up over ``models`` at worst and at best. A ratio with one run at
    the limit is a bound (from below when the old run stopped, from above when the new
    one did); with both at the limit it could be anything. When even the worst case
    reaches the target, the runs at the limit cannot change the verdict."""
    if not models:
        return 0.0, 0.0
    worst, best = [], []
    for m in models:
        ratio = pairs[m][0]
        worst.append(ratio if _complete(new[m]) else 0.0)
        best.append(ratio if _complete(old[m]) else float("inf"))
    return statistics.median(worst), statistics.median(best)


def _cut_short(row: Row) -> bool:
    """Whether the run stopped at a limit shorter than HARD_LIMIT_S, undecided."""
    limit = _f(row, "time_limit")
    return limit is not None and limit < HARD_LIMIT_S and not _complete(row)


def _late(row: Row) -> str:
    """The model, and the run's own limit when it stopped short of HARD_LIMIT_S."""
    return row["model"] + (f" at its {row['time_limit']} s limit" if _cut_short(row) else "")


def _within(row: Row, limit: float) -> bool:
    return row["status"] == "ok" and _complete(row) and (_f(row, "seconds") or 0) <= limit


def _met(ok: bool, applicable: bool) -> str:
    if not applicable:
        return "n/a"
    return "**met**" if ok else "**not met**"


def all_tables(rows: Sequence[Row], disagreements: Sequence[str] = ()) -> list[str]:
    return (
        hard_tables(rows, disagreements)
        + compression_table(rows)
        + pipeline_target(rows)
        + ratio_table(rows)
        + solver_table(rows)
        + times_table(rows)
        + models_table(rows)
        + runs_table(rows)
    )


# ---- plots -----------------------------------------------------------------------


def plot_all(rows: Sequence[Row], out: Path) -> list[str]:
    """Write the PNGs into ``out``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    names = [plot_times(rows, out / "time_per_config.png")]
    name = plot_compression(rows, out / "compression_vs_l1.png")
    return names + ([name] if name else [])


def plot_times(rows: Sequence[Row], path: Path) -> str:
    """Grouped bars: seconds of each configuration on each model (hatched: incomplete)."""
    import matplotlib.pyplot as plt

    ok = _ok(rows)
    models = list(dict.fromkeys(r["model"] for r in ok))
    labels = sorted(
        {(r["config"], r["formulation"], r["solver"]) for r in ok},
        key=lambda t: tuple(_ORDER.get(v, 9) for v in t),
    )
    index = {(r["model"], r["config"], r["formulation"], r["solver"]): r for r in ok}
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(models) * max(1, len(labels)) / 4 + 3), 4.5))
    for i, label in enumerate(labels):
        xs, ys, hatches = [], [], []
        for m, model in enumerate(models):
            r = index.get((model, *label))
            if r is not None and _f(r, "seconds") is not None:
                xs.append(m + (i - (len(labels) - 1) / 2) * width)
                ys.append(max(_f(r, "seconds"), 1e-3))
                hatches.append("" if _complete(r) else "//")
        bars = ax.bar(xs, ys, width, label="/".join(label))
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (hatched: hit the time limit)")
    ax.set_xticks(range(len(models)), models, rotation=40, ha="right", fontsize=7)
    ax.set_title("Stability time per configuration (config/formulation/solver)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_compression(rows: Sequence[Row], path: Path) -> str | None:
    """Connections removed against L1, one line per dataset and architecture."""
    import matplotlib.pyplot as plt

    series: dict[str, dict[float, list[Row]]] = {}
    for r in _ok(rows):
        l1 = _f(r, "l1")
        if l1 is not None:
            key = f"{r['dataset']} {r['arch']}"
            series.setdefault(key, {}).setdefault(l1, []).append(r)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for key, points in sorted(series.items()):
        xs = sorted(points)
        ys = [_f(representative(points[x]), "connections_removed_pct") or 0.0 for x in xs]
        ax.plot(xs, ys, marker="o", label=key)
    ax.set_xlabel("L1 regularisation")
    ax.set_ylabel("connections removed (%)")
    ax.set_title("Exact compression against L1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
