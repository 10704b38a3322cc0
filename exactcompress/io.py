"""Loading networks from the formats users have, and saving the package's own.

Files are read with ``torch.load(weights_only=True)`` only: a model file may come
from anywhere, and unpickling arbitrary objects would run arbitrary code. Every
problem becomes an ExactCompressError with a one-line message naming the file, so
the command line can report it without a traceback.
"""

from __future__ import annotations

import io
import os
import re
import secrets
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import conv
from .capture import capture
from .errors import ExactCompressError
from .network import ReLUNetwork

MODEL_FORMAT = "exactcompress.model/1"

# "0.weight", "module.0.weight", "features.module.3.bias", "classifier.0.weight"
_KEY = re.compile(r"^(?:(features|classifier)\.)?(?:module\.)?(\d+)\.(weight|bias)$")
_SECTION_ORDER = {None: 0, "features": 1, "classifier": 2}


# ---- writing ---------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never half.

    The temporary file lives in the target's directory because os.replace is only
    atomic within one file system; it is created with mode 0o666 so the umask
    decides the final permissions, as for an ordinary write.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        os.makedirs(parent, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        raise ExactCompressError(f"cannot write {path}: {err.strerror or err}") from None


def make_dir(path: str | os.PathLike) -> None:
    """os.makedirs, failing with one line that names the folder instead of a traceback."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ExactCompressError(f"cannot create folder {path}: {err.strerror or err}") from None


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, in one line, if ``path`` can never be written (its folder cannot be
    created, or it is a folder), rather than after the work that produces it."""
    if os.path.isdir(path):
        raise ExactCompressError(f"cannot write {path}: it is a folder")
    make_dir(os.path.dirname(os.path.abspath(path)))


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> None:
    """torch.save, but an interrupted save never leaves a truncated file behind."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def save_model(path: str | os.PathLike, net: ReLUNetwork, meta: dict) -> None:
    """Save ``net`` in the exactcompress.model/1 format of DESIGN.md.

    ``state_dict`` holds float32 tensors, so any nn.Sequential can load it, but
    float32 rounds the float64 weights that pruning produced. ``state_dict64`` keeps
    the exact float64 copy; load_model_file prefers it, so a compressed model
    reloads bit-exact. ``meta`` is converted to plain Python values (numpy scalars
    and arrays included) because weights_only loading rejects anything else.
    """
    obj = {
        "format": MODEL_FORMAT,
        "widths": list(net.widths),
        "state_dict": net.to_torch(torch.float32).state_dict(),
        "state_dict64": net.to_torch(torch.float64).state_dict(),
        "meta": _plain(meta, "meta"),
    }
    if not net.is_dense:  # a state dict cannot say a layer's stride, padding or pooling
        obj["conv_layers"] = _plain(conv.architecture(net), "conv_layers")
    save_torch_atomic(path, obj)


def _plain(value: Any, where: str) -> Any:
    """The value as str/int/float/bool/None/list/dict, or an error saying where it is not."""
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):  # np.float64 is a float
        return _plain(value.tolist(), where)
    if value is None or type(value) in (str, bool, int, float):  # subclasses do not unpickle
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, (str, int, float, bool))]
        if bad:
            raise ExactCompressError(f"{where} has a key of type {type(bad[0]).__name__}")
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise ExactCompressError(
        f"{where} holds a {type(value).__name__}; model metadata must be plain "
        "str/int/float/bool/None/list/dict values"
    )


# ---- loading -------------------------------------------------------------------


def load_network(
    source: nn.Module | Mapping | str | os.PathLike, input_shape: tuple[int, int, int] | None = None
) -> ReLUNetwork:
    """A ReLUNetwork from a torch module, a state dict or a file of any supported format.

    ``input_shape`` (C, H, W): the image shape of the flat input of a module with
    convolutions that does not start with nn.Unflatten.
    """
    if isinstance(source, nn.Module) and not type(source).__module__.startswith("torch.nn"):
        return capture(source)  # a user's own module: trace its forward
    if isinstance(source, nn.Module):
        return _from_module(source, input_shape)
    if isinstance(source, Mapping):
        return _from_object(source)[0]
    if isinstance(source, (str, os.PathLike)):
        return load_model_file(source)[0]
    raise ExactCompressError(f"cannot load a network from a {type(source).__name__}")


def load_model_file(path: str | os.PathLike) -> tuple[ReLUNetwork, dict]:
    """The network in ``path`` and its metadata ({} for formats that carry none)."""
    path = Path(path)
    if not path.exists():
        raise ExactCompressError(f"model file {path} does not exist")
    if path.is_dir():
        raise ExactCompressError(f"model file {path} is a directory")
    try:
        if path.suffix.lower() == ".onnx":
            from .onnx_io import load_onnx

            return load_onnx(path)
        if _is_weights_dat(path):
            return _read_weights_dat(path), {}
        return _from_object(_torch_load(path))
    except ExactCompressError as err:
        raise ExactCompressError(f"{path}: {err}") from None


def _is_weights_dat(path: Path) -> bool:
    if path.suffix.lower() == ".dat":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(64).lstrip().startswith(b"//")
    except OSError as err:
        raise ExactCompressError(f"cannot read: {err.strerror or err}") from None


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises many exception types for a bad file
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "Unsupported global" in str(err):
            raise ExactCompressError(
                "holds pickled Python objects (a whole module?), which cannot be loaded "
                "safely; save model.state_dict() instead"
            ) from None
        raise ExactCompressError(f"not a readable torch file ({first_line})") from None


def _from_object(obj: Any) -> tuple[ReLUNetwork, dict]:
    """Dispatch on what torch.load returned: our model file, a checkpoint, or a state dict."""
    if not isinstance(obj, Mapping):
        raise ExactCompressError(f"holds a {type(obj).__name__}, not a state dict")
    if "format" in obj:
        return _from_model_dict(obj)
    if "state_dict" in obj:
        meta = {k: _plain(obj[k], k) for k in ("epoch", "best_prec1") if k in obj}
        return _from_state_dict(obj["state_dict"]), meta
    return _from_state_dict(obj), {}


def _from_model_dict(obj: Mapping) -> tuple[ReLUNetwork, dict]:
    if obj["format"] != MODEL_FORMAT:
        raise ExactCompressError(
            f"unsupported model format {obj['format']!r} (this version reads {MODEL_FORMAT!r})"
        )
    if "state_dict" not in obj:
        raise ExactCompressError("model file has no state_dict")
    if "conv_layers" in obj:
        return _from_conv_model_dict(obj)
    net = _from_state_dict(obj["state_dict"])
    if "state_dict64" in obj:
        exact = _from_state_dict(obj["state_dict64"])
        _check_same_rounding(exact, net)
        net = exact
    return net, _checked_meta(obj, net)


def _from_conv_model_dict(obj: Mapping) -> tuple[ReLUNetwork, dict]:
    """A model file with convolutions: its architecture list rebuilds the layers."""
    net = conv.network_from_state(obj["conv_layers"], obj.get("state_dict64", obj["state_dict"]))
    rounded = conv.network_from_state(obj["conv_layers"], obj["state_dict"])
    exact = net.to_torch(torch.float32).state_dict()
    if any(not torch.equal(exact[k], v) for k, v in rounded.to_torch().state_dict().items()):
        raise ExactCompressError(
            "state_dict and state_dict64 hold different weights (was one edited?)"
        )
    return net, _checked_meta(obj, net)


def _checked_meta(obj: Mapping, net: ReLUNetwork) -> dict:
    """The file's meta, once its stated widths agree with the weights read."""
    if "widths" in obj and list(obj["widths"]) != net.widths:
        raise ExactCompressError(
            f"model file says widths {list(obj['widths'])} but its weights give {net.widths}"
        )
    meta = obj.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise ExactCompressError(f"model meta is a {type(meta).__name__}, not a dict")
    return dict(meta)


def _check_same_rounding(exact: ReLUNetwork, rounded: ReLUNetwork) -> None:
    """Refuse a file whose float32 weights were edited without its float64 copy."""
    if exact.widths != rounded.widths or not all(
        np.array_equal(a.astype(np.float32), b)
        for a, b in zip(exact.weights + exact.biases, rounded.weights + rounded.biases, strict=True)
    ):
        raise ExactCompressError(
            "state_dict and state_dict64 hold different weights (was one edited?)"
        )


def _from_state_dict(sd: Any) -> ReLUNetwork:
    """Linear layers from Sequential-style keys, in layer order.

    Keys only tell where the Linear layers sit, not what lies between them: two
    Linear layers at adjacent indices have nothing in between and are refused, a
    gap is taken to hold the ReLU (and, in the original checkpoints, a Dropout).
    """
    if not isinstance(sd, Mapping):
        raise ExactCompressError(f"state_dict is a {type(sd).__name__}, not a dict")
    layers: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for key, value in sd.items():
        m = _KEY.match(str(key))
        if m is None:
            raise ExactCompressError(
                f"unexpected key {key!r} in state dict (expected nn.Sequential keys like "
                "'0.weight', or 'features.module.0.weight'/'classifier.0.weight')"
            )
        section, index, param = m.group(1), int(m.group(2)), m.group(3)
        layers.setdefault((_SECTION_ORDER[section], index), {})[param] = _array(key, value)
    if not layers:
        raise ExactCompressError("state dict has no weights")
    order = sorted(layers)
    sections = {s for s, _ in order}
    if 0 in sections and len(sections) > 1:
        raise ExactCompressError("state dict mixes bare Sequential keys with features/classifier")
    if 1 in sections and 2 not in sections:
        raise ExactCompressError("checkpoint has features but no classifier layer")
    for (s0, i0), (s1, i1) in pairwise(order):
        if s0 == s1 and i1 == i0 + 1:
            raise ExactCompressError(
                f"Linear layers at indices {i0} and {i1} have no ReLU between them"
            )
    weights, biases = [], []
    for pos in order:
        params = layers[pos]
        if "weight" not in params:
            raise ExactCompressError(f"layer at index {pos[1]} has a bias but no weight")
        w = params["weight"]
        if w.ndim != 2:
            raise ExactCompressError(
                f"weight at index {pos[1]} has shape {w.shape}, not a matrix (not a Linear layer?)"
            )
        weights.append(w)
        biases.append(params.get("bias", np.zeros(w.shape[0])))
    return ReLUNetwork(weights, biases)


def _array(key: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    raise ExactCompressError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")


def _from_module(module: nn.Module, input_shape: tuple[int, int, int] | None = None) -> ReLUNetwork:
    """Walk a (nested) Sequential and check it is Linear, ReLU, Linear, ..., Linear
    (conv.py reads one with convolutions, pooling or batch norm)."""
    layers = list(_flatten(module))
    if input_shape is not None or any(isinstance(m, conv.CONV_TYPES) for m in layers):
        return conv.network_from_layers(layers, input_shape)
    layers = [m for m in layers if not isinstance(m, nn.Flatten)]
    weights, biases = [], []
    previous = None
    for layer in layers:
        is_linear = isinstance(layer, nn.Linear)
        if is_linear and previous == "Linear":
            raise ExactCompressError(
                f"two Linear layers in a row (after layer {len(weights)}): put a ReLU between them"
            )
        if not is_linear and previous != "Linear":
            where = "at the start" if previous is None else "twice in a row"
            raise ExactCompressError(f"ReLU {where}: layers must alternate Linear, ReLU, ...")
        if is_linear:
            w = layer.weight.detach().cpu().to(torch.float64).numpy()
            b = layer.bias
            weights.append(w)
            biases.append(np.zeros(w.shape[0]) if b is None else b.detach().cpu().double().numpy())
        previous = "Linear" if is_linear else "ReLU"
    if previous is None:
        raise ExactCompressError("module has no Linear layer")
    if previous == "ReLU":
        raise ExactCompressError("module ends with a ReLU: the output layer must be Linear")
    return ReLUNetwork(weights, biases)


def _flatten(module: nn.Module):
    """Yield Linear and ReLU layers in order, skipping layers that act as identity."""
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _flatten(child)
    elif isinstance(module, nn.DataParallel):
        yield from _flatten(module.module)
    elif isinstance(module, (nn.Linear, nn.ReLU, nn.Flatten, *conv.CONV_TYPES)):
        yield module
    elif isinstance(module, nn.Identity):
        return
    elif isinstance(module, nn.Dropout):
        if module.training and module.p > 0:
            raise ExactCompressError(
                f"Dropout(p={module.p}) in training mode is random; call model.eval() first"
            )
    else:
        raise ExactCompressError(
            f"unsupported layer type {type(module).__name__}: only Linear, ReLU, Conv2d, "
            "BatchNorm2d (eval), AvgPool2d, Flatten, Unflatten (Dropout, Identity as no-ops) "
            "in nn.Sequential"
        )


# ---- weights.dat ---------------------------------------------------------------


def _read_weights_dat(path: Path) -> ReLUNetwork:
    """Parse the original ExactCompression text format (see reference-models/README.md)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ExactCompressError(f"cannot read weights.dat text: {err}") from None
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    widths = [int(v) for v in _dat_numbers(text, "n")]
    w_flat = _dat_numbers(text, "W")
    b_flat = _dat_numbers(text, "B")
    if len(widths) < 2 or min(widths) < 1:
        raise ExactCompressError(f"bad layer widths n = {widths}")
    levels = re.search(r"\blevels\s*=\s*(\d+)\s*;", text)
    if levels and int(levels.group(1)) != len(widths) - 1:
        raise ExactCompressError(f"levels = {levels.group(1)} but n lists {len(widths)} widths")
    n_w = sum(a * b for a, b in pairwise(widths))
    n_b = sum(widths[1:])
    if w_flat.size != n_w or b_flat.size != n_b:
        raise ExactCompressError(
            f"n = {widths} needs {n_w} weights and {n_b} biases, "
            f"found {w_flat.size} and {b_flat.size}"
        )
    weights, biases, wi, bi = [], [], 0, 0
    for n_in, n_out in pairwise(widths):
        weights.append(w_flat[wi : wi + n_in * n_out].reshape(n_out, n_in))
        biases.append(b_flat[bi : bi + n_out])
        wi, bi = wi + n_in * n_out, bi + n_out
    return ReLUNetwork(weights, biases)


def _dat_numbers(text: str, name: str) -> np.ndarray:
    m = re.search(rf"(?<![\w.]){name}\s*=\s*\[([^\]]*)\]", text)
    if m is None:
        raise ExactCompressError(f"weights.dat has no '{name} = [...]' block")
    tokens = [t for t in re.split(r"[,\s]+", m.group(1)) if t]
    try:
        return np.asarray(tokens, dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise ExactCompressError(f"weights.dat block {name} has a non-number {bad!r}") from None


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
