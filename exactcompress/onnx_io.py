"""ONNX in and out: read a fully connected ReLU network from an ONNX graph, write one.

Reading walks the graph's nodes in order (ONNX stores them topologically sorted) and
keeps, per tensor name, either a constant (``np.ndarray``: initializers, Constant
nodes and the shape arithmetic exporters emit for ``x.view(x.size(0), -1)``) or the
``capture.Chain`` that computes it from the input. Each op type has one handler in
``HANDLERS``; an op without one is refused in one line naming the node, so that
nothing the graph computes is silently dropped. Initializers become float64 arrays
exactly (float32 values are representable in float64), and only the ``onnx`` package
is needed to read (extra ``exactcompress[onnx]``), not onnxruntime.

To support another op type, register a handler that maps the node's inputs (constants
or Chains, None for an omitted optional input) and attributes to its outputs::

    @register("BatchNormalization")
    def _batch_norm(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
        x, scale, bias, mean, var = inputs
        ...  # return [x.affine(w, b, shape)] with w over the flattened tensor

Writing (``network_model``) emits float64 MatMul/Add/Relu nodes, after a Flatten when
the input has several feature axes, so that onnxruntime reproduces the float64 forward
pass to rounding; ``vnnlib`` writes its per-layer networks with it too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .capture import Chain
from .errors import ExactCompressError
from .io import write_atomic
from .network import ReLUNetwork

Value = Chain | np.ndarray
Handler = Callable[[list[Value | None], dict[str, Any]], list[Value]]

#: op type -> handler; see the module docstring for how to add one
HANDLERS: dict[str, Handler] = {}
#: ONNX opset and IR version written: old enough for the VNN-COMP tools' runtimes
OPSET, IR_VERSION = 13, 8
_FLOAT_TYPES = ("tensor(double)", "tensor(float)", "tensor(float16)")
_NOT_A_LAYER = "only a product of the computed tensor and a weight matrix is supported"


def require_onnx(purpose: str):
    """The onnx module, or a one-line error naming the extra that provides it."""
    try:
        import onnx
    except ImportError:
        raise ExactCompressError(
            f"{purpose} needs the onnx package: pip install 'exactcompress[onnx]'"
        ) from None
    return onnx


def register(op_type: str) -> Callable[[Handler], Handler]:
    """Decorator: ``handler`` reads nodes of ``op_type``."""

    def add(handler: Handler) -> Handler:
        HANDLERS[op_type] = handler
        return handler

    return add


# ---- reading -------------------------------------------------------------------


def load_onnx(path: str | os.PathLike) -> tuple[ReLUNetwork, dict]:
    """The network of an ONNX file and its interface (input/output names, input shape)."""
    onnx = require_onnx("reading ONNX models")
    try:
        model = onnx.load(os.fspath(path))
    except Exception as err:  # protobuf and onnx raise many types for a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExactCompressError(f"not a readable ONNX file ({first})") from None
    return read_model(model)


def read_model(model) -> tuple[ReLUNetwork, dict]:
    """The network of an in-memory ``onnx.ModelProto`` and its interface."""
    from onnx import helper, numpy_helper

    graph = model.graph
    values: dict[str, Value] = {
        t.name: _constant(numpy_helper.to_array(t)) for t in graph.initializer
    }
    inputs = [v for v in graph.input if v.name not in values]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ExactCompressError(
            f"graph has {len(inputs)} inputs and {len(graph.output)} outputs "
            f"({', '.join(v.name for v in [*inputs, *graph.output])}); "
            "exactcompress reads networks with one input and one output"
        )
    source, output = inputs[0], graph.output[0].name
    shape = _input_shape(source)
    values[source.name] = Chain(tuple(shape[1:]))
    for i, node in enumerate(graph.node):
        where = f"node {node.name or f'#{i}'!r} ({node.op_type})"
        handler = HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if handler is None:
            raise ExactCompressError(
                f"{where} is not supported: exactcompress reads {', '.join(sorted(HANDLERS))}"
            )
        missing = [n for n in node.input if n and n not in values]
        if missing:
            raise ExactCompressError(
                f"{where} uses {missing[0]!r}, which is not computed before it"
            )
        attrs = {a.name: _attribute(helper.get_attribute_value(a)) for a in node.attribute}
        try:
            results = handler([values[n] if n else None for n in node.input], attrs)
        except ExactCompressError as err:
            raise ExactCompressError(f"{where}: {err}") from None
        except (ValueError, IndexError, KeyError, TypeError) as err:  # a malformed node
            raise ExactCompressError(
                f"{where}: cannot read it ({type(err).__name__}: {err})"
            ) from None
        values.update((name, v) for name, v in zip(node.output, results) if name)
    result = values.get(output)
    if not isinstance(result, Chain):
        raise ExactCompressError(f"graph output {output!r} is not computed from the input")
    meta = {
        "format": "onnx",
        "input": source.name,
        "input_shape": shape,
        "output": output,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
    }
    return conv_onnx.network_of(result), meta


def _constant(array: np.ndarray) -> np.ndarray:
    """Float tensors as float64 (exact: every float16/32 value is a float64 value)."""
    return array.astype(np.float64) if np.issubdtype(array.dtype, np.floating) else array


def _attribute(value: Any) -> Any:
    from onnx import TensorProto, numpy_helper

    return _constant(numpy_helper.to_array(value)) if isinstance(value, TensorProto) else value


def _input_shape(value_info) -> list[int | str]:
    """[batch, *features] of the graph input: the batch a number or a name, features fixed."""
    from onnx import helper

    tensor = value_info.type.tensor_type
    if helper.tensor_dtype_to_np_dtype(tensor.elem_type).kind != "f":
        raise ExactCompressError(f"input {value_info.name!r} is not a float tensor")
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    if len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise ExactCompressError(
            f"input {value_info.name!r} has shape {dims}: exactcompress needs "
            "(batch, fixed feature sizes...)"
        )
    return [d if d else "batch" for d in dims[:1]] + dims[1:]


def _only(inputs: list[Value | None], what: str) -> Chain:
    x = inputs[0]
    if not isinstance(x, Chain):
        raise ExactCompressError(f"{what} of a constant is not supported")
    return x


@register("Identity")
def _identity(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    return [inputs[0]]


@register("Dropout")
def _dropout(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    """The identity in inference mode, which is all that ONNX runtimes run by default."""
    training = inputs[2] if len(inputs) > 2 else None
    if training is not None and (isinstance(training, Chain) or bool(np.any(training))):
        raise ExactCompressError("Dropout in training mode is random")
    return [inputs[0]]


@register("Relu")
def _relu(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    return [_only(inputs, "Relu").relu()]


@register("Add")
def _add(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    a, b = inputs
    if isinstance(a, Chain) and isinstance(b, Chain):
        raise ExactCompressError(
            "adding two computed tensors (a skip connection?) is not supported"
        )
    if isinstance(a, Chain) or isinstance(b, Chain):
        x, c = (a, b) if isinstance(a, Chain) else (b, a)
        return [x.add_bias(c)]
    return [a + b]


@register("MatMul")
def _matmul(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    a, b = inputs
    if isinstance(a, Chain) and _is_matrix(b):
        return [a.linear_last_axis(b.T, np.zeros(b.shape[1]))]
    if isinstance(b, Chain) and _is_matrix(a):
        return [_left_product(a, b)]
    raise ExactCompressError(_NOT_A_LAYER)


@register("Gemm")
def _gemm(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    """alpha A' B' + beta C, A' = A or A^T (transA), B' likewise; one of A, B computed."""
    a, b = inputs[:2]
    c = inputs[2] if len(inputs) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if isinstance(a, Chain) and _is_matrix(b):
        x = a.transposed() if attrs.get("transA", 0) else a
        wt = b.T if attrs.get("transB", 0) else b  # (K, N)
        y = x.linear_last_axis(_scaled(wt.T, alpha), np.zeros(wt.shape[1]))
    elif isinstance(b, Chain) and _is_matrix(a):
        x = b.transposed() if attrs.get("transB", 0) else b
        y = _left_product(_scaled(a.T if attrs.get("transA", 0) else a, alpha), x)
    else:
        raise ExactCompressError(_NOT_A_LAYER)
    if c is None:
        return [y]
    if isinstance(c, Chain):
        raise ExactCompressError("a computed tensor as C (a skip connection?) is not supported")
    return [y.add_bias(_scaled(c, beta))]


def _is_matrix(value: Value | None) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 2


def _scaled(array: np.ndarray, factor: float) -> np.ndarray:
    """``factor * array``, leaving the array untouched (and exact) when factor is 1."""
    return array if factor == 1.0 else factor * array


def _left_product(w: np.ndarray, x: Chain) -> Chain:
    """``w @ x`` for a (features, batch) tensor x: a layer whose output keeps the batch last."""
    if not x.batch_last:
        raise ExactCompressError(
            "a weight matrix times a (batch, features) tensor: the batch axis must come last"
        )
    if x.shape != (w.shape[1],):
        raise ExactCompressError(f"a weight of shape {list(w.shape)} on {x.shape[0]} features")
    return x.affine(w, np.zeros(w.shape[0]), (w.shape[0],), batch_last=True)


@register("Flatten")
def _flatten(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    return [_only(inputs, "Flatten").flattened(int(attrs.get("axis", 1)))]


@register("Reshape")
def _reshape(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    """A reshape that keeps the batch axis first: the flattened tensor does not change."""
    data, target = inputs
    if not isinstance(target, np.ndarray):
        raise ExactCompressError("the target shape is computed from the input's values")
    if not isinstance(data, Chain):
        return [np.reshape(data, target)]
    dims = [int(d) for d in target]
    if len(dims) < 2 or dims[0] not in (-1, 0, 1):
        raise ExactCompressError(f"reshaping to {dims} does not keep the batch axis first")
    if not attrs.get("allowzero", 0) and data.shape is not None:
        dims = [
            data.shape[i - 1] if d == 0 and 0 < i <= len(data.shape) else d
            for i, d in enumerate(dims)
        ]
    return [data.reshaped(dims[1:])]


# Shape arithmetic on constants, as torch.onnx emits for x.view(x.size(0), -1); the
# batch size counts as 1, which a reshape that keeps the batch axis reads as the batch.


@register("Constant")
def _constant_node(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    name, value = next(iter(attrs.items()))
    if name not in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        raise ExactCompressError(f"a constant given as {name} is not supported")
    return [_constant(np.asarray(value))]


@register("Shape")
def _shape(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if not isinstance(x, Chain):
        return [np.asarray(np.shape(x), dtype=np.int64)]
    dims = [1 if d == "batch" else d for d in x.batch_shape()]
    return [np.asarray(dims[attrs.get("start", 0) : attrs.get("end")], dtype=np.int64)]


@register("Gather")
def _gather(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    data, indices = _constants(inputs, "Gather")
    return [np.take(data, indices, axis=attrs.get("axis", 0))]


@register("Unsqueeze")
def _unsqueeze(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    data, *rest = _constants(inputs, "Unsqueeze")
    axes = attrs["axes"] if "axes" in attrs else rest[0]
    rank = np.ndim(data) + len(axes)
    return [np.expand_dims(data, tuple(sorted(int(a) % rank for a in axes)))]


@register("Concat")
def _concat(inputs: list[Value | None], attrs: dict[str, Any]) -> list[Value]:
    return [np.concatenate(_constants(inputs, "Concat"), axis=attrs["axis"])]


def _constants(inputs: list[Value | None], what: str) -> list[np.ndarray]:
    if any(isinstance(v, Chain) for v in inputs):
        raise ExactCompressError(f"{what} of a computed tensor is not supported")
    return [v for v in inputs if v is not None]


# ---- writing -------------------------------------------------------------------


def network_model(
    net: ReLUNetwork,
    input_shape: Sequence[int | str] | None = None,
    input_name: str = "X",
    output_name: str = "Y",
    graph_name: str = "exactcompress",
):
    """ONNX model of ``net`` in float64: [Flatten,] MatMul, Add, Relu, ..., MatMul, Add.

    ``input_shape`` is [batch, *features] (default ["batch", n0]); the batch may be a
    number or a name. Several feature axes are flattened first, in row-major order, as
    the package flattens inputs.
    """
    onnx = require_onnx("writing ONNX models")
    from onnx import TensorProto, helper, numpy_helper

    if not all(isinstance(w, np.ndarray) for w in net.weights):
        raise ExactCompressError("ONNX export of convolution layers is not supported yet")
    shape = list(input_shape) if input_shape is not None else ["batch", net.widths[0]]
    if math.prod(shape[1:]) != net.widths[0]:
        raise ExactCompressError(f"input shape {shape} does not hold {net.widths[0]} features")
    nodes, inits, prev = [], [], input_name
    if len(shape) > 2:
        nodes.append(helper.make_node("Flatten", [input_name], ["F"], axis=1))
        prev = "F"
    last = len(net.weights) - 1
    for k, (w, b) in enumerate(zip(net.weights, net.biases)):
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(w.T), f"W{k}"),
            numpy_helper.from_array(b.copy(), f"B{k}"),
        ]
        out = output_name if k == last else f"G{k}"
        nodes += [
            helper.make_node("MatMul", [prev, f"W{k}"], [f"M{k}"]),
            helper.make_node("Add", [f"M{k}", f"B{k}"], [out]),
        ]
        if k < last:
            nodes.append(helper.make_node("Relu", [out], [f"H{k}"]))
            prev = f"H{k}"
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info(input_name, TensorProto.DOUBLE, shape)],
        [
            helper.make_tensor_value_info(
                output_name, TensorProto.DOUBLE, [shape[0], net.widths[-1]]
            )
        ],
        inits,
    )
    model = helper.make_model(
        graph, producer_name="exactcompress", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def save_onnx(path: str | os.PathLike, net: ReLUNetwork, source: dict | None = None) -> None:
    """Write ``net`` as ONNX, atomically; with the ``source`` meta of an ONNX model it
    keeps that model's input and output names and feature shape (the batch left free),
    so that it can replace it."""
    source = source if (source or {}).get("format") == "onnx" else {}
    shape = ["batch", *source["input_shape"][1:]] if source else None
    model = network_model(net, shape, source.get("input", "X"), source.get("output", "Y"))
    write_atomic(path, model.SerializeToString())


# ---- running (a second engine for verify) ----------------------------------------------


def onnx_runner(model: str | os.PathLike | bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the ONNX ``model`` in onnxruntime on rows of flattened inputs,
    returning float64 outputs of shape (rows, n_out)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExactCompressError(
            "checking in onnxruntime needs the onnxruntime package: "
            "pip install 'exactcompress[onnx]'"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for a bad model
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExactCompressError(f"onnxruntime cannot load the ONNX model ({first})") from None
    spec = session.get_inputs()[0]
    if spec.type not in _FLOAT_TYPES or not all(isinstance(d, int) for d in spec.shape[1:]):
        raise ExactCompressError(f"ONNX input {spec.name!r} is {spec.type} of shape {spec.shape}")
    dtype = {"tensor(double)": np.float64, "tensor(float)": np.float32}.get(spec.type, np.float16)
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None

    def run(x: np.ndarray) -> np.ndarray:
        if math.prod(spec.shape[1:]) != x.shape[1]:
            raise ExactCompressError(f"ONNX input {spec.shape} does not take {x.shape[1]} features")
        rows = np.asarray(x, dtype=dtype).reshape(len(x), *spec.shape[1:])
        step = fixed or 8192
        out = []
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            pad = step - len(chunk) if fixed else 0
            padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), dtype)])
            out.append(session.run(None, {spec.name: padded})[0][: len(chunk)])
        return np.concatenate(out).reshape(len(x), -1).astype(np.float64)

    return run


from . import conv_onnx  # noqa: E402  registers Conv, BatchNormalization, AveragePool
