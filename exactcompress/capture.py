"""Capturing a fully connected ReLU network from a traced computation.

Two readers walk a graph of operations: ``capture`` a user's own ``nn.Module`` traced
by ``torch.fx.symbolic_trace``, and ``onnx_io`` an ONNX graph. Both follow one tensor
through the graph as a ``Chain``: the affine layers closed by a ReLU so far, the affine
map pending since the last ReLU, and the tensor's shape. An operation the chain cannot
express (another activation, a skip connection) is refused in one line that names it,
because silently dropping it would change the function being compressed.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import ExactCompressError
from .network import ReLUNetwork


@dataclass(frozen=True)
class Chain:
    """One tensor of the graph, as the affine/ReLU layers that compute it from the input.

    ``shape`` is the tensor's shape without its batch axis (None while unknown: a traced
    module's input); the batch axis comes first, or last when ``batch_last`` (a 2-D
    tensor after a Gemm that transposes). ``w``/``b`` map the output of the last ReLU
    (or the input), flattened in row-major order, to this tensor, flattened likewise:
    a reshape that keeps the batch axis leaves them as they are.
    """

    shape: tuple[int, ...] | None
    batch_last: bool = False
    weights: tuple[np.ndarray, ...] = ()
    biases: tuple[np.ndarray, ...] = ()
    w: np.ndarray | None = None
    b: np.ndarray | None = None

    def affine(
        self, w: np.ndarray, b: np.ndarray, shape: tuple[int, ...], batch_last: bool = False
    ):
        """The tensor after an affine layer ``w x + b`` (``w`` over the flattened tensor)."""
        if self.w is not None:
            raise ExactCompressError(
                "two affine layers in a row without a ReLU between them are not supported"
            )
        return replace(self, shape=shape, batch_last=batch_last, w=w, b=b)

    def linear_last_axis(self, w: np.ndarray, b: np.ndarray):
        """The tensor after ``x @ w.T + b`` on its last axis (nn.Linear, MatMul): a dense
        layer only when the axes before the last one hold a single vector."""
        shape = self.shape or (w.shape[1],)
        self.require_batch_first("a linear layer")
        if math.prod(shape[:-1]) != 1:
            raise ExactCompressError(
                f"a linear layer on a tensor of shape {list(shape)} per sample (flatten it first)"
            )
        if shape[-1] != w.shape[1]:
            raise ExactCompressError(
                f"a linear layer of {w.shape[1]} inputs on a tensor of {shape[-1]} features"
            )
        return self.affine(w, b, (*shape[:-1], w.shape[0]))

    def add_bias(self, c: np.ndarray):
        """The tensor plus a constant, which must be the same for every sample."""
        if self.w is None:
            raise ExactCompressError(
                "adding a constant before any linear layer (input normalisation?) is not supported"
            )
        return replace(self, b=self.b + self.per_neuron(c))

    def per_neuron(self, c: np.ndarray) -> np.ndarray:
        """``c`` broadcast to one value per feature, refused if it varies along the batch."""
        full = (*self.shape, 1) if self.batch_last else (1, *self.shape)
        try:
            return np.broadcast_to(np.asarray(c, dtype=np.float64), full).reshape(-1)
        except ValueError:
            raise ExactCompressError(
                f"a constant of shape {list(np.shape(c))} does not add one value per feature "
                f"to a tensor of shape {list(self.batch_shape())}"
            ) from None

    def relu(self):
        """The tensor after a ReLU: the pending affine map becomes a closed layer (a
        second ReLU in a row changes nothing)."""
        if self.w is None and self.weights:
            return self
        if self.w is None:
            raise ExactCompressError("a ReLU on the input itself (before any linear layer)")
        return Chain(self.shape, self.batch_last, (*self.weights, self.w), (*self.biases, self.b))

    def reshaped(self, features: Sequence[int]):
        """The tensor reshaped to ``features`` per sample (one entry may be -1)."""
        self.require_batch_first("a reshape")
        dims = [int(d) for d in features]
        known = math.prod(d for d in dims if d != -1)
        if dims.count(-1) > 1 or min(dims, default=1) < -1:
            raise ExactCompressError(f"cannot reshape to {dims} per sample")
        if self.shape is None:
            return replace(self, shape=None if dims == [-1] else tuple(dims))
        size = math.prod(self.shape)
        if -1 in dims and known and size % known == 0:
            dims[dims.index(-1)] = size // known
        if math.prod(dims) != size:
            raise ExactCompressError(
                f"cannot reshape {list(self.shape)} to {list(features)} per sample"
            )
        return replace(self, shape=tuple(dims))

    def flattened(self, start: int, end: int = -1):
        """``torch.flatten(x, start, end)`` / ONNX Flatten: must keep the batch axis."""
        if self.shape is None:
            if start != 1 or end != -1:
                raise ExactCompressError(f"cannot flatten dims {start}..{end} of an unknown shape")
            return self
        rank = len(self.shape) + 1
        start, end = start % rank, end % rank
        if start == 0:
            raise ExactCompressError("flattening the batch axis into the features")
        dims = self.shape
        return self.reshaped((*dims[: start - 1], math.prod(dims[start - 1 : end]), *dims[end:]))

    def transposed(self):
        """A 2-D tensor with its two axes swapped (Gemm's transA/transB)."""
        if self.shape is None or len(self.shape) != 1:
            raise ExactCompressError("transposing a tensor that is not (batch, features)")
        return replace(self, batch_last=not self.batch_last)

    def require_batch_first(self, what: str) -> None:
        if self.batch_last:
            raise ExactCompressError(f"{what} on a tensor whose batch axis is last")

    def batch_shape(self) -> tuple:
        shape = self.shape or ("?",)
        return (*shape, "batch") if self.batch_last else ("batch", *shape)

    def network(self) -> ReLUNetwork:
        """The network computing this tensor: it must end with an affine layer."""
        if self.w is None:
            raise ExactCompressError(
                "the output is not computed by a linear layer after the last ReLU"
                if self.weights
                else "the output does not depend on the input through any linear layer"
            )
        return ReLUNetwork([*self.weights, self.w], [*self.biases, self.b])


# ---- torch.fx ------------------------------------------------------------------

#: what a traced forward may call: Linear/ReLU chains and reshapes that keep the batch
SUPPORTED = "nn.Linear, ReLU, Flatten/view/reshape, Identity and Dropout"

#: stands for x.size(0) / x.shape[0], which a view must keep first
BATCH = object()


def capture(module: nn.Module) -> ReLUNetwork:
    """The ReLUNetwork computed by ``module.forward``, traced with ``torch.fx``."""
    try:
        graph = fx.symbolic_trace(module)
    except Exception as err:  # fx raises many types for code it cannot trace
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExactCompressError(
            f"cannot trace {type(module).__name__}.forward with torch.fx ({first})"
        ) from None
    values: dict[str, Any] = {}
    result = None
    for node in graph.graph.nodes:
        if node.op == "output":
            result = fx.node.map_arg(node.args[0], lambda n: values[n.name])
            continue
        try:
            values[node.name] = _evaluate(graph, node, values)
        except ExactCompressError as err:
            raise ExactCompressError(f"{type(module).__name__}.forward: {err}") from None
    if not isinstance(result, Chain):
        raise ExactCompressError(
            f"{type(module).__name__}.forward must return one tensor computed from its input"
        )
    return result.network()


def _evaluate(graph: fx.GraphModule, node: fx.Node, values: dict[str, Any]) -> Any:
    args = fx.node.map_arg(node.args, lambda n: values[n.name])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n.name])
    if node.op == "placeholder":
        if any(isinstance(v, Chain) for v in values.values()):
            raise ExactCompressError(f"takes a second input {node.target!r}")
        return Chain(None)
    if node.op == "call_module" and isinstance(args[0] if args else None, Chain):
        return _call_module(graph.get_submodule(node.target), node.target, args)
    if node.op == "call_module":
        raise ExactCompressError(f"calls {node.target} on a value not computed from the input")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        handler = _FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        name = node.target
        handler = _METHODS.get(node.target)
    else:  # get_attr: a parameter used directly, as in F.linear(x, self.weight)
        raise ExactCompressError(
            f"uses the attribute {node.target!r} directly; only {SUPPORTED} are supported"
        )
    first = args[0] if args else None
    if handler is None or not (isinstance(first, Chain) or handler in _ON_SIZES):
        raise ExactCompressError(f"unsupported operation {name}; only {SUPPORTED} are supported")
    try:
        return handler(*args, **kwargs)
    except (TypeError, IndexError) as err:  # arguments the handler does not take
        raise ExactCompressError(f"cannot read the call of {name} ({err})") from None


