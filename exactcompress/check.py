"""``exactcompress check MODEL stability.json``: re-check a report without trusting it.

Every claim of the report is checked by evidence computed here, from the model file
and the report's domain only:

- unstable: the report's two witnesses of the neuron are read back and forward-passed
  in float64; each must lie in the domain and put the neuron strictly on its side,
  beyond the pass's rounding error bound (so the real-valued network agrees);
- stable: first refuted if any point (the report's witnesses, the box's centre,
  corners and random points) shows the neuron strictly on the other side; otherwise
  proved layer by layer with sound bounds (interval arithmetic, CROWN, alpha-CROWN),
  the neurons already proved being clamped to their state; what bounds leave goes to
  the sound branch and bound of ``exactcompress.bab``, and then, with ``--solver``, to
  a MILP of that solver (a solver's word, reported as such).

Verdicts: ``confirmed``, ``false`` (the claim is wrong, or its witness is: outside
the domain, missing, or not showing the sign) and ``unconfirmed`` (no method could
decide it in time). Exit status: 0 every claim confirmed, 1 some claim false,
3 none false but some unconfirmed (2 is left to bad input, 130 to Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .bounds import LayerwiseBounds
from .domain import Box
from .errors import ExactCompressError
from .network import ReLUNetwork
from .report import ACTIVE, FORMAT, INACTIVE, UNSTABLE

CONFIRMED, FALSE, UNCONFIRMED = "confirmed", "false", "unconfirmed"
EXIT_OK, EXIT_FALSE, EXIT_UNCONFIRMED = 0, 1, 3
#: --bounds choices, each including the ones before it
BOUNDS = ("interval", "crown", "alpha-crown")
#: a MILP confirms a stable claim only with a proven bound beyond this margin
MILP_MARGIN = 1e-5
Progress = Callable[[str], None]


@dataclass
class ClaimCheck:
    """One claim of the report (layer from 1, as in stability.json) and its verdict."""

    layer: int
    neuron: int
    claim: str
    verdict: str = UNCONFIRMED
    how: str = ""
    why: str = ""

    def line(self) -> str:
        verdict = self.verdict.upper()
        return (
            f"layer {self.layer} neuron {self.neuron}: claimed {self.claim}: {verdict}: {self.why}"
        )


@dataclass
class CheckResult:
    """Every claim checked, in report order, and how each was settled."""

    claims: list[ClaimCheck] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, verdict: str) -> int:
        return sum(c.verdict == verdict for c in self.claims)

    @property
    def exit_code(self) -> int:
        if self.count(FALSE):
            return EXIT_FALSE
        return EXIT_UNCONFIRMED if self.count(UNCONFIRMED) else EXIT_OK

    def problems(self) -> list[str]:
        """One line per false or unconfirmed claim."""
        return [c.line() for c in self.claims if c.verdict != CONFIRMED]

    def summary(self) -> str:
        by_how: dict[str, int] = {}
        for c in self.claims:
            if c.verdict == CONFIRMED:
                by_how[c.how] = by_how.get(c.how, 0) + 1
        hows = ", ".join(f"{n} by {k}" for k, n in sorted(by_how.items()))
        return (
            f"check: {len(self.claims)} claims, {self.count(CONFIRMED)} confirmed"
            f"{f' ({hows})' if hows else ''}, {self.count(FALSE)} false, "
            f"{self.count(UNCONFIRMED)} unconfirmed ({self.seconds:.2f} s)"
        )


# ---- reading a report that may have been edited by hand ---------------------------


def parse_claims(data: dict, net: ReLUNetwork) -> tuple[Box, list[ClaimCheck]]:
    """The domain and the claims of a stability.json, checked for shape, not for truth;
    a claim about a neuron that does not exist is returned already false."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ExactCompressError(f"not a stability file (format {got!r}, expected {FORMAT!r})")
    widths = data.get("widths")
    if widths != net.widths:
        raise ExactCompressError(f"the report is for widths {widths}, the model has {net.widths}")
    if "domain" not in data:
        raise ExactCompressError("the report names no domain")
    box = Box.from_json(data["domain"], net.widths[0])
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise ExactCompressError("the report has no list of layers")
    claims = []
    for pos, entry in enumerate(layers):
        if not isinstance(entry, dict):
            raise ExactCompressError(f"layers[{pos}] is not an object")
        layer = entry.get("layer", pos + 1)
        if not isinstance(layer, int) or not 1 <= layer <= net.n_hidden:
            raise ExactCompressError(f"layers[{pos}] names layer {layer!r}: no such hidden layer")
        for state in (ACTIVE, INACTIVE, UNSTABLE):
            listed = entry.get(state, [])
            if not isinstance(listed, list):
                raise ExactCompressError(f"layer {layer}: {state} is not a list")
            for j in listed:
                claims.append(_claim(layer, j, state, net.hidden_widths[layer - 1]))
    return box, claims


