"""A cooperative game over named players with a batched value function.

Convention everywhere in probes/: a coalition is a boolean row over the players and True means the
player is *present* (not ablated). The value function takes a whole matrix of coalitions at once,
because the model game behind it runs all of them in one batched forward; estimators therefore
hand the game large blocks of coalitions, never one at a time.

The game is also where evaluations are made safe and cheap:
- every coalition is evaluated at most once per game object (duplicates within a call and repeats
  across calls are answered from memory), and `n_evaluations` counts real value-function work;
- an optional on-disk store (probes.store) is consulted first and appended to as soon as a chunk
  is computed, so a crashed run resumes without recomputing;
- NaN/inf or a wrongly shaped answer raises at once instead of being averaged into a result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

import numpy as np

from probes.errors import InvalidGameOutputError, ProbeError
from probes.fingerprint import fingerprint_id, fingerprint_identity  # noqa: F401  (public here too, as before)
from probes.store import CoalitionStore

ValueFunction = Callable[[np.ndarray], np.ndarray]


def pack_coalitions(coalitions: np.ndarray) -> np.ndarray:
    """Bit-pack boolean rows into bytes; one packed row is the coalition's lookup key."""
    return np.packbits(coalitions, axis=1)


class Game:
    """Named players and a batched value function `bool[m, n] -> float[m]`.

    fingerprint: what makes two games the same game (model, task, metric, ablation, ...). The
        player names are always added to it, so a store or values file of another player set is
        never mistaken for this one. Required when a store is used.
    batch_size: largest number of coalitions passed to the value function in one call (memory
        bound of a batched forward). None = everything requested at once.
    store: a CoalitionStore or a directory path; looked up before evaluating, appended after.

    What a game built over a model also carries (None for other games):
    engine: the surgery AblationEngine its value function runs (for logits or the ablation context).
    gate_value: the value for float gates [1, n_players] (differentiable), for first-order priors.
    objective: a JSON-able description of what the value measures (task and metric, or an objective).
    evaluator: what runs the value function elsewhere (a probes.distributed.RayEvaluator);
        `game.evaluator.close()` stops its workers.
    """

    def __init__(
        self,
        players: Sequence[str],
        value_function: ValueFunction,
        fingerprint: dict | None = None,
        *,
        batch_size: int | None = None,
        store: CoalitionStore | str | PathLike | None = None,
        engine: Any = None,
        gate_value: Callable[[Any], Any] | None = None,
        objective: dict | None = None,
        evaluator: Any = None,
    ) -> None:
        players = tuple(str(p) for p in players)
        if len(players) == 0:
            raise ProbeError("a game needs at least one player; got an empty player list")
        duplicates = sorted(name for name, count in Counter(players).items() if count > 1)
        if duplicates:
            raise ProbeError(f"player names must be unique; duplicated: {duplicates}")
        if batch_size is not None and batch_size < 1:
            raise ProbeError(f"batch_size must be a positive number of coalitions, got {batch_size}")
        self.players: tuple[str, ...] = players
        self.n_players = len(players)
        self.value_function = value_function
        self.batch_size = batch_size
        self.engine = engine
        self.gate_value = gate_value
        self.objective = objective
        self.evaluator = evaluator
        self.fingerprint: dict[str, Any] = dict(fingerprint or {})
        self.fingerprint.setdefault("players", list(players))
        if list(self.fingerprint["players"]) != list(players):
            raise ProbeError(
                "fingerprint['players'] differs from the game's players; leave it out and the game fills it in"
            )
        self.fingerprint_id = fingerprint_id(self.fingerprint)
        self.n_evaluations = 0  # coalitions actually passed to value_function by this object
        self.n_value_function_calls = 0
        self._memory: dict[bytes, float] = {}
        self.store = None
        if store is not None:
            if fingerprint is None:
                raise ProbeError(
                    "a store needs a game fingerprint (model, task, metric, ablation) so that values of "
                    "another game can never be reused; pass fingerprint={...}"
                )
            self.store = store if isinstance(store, CoalitionStore) else CoalitionStore.open(store, self)
            self.store.check_matches(self)

    # ------------------------------------------------------------------ evaluation
    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        """Values of the given coalitions (rows), each unique coalition evaluated at most once."""
        coalitions = self._check_coalitions(coalitions)
        if coalitions.shape[0] == 0:
            return np.zeros(0)
        packed = pack_coalitions(coalitions)
        unique_packed, first_index, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
        keys = [row.tobytes() for row in unique_packed]
        unique_values = np.empty(len(keys))
        missing = []
        for j, key in enumerate(keys):
            value = self._memory.get(key)
            if value is None and self.store is not None:
                value = self.store.get(key)
                if value is not None:
                    self._memory[key] = value
            if value is None:
                missing.append(j)
            else:
                unique_values[j] = value
        if missing:
            missing = np.asarray(missing)
            to_evaluate = coalitions[first_index[missing]]
            step = self.batch_size or len(missing)
            for start in range(0, len(missing), step):
                chunk_rows = missing[start : start + step]
                chunk = to_evaluate[start : start + step]
                chunk_values = self._evaluate_chunk(chunk)
                chunk_keys = [keys[j] for j in chunk_rows]
                # Persist before anything else can fail, so a crash later in this call loses nothing.
                if self.store is not None:
                    self.store.append(chunk_keys, chunk_values)
                for key, value in zip(chunk_keys, chunk_values):
                    self._memory[key] = float(value)
                unique_values[chunk_rows] = chunk_values
        return unique_values[inverse.reshape(-1)]

    def _evaluate_chunk(self, chunk: np.ndarray) -> np.ndarray:
        # Hand the value function a private copy so it cannot corrupt our keys by mutating it.
        raw = self.value_function(chunk.copy())
        self.n_value_function_calls += 1
        try:
            values = np.asarray(raw, dtype=float)
        except (TypeError, ValueError) as error:
            raise InvalidGameOutputError(
                f"value function must return a float array of shape ({len(chunk)},); got {type(raw).__name__}: {error}"
            ) from error
        if values.shape != (len(chunk),):
            raise InvalidGameOutputError(
                f"value function returned shape {values.shape} for {len(chunk)} coalitions; "
                f"it must return one float per coalition, shape ({len(chunk)},)"
            )
        bad = ~np.isfinite(values)
        if bad.any():
            rows = np.flatnonzero(bad)
            examples = []
            for r in rows[:3]:
                absent = [self.players[i] for i in np.flatnonzero(~chunk[r])]
                shown = absent if len(absent) <= 8 else absent[:8] + [f"... {len(absent) - 8} more"]
                examples.append(f"value {values[r]} with absent players {shown}")
            raise InvalidGameOutputError(
                f"value function returned {len(rows)} non-finite value(s) (NaN/inf) out of {len(chunk)}; "
                f"refusing to average them into a result. First: {'; '.join(examples)}"
            )
        self.n_evaluations += len(chunk)
        return values

    def _check_coalitions(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.asarray(coalitions)
        if coalitions.ndim == 1:
            coalitions = coalitions[None, :]
        if coalitions.ndim != 2 or coalitions.shape[1] != self.n_players:
            raise ProbeError(
                f"coalitions must be a boolean matrix [n_coalitions, {self.n_players}]; got shape {coalitions.shape}"
            )
        if coalitions.dtype != bool:
            if not np.isin(coalitions, (0, 1)).all():
                raise ProbeError("coalitions must be boolean (True = player present) or 0/1")
            coalitions = coalitions.astype(bool)
        return coalitions

    # ------------------------------------------------------------------ conveniences
    @property
    def empty_value(self) -> float:
        """v(no player present)."""
        return float(self(np.zeros((1, self.n_players), dtype=bool))[0])

    @property
    def full_value(self) -> float:
        """v(all players present), the unablated model."""
        return float(self(np.ones((1, self.n_players), dtype=bool))[0])

    def index_of(self, player: str) -> int:
        try:
            return self.players.index(player)
        except ValueError:
            raise ProbeError(f"unknown player {player!r}; players are {list(self.players)[:10]}...") from None

    def __repr__(self) -> str:
        return f"Game(n_players={self.n_players}, fingerprint_id={self.fingerprint_id!r}, n_evaluations={self.n_evaluations})"
