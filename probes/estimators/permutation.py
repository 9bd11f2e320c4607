"""Permutation sampling with antithetic (reversed) permutations and optional truncation.

A permutation adds players one at a time to the empty coalition; each player's value is the
average change it makes when it joins. Pairing every permutation with its reverse (as shap's
permutation explainer does) cancels much of the noise from a player's position. Standard errors
come from the spread across independent pairs, so they are honest.

Truncation (truncated Monte Carlo, Ghorbani & Zou; Held & Yang's "stop once half the heads are
gone"): once the coalition's value is within `truncation_tol * |v(full) - v(empty)|` of v(full),
the rest of the permutation's marginals are taken as zero and never evaluated. It saves
evaluations and adds bias, so it is off by default. Walks advance in blocks of positions so that
every block is still one batched call to the game.

Nested: the permutations are one stream drawn from the seed (rng.random rows, in order), whatever
the budget, so a larger budget with the same seed walks the same permutations first and a store of
the smaller run serves all of them. A round holds at most MAX_ROUND_COALITIONS coalitions, so
memory does not grow with the budget.
"""

from __future__ import annotations

import numpy as np

from probes.estimators._common import (
    Ledger,
    make_values,
    mean_and_stderr,
    require_budget,
    should_stop,
    start_stop,
)
from probes.game import Game
from probes.stopping import StoppingCriterion
from probes.values import Values

MAX_ROUND_COALITIONS = 1 << 14


def prefix_coalitions(orders: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Coalition made of the first `positions[r]` players of `orders[r]`, for each row r."""
    ranks = np.argsort(orders, axis=1)  # ranks[r, player] = position of player in orders[r]
    return ranks < positions[:, None]


def draw_orders(rng: np.random.Generator, n_units: int, n: int, antithetic: bool) -> np.ndarray:
    """[n_units, k, n] player orders; k = 2 (an order and its reverse) when antithetic."""
    orders = np.argsort(rng.random((n_units, n)), axis=1)
    if antithetic:
        return np.stack([orders, orders[:, ::-1]], axis=1)
    return orders[:, None, :]


def walk_marginals(
    ledger: Ledger, orders: np.ndarray, empty: float, full: float, truncation_tol: float | None, n_blocks: int = 8
) -> tuple[np.ndarray, int]:
    """Marginal contribution of every player along each order ([n_orders, n] by player index).

    Returns the marginals and how many (order, position) evaluations truncation skipped.
    """
    n_orders, n = orders.shape
    values = np.full((n_orders, n + 1), np.nan)
    values[:, 0], values[:, n] = empty, full
    alive = np.ones(n_orders, dtype=bool)
    tolerance = None if truncation_tol is None else truncation_tol * abs(full - empty)
    skipped = 0
    # Without truncation one block covers every interior position; with it, walks advance in
    # n_blocks steps so finished walks stop costing evaluations.
    edges = np.unique(np.linspace(1, n, n_blocks + 1).round().astype(int)) if tolerance is not None else np.array([1, n])
    for lo, hi in zip(edges[:-1], edges[1:]):
        rows = np.flatnonzero(alive)
        if rows.size == 0 or hi <= lo:
            continue
        positions = np.arange(lo, hi)
        row_index = np.repeat(rows, positions.size)
        pos_index = np.tile(positions, rows.size)
        coalitions = prefix_coalitions(orders[row_index], pos_index)
        values[row_index, pos_index] = ledger(coalitions)
        if tolerance is not None:
            done = np.abs(full - values[rows, hi - 1]) <= tolerance
            for r in rows[done]:
                # The remaining players are taken to add nothing (their marginals are zero); the
                # efficiency gap this leaves is at most the tolerance.
                skipped += n - hi
                values[r, hi:] = values[r, hi - 1]
            alive[rows[done]] = False
    steps = np.diff(values, axis=1)  # steps[r, j] = marginal of orders[r, j]
    marginals = np.empty_like(steps)
    np.put_along_axis(marginals, orders, steps, axis=1)
    return marginals, skipped


def permutation_shapley(
    game: Game,
    budget: int,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    antithetic: bool = True,
    truncation_tol: float | None = None,
    n_rounds: int = 8,
) -> Values:
    n = game.n_players
    per_unit = (2 if antithetic else 1) * (n - 1)
    budget = require_budget(budget, 2 + per_unit, "permutation", "v(empty), v(full) and one "
                            + ("permutation with its reverse" if antithetic else "permutation"))
    rng = np.random.default_rng(seed)
    stop = start_stop(stop)
    ledger = Ledger(game)
    empty, full = ledger.empty_and_full()
    units_per_round = max(1, min((budget - 2) // per_unit // n_rounds, MAX_ROUND_COALITIONS // per_unit))
    samples: list[np.ndarray] = []
    skipped = 0
    round_number = 0
    while True:
        remaining = budget - ledger.spent
        if remaining < per_unit:
            break
        # Without truncation a unit costs at most per_unit new coalitions; with it, usually less,
        # so the loop simply continues while a whole unit still fits.
        n_units = max(1, min(units_per_round, remaining // per_unit))
        orders = draw_orders(rng, n_units, n, antithetic)
        marginals, round_skipped = walk_marginals(ledger, orders.reshape(-1, n), empty, full, truncation_tol)
        skipped += round_skipped
        samples.append(marginals.reshape(n_units, -1, n).mean(axis=1))  # one sample per independent unit
        round_number += 1
        means, stderrs = mean_and_stderr(np.concatenate(samples))
        if should_stop(stop, ledger, means, stderrs, round_number):
            break
    all_samples = np.concatenate(samples)
    means, stderrs = mean_and_stderr(all_samples)
    settings = {"antithetic": antithetic, "truncation_tol": truncation_tol, "budget": budget}
    details = {"n_permutations": int(all_samples.shape[0] * (2 if antithetic else 1)), "truncated_steps": int(skipped)}
    return make_values(game, ledger, "permutation", means, stderrs, settings=settings, seed=seed, details=details)


estimate = permutation_shapley
