"""The exact stage on a Dask cluster (``--workers N``, ``--scheduler ADDRESS``).

Why: the candidates that reach the exact stage are independent questions, so they can
be answered side by side in worker processes, here or on other machines. ``SERIAL``
(the default, ``--workers 1``) is the in-process code of bab.py and exact.py, and
``dask.distributed`` is imported only when a cluster is asked for.

How: a task is one candidate (branch and bound, the neuron MILP) or one layer's
candidates (the network and layer strategies). It gets the network, box and bounds
(scattered once per stage) and a snapshot of the evidence (scattered once per round:
one layer for per-candidate tasks, so that proofs of earlier layers are fixed for later
ones, as in the serial order), rebuilds a NeuronEvidence, runs the serial code on it
with its own seed, and returns what it added: proofs, give-ups with their notes, the
witness points, and the extremes seen. Each finished task's witnesses are checked
against the candidates still queued (the forward-pass test of NeuronEvidence.observe)
and refuted ones are cancelled; at the end of a round every result is merged in
candidate order. A branch-and-bound candidate that runs long while workers are idle is
spread over them: its search stops, returns its open subdomains in parts, and each part
goes on as a task of its own (BabRound); the candidate is proved once every part is
closed. A proof is sound wherever it was computed and a witness is a forward
pass, so the states cannot depend on the number of workers; only a time limit can leave
undecided in one run what another decides. A task lost with its worker, or still running
past the time limit, leaves its candidates undecided: nothing is proved without the
task's own result.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import math
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from formulations import DEFAULT_RELU, FormulationSpec

from .bab import STAGE as BAB
from .bab import (
    BabStats,
    CandidateOutcome,
    CandidateSearch,
    Frontier,
    one_thread,
    run_bab,
    undecided_note,
    with_crown,
)
from .bounds import LayerBounds, pick_device
from .domain import Box
from .errors import ExactCompressError
from .evidence import NeuronEvidence
from .exact import STAGE as MILP
from .exact import (
    STRATEGIES,
    build_model,
    decide_by_extreme,
    open_candidates,
    run_exact_stage,
    run_network_strategy,
)
from .network import ReLUNetwork
from .solvers import solver_factory

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster

    from .stability import StabilityOptions

Progress = Callable[[str], None]
Candidate = tuple[int, int, str]

INSTALL = "pip install 'exactcompress[dist]'"
#: seconds past the time limit before a task still running is abandoned (undecided)
GRACE = 10.0
#: seconds to wait for --scheduler to answer
CONNECT_TIMEOUT = 10
#: seconds between two looks at the running tasks, and between two progress lines
POLL, PROGRESS_EVERY = 0.05, 5.0
#: a branch-and-bound task hands its open subdomains out to idle workers only after
#: SHARE_AFTER seconds of its own (a part costs a task's start; a search whose subdomain
#: LPs are still to come waits for them, see ``CandidateSearch._shareable``); it asks
#: whether a worker is idle at most every SHARE_POLL seconds (a round trip to the
#: scheduler)
SHARE_AFTER, SHARE_POLL = 3.0, 0.5
#: ... and a task that is itself a part, after PART_SHARE_AFTER seconds: parts of one
#: candidate end at different times, and a worker whose part closed waits for another
#: part to hand out. 5x100 L1 2e-4 on 2 workers: 114.8 s at 0.5 against 121.8 s at 3
#: (4x100: 12.0 against 12.5 s), the same run
PART_SHARE_AFTER = 0.5
#: settings of the scheduler of a local cluster (``local_cluster``; for a scheduler of
#: your own, set them in its Dask config). Worker saturation 1.0: a worker gets a task
#: only when it has a free thread. At Dask's 1.1, a one-thread worker holds a second
#: task queued behind its running one, so a short task could wait behind a search of
#: minutes while another worker stood idle, and a search never saw that idle worker
#: to hand its open subdomains to (the client counts queued tasks as busy)
SCHEDULER_CONFIG = {"distributed.scheduler.worker-saturation": 1.0}
#: the evidence a task needs, copied into each round's snapshot
_FLAGS = ("seen_pos", "seen_neg", "proved_active", "proved_inactive", "given_up")


def require_distributed() -> ModuleType:
    """``dask.distributed``, or a one-line error naming the extra that installs it."""
    try:
        import distributed
    except ImportError:
        raise ExactCompressError(
            f"--workers and --scheduler need dask.distributed: {INSTALL}"
        ) from None
    return distributed


def wanted(workers: int, scheduler: str | None) -> bool:
    """Whether the options ask for a cluster at all."""
    return workers > 1 or bool(scheduler)


@contextmanager
def cluster(workers: int, scheduler: str | None, say: Progress) -> Iterator[Client]:
    """A client of the scheduler at ``scheduler``, or of a LocalCluster of ``workers``
    processes with one thread each (a task is single-threaded: torch threads and solver
    threads of several tasks would only fight over the cores)."""
    dist = require_distributed()
    with ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(_connect(dist, scheduler))
            where = f"scheduler {scheduler}"
        else:
            local = stack.enter_context(local_cluster(workers))
            client = stack.enter_context(dist.Client(local))
            where = f"local cluster of {workers} processes"
        say(f"dask: {where}, {len(client.nthreads())} workers, {_dashboard(client, scheduler)}")
        client.run(_warm_up)
        yield client


def local_cluster(workers: int, config: dict[str, Any] | None = None) -> LocalCluster:
    """A LocalCluster of ``workers`` processes with one thread each, its scheduler set up
    with SCHEDULER_CONFIG and ``config`` (more Dask settings, for tests)."""
    dist = require_distributed()
    import dask  # installed with distributed

    with dask.config.set({**SCHEDULER_CONFIG, **(config or {})}):
        return dist.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",  # any free port: never a clash with another cluster
            silence_logs=logging.ERROR,
        )


def _warm_up() -> None:
    """Import the task code on a worker now (torch, pyomo, the solvers: seconds), once
    for all tasks and on every worker at once: otherwise the first task on each worker
    pays it, and a candidate spread over a cold worker waits for that part."""
    importlib.import_module(__name__)
    _fast_malloc()


@functools.cache  # once per process: the thresholds stay set
def _fast_malloc() -> None:
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also turns off
    glibc's moving mmap threshold: every buffer over 128 kB is then mapped and unmapped
    afresh, and branch and bound ran 1.7x slower on a worker than in process (2x400's
    n15: 5.2 against 3.0 s of CPU, the same 377 subdomains). Set the thresholds that
    glibc's own adjustment would reach (32 MB for mmap, twice that for trimming); a
    no-op outside glibc. Called on every worker when the client connects and by every
    task (a worker may join later)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)


def _connect(dist: ModuleType, scheduler: str) -> Client:
    """A client of a running scheduler; one that cannot be reached is a one-line error."""
    try:
        return dist.Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        raise ExactCompressError(
            f"cannot reach the Dask scheduler at {scheduler}: {' '.join(str(err).split())}"
        ) from None


def _dashboard(client: Client, scheduler: str | None) -> str:
    if scheduler or importlib.util.find_spec("bokeh"):
        return f"dashboard {client.dashboard_link}"
    return "dashboard off (pip install bokeh for it)"


class SerialExecutor:
    """The exact stage in this process: today's code path, and the default."""

    run_bab = staticmethod(run_bab)
    run_exact_stage = staticmethod(run_exact_stage)

    def close(self) -> None:
        """Nothing to release."""


