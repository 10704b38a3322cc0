"""Datasets (offline digits variants, local torchvision folders) and L1 training."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exactcompress import data
from exactcompress.data import DATASETS, input_size, load_dataset
from exactcompress.errors import ExactCompressError
from exactcompress.network import ReLUNetwork
from exactcompress.train import accuracy, train

# ---- datasets ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "digits28", "digits-rgb32"])
def test_digits_variants(name):
    X, y = load_dataset(name, "train")
    X_test, y_test = load_dataset(name, "test")
    assert X.dtype == np.float32 and X.shape[1] == input_size(name)
    assert len(X) + len(X_test) == 1797 and len(X_test) == 360
    assert X.min() >= 0.0 and X.max() <= 1.0 and X.max() > 0.9
    assert set(np.unique(y_test)) == set(range(10))  # stratified: every class in the test split
    assert np.issubdtype(y.dtype, np.integer)


def test_digits_split_is_fixed_and_disjoint():
    X1, y1 = load_dataset("digits")
    X1[:] = -1  # callers may scribble on their copy
    X2, y2 = load_dataset("digits")
    X_test, _ = load_dataset("digits", "test")
    assert X2.min() >= 0.0
    train_rows = {row.tobytes() for row in X2}
    overlap = sum(row.tobytes() in train_rows for row in X_test)
    assert overlap < 5  # only exact duplicate images could coincide
    assert np.array_equal(y1, y2)


def test_upsampled_digits_keep_the_image():
    X8, _ = load_dataset("digits", "test")
    X28, _ = load_dataset("digits28", "test")
    X32, _ = load_dataset("digits-rgb32", "test")
    img = X32.reshape(-1, 3, 32, 32)
    assert np.array_equal(img[:, 0], img[:, 1]) and np.array_equal(img[:, 0], img[:, 2])
    # Averaging the upsampled image back down to 8x8 gives the original pixels again.
    back28 = F.adaptive_avg_pool2d(torch.from_numpy(X28).reshape(-1, 1, 28, 28), 8).numpy()
    back32 = X32.reshape(-1, 3, 8, 4, 8, 4)[:, 0].mean(axis=(2, 4))
    for back in (back28, back32):
        assert np.corrcoef(back.ravel(), X8.ravel())[0, 1] > 0.95


def test_unknown_dataset_and_split():
    with pytest.raises(ExactCompressError, match="digits-rgb32.*cifar100"):
        load_dataset("imagenet")
    with pytest.raises(ExactCompressError, match="split"):
        load_dataset("digits", "validation")
    with pytest.raises(ExactCompressError, match="unknown dataset"):
        input_size("imagenet")
    assert [input_size(n) for n in DATASETS] == [64, 784, 3072, 784, 3072, 3072]


@pytest.mark.parametrize(
    "name, folder",
    [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")],
)
def test_missing_torchvision_data_says_where_to_put_it(tmp_path, name, folder):
    with pytest.raises(ExactCompressError, match="not found") as info:
        load_dataset(name, data_dir=str(tmp_path))
    assert str(tmp_path / folder) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EXACTCOMPRESS_DATA", str(tmp_path / "env"))
    with pytest.raises(ExactCompressError, match=str(tmp_path / "env")):
        load_dataset("mnist")


def test_mnist_from_local_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, 4, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, 4) + labels.tobytes()
        )
    X, y = load_dataset("mnist", "test", data_dir=str(tmp_path))
    assert X.dtype == np.float32 and X.shape == (4, 784)
    assert np.allclose(X, images.reshape(4, -1) / 255.0)
    assert y.tolist() == [3, 1, 4, 1]


def test_cifar_images_are_flattened_channel_first(monkeypatch):
    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert download is False
            self.data = np.zeros((1, 32, 32, 3), dtype=np.uint8)  # HWC, as torchvision stores
            self.data[0, 0, 1, 2] = 255  # row 0, column 1, blue
            self.targets = [7]

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    X, y = data.load_dataset("cifar10")
    assert X.shape == (1, 3072) and y.tolist() == [7]
    assert np.flatnonzero(X[0]).tolist() == [2 * 1024 + 0 * 32 + 1] and X[0].max() == 1.0


# ---- training ------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_run():
    return train("digits", [64, 64], epochs=30, seed=0)


def test_training_reaches_good_accuracy(plain_run):
    net, meta = plain_run
    assert net.widths == [64, 64, 64, 10]
    assert meta["test_accuracy"] > 0.9 and meta["train_accuracy"] > 0.9
    assert meta["interrupted"] is False and meta["epochs"] == 30
    X, y = load_dataset("digits", "test")
    assert accuracy(net, X, y) == meta["test_accuracy"]
    assert {"dataset", "arch", "l1", "epochs", "seed"} <= set(meta)


def test_l1_makes_weights_sparse(plain_run):
    def near_zero(net: ReLUNetwork) -> float:
        w = np.concatenate([w.ravel() for w in net.weights])
        return float(np.mean(np.abs(w) < 1e-3))

    sparse, meta = train("digits", [64, 64], l1=1e-3, epochs=30, seed=0)
    assert near_zero(sparse) > 4 * near_zero(plain_run[0])
    assert near_zero(sparse) > 0.2
    assert meta["l1"] == 1e-3 and meta["test_accuracy"] > 0.85


def test_same_seed_same_weights_different_seed_differs():
    a, _ = train("digits", [16], epochs=2, seed=3)
    b, _ = train("digits", [16], epochs=2, seed=3)
    c, _ = train("digits", [16], epochs=2, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))
    assert not np.array_equal(a.weights[0], c.weights[0])


def test_training_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train("digits", [8], epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_progress_and_ctrl_c_returns_model_so_far():
    seen = []

    def progress(epoch: int, loss: float) -> None:
        seen.append((epoch, loss))
        if epoch == 2:
            raise KeyboardInterrupt

    net, meta = train("digits", [16], epochs=10, progress=progress)
    assert [e for e, _ in seen] == [1, 2]
    assert all(loss > 0 for _, loss in seen)
    assert meta["interrupted"] is True and meta["epochs"] == 2
    assert net.widths == [64, 16, 10]


@pytest.mark.parametrize(
    "kwargs", [{"arch": []}, {"arch": [0]}, {"epochs": 0}, {"lr": 0.0}, {"l1": -1.0}]
)
def test_bad_training_arguments(kwargs):
    with pytest.raises(ExactCompressError):
        train("digits", **{"arch": [8], **kwargs})


def test_divergence_is_reported():
    with pytest.raises(ExactCompressError, match="diverged"):
        train("digits", [64], epochs=3, lr=1e8)


def test_accuracy_checks_input_size():
    net = ReLUNetwork([np.eye(3)], [np.zeros(3)])
    assert accuracy(net, np.eye(3), np.arange(3)) == 1.0
    with pytest.raises(ExactCompressError, match="3 inputs"):
        accuracy(net, np.zeros((2, 4)), np.zeros(2))
