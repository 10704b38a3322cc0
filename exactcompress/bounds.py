"""Sound bounds on every hidden pre-activation over a box.

Bounds prove neurons stable (a bound that does not cross 0) and give the MILP its
big-M constants, so they must hold for the real-valued network: every bound is
widened outwards by a bound on the float64 rounding error of the sums that made it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from .domain import Box
from .errors import ExactCompressError
from .network import ReLUNetwork

EPS64 = float(np.finfo(np.float64).eps)


@dataclass
class LayerBounds:
    """lower[l] <= g_l(x) <= upper[l] for every x in the domain, hidden layers l = 0.."""

    lower: list[np.ndarray]
    upper: list[np.ndarray]

    def intersect(self, other: LayerBounds) -> LayerBounds:
        return LayerBounds(
            [np.maximum(a, b) for a, b in zip(self.lower, other.lower, strict=True)],
            [np.minimum(a, b) for a, b in zip(self.upper, other.upper, strict=True)],
        )


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present unless told otherwise."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def rounding_margin(w_abs: torch.Tensor, mag: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Outward margin covering float64 rounding in sum_j w_j x_j + b with |x_j| <= mag_j.

    A dot product of n terms accumulates at most about n*eps relative error of the sum
    of absolute values (Higham, ch. 3); we double it and add a floor for denormals.
    """
    n = w_abs.shape[-1]
    return 2.0 * (n + 2) * EPS64 * (mag @ w_abs.T + bias.abs()) + 1e-300


def interval_bounds(
    net: ReLUNetwork, box: Box, device: str | torch.device | None = None
) -> LayerBounds:
    """Interval arithmetic, layer by layer, in float64 on ``device``."""
    dev = pick_device(device)
    lo = torch.from_numpy(box.lo).to(dev)
    hi = torch.from_numpy(box.hi).to(dev)
    lowers, uppers = [], []
    for w, b in net.tensors(dev)[:-1]:
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        w_abs = w.abs()
        center = mid @ w.T + b
        spread = rad @ w_abs.T
        margin = rounding_margin(w_abs, mid.abs() + rad, b)
        g_lo, g_hi = center - spread - margin, center + spread + margin
        lowers.append(g_lo.cpu().numpy())
        uppers.append(g_hi.cpu().numpy())
        lo, hi = g_lo.clamp_min(0.0), g_hi.clamp_min(0.0)
    return LayerBounds(lowers, uppers)


# ---- CROWN -----------------------------------------------------------------------
#
# Soundness under floating point. For a block of target rows (the neurons of layer l
# and their negations, so that one "upper bound" routine gives both sides) we keep
# the invariant, true in real arithmetic for every x in the box,
#
#     target(x) <= coef . h_k(x) + const + err
#
# where coef, const and err are the float64 numbers actually stored. Relaxing the
# ReLUs of layer k and substituting g_k = W_k h_{k-1} + b_k gives new stored
# numbers coef', const'; the real inequality then holds with the *exact* products
# and sums, and these differ from the stored ones by at most gamma_n times the sum
# of absolute values of the terms (Higham, ch. 3, any summation order, FMA or not),
# n = inner dimension. With |h_{k-1}| <= hmag (a sound bound) that difference,
# applied to h_{k-1}, is below gamma_{n+2} * mass with
#
#     mass = |d| @ (|W_k| @ hmag + |b_k|) + |const| + coef+ @ shift,
#
# d being the relaxed coefficient on g_k. We add 2 (n + 4) eps * mass to err, about
# four times gamma_{n+2}, so that the rounding of the margins themselves is covered
# too. The final concretisation sum_i max(coef_i lo_i, coef_i hi_i) + const gets
# the same treatment. Relaxation lines are made valid for the stored slopes (see
# _relaxations), and the lower lines a*g with a in [0, 1] are exact.

ROW_CHUNK = 4096


