"""The exact stage and bench sweeps on a Dask cluster (--workers, --scheduler).

A LocalCluster of two worker processes (localhost only) runs the exact stage's tasks;
the states must be those of the serial code, a worker killed mid-task must leave its
candidate undecided and nothing falsely proved, and a distributed sweep must write the
rows a serial one writes. Without dask.distributed, --workers is a one-line error.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
from oracle import random_net

pytest.importorskip("distributed")

import cloudpickle  # noqa: E402
from distributed import Client  # noqa: E402

from exactcompress import distributed as dist_exec  # noqa: E402
from exactcompress.cli import main  # noqa: E402
from exactcompress.domain import Box  # noqa: E402
from exactcompress.io import save_model  # noqa: E402
from exactcompress.network import ReLUNetwork  # noqa: E402
from exactcompress.report import UNDECIDED  # noqa: E402
from exactcompress.stability import StabilityOptions, find_stable_neurons  # noqa: E402

#: models whose candidates reach the exact stage with no sampling and no witness search
MODELS = [(7, (4, 12, 12, 8, 2)), (5, (4, 12, 12, 8, 2)), (3, (3, 10, 10, 6, 2))]
#: (prover, formulation): per-candidate bab tasks, per-candidate MILPs, layer shards
EXACT = [("bab", "network"), ("milp", "neuron"), ("milp", "network")]


def _net(seed: int, widths) -> tuple[ReLUNetwork, Box]:
    rng = np.random.default_rng(seed)
    ws, bs = random_net(rng, list(widths), bias_shift=float(rng.normal() * 0.5))
    return ReLUNetwork(ws, bs), Box.uniform(widths[0])


def _options(prover: str, formulation: str, **more) -> StabilityOptions:
    return StabilityOptions(
        prover=prover,
        formulation=formulation,
        solver="highs",
        samples=0,
        witness_search=False,
        **more,
    )


@pytest.fixture(scope="module")
def address():
    """Two worker processes with torch imported; a task on a lost worker fails at once
    (allowed-failures 0) instead of being retried elsewhere."""
    cluster = dist_exec.local_cluster(2, {"distributed.scheduler.allowed-failures": 0})
    with cluster, Client(cluster) as client:
        client.run(lambda: __import__("exactcompress.distributed") and None)
        yield cluster.scheduler_address


def _same_states(a, b) -> None:
    for x, y in zip(a.states, b.states, strict=True):
        assert (x == y).all()


@pytest.mark.parametrize("prover,formulation", EXACT)
def test_cluster_gives_the_serial_states(address, prover, formulation):
    """Several small models, each exact-stage strategy: the same states as in process."""
    for seed, widths in MODELS:
        net, box = _net(seed, widths)
        serial = find_stable_neurons(net, box, None, _options(prover, formulation))
        assert serial.candidates, "the model must send candidates to the exact stage"
        spread = find_stable_neurons(
            net, box, None, _options(prover, formulation, scheduler=address)
        )
        _same_states(serial, spread)
        assert spread.complete == serial.complete
        assert spread.extra["options"]["scheduler"] == address


def _weak_bab_task(shared, snap, job, settings, *part, lps=False):
    """Branch and bound without alpha or beta steps, so that searches run long enough to
    be spread. With ``lps``: subdomain LPs from the start on every candidate past the
    first layer (the parts take the LP and their bases along), and a search shares at
    every chance, as if a worker were always idle (the LPs close these small models'
    candidates in a few subdomains, too fast to count on the client seeing an idle
    worker); else no LPs, and the client's count of idle workers decides."""
    from exactcompress import bab

    names = ("STEPS", "ROOT_STEPS", "LP_AFTER", "LP_FROM_LAYER")
    kept = [getattr(bab, name) for name in names]
    for name, value in zip(names, (0, 0, 0.0 if lps else None, 1)):
        setattr(bab, name, value)
    wanted = dist_exec.IdleWorkers.wanted

    def always(self):
        self.count = 1
        return True

    if lps:
        dist_exec.IdleWorkers.wanted = always
    try:
        return dist_exec.bab_task(shared, snap, job, settings, *part)
    finally:
        dist_exec.IdleWorkers.wanted = wanted
        for name, value in zip(names, kept):
            setattr(bab, name, value)


