"""Exact Shapley values by evaluating all 2^n coalitions (the reference every estimator is tested
against). Refuses large games, naming the evaluation count it would need."""

from __future__ import annotations

import numpy as np

from probes.errors import BudgetTooSmallError, TooManyPlayersError
from probes.estimators._common import Ledger, make_values, shapley_weights
from probes.game import Game
from probes.stopping import StoppingCriterion
from probes.values import Values

MAX_EXACT_PLAYERS = 20
CHUNK = 1 << 16  # coalitions per value-function call


def all_coalitions(n: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows for the integer codes start..stop-1; bit i of the code is player i."""
    codes = np.arange(start, (1 << n) if stop is None else stop, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)


def evaluate_all(game: Game, ledger: Ledger, max_players: int) -> np.ndarray:
    """v(S) for every coalition, indexed by its integer code."""
    n = game.n_players
    if n > max_players:
        raise TooManyPlayersError(
            f"exact enumeration is limited to {max_players} players; this game has {n}, which needs "
            f"2^{n} = {2**n:,} evaluations. Use a sampling estimator (e.g. 'msr') with a budget instead."
        )
    values = np.empty(1 << n)
    for start in range(0, 1 << n, CHUNK):
        stop = min(1 << n, start + CHUNK)
        values[start:stop] = ledger(all_coalitions(n, start, stop))
    return values


def shapley_from_table(values: np.ndarray, n: int) -> np.ndarray:
    """Shapley values from v(S) for every coalition, indexed by its integer code (bit i = player i)."""
    codes = np.arange(1 << n, dtype=np.int64)
    sizes = np.bitwise_count(codes).astype(np.int64)
    w = shapley_weights(n)
    with_weight = np.where(sizes > 0, w[np.maximum(sizes - 1, 0)], 0.0) * values  # S contains i: +w(|S|-1) v(S)
    without_weight = np.where(sizes < n, w[np.minimum(sizes, n - 1)], 0.0) * values  # S lacks i: -w(|S|) v(S)
    means = np.empty(n)
    for i in range(n):
        member = ((codes >> i) & 1).astype(bool)
        means[i] = with_weight[member].sum() - without_weight[~member].sum()
    return means


def exact_shapley(
    game: Game,
    budget: int | None = None,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    max_players: int = MAX_EXACT_PLAYERS,
) -> Values:
    """phi_i = sum_S w(|S|) [v(S + i) - v(S)], over all S without i. `seed` and `stop` are accepted
    for the common call shape and ignored (nothing is random, nothing can stop early)."""
    n = game.n_players
    needed = 2**n
    if budget is not None and budget < needed and n <= max_players:
        raise BudgetTooSmallError(f"exact needs a budget of at least 2^{n} = {needed} evaluations; got {budget}")
    ledger = Ledger(game)
    values = evaluate_all(game, ledger, max_players)
    means = shapley_from_table(values, n)
    return make_values(game, ledger, "exact", means, np.zeros(n), settings={"max_players": max_players}, seed=None)


estimate = exact_shapley
