"""Convolutional networks: unrolling, stability against an independent brute force,
exact compression with channel removal, model files, errors.

The brute force never reads the package's matrices: each layer's dense affine map is
probed from the torch module itself (basis vectors through the layers between two
ReLUs), and every pre-activation of the two conv layers is maximised and minimised
over the box exactly, by closed form (layer 1) or a scipy MILP (layer 2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from exactcompress.api import compress
from exactcompress.cli import main
from exactcompress.errors import ExactCompressError
from exactcompress.io import load_model_file, load_network, save_model
from exactcompress.report import ACTIVE, INACTIVE, UNSTABLE
from exactcompress.stability import StabilityOptions

#: a pre-activation this close to 0 at its extreme is too degenerate to compare
TOL = 1e-7


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


def _variant(name: str) -> tuple[nn.Sequential, tuple[int, int, int], int]:
    """(module, input shape, index of the Flatten): two conv layers, then Linear."""
    torch.manual_seed(sum(map(ord, name)))
    if name == "plain":
        layers = [nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, stride=2)]
        shape, flat = (1, 6, 6), 3 * 2 * 2
    elif name == "stride-pad-dilation":
        layers = [
            nn.Conv2d(2, 3, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(3, 3, (2, 3), padding=(1, 0), dilation=(2, 1)),
        ]
        shape, flat = (2, 7, 7), 3 * 4 * 2
    elif name == "batchnorm":
        layers = [nn.Conv2d(1, 3, 3), _bn(3), nn.ReLU(), nn.Conv2d(3, 3, 2, stride=2), _bn(3)]
        shape, flat = (1, 8, 8), 3 * 3 * 3
    elif name == "avgpool":
        layers = [
            nn.AvgPool2d(2),
            nn.Conv2d(2, 3, 2),
            nn.ReLU(),
            nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
            nn.Conv2d(3, 3, 3),
        ]
        shape, flat = (2, 8, 8), 3 * 2 * 2
    else:
        raise KeyError(name)
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(flat, 3)]
    module = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        for layer in module:
            if isinstance(layer, nn.Conv2d):  # channel 0 off, channel 1 on, the rest mixed
                layer.bias[0] -= 3.0
                layer.bias[1] += 3.0
                layer.bias[2:] -= 0.2
    return module, shape, len(layers) - 2


VARIANTS = ["plain", "stride-pad-dilation", "batchnorm", "avgpool"]


def _relu_positions(module: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(module) if isinstance(m, nn.ReLU)]


def _probe(part: nn.Module, in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Dense (W, b) of an affine torch map, from the images of 0 and the basis vectors."""
    n = int(np.prod(in_shape))
    with torch.no_grad():
        x = torch.cat([torch.zeros(1, n), torch.eye(n)]).double().reshape(n + 1, *in_shape)
        y = part(x).reshape(n + 1, -1).numpy()
    return (y[1:] - y[0]).T, y[0]


