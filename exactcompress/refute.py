"""Proposals of witness inputs: points of the box that may put a neuron on its unseen side.

Nothing here decides anything: the pipeline forward-passes every proposed point in
float64 (NeuronEvidence.observe), so a proposal that does not flip a neuron costs a
forward pass and nothing else. The search itself runs in float64 too: on CPU it is
hardly slower than float32, and the objective it maximises is then the very number
the check looks at, so "flipped" here means flipped there (up to summation order).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from .bounds import pick_device
from .conv import torch_map
from .domain import Box
from .network import ReLUNetwork

LEAK = 0.01
#: a hidden layer's weights, or for a convolution the torch function applying them
Layer = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def sampling_points(
    box: Box, n_random: int, n_corners: int, rng: np.random.Generator
) -> np.ndarray:
    """Uniform points, vertices (all of them when few enough) and the centre of the box."""
    parts = [box.sample(n_random, rng), ((box.lo + box.hi) / 2)[None]]
    if n_corners > 0:
        parts.append(box.corners(n_corners, rng))
    return np.concatenate(parts)


def first_layer_extremes(
    net: ReLUNetwork, box: Box, neurons_to_max: np.ndarray, neurons_to_min: np.ndarray
) -> np.ndarray:
    """The vertices where first-layer neurons reach their max (resp. min) over the box.

    g = w.x + b is linear, so its max over the box is at x_i = hi_i where w_i > 0, lo_i
    elsewhere; one row per requested neuron, maximisers first.
    """
    w = net.weights[0]
    up = _dense_rows(w, neurons_to_max) > 0
    down = _dense_rows(w, neurons_to_min) > 0
    return np.concatenate([np.where(up, box.hi, box.lo), np.where(down, box.lo, box.hi)])


def _dense_rows(w, rows: np.ndarray) -> np.ndarray:
    """Rows of a dense or scipy.sparse weight matrix, as a dense array."""
    picked = w[np.asarray(rows, dtype=int)]
    return picked.toarray() if sp.issparse(picked) else picked


def gradient_search(
    net: ReLUNetwork,
    box: Box,
    to_push_pos: list[np.ndarray],
    to_push_neg: list[np.ndarray],
    starts: np.ndarray,
    steps: int = 30,
    step_size: float = 0.05,
    device: str | torch.device | None = None,
    batch_limit: int = 4096,
    starts_per_candidate: int = 2,
    deadline: float = float("inf"),
) -> np.ndarray:
    """Projected sign-gradient ascent (PGD) of +g (``to_push_pos[l]``) or -g (``to_push_neg[l]``).

    Each candidate gets its own trajectories, from the ``starts_per_candidate`` starts
    where its objective is highest (closest to flipping). Steps move every feature by
    ``step_size`` times the box width and are clipped into the box; a trajectory stops
    once its neuron is strictly on the other side. Inactive ReLUs pass a small gradient
    (LEAK) so that a deep neuron is not stuck behind neurons that are off at the start.
    Returns the final point of every trajectory (one row per candidate and start, layer
    by layer, pushed-up neurons first); all points are in the box. At ``deadline``
    (time.monotonic()) it stops between two batches and returns what it has.
    """
    dev = pick_device(device)
    starts = box.clip(np.atleast_2d(np.asarray(starts, dtype=np.float64)))
    if starts.shape[0] == 0:
        starts = ((box.lo + box.hi) / 2)[None]
    params = net.tensors(dev)
    hidden = [(_conv_map(net, k, dev) or w, b) for k, (w, b) in enumerate(params)]
    bounds = tuple(torch.from_numpy(v).to(dev) for v in (box.lo, box.hi))
    pre = net.preactivations(starts)
    found = [np.empty((0, box.dim))]
    for layer, (pos, neg) in enumerate(zip(to_push_pos, to_push_neg, strict=True)):
        neurons, signs = _targets(pos, neg)
        if neurons.size == 0:
            continue
        picks = _best_starts(pre[layer][:, neurons] * signs, starts_per_candidate)
        k = picks.shape[1]
        w, b = params[layer]
        rows = np.arange(neurons.size * k)
        limit = batch_limit if net.is_dense else max(1, min(batch_limit, 2**24 // max(net.widths)))
        for chunk in np.array_split(rows, -(-rows.size // limit)):
            if time.monotonic() >= deadline:
                return np.concatenate(found)
            own = torch.from_numpy(neurons[chunk // k]).to(dev)
            w_own = w.index_select(0, own).to_dense() if w.is_sparse else w[own]
            end = _ascend(
                hidden[:layer],
                torch.from_numpy(starts[picks.reshape(-1)[chunk]]).to(dev),
                (w_own, b[own]),
                torch.from_numpy(signs[chunk // k]).to(dev),
                bounds,
                steps,
                step_size,
            )
            found.append(box.clip(end.cpu().numpy()))
    return np.concatenate(found)


def _conv_map(net: ReLUNetwork, layer: int, dev: torch.device):
    """torch conv2d for a convolution layer (None for a dense one)."""
    spec = None if net.convs is None else net.convs[layer]
    return None if spec is None else torch_map(spec, dev)


def _targets(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neuron indices and objective signs (+1 maximise g, -1 minimise g)."""
    pos, neg = np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)
    return np.concatenate([pos, neg]), np.concatenate([np.ones(pos.size), -np.ones(neg.size)])


def _best_starts(scores: np.ndarray, k: int) -> np.ndarray:
    """(n_candidates, k) indices of the starts with the highest score for each candidate."""
    k = max(1, min(k, scores.shape[0]))
    if k == scores.shape[0]:
        return np.broadcast_to(np.arange(k), (scores.shape[1], k)).copy()
    return np.argpartition(-scores, k - 1, axis=0)[:k].T


def _objective(
    hidden: list[tuple[Layer, torch.Tensor]],
    x: torch.Tensor,
    target: tuple[torch.Tensor, torch.Tensor],
    signs: torch.Tensor,
) -> torch.Tensor:
    """sign * g of each row's own neuron (weights ``target``), with leaky ReLU gradients."""
    h = x
    for w, b in hidden:
        if callable(w):  # a convolution: conv2d
            g = w(h) + b
        elif w.is_sparse:  # torch multiplies a column-major dense matrix by it ~5x faster
            g = h.t().contiguous().t() @ w.T + b
        else:
            g = torch.addmm(b, h, w.T)
        neg = g.clamp_max(0)
        h = g.clamp_min(0) + LEAK * (neg - neg.detach())
    w, b = target
    return signs * ((h * w).sum(dim=1) + b)


def _ascend(
    hidden: list[tuple[Layer, torch.Tensor]],
    x: torch.Tensor,
    target: tuple[torch.Tensor, torch.Tensor],
    signs: torch.Tensor,
    box: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    step_size: float,
) -> torch.Tensor:
    """Final point of each row's trajectory; a row stops where its neuron has flipped.

    The step is step_size for the first half of the budget, then decays linearly, so a
    trajectory can cross the whole box and still settle into a narrow region.
    """
    lo, hi = box
    scale = step_size * (hi - lo)
    for t in range(steps):
        x.requires_grad_(True)
        obj = _objective(hidden, x, target, signs)
        moving = obj.detach() <= 0
        if not bool(moving.any()):
            break
        (grad,) = torch.autograd.grad((obj * moving).sum(), x)
        with torch.no_grad():
            x = x.detach() + min(1.0, 2 - 2 * t / steps) * scale * grad.sign()
            x = torch.clamp(x, lo, hi)
    return x.detach()
