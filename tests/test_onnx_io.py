"""ONNX in and out: torch.onnx exports read as the same network as the state dict,
hand-built graphs (every Gemm form, MatMul + Add, Flatten/Reshape, Identity, Dropout)
match onnxruntime, unsupported graphs are refused in one line, and compressed.onnx
reproduces compressed.pt in onnxruntime."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch
from oracle import random_net
from test_cli import run_error
from torch import nn

from exactcompress import Box, ExactCompressError, ReLUNetwork, load_network, verify
from exactcompress.cli import main
from exactcompress.io import load_model_file
from exactcompress.onnx_io import network_model, read_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def torch_export(module: nn.Module, example: torch.Tensor, path, **kwargs) -> None:
    """torch.onnx.export with the TorchScript exporter: the default one needs onnxscript,
    which is not a dependency."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, **kwargs)


def run_ort(path_or_model, x: np.ndarray) -> np.ndarray:
    source = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def make_model(nodes, inputs, outputs, inits, opset: int = 13):
    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tensor(name: str, shape, dtype=TensorProto.DOUBLE):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name: str, array: np.ndarray):
    return numpy_helper.from_array(np.asarray(array), name)


# ---- torch exports -------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_net(tmp_path_factory):
    """A sparse 64-16-16-10 network (digits' input size; stable neurons as after L1
    training) as a state dict file and as an ONNX export of the same float32 module,
    whose input is (batch, 1, 8, 8)."""
    rng = np.random.default_rng(3)
    w, b = random_net(rng, [64, 16, 16, 10])
    w = [wi * (rng.random(wi.shape) < 0.15) for wi in w]
    module = ReLUNetwork(w, b).to_torch(torch.float32)
    folder = tmp_path_factory.mktemp("digits")
    torch.save(module.state_dict(), folder / "model.pt")
    wrapped = nn.Sequential(nn.Flatten(), *module, nn.Dropout(0.3))
    torch_export(
        wrapped,
        torch.zeros(1, 1, 8, 8),
        folder / "model.onnx",
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "n"}},
    )
    return folder


def states(path) -> list[dict]:
    return json.loads(path.read_text())["layers"]


def test_onnx_export_has_the_same_stability_as_the_state_dict(digits_net, capsys):
    for name in ("model.pt", "model.onnx"):
        argv = ["stability", str(digits_net / name), "--data", "digits", "--samples", "500"]
        assert main([*argv, "--json", str(digits_net / f"{name}.json")]) == 0
    capsys.readouterr()
    from_pt, from_onnx = (
        states(digits_net / "model.pt.json"),
        states(digits_net / "model.onnx.json"),
    )
    assert from_onnx == from_pt
    assert all(
        sum(len(layer[k]) for layer in from_pt) for k in ("stably_active", "stably_inactive")
    )


def test_compressed_onnx_matches_compressed_pt_in_onnxruntime(digits_net, capsys):
    out = digits_net / "out"
    argv = ["compress", str(digits_net / "model.onnx"), "--data", "digits", "--samples", "500"]
    assert main([*argv, "-o", str(out), "--onnx"]) == 0
    printed = capsys.readouterr()
    assert "onnxruntime on the ONNX model: max abs diff" in printed.out
    assert "compressed.onnx" in printed.err
    model = onnx.load(str(out / "compressed.onnx"))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.initializer[0].data_type == TensorProto.DOUBLE
    x = np.random.default_rng(0).random((10_000, 64))
    small, _ = load_model_file(out / "compressed.pt")
    with torch.no_grad():
        want = small.to_torch(torch.float64)(torch.from_numpy(x)).numpy()
    got = run_ort(str(out / "compressed.onnx"), x.reshape(-1, 1, 8, 8))
    assert np.abs(got - want).max() <= 1e-9
    meta = torch.load(out / "compressed.pt", weights_only=True)["meta"]["verification"]
    assert meta["ok"] and meta["onnx_max_abs"] <= 1e-9 and meta["onnx_max_ratio"] <= 1


