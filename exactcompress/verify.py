"""Equivalence check of a compressed network against the original on the domain.

A check, not a proof: it compares float64 outputs on data points, uniform points and
vertices of the box (where piecewise-linear differences tend to be largest) and the
centre. It catches a wrong stability claim whenever some checked point lies in the
region where the mislabelled neuron is on its other side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .domain import Box
from .errors import ExactCompressError
from .network import ReLUNetwork

_CHUNK = 8192


@dataclass
class VerifyResult:
    """Largest output difference seen; ``max_rel`` divides by the largest original output."""

    max_abs: float
    max_rel: float
    n_points: int
    n_data: int
    n_data_outside: int
    worst_source: str
    rtol: float
    ok: bool

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "equivalent" if self.ok else "DIFFERENT"
        skipped = self.n_data_outside
        outside = f", {skipped} data points outside the box skipped" if skipped else ""
        return (
            f"verify: {verdict} on {self.n_points} points ({self.n_data} data{outside}): "
            f"max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g} "
            f"(tolerance {self.rtol:g}, worst at a {self.worst_source} point)"
        )


def verify(
    original: ReLUNetwork,
    compressed: ReLUNetwork,
    box: Box,
    data: np.ndarray | None = None,
    n_samples: int = 10_000,
    seed: int = 0,
    rtol: float = 1e-5,
) -> VerifyResult:
    """Compare the two networks on data inside ``box``, ``n_samples`` box points and the centre.

    Half of the samples are random vertices (all of them when the box has fewer),
    the rest uniform points. Data outside the box are counted, not used: the
    networks need only agree on the domain.
    """
    _check_shapes(original, compressed, box)
    rng = np.random.default_rng(seed)
    inside, n_outside = _data_inside(data, box, original.widths[0])
    n_corner = n_samples // 2
    corners = box.corners(n_corner, rng) if n_corner else np.zeros((0, box.dim))
    groups = {
        "data": inside,
        "uniform": box.sample(n_samples - len(corners), rng),
        "corner": corners,
        "centre": ((box.lo + box.hi) / 2)[None, :],
    }
    max_abs, max_out, worst = 0.0, 0.0, "centre"
    for name, points in groups.items():
        diff, out = _max_diff(original, compressed, points)
        if diff > max_abs:
            max_abs, worst = diff, name
        max_out = max(max_out, out)
    max_rel = max_abs / max(1e-12, max_out)
    return VerifyResult(
        max_abs=float(max_abs),
        max_rel=float(max_rel),
        n_points=sum(len(p) for p in groups.values()),
        n_data=len(inside),
        n_data_outside=n_outside,
        worst_source=worst,
        rtol=rtol,
        ok=bool(max_rel <= rtol),
    )


def _check_shapes(original: ReLUNetwork, compressed: ReLUNetwork, box: Box) -> None:
    a, b = original.widths, compressed.widths
    if (a[0], a[-1]) != (b[0], b[-1]):
        raise ExactCompressError(
            f"networks differ in shape: {a[0]} inputs/{a[-1]} outputs vs {b[0]}/{b[-1]}"
        )
    box.check_dim(a[0])


def _data_inside(data: np.ndarray | None, box: Box, n_in: int) -> tuple[np.ndarray, int]:
    """Data rows (flattened per sample) that lie in the box, and how many did not."""
    if data is None:
        return np.zeros((0, n_in)), 0
    x = np.asarray(data, dtype=np.float64)
    x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, n_in)
    if x.shape[1] != n_in:
        raise ExactCompressError(f"data have {x.shape[1]} features, the network takes {n_in}")
    keep = box.contains(x)
    return x[keep], int((~keep).sum())


def _max_diff(a: ReLUNetwork, b: ReLUNetwork, x: np.ndarray) -> tuple[float, float]:
    """(largest |a(x) - b(x)|, largest |a(x)|) over the rows of x, in chunks."""
    diff, out = 0.0, 0.0
    for start in range(0, len(x), _CHUNK):
        xs = x[start : start + _CHUNK]
        ya, yb = a.forward(xs), b.forward(xs)
        gap = np.nan_to_num(np.abs(ya - yb), nan=np.inf)  # a NaN must not pass
        diff = max(diff, float(np.max(gap, initial=0.0)))
        out = max(out, float(np.max(np.abs(ya), initial=0.0)))
    return diff, out
