"""Equivalence check of a compressed network against the original on the domain.

A check, not a proof: it compares float64 outputs on data points, the report's
witness points (next to neuron boundaries), uniform points and vertices of the box
(where piecewise-linear differences tend to be largest) and the centre. Each output
of each point must agree within |a - b| <= atol + rtol |a|: a tolerance relative to
the largest output over all points would let a small, wrong change of a small output
pass next to a large one. It catches a wrong stability claim whenever some checked
point lies in the region where the mislabelled neuron is on its other side.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from .domain import Box
from .errors import ExactCompressError
from .network import ReLUNetwork

_CHUNK = 8192
#: per point and output, |original - compressed| <= atol + RTOL |original|
RTOL = 1e-9


@dataclass
class VerifyResult:
    """Outcome of the per-point comparison; ``ok`` when every output of every point
    satisfies |a - b| <= atol + rtol |a| (a: original, b: compressed).

    ``atol`` is the largest of the per-output absolute tolerances. ``max_rel`` divides
    the largest difference by the largest original output (kept for callers that
    print it); ``max_ratio`` is the largest |a - b| / (atol + rtol |a|), at most 1 when
    ``ok``; ``worst_*`` describe the point that reached it.
    """

    max_abs: float
    max_rel: float
    n_points: int
    n_data: int
    n_data_outside: int
    worst_source: str
    rtol: float
    ok: bool
    atol: float = 0.0
    max_ratio: float = 0.0
    worst_point: list[float] | None = None
    worst_output: int = 0
    worst_original: float = 0.0
    worst_compressed: float = 0.0
    points_by_source: dict[str, int] = field(default_factory=dict)
    n_witness_outside: int = 0
    #: with ``onnx_model``: the same comparison of the original with the ONNX model
    #: run by onnxruntime, a second engine independent of the package's forward pass
    onnx_max_abs: float | None = None
    onnx_max_ratio: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "equivalent" if self.ok else "DIFFERENT"
        skipped = self.n_data_outside
        outside = f", {skipped} data points outside the box skipped" if skipped else ""
        if self.n_witness_outside:
            outside += f", {self.n_witness_outside} witnesses outside the box skipped"
        sources = ", ".join(f"{n} {k}" for k, n in self.points_by_source.items())
        sources = sources or f"{self.n_data} data"
        engine = ""
        if self.onnx_max_abs is not None:
            engine = (
                f"; onnxruntime on the ONNX model: max abs diff {self.onnx_max_abs:.3g}, "
                f"{self.onnx_max_ratio:.3g} of the tolerance"
            )
        return (
            f"verify: {verdict} on {self.n_points} points ({sources}{outside}): "
            f"max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}; "
            f"worst at a {self.worst_source} point, output {self.worst_output}: "
            f"{self.worst_original:.17g} vs {self.worst_compressed:.17g}, "
            f"{self.max_ratio:.3g} of the tolerance |a - b| <= atol + {self.rtol:g} |a| "
            f"(atol up to {self.atol:.3g}){engine}"
        )


def witness_points(report) -> np.ndarray | None:
    """The witness inputs stored in a StabilityReport (or its ``witnesses`` dict): they
    sit next to neuron boundaries, where a wrong fold or claim shows first."""
    wit = getattr(report, "witnesses", report) or {}
    points = wit.get("points") if isinstance(wit, dict) else None
    if not points:
        return None
    return np.asarray(points, dtype=np.float64)


def verify(
    original: ReLUNetwork,
    compressed: ReLUNetwork,
    box: Box,
    data: np.ndarray | None = None,
    n_samples: int = 10_000,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float | None = None,
    witnesses: np.ndarray | None = None,
    onnx_model: str | os.PathLike | bytes | None = None,
) -> VerifyResult:
    """Compare the two networks point by point on the domain.

    Points: data inside ``box``, the ``witnesses`` inside it (e.g. ``witness_points``
    of the report), ``n_samples`` box points (half random vertices, all of them when
    the box has fewer, the rest uniform) and the centre. Points outside the box are
    counted, not used: the networks need only agree on the domain. ``atol`` defaults,
    per output, to ``rtol`` times the largest |original value| of that output over all
    points: values near zero are judged at the scale of their output, and a small
    output is not judged at the scale of a large one next to it. ``onnx_model`` (a
    path or bytes, e.g. compressed.onnx) is run in onnxruntime on the same points and
    judged by the same tolerance; ``ok`` then needs both engines to agree.
    """
    _check_shapes(original, compressed, box)
    rng = np.random.default_rng(seed)
    inside, n_outside = _points_inside(data, box, original.widths[0], "data")
    wit, n_wit_outside = _points_inside(witnesses, box, original.widths[0], "witnesses")
    n_corner = n_samples // 2
    corners = box.corners(n_corner, rng) if n_corner else np.zeros((0, box.dim))
    groups = {
        "data": inside,
        "witness": wit,
        "uniform": box.sample(n_samples - len(corners), rng),
        "corner": corners,
        "centre": ((box.lo + box.hi) / 2)[None, :],
    }
    outputs = {name: _outputs(original, compressed, x) for name, x in groups.items()}
    scale = np.max(np.abs(np.concatenate([a for a, _ in outputs.values()])), axis=0)
    max_out = float(scale.max(initial=0.0))
    atol = rtol * scale if atol is None else np.full(scale.shape, float(atol))
    worst = _Worst()
    for name, (a, b) in outputs.items():
        worst.update(name, groups[name], a, b, atol, rtol)
    engine = _onnx_worst(onnx_model, groups, outputs, atol, rtol)
    return VerifyResult(
        max_abs=worst.max_abs,
        max_rel=float(worst.max_abs / max(1e-12, max_out)),
        n_points=sum(len(p) for p in groups.values()),
        n_data=len(inside),
        n_data_outside=n_outside,
        worst_source=worst.source,
        rtol=rtol,
        ok=bool(worst.ratio <= 1.0 and (engine is None or engine.ratio <= 1.0)),
        atol=float(atol.max(initial=0.0)),
        max_ratio=worst.ratio,
        worst_point=worst.point,
        worst_output=worst.output,
        worst_original=worst.a,
        worst_compressed=worst.b,
        points_by_source={k: len(v) for k, v in groups.items() if len(v)},
        n_witness_outside=n_wit_outside,
        onnx_max_abs=None if engine is None else engine.max_abs,
        onnx_max_ratio=None if engine is None else engine.ratio,
    )


def _onnx_worst(
    model: str | os.PathLike | bytes | None,
    groups: dict[str, np.ndarray],
    outputs: dict[str, tuple[np.ndarray, np.ndarray]],
    atol: np.ndarray,
    rtol: float,
) -> _Worst | None:
    """The original's outputs against ``model`` run by onnxruntime, point by point."""
    if model is None:
        return None
    from .onnx_io import onnx_runner

    run, worst = onnx_runner(model), _Worst()
    for name, (a, _) in outputs.items():
        if not len(a):
            continue
        c = run(groups[name])
        if c.shape != a.shape:
            raise ExactCompressError(f"the ONNX model gives {c.shape[1]} outputs, not {a.shape[1]}")
        worst.update(name, groups[name], a, c, atol, rtol)
    return worst


