"""L1-regularised training of fully connected ReLU classifiers.

L1 on the weights drives many pre-activations to one sign over the whole input box,
which is what makes neurons stable and the network compressible (Serra et al.). The
loop is deliberately plain: whole dataset as one tensor, manual minibatches from a
seeded permutation, so a run is reproducible from its seed and small models train
in seconds on a laptop CPU.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import load_dataset
from .errors import ExactCompressError
from .io import load_network
from .network import ReLUNetwork

#: (channels, height, width) of each dataset's images, for convolutional architectures
IMAGE_SHAPES = {
    "digits": (1, 8, 8),
    "digits28": (1, 28, 28),
    "digits-rgb32": (3, 32, 32),
    "mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}
#: ``convC``: Conv2d(C channels, 3x3, padding 1) + ReLU; ``convC/sS``: stride S
_CONV = re.compile(r"^conv(\d+)(?:/s(\d+))?$")


def parse_arch(spec: str) -> list[int | str]:
    """``100-100`` (dense widths) or ``conv16-conv32/s2-100`` (convolutions first)."""
    arch: list[int | str] = []
    for token in (t for t in spec.replace("x", "-").split("-") if t):
        if _CONV.match(token):
            arch.append(token)
            continue
        try:
            arch.append(int(token))
        except ValueError:
            raise ExactCompressError(
                f"--arch {spec!r} is not widths like 100-100 or conv16-conv32-100"
            ) from None
    return arch


def train(
    dataset: str,
    arch: Sequence[int | str],
    l1: float = 0.0,
    epochs: int = 30,
    lr: float = 0.01,
    momentum: float = 0.9,
    batch_size: int = 64,
    seed: int = 0,
    data_dir: str | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[ReLUNetwork, dict]:
    """Train on ``dataset`` with hidden widths ``arch``; returns the network and its meta.

    ``arch`` may start with convolutions (``parse_arch``), run on the dataset's images.
    The loss is cross-entropy + l1 * sum |W| over every Linear weight matrix (and every
    convolution kernel), output layer included, as in the paper.
    ``progress(epoch, mean_loss)`` is called after each epoch. Ctrl-C stops after the
    current step and returns the model so far, with ``meta["interrupted"] = True``, so a
    long run is never wasted.
    """
    arch = _check_args(arch, l1, epochs, lr, batch_size)
    X, y = load_dataset(dataset, "train", data_dir)
    X_test, y_test = load_dataset(dataset, "test", data_dir)
    n_classes = int(max(y.max(), y_test.max())) + 1
    # A private RNG stream: reproducible from ``seed`` without disturbing the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if any(isinstance(a, str) for a in arch):
            model = _build_conv(arch, IMAGE_SHAPES[dataset], n_classes)
        else:
            model = _build([X.shape[1], *arch, n_classes])
        gen = torch.Generator().manual_seed(seed)
        done, interrupted = _fit(
            model,
            torch.from_numpy(X),
            torch.from_numpy(y),
            l1,
            epochs,
            lr,
            momentum,
            batch_size,
            gen,
            progress,
        )
    net = load_network(model)
    meta = {
        "dataset": dataset,
        "arch": arch,
        "l1": float(l1),
        "epochs": done,
        "lr": float(lr),
        "momentum": float(momentum),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "train_accuracy": accuracy(net, X, y),
        "test_accuracy": accuracy(net, X_test, y_test),
        "interrupted": interrupted,
    }
    return net, meta


def accuracy(net: ReLUNetwork, X: np.ndarray, y: np.ndarray) -> float:
    """Fraction of correct argmax predictions, in float64 like every other stage."""
    X = np.atleast_2d(X)
    if X.shape[1] != net.widths[0]:
        raise ExactCompressError(
            f"network takes {net.widths[0]} inputs but the data has {X.shape[1]} features"
        )
    if X.shape[0] == 0:
        raise ExactCompressError("no samples to compute accuracy on")
    return float(np.mean(net.forward(X).argmax(axis=1) == np.asarray(y)))


def _check_args(
    arch: Sequence[int | str], l1: float, epochs: int, lr: float, batch_size: int
) -> list[int | str]:
    convs = [a for a in arch if isinstance(a, str)]
    if any(not _CONV.match(a) for a in convs) or list(arch[: len(convs)]) != convs:
        raise ExactCompressError(f"architecture {list(arch)}: convC or convC/sS layers come first")
    widths = [int(w) for w in arch[len(convs) :]]
    arch = [*convs, *widths]
    if not arch or min(widths, default=1) < 1 or any(_channels(c) < 1 for c in convs):
        raise ExactCompressError(f"architecture {arch} needs hidden layers of width >= 1")
    if l1 < 0 or lr <= 0 or epochs < 1 or batch_size < 1:
        raise ExactCompressError(
            f"need l1 >= 0, lr > 0, epochs >= 1, batch size >= 1 "
            f"(got l1={l1}, lr={lr}, epochs={epochs}, batch size={batch_size})"
        )
    return arch


def _channels(token: str) -> int:
    return int(_CONV.match(token).group(1))


def _build_conv(
    arch: list[int | str], shape: tuple[int, int, int], n_classes: int
) -> nn.Sequential:
    """Unflatten(1, shape), [Conv2d 3x3 padding 1, ReLU]..., Flatten, [Linear, ReLU]..., Linear."""
    layers: list[nn.Module] = [nn.Unflatten(1, shape)]
    channels = shape[0]
    for token in (a for a in arch if isinstance(a, str)):
        m = _CONV.match(token)
        out, stride = int(m.group(1)), int(m.group(2) or 1)
        layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1), nn.ReLU()]
        channels = out
    layers.append(nn.Flatten())
    with torch.no_grad():
        n = nn.Sequential(*layers)(torch.zeros(1, int(np.prod(shape)))).shape[1]
    for width in (a for a in arch if not isinstance(a, str)):
        layers += [nn.Linear(n, width), nn.ReLU()]
        n = width
    layers.append(nn.Linear(n, n_classes))
    return nn.Sequential(*layers)


def _build(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(widths[i], widths[i + 1]))
    return nn.Sequential(*layers)


def _fit(
    model: nn.Sequential,
    X: torch.Tensor,
    y: torch.Tensor,
    l1: float,
    epochs: int,
    lr: float,
    momentum: float,
    batch_size: int,
    gen: torch.Generator,
    progress: Callable[[int, float], None] | None,
) -> tuple[int, bool]:
    """SGD epochs; returns (epochs completed, whether Ctrl-C stopped it)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    weights = [m.weight for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    done = 0
    try:
        for epoch in range(1, epochs + 1):
            mean_loss = _epoch(model, opt, weights, X, y, l1, batch_size, gen)
            done = epoch
            if not np.isfinite(mean_loss):
                raise ExactCompressError(
                    f"training diverged at epoch {epoch} (loss is {mean_loss}); try a smaller lr"
                )
            if progress is not None:
                progress(epoch, mean_loss)
    except KeyboardInterrupt:
        return done, True
    return done, False


def _epoch(
    model: nn.Sequential,
    opt: torch.optim.Optimizer,
    weights: list[torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    l1: float,
    batch_size: int,
    gen: torch.Generator,
) -> float:
    perm = torch.randperm(X.shape[0], generator=gen)
    total = 0.0
    for start in range(0, X.shape[0], batch_size):
        idx = perm[start : start + batch_size]
        loss = F.cross_entropy(model(X[idx]), y[idx])
        if l1:
            loss = loss + l1 * sum(w.abs().sum() for w in weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * idx.numel()
    return total / X.shape[0]
