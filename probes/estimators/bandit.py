"""Bandit Shapley sampling for pruning decisions (Held & Yang, EACL 2023).

To prune, one only needs to know on which side of a threshold each value lies ("is this head
harmful, value < 0?"), not the value itself. Players are sampled by antithetic permutations as in
permutation.py, but a player drops out of sampling as soon as its empirical-Bernstein confidence
interval (Audibert, Munos & Szepesvari 2009)
    |mean - phi| <= sqrt(2 var ln(3/delta) / t) + 3 R ln(3/delta) / t
lies entirely above or below the threshold. Later permutations evaluate only the prefixes around
the players still undecided, so a run whose players separate quickly costs far less than full
permutation sampling. R is the range of one sample; pass `value_range` when it is known (e.g. 1
for accuracy). Without it the observed range of the samples is used, a heuristic.

Held & Yang also truncate (marginals zero once half the heads are removed): `truncation_fraction`.
"""

from __future__ import annotations

import numpy as np

from probes.errors import ProbeError
from probes.estimators._common import Ledger, make_values, require_budget, should_stop, start_stop
from probes.estimators.permutation import draw_orders, prefix_coalitions
from probes.game import Game
from probes.stopping import StoppingCriterion
from probes.values import Values


def bernstein_halfwidth(variance: np.ndarray, count: np.ndarray, value_range: np.ndarray, delta: float) -> np.ndarray:
    log_term = np.log(3.0 / delta)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = np.sqrt(2.0 * variance * log_term / count) + 3.0 * value_range * log_term / count
    return np.where(count > 0, width, np.inf)


def bandit_shapley(
    game: Game,
    budget: int,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    threshold: float = 0.0,
    delta: float = 0.1,
    value_range: float | None = None,
    min_samples: int = 4,
    max_samples_per_player: int | None = None,
    truncation_fraction: float | None = None,
    pairs_per_round: int = 4,
) -> Values:
    """Values with per-player decisions in `details["decision"]`: "above", "below" or "undecided"."""
    n = game.n_players
    budget = require_budget(budget, 2 * n, "bandit", "v(empty), v(full) and one permutation with its reverse")
    if not 0 < delta < 1:
        raise ProbeError(f"delta must be in (0, 1), got {delta}")
    rng = np.random.default_rng(seed)
    stop = start_stop(stop)
    ledger = Ledger(game)
    empty, full = ledger.empty_and_full()
    tallies = _Tallies(n)
    active = np.ones(n, dtype=bool)
    # Position from which marginals are set to zero (Held & Yang: half the players removed).
    cutoff = n if truncation_fraction is None else max(1, int(round(n * truncation_fraction)))
    round_number = 0
    while active.any():
        drawn = _affordable_round(rng, ledger, budget, pairs_per_round, n, active, cutoff)
        if drawn is None:
            break
        orders, positions, rows, needed, coalitions = drawn
        values = np.full((orders.shape[0], n + 1), np.nan)
        values[:, 0], values[:, n] = empty, full
        values[rows, needed] = ledger(coalitions)
        for sample in _pair_samples(values, positions, active, cutoff):
            tallies.add(sample, active)
        means, variance, width = tallies.summary(value_range, delta)
        counts = tallies.counts
        decided = (counts >= min_samples) & ((means - width > threshold) | (means + width < threshold))
        capped = np.zeros(n, dtype=bool) if max_samples_per_player is None else counts >= max_samples_per_player
        active &= ~(decided | capped)
        round_number += 1
        if should_stop(stop, ledger, means, _stderrs(variance, counts), round_number):
            break
    means, variance, width = tallies.summary(value_range, delta)
    counts = tallies.counts
    decision = np.where(means - width > threshold, "above", np.where(means + width < threshold, "below", "undecided"))
    settings = {"threshold": threshold, "delta": delta, "value_range": value_range, "min_samples": min_samples,
                "max_samples_per_player": max_samples_per_player, "truncation_fraction": truncation_fraction,
                "budget": budget}
    details = {"decision": decision.tolist(), "n_samples": counts.astype(int).tolist(),
               "interval_halfwidth": [None if not np.isfinite(x) else float(x) for x in width]}
    return make_values(game, ledger, "bandit", means, _stderrs(variance, counts), settings=settings, seed=seed,
                       details=details)


