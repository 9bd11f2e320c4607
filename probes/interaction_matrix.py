"""`InteractionMatrix`: second-order values of a game as a named [n, n] matrix (the Values family's
result for pairs), saved as plain JSON like `Values`.

matrix[i, j] is the effect of player j on player i: for the Shapley interaction index it is I_ij
(symmetric); for a meta-attribution it is phi_{j->i}, the Shapley value of j in the game whose value
is i's attribution (probes.estimators.metagame). The diagonal holds `self_values` nu_i(empty) when
known, so that a row sums to the player's attribution: phi_i = nu_i(empty) + sum_{j != i} phi_{j->i}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from probes.errors import MalformedValuesFileError, ProbeError
from probes.game import fingerprint_id
from probes.values import Values

MATRIX_SCHEMA = "model-surgery.interaction-matrix"


def pair_name(a: str, b: str) -> str:
    """The name of the pair (a, b) in pair Values: "(a, b)", as the matrix is indexed, m["a", "b"].
    (Not "a*b": token players can be "*" themselves.) The pairs also travel in details["pairs"]."""
    return f"({a}, {b})"


@dataclass
class InteractionMatrix:
    """Pairwise values over named players.

    matrix/stderrs: [n, n]; off-diagonal entries are the pair values, the diagonal is 0.
    base: the first-order attribution the second order is taken of ("shapley", "banzhaf",
        "leave_one_out", or a user's directed base); "interaction_index" for the plain index.
    attributions / self_values: phi_i and nu_i(empty) per player when the estimator knows them."""

    names: list[str]
    matrix: np.ndarray
    stderrs: np.ndarray
    n_evaluations: int
    estimator: str
    base: str
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    attributions: np.ndarray | None = None
    self_values: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = [str(name) for name in self.names]
        n = len(self.names)
        self.matrix = np.asarray(self.matrix, dtype=float)
        self.stderrs = np.asarray(self.stderrs, dtype=float)
        if self.matrix.shape != (n, n) or self.stderrs.shape != (n, n):
            raise ProbeError(f"an interaction matrix over {n} players needs [{n}, {n}] means and stderrs; "
                             f"got {self.matrix.shape} and {self.stderrs.shape}")
        for name in ("attributions", "self_values"):
            if getattr(self, name) is not None:
                setattr(self, name, np.asarray(getattr(self, name), dtype=float).reshape(n))

    def __getitem__(self, pair: tuple[str, str]) -> float:
        """m["a", "b"]: the effect of b on a (matrix[a, b])."""
        i, j = (self._index(name) for name in pair)
        return float(self.matrix[i, j])

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no player {name!r} in this matrix") from None

    @property
    def asymmetry(self) -> float:
        """max |M - M^T|: 0 (up to rounding or sampling) for any semivalue base."""
        return float(np.nanmax(np.abs(self.matrix - self.matrix.T)))

    def decomposition_gap(self) -> np.ndarray:
        """phi_i - nu_i(empty) - sum_j phi_{j->i} per player (0 for an exact meta-attribution)."""
        if self.attributions is None or self.self_values is None:
            raise ProbeError("this matrix carries no first-order attributions; compute it with meta_attribution(..., exact)")
        off = self.matrix.copy()
        np.fill_diagonal(off, 0.0)
        return self.attributions - self.self_values - off.sum(axis=1)

    def strongest(self, k: int = 5) -> list[tuple[str, str, float]]:
        """The k off-diagonal entries largest in size, as (player, influenced by, value)."""
        off = np.abs(self.matrix.copy())
        np.fill_diagonal(off, -np.inf)
        flat = np.argsort(-off, axis=None, kind="stable")[:k]
        return [(self.names[f // len(self.names)], self.names[f % len(self.names)],
                 float(self.matrix.flat[f])) for f in flat]

    def heatmap(self, ax=None, cmap: str = "RdBu"):
        """Players x players heatmap, row = influenced player, column = influencing player."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(2 + 0.35 * len(self.names), 1.5 + 0.35 * len(self.names)))
        shown = self.matrix.copy()
        np.fill_diagonal(shown, np.nan)
        bound = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
        image = ax.imshow(shown, cmap=cmap, vmin=-(bound or 1.0), vmax=bound or 1.0)
        ax.set_xticks(range(len(self.names)), self.names, rotation=90)
        ax.set_yticks(range(len(self.names)), self.names)
        ax.set_xlabel("j (influencing)")
        ax.set_ylabel("i (influenced)")
        ax.set_title(f"{self.estimator} ({self.base} base)")
        ax.figure.colorbar(image, ax=ax)
        return ax

    # ------------------------------------------------------------------ JSON
    def to_json_dict(self) -> dict[str, Any]:
        def floats(array):
            return None if array is None else [[None if not math.isfinite(x) else x for x in row]
                                               for row in np.atleast_2d(array).tolist()]
        return {"schema": MATRIX_SCHEMA, "version": 1, "names": self.names, "matrix": floats(self.matrix),
                "stderrs": floats(self.stderrs), "n_evaluations": int(self.n_evaluations),
                "estimator": self.estimator, "base": self.base, "settings": self.settings, "seed": self.seed,
                "fingerprint": self.fingerprint,
                "fingerprint_id": fingerprint_id(self.fingerprint) if self.fingerprint else None,
                "attributions": None if self.attributions is None else self.attributions.tolist(),
                "self_values": None if self.self_values is None else self.self_values.tolist(),
                "details": self.details}

    def save(self, path: str | PathLike) -> Path:
        from surgery.atomic_io import write_json_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(path, self.to_json_dict())

    @classmethod
    def from_json_dict(cls, data: Any, *, source: str = "interaction matrix") -> InteractionMatrix:
        if not isinstance(data, dict) or data.get("schema") != MATRIX_SCHEMA or data.get("version") != 1:
            raise MalformedValuesFileError(f"{source}: not a {MATRIX_SCHEMA} version 1 JSON object")
        def array(rows):
            return np.array([[math.nan if x is None else x for x in row] for row in rows], dtype=float)
        try:
            return cls(names=list(data["names"]), matrix=array(data["matrix"]), stderrs=array(data["stderrs"]),
                       n_evaluations=int(data["n_evaluations"]), estimator=str(data["estimator"]),
                       base=str(data["base"]), settings=dict(data.get("settings") or {}), seed=data.get("seed"),
                       fingerprint=dict(data.get("fingerprint") or {}), attributions=data.get("attributions"),
                       self_values=data.get("self_values"), details=dict(data.get("details") or {}))
        except (KeyError, TypeError, ValueError) as error:
            raise MalformedValuesFileError(f"{source}: {error}") from error

    @classmethod
    def load(cls, path: str | PathLike) -> InteractionMatrix:
        path = Path(path)
        return cls.from_json_dict(json.loads(path.read_text()), source=str(path))

    @classmethod
    def from_pair_values(cls, values: Values, players: list[str] | None = None) -> InteractionMatrix:
        """The `interaction` estimator's pair Values (names "(a, b)", pairs in details) as a matrix;
        pairs it did not compute are NaN."""
        pairs = values.details.get("pairs")
        if not pairs:
            raise ProbeError("these Values hold no pairs (details['pairs']); compute them with the interaction estimator")
        names = players or list(dict.fromkeys(p for pair in pairs for p in pair))
        n = len(names)
        matrix, stderrs = np.full((n, n), np.nan), np.full((n, n), np.nan)
        np.fill_diagonal(matrix, 0.0)
        np.fill_diagonal(stderrs, 0.0)
        for (a, b), mean, stderr in zip(pairs, values.means, values.stderrs):
            i, j = names.index(a), names.index(b)
            matrix[i, j] = matrix[j, i] = mean
            stderrs[i, j] = stderrs[j, i] = stderr
        return cls(names=names, matrix=matrix, stderrs=stderrs, n_evaluations=values.n_evaluations,
                   estimator=values.estimator, base="interaction_index", settings=values.settings, seed=values.seed,
                   fingerprint=values.fingerprint)