@dataclass
class _Worst:
    """The point and output with the largest share of the tolerance used so far."""

    ratio: float = 0.0
    max_abs: float = 0.0
    source: str = "centre"
    point: list[float] | None = None
    output: int = 0
    a: float = 0.0
    b: float = 0.0

    def update(
        self,
        source: str,
        x: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        atol: np.ndarray,
        rtol: float,
    ) -> None:
        if a.size == 0:
            return
        gap = np.nan_to_num(np.abs(a - b), nan=np.inf)  # a NaN must not pass
        self.max_abs = max(self.max_abs, float(gap.max()))
        allowed = atol + rtol * np.abs(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(gap == 0, 0.0, gap / allowed)
        ratio = np.nan_to_num(ratio, nan=np.inf)
        k = int(np.argmax(ratio))
        if ratio.flat[k] > self.ratio or self.point is None:
            i, j = np.unravel_index(k, ratio.shape)
            self.ratio, self.source, self.output = float(ratio.flat[k]), source, int(j)
            self.point = [float(v) for v in x[i]]
            self.a, self.b = float(a[i, j]), float(b[i, j])


def _check_shapes(original: ReLUNetwork, compressed: ReLUNetwork, box: Box) -> None:
    a, b = original.widths, compressed.widths
    if (a[0], a[-1]) != (b[0], b[-1]):
        raise ExactCompressError(
            f"networks differ in shape: {a[0]} inputs/{a[-1]} outputs vs {b[0]}/{b[-1]}"
        )
    box.check_dim(a[0])


def _points_inside(
    points: np.ndarray | None, box: Box, n_in: int, what: str
) -> tuple[np.ndarray, int]:
    """Rows (flattened per sample) that lie in the box, and how many did not."""
    if points is None:
        return np.zeros((0, n_in)), 0
    x = np.asarray(points, dtype=np.float64)
    x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, n_in)
    if x.shape[1] != n_in:
        raise ExactCompressError(f"{what} have {x.shape[1]} features, the network takes {n_in}")
    keep = box.contains(x) & np.isfinite(x).all(axis=1)
    return x[keep], int((~keep).sum())


def _outputs(a: ReLUNetwork, b: ReLUNetwork, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of both networks on the rows of x, in chunks."""
    n_out = a.widths[-1]
    if len(x) == 0:
        return np.zeros((0, n_out)), np.zeros((0, n_out))
    ya, yb = [], []
    for start in range(0, len(x), _CHUNK):
        xs = x[start : start + _CHUNK]
        ya.append(a.forward(xs))
        yb.append(b.forward(xs))
    return np.concatenate(ya), np.concatenate(yb)