SERIAL = SerialExecutor()


def executor_for(options: StabilityOptions, say: Progress) -> Executor:
    """The executor of ``options.workers``/``options.scheduler``; a missing
    dask.distributed is an error now, before any work."""
    if not wanted(options.workers, options.scheduler):
        return SERIAL
    require_distributed()
    executor = DaskExecutor(options, say)
    if options.scheduler:
        executor.start()  # a wrong address fails now, not after the cheap stages
    return executor


# ---- what travels to a task and back ------------------------------------------------


@dataclass
class Shared:
    """What every task of a stage reads: scattered once."""

    net: ReLUNetwork
    box: Box
    bounds: LayerBounds


@dataclass
class TaskResult:
    """What one task added to its copy of the evidence."""

    witnesses: np.ndarray
    proofs: list[tuple[int, int, bool]]  # (layer, neuron, active)
    notes: dict[tuple[int, int], str]  # given up, and why
    g_max: list[np.ndarray]
    g_min: list[np.ndarray]
    reached: dict = field(default_factory=dict)  # NeuronEvidence.reached
    outcome: CandidateOutcome | None = None
    stats: dict = field(default_factory=dict)
    solver: str | None = None
    parts: list[Frontier] = field(default_factory=list)  # a search's shared frontier


@dataclass
class Snapshot:
    """The evidence flags a task starts from (a round's view of the client's evidence)."""

    flags: dict[str, list[np.ndarray]]

    @classmethod
    def of(cls, evidence: NeuronEvidence) -> Snapshot:
        return cls({name: [a.copy() for a in getattr(evidence, name)] for name in _FLAGS})

    def restore(self, shared: Shared) -> NeuronEvidence:
        evidence = NeuronEvidence(shared.net, shared.box)
        for name, arrays in self.flags.items():
            setattr(evidence, name, [a.copy() for a in arrays])
        return evidence

    def changes(self, evidence: NeuronEvidence, **extra: Any) -> TaskResult:
        """Proofs, give-ups and witnesses in ``evidence`` that the snapshot lacks."""
        points: dict[bytes, np.ndarray] = {}
        proofs, notes = [], {}
        for layer in range(evidence.net.n_hidden):
            for side, seen in (("pos", "seen_pos"), ("neg", "seen_neg")):
                wit = evidence.witness_pos if side == "pos" else evidence.witness_neg
                for j, x in wit[layer].items():
                    if not self.flags[seen][layer][j]:
                        points.setdefault(x.tobytes(), x)
            for active, name in ((True, "proved_active"), (False, "proved_inactive")):
                new = getattr(evidence, name)[layer] & ~self.flags[name][layer]
                proofs += [(layer, int(j), active) for j in np.flatnonzero(new)]
            for j in np.flatnonzero(evidence.given_up[layer] & ~self.flags["given_up"][layer]):
                notes[(layer, int(j))] = evidence.notes.get((layer, int(j)), "")
        dim = evidence.box.dim
        witnesses = np.array(list(points.values())) if points else np.empty((0, dim))
        return TaskResult(
            witnesses, proofs, notes, evidence.g_max, evidence.g_min, evidence.reached, **extra
        )