class _Tallies:
    """Running sums of each player's marginal samples: mean, variance, range, count."""

    def __init__(self, n: int) -> None:
        self.sums, self.squares, self.counts = np.zeros(n), np.zeros(n), np.zeros(n)
        self.low, self.high = np.full(n, np.inf), np.full(n, -np.inf)

    def add(self, sample: np.ndarray, active: np.ndarray) -> None:
        self.sums[active] += sample[active]
        self.squares[active] += sample[active] ** 2
        self.counts[active] += 1
        self.low[active] = np.minimum(self.low[active], sample[active])
        self.high[active] = np.maximum(self.high[active], sample[active])

    def summary(self, value_range: float | None, delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(means, biased variances, empirical-Bernstein half-widths at confidence 1 - delta)."""
        n = len(self.sums)
        means = self.sums / np.maximum(self.counts, 1)
        variance = np.maximum(self.squares / np.maximum(self.counts, 1) - means**2, 0.0)
        spread = np.full(n, float(value_range)) if value_range is not None else np.maximum(self.high - self.low, 0.0)
        return means, variance, bernstein_halfwidth(variance, self.counts, spread, delta)


def _affordable_round(rng, ledger, budget: int, pairs_per_round: int, n: int, active: np.ndarray, cutoff: int):
    """This round's antithetic orders, cut to as many pairs as the remaining budget allows (at least
    one): (orders, positions, rows, needed prefix lengths, their coalitions), or None to stop."""
    all_orders = draw_orders(rng, pairs_per_round, n, antithetic=True).reshape(-1, n)
    for n_pairs in range(pairs_per_round, 0, -1):
        orders = all_orders[: 2 * n_pairs]
        positions, rows, needed = _needed_prefixes(orders, active, cutoff)
        coalitions = prefix_coalitions(orders[rows], needed)
        if ledger.cost(coalitions) <= budget - ledger.spent:
            return orders, positions, rows, needed, coalitions
    return None


def _pair_samples(values: np.ndarray, positions: np.ndarray, active: np.ndarray, cutoff: int) -> np.ndarray:
    """One marginal sample per antithetic pair and player: the mean of the pair's two marginals of
    each active player (truncated positions contribute zero)."""
    n = positions.shape[1]
    samples = np.zeros((values.shape[0], n))
    for r in range(values.shape[0]):
        players = np.flatnonzero(active)
        p = positions[r, players]
        keep = p < cutoff
        samples[r, players[keep]] = values[r, p[keep] + 1] - values[r, p[keep]]
    return samples.reshape(-1, 2, n).mean(axis=1)


def _needed_prefixes(orders: np.ndarray, active: np.ndarray, cutoff: int):
    """Prefix lengths just before and just after each active player (below the cutoff), per order."""
    n = orders.shape[1]
    positions = np.argsort(orders, axis=1)  # positions[r, player]
    rows, needed = [], []
    for r in range(orders.shape[0]):
        p = positions[r, active]
        p = p[p < cutoff]
        lengths = np.unique(np.concatenate([p, p + 1]))
        lengths = lengths[(lengths > 0) & (lengths < n)]
        rows.append(np.full(len(lengths), r))
        needed.append(lengths)
    return positions, np.concatenate(rows).astype(int), np.concatenate(needed).astype(int)


def _stderrs(variance: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        # Unbiased variance from the biased one; NaN where fewer than two samples.
        return np.where(counts > 1, np.sqrt(variance * counts / np.maximum(counts - 1, 1) / counts), np.nan)


estimate = bandit_shapley