@pytest.mark.parametrize("lps", [False, True])
def test_searches_spread_over_idle_workers_give_the_serial_states(lps, address, monkeypatch):
    """Sharing at once (no wait, asking before every batch): searches hand their open
    subdomains to the idle worker in parts, each a task of its own, and the candidates
    come out as in process (proved only once every part is closed)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setitem(dist_exec.TASKS, "bab", functools.partial(_weak_bab_task, lps=lps))
    monkeypatch.setattr(dist_exec, "SHARE_AFTER", 0.0)
    monkeypatch.setattr(dist_exec, "SHARE_POLL", 0.0)
    parts = 0
    # LPs close more at once: a larger model leaves searches to spread
    models = [(4, (5, 24, 24, 24, 2))] if lps else [*MODELS, (1, (4, 16, 16, 12, 2))]
    for seed, widths in [*models, (2, (4, 16, 16, 16, 2))]:
        net, box = _net(seed, widths)
        serial = find_stable_neurons(net, box, None, _options("bab", "network"))
        spread = find_stable_neurons(net, box, None, _options("bab", "network", scheduler=address))
        _same_states(serial, spread)
        assert spread.complete == serial.complete
        parts += spread.extra["stages"].get("bab", {}).get("parts", 0)
    assert parts > 0


def test_cli_scheduler_option_reaches_the_report(address, tmp_path):
    net, _ = _net(7, (4, 12, 12, 8, 2))
    model, js = tmp_path / "m.pt", tmp_path / "s.json"
    save_model(model, net, {})
    argv = ["stability", str(model), "--prover", "bab", "--samples", "0"]
    argv += ["--no-witness-search", "--scheduler", address, "--json", str(js)]
    assert main(argv) == 0
    options = json.loads(js.read_text())["options"]
    assert options["scheduler"] == address and options["workers"] == 1


def test_witnesses_refute_queued_candidates():
    """A finished task's witnesses close the candidates they show on their unseen side
    (the forward-pass test of NeuronEvidence.observe), and only those."""
    net, box = _net(7, (4, 12, 12, 8, 2))
    x = np.random.default_rng(0).uniform(size=(50, 4))
    g = net.preactivations(x)[1]
    j_pos = int(np.argmax(g.max(axis=0)))
    j_neg = int(np.argmin(g.min(axis=0)))
    never = [(1, j, "pos") for j in range(g.shape[1]) if g[:, j].max() <= 0]
    cands = [(1, j_pos, "pos"), (1, j_neg, "neg"), *never]
    assert dist_exec.refuted_by(net, box, x, cands) == {(1, j_pos, "pos"), (1, j_neg, "neg")}


def _rows(path) -> dict[tuple, dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        tuple(r[k] for k in ("model", "config", "formulation", "solver")): {
            k: v for k, v in r.items() if not k.startswith("seconds")
        }
        for r in rows
    }


@pytest.mark.parametrize("where", ["scheduler", pytest.param("workers", marks=pytest.mark.slow)])
def test_bench_on_two_workers_writes_the_serial_rows(tmp_path, address, where):
    """bench --quick on two workers (the module's cluster, or --workers 2 with a cluster
    of its own) writes the rows --workers 1 writes, times aside; running it again runs
    nothing."""
    cluster = ["--scheduler", address] if where == "scheduler" else ["--workers", "2"]
    models = [_model_file(tmp_path, seed) for seed in (1, 2)]
    argv = ["bench", "--quick", "--no-suite", "--models", *models, "--solvers", "highs"]
    argv += ["--time-limit", "20", "--no-plots"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*argv, "-o", str(one), "--workers", "1"]) == 0
    assert main([*argv, "-o", str(two), *cluster]) == 0
    serial, spread = _rows(one / "results.csv"), _rows(two / "results.csv")
    assert len(serial) == 8 and serial == spread
    assert all(r["status"] == "ok" for r in spread.values())
    before = (two / "results.csv").read_text()
    assert main([*argv, "-o", str(two), *cluster]) == 0
    assert (two / "results.csv").read_text() == before


def _slow_bab_task(shared, snap, job, settings, *part):
    """A branch-and-bound task that takes long enough for a worker to be killed in it."""
    time.sleep(2.0)
    return dist_exec.bab_task(shared, snap, job, settings, *part)


def _kill_a_busy_worker(address: str, done: threading.Event) -> None:
    """SIGKILL the process of the first worker seen running a task."""
    with Client(address) as client:
        pids = client.run(os.getpid)
        while not done.is_set():
            busy = [w for w, keys in client.processing().items() if keys and w in pids]
            if busy:
                time.sleep(0.3)
                os.kill(pids[busy[0]], signal.SIGKILL)
                return
            time.sleep(0.05)


def test_a_worker_lost_mid_task_proves_nothing(address, monkeypatch):
    """Kill the worker running a candidate: that candidate ends undecided ('worker
    lost'), every other neuron as in the serial run, and nothing falsely proved."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setitem(dist_exec.TASKS, "bab", _slow_bab_task)
    net, box = _net(7, (4, 12, 12, 8, 2))
    serial = find_stable_neurons(net, box, None, _options("bab", "network"))
    done = threading.Event()
    killer = threading.Thread(target=_kill_a_busy_worker, args=(address, done))
    killer.start()
    try:
        spread = find_stable_neurons(net, box, None, _options("bab", "network", scheduler=address))
    finally:
        done.set()
        killer.join()
    lost = [note for note in spread.notes if "worker lost" in note]
    assert lost
    for note in lost:  # "layer L neuron J: worker lost (KilledWorker)"
        layer, j = (int(w) for w in note.split(":")[0].split()[1::2])
        assert spread.states[layer - 1][j] != serial.states[layer - 1][j] or (
            serial.states[layer - 1][j] == "unstable"
        )
    for x, y in zip(serial.states, spread.states, strict=True):
        assert ((y == x) | (y == UNDECIDED)).all()


def test_time_limit_and_ctrl_c_on_the_cluster(address, monkeypatch):
    """Past the time limit a candidate is undecided ('time limit'), and Ctrl-C while the
    client waits keeps what was merged and returns an interrupted report, as in process."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setitem(dist_exec.TASKS, "bab", _slow_bab_task)
    net, box = _net(7, (4, 12, 12, 8, 2))
    limited = _options("bab", "network", scheduler=address, time_limit=1.5)
    report = find_stable_neurons(net, box, None, limited)
    assert not report.complete and any("time limit" in n for n in report.notes)

    def ctrl_c(_seconds: float) -> None:
        raise KeyboardInterrupt

    clock = types.SimpleNamespace(monotonic=time.monotonic, time=time.time, sleep=ctrl_c)
    monkeypatch.setattr(dist_exec, "time", clock)
    report = find_stable_neurons(net, box, None, _options("bab", "network", scheduler=address))
    assert report.interrupted and not report.complete


def test_workers_1_needs_no_dask(monkeypatch):
    """--workers 1 is the in-process code: it runs with dask.distributed unimportable."""
    monkeypatch.setitem(sys.modules, "distributed", None)
    net, box = _net(7, (4, 12, 12, 8, 2))
    report = find_stable_neurons(net, box, None, _options("bab", "network", workers=1))
    assert report.complete


def _model_file(tmp_path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    ws, bs = random_net(rng, [64, 10, 10, 10], bias_shift=-0.2)
    path = tmp_path / f"m{seed}.pt"
    save_model(path, ReLUNetwork(ws, bs), {})
    return str(path)


@pytest.mark.parametrize("command", ["stability", "bench"])
def test_workers_without_the_extra_is_a_one_line_error(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setitem(sys.modules, "distributed", None)
    model = _model_file(tmp_path, 0)
    if command == "stability":
        argv = ["stability", model, "--workers", "2"]
    else:
        argv = ["bench", "--no-suite", "--models", model, "--workers", "2", "-o", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'exactcompress[dist]'" in err


class _Done:
    """A future that has finished (``wait_for`` reads only its status)."""

    status = "finished"


def test_wait_for_skips_futures_a_finished_one_took_out():
    """Two tasks done in the same poll, the first one's witnesses refuting the second's
    candidates: the second was cancelled and taken out, so it is not finished again."""
    first, second = _Done(), _Done()
    pending = {first: "a", second: "b"}
    seen = []

    def finished(fut):
        seen.append(pending.pop(fut))
        pending.pop(second, None)  # what _cancel_refuted does

    dist_exec.wait_for(pending, time.monotonic() + 5, finished, pytest.fail, lambda: None)
    assert seen == ["a"] and not pending


#: the bytes glibc maps afresh (mmap) for one 4 MB malloc, in a process started as
#: Dask's nanny starts its workers (MALLOC_TRIM_THRESHOLD_ set)
_MAPPED_BYTES = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fast":
    from exactcompress.distributed import _fast_malloc
    _fast_malloc()
before = libc.mallinfo2().hblkhd
block = libc.malloc(4 << 20)
print(libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


def _glibc_with_mallinfo2() -> bool:
    lib, version = platform.libc_ver()
    return lib == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 33)


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_fast_malloc_keeps_large_buffers_off_mmap_in_a_nanny_started_worker():
    """With the nanny's MALLOC_TRIM_THRESHOLD_, every buffer over 128 kB is mapped and
    unmapped afresh; after _fast_malloc a 4 MB buffer comes from the heap."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}

    def mapped(mode: str) -> int:
        run = [sys.executable, "-c", _MAPPED_BYTES, mode]
        return int(subprocess.run(run, env=env, capture_output=True, check=True).stdout)

    assert mapped("plain") >= 4 << 20  # what a worker had before
    assert mapped("fast") == 0