@dataclass(frozen=True)
class Job:
    """One task: a candidate (``bab``, ``neuron``) or one layer's candidates (``shard``)."""

    kind: str
    cands: tuple[Candidate, ...]

    @property
    def label(self) -> str:
        layer, j, side = self.cands[0]
        if self.kind == "shard":
            return f"layer {layer + 1} ({len(self.cands)} candidates)"
        return f"layer {layer + 1} neuron {j} ({side})"


@dataclass(frozen=True)
class Settings:
    """A stage's options as a task needs them; ``deadline`` is wall-clock (time.time),
    so that it means the same on every machine with a synchronised clock."""

    deadline: float
    seed: int
    device: str | None
    give_up: bool = True
    spec: FormulationSpec | None = None
    relu: str = DEFAULT_RELU
    solver: str = "auto"
    threads: int | None = None
    mine: bool = True
    #: the Dask Variable where the client keeps the count of idle workers (bab rounds)
    idle: str | None = None
    share_after: float = SHARE_AFTER
    part_share_after: float = PART_SHARE_AFTER
    share_poll: float = SHARE_POLL


def absorb(evidence: NeuronEvidence, result: TaskResult, stage: str) -> None:
    """Merge one task's result into the client's evidence."""
    if len(result.witnesses):
        evidence.observe(result.witnesses, stage)
    for layer, (hi, lo) in enumerate(zip(result.g_max, result.g_min)):
        np.maximum(evidence.g_max[layer], hi, out=evidence.g_max[layer])
        np.minimum(evidence.g_min[layer], lo, out=evidence.g_min[layer])
    for (layer, j, side), (bound, by) in result.reached.items():
        evidence.reach(layer, j, side, bound, by)
    for layer, j, active in result.proofs:
        evidence.prove(layer, [j], active=active, stage=stage)
    for (layer, j), why in result.notes.items():
        evidence.give_up(layer, [j], why)


