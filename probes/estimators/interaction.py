"""Pairwise Shapley interaction index (Grabisch & Roubens) for selected pairs of players.

I_ij = sum_{S without i, j} |S|! (n - |S| - 2)! / (n - 1)! * [v(S+i+j) - v(S+i) - v(S+j) + v(S)]
Positive: i and j need each other (the pair is worth more than its parts); negative: they are
redundant. Under those weights |S| is uniform on 0..n-2 and S uniform given its size, so each
sample is one such S, paired with its complement within N minus {i, j} (antithetic), costing up to
8 evaluations. Results come back as a `Values` with one entry per pair, named "(a, b)" like the
matrix key m["a", "b"] (`probes.interaction_matrix.pair_name`; the pairs themselves are in
details["pairs"]); `InteractionMatrix.from_pair_values` turns them into a named matrix, and
probes.estimators.metagame computes the whole matrix and the directed meta-attributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from probes.errors import ProbeError
from probes.estimators._common import Ledger, make_values, mean_and_stderr, require_budget, should_stop, start_stop
from probes.estimators.exact import MAX_EXACT_PLAYERS, all_coalitions, evaluate_all
from probes.game import Game
from probes.interaction_matrix import pair_name
from probes.stopping import StoppingCriterion
from probes.values import Values


def resolve_pairs(game: Game, players: Sequence[str] | None, pairs: Sequence[tuple[str, str]] | None) -> list[tuple[int, int]]:
    if (players is None) == (pairs is None):
        raise ProbeError("give either players=[...] (all pairs among them) or pairs=[(a, b), ...]")
    if players is not None:
        indices = [game.index_of(p) for p in players]
        resolved = list(combinations(indices, 2))
    else:
        resolved = [(game.index_of(a), game.index_of(b)) for a, b in pairs]
    if not resolved:
        raise ProbeError("no pair to compute: give at least two players or one pair")
    if any(i == j for i, j in resolved):
        raise ProbeError("a pair needs two different players")
    return resolved


def _pair_names(game: Game, pairs: list[tuple[int, int]]) -> list[str]:
    return [pair_name(game.players[i], game.players[j]) for i, j in pairs]


def sample_pair_deltas(ledger: Ledger, rng: np.random.Generator, resolved: list[tuple[int, int]], n: int,
                       n_units: int, size_weights: np.ndarray | None = None) -> np.ndarray:
    """[pairs, n_units] antithetic samples of the discrete derivative v(S+i+j) - v(S+i) - v(S+j) + v(S),
    S of a uniform size in 0..n-2 and uniform given its size (the Shapley interaction index's
    weights). size_weights[s] reweights a sample of size s, so that another size weighting q(s)
    is estimated with size_weights[s] = q(s) (n - 1) C(n - 2, s) (importance sampling)."""
    blocks, sizes_drawn = [], []
    for i, j in resolved:
        others = np.setdiff1d(np.arange(n), [i, j])
        sizes = rng.integers(0, n - 1, size=n_units)
        keys = rng.random((n_units, n - 2))
        ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
        base = np.zeros((n_units, n), dtype=bool)
        base[:, others] = ranks < sizes[:, None]
        complement = base.copy()
        complement[:, others] = ~base[:, others]
        sizes_drawn += [sizes, n - 2 - sizes]
        for s in (base, complement):
            with_i, with_j, with_both = s.copy(), s.copy(), s.copy()
            with_i[:, i] = True
            with_j[:, j] = True
            with_both[:, [i, j]] = True
            blocks.append(np.stack([with_both, with_i, with_j, s], axis=1))
    stacked = np.stack(blocks)  # [pairs * 2, units, 4, n]
    values = ledger(stacked.reshape(-1, n)).reshape(stacked.shape[:3])
    deltas = values[..., 0] - values[..., 1] - values[..., 2] + values[..., 3]
    if size_weights is not None:
        deltas = deltas * size_weights[np.stack(sizes_drawn)]
    return deltas.reshape(len(resolved), 2, n_units).mean(axis=1)  # antithetic average per unit


def interaction_values(
    game: Game,
    budget: int,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    players: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    n_rounds: int = 8,
    size_weights: np.ndarray | None = None,
) -> Values:
    """Sampled pairwise interaction index; with size_weights (see sample_pair_deltas), any index
    that weights the discrete derivatives by the coalition's size, e.g. a meta-attribution."""
    n = game.n_players
    if n < 2:
        raise ProbeError("interactions need at least two players")
    resolved = resolve_pairs(game, players, pairs)
    per_unit = 8 * len(resolved)
    budget = require_budget(budget, 2 + per_unit, "interaction",
                            f"8 evaluations (one antithetic sample) for each of the {len(resolved)} pairs")
    rng = np.random.default_rng(seed)
    stop = start_stop(stop)
    ledger = Ledger(game)
    ledger.empty_and_full()
    units_per_round = max(1, (budget - 2) // per_unit // n_rounds)
    samples = []
    round_number = 0
    while budget - ledger.spent >= per_unit:
        n_units = max(1, min(units_per_round, (budget - ledger.spent) // per_unit))
        deltas = sample_pair_deltas(ledger, rng, resolved, n, n_units, size_weights)
        samples.append(deltas.T)
        round_number += 1
        means, stderrs = mean_and_stderr(np.concatenate(samples))
        if should_stop(stop, ledger, means, stderrs, round_number):
            break
    means, stderrs = mean_and_stderr(np.concatenate(samples))
    return make_values(game, ledger, "interaction", means, stderrs, settings={"budget": budget}, seed=seed,
                       names=_pair_names(game, resolved),
                       details={"pairs": [[game.players[i], game.players[j]] for i, j in resolved]})


def exact_interaction_values(
    game: Game,
    *,
    players: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    max_players: int = MAX_EXACT_PLAYERS,
) -> Values:
    """The pairwise index by enumerating all 2^n coalitions (small games, tests)."""
    from scipy.special import gammaln

    n = game.n_players
    resolved = resolve_pairs(game, players, pairs)
    ledger = Ledger(game)
    values = evaluate_all(game, ledger, max_players)
    coalitions = all_coalitions(n)
    sizes = coalitions.sum(axis=1)
    codes = np.arange(1 << n)
    means = np.empty(len(resolved))
    for p, (i, j) in enumerate(resolved):
        base = ~coalitions[:, i] & ~coalitions[:, j]
        s = sizes[base]
        weight = np.exp(gammaln(s + 1) + gammaln(n - s - 1) - gammaln(n))
        c = codes[base]
        delta = values[c | (1 << i) | (1 << j)] - values[c | (1 << i)] - values[c | (1 << j)] + values[c]
        means[p] = (weight * delta).sum()
    return make_values(game, ledger, "exact_interaction", means, np.zeros(len(resolved)), settings={}, seed=None,
                       names=_pair_names(game, resolved),
                       details={"pairs": [[game.players[i], game.players[j]] for i, j in resolved]})


estimate = interaction_values