def _call_module(sub: nn.Module, target: str, args: tuple) -> Chain:
    x = args[0]
    if isinstance(sub, nn.Linear):
        w = sub.weight.detach().cpu().to(torch.float64).numpy()
        b = np.zeros(w.shape[0]) if sub.bias is None else sub.bias.detach().cpu().double().numpy()
        return x.linear_last_axis(w, b)
    if isinstance(sub, nn.ReLU):
        return x.relu()
    if isinstance(sub, nn.Flatten):
        return x.flattened(sub.start_dim, sub.end_dim)
    if isinstance(sub, nn.Dropout):
        return _dropout(x, sub.p, sub.training)
    if isinstance(sub, nn.Identity):
        return x
    raise ExactCompressError(
        f"unsupported layer {target} ({type(sub).__name__}); only {SUPPORTED} are supported"
    )


def _dropout(x: Chain, p: float = 0.5, training: bool = True, inplace: bool = False) -> Chain:
    if training and p > 0:
        raise ExactCompressError(f"Dropout(p={p}) in training mode is random; call model.eval()")
    return x


def _relu(x: Chain, inplace: bool = False) -> Chain:
    return x.relu()


def _flatten(x: Chain, start_dim: int = 0, end_dim: int = -1) -> Chain:
    return x.flattened(start_dim, end_dim)