def refuted_by(net: ReLUNetwork, box: Box, points: np.ndarray, cands: list[Candidate]) -> set:
    """The candidates that ``points`` show on their unseen side, by NeuronEvidence's test."""
    if not len(points) or not cands:
        return set()
    gs, errs = net.preactivations_with_error(box.clip(points))
    out = set()
    for cand in cands:
        layer, j, side = cand
        g, err = gs[layer][:, j], errs[layer][:, j]
        if bool(((g > err) if side == "pos" else (g < -err)).any()):
            out.add(cand)
    return out


# ---- tasks (run on the workers) -------------------------------------------------------


def _quiet(_msg: str) -> None:
    """Workers keep their progress lines to themselves; the client reports per task."""


def _local(wall_deadline: float) -> float:
    return time.monotonic() + (wall_deadline - time.time())


def _wall(deadline: float) -> float:
    return time.time() + (deadline - time.monotonic())


def _start_task(seed: int, job: Job) -> None:
    """Each task's own seed, from the run's seed and the task's candidates only, so that
    any randomness in a search does not depend on which worker ran it, or when; and
    glibc's malloc thresholds (``_fast_malloc``)."""
    _fast_malloc()
    value = zlib.crc32(f"{seed}:{job.kind}:{job.cands}".encode())
    torch.manual_seed(value)
    np.random.seed(value)


def bab_task(
    shared: Shared, snap: Snapshot, job: Job, s: Settings, frontier: Frontier | None = None
) -> TaskResult:
    """Branch and bound on one candidate, as ``bab.run_bab`` does for each, or on one part
    of its ``frontier``. Nothing is proved here: the client proves the candidate once
    every part is closed. While workers are idle, a search past ``s.share_after``
    seconds stops and returns its open subdomains as parts, one for each idle worker and
    one to go on with itself."""
    evidence = snap.restore(shared)
    _start_task(s.seed, job)
    (cand,) = job.cands
    deadline = _local(s.deadline)
    if time.monotonic() >= deadline:
        bound = math.inf if frontier is None else frontier.bound
        return snap.changes(evidence, outcome=CandidateOutcome("timeout", bound, 0, 0, 0.0))
    dev = pick_device(s.device)
    with one_thread():
        search = CandidateSearch(
            evidence, shared.bounds, cand, dev, _quiet, stall=not s.give_up, frontier=frontier
        )
        after = s.share_after if frontier is None else s.part_share_after
        idle = IdleWorkers(s.idle, after, s.share_poll)
        search.share = idle.wanted
        out = search.advance(deadline)
    parts = search.frontier(1 + idle.count) if out.status == "shared" else []
    return snap.changes(evidence, outcome=out, parts=parts)


class IdleWorkers:
    """A task's view of the client's count of idle workers (the Dask Variable named
    ``name``; none: never share). The Variable is opened on the first question, past
    ``after`` seconds: a quick task never pays for the worker's client connection."""

    def __init__(self, name: str | None, after: float, poll: float) -> None:
        self.name, self.var = name, None
        self.start, self.after, self.poll = time.monotonic(), after, poll
        self.last = -math.inf  # when it last asked
        self.count = 0  # idle workers at the last answer

    def wanted(self) -> bool:
        """Whether to hand the open subdomains out now."""
        now = time.monotonic()
        if self.name is None or now - self.start < self.after or now - self.last < self.poll:
            return False
        if self.var is None:
            self.var = require_distributed().Variable(self.name)
        self.last = now
        try:
            self.count = int(self.var.get(timeout=1))
        except TimeoutError:  # not set (yet): nobody is waiting
            self.count = 0
        return self.count > 0


def neuron_task(shared: Shared, snap: Snapshot, job: Job, s: Settings) -> TaskResult:
    """One candidate's MILP extreme (the neuron strategy, on a model of that candidate)."""
    evidence = snap.restore(shared)
    _start_task(s.seed, job)
    (cand,) = job.cands
    handle = build_model(s.spec, evidence, shared.bounds, [cand], s.relu)
    make = solver_factory(s.solver, threads=s.threads, say=_quiet)
    solver = make(handle)
    solver.load(handle)
    decide_by_extreme(evidence, handle, solver, cand, _local(s.deadline))
    stats = {"solves": 1, "binaries": handle.n_binaries()}
    return snap.changes(evidence, stats=stats, solver=make.chosen)


