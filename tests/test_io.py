"""Loading and saving networks: every accepted format, and clear refusals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from exactcompress.errors import ExactCompressError
from exactcompress.io import (
    MODEL_FORMAT,
    load_model_file,
    load_network,
    save_model,
    save_torch_atomic,
    write_atomic,
)
from exactcompress.network import ReLUNetwork

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference-models"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason="reference models (../shared) not present"
)


def random_net(widths=(5, 4, 3, 2), seed=0) -> ReLUNetwork:
    rng = np.random.default_rng(seed)
    return ReLUNetwork(
        [rng.standard_normal((b, a)) for a, b in zip(widths, widths[1:], strict=False)],
        [rng.standard_normal(b) for b in widths[1:]],
    )


def same(a: ReLUNetwork, b: ReLUNetwork, tol: float = 0.0) -> bool:
    pairs = zip(a.weights + a.biases, b.weights + b.biases, strict=True)
    return a.widths == b.widths and all(np.allclose(x, y, rtol=0, atol=tol) for x, y in pairs)


def write_dat(path: Path, net: ReLUNetwork, digits: int = 17) -> None:
    """The original code's weights.dat layout, written independently of the reader."""
    fmt = f"%.{digits}g"
    rows = [",".join(fmt % v for v in row) for w in net.weights for row in w]
    bias = [",".join(fmt % v for v in b) for b in net.biases]
    path.write_text(
        "//Model path = somewhere/checkpoint.tar\n//Classification accuracy = 90%\n\n"
        f"levels = {len(net.weights)};\n\nn = [{', '.join(map(str, net.widths))}];\n\n"
        "W = [\n" + "\n,".join(rows) + "\n];\n\nB = [\n" + "\n,".join(bias) + "\n];\n"
    )


# ---- writing ---------------------------------------------------------------------


def test_write_atomic_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    write_atomic(str(target), b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["out.bin"]  # no temporary left behind


def test_write_atomic_failure_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExactCompressError, match="cannot write"):
        write_atomic(blocker / "sub" / "out.bin", b"data")


def test_save_model_round_trip_is_bit_exact(tmp_path):
    net = random_net()  # float64 values that float32 cannot hold
    meta = {
        "dataset": "digits",
        "acc": np.float64(0.5),
        "n": np.int64(3),
        "arch": (4, 3),
        "path": tmp_path,
        "nested": {"x": np.arange(2)},
    }
    path = tmp_path / "model.pt"
    save_model(path, net, meta)

    raw = torch.load(path, weights_only=True)
    assert raw["format"] == MODEL_FORMAT and raw["widths"] == [5, 4, 3, 2]
    assert list(raw["state_dict"]) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    ]
    assert raw["state_dict"]["0.weight"].dtype == torch.float32

    loaded, loaded_meta = load_model_file(path)
    assert same(loaded, net)
    assert loaded_meta == {
        "dataset": "digits",
        "acc": 0.5,
        "n": 3,
        "arch": [4, 3],
        "path": str(tmp_path),
        "nested": {"x": [0, 1]},
    }
    assert type(loaded_meta["n"]) is int


def test_float32_state_dict_alone_still_loads(tmp_path):
    net = random_net()
    save_model(tmp_path / "m.pt", net, {})
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    del obj["state_dict64"]
    save_torch_atomic(tmp_path / "m32.pt", obj)
    assert same(load_network(tmp_path / "m32.pt"), net, tol=1e-6)


def test_edited_float32_weights_are_not_silently_ignored(tmp_path):
    save_model(tmp_path / "m.pt", random_net(), {})
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    obj["state_dict"]["0.weight"][0, 0] += 1.0
    save_torch_atomic(tmp_path / "m.pt", obj)
    with pytest.raises(ExactCompressError, match="state_dict64"):
        load_network(tmp_path / "m.pt")


def test_save_model_refuses_objects_in_meta(tmp_path):
    with pytest.raises(ExactCompressError, match=r"meta\['bad'\].*object"):
        save_model(tmp_path / "m.pt", random_net(), {"bad": object()})
    assert not (tmp_path / "m.pt").exists()


# ---- modules -------------------------------------------------------------------


