"""The sweep: models x stage configurations x formulations x solvers, one CSV row per run.

Rows are appended and flushed as runs finish, so a sweep stopped by Ctrl-C, a crash
or a reboot resumes where it stopped: a run whose key (model, config, formulation,
solver) already has an ``ok`` or ``skipped`` row is not run again; rows with an
error are retried and the newest row of a key wins. Every run keeps the state of
every neuron, so runs of one model can be checked against each other: exact methods
that disagree mean a bug, and the report says so before anything else.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

import formulations as formulation_registry
from exactcompress.distributed import cluster, require_distributed, wanted
from exactcompress.domain import Box
from exactcompress.errors import ExactCompressError
from exactcompress.prune import compress as prune
from exactcompress.report import ACTIVE, INACTIVE, STATES, UNDECIDED, UNSTABLE, StabilityReport
from exactcompress.solvers import ADAPTERS, require
from exactcompress.stability import STAGE_NAMES, StabilityOptions, find_stable_neurons
from exactcompress.train import accuracy
from exactcompress.verify import verify

from . import tables
from .suite import DEFAULT_CACHE, BenchModel, LoadedModel, load

CONFIGS: dict[str, Callable[..., StabilityOptions]] = {
    "full": StabilityOptions,
    "full-lp": partial(StabilityOptions, tighten="lp"),
    "milp-interval": partial(StabilityOptions, prover="milp", bounds="interval"),
    "milp-certify": partial(StabilityOptions, prover="milp", bounds="interval", certify=True),
    "bab": partial(StabilityOptions, prover="bab"),
    "paper": StabilityOptions.paper,
    "paper-lp": partial(StabilityOptions.paper, tighten="lp"),
    "paper-certify": partial(StabilityOptions.paper, certify=True),
    # the cheap stages' bounds side by side (suite "bounds"): --bounds x --tighten
    **{
        f"{b}{'-lp' if t == 'lp' else ''}": partial(
            StabilityOptions, bounds=b, tighten=t, prover="milp"
        )
        for b in ("interval", "crown", "alpha-crown")
        for t in ("none", "lp")
    },
}
#: which stage decided the neurons that reached the exact stage: one CSV column each
#: (witnesses mined from MILP solutions count as milp, the decider exact.py records)
EXACT_OUTCOMES = ("tighten", "bab", "milp", "other", "undecided")
FIELDS = (
    "model", "config", "formulation", "solver", "status",
    "dataset", "inputs", "arch", "l1", "data", "time_limit",
    "seconds", *(f"seconds_{s}" for s in STAGE_NAMES),
    "stably_active", "stably_inactive", "unstable", "undecided", "complete",
    "milp_candidates", "milp_solves", "exact_candidates",
    *(f"exact_{o}" for o in EXACT_OUTCOMES), "undecided_why", "stable_pct_per_layer",
    "connections_before", "connections_after", "connections_removed_pct",
    "parameters_before", "parameters_after", "parameters_removed_pct", "channels_removed_pct",
    "acc_before", "acc_after", "verified", "solver_used", "states",
)  # fmt: skip
KEY = ("model", "config", "formulation", "solver")
CSV_NAME, REPORT_NAME = "results.csv", "report.md"

# One letter per neuron in the ``states`` column, layers separated by '|'.
_CODE = {ACTIVE: "A", INACTIVE: "I", UNSTABLE: "U", UNDECIDED: "D"}
_STATE_OF = {v: k for k, v in _CODE.items()}
_VERIFY_SAMPLES = 2000

Say = Callable[[str], None]


def say_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunKey:
    model: str
    config: str
    formulation: str
    solver: str

    @classmethod
    def of(cls, row: dict) -> RunKey:
        return cls(*(row[k] for k in KEY))

    @property
    def label(self) -> str:
        return f"{self.config}/{self.formulation}/{self.solver}"


@dataclass
class SweepOutcome:
    rows: list[dict]
    ran: int
    interrupted: bool
    problems: list[str]
    csv_path: Path
    report_path: Path


# ---- states ----------------------------------------------------------------------


def encode_states(states: Sequence[np.ndarray]) -> str:
    return "|".join("".join(_CODE[s] for s in layer) for layer in states)


def decode_states(text: str) -> list[np.ndarray]:
    return [np.array([_STATE_OF[c] for c in layer], dtype=object) for layer in text.split("|")]


def disagreements(rows: Iterable[dict]) -> list[str]:
    """Pairs of runs of one model that classify some neuron differently.

    Only decided neurons count: a proof and a witness cannot both be right, so any
    difference between two runs is a bug, complete runs or not.
    """
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] == "ok" and row.get("states"):
            by_model.setdefault(row["model"], []).append(row)
    found = []
    for model, runs in by_model.items():
        for a, b in itertools.combinations(runs, 2):
            sa, sb = decode_states(a["states"]), decode_states(b["states"])
            la, lb = RunKey.of(a).label, RunKey.of(b).label
            if [len(s) for s in sa] != [len(s) for s in sb]:
                found.append(f"{model}: {la} and {lb} report different layer widths")
                continue
            diffs = [
                (layer, int(j), x[j], y[j])
                for layer, (x, y) in enumerate(zip(sa, sb, strict=True))
                for j in np.flatnonzero((x != y) & (x != UNDECIDED) & (y != UNDECIDED))
            ]
            if diffs:
                layer, j, x, y = diffs[0]
                found.append(
                    f"{model}: {la} and {lb} disagree on {len(diffs)} neuron(s), e.g. layer "
                    f"{layer + 1} neuron {j}: {x} vs {y}"
                )
    return found


# ---- CSV -------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    """The newest row of every key, in file order; columns an older version did not
    write read as empty."""
    return list({RunKey.of(row): row for row in _read_all(path)}.values())


def _read_all(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames and not set(reader.fieldnames) <= set(FIELDS):
            raise ExactCompressError(
                f"{path} was written by another version of the benchmarks (it has columns "
                "this one does not know); use another --out folder or move the file away"
            )
        return [{**dict.fromkeys(FIELDS, ""), **row} for row in reader]


def upgrade_csv(path: Path) -> None:
    """Rewrite a CSV of an older version (fewer columns) with today's columns, so that
    the runs it holds still count and new rows can be appended to it."""
    with open(path, newline="") as f:
        header = next(csv.reader(f), None)
    if header is None or tuple(header) == FIELDS:
        return
    rows = _read_all(path)
    tmp = path.with_suffix(".upgrade")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def append_row(path: Path, row: dict) -> None:
    """One row, written by one call and flushed to disk before the next run starts, so
    that an interrupted sweep leaves whole rows only."""
    new = not path.is_file() or path.stat().st_size == 0
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    if new:
        writer.writeheader()
    writer.writerow({k: row.get(k, "") for k in FIELDS})
    with open(path, "a", newline="") as f:
        f.write(text.getvalue())
        f.flush()
        os.fsync(f.fileno())


# ---- one run ---------------------------------------------------------------------


def run_one(
    lm: LoadedModel,
    key: RunKey,
    time_limit: float | None,
    say: Say | None,
    jobs: int | None = None,
) -> dict:
    """Stability, pruning, accuracy and verification of one model in one configuration;
    ``jobs`` as in StabilityOptions (None: every core, for a run alone on its machine)."""
    row = _describe(lm, key, time_limit)
    options = CONFIGS[key.config](
        formulation=key.formulation, solver=key.solver, time_limit=time_limit, jobs=jobs
    )
    try:
        require(key.solver)
    except ExactCompressError as err:
        row["status"] = f"skipped: {err}"
        return row
    try:
        report = find_stable_neurons(
            lm.net, Box.uniform(lm.net.widths[0]), lm.train_x, options, say
        )
    except Exception as err:  # a sweep records a failing run and goes on (Ctrl-C still stops it)
        row["status"] = _failure(err)
        return row
    if report.interrupted:
        raise KeyboardInterrupt  # Ctrl-C inside the pipeline: stop the sweep, record nothing
    compressed, summary = prune(lm.net, report.states)
    counts = report.counts()
    before = sum(w.size for w in lm.net.weights)
    after = sum(w.size for w in compressed.weights)
    milp = report.extra.get("milp", {})
    row.update(
        status="ok",
        seconds=_round(report.seconds.get("total")),
        **{f"seconds_{s}": _round(report.seconds.get(s)) for s in STAGE_NAMES},
        **{k: counts[k] for k in STATES},
        complete=report.complete,
        milp_candidates=milp.get("candidates", 0),
        milp_solves=milp.get("solves", 0),
        **exact_outcomes(report),
        undecided_why=undecided_why(report),
        stable_pct_per_layer=";".join(
            f"{100 * np.isin(s, (ACTIVE, INACTIVE)).mean():.1f}" for s in report.states
        ),
        connections_before=before,
        connections_after=after,
        connections_removed_pct=f"{100 * (before - after) / before:.2f}",
        **_parameters(summary),
        solver_used=report.solver,
        states=encode_states(report.states),
    )
    test_x = None
    if lm.test is not None:
        test_x, test_y = lm.test
        row["acc_before"] = f"{accuracy(lm.net, test_x, test_y):.4f}"
        row["acc_after"] = f"{accuracy(compressed, test_x, test_y):.4f}"
    check = verify(
        lm.net, compressed, Box.uniform(lm.net.widths[0]), data=test_x, n_samples=_VERIFY_SAMPLES
    )
    row["verified"] = "yes" if check.ok else f"NO (max rel diff {check.max_rel:.3g})"
    return row


def _parameters(summary) -> dict:
    """Parameters (a convolution's kernel, not its unrolled matrix) and, for networks
    with convolutions, the share of their channels removed."""
    before, after = summary.parameters_before, summary.parameters_after
    row = {
        "parameters_before": before,
        "parameters_after": after,
        "parameters_removed_pct": f"{100 * (before - after) / max(1, before):.2f}",
    }
    if summary.channels:
        total = sum(c["channels_before"] for c in summary.channels)
        kept = sum(c["channels_after"] for c in summary.channels)
        row["channels_removed_pct"] = f"{100 * (total - kept) / total:.2f}"
    return row


def exact_outcomes(report: StabilityReport) -> dict[str, int]:
    """How many neurons reached the exact stage, and which stage decided each of them
    (its decider; ``undecided`` when none did): the work the hard suite measures."""
    milp = report.extra.get("milp", {})
    why = milp.get("why_candidates")
    counts = dict.fromkeys(EXACT_OUTCOMES, 0)
    for cand in why or []:
        layer, j = cand["layer"] - 1, cand["neuron"]
        decider = report.deciders[layer][j] if report.states[layer][j] != UNDECIDED else ""
        counts[_outcome(decider)] += 1
    total = len(why) if why is not None else milp.get("candidates", 0)
    return {"exact_candidates": total, **{f"exact_{k}": v for k, v in counts.items()}}


def undecided_why(report: StabilityReport) -> str:
    """'L2 n5: time limit, max g in [-0.002, 0.01] (bab); ...' for every undecided neuron,
    from the report's notes and where its open extremes lie (the seen value, the best
    bound reached and the stage that reached it)."""
    why = dict(note.split(": ", 1) for note in report.notes if ": " in note)
    gaps: dict[tuple[int, int], str] = {}
    for c in report.candidates:
        ranges = [
            f"{e['extreme']} g in "
            + (
                f"[{e['seen']:.2g}, {e['bound']:.2g}]"
                if e["extreme"] == "max"
                else f"[{e['bound']:.2g}, {e['seen']:.2g}]"
            )
            + f" ({e['bound_by']})"
            for e in c.extremes
            if e["seen"] is not None
        ]
        if ranges:
            gaps[(c.layer - 1, c.neuron)] = ", " + ", ".join(ranges)
    return "; ".join(
        f"L{layer + 1} n{j}: {why.get(f'layer {layer + 1} neuron {j}', 'no reason recorded')}"
        + gaps.get((layer, int(j)), "")
        for layer, states in enumerate(report.states)
        for j in np.flatnonzero(states == UNDECIDED)
    )


def _outcome(decider: str) -> str:
    if not decider:
        return "undecided"
    return decider if decider in EXACT_OUTCOMES else "other"


def _describe(lm: LoadedModel, key: RunKey, time_limit: float | None) -> dict:
    m = lm.model
    l1 = m.l1 if m.l1 is not None else lm.meta.get("l1")
    return {
        **{k: getattr(key, k) for k in KEY},
        "dataset": m.dataset or lm.meta.get("dataset", ""),
        "inputs": lm.net.widths[0],
        "arch": lm.arch,
        "l1": "" if l1 is None else f"{float(l1):g}",
        "data": lm.data_note,
        "time_limit": "" if time_limit is None else f"{time_limit:g}",
    }


def _failure(err: Exception) -> str:
    """'skipped: licence: ...' for a MILP too large for a size-limited licence (known only
    once the cheap stages have run), 'error: ...' for anything else."""
    msg = " ".join(str(err).split()) or type(err).__name__
    if "licen" in msg.lower():
        return f"skipped: licence: {msg}"
    return f"error: {type(err).__name__}: {msg}"


def _round(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


# ---- the sweep -------------------------------------------------------------------


class ProgressBar:
    """A one-line text bar on stderr; messages print above it."""

    def __init__(self, total: int, done: int, stream=sys.stderr) -> None:
        self.total, self.done, self.stream = total, done, stream
        self.start, self.started_at = done, time.monotonic()
        self.label = ""
        self.tty = stream.isatty()

    def line(self) -> str:
        width = 24
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * round(width * frac) + "." * (width - round(width * frac))
        elapsed = time.monotonic() - self.started_at
        ran = self.done - self.start
        eta = f", eta {_clock(elapsed / ran * (self.total - self.done))}" if ran else ""
        return f"[{bar}] {self.done}/{self.total} runs, {_clock(elapsed)}{eta}  {self.label}"

    def show(self, label: str | None = None) -> None:
        """Redraw in place on a terminal; elsewhere (a log file) one line per new label."""
        if self.tty:
            self.label = self.label if label is None else label
            self.stream.write("\r" + self.line()[:160].ljust(160))
        elif label is not None and label != self.label:
            self.label = label
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1
        self.show()

    def say(self, msg: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 160 + "\r")
        self.stream.write(msg + "\n")
        self.show()

    def close(self) -> None:
        self.label = "done"
        self.stream.write(("\r" if self.tty else "") + self.line()[:160].ljust(160) + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def sweep(
    models: Sequence[BenchModel],
    out: str | os.PathLike,
    *,
    configs: Sequence[str] = ("full", "paper"),
    formulations: Sequence[str] = ("network", "neuron"),
    solvers: Sequence[str] = ("highs", "gurobi"),
    time_limit: float | None = 60.0,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
    data_dir: str | None = None,
    plots: bool = True,
    verbose: bool = False,
    stream=None,
    workers: int = 1,
    scheduler: str | None = None,
) -> SweepOutcome:
    """Run every missing (model, config, formulation, solver), then write the report.
    ``workers`` > 1 or ``scheduler``: each run is a task on a Dask cluster."""
    if wanted(workers, scheduler):
        require_distributed()  # a one-line error before any work
    for kind, names, known in (
        ("config", configs, CONFIGS),
        ("formulation", formulations, formulation_registry.FORMULATIONS),
        ("solver", solvers, ADAPTERS),
    ):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ExactCompressError(
                f"unknown {kind} {unknown[0]!r}; choose from {', '.join(known)}"
            )
    models = list({m.name: m for m in models}.values())  # a model given twice runs once
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / CSV_NAME
    if csv_path.is_file():
        upgrade_csv(csv_path)
    done = {RunKey.of(r) for r in read_rows(csv_path) if not r["status"].startswith("error")}
    plan = [
        (m, RunKey(m.name, c, f, s))
        for m in models
        for c, f, s in itertools.product(configs, formulations, solvers)
    ]
    todo = [(m, k) for m, k in plan if k not in done]
    # sys.stderr when called, not when imported (a test may have swapped it since)
    bar = ProgressBar(len(plan), len(plan) - len(todo), stream or sys.stderr)
    if len(todo) < len(plan):
        bar.say(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already in {csv_path}")
    ran, interrupted = 0, False
    try:
        if todo and wanted(workers, scheduler):
            with cluster(workers, scheduler, bar.say) as client:
                ran = _run_on_cluster(client, todo, csv_path, bar, time_limit, cache_dir, data_dir)
        else:
            for lm, keys in _loaded(todo, csv_path, bar, cache_dir, data_dir):
                for key in keys:
                    bar.show(f"{lm.model.name} {key.label}")
                    row = run_one(lm, key, time_limit, bar.say if verbose else None)
                    _write(csv_path, row, bar)
                    ran += 1
    except KeyboardInterrupt:
        interrupted = True
        bar.say("interrupted: finished runs are saved; run the same command again to resume")
    finally:
        bar.close()
    rows = read_rows(csv_path)
    report_path, problems = write_report(rows, out, plots, time_limit)
    return SweepOutcome(rows, ran, interrupted, problems, csv_path, report_path)


def _loaded(
    todo: list[tuple[BenchModel, RunKey]],
    csv_path: Path,
    bar: ProgressBar,
    cache_dir: str | os.PathLike,
    data_dir: str | None,
) -> Iterator[tuple[LoadedModel, list[RunKey]]]:
    """Each model of ``todo`` loaded (trained on demand), with its runs; a model that
    cannot be loaded gets an error row for each of its runs instead."""
    for model, pairs in itertools.groupby(todo, key=lambda mk: mk[0]):
        keys = [k for _, k in pairs]
        bar.show(f"{model.name}: loading")
        try:
            lm = load(model, cache_dir, data_dir, bar.say)
        except ExactCompressError as err:
            for key in keys:
                append_row(csv_path, {**asdict(key), "status": f"error: {err}"})
                bar.advance()
            bar.say(f"{model.name}: {err}")
            continue
        yield lm, keys


def _write(csv_path: Path, row: dict, bar: ProgressBar) -> None:
    append_row(csv_path, row)
    if row["status"] != "ok":
        bar.say(f"{row['model']} {RunKey.of(row).label}: {row['status']}")
    bar.advance()


def _run_on_cluster(
    client,
    todo: list[tuple[BenchModel, RunKey]],
    csv_path: Path,
    bar: ProgressBar,
    time_limit: float | None,
    cache_dir: str | os.PathLike,
    data_dir: str | None,
) -> int:
    """One task per run, each alone in a worker process with its own time limit. The
    client loads (trains) each model once, scatters it, and alone writes the rows, as
    the runs finish, while it loads the next model; returns how many rows it wrote."""
    from distributed import as_completed

    finished = as_completed()
    keys_of: dict = {}
    ran = 0
    try:
        for lm, keys in _loaded(todo, csv_path, bar, cache_dir, data_dir):
            shared = client.scatter(lm, hash=False)
            for key in keys:
                # one thread per run: a worker process runs one run (README)
                fut = client.submit(run_one, shared, key, time_limit, None, 1, pure=False)
                keys_of[fut] = key
                finished.add(fut)
            bar.show(f"{lm.model.name}: {len(keys)} runs submitted")
            for fut in finished.next_batch(block=False) if finished.has_ready() else []:
                _write(csv_path, _cluster_row(fut, keys_of.pop(fut)), bar)
                ran += 1
        for fut in finished:
            _write(csv_path, _cluster_row(fut, keys_of.pop(fut)), bar)
            ran += 1
    finally:
        client.cancel(list(keys_of))
    return ran


def _cluster_row(fut, key: RunKey) -> dict:
    """The run's row, or an error row (retried on resume) when its task failed or its
    worker was lost."""
    try:
        return fut.result()
    except Exception as err:  # a sweep records a failing run and goes on
        return {**asdict(key), "status": _failure(err)}


# ---- the report ------------------------------------------------------------------


def problems_of(rows: Sequence[dict], found: Sequence[str]) -> list[str]:
    """What must be read first: the disagreements ``found`` and failed equivalence checks."""
    out = [f"DISAGREEMENT: {d}" for d in found]
    out += [
        f"VERIFICATION FAILED: {r['model']} {RunKey.of(r).label}: {r['verified']}"
        for r in rows
        if r["status"] == "ok" and r.get("verified", "yes") != "yes"
    ]
    return out


def write_report(
    rows: Sequence[dict], out: Path, plots: bool, time_limit: float | None
) -> tuple[Path, list[str]]:
    """report.md (and the PNG plots) from every row of the CSV."""
    found = disagreements(rows)
    problems = problems_of(rows, found)
    lines = ["# exactcompress benchmarks", ""]
    if problems:
        lines += ["> **WARNING: exact methods disagree or a compressed network differs.**", ">"]
        lines += [f"> - **{p}**" for p in problems] + [""]
    else:
        lines += [
            "All runs of each model agree on every neuron they decided, and every "
            "compressed network passed the equivalence check.",
            "",
        ]
    ok = [r for r in rows if r["status"] == "ok"]
    lines += [
        f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}",
        f"- time limit per run: {'none' if time_limit is None else f'{time_limit:g} s'}; "
        f"{len(ok)} runs ok, {len(rows) - len(ok)} skipped or failed",
        "- configs: full = StabilityOptions() (interval bounds, data, random points and "
        "corners, gradient witness search, then the exact stage with bounds tightened and "
        "the prover chosen automatically); full-lp = the same with --tighten lp; "
        "milp-interval = --prover milp --bounds interval (the exact stage before issue 9); "
        "bab = --prover bab; paper = StabilityOptions.paper() (interval big-M, training "
        "data only, MILP); branch and bound uses every core (--jobs default) when runs go "
        "one at a time, one thread per run on a Dask cluster",
        "- times are the whole stability pipeline (all stages) in seconds; `*` marks "
        "figures involving a run that hit the time limit (its time is a lower bound)",
        "",
    ]
    lines += tables.all_tables(rows, found)
    if plots and ok:
        names = tables.plot_all(rows, out)
        lines += ["## Plots", ""] + [f"![{n}]({n})" for n in names] + [""]
    (out / REPORT_NAME).write_text("\n".join(lines))
    return out / REPORT_NAME, problems