def test_view_with_dynamic_batch_reads_like_the_module(tmp_path):
    """x.view(x.size(0), -1) exports as Shape/Gather/Unsqueeze/Concat/Reshape."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(12, 7), nn.Linear(7, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x.view(x.size(0), -1))))

    module = Net()
    path = tmp_path / "view.onnx"
    torch_export(
        module, torch.zeros(2, 3, 4), path, dynamic_axes={"x": {0: "b"}}, input_names=["x"]
    )
    net, meta = load_model_file(path)
    assert meta["input"] == "x" and meta["input_shape"] == ["b", 3, 4]
    assert net.widths == [12, 7, 3]
    np.testing.assert_array_equal(net.weights[0], module.a.weight.detach().double().numpy())
    x = np.random.default_rng(1).random((20, 12))
    np.testing.assert_allclose(net.forward(x), load_network(module).forward(x), rtol=0, atol=0)


# ---- hand-built graphs -----------------------------------------------------------------


def test_every_gemm_form_matches_onnxruntime():
    """x (batch, 3) -> Gemm(W1, x^T) (4, batch), batch last -> Relu -> Gemm(h^T, W2) with
    alpha, beta and a column bias -> (batch, 5) -> Relu -> MatMul + Add."""
    rng = np.random.default_rng(2)
    w1, c1 = rng.normal(size=(4, 3)), rng.normal(size=(4, 1))
    w2, c2 = rng.normal(size=(4, 5)), rng.normal(size=(1, 5))
    w3, c3 = rng.normal(size=(5, 2)), rng.normal(size=2)
    nodes = [
        helper.make_node("Gemm", ["W1", "x", "C1"], ["g1"], transB=1),
        helper.make_node("Gemm", ["x", "W1"], ["unused"], transB=1),
        helper.make_node("Relu", ["g1"], ["h1"]),
        helper.make_node("Identity", ["h1"], ["i1"]),
        helper.make_node("Gemm", ["i1", "W2", "C2"], ["g2"], transA=1, alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["g2"], ["h2"]),
        helper.make_node("Dropout", ["h2"], ["d2"]),
        helper.make_node("MatMul", ["d2", "W3"], ["m3"]),
        helper.make_node("Add", ["C3", "m3"], ["y"]),
    ]
    inits = [init("W1", w1), init("C1", c1), init("W2", w2), init("C2", c2)]
    inits += [init("W3", w3), init("C3", c3)]
    model = make_model(nodes, [tensor("x", ["n", 3])], [tensor("y", ["n", 2])], inits)
    net, meta = read_model(model)
    assert net.widths == [3, 4, 5, 2] and meta["input_shape"] == ["n", 3]
    x = rng.random((50, 3))
    np.testing.assert_allclose(net.forward(x), run_ort(model, x), rtol=1e-13, atol=1e-13)


def test_batch_last_output_and_float32_initializers_read_exactly():
    rng = np.random.default_rng(5)
    w1 = rng.normal(size=(6, 4)).astype(np.float32)
    w2, b2 = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(3, 1))
    nodes = [
        helper.make_node("Gemm", ["W1", "x"], ["g1"], transB=1),
        helper.make_node("Relu", ["g1"], ["h1"]),
        helper.make_node("MatMul", ["W2", "h1"], ["m2"]),
        helper.make_node("Add", ["m2", "B2"], ["y"]),
    ]
    inits = [init("W1", w1), init("W2", w2), init("B2", b2.astype(np.float32))]
    model = make_model(
        nodes,
        [tensor("x", [1, 4], TensorProto.FLOAT)],
        [tensor("y", [3, 1], TensorProto.FLOAT)],
        inits,
    )
    net, _ = read_model(model)
    np.testing.assert_array_equal(net.weights[0], w1.astype(np.float64))
    np.testing.assert_array_equal(net.biases[1], b2.astype(np.float32).astype(np.float64)[:, 0])
    x = rng.random((1, 4)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), run_ort(model, x).T, rtol=1e-6, atol=1e-6)


def test_flatten_and_reshape_keep_the_batch():
    rng = np.random.default_rng(6)
    w1, w2 = rng.normal(size=(12, 5)), rng.normal(size=(5, 2))
    nodes = [
        helper.make_node("Reshape", ["x", "S"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "W1"], ["g1"]),
        helper.make_node("Relu", ["g1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "W2"], ["y"]),
    ]
    inits = [init("W1", w1), init("W2", w2), init("S", np.array([0, 4, -1], dtype=np.int64))]
    model = make_model(nodes, [tensor("x", [1, 2, 3, 2])], [tensor("y", [1, 2])], inits)
    net, _ = read_model(model)
    x = rng.random((1, 2, 3, 2))
    np.testing.assert_allclose(net.forward(x.reshape(1, -1)), run_ort(model, x), rtol=1e-13)


def test_export_reads_back_bit_exact():
    rng = np.random.default_rng(7)
    net = ReLUNetwork(*random_net(rng, [12, 6, 5, 3]))
    model = network_model(net, ["batch", 3, 2, 2], "pixels", "scores")
    back, meta = read_model(model)
    assert meta["input_shape"] == ["batch", 3, 2, 2] and meta["output"] == "scores"
    for a, b in zip(back.weights + back.biases, net.weights + net.biases):
        np.testing.assert_array_equal(a, b)


def test_verify_runs_the_onnx_model_as_a_second_engine():
    rng = np.random.default_rng(8)
    net = ReLUNetwork(*random_net(rng, [4, 6, 2]))
    other = ReLUNetwork([w * 1.001 for w in net.weights], net.biases)
    box = Box.uniform(4)
    same = verify(net, net, box, n_samples=200, onnx_model=network_model(net).SerializeToString())
    assert same.ok and same.onnx_max_abs <= 1e-12 and "onnxruntime" in same.summary()
    bad = verify(net, net, box, n_samples=200, onnx_model=network_model(other).SerializeToString())
    assert not bad.ok and bad.max_abs == 0 and bad.onnx_max_abs > 1e-6


# ---- refusals -------------------------------------------------------------------------


def two_layer(extra_nodes=(), outputs=("y",), inputs=("x",)):
    rng = np.random.default_rng(9)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["g1"]),
        helper.make_node("Relu", ["g1"], ["h1"]),
        helper.make_node("MatMul", ["h1", "W2"], ["y"]),
        *extra_nodes,
    ]
    inits = [init("W1", rng.normal(size=(3, 4))), init("W2", rng.normal(size=(4, 2)))]
    shapes = {"x": [1, 3], "x2": [1, 3], "y": [1, 2], "s": [1, 2], "h1": [1, 4], "z": [1, 4]}
    return make_model(
        nodes,
        [tensor(n, shapes[n]) for n in inputs],
        [tensor(n, shapes[n]) for n in outputs],
        inits,
    )


@pytest.mark.parametrize(
    "model, words",
    [
        (
            two_layer([helper.make_node("Sigmoid", ["y"], ["s"], name="act")], ["s"]),
            "'act' (Sigmoid)",
        ),
        (two_layer(outputs=["y", "h1"]), "2 outputs"),
        (two_layer(inputs=["x", "x2"]), "2 inputs"),
        (two_layer([helper.make_node("Add", ["h1", "h1"], ["z"])], ["z"]), "skip connection"),
        (two_layer(outputs=["h1"]), "not computed by a linear layer"),
    ],
    ids=["sigmoid", "two-outputs", "two-inputs", "skip", "ends-with-relu"],
)
def test_unsupported_graphs_are_refused_in_one_line(tmp_path, capsys, model, words):
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    msg = run_error(capsys, ["stability", str(path)])
    assert words in msg and str(path) in msg


def test_not_an_onnx_file(tmp_path, capsys):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x07not protobuf at all" * 10)
    assert "not a readable ONNX file" in run_error(capsys, ["compress", str(path), "-o", "o"])


def test_missing_onnx_package_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    onnx.save(two_layer(), str(path))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExactCompressError, match=r"pip install 'exactcompress\[onnx\]'") as err:
        load_network(path)
    assert "\n" not in str(err.value)