def shard_task(shared: Shared, snap: Snapshot, job: Job, s: Settings) -> TaskResult:
    """The network strategy on one layer's candidates (a shard of the network model)."""
    evidence = snap.restore(shared)
    _start_task(s.seed, job)
    make = solver_factory(s.solver, threads=s.threads, say=_quiet)
    stats = run_network_strategy(
        evidence,
        s.spec,
        shared.bounds,
        make,
        _local(s.deadline),
        _quiet,
        s.mine,
        s.device,
        s.relu,
        layer=job.cands[0][0],
    )
    return snap.changes(evidence, stats=stats, solver=getattr(make, "chosen", None))


TASKS = {"bab": bab_task, "neuron": neuron_task, "shard": shard_task}
Merge = Callable[[Job, "TaskResult | str"], None]


# ---- the client side ------------------------------------------------------------------


class DaskExecutor:
    """The exact stage's candidates as tasks on a Dask cluster. The cluster starts on
    first use, so a run whose cheap stages decide everything starts none; ``close``
    stops it (or disconnects from ``--scheduler``)."""

    def __init__(self, options: StabilityOptions, say: Progress) -> None:
        self.options, self.say = options, say
        self._stack = ExitStack()
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        return self.start()

    def start(self) -> Client:
        """Start the local cluster, or connect to the scheduler, unless done already."""
        if self._client is None:
            self._client = self._stack.enter_context(
                cluster(self.options.workers, self.options.scheduler, self.say)
            )
        return self._client

    def close(self) -> None:
        self._stack.close()
        self._client = None

    def run_bab(
        self,
        evidence: NeuronEvidence,
        bounds: LayerBounds,
        candidates: list[Candidate],
        deadline: float,
        progress: Progress,
        device=None,
        budget: float = float("inf"),
        give_up: bool = True,
        jobs: int = 1,
    ) -> BabStats:
        """``bab.run_bab`` with one task per candidate, layer by layer (``jobs`` is the
        cluster's size here); a candidate that runs long while workers are idle is
        spread over them, its open subdomains in parts (see ``bab_task``). As in
        process, ``budget`` per candidate makes a pool of time: each layer adds its
        candidates' budgets, and its tasks may run until the pool ends, so that what
        easy candidates leave goes to the hard ones of their layer or a later one (with
        a fixed budget per task, 5x100 L1 2e-4's n56, 100 s or more, never finished)."""
        stats = BabStats(candidates=len(candidates))
        bounds = with_crown(evidence.net, evidence.box, bounds, pick_device(device))
        shared = self._share(evidence, bounds)
        pool_end = time.monotonic()
        for layer in sorted({c[0] for c in candidates}):
            mine = [c for c in sorted(candidates) if c[0] == layer]
            pool_end += budget * len(mine)
            end = min(deadline, pool_end)
            todo = [c for c in mine if not _closed(evidence, c)]
            if not todo:
                continue
            s = Settings(
                _wall(end),
                self.options.seed,
                device,
                give_up=give_up,
                share_after=SHARE_AFTER,  # as set now, not at import
                part_share_after=PART_SHARE_AFTER,
                share_poll=SHARE_POLL,
            )
            BabRound(self.client, evidence, shared, s, progress, stats).run(todo, end)
        return stats

    def run_exact_stage(
        self,
        evidence: NeuronEvidence,
        spec: FormulationSpec,
        bounds: LayerBounds,
        open_solver: Callable,
        deadline: float,
        progress: Progress,
        mine: bool = True,
        device: str | None = None,
        relu: str = DEFAULT_RELU,
    ) -> dict:
        """``exact.run_exact_stage`` with one task per candidate (neuron strategy, layer
        by layer) or per layer shard (network and layer strategies, all at once).
        ``binaries`` is the largest model's count."""
        if spec.strategy not in STRATEGIES:
            return run_exact_stage(
                evidence, spec, bounds, open_solver, deadline, progress, mine, device, relu
            )
        cands = open_candidates(evidence)
        stats = {"candidates": len(cands), "solves": 0, "binaries": 0}
        if not cands:
            return stats
        shared = self._share(evidence, bounds)
        s = Settings(
            _wall(deadline),
            self.options.seed,
            device,
            spec=spec,
            relu=relu,
            solver=self.options.solver,
            threads=self.options.threads,
            mine=mine,
        )

        def merge(job: Job, result: TaskResult | str) -> None:
            if isinstance(result, TaskResult):
                absorb(evidence, result, MILP)
                stats["solves"] += result.stats.get("solves", 0)
                stats["binaries"] = max(stats["binaries"], result.stats.get("binaries", 0))
                if result.solver and getattr(open_solver, "chosen", None) is None:
                    open_solver.chosen = result.solver
                progress(f"  milp {job.label}: done, {stats['solves']} solves so far")
            elif result != "refuted":
                for layer, j, _ in job.cands:
                    evidence.give_up(layer, [j], result)
                progress(f"  milp {job.label}: {result}")

        layers = sorted({c[0] for c in cands})
        if spec.strategy == "neuron":
            for layer in layers:
                todo = [c for c in open_candidates(evidence) if c[0] == layer]
                jobs = [Job("neuron", (c,)) for c in todo]
                self._round(evidence, shared, jobs, s, deadline, merge)
        else:
            jobs = [Job("shard", tuple(c for c in cands if c[0] == k)) for k in layers]
            self._round(evidence, shared, jobs, s, deadline, merge)
        return stats

    # ---- rounds -----------------------------------------------------------------
    def _share(self, evidence: NeuronEvidence, bounds: LayerBounds) -> Future:
        shared = Shared(evidence.net, evidence.box, bounds)
        return self.client.scatter(shared, broadcast=True, hash=False)

    def _round(
        self,
        evidence: NeuronEvidence,
        shared: Future,
        jobs: list[Job],
        s: Settings,
        deadline: float,
        merge: Merge,
    ) -> None:
        """Run ``jobs`` from one snapshot of ``evidence`` and merge their results in job
        order, also when Ctrl-C stops the round (then unfinished jobs stay open)."""
        if not jobs:
            return
        client = self.client
        snap = client.scatter(Snapshot.of(evidence), broadcast=True, hash=False)
        tag = uuid.uuid4().hex[:8]
        pending = {
            client.submit(
                TASKS[job.kind],
                shared,
                snap,
                job,
                s,
                key=f"exactcompress-{job.kind}-{job.label.replace(' ', '-')}-{tag}",
                pure=False,
            ): job
            for job in jobs
        }
        results: dict[Job, TaskResult | str] = {}
        try:
            self._collect(evidence, pending, results, deadline)
        finally:
            for fut in pending:
                fut.cancel()
            for job in jobs:
                if job in results:
                    merge(job, results[job])

    def _collect(
        self,
        evidence: NeuronEvidence,
        pending: dict[Future, Job],
        results: dict[Job, TaskResult | str],
        deadline: float,
    ) -> None:
        """Wait for the tasks; a finished task's witnesses cancel the queued tasks whose
        candidates they all refute; past the time limit (and GRACE) the rest is abandoned."""
        n = len(pending)

        def finished(fut: Future) -> None:
            job = pending.pop(fut)
            results[job] = _result(fut)
            if isinstance(results[job], TaskResult):
                self._cancel_refuted(evidence, results[job].witnesses, pending, results)

        def expired() -> None:
            for job in pending.values():
                results[job] = "time limit"

        def say() -> None:
            self.say(f"  dask: {n - len(pending)} of {n} tasks done")

        wait_for(pending, deadline, finished, expired, say)

    @staticmethod
    def _cancel_refuted(
        evidence: NeuronEvidence,
        points: np.ndarray,
        pending: dict[Future, Job],
        results: dict[Job, TaskResult | str],
    ) -> None:
        cands = [c for job in pending.values() for c in job.cands]
        gone = refuted_by(evidence.net, evidence.box, points, cands)
        for fut, job in list(pending.items()):
            if gone.issuperset(job.cands):
                fut.cancel()
                del pending[fut]
                results[job] = "refuted"


