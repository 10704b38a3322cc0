"""The networks the benchmarks run on: the paper's shapes trained on demand, and real ones.

Trained networks are cached as exactcompress.model/1 files named by what made them
(dataset, architecture, L1, seed, epochs), so a sweep trains each one once and a
changed recipe never silently reuses a stale file. The digits stand-ins have the
input sizes of MNIST (digits28, 784) and CIFAR (digits-rgb32, 3072), so the MILPs
have the paper's dimensions while training takes seconds to minutes on a laptop CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exactcompress.data import load_dataset
from exactcompress.errors import ExactCompressError
from exactcompress.io import load_model_file, save_model
from exactcompress.network import ReLUNetwork
from exactcompress.train import train

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path("bench-results") / "models"

PAPER_DATASETS = ("digits28", "digits-rgb32")
PAPER_ARCHS = ((100, 100), (200, 200), (400, 400), (800, 800), (100,) * 3, (100,) * 4, (100,) * 5)
PAPER_L1 = (0.0, 1e-4, 2e-4, 3e-4)

# The digits training split is only 1437 images (23 minibatches of 64): the paper's
# L1 levels act through the number of SGD steps times the learning rate, so a higher
# rate than the paper's stands in for its 120 epochs over 60000 images. With this
# recipe digits28 2x100 has 36 % and 28 % stable neurons in its layers at L1 = 3e-4.
EPOCHS = 40
LR = 0.05
BATCH = 64

# Stand-in refutation data of the same input size when a real dataset is not on disk.
_STAND_IN = {64: "digits", 784: "digits28", 3072: "digits-rgb32"}

# yuxwind/ExactCompression models shipped in ../shared/reference-models (see its README).
_REFERENCE = {
    "mnist-2x100": ("checkpoint_120.tar", "mnist", 0.0),
    "mnist-2x200": ("checkpoint_120.tar", "mnist", 0.0),
    "cifar10-pruned": ("pruned_checkpoint_120.tar", "cifar10", 1.75e-4),
    "cifar100-pruned": ("pruned_checkpoint_120.tar", "cifar100", 7.5e-5),
}

Say = Callable[[str], None]


@dataclass(frozen=True)
class TrainRecipe:
    """How to train one suite network; also its cache file name."""

    dataset: str
    arch: tuple[int | str, ...]  # "convC" layers first (train.parse_arch)
    l1: float
    seed: int = 0
    epochs: int = EPOCHS
    lr: float = LR
    batch_size: int = BATCH

    @property
    def name(self) -> str:
        return (
            f"{self.dataset}-{arch_label(self.arch)}-l1={self.l1:g}-s{self.seed}{self._tail('-')}"
        )

    @property
    def filename(self) -> str:
        return (
            f"{self.dataset}_{arch_label(self.arch)}_l1-{self.l1:g}_s{self.seed}_e{self.epochs}"
            f"{self._tail('_')}.pt"
        )

    def _tail(self, sep: str) -> str:
        """The learning rate and batch size where they differ from the suite's recipe
        (so the names of networks trained with it stay as they were)."""
        lr = f"{sep}lr{self.lr:g}" if self.lr != LR else ""
        return lr + (f"{sep}b{self.batch_size}" if self.batch_size != BATCH else "")


@dataclass(frozen=True)
class BenchModel:
    """One network of the suite: a training recipe or a file, and what describes it in tables.

    ``dataset`` is the data it was trained on (test accuracy is measured when that
    dataset can be loaded); ``l1`` is None when unknown.
    """

    name: str
    recipe: TrainRecipe | None = None
    path: Path | None = None
    dataset: str | None = None
    l1: float | None = None
    group: str = "trained"


@dataclass
class LoadedModel:
    """A network ready to benchmark, with the data its runs need."""

    model: BenchModel
    net: ReLUNetwork
    meta: dict
    train_x: np.ndarray | None
    test: tuple[np.ndarray, np.ndarray] | None
    data_note: str

    @property
    def arch(self) -> str:
        return arch_label(self.net.hidden_widths)


def arch_label(widths: Sequence[int]) -> str:
    """'2x100' for equal widths as in the paper, '116-248' otherwise."""
    widths = list(widths)
    if len(set(widths)) == 1:
        return f"{len(widths)}x{widths[0]}"
    return "-".join(map(str, widths))


def paper_suite(
    datasets: Sequence[str] = PAPER_DATASETS,
    archs: Sequence[tuple[int, ...]] = PAPER_ARCHS,
    l1s: Sequence[float] = PAPER_L1,
) -> list[BenchModel]:
    """The paper's architectures and L1 levels on the digits stand-ins."""
    return [
        trained(TrainRecipe(ds, tuple(arch), float(l1)))
        for ds in datasets
        for arch in archs
        for l1 in l1s
    ]