def _view(x: Chain, *shape: Any) -> Chain:
    """x.view(x.size(0), -1), x.reshape(-1, 784): the first entry must be the batch."""
    dims = list(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    if not dims or not (dims[0] is BATCH or dims[0] == -1):
        raise ExactCompressError("a view/reshape must keep the batch axis first")
    if any(d is BATCH for d in dims[1:]):
        raise ExactCompressError("a view/reshape uses the batch size as a feature dimension")
    return x.reshaped(dims[1:])


def _sizes(x: Chain, dim: int | None = None) -> Any:
    """x.size() / x.size(d): the batch as BATCH, features as numbers once known."""
    if x.shape is None:
        if dim != 0:
            raise ExactCompressError("reads a feature size of the input, which tracing cannot know")
        return BATCH
    sizes = (BATCH, *x.shape)
    return sizes if dim is None else sizes[dim]


def _shape_attr(x: Any, name: str) -> Any:
    if not (isinstance(x, Chain) and name == "shape"):
        raise ExactCompressError(f"unsupported attribute {name}")
    return _sizes(x)


def _getitem(seq: Any, index: Any) -> Any:
    if not isinstance(seq, tuple):
        raise ExactCompressError("unsupported operation getitem (indexing a tensor)")
    return seq[index]


def _same(x: Chain, *args: Any, **kwargs: Any) -> Chain:
    return x


_FUNCTIONS: dict[Callable, Callable] = {
    F.relu: _relu,
    torch.relu: _relu,
    torch.flatten: _flatten,
    torch.reshape: _view,
    F.dropout: _dropout,
    getattr: _shape_attr,
    operator.getitem: _getitem,
}
_METHODS: dict[str, Callable] = {
    "relu": _relu,
    "relu_": _relu,
    "flatten": _flatten,
    "view": _view,
    "reshape": _view,
    "size": _sizes,
    "contiguous": _same,
}
#: handlers whose first argument is a tuple of sizes rather than a tensor
_ON_SIZES = (_getitem,)