@dataclass(eq=False)  # one per candidate, kept in sets by identity
class _Spread:
    """One candidate's branch and bound on the cluster: the parts of its frontier out as
    tasks, and what the finished ones returned."""

    job: Job  # of its every task: the candidate alone
    running: dict = field(default_factory=dict)  # Future -> bound of its part when sent
    results: list[TaskResult] = field(default_factory=list)
    #: proved | refuted | timeout | stuck | stalled | why its task has no result; None
    #: while open
    status: str | None = None
    bound: float = -math.inf  # the highest bound of the parts that ended
    domains: int = 0
    depth: int = 0
    seconds: float = 0.0
    parts: int = 0  # tasks sent

    @property
    def cand(self) -> Candidate:
        return self.job.cands[0]

    def outcome(self) -> CandidateOutcome:
        return CandidateOutcome(self.status, self.bound, self.domains, self.depth, self.seconds)


class BabRound:
    """One layer's candidates as branch-and-bound tasks, from one snapshot of the evidence.

    The client keeps the count of idle workers in a Dask Variable; a task that has run
    SHARE_AFTER seconds while it is positive returns its open subdomains in parts, and
    each part goes out as a new task. A candidate is proved once every part of it is
    closed, refuted by any witness (a forward pass, checked here), and undecided when a
    part ends open or is lost with its worker. Results are merged in candidate order at
    the end, also when Ctrl-C stops the round (a candidate not decided then stays open).
    """

    def __init__(
        self,
        client: Client,
        evidence: NeuronEvidence,
        shared: Future,
        s: Settings,
        progress: Progress,
        stats: BabStats,
    ) -> None:
        self.client, self.evidence, self.shared, self.progress = client, evidence, shared, progress
        self.stats = stats
        self.tag = uuid.uuid4().hex[:8]
        self.idle = require_distributed().Variable(f"exactcompress-idle-{self.tag}", client)
        self.idle.set(0)
        self.s = replace(s, idle=self.idle.name)
        self.snap = client.scatter(Snapshot.of(evidence), broadcast=True, hash=False)
        self.capacity = sum(client.nthreads().values())
        self.pending: dict[Future, _Spread] = {}

    def run(self, cands: list[Candidate], deadline: float) -> None:
        spreads = [_Spread(Job("bab", (c,))) for c in cands]
        try:
            for spread in spreads:
                self._send(spread, None)
            self._collect(deadline)
        finally:
            for fut in self.pending:
                fut.cancel()
            self.idle.delete()
            self._merge(spreads)

    def _send(self, spread: _Spread, part: Frontier | None) -> None:
        spread.parts += 1
        job = spread.job
        key = f"exactcompress-bab-{job.label.replace(' ', '-')}-{self.tag}-{spread.parts}"
        fut = self.client.submit(
            TASKS["bab"], self.shared, self.snap, job, self.s, part, key=key, pure=False
        )
        self.pending[fut] = spread
        spread.running[fut] = math.inf if part is None else part.bound

    def _collect(self, deadline: float) -> None:
        idle = 0

        def expired() -> None:
            for spread in set(self.pending.values()):
                self._end(spread, "time limit")

        def waiting() -> None:
            nonlocal idle
            now_idle = max(0, self.capacity - len(self.pending))
            if now_idle != idle:
                idle = now_idle
                self.idle.set(idle)

        def say() -> None:
            self.progress(f"  dask: {len(self.pending)} branch-and-bound tasks running")

        wait_for(
            self.pending, deadline, lambda fut: self._finished(fut, deadline), expired, say, waiting
        )

    def _finished(self, fut: Future, deadline: float) -> None:
        spread = self.pending.pop(fut)
        spread.running.pop(fut)
        result = _result(fut)
        if isinstance(result, str):
            if spread.status is None:
                self._end(spread, result)
            return
        spread.results.append(result)
        out = result.outcome
        spread.domains += out.domains
        spread.depth = max(spread.depth, out.depth)
        spread.seconds += out.seconds
        self._refute(result.witnesses)
        if spread.status is not None:  # decided while this part ran
            return
        if out.status == "shared" and time.monotonic() < deadline:
            for part in result.parts:
                self._send(spread, part)
            self.stats.parts += len(result.parts)
            self.progress(
                f"  bab {spread.job.label}: open subdomains handed out, "
                f"{len(spread.running)} parts running, worst bound {out.bound:.3g}"
            )
        elif out.status == "proved":
            spread.bound = max(spread.bound, out.bound)
            if not spread.running:
                self._end(spread, "proved")
        else:  # refuted, or open at its end: the whole candidate is
            spread.bound = max(spread.bound, out.bound)
            self._end(spread, "timeout" if out.status == "shared" else out.status)

    def _refute(self, points: np.ndarray) -> None:
        """End the open candidates these witnesses show on their unseen side."""
        open_ = {sp.cand: sp for sp in set(self.pending.values()) if sp.status is None}
        for cand in refuted_by(self.evidence.net, self.evidence.box, points, list(open_)):
            self._end(open_[cand], "refuted")

    def _end(self, spread: _Spread, status: str) -> None:
        """Decide the candidate and cancel its parts still out (their bounds when sent
        still bound what they cover)."""
        spread.status = status
        for fut, bound in spread.running.items():
            spread.bound = max(spread.bound, bound)
            fut.cancel()
            self.pending.pop(fut, None)
        spread.running.clear()
        out = spread.outcome()
        self.progress(
            f"  bab {spread.job.label}: {status} after {out.domains} subdomains, "
            f"{out.seconds:.1f} s in {spread.parts} task(s)"
        )

    def _merge(self, spreads: list[_Spread]) -> None:
        """Every result into the evidence, then each decided candidate's outcome."""
        evidence = self.evidence
        for spread in spreads:
            for result in spread.results:
                absorb(evidence, result, BAB)
        for spread in spreads:
            if spread.status is None:  # interrupted: stays open
                continue
            layer, j, side = spread.cand
            out = spread.outcome()
            if spread.status == "proved":
                evidence.prove(layer, [j], active=(side == "neg"), stage=BAB)
            elif spread.status != "refuted":
                evidence.reach(layer, j, side, out.bound, BAB)
                if self.s.give_up:
                    evidence.give_up(layer, [j], _why(spread.status, out.bound))
            self.stats.record(spread.cand, out)