@dataclass
class _Relaxation:
    """Linear bounds of relu(g_k): low_slope g <= relu(g) <= up_slope g + up_shift.

    ``mass`` bounds |W_k| |h_{k-1}| + |b_k| over the box: the scale of the rounding
    errors made when g_k is substituted by W_k h_{k-1} + b_k.
    """

    up_slope: torch.Tensor
    up_shift: torch.Tensor
    low_slope: torch.Tensor
    unstable: torch.Tensor
    mass: torch.Tensor


def _relaxation(lower: torch.Tensor, upper: torch.Tensor, mass: torch.Tensor) -> _Relaxation:
    """Triangle relaxation; the CROWN heuristic picks the lower slope (1 if U > -L).

    The upper line passes through (L, 0) and (U, U) only in exact arithmetic, so its
    shift is recomputed from the stored slope as max(-s L, U (1 - s)), the smallest
    shift valid at both ends, and inflated by 8 eps to cover the rounding of that
    formula; a line above relu at both ends of [L, U] is above it on all of it.
    """
    active, inactive = lower >= 0, upper <= 0
    unstable = ~active & ~inactive
    safe_width = torch.where(unstable, upper - lower, torch.ones_like(upper))
    slope = torch.where(unstable, upper / safe_width, active.to(upper.dtype))
    shift = torch.maximum(-slope * lower, upper * (1 - slope)) * (1 + 8 * EPS64)
    shift = torch.where(unstable, shift, torch.zeros_like(shift))
    low = torch.where(unstable, (upper > -lower).to(upper.dtype), active.to(upper.dtype))
    return _Relaxation(slope, shift, low, unstable, mass)