def test_nested_sequential_with_identity_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.5)),
        nn.Linear(5, 4, bias=False),
        nn.ReLU(),
        nn.Identity(),
        nn.Linear(4, 3),
    ).eval()
    net = load_network(model)
    assert net.widths == [6, 5, 4, 3]
    x = torch.rand(7, 1, 6, dtype=torch.float64)
    expected = model.double()(x).detach().numpy()
    assert np.allclose(net.forward(x.reshape(7, 6).numpy()), expected, atol=1e-12)


def test_data_parallel_wrapper_is_unwrapped():
    model = nn.Sequential(
        nn.DataParallel(nn.Sequential(nn.Linear(3, 2), nn.ReLU())), nn.Linear(2, 1)
    )
    assert load_network(model).widths == [3, 2, 1]


def test_dropout_in_training_mode_is_refused_unless_p_is_zero():
    with pytest.raises(ExactCompressError, match="eval"):
        load_network(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Dropout(0.2), nn.Linear(2, 1)))
    load_network(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Dropout(0.0), nn.Linear(2, 1)))


@pytest.mark.parametrize(
    "layer",
    [nn.Conv2d(1, 1, 1), nn.Sigmoid(), nn.BatchNorm1d(2), nn.Tanh(), nn.LeakyReLU()],
    ids=lambda m: type(m).__name__,
)
def test_other_layers_are_refused_by_name(layer):
    model = nn.Sequential(nn.Linear(3, 2), layer, nn.Linear(2, 1))
    with pytest.raises(ExactCompressError, match=type(layer).__name__):
        load_network(model)


@pytest.mark.parametrize(
    "layers, message",
    [
        ([nn.Linear(3, 2), nn.Linear(2, 1)], "two Linear layers in a row"),
        ([nn.ReLU(), nn.Linear(3, 1)], "ReLU at the start"),
        ([nn.Linear(3, 2), nn.ReLU()], "ends with a ReLU"),
        ([nn.Linear(3, 2), nn.ReLU(), nn.ReLU(), nn.Linear(2, 1)], "twice in a row"),
        ([nn.Flatten()], "no Linear layer"),
    ],
)
def test_layer_chain_is_checked(layers, message):
    with pytest.raises(ExactCompressError, match=message):
        load_network(nn.Sequential(*layers))


# ---- state dicts ---------------------------------------------------------------


def test_bare_state_dict_in_memory_and_on_disk(tmp_path):
    net = random_net()
    sd = net.to_torch(torch.float64).state_dict()
    assert same(load_network(sd), net)
    torch.save(sd, tmp_path / "sd.pt")
    loaded, meta = load_model_file(tmp_path / "sd.pt")
    assert same(loaded, net) and meta == {}


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.update({"1.running_mean": torch.zeros(4)}),
            "unexpected key '1.running_mean'",
        ),
        (lambda sd: sd.update({"2.weight": torch.zeros(3, 5)}), "expects 5 inputs"),
        (lambda sd: sd["0.bias"].__setitem__(1, float("nan")), "NaN"),
        (lambda sd: sd.update({"1.weight": torch.zeros(4, 4)}), "indices 0 and 1"),
        (lambda sd: sd.update({"0.weight": torch.zeros(4)}), "not a matrix"),
        (lambda sd: sd.update({"0.weight": "text"}), "not a tensor"),
    ],
)
def test_bad_state_dicts_name_the_file_and_problem(tmp_path, edit, message):
    sd = random_net().to_torch().state_dict()
    edit(sd)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ExactCompressError, match=message) as info:
        load_network(tmp_path / "bad.pt")
    assert str(tmp_path / "bad.pt") in str(info.value)
    assert "\n" not in str(info.value)


def test_original_checkpoint_layout(tmp_path):
    net = random_net((6, 5, 4, 3))
    torch_sd = net.to_torch(torch.float64).state_dict()
    sd = {
        "features.module.0.weight": torch_sd["0.weight"],
        "features.module.0.bias": torch_sd["0.bias"],
        "features.module.3.weight": torch_sd["2.weight"],
        "features.module.3.bias": torch_sd["2.bias"],
        "classifier.0.weight": torch_sd["4.weight"],
        "classifier.0.bias": torch_sd["4.bias"],
    }
    assert same(load_network(sd), net)
    torch.save({"epoch": 3, "best_prec1": torch.tensor(91.5), "state_dict": sd}, tmp_path / "c.tar")
    loaded, meta = load_model_file(tmp_path / "c.tar")
    assert same(loaded, net) and meta == {"epoch": 3, "best_prec1": 91.5}