def _dense_layers(module: nn.Sequential, shape) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) of the affine maps before the first and second ReLU, probed from torch."""
    r1, r2 = _relu_positions(module)[:2]
    first = module[:r1]
    with torch.no_grad():
        mid_shape = tuple(first(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
    return [_probe(first, shape), _probe(module[r1 + 1 : r2], mid_shape)]


def _interval(w: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    c = w @ mid + b
    s = np.abs(w) @ rad
    return c - s - 1e-9, c + s + 1e-9


def _extreme_layer2(w1, b1, w2, b2, j: int, sign: float) -> float:
    """max of sign * g2_j over [0, 1]^n by a big-M MILP (scipy/HiGHS)."""
    n0, n1 = w1.shape[1], w1.shape[0]
    lo1, up1 = _interval(w1, b1, np.zeros(n0), np.ones(n0))
    lo1, up1 = np.minimum(lo1, -1e-6), np.maximum(up1, 1e-6)
    # variables: x (n0), h (n1), a (n1)
    c = np.concatenate([np.zeros(n0), -sign * w2[j], np.zeros(n1)])
    eye, zero = np.eye(n1), np.zeros((n1, n1))
    rows = [
        (np.hstack([w1, -eye, zero]), -np.inf, -b1),  # h >= W1 x + b1
        (np.hstack([-w1, eye, np.diag(-lo1)]), -np.inf, b1 - lo1),  # h <= g - L (1 - a)
        (np.hstack([np.zeros((n1, n0)), eye, np.diag(-up1)]), -np.inf, np.zeros(n1)),
    ]
    cons = [LinearConstraint(a, lb, ub) for a, lb, ub in rows]
    bounds = Bounds(
        np.zeros(n0 + 2 * n1), np.concatenate([np.ones(n0), np.maximum(up1, 0), np.ones(n1)])
    )
    integrality = np.concatenate([np.zeros(n0 + n1), np.ones(n1)])
    res = milp(
        c,
        constraints=cons,
        bounds=bounds,
        integrality=integrality,
        options={"mip_rel_gap": 0, "presolve": True},
    )
    assert res.status == 0, res.message
    return -res.fun + sign * b2[j]


def _brute_states(module, shape) -> list[np.ndarray]:
    """Per conv layer, the true state of every neuron, or '' where degenerate."""
    (w1, b1), (w2, b2) = _dense_layers(module, shape)
    top1 = b1 + np.clip(w1, 0, None).sum(axis=1)
    bot1 = b1 + np.clip(w1, None, 0).sum(axis=1)
    top2 = np.array([_extreme_layer2(w1, b1, w2, b2, j, 1.0) for j in range(len(b2))])
    bot2 = -np.array([_extreme_layer2(w1, b1, w2, b2, j, -1.0) for j in range(len(b2))])
    return [_classify(top1, bot1), _classify(top2, bot2)]


def _classify(top: np.ndarray, bot: np.ndarray) -> np.ndarray:
    out = np.full(top.size, "", dtype=object)
    out[top < -TOL] = INACTIVE
    out[bot > TOL] = ACTIVE
    out[(top > TOL) & (bot < -TOL)] = UNSTABLE
    return out


def _flat_torch(module: nn.Sequential, shape, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x).reshape(-1, *shape)).numpy()


def _box_points(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.random((2000, n)), rng.integers(0, 2, (500, n)).astype(float)])


@pytest.mark.parametrize("name", VARIANTS)
def test_unrolled_network_matches_torch_forward(name):
    module, shape, _ = _variant(name)
    net = load_network(module, input_shape=shape)
    x = np.random.default_rng(0).random((50, int(np.prod(shape))))
    assert np.allclose(net.forward(x), _flat_torch(module, shape, x), rtol=0, atol=1e-12)
    assert net.shapes[0] is not None and net.shapes[1] is not None


@pytest.mark.parametrize("paper", [False, True], ids=["default", "paper"])
@pytest.mark.parametrize("name", VARIANTS)
def test_stable_sets_equal_brute_force_and_compression_is_exact(name, paper):
    module, shape, _ = _variant(name)
    net = load_network(module, input_shape=shape)
    # --paper: interval big-M and no witness search, so the MILP decides far more (and
    # --tighten lp, dense-only, is skipped)
    options = StabilityOptions.paper(tighten="lp") if paper else None
    before = [w.copy() for w in net.weights]
    result = compress(net, options=options)
    assert all((a != b).nnz == 0 for a, b in zip(before[:2], net.weights[:2]))
    assert np.array_equal(before[2], net.weights[2])  # the original is left as it was
    assert result.report.complete
    truth = _brute_states(module, shape)
    for layer, expected in enumerate(truth):
        got = result.report.states[layer]
        known = expected != ""
        assert known.sum() >= 0.9 * expected.size
        assert list(got[known]) == list(expected[known]), f"layer {layer + 1}"
    assert result.verification.ok
    # brute-force forward passes: the compressed nn.Sequential against the original
    rng = np.random.default_rng(1)
    x = _box_points(net.widths[0], rng)
    compressed = result.compressed.to_torch(torch.float64)
    with torch.no_grad():
        got = compressed(torch.from_numpy(x)).numpy()
    assert np.abs(got - _flat_torch(module, shape, x)).max() <= 1e-9
    kept = [m for m in compressed if isinstance(m, nn.Conv2d)]
    assert len(kept) == 2


def test_whole_inactive_channel_is_removed_with_next_layer_inputs():
    module, shape, _ = _variant("plain")
    with torch.no_grad():
        module[0].bias[1] = -100.0  # channel 1 of layer 1 is off everywhere
    result = compress(load_network(module, input_shape=shape))
    channels = result.summary.channels
    assert channels[0]["inactive_channels_removed"] >= 1
    conv1, conv2 = [m for m in result.module if isinstance(m, nn.Conv2d)]
    assert conv1.out_channels == conv2.in_channels == channels[0]["channels_after"] < 3
    assert result.summary.parameters_after < result.summary.parameters_before
    assert result.verification.ok


def test_model_file_round_trip_and_stability_json_shapes(tmp_path):
    module, shape, _ = _variant("avgpool")
    result = compress(load_network(module, input_shape=shape))
    result.save(tmp_path / "out")
    net, meta = load_model_file(tmp_path / "out" / "compressed.pt")
    x = np.random.default_rng(2).random((20, net.widths[0]))
    assert np.array_equal(net.forward(x), result.compressed.forward(x))
    assert meta["parameters_after"] == net.n_parameters
    save_model(tmp_path / "orig.pt", result.original, {})
    again, _ = load_model_file(tmp_path / "orig.pt")
    assert np.array_equal(again.forward(x), result.original.forward(x))
    text = (tmp_path / "out" / "stability.json").read_text()
    import json

    assert json.loads(text)["shapes"] == result.original.shapes
    report = (tmp_path / "out" / "report.md").read_text()
    assert "channels before" in report and "Parameters:" in report
    # the report re-checked without trusting it (branch and bound is dense-only: MILP)
    args = [str(tmp_path / "orig.pt"), str(tmp_path / "out" / "stability.json")]
    assert main(["check", *args, "--solver", "highs"]) == 0


@pytest.mark.parametrize(
    "layer",
    [nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, groups=2)],
    ids=["maxpool", "groups2"],
)
def test_unsupported_layers_give_one_line_error(layer):
    module = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), layer, nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)
    )
    with pytest.raises(ExactCompressError) as err:
        load_network(module, input_shape=(1, 6, 6))
    assert "\n" not in str(err.value)
    assert type(layer).__name__ in str(err.value) or "groups" in str(err.value)


def test_compress_onnx_of_a_conv_net_is_refused_before_the_work(tmp_path, capsys):
    module, shape, _ = _variant("plain")
    save_model(tmp_path / "m.pt", load_network(module, input_shape=shape), {})
    out = tmp_path / "out"
    assert main(["compress", str(tmp_path / "m.pt"), "-o", str(out), "--onnx"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "convolution layers" in err[0]  # no stage ran before it
    assert not any(out.iterdir())  # nothing computed, nothing written


def test_conv_state_dict_without_architecture_exits_nonzero(tmp_path, capsys):
    module = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2))
    torch.save(module.state_dict(), tmp_path / "m.pt")
    assert main(["stability", str(tmp_path / "m.pt")]) != 0
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_trained_digits28_cnn_loses_channels_and_verifies(tmp_path):
    """exactcompress train --arch conv8-conv8/s2-32 --l1 on digits28, then compress."""
    from exactcompress.data import load_dataset
    from exactcompress.train import parse_arch, train

    net, meta = train("digits28", parse_arch("conv8-conv8/s2-32"), l1=5e-3, lr=0.05, epochs=4)
    x, _ = load_dataset("digits28", "train")
    result = compress(net, data=x, options=StabilityOptions(time_limit=60))
    removed = sum(
        c["inactive_channels_removed"] + c["dead_channels_removed"] for c in result.summary.channels
    )
    assert removed >= 1
    assert result.verification.ok
    assert result.summary.parameters_after < result.summary.parameters_before
    result.save(tmp_path)
    report = (tmp_path / "report.md").read_text()
    before, after = result.summary.parameters_before, result.summary.parameters_after
    assert f"Parameters: {before} -> {after}" in report


def test_bench_row_has_parameters_and_channels_removed():
    from benchmarks.runner import RunKey, run_one
    from benchmarks.suite import BenchModel, LoadedModel, conv_suite

    module, shape, _ = _variant("batchnorm")
    net = load_network(module, input_shape=shape)
    lm = LoadedModel(BenchModel("tiny-cnn"), net, {}, None, None, "none")
    row = run_one(lm, RunKey("tiny-cnn", "full", "neuron", "highs"), 60.0, None)
    assert row["status"] == "ok" and row["verified"] == "yes"
    assert row["parameters_after"] < row["parameters_before"] == net.n_parameters
    assert float(row["channels_removed_pct"]) > 0
    assert {m.dataset for m in conv_suite()} == {"digits28", "digits-rgb32"}


def _onnx_of(module: nn.Module, shape) -> object:
    import io

    onnx = pytest.importorskip("onnx")
    buf = io.BytesIO()
    torch.onnx.export(
        module,
        torch.zeros(1, *shape, dtype=torch.float64),
        buf,
        dynamo=False,
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE,  # keeps BatchNormalization nodes
    )
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("name", ["batchnorm", "avgpool", "stride-pad-dilation"])
def test_onnx_conv_batchnorm_averagepool_read_and_compressed(name):
    from exactcompress.onnx_io import read_model

    module, shape, _ = _variant(name)
    model = _onnx_of(module, shape)
    ops = {n.op_type for n in model.graph.node}
    assert "Conv" in ops and ops & {"BatchNormalization", "AveragePool", "Gemm"}
    net, _ = read_model(model)
    x = np.random.default_rng(3).random((50, net.widths[0]))
    assert np.abs(net.forward(x) - _flat_torch(module, shape, x)).max() <= 1e-12
    result = compress(net)
    assert result.verification.ok
    assert sum(c["inactive_channels_removed"] for c in result.summary.channels) >= 1


def test_onnx_grouped_conv_is_refused_in_one_line():
    from exactcompress.onnx_io import read_model

    module = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2))
    with pytest.raises(ExactCompressError) as err:
        read_model(_onnx_of(module.double(), (2, 6, 6)))
    assert "group=2" in str(err.value) and "\n" not in str(err.value)