class _BackSubstitution:
    """Bounds of all hidden layers on one device, tightened layer by layer."""

    def __init__(self, net: ReLUNetwork, box: Box, dev: torch.device, start: LayerBounds):
        self.params = net.tensors(dev)
        self.dense = net.is_dense
        #: target neurons per chunk of a network with sparse layers: their dense
        #: coefficients (chunk x widest layer) stay near 2**25 numbers
        self.chunk = max(1, min(ROW_CHUNK // 2, 2**24 // max(net.widths)))
        self.lo, self.hi = (torch.from_numpy(v).to(dev) for v in (box.lo, box.hi))
        self.lower = [torch.from_numpy(v).to(dev) for v in start.lower]
        self.upper = [torch.from_numpy(v).to(dev) for v in start.upper]
        self.relax: list[_Relaxation] = []

    def relaxations(self, layer: int) -> list[_Relaxation]:
        """Relaxations of the layers below ``layer``, whose bounds are final by now."""
        while len(self.relax) < layer:
            k = len(self.relax)
            w, b = self.params[k]
            h_mag = self.box_mag() if k == 0 else self.upper[k - 1].clamp_min(0)
            mass = h_mag @ w.abs().T + b.abs()
            self.relax.append(_relaxation(self.lower[k], self.upper[k], mass))
        return self.relax[:layer]

    def box_mag(self) -> torch.Tensor:
        return torch.maximum(self.lo.abs(), self.hi.abs())

    def target_rows(self, layer: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        """[W_l b_l; -W_l -b_l]: upper bounds of these rows are upper and -lower bounds of g_l
        (only the neurons ``idx`` when given; a sparse layer's rows made dense)."""
        w, b = self.params[layer]
        if idx is not None:
            w, b = w.index_select(0, idx), b[idx]
        if w.is_sparse:
            w = w.to_dense()
        rows = torch.cat([w, b[:, None]], dim=1)
        return torch.cat([rows, -rows])

    def bound_targets(
        self,
        layer: int,
        idx: torch.Tensor | None,
        upper: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``upper``(rows) over ``target_rows(layer, idx)``, chunk by chunk: the upper
        bounds of the neurons ``idx`` (all when None), then of their negations. A network
        with sparse layers makes rows dense only a small chunk of neurons at a time."""
        if self.dense:
            rows = self.target_rows(layer)
            if idx is not None:
                n = rows.shape[0] // 2
                rows = torch.cat([rows[idx], rows[n + idx]])
            return torch.cat([upper(c) for c in rows.split(ROW_CHUNK)])
        if idx is None:
            idx = torch.arange(self.params[layer][1].shape[0], device=self.lo.device)
        ups, lows = [], []
        for part in idx.split(self.chunk):
            ub = upper(self.target_rows(layer, part))
            ups.append(ub[: part.numel()])
            lows.append(ub[part.numel() :])
        return torch.cat(ups + lows)

    def upper_rows(
        self, rows: torch.Tensor, relax: list[_Relaxation], alphas: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Sound upper bound over the box of rows[:, :-1] . h_{l-1} + rows[:, -1].

        ``relax`` covers layers 0..l-1; ``alphas[k]``, when given, are (m, n_k) lower
        slopes in [0, 1] used for the unstable neurons of layer k.
        """
        coef, const = rows[:, :-1], rows[:, -1]
        err = torch.zeros_like(const)
        for k in range(len(relax) - 1, -1, -1):
            w, b = self.params[k]
            r = relax[k]
            low = r.low_slope if alphas is None else torch.where(r.unstable, alphas[k], r.low_slope)
            pos = coef.clamp_min(0)
            d = pos * r.up_slope + coef.clamp_max(0) * low
            lifted = pos @ r.up_shift
            mass = d.abs() @ r.mass + const.abs() + lifted
            err = err + 2 * (w.shape[0] + 4) * EPS64 * mass + 1e-300
            const = const + lifted + d @ b
            # a sparse layer: torch multiplies a column-major dense matrix by it ~8x faster
            coef = d.t().contiguous().t() @ w if w.is_sparse else d @ w
        value = coef.clamp_min(0) @ self.hi + coef.clamp_max(0) @ self.lo + const
        mass = coef.abs() @ self.box_mag() + const.abs()
        return value + err + 2 * (coef.shape[1] + 4) * EPS64 * mass + 1e-300

    def tighten(self, layer: int, upper_rows: torch.Tensor) -> None:
        """Intersect layer's bounds with those read from ``target_rows``'s upper bounds."""
        n = upper_rows.shape[0] // 2
        self.lower[layer] = torch.maximum(self.lower[layer], -upper_rows[n:])
        self.upper[layer] = torch.minimum(self.upper[layer], upper_rows[:n])

    def result(self) -> LayerBounds:
        return LayerBounds(
            [v.cpu().numpy() for v in self.lower], [v.cpu().numpy() for v in self.upper]
        )


def crown_bounds(
    net: ReLUNetwork, box: Box, device: str | torch.device | None = None
) -> LayerBounds:
    """CROWN back-substitution (Zhang et al. 2018), layer by layer, never looser than interval.

    Layer l is bounded through the ReLUs of layers < l relaxed with the bounds already
    found for them; the first hidden layer is exact under interval arithmetic.
    """
    dev = pick_device(device)
    state = _BackSubstitution(net, box, dev, interval_bounds(net, box, dev))
    with torch.no_grad():
        for layer in range(1, net.n_hidden):
            relax = state.relaxations(layer)
            bound = partial(state.upper_rows, relax=relax)
            state.tighten(layer, state.bound_targets(layer, None, bound))
    return state.result()


# ---- alpha-CROWN -------------------------------------------------------------------


class Adam:
    """Plain Adam (Kingma and Ba 2015) on a list of tensors with per-group step sizes.

    torch.optim.Adam would do, but its first use imports torch._dynamo, seconds that a
    bound computed in a fraction of a second should not pay.
    """

    def __init__(self, groups: list[tuple[list[torch.Tensor], float]], betas=(0.9, 0.999)):
        self.groups = [(list(ts), lr) for ts, lr in groups]
        self.b1, self.b2 = betas
        self.t = 0
        self.m = [[torch.zeros_like(p) for p in ts] for ts, _ in self.groups]
        self.v = [[torch.zeros_like(p) for p in ts] for ts, _ in self.groups]

    def zero_grad(self) -> None:
        for ts, _ in self.groups:
            for p in ts:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for (ts, lr), ms, vs in zip(self.groups, self.m, self.v):
            for p, m, v in zip(ts, ms, vs):
                if p.grad is None:
                    continue
                m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
                v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
                p.sub_(lr * (m / c1) / ((v / c2).sqrt() + 1e-8))


def alpha_crown_bounds(
    net: ReLUNetwork,
    box: Box,
    steps: int = 20,
    lr: float = 0.1,
    device: str | torch.device | None = None,
    only: list[np.ndarray] | None = None,
) -> LayerBounds:
    """alpha-CROWN (Xu et al. 2021): optimise the lower ReLU slopes by projected Adam.

    Every target row (each neuron of layer l, for each side) has its own slope for
    every unstable neuron of every layer < l, started at the CROWN choice; rows do not
    interact, so chunks of rows are optimised separately. Any slope in [0, 1] gives a
    sound bound and every bound evaluated along the way carries the rounding margin,
    so the best one seen per row is kept; the result is intersected with CROWN's.
    ``only[l]``, when given, lists the neurons of layer l worth optimising (the others
    keep their CROWN bounds): the exact stage needs few of them.
    """
    dev = pick_device(device)
    state = _BackSubstitution(net, box, dev, crown_bounds(net, box, dev))
    for layer in range(1, net.n_hidden):
        relax = state.relaxations(layer)
        n = state.params[layer][1].shape[0]
        idx = torch.arange(n, device=dev)
        if only is not None:
            idx = torch.as_tensor(np.asarray(only[layer], dtype=np.int64), device=dev)
            if idx.numel() == 0:
                continue
        optimise = partial(_optimise, state, relax=relax, steps=steps, lr=lr)
        best = state.bound_targets(layer, None if only is None else idx, optimise)
        full = torch.full((2 * n,), torch.inf, dtype=best.dtype, device=dev)
        full[idx], full[n + idx] = best[: idx.numel()], best[idx.numel() :]
        state.tighten(layer, full)
    return state.result()


def _optimise(
    state: _BackSubstitution,
    rows: torch.Tensor,
    relax: list[_Relaxation],
    steps: int,
    lr: float,
) -> torch.Tensor:
    """Best sound upper bound of ``rows`` over ``steps`` projected Adam steps on the slopes."""
    alphas = [r.low_slope.expand(rows.shape[0], -1).clone().requires_grad_() for r in relax]
    opt = Adam([(alphas, lr)])
    best = torch.full_like(rows[:, -1], torch.inf)
    for _ in range(steps):
        bound = state.upper_rows(rows, relax, alphas)
        best = torch.minimum(best, bound.detach())
        opt.zero_grad()
        bound.sum().backward()
        opt.step()
        with torch.no_grad():
            for a in alphas:
                a.clamp_(0.0, 1.0)
    with torch.no_grad():
        return torch.minimum(best, state.upper_rows(rows, relax, alphas))


# ---- entry points ------------------------------------------------------------------

METHODS: dict[str, Callable[..., LayerBounds]] = {
    "interval": interval_bounds,
    "crown": crown_bounds,
    "alpha-crown": alpha_crown_bounds,
}


def compute_bounds(
    net: ReLUNetwork, box: Box, method: str = "crown", device: str | torch.device | None = None
) -> LayerBounds:
    """Bounds by name, as the command line's --bounds option gives it."""
    try:
        fn = METHODS[method]
    except KeyError:
        raise ExactCompressError(
            f"unknown bounds method {method!r}; choose one of {', '.join(METHODS)}"
        ) from None
    return fn(net, box, device=device)


def decide_from_bounds(bounds: LayerBounds) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per hidden layer: (proved_active = lower >= 0, proved_inactive = upper <= 0)."""
    return [lo >= 0 for lo in bounds.lower], [up <= 0 for up in bounds.upper]


# ---- layer by layer, with proved states clamped in ---------------------------------


def interval_layer(
    w: torch.Tensor, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound bounds of w h + b for lo <= h <= hi (one step of ``interval_bounds``)."""
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    w_abs = w.abs()
    center, spread = mid @ w.T + b, rad @ w_abs.T
    margin = rounding_margin(w_abs, mid.abs() + rad, b)
    return center - spread - margin, center + spread + margin


class LayerwiseBounds:
    """Bounds of one hidden layer at a time, the states proved so far clamped in.

    For re-checking claims without trusting them (``exactcompress.check``): the caller
    bounds layer l, proves what it can by any sound means, ``fix``es those states, and
    only then bounds layer l + 1. A neuron fixed active gets lower >= 0 (its ReLU is the
    identity in every relaxation), one fixed inactive upper <= 0 (its output is 0);
    both are sound because the proofs are, and they tighten every later layer.
    """

    def __init__(self, net: ReLUNetwork, box: Box, device: str | torch.device | None = None):
        self.dev = pick_device(device)
        self.net = net
        self.state = _BackSubstitution(net, box, self.dev, interval_bounds(net, box, self.dev))

    def bounds(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of hidden layer ``layer`` as they stand."""
        return self.state.lower[layer].cpu().numpy(), self.state.upper[layer].cpu().numpy()

    def interval(self, layer: int) -> None:
        """Interval arithmetic from the (clamped) bounds of the layer below."""
        if layer == 0:
            return  # interval_bounds is already exact for the first layer
        st = self.state
        w, b = st.params[layer]
        lo, hi = st.lower[layer - 1].clamp_min(0.0), st.upper[layer - 1].clamp_min(0.0)
        g_lo, g_hi = interval_layer(w, b, lo, hi)
        st.lower[layer] = torch.maximum(st.lower[layer], g_lo)
        st.upper[layer] = torch.minimum(st.upper[layer], g_hi)

    def back_substitute(
        self, layer: int, neurons: np.ndarray, alpha_steps: int = 0, lr: float = 0.1
    ) -> None:
        """CROWN (``alpha_steps`` = 0) or alpha-CROWN bounds of ``neurons`` of ``layer``
        through the relaxations of the layers below, intersected with what is known."""
        neurons = np.asarray(neurons, dtype=np.int64)
        if layer == 0 or neurons.size == 0:
            return
        st = self.state
        with torch.no_grad():
            relax = st.relaxations(layer)
            idx = torch.from_numpy(neurons).to(self.dev)
        if alpha_steps:
            ub = st.bound_targets(layer, idx, lambda c: _optimise(st, c, relax, alpha_steps, lr))
        else:
            with torch.no_grad():
                ub = st.bound_targets(layer, idx, partial(st.upper_rows, relax=relax))
        m = idx.numel()
        st.lower[layer][idx] = torch.maximum(st.lower[layer][idx], -ub[m:])
        st.upper[layer][idx] = torch.minimum(st.upper[layer][idx], ub[:m])

    def fix(self, layer: int, active: np.ndarray, inactive: np.ndarray) -> None:
        """Clamp neurons proved active (lower >= 0) or inactive (upper <= 0) on the domain;
        before any later layer is bounded through this one."""
        st = self.state
        if len(st.relax) > layer:
            raise ValueError(f"layer {layer} is already relaxed: fix it before bounding later")
        act = torch.from_numpy(np.asarray(active, dtype=bool)).to(self.dev)
        ina = torch.from_numpy(np.asarray(inactive, dtype=bool)).to(self.dev)
        st.lower[layer] = torch.where(act, st.lower[layer].clamp_min(0.0), st.lower[layer])
        st.upper[layer] = torch.where(ina, st.upper[layer].clamp_max(0.0), st.upper[layer])