def quick_suite(repo: Path = REPO) -> list[BenchModel]:
    """A few small networks that still show stable neurons, and two real ones: minutes."""
    recipes = [
        TrainRecipe("digits", (32, 32), 1e-3),
        TrainRecipe("digits", (32, 32, 32), 1e-3),
        TrainRecipe("digits28", (100, 100), 0.0),
        TrainRecipe("digits28", (100, 100), 3e-4),
    ]
    quick_refs = ("ref:mnist-2x100", "ref:cifar10-pruned")
    return [trained(r) for r in recipes] + [
        m for m in reference_models(repo) if m.name in quick_refs
    ]


def pipeline_suite(repo: Path = REPO) -> list[BenchModel]:
    """Full pipeline against the paper's configuration: networks where the paper's
    MILP takes seconds to minutes (little or no L1, wider, deeper, 3072 inputs), two
    tiny ones where it takes a tenth of a second, and the published models."""
    recipes = [
        TrainRecipe("digits", (32, 32), 1e-3),
        TrainRecipe("digits", (32, 32, 32), 1e-3),
        TrainRecipe("digits28", (100, 100), 0.0),
        TrainRecipe("digits28", (100, 100), 1e-4),
        TrainRecipe("digits28", (200, 200), 0.0),
        TrainRecipe("digits28", (200, 200), 1e-4),
        TrainRecipe("digits28", (100, 100, 100), 1e-4),
        TrainRecipe("digits-rgb32", (100, 100), 1e-4),
    ]
    return [trained(r) for r in recipes] + reference_models(repo)


def hard_suite() -> list[BenchModel]:
    """Networks whose neurons reach the exact stage: candidates survive interval bounds,
    sampling and the gradient witness search (``python -m benchmarks.hard_survey``
    counts them; the survey is in benchmarks/README.md). Deep (up to 8x64, where the
    recipe still trains at L1 = 2e-5), wide, 784 and 3072 inputs, from 1 to 43
    candidates; the paper's shapes first."""
    recipes = [
        TrainRecipe("digits28", (100,) * 3, 2e-4),
        TrainRecipe("digits28", (100,) * 4, 2e-4),
        TrainRecipe("digits28", (100,) * 5, 1e-4),
        TrainRecipe("digits28", (100,) * 5, 2e-4),
        TrainRecipe("digits28", (400, 400), 1.5e-4),
        TrainRecipe("digits28", (800, 800), 1e-4),
        TrainRecipe("digits28", (800, 800), 2e-4),
        TrainRecipe("digits28", (200,) * 4, 2e-4),
        TrainRecipe("digits28", (150,) * 6, 1e-4),
        TrainRecipe("digits28", (64,) * 8, 2e-5),
        TrainRecipe("digits-rgb32", (100, 100), 2e-4),
        TrainRecipe("digits-rgb32", (200, 200), 2e-4),
        TrainRecipe("digits-rgb32", (400, 400), 2e-4),
        TrainRecipe("digits-rgb32", (100,) * 3, 2e-4),
    ]
    return [trained(r) for r in recipes]


def bounds_suite(repo: Path = REPO) -> list[BenchModel]:
    """Which --bounds and --tighten pay: small and mid-size networks and the published
    CIFAR-10 model, run with configs interval | crown | alpha-crown (each with -lp)."""
    recipes = [
        TrainRecipe("digits", (32, 32, 32), 1e-3),
        TrainRecipe("digits28", (100, 100), 3e-4),
        TrainRecipe("digits28", (100, 100), 0.0),
    ]
    refs = [m for m in reference_models(repo) if m.name == "ref:cifar10-pruned"]
    return [trained(r) for r in recipes] + refs


