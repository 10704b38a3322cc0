"""ReLUNetwork: the float64 layer list every stage works on.

Stability is a property of the real-valued function, so everything downstream
(bounds, witnesses, MILP, pruning) sees one float64 copy of the weights and never
the torch module, whose float32 arithmetic would blur the sign of small
pre-activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .errors import ExactCompressError

if TYPE_CHECKING:
    from .conv import ConvSpec


@dataclass
class ReLUNetwork:
    """Fully connected network: h_l = relu(W_l h_{l-1} + b_l), last layer affine.

    ``weights[l]`` has shape (n_{l+1}, n_l); hidden layers are 1..L-1 in the paper's
    numbering, i.e. ``weights[0..L-2]`` feed ReLUs and ``weights[-1]`` is the output.

    A convolution layer (``convs[l]`` its ConvSpec, None for a dense layer; convolutions
    come first) has a ``scipy.sparse.csr_matrix`` as ``weights[l]``, its neurons
    numbered in the flattened C x H x W order of its output (see ``conv.py``).
    """

    weights: list
    biases: list[np.ndarray]
    convs: list[ConvSpec | None] | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.weights:
            raise ExactCompressError("network has no Linear layer")
        if len(self.weights) != len(self.biases):
            raise ExactCompressError("network has a different number of weights and biases")
        self.weights = [_as_float64(w) for w in self.weights]
        self._check_convs()
        self.biases = [np.ascontiguousarray(b, dtype=np.float64).reshape(-1) for b in self.biases]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 2:
                raise ExactCompressError(f"layer {i}: weight must be a matrix, got shape {w.shape}")
            if b.shape[0] != w.shape[0]:
                raise ExactCompressError(
                    f"layer {i}: bias has {b.shape[0]} entries for {w.shape[0]} neurons"
                )
            if i and w.shape[1] != self.weights[i - 1].shape[0]:
                raise ExactCompressError(
                    f"layer {i}: expects {w.shape[1]} inputs but the layer before has "
                    f"{self.weights[i - 1].shape[0]} outputs"
                )
            if not (np.isfinite(w.data if sp.issparse(w) else w).all() and np.isfinite(b).all()):
                raise ExactCompressError(f"layer {i}: weights or biases contain NaN or infinity")

    def _check_convs(self) -> None:
        """None when no layer is a convolution; else one entry per layer, convolutions first
        (a sparse layer without one, e.g. a prefix of a conv network, is a plain linear map)."""
        if self.convs is not None and all(c is None for c in self.convs):
            self.convs = None
        if self.convs is None:
            return
        if len(self.convs) != len(self.weights):
            raise ExactCompressError(
                f"convs has {len(self.convs)} entries for {len(self.weights)} layers"
            )
        n_conv = sum(c is not None for c in self.convs)
        if any(c is None for c in self.convs[:n_conv]) or self.convs[-1] is not None:
            raise ExactCompressError("convolutions must come first and the output layer be Linear")

    @property
    def is_dense(self) -> bool:
        """No sparse (convolution) layer: every stage, branch and bound included, applies."""
        return not any(sp.issparse(w) for w in self.weights)

    @property
    def shapes(self) -> list[list[int] | None]:
        """Per hidden layer, its (C, H, W) output shape, or None for a dense layer."""
        if self.convs is None:
            return [None] * self.n_hidden
        return [None if c is None else list(c.out_shape) for c in self.convs[:-1]]

    @property
    def widths(self) -> list[int]:
        """[inputs, hidden..., outputs], as in stability.json."""
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    @property
    def hidden_widths(self) -> list[int]:
        return [w.shape[0] for w in self.weights[:-1]]

    @property
    def n_hidden(self) -> int:
        return len(self.weights) - 1

    @property
    def n_parameters(self) -> int:
        if self.convs is None:
            return int(sum(w.size + b.size for w, b in zip(self.weights, self.biases)))
        return int(
            sum(
                w.size + b.size if c is None else c.kernel.size + c.channels
                for w, b, c in zip(self.weights, self.biases, self.convs)
            )
        )

    def preactivations(self, x: np.ndarray) -> list[np.ndarray]:
        """Pre-activations g_l of every hidden layer for a batch x of shape (m, n0)."""
        h = np.atleast_2d(np.asarray(x, dtype=np.float64))
        out = []
        for i, b in enumerate(self.biases[:-1]):
            g = self._times(i, h) + b
            out.append(g)
            h = np.maximum(g, 0.0)
        return out

    def preactivations_with_error(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Pre-activations of a batch and, entry by entry, a bound on their distance to the
        real-valued network's at the same input.

        Stability is a property of the real-valued function, and a float64 sign is only
        certain beyond the rounding error: two BLAS kernels (a batch and one row, FMA or
        not) can give 1e-17 and 0.0 for the same neuron. Each layer adds at most
        gamma_{n+1} (|W| |h| + |b|) (Higham, ch. 3; doubled, as in bounds.py) to the error
        carried from the layer below through |W| (ReLU is 1-Lipschitz).
        """
        h = np.atleast_2d(np.asarray(x, dtype=np.float64))
        err = np.zeros_like(h)
        gs, errs = [], []
        eps = float(np.finfo(np.float64).eps)
        for i, (w, b) in enumerate(zip(self.weights[:-1], self.biases[:-1])):
            g = self._times(i, h) + b
            n = w.shape[1]
            gamma = 2.0 * (n + 2) * eps
            # gamma (|h| |W|^T + |b|) + err |W|^T, as one product
            e = self._times(i, gamma * np.abs(h) + err, absolute=True) + gamma * np.abs(b)
            e *= 1 + 2 * gamma  # the rounding of this bound itself
            e += (n + 1) * 1e-300  # underflow of the products
            gs.append(g)
            errs.append(e)
            h, err = np.maximum(g, 0.0), e
        return gs, errs

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Output of the network for a batch x of shape (m, n0), in float64."""
        h = np.atleast_2d(np.asarray(x, dtype=np.float64))
        for i, b in enumerate(self.biases[:-1]):
            h = np.maximum(self._times(i, h) + b, 0.0)
        return h @ self.weights[-1].T + self.biases[-1]

    def _times(self, layer: int, h: np.ndarray, absolute: bool = False) -> np.ndarray:
        """h @ W.T (|W| when ``absolute``): a convolution runs as torch's conv2d (and
        avg_pool2d), far faster than the unrolled sparse matrix. Any summation order
        is within the rounding bound of ``preactivations_with_error``; with a pool,
        |kernel| conv2d of the pooled |h| bounds |K P| |h| since P >= 0."""
        spec = None if self.convs is None else self.convs[layer]
        if spec is None:
            w = self.weights[layer]
            return h @ (abs(w) if absolute else w).T
        from .conv import apply_conv

        return apply_conv(spec, h, absolute)

    def to_torch(self, dtype: torch.dtype = torch.float32) -> nn.Sequential:
        """nn.Sequential(Linear, ReLU, ..., Linear) with these weights (conv.to_sequential
        for a network with convolutions)."""
        if self.convs is not None:
            from .conv import to_sequential

            return to_sequential(self, dtype)
        layers: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            lin = nn.Linear(w.shape[1], w.shape[0]).to(dtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w.toarray() if sp.issparse(w) else w))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if i < len(self.weights) - 1:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def tensors(
        self, device: torch.device | str = "cpu"
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(W, b) pairs as float64 tensors on ``device``, for the torch stages; a sparse
        layer as a coalesced sparse COO tensor (``h @ W.T``, ``c @ W``, ``W.abs()`` work)."""
        return [
            (_torch_weight(w).to(device), torch.from_numpy(b).to(device))
            for w, b in zip(self.weights, self.biases)
        ]


def _as_float64(w):
    """A dense array, or a csr matrix in canonical form: scipy sorts indices in place on
    some reads, which would change the summation order of later products."""
    if sp.issparse(w):
        w = sp.csr_matrix(w, dtype=np.float64, copy=True)
        w.sum_duplicates()
        w.sort_indices()
        return w
    return np.ascontiguousarray(w, dtype=np.float64)


def _torch_weight(w) -> torch.Tensor:
    if not sp.issparse(w):
        return torch.from_numpy(w)
    coo = w.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(
        idx, torch.from_numpy(coo.data), w.shape, check_invariants=False
    ).coalesce()
