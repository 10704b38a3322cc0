"""Settings for every test process."""

from __future__ import annotations

import os

import torch
from threadpoolctl import threadpool_limits

from exactcompress.stability import usable_cores


def _share_the_cores() -> None:
    """Under pytest-xdist (``-n N``, the default ``-n auto``) N test processes share the
    machine, so each takes its share of torch's and BLAS's threads. At their defaults
    (every core for each process) 14 processes on 16 cores had not finished the suite
    after 270 s, where 2 processes on 2 cores take about 260 s, and a training fixture
    ran past a 100 s timeout (benchmarks/README.md, *On a GPU*)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, usable_cores() // workers)
        torch.set_num_threads(share)
        threadpool_limits(share)


_share_the_cores()