def test_checkpoint_without_classifier_is_refused():
    sd = {"features.module.0.weight": torch.zeros(2, 3), "features.module.0.bias": torch.zeros(2)}
    with pytest.raises(ExactCompressError, match="no classifier"):
        load_network(sd)


# ---- files ---------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ExactCompressError, match="does not exist"):
        load_network(tmp_path / "nope.pt")


def test_random_bytes(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ExactCompressError, match="not a readable torch file") as info:
        load_network(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_pickled_module_is_refused_with_advice(tmp_path):
    torch.save(nn.Sequential(nn.Linear(2, 1)), tmp_path / "module.pt")
    with pytest.raises(ExactCompressError, match="state_dict"):
        load_network(tmp_path / "module.pt")


def test_unknown_model_format(tmp_path):
    torch.save({"format": "exactcompress.model/9", "state_dict": {}}, tmp_path / "m.pt")
    with pytest.raises(ExactCompressError, match="unsupported model format"):
        load_network(tmp_path / "m.pt")


def test_weights_dat_by_extension_and_by_content(tmp_path):
    net = random_net()
    write_dat(tmp_path / "weights.dat", net)
    assert same(load_network(tmp_path / "weights.dat"), net)
    (tmp_path / "weights.txt").write_bytes((tmp_path / "weights.dat").read_bytes())
    assert same(load_network(str(tmp_path / "weights.txt")), net)


def test_weights_dat_with_wrong_count(tmp_path):
    path = tmp_path / "weights.dat"
    write_dat(path, random_net())
    path.write_text(path.read_text().replace("n = [5, 4, 3, 2]", "n = [5, 4, 4, 2]"))
    with pytest.raises(ExactCompressError, match="needs .* weights"):
        load_network(path)


# ---- the published reference models -------------------------------------------


def original_forward(state_dict: dict, x: torch.Tensor) -> torch.Tensor:
    """The original architecture rebuilt from its state dict (Linear, ReLU, Dropout blocks)."""
    hidden = sorted(
        int(k.split(".")[2]) for k in state_dict if k.startswith("features.") and "weight" in k
    )
    blocks: list[nn.Module] = []
    for i in hidden:
        w = state_dict[f"features.module.{i}.weight"]
        blocks += [nn.Linear(w.shape[1], w.shape[0]), nn.ReLU(), nn.Dropout(0.0)]
    features = nn.Sequential(*blocks)
    features.load_state_dict(
        {k.removeprefix("features.module."): v for k, v in state_dict.items() if "features" in k}
    )
    w = state_dict["classifier.0.weight"]
    classifier = nn.Sequential(nn.Linear(w.shape[1], w.shape[0]))
    classifier.load_state_dict(
        {
            k.removeprefix("classifier."): v
            for k, v in state_dict.items()
            if k.startswith("classifier")
        }
    )
    model = nn.Sequential(features, classifier).double().eval()
    with torch.no_grad():
        return model(x)


@needs_reference
@pytest.mark.parametrize(
    "rel, widths",
    [
        ("mnist-2x100/checkpoint_120.tar", [784, 100, 100, 10]),
        ("mnist-2x200/checkpoint_120.tar", [784, 200, 200, 10]),
        ("cifar10-pruned/pruned_checkpoint_120.tar", [3072, 116, 248, 10]),
        ("cifar100-pruned/pruned_checkpoint_120.tar", [3072, 170, 380, 100]),
    ],
)
def test_reference_checkpoints_match_original_forward(rel, widths):
    path = REFERENCE / rel
    net, meta = load_model_file(path)
    assert net.widths == widths
    assert set(meta) == {"epoch", "best_prec1"}
    sd = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    x = torch.rand(16, widths[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert np.allclose(net.forward(x.numpy()), original_forward(sd, x).numpy(), rtol=0, atol=1e-12)


@needs_reference
@pytest.mark.parametrize("folder", ["mnist-2x100", "mnist-2x200"])
def test_reference_weights_dat_matches_checkpoint(folder):
    from_dat = load_network(REFERENCE / folder / "weights.dat")
    from_tar = load_network(REFERENCE / folder / "checkpoint_120.tar")
    assert same(from_dat, from_tar, tol=1e-6)
