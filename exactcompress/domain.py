"""Input domains: boxes with scalar or per-feature bounds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ExactCompressError


@dataclass
class Box:
    """The box lo <= x <= hi (the paper's domain is [0, 1]^n)."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        self.lo = np.asarray(self.lo, dtype=np.float64).reshape(-1)
        self.hi = np.asarray(self.hi, dtype=np.float64).reshape(-1)
        if self.lo.shape != self.hi.shape:
            raise ExactCompressError(
                f"domain bounds have different sizes: {self.lo.size} lower, {self.hi.size} upper"
            )
        if not (np.isfinite(self.lo).all() and np.isfinite(self.hi).all()):
            raise ExactCompressError("domain bounds must be finite numbers")
        if (self.lo > self.hi).any():
            i = int(np.argmax(self.lo > self.hi))
            raise ExactCompressError(
                f"domain is empty: lo[{i}]={self.lo[i]} > hi[{i}]={self.hi[i]}"
            )

    @classmethod
    def uniform(cls, n: int, lo: float = 0.0, hi: float = 1.0) -> Box:
        return cls(np.full(n, lo), np.full(n, hi))

    @classmethod
    def parse(cls, spec: str | None, n: int) -> Box:
        """'LO:HI' (same for every feature) or a .npy/.txt file holding a (2, n) array."""
        if spec is None:
            return cls.uniform(n)
        if ":" in spec and not spec.endswith((".npy", ".txt")):
            try:
                lo, hi = (float(v) for v in spec.split(":"))
            except ValueError:
                raise ExactCompressError(f"domain '{spec}' is not LO:HI with two numbers") from None
            return cls.uniform(n, lo, hi)
        try:
            arr = np.load(spec) if spec.endswith(".npy") else np.loadtxt(spec)
        except (OSError, ValueError) as err:
            raise ExactCompressError(f"cannot read domain file {spec}: {err}") from None
        arr = np.asarray(arr, dtype=np.float64)
        if arr.shape != (2, n):
            raise ExactCompressError(
                f"domain file {spec} has shape {arr.shape}, expected (2, {n}) rows lo and hi"
            )
        return cls(arr[0], arr[1])

    @property
    def dim(self) -> int:
        return int(self.lo.size)

    def check_dim(self, n: int) -> None:
        if self.dim != n:
            raise ExactCompressError(
                f"domain has {self.dim} features but the network takes {n} inputs"
            )

    def contains(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        return ((x >= self.lo) & (x <= self.hi)).all(axis=1)

    def clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.lo, self.hi)

    def sample(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """m uniform points of the box."""
        return self.lo + (self.hi - self.lo) * rng.random((m, self.dim))

    def corners(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """m random vertices of the box (all of them when there are at most m)."""
        if self.dim <= 20 and 2**self.dim <= m:
            bits = (np.arange(2**self.dim)[:, None] >> np.arange(self.dim)) & 1
        else:
            bits = rng.integers(0, 2, size=(m, self.dim))
        return np.where(bits.astype(bool), self.hi, self.lo)

    def to_json(self) -> dict:
        if np.all(self.lo == self.lo[0]) and np.all(self.hi == self.hi[0]):
            return {"kind": "box", "lo": float(self.lo[0]), "hi": float(self.hi[0])}
        return {"kind": "box", "lo": self.lo.tolist(), "hi": self.hi.tolist()}

    @classmethod
    def from_json(cls, d: dict, n: int) -> Box:
        if not isinstance(d, dict) or d.get("kind") != "box":
            kind = d.get("kind") if isinstance(d, dict) else d
            raise ExactCompressError(f"unsupported domain kind {kind!r}")
        try:
            lo = np.broadcast_to(np.asarray(d["lo"], dtype=np.float64), (n,))
            hi = np.broadcast_to(np.asarray(d["hi"], dtype=np.float64), (n,))
        except (KeyError, TypeError, ValueError) as err:
            raise ExactCompressError(
                f"domain {d} is not a box of {n} features: {type(err).__name__} {err}"
            ) from None
        return cls(lo.copy(), hi.copy())
