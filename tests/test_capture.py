"""A user's own nn.Module: forwards made of Linear/ReLU/Flatten (modules, functions or
methods) load as the network they compute; anything else is refused in one line that
names the operation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exactcompress import ExactCompressError, load_network


class Mlp(nn.Module):
    """The plain case: submodules called in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(16, 8), nn.Linear(8, 6), nn.Linear(6, 3)
        self.act, self.drop = nn.ReLU(), nn.Dropout(0.5)

    def forward(self, x):
        x = self.act(self.fc1(x))
        return self.out(self.drop(self.act(self.fc2(x))))


class Functional(nn.Module):
    """Images in, every functional spelling of ReLU and flattening, a nested block."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(16, 8), nn.Identity())
        self.fc2, self.fc3, self.out = nn.Linear(8, 7), nn.Linear(7, 5), nn.Linear(5, 2)

    def forward(self, x):
        x = F.relu(self.block(x.view(x.size(0), -1)))
        x = torch.relu(self.fc2(torch.flatten(x, 1)))
        x = self.fc3(x.reshape(x.shape[0], -1)).relu()
        return self.out(F.dropout(x, 0.2, training=self.training))


def forward64(module: nn.Module, x: np.ndarray, shape: tuple) -> np.ndarray:
    with torch.no_grad():
        return module.double()(torch.from_numpy(x).reshape(len(x), *shape)).numpy()


@pytest.mark.parametrize("cls, shape", [(Mlp, (16,)), (Functional, (1, 4, 4))])
def test_module_subclass_loads_as_its_forward(cls, shape):
    torch.manual_seed(0)
    module = cls().eval()
    net = load_network(module)
    assert net.widths[0] == 16 and net.n_hidden == len(net.weights) - 1
    x = np.random.default_rng(0).random((40, 16))
    np.testing.assert_allclose(net.forward(x), forward64(module, x, shape), rtol=1e-12, atol=1e-12)


def refusal(forward, init=None) -> str:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)
            if init:
                init(self)

    Net.forward = forward
    with pytest.raises(ExactCompressError) as err:
        load_network(Net().eval())
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("Net.forward")
    return msg


def test_sigmoid_in_forward_is_refused_by_name():
    msg = refusal(lambda self, x: self.b(torch.sigmoid(self.a(x))))
    assert "unsupported operation sigmoid" in msg


@pytest.mark.parametrize(
    "forward, init, words",
    [
        (lambda self, x: self.b(self.a(x).tanh()), None, "tanh"),
        (lambda self, x: self.b(F.relu(self.a(x)) + self.a(x)), None, "add"),
        (lambda self, x: self.b(self.a(x)), None, "two affine layers in a row"),
        (lambda self, x: self.b(F.relu(self.a(F.relu(x)))), None, "ReLU on the input"),
        (lambda self, x: F.linear(F.relu(self.a(x)), self.b.weight), None, "'b.weight'"),
        (lambda self, x: self.b(self.c(self.a(x))), lambda s: setattr(s, "c", nn.GELU()), "GELU"),
        (lambda self, x: self.b(torch.flatten(F.relu(self.a(x)))), None, "batch axis"),
    ],
    ids=["tanh", "skip", "no-relu", "relu-input", "get-attr", "gelu", "flatten-batch"],
)
def test_unsupported_forwards_are_refused_in_one_line(forward, init, words):
    assert words in refusal(forward, init)


def test_dropout_in_training_mode_is_refused():
    module = Mlp().train()
    with pytest.raises(ExactCompressError, match="model.eval"):
        load_network(module)


def test_untraceable_forward_is_refused_in_one_line():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else x

    with pytest.raises(ExactCompressError, match="cannot trace Branchy.forward") as err:
        load_network(Branchy())
    assert "\n" not in str(err.value)