#: conv suite: few epochs (a convolution epoch costs seconds on a CPU), more L1 levels
CONV_EPOCHS = 10


def conv_suite() -> list[BenchModel]:
    """Small CNNs (exactcompress train --arch conv8-conv8-32 ...) on the 28x28 and the
    3x32x32 digits at several L1 levels: stable neurons per position, whole channels
    removed, parameters, accuracy and time per stage (branch and bound is dense-only,
    so their exact stage is the MILP)."""
    return [
        trained(TrainRecipe(ds, ("conv8", "conv8", 32), l1, epochs=CONV_EPOCHS))
        for ds in ("digits28", "digits-rgb32")
        for l1 in (0.0, 1e-3, 5e-3)
    ]


def trained(recipe: TrainRecipe) -> BenchModel:
    return BenchModel(recipe.name, recipe=recipe, dataset=recipe.dataset, l1=recipe.l1)


def reference_models(repo: Path = REPO) -> list[BenchModel]:
    """The published models of the NeurIPS 2021 paper, when ../shared is present."""
    root = Path(repo) / ".." / "shared" / "reference-models"
    out = []
    for folder, (filename, dataset, l1) in _REFERENCE.items():
        path = root / folder / filename
        if path.is_file():
            out.append(
                BenchModel(f"ref:{folder}", path=path, dataset=dataset, l1=l1, group="reference")
            )
    return out


def user_models(paths: Sequence[str | os.PathLike]) -> list[BenchModel]:
    """Models given on the command line, named by file (and folder when names collide)."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    out = []
    for p, stem in zip(paths, stems, strict=True):
        if not p.is_file():
            raise ExactCompressError(f"model file {p} does not exist")
        name = stem if stems.count(stem) == 1 else f"{p.parent.name}/{stem}"
        out.append(BenchModel(f"file:{name}", path=p, group="user"))
    return out


def load(
    model: BenchModel,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
    data_dir: str | None = None,
    say: Say = lambda _m: None,
) -> LoadedModel:
    """Train (or reuse the cached file) or read the model, and load its data."""
    if model.recipe is not None:
        net, meta = _trained(model.recipe, Path(cache_dir), say)
    else:
        net, meta = load_model_file(model.path)
    dataset = model.dataset or meta.get("dataset")
    train_x, test, note = _data(dataset, net.widths[0], data_dir)
    return LoadedModel(model, net, meta, train_x, test, note)


def _trained(recipe: TrainRecipe, cache_dir: Path, say: Say) -> tuple[ReLUNetwork, dict]:
    path = cache_dir / recipe.filename
    if path.is_file():
        return load_model_file(path)
    say(f"training {recipe.name} ({recipe.epochs} epochs) -> {path}")
    net, meta = train(
        recipe.dataset,
        recipe.arch,
        l1=recipe.l1,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
    )
    if meta.get("interrupted"):
        raise KeyboardInterrupt  # a half-trained network must not enter the cache
    save_model(path, net, meta)
    return net, meta


def _data(
    dataset: str | None, n_inputs: int, data_dir: str | None
) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None, str]:
    """Training inputs (refutation data, as in the paper) and the test split.

    Without the model's own dataset on disk, a digits stand-in of the same input size
    still gives valid witnesses (any point of the box does), but no accuracy.
    """
    if dataset:
        try:
            x, _ = load_dataset(dataset, "train", data_dir)
            test = load_dataset(dataset, "test", data_dir)
        except ExactCompressError:
            pass
        else:
            if x.shape[1] == n_inputs:
                return x.astype(np.float64), test, dataset
    stand_in = _STAND_IN.get(n_inputs)
    if stand_in is None:
        return None, None, "none"
    x, _ = load_dataset(stand_in, "train")
    missing = f"{dataset} not on disk" if dataset else "no dataset recorded"
    return x.astype(np.float64), None, f"{stand_in} ({missing})"
