"""Datasets as flat float32 arrays in [0, 1], the input box of the paper.

The digits variants ship with scikit-learn, so the demo and the tests run offline;
the upsampled ones have MNIST's and CIFAR's input sizes for quick stand-ins. MNIST
and CIFAR are read from a local folder and never downloaded: this package may run
on machines without network access, and a silent multi-hundred-megabyte download
is not what a user of a compression tool expects.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ExactCompressError

DATASETS = ("digits", "digits28", "digits-rgb32", "mnist", "cifar10", "cifar100")
SPLITS = ("train", "test")

_INPUT_SIZE = {
    "digits": 64,
    "digits28": 784,
    "digits-rgb32": 3072,
    "mnist": 784,
    "cifar10": 3072,
    "cifar100": 3072,
}

# torchvision class, folder under data_dir, files torchvision checks there
_TORCHVISION = {
    "mnist": (
        "MNIST",
        "MNIST/raw",
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    ),
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        "data_batch_1..data_batch_5, test_batch, batches.meta",
    ),
    "cifar100": ("CIFAR100", "cifar-100-python", "train, test, meta"),
}


def input_size(name: str) -> int:
    """Number of input features of a dataset, without loading it."""
    _check_name(name)
    return _INPUT_SIZE[name]


def load_dataset(
    name: str, split: str = "train", data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): X float32 of shape (m, n) in [0, 1], y int64 class labels."""
    _check_name(name)
    if split not in SPLITS:
        raise ExactCompressError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if name in _TORCHVISION:
        return _torchvision(name, split, data_dir)
    X, y = _digits(split)
    if name == "digits28":
        X = _upsample(X, 28, channels=1)
    elif name == "digits-rgb32":
        X = _upsample(X, 32, channels=3)
    return X, y


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ExactCompressError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Copies, so a caller editing its arrays cannot change the next caller's data."""
    X_train, X_test, y_train, y_test = _digits_split()
    return (X_train.copy(), y_train.copy()) if split == "train" else (X_test.copy(), y_test.copy())


@lru_cache(maxsize=1)
def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return tuple(train_test_split(X, y, test_size=0.2, stratify=y, random_state=0))


def _upsample(X: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Bilinear 8x8 -> size x size, grey repeated over channels, channel-first flattening."""
    img = torch.from_numpy(X).reshape(-1, 1, 8, 8)
    big = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    big = big.clamp(0.0, 1.0).repeat(1, channels, 1, 1)
    return big.reshape(X.shape[0], -1).numpy().astype(np.float32)


def _torchvision(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    root = data_dir or os.environ.get("EXACTCOMPRESS_DATA") or "./data"
    cls_name, folder, files = _TORCHVISION[name]
    try:
        ds = getattr(tvd, cls_name)(root=root, train=split == "train", download=False)
    except RuntimeError:
        where = os.path.join(os.path.abspath(root), folder)
        raise ExactCompressError(
            f"{name} not found: put the {cls_name} files ({files}) under {where} "
            f"(see torchvision.datasets.{cls_name}; set EXACTCOMPRESS_DATA to use another "
            "folder; nothing is downloaded)"
        ) from None
    data = torch.as_tensor(ds.data)
    if data.ndim == 4:  # CIFAR stores HWC images; the models expect channel-first
        data = data.permute(0, 3, 1, 2)
    X = (data.reshape(data.shape[0], -1).to(torch.float32) / 255.0).numpy()
    y = torch.as_tensor(ds.targets, dtype=torch.int64).numpy()
    return X, y