def _claim(layer: int, j, state: str, width: int) -> ClaimCheck:
    if isinstance(j, bool) or not isinstance(j, int):
        return ClaimCheck(layer, j, state, FALSE, "report", f"{j!r} is not a neuron index")
    if not 0 <= j < width:
        return ClaimCheck(layer, j, state, FALSE, "report", f"no such neuron (layer has {width})")
    return ClaimCheck(layer, j, state)


def witness_points(data: dict, n_in: int) -> list[np.ndarray | None]:
    """The report's witness points, each as a float64 vector (None where malformed)."""
    wit = data.get("witnesses") or {}
    points = wit.get("points", []) if isinstance(wit, dict) else []
    out: list[np.ndarray | None] = []
    for p in points if isinstance(points, list) else []:
        try:
            x = np.asarray(p, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            x = None
        out.append(x if x is not None and x.size == n_in else None)
    return out


def witness_index(data: dict, layer: int, j: int, side: str):
    """Point index the report names for neuron j of ``layer`` (from 1) on ``side``."""
    wit = data.get("witnesses") or {}
    layers = wit.get("layers", []) if isinstance(wit, dict) else []
    if (
        not isinstance(layers, list)
        or len(layers) < layer
        or not isinstance(layers[layer - 1], dict)
    ):
        return None
    named = layers[layer - 1].get(side) or {}
    return named.get(str(j), named.get(j)) if isinstance(named, dict) else None


# ---- unstable claims: witnesses -----------------------------------------------------


class PointValues:
    """Pre-activations and their rounding error bounds at every well-formed report point,
    computed in one batch (one pass per point would dominate on wide networks)."""

    def __init__(self, net: ReLUNetwork, points: list) -> None:
        ok = [i for i, x in enumerate(points) if x is not None and np.isfinite(x).all()]
        self.row = {i: r for r, i in enumerate(ok)}
        x = np.array([points[i] for i in ok]).reshape(len(ok), net.widths[0])
        self.g, self.err = net.preactivations_with_error(x)

    def at(self, idx: int, layer: int, j: int) -> tuple[float, float]:
        """(g, error bound) of neuron j of hidden ``layer`` (from 0) at point ``idx``."""
        r = self.row[idx]
        return float(self.g[layer][r, j]), float(self.err[layer][r, j])


def check_unstable(c: ClaimCheck, data: dict, points: list, values: PointValues, box: Box) -> None:
    """Both witnesses must exist, lie in the domain and show g > 0 and g < 0 strictly."""
    for side, sign in (("pos", 1.0), ("neg", -1.0)):
        what = "g > 0" if sign > 0 else "g < 0"
        idx = witness_index(data, c.layer, c.neuron, side)
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(points):
            _set(c, FALSE, "witness", f"no witness point for {what} (report names {idx!r})")
            return
        x = points[idx]
        if x is None or not np.isfinite(x).all():
            _set(c, FALSE, "witness", f"witness point {idx} for {what} is malformed")
            return
        if not box.contains(x)[0]:
            k = int(np.argmax((x < box.lo) | (x > box.hi)))
            _set(
                c,
                FALSE,
                "witness",
                f"witness point {idx} for {what} lies outside the domain "
                f"(feature {k} = {x[k]!r}, domain [{box.lo[k]!r}, {box.hi[k]!r}])",
            )
            return
        g, err = values.at(idx, c.layer - 1, c.neuron)
        if not sign * g > err:
            beyond = (
                f", not {what}" if not sign * g > 0 else f", within its rounding error {err:.2g}"
            )
            _set(c, FALSE, "witness", f"witness point {idx} gives g = {g!r}{beyond}")
            return
    _set(c, CONFIRMED, "witness", "")


# ---- stable claims: refutation by points, then sound bounds ------------------------


def refute_by_points(
    stable: list[ClaimCheck], points: list, net: ReLUNetwork, box: Box, samples: int, seed: int
) -> None:
    """A stable claim is false if any point of the domain shows the other state strictly."""
    rng = np.random.default_rng(seed)
    sets = {
        "report witness": np.array([p for p in points if p is not None and box.contains(p)[0]]),
        "centre": ((box.lo + box.hi) / 2)[None, :],
        "corner": box.corners(samples // 2, rng),
        "random": box.sample(samples - samples // 2, rng),
    }
    for source, x in sets.items():
        if len(x) == 0:
            continue
        pre, errs = net.preactivations_with_error(x)
        for c in stable:
            if c.verdict != UNCONFIRMED:
                continue
            g, err = pre[c.layer - 1][:, c.neuron], errs[c.layer - 1][:, c.neuron]
            bad = g < -err if c.claim == ACTIVE else g > err
            if bad.any():
                i = int(np.argmax(bad))
                value = float(g[i])
                _set(c, FALSE, "point", f"a {source} point of the domain gives g = {value!r}")


def _set(c: ClaimCheck, verdict: str, how: str, why: str) -> None:
    c.verdict, c.how, c.why = verdict, how, why


@dataclass
class StableChecker:
    """Stable claims, layer by layer: bounds, then branch and bound, then a MILP."""

    net: ReLUNetwork
    box: Box
    bounds: str = "alpha-crown"
    solver: str | None = None
    deadline: float = float("inf")
    device: str | None = None
    progress: Progress = lambda _msg: None

    def run(self, stable: list[ClaimCheck]) -> None:
        lb = LayerwiseBounds(self.net, self.box, self.device)
        sound_active = [np.zeros(n, bool) for n in self.net.hidden_widths]
        sound_inactive = [np.zeros(n, bool) for n in self.net.hidden_widths]
        for layer in range(self.net.n_hidden):
            todo = [c for c in stable if c.layer == layer + 1 and c.verdict == UNCONFIRMED]
            lb.interval(layer)
            for method in BOUNDS[: BOUNDS.index(self.bounds) + 1]:
                left = [c for c in todo if c.verdict == UNCONFIRMED]
                if method != "interval":
                    steps = 20 if method == "alpha-crown" else 0
                    lb.back_substitute(layer, np.array([c.neuron for c in left]), steps)
                self._by_bounds(left, *lb.bounds(layer), method)
            left = [c for c in todo if c.verdict == UNCONFIRMED]
            if left:
                self._by_bab(layer, left)
            for c in todo:
                if c.verdict == CONFIRMED:
                    (sound_active if c.claim == ACTIVE else sound_inactive)[layer][c.neuron] = True
            left = [c for c in todo if c.verdict == UNCONFIRMED]
            if left and self.solver:
                self._by_milp(layer, left, lb, sound_active, sound_inactive)
            lb.fix(layer, sound_active[layer], sound_inactive[layer])
            self.progress(
                f"layer {layer + 1}: {len(todo)} stable claims, "
                f"{sum(c.verdict == CONFIRMED for c in todo)} confirmed"
            )

    def _by_bounds(
        self, claims: list[ClaimCheck], lower: np.ndarray, upper: np.ndarray, method: str
    ) -> None:
        for c in claims:
            lo, up = float(lower[c.neuron]), float(upper[c.neuron])
            if (c.claim == ACTIVE and lo >= 0) or (c.claim == INACTIVE and up <= 0):
                _set(c, CONFIRMED, method, "")
            else:
                _set(c, UNCONFIRMED, "", f"{method} bounds [{lo:.3g}, {up:.3g}] cross 0")

    def _by_bab(self, layer: int, claims: list[ClaimCheck]) -> None:
        outcome = certify_by_bab(
            self.net,
            self.box,
            [(layer, c.neuron, c.claim == ACTIVE) for c in claims],
            self.seconds_left(),
            self.device,
        )
        for c in claims:
            status = outcome.get((layer, c.neuron), "unknown")
            if status == "proved":
                _set(c, CONFIRMED, "branch and bound", "")
            elif status == "refuted":
                _set(c, FALSE, "branch and bound", "branch and bound refutes it")
            else:
                c.why += f"; branch and bound: {status}"

    def _by_milp(
        self,
        layer: int,
        claims: list[ClaimCheck],
        lb: LayerwiseBounds,
        active: list[np.ndarray],
        inactive: list[np.ndarray],
    ) -> None:
        from .milp_check import milp_extreme

        lowers, uppers = zip(*(lb.bounds(k) for k in range(layer + 1)), strict=True)
        fixed = [
            np.where(i, -1, np.where(a, 1, 0)).astype(np.int8) for a, i in zip(active, inactive)
        ]
        for c in claims:
            left = self.seconds_left()
            if left is not None and left <= 0:
                c.why += f"; {self.solver}: time limit"
                continue
            side = "pos" if c.claim == INACTIVE else "neg"
            status, bound, x = milp_extreme(
                self.net,
                self.box,
                layer,
                c.neuron,
                side,
                list(lowers),
                list(uppers),
                fixed[: layer + 1],
                self.solver,
                left,
            )
            if x is not None:
                gs, errs = self.net.preactivations_with_error(x[None, :])
                g, err = float(gs[layer][0, c.neuron]), float(errs[layer][0, c.neuron])
                if (g < -err if c.claim == ACTIVE else g > err) and self.box.contains(x)[0]:
                    _set(c, FALSE, f"milp:{self.solver}", f"the MILP's solution gives g = {g!r}")
                    continue
            if status in ("optimal", "stopped") and bound < -MILP_MARGIN:
                _set(c, CONFIRMED, f"milp:{self.solver}", "")
            else:
                c.why += f"; {self.solver}: {status}, bound {bound:.3g}"

    def seconds_left(self) -> float | None:
        if self.deadline == float("inf"):
            return None
        return max(0.0, self.deadline - time.monotonic())


def certify_by_bab(
    net: ReLUNetwork,
    box: Box,
    claims: list[tuple[int, int, bool]],
    time_limit: float | None,
    device: str | None,
) -> dict[tuple[int, int], str]:
    """exactcompress.bab.certify when it is there; every claim "unknown" otherwise."""
    if not net.is_dense:  # branch and bound reads dense weights only (not convolutions)
        return {(layer, j): "dense networks only" for layer, j, _ in claims}
    try:
        from .bab import certify
    except ImportError:
        return {(layer, j): "not available" for layer, j, _ in claims}
    return certify(net, box, claims, time_limit=time_limit, device=device)


# ---- entry points -------------------------------------------------------------------


def check_report(
    net: ReLUNetwork,
    data: dict,
    bounds: str = "alpha-crown",
    solver: str | None = None,
    time_limit: float | None = None,
    device: str | None = None,
    samples: int = 2000,
    seed: int = 0,
    progress: Progress | None = None,
) -> CheckResult:
    """Check every claim of the stability report ``data`` (a parsed stability.json)."""
    if bounds not in BOUNDS:
        raise ExactCompressError(f"unknown bounds {bounds!r}; choose one of {', '.join(BOUNDS)}")
    t0 = time.monotonic()
    box, claims = parse_claims(data, net)
    points = witness_points(data, net.widths[0])
    values = PointValues(net, points)
    for c in claims:
        if c.claim == UNSTABLE and c.verdict == UNCONFIRMED:
            check_unstable(c, data, points, values, box)
    stable = [c for c in claims if c.claim != UNSTABLE and c.verdict == UNCONFIRMED]
    refute_by_points(stable, points, net, box, samples, seed)
    deadline = t0 + time_limit if time_limit is not None else float("inf")
    checker = StableChecker(
        net, box, bounds, solver, deadline, device, progress or (lambda m: None)
    )
    checker.run([c for c in stable if c.verdict == UNCONFIRMED])
    return CheckResult(claims, time.monotonic() - t0)


def load_report_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ExactCompressError(f"cannot read stability file {path}: {err}") from None


def add_check_parser(sub) -> None:
    p = sub.add_parser(
        "check",
        help="re-check every claim of a stability.json without trusting it",
        description="Exit status: 0 every claim confirmed; 1 some claim false (or its "
        "witness is); 3 none false but some stable claims unconfirmed; 2 bad input.",
    )
    p.add_argument("model", help="the model the report is about")
    p.add_argument("stability", help="stability.json (written by the package or by hand)")
    p.add_argument("--bounds", default="alpha-crown", choices=BOUNDS, help="strongest bounds")
    p.add_argument(
        "--solver", default=None, help="confirm what sound methods leave by a MILP of this solver"
    )
    p.add_argument(
        "--time-limit", type=float, default=300.0, metavar="S", help="seconds for bab and MILP"
    )
    p.add_argument("--samples", type=int, default=2000, help="points tried against stable claims")
    p.add_argument("--device", default=None, help="torch device for bounds and branch and bound")
    p.add_argument("--seed", type=int, default=0)


def cmd_check(args: argparse.Namespace) -> int:
    from .io import load_network

    net = load_network(args.model)
    data = load_report_json(args.stability)
    if args.solver:
        from .solvers import require

        require(args.solver)
    result = check_report(
        net,
        data,
        bounds=args.bounds,
        solver=args.solver,
        time_limit=args.time_limit,
        device=args.device,
        samples=args.samples,
        seed=args.seed,
    )
    for line in result.problems():
        print(line)
    print(result.summary())
    if result.exit_code == EXIT_UNCONFIRMED:
        print("check: no claim is false, but some stable claims could not be confirmed (exit 3)")
    return result.exit_code