def wait_for(
    pending: dict[Future, Any],
    deadline: float,
    finished: Callable[[Future], None],
    expired: Callable[[], None],
    say: Callable[[], None],
    waiting: Callable[[], None] = lambda: None,
) -> None:
    """Poll ``pending`` every POLL seconds until it is empty: ``finished(fut)`` for each
    future done (it must take ``fut`` out of ``pending``, and may take out others it
    cancels), ``waiting()`` on each poll that found none, ``say()`` every PROGRESS_EVERY
    seconds; past ``deadline`` and GRACE, ``expired()`` and return with the rest left
    running (the caller cancels them)."""
    last_say = time.monotonic()
    while pending:
        done = [f for f in pending if f.status != "pending"]
        if done:
            for fut in done:
                if fut in pending:  # not taken out by an earlier one's ``finished``
                    finished(fut)
            continue
        now = time.monotonic()
        if now > deadline + GRACE:
            expired()
            return
        waiting()
        if now - last_say >= PROGRESS_EVERY:
            last_say = now
            say()
        time.sleep(POLL)


def _why(status: str, bound: float) -> str:
    """The note of a candidate left undecided: a search's (``bab.undecided_note``), past
    the time limit and GRACE on the client, or why its task has no result."""
    if status == "time limit":
        status = "timeout"
    if status in ("timeout", "stuck", "stalled"):
        return undecided_note(status, bound)
    return status  # e.g. "worker lost (KilledWorker)"


#: what runs the exact stage's provers (stability.Context.executor)
Executor = SerialExecutor | DaskExecutor


def _closed(evidence: NeuronEvidence, cand: Candidate) -> bool:
    """Settled, or already seen on the side the candidate would prove impossible."""
    layer, j, side = cand
    seen = evidence.seen_pos if side == "pos" else evidence.seen_neg
    return bool(evidence.settled(layer)[j] or seen[layer][j])


def _result(fut: Future) -> TaskResult | str:
    """The task's result, or why it has none: its worker was lost. Any other error in a
    task is raised here, as it would be in the serial code."""
    dist = require_distributed()
    try:
        return fut.result()
    except (dist.KilledWorker, dist.client.FutureCancelledError) as err:
        return f"worker lost ({type(err).__name__})"
