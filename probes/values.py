"""`Values`: the one result type of every estimator (means, standard errors and provenance).

Saved as plain JSON (never pickle) with a schema name and version, so a values file can be read
by hand, diffed, and reloaded by a later pruning step; `load(..., expected_fingerprint=...)`
refuses values computed on another game (model, task, metric, ablation, players).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from probes.errors import FingerprintMismatchError, MalformedValuesFileError, ProbeError
from probes.fingerprint import fingerprint_id
from surgery.components import parse_head_name
from surgery.errors import SurgeryError

VALUES_SCHEMA = "model-surgery.values"
VALUES_VERSION = 1
# Estimators whose standard error of 0 means the value is exact. Any other zero (sliding window,
# neighbourhood: an approximation with no sampling error to estimate) means no interval exists.
EXACT_ESTIMATORS = ("exact", "exact_interaction", "exact_owen_tree")


@dataclass
class Values:
    """Per-player values of one game.

    stderrs are the estimator's own sampling error (0 for deterministic methods such as exact or
    sliding windows, whose error is a modelling choice rather than noise).
    details holds estimator-specific JSON-able extras (e.g. the bandit's per-player decisions).
    """

    names: list[str]
    means: np.ndarray
    stderrs: np.ndarray
    n_evaluations: int
    estimator: str
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    empty_value: float | None = None
    full_value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.means = np.asarray(self.means, dtype=float).reshape(-1)
        self.stderrs = np.asarray(self.stderrs, dtype=float).reshape(-1)
        if not (len(self.names) == self.means.size == self.stderrs.size):
            raise ProbeError(
                f"Values needs one name, mean and stderr per player; got {len(self.names)} names, "
                f"{self.means.size} means, {self.stderrs.size} stderrs"
            )
        if len(set(self.names)) != len(self.names):
            raise ProbeError("Values names must be unique")

    # ------------------------------------------------------------------ reading
    @property
    def n_players(self) -> int:
        return len(self.names)

    @property
    def fingerprint_id(self) -> str | None:
        return fingerprint_id(self.fingerprint) if self.fingerprint else None

    @property
    def efficiency_gap(self) -> float:
        """sum(values) - (v(all) - v(none)); 0 for Shapley values, so its size says how far off an
        estimate (or a non-efficient method such as sliding windows) is."""
        if self.empty_value is None or self.full_value is None:
            return math.nan
        return float(self.means.sum() - (self.full_value - self.empty_value))

    def has_interval(self) -> np.ndarray:
        """Per player, whether a confidence interval exists: a finite standard error that is either
        positive or the zero of an exact method. Without one, no claim (harmful, significant) is made.

        Sliding-window values have stderr 0 because their error is a modelling choice, not noise:
        a zero-width "interval" there would call every negative value confidently harmful.
        """
        finite = np.isfinite(self.stderrs)
        if self.estimator in EXACT_ESTIMATORS:
            return finite
        return finite & (self.stderrs > 0)

    def __getitem__(self, name: str) -> float:
        try:
            return float(self.means[self.names.index(name)])
        except ValueError:
            raise KeyError(f"no player {name!r} in these values") from None

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.means.tolist()))

    def top_k(self, k: int) -> list[tuple[str, float]]:
        """The k players with the largest values, largest first (ties by player order)."""
        order = np.argsort(-self.means, kind="stable")[:k]
        return [(self.names[i], float(self.means[i])) for i in order]

    def bottom_k(self, k: int) -> list[tuple[str, float]]:
        """The k players with the smallest (most harmful) values, smallest first."""
        order = np.argsort(self.means, kind="stable")[:k]
        return [(self.names[i], float(self.means[i])) for i in order]

    # ------------------------------------------------------------------ arithmetic
    def _combine(self, other: Values, sign: float, label: str) -> Values:
        if not isinstance(other, Values):
            return NotImplemented
        if other.names != self.names:
            raise ProbeError("can only add/subtract Values over the same players in the same order")
        def both(a, b):
            return None if a is None or b is None else a + sign * b
        return Values(
            names=list(self.names),
            means=self.means + sign * other.means,
            # Assumes the two estimates are independent (different seeds or games).
            stderrs=np.sqrt(self.stderrs**2 + other.stderrs**2),
            n_evaluations=self.n_evaluations + other.n_evaluations,
            estimator=f"({self.estimator} {label} {other.estimator})",
            settings={"left": self.settings, "right": other.settings},
            seed=None,
            fingerprint={},
            empty_value=both(self.empty_value, other.empty_value),
            full_value=both(self.full_value, other.full_value),
        )

    def __add__(self, other: Values) -> Values:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: Values) -> Values:
        return self._combine(other, -1.0, "-")

    def __mul__(self, scalar: float) -> Values:
        if not isinstance(scalar, (int, float, np.number)):
            return NotImplemented
        scalar = float(scalar)
        return replace(
            self,
            names=list(self.names),
            means=self.means * scalar,
            stderrs=self.stderrs * abs(scalar),
            estimator=f"({scalar} * {self.estimator})",
            empty_value=None if self.empty_value is None else self.empty_value * scalar,
            full_value=None if self.full_value is None else self.full_value * scalar,
            fingerprint={},
            details={},
        )

    __rmul__ = __mul__

    def __neg__(self) -> Values:
        return self * -1.0

    # ------------------------------------------------------------------ JSON
    def to_json_dict(self) -> dict[str, Any]:
        def floats(array: np.ndarray) -> list:
            # JSON has no NaN: an unknown standard error is written as null.
            return [None if not math.isfinite(x) else float(x) for x in array.tolist()]

        return {
            "schema": VALUES_SCHEMA,
            "version": VALUES_VERSION,
            "names": list(self.names),
            "means": floats(self.means),
            "stderrs": floats(self.stderrs),
            "n_evaluations": int(self.n_evaluations),
            "estimator": self.estimator,
            "settings": self.settings,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "fingerprint_id": self.fingerprint_id,
            "empty_value": self.empty_value,
            "full_value": self.full_value,
            "efficiency_gap": None if math.isnan(self.efficiency_gap) else self.efficiency_gap,
            "details": self.details,
        }

    def save(self, path: str | PathLike) -> Path:
        from surgery.atomic_io import write_json_atomic  # whole file or none: a full disk leaves no half JSON

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(path, self.to_json_dict())

    @classmethod
    def from_json_dict(cls, data: Any, *, source: str = "values") -> Values:
        if not isinstance(data, dict):
            raise MalformedValuesFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema") != VALUES_SCHEMA:
            raise MalformedValuesFileError(f"{source}: schema is {data.get('schema')!r}, expected {VALUES_SCHEMA!r}")
        if data.get("version") != VALUES_VERSION:
            raise MalformedValuesFileError(
                f"{source}: version {data.get('version')!r} is not readable by this version (reads {VALUES_VERSION})"
            )
        missing = [k for k in ("names", "means", "stderrs", "n_evaluations", "estimator") if k not in data]
        if missing:
            raise MalformedValuesFileError(f"{source}: missing field(s) {missing}")
        try:
            means = np.array([math.nan if x is None else float(x) for x in data["means"]])
            _refuse_non_finite_means(means, list(data["names"]), source)
            stderrs = np.array([math.nan if x is None else float(x) for x in data["stderrs"]])
            return cls(
                names=list(data["names"]),
                means=means,
                stderrs=stderrs,
                n_evaluations=int(data["n_evaluations"]),
                estimator=str(data["estimator"]),
                settings=dict(data.get("settings") or {}),
                seed=data.get("seed"),
                fingerprint=dict(data.get("fingerprint") or {}),
                empty_value=data.get("empty_value"),
                full_value=data.get("full_value"),
                details=dict(data.get("details") or {}),
            )
        except MalformedValuesFileError:
            raise
        except (TypeError, ValueError) as error:
            raise MalformedValuesFileError(f"{source}: {error}") from error

    @classmethod
    def load(cls, path: str | PathLike, *, expected_fingerprint: dict | None = None) -> Values:
        """Read a values file; with expected_fingerprint, refuse values of any other game."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise MalformedValuesFileError(f"{path} is not valid JSON: {error}") from error
        values = cls.from_json_dict(data, source=str(path))
        if expected_fingerprint is not None:
            expected = dict(expected_fingerprint)
            if values.fingerprint_id != fingerprint_id(expected):
                raise FingerprintMismatchError(
                    f"{path} holds values of game {values.fingerprint or '(no fingerprint)'}, "
                    f"expected game {expected}"
                )
        return values

    # ------------------------------------------------------------------ heads
    def as_matrix(self, n_layers: int | None = None, n_heads: int | None = None) -> np.ndarray:
        """Head values as a [layer, head] matrix, from names like `L3.H7`; missing heads are NaN."""
        parsed = []
        for name, value in zip(self.names, self.means):
            try:
                layer, head = parse_head_name(name)
            except SurgeryError:
                raise ProbeError(f"as_matrix needs head names like 'L3.H7'; got {name!r}") from None
            parsed.append((layer, head, value))
        n_layers = n_layers if n_layers is not None else 1 + max(p[0] for p in parsed)
        n_heads = n_heads if n_heads is not None else 1 + max(p[1] for p in parsed)
        matrix = np.full((n_layers, n_heads), np.nan)
        for layer, head, value in parsed:
            if layer >= n_layers or head >= n_heads:
                raise ProbeError(f"head L{layer}.H{head} is outside a {n_layers} x {n_heads} grid")
            matrix[layer, head] = value
        return matrix

    def heatmap(self, ax=None, *, n_layers: int | None = None, n_heads: int | None = None, cmap: str = "RdBu"):
        """Layers x heads heatmap, centred at 0 so harmful heads (negative) stand out."""
        import matplotlib.pyplot as plt

        matrix = self.as_matrix(n_layers, n_heads)
        if ax is None:
            _, ax = plt.subplots(figsize=(1 + 0.4 * matrix.shape[1], 1 + 0.3 * matrix.shape[0]))
        bound = float(np.nanmax(np.abs(matrix))) or 1.0
        image = ax.imshow(matrix, cmap=cmap, vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{self.estimator} values ({self.n_evaluations} evaluations)")
        ax.figure.colorbar(image, ax=ax)
        return ax

    def __repr__(self) -> str:
        top = ", ".join(f"{n}={v:.4g}" for n, v in self.top_k(3))
        return f"Values({self.estimator}, {self.n_players} players, {self.n_evaluations} evaluations, top: {top})"


def _refuse_non_finite_means(means: np.ndarray, names: list, source: str) -> None:
    """A value that is NaN, null or infinite ranks nowhere (argsort puts NaN last, a plan would then cut
    in player order): refuse the file. Standard errors may be null (unknown), means may not."""
    bad = [i for i, m in enumerate(means.tolist()) if not math.isfinite(m)]
    if bad:
        shown = ", ".join(f"{names[i] if i < len(names) else f'player {i}'} = "
                          f"{'null/NaN' if math.isnan(means[i]) else means[i]}" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise MalformedValuesFileError(
            f"{source}: {len(bad)} value(s) are not finite numbers ({shown}{more}); values must be finite "
            "to rank players. Recompute the values (a NaN usually means the metric overflowed on some "
            "coalition) instead of editing the file")


def values_from_arrays(
    names: Sequence[str], means, stderrs=None, *, estimator: str = "given", **kwargs: Any
) -> Values:
    """Values from plain arrays (e.g. a closed-form truth); stderrs default to 0."""
    means = np.asarray(means, dtype=float)
    stderrs = np.zeros_like(means) if stderrs is None else stderrs
    return Values(names=list(names), means=means, stderrs=stderrs, n_evaluations=kwargs.pop("n_evaluations", 0),
                  estimator=estimator, **kwargs)
