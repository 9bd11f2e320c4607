"""Pieces every estimator shares: budget checks, the ledger of coalitions used, stop checks, and
the construction of the `Values` result.

Budget means coalition evaluations requested from the game, v(empty) and v(full) included; a
coalition repeated within one request counts once. The ledger counts both what was requested
(`spent`, what the budget caps) and the distinct coalitions used (`n_used`, reported as
n_evaluations). Capping the requests rather than the distinct coalitions keeps a sampler from
looping forever on a small game whose coalitions it has all seen already.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probes.errors import BudgetTooSmallError, ProbeError
from probes.estimators.reliability import reliability_details
from probes.game import Game, pack_coalitions
from probes.stopping import Progress, StoppingCriterion
from probes.values import Values


def require_budget(budget: int | None, minimum: int, estimator: str, why: str) -> int:
    if budget is None:
        raise BudgetTooSmallError(f"{estimator} needs a budget (number of coalition evaluations); minimum {minimum} ({why})")
    if int(budget) != budget:
        raise ProbeError(f"budget must be a whole number of evaluations, got {budget}")
    budget = int(budget)
    if budget < minimum:
        raise BudgetTooSmallError(
            f"{estimator} needs a budget of at least {minimum} evaluations ({why}); got {budget}"
        )
    return budget


def shapley_weights(n: int) -> np.ndarray:
    """w[s] = s! (n-s-1)! / n!, the weight of a marginal contribution to a coalition of size s.

    Computed as 1 / (n * C(n-1, s)) through log-gamma so it is exact enough at n in the thousands.
    """
    from scipy.special import gammaln

    s = np.arange(n)
    log_binom = gammaln(n) - gammaln(s + 1) - gammaln(n - s)
    return np.exp(-log_binom) / n


class Ledger:
    """Asks the game for values and remembers which distinct coalitions this run has used."""

    def __init__(self, game: Game) -> None:
        self.game = game
        self._keys: set[bytes] = set()
        self.spent = 0
        self._ends: tuple[float, float] | None = None

    @staticmethod
    def cost(coalitions: np.ndarray) -> int:
        """What a request for these coalitions would spend."""
        return len({row.tobytes() for row in pack_coalitions(np.asarray(coalitions, dtype=bool))})

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.asarray(coalitions, dtype=bool)
        if coalitions.shape[0] == 0:
            return np.zeros(0)
        keys = {row.tobytes() for row in pack_coalitions(coalitions)}
        self.spent += len(keys)
        self._keys.update(keys)
        return self.game(coalitions)

    @property
    def n_used(self) -> int:
        return len(self._keys)

    def empty_and_full(self) -> tuple[float, float]:
        """v(empty), v(full); requested once per run, then remembered."""
        if self._ends is None:
            n = self.game.n_players
            both = self(np.array([np.zeros(n, dtype=bool), np.ones(n, dtype=bool)]))
            self._ends = (float(both[0]), float(both[1]))
        return self._ends


def start_stop(stop: StoppingCriterion | None) -> StoppingCriterion | None:
    if stop is not None:
        if not isinstance(stop, StoppingCriterion):
            raise ProbeError(f"stop must be a stopping criterion (MaxEvaluations, StandardErrorBelow, ...), got {stop!r}")
        stop.reset()
    return stop


def should_stop(stop: StoppingCriterion | None, ledger: Ledger, means, stderrs, round_number: int) -> bool:
    if stop is None:
        return False
    return bool(stop(Progress(ledger.n_used, np.asarray(means), np.asarray(stderrs), round_number)))


def make_values(
    game: Game,
    ledger: Ledger,
    estimator: str,
    means: np.ndarray,
    stderrs: np.ndarray,
    *,
    settings: dict[str, Any],
    seed: int | None,
    names: list[str] | None = None,
    details: dict[str, Any] | None = None,
) -> Values:
    empty, full = ledger.empty_and_full()  # already in the ledger for every estimator
    # What the run's own standard errors say about its error and its ranking (warns when unstable).
    details = {**reliability_details(estimator, means, stderrs, ledger.n_used), **(details or {})}
    return Values(
        names=list(game.players) if names is None else names,
        means=np.asarray(means, dtype=float),
        stderrs=np.asarray(stderrs, dtype=float),
        n_evaluations=ledger.n_used,
        estimator=estimator,
        settings=settings,
        seed=seed,
        fingerprint=game.fingerprint,
        empty_value=empty,
        full_value=full,
        details=details,
    )


def mean_and_stderr(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard errors of independent rows (NaN stderr with fewer than 2 rows)."""
    samples = np.asarray(samples, dtype=float)
    count = samples.shape[0]
    means = samples.mean(axis=0)
    if count < 2:
        return means, np.full(samples.shape[1], np.nan)
    return means, samples.std(axis=0, ddof=1) / np.sqrt(count)
