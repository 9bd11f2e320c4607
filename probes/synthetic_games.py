"""Synthetic games whose Shapley values are known in closed form, for tests and benchmarks.

Every factory returns a `KnownGame`: a `Game` plus its true Shapley values. The closed forms used:
- additive v(S) = c + sum_{i in S} w_i                        -> phi_i = w_i
- symmetric v(S) = g(|S|)                                     -> phi_i = (g(n) - g(0)) / n
- pairwise v(S) = sum w_i x_i + sum_{ij} b_ij x_i x_j         -> phi_i = w_i + sum_j b_ij / 2
- unanimity u_T(S) = 1[T subset of S] ("heads that need each other") and its dual, the
  redundancy game 1[S meets T] ("heads that back each other up"), give 1/|T| to each member of T.
A sum of such terms (a "SOUM") gives the sum of their values, which lets the benchmark build
games with interactions of every order at n = 256 and still know the truth exactly.

Where a closed form exists the game also knows its p-weighted Banzhaf values
(`known.weighted_banzhaf(p)`, each other player present independently with probability p):
additive -> w_i; a pair term b x_i x_j -> b p to each of i and j; unanimity on T -> p^(|T|-1) to
each member; redundancy on T -> (1-p)^(|T|-1) (i matters only when no other member is present);
symmetric g(|S|) -> E[g(K + 1) - g(K)] with K ~ Binomial(n - 1, p).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from probes.game import Game


@dataclass
class KnownGame:
    game: Game
    shapley: np.ndarray
    description: str
    banzhaf: Callable[[float], np.ndarray] | None = None  # p -> p-weighted Banzhaf values, where known

    def weighted_banzhaf(self, p: float) -> np.ndarray:
        if self.banzhaf is None:
            raise NotImplementedError(f"no closed-form weighted Banzhaf values for {self.description}")
        return np.asarray(self.banzhaf(float(p)), dtype=float)


def _names(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


def _game(n: int, value_function, kind: str, seed, **params) -> Game:
    fingerprint = {"model": "synthetic", "task": kind, "metric": "closed-form", "ablation": "none",
                   "seed": seed, **params}
    return Game(_names(n), value_function, fingerprint)


def additive_game(n: int, seed: int = 0, offset: float = 0.5) -> KnownGame:
    weights = np.random.default_rng(seed).normal(size=n)
    game = _game(n, lambda c: offset + c.astype(float) @ weights, "additive", seed)
    return KnownGame(game, weights.copy(), f"additive n={n}", lambda p: weights.copy())


def symmetric_game(n: int) -> KnownGame:
    """v(S) = sqrt(|S|): every player is interchangeable, so every value is sqrt(n)/n."""
    game = _game(n, lambda c: np.sqrt(c.sum(axis=1)), "symmetric", None)

    def banzhaf(p):
        from scipy.stats import binom

        k = np.arange(n)
        return np.full(n, float((binom.pmf(k, n - 1, p) * (np.sqrt(k + 1) - np.sqrt(k))).sum()))

    return KnownGame(game, np.full(n, np.sqrt(n) / n), f"symmetric sqrt(|S|) n={n}", banzhaf)


def dummy_players_game(n: int, n_dummies: int, seed: int = 0) -> KnownGame:
    """A pairwise game in which the last `n_dummies` players change nothing (null players)."""
    active = n - n_dummies
    rng = np.random.default_rng(seed)
    weights = np.zeros(n)
    weights[:active] = rng.normal(size=active)
    pairs = np.zeros((n, n))
    for _ in range(active):
        i, j = rng.choice(active, size=2, replace=False)
        pairs[i, j] += rng.normal()
    return _pairwise(n, weights, pairs, "dummy", seed, f"pairwise with {n_dummies} null players n={n}")


def sparse_pairwise_game(n: int, n_pairs: int | None = None, seed: int = 0, interaction_scale: float = 1.0) -> KnownGame:
    """Main effects plus `n_pairs` (default n) random pairwise interactions."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=n)
    pairs = np.zeros((n, n))
    for _ in range(n if n_pairs is None else n_pairs):
        i, j = rng.choice(n, size=2, replace=False)
        pairs[i, j] += interaction_scale * rng.normal()
    return _pairwise(n, weights, pairs, "sparse_pairwise", seed, f"sparse pairwise n={n}")


def harmful_player_game(n: int, harmful: int = 0, seed: int = 0) -> KnownGame:
    """Positive players plus one that lowers the value on its own and through its interactions
    (the "interfering head" that Shapley head pruning looks for)."""
    rng = np.random.default_rng(seed)
    weights = np.abs(rng.normal(size=n)) + 0.2
    weights[harmful] = -1.0
    pairs = np.zeros((n, n))
    for j in rng.choice([k for k in range(n) if k != harmful], size=min(3, n - 1), replace=False):
        pairs[harmful, j] = -0.5
    return _pairwise(n, weights, pairs, "harmful", seed, f"one harmful player (index {harmful}) n={n}")


def _pairwise(n, weights, pairs, kind, seed, description) -> KnownGame:
    # pairs[i, j] (i != j) is the coefficient of x_i x_j; its value is shared half and half.

    def value(c):
        x = c.astype(float)
        return x @ weights + np.einsum("mi,ij,mj->m", x, pairs, x)

    shared = pairs.sum(axis=1) + pairs.sum(axis=0)
    shapley = weights + shared / 2
    return KnownGame(_game(n, value, kind, seed), shapley, description, lambda p: weights + p * shared)


def soum_game(n: int, n_terms: int | None = None, max_order: int = 4, seed: int = 0,
              redundancy_share: float = 0.5) -> KnownGame:
    """Sum of unanimity (synergy) and redundancy games on random player sets of order 1..max_order.

    Coefficients shrink with the order like in real networks: most value is in low orders, but
    higher-order terms are what make sampling estimators err. Closed form: each term gives
    coefficient / |T| to each of its members.
    """
    rng = np.random.default_rng(seed)
    n_terms = 2 * n if n_terms is None else n_terms
    membership = np.zeros((n_terms, n))
    coefficients = np.empty(n_terms)
    orders = rng.integers(1, max_order + 1, size=n_terms)
    for t, order in enumerate(orders):
        membership[t, rng.choice(n, size=min(order, n), replace=False)] = 1.0
        coefficients[t] = rng.normal() / np.sqrt(order)
    sizes = membership.sum(axis=1)
    is_redundancy = rng.random(n_terms) < redundancy_share

    def value(c):
        present = c.astype(float) @ membership.T  # members present, per term
        active = np.where(is_redundancy, present > 0, present == sizes)
        return active.astype(float) @ coefficients

    shapley = (membership * (coefficients / sizes)[:, None]).sum(axis=0)

    def banzhaf(p):
        share = np.where(is_redundancy, (1 - p) ** (sizes - 1), p ** (sizes - 1))
        return (membership * (coefficients * share)[:, None]).sum(axis=0)

    return KnownGame(_game(n, value, "soum", seed, max_order=max_order, n_terms=n_terms), shapley,
                     f"SOUM synergy+redundancy n={n}, {n_terms} terms, order<= {max_order}", banzhaf)


def saturating_game(n: int, seed: int = 0) -> KnownGame:
    """A model-like game without a closed form: a saturated (tanh) score of pairwise effects, as a
    task metric saturates when enough heads are present. Truth by exact enumeration, so n <= 20."""
    from probes.estimators.exact import exact_shapley

    base = sparse_pairwise_game(n, seed=seed, interaction_scale=0.7)
    inner = base.game.value_function
    game = _game(n, lambda c: np.tanh(0.3 * inner(c)), "saturating", seed)
    truth = exact_shapley(Game(game.players, game.value_function)).means
    return KnownGame(game, truth, f"tanh of pairwise, exact by enumeration, n={n}")


def saturating_score_game(n: int, seed: int = 0, harmful_share: float = 0.15) -> KnownGame:
    """A metric that saturates as components are added: v(S) = z - z^3 / 3 with the score
    z(S) = sum_{i in S} w_i / scale (the start of tanh's Taylor series), z(full) ~ 1.5.
    Every player interacts with every other (dense orders 2 and 3), like heads feeding a shared
    residual stream. Closed form from expanding z^3: with W = sum w, Q = sum w^2,
      phi_i(z^3) = w_i^3 + 3/2 [w_i^2 (W - w_i) + w_i (Q - w_i^2)] + w_i [(W - w_i)^2 - (Q - w_i^2)]
    (order-2 terms split in halves, order-3 terms in thirds), all divided by scale^3."""
    rng = np.random.default_rng(seed)
    weights = np.abs(rng.normal(size=n))
    weights[rng.random(n) < harmful_share] *= -0.5
    scale = weights.sum() / 1.5
    w = weights / scale

    def value(c):
        z = c.astype(float) @ w
        return z - z**3 / 3

    total, squares = w.sum(), (w**2).sum()
    cubic = (w**3 + 1.5 * (w**2 * (total - w) + w * (squares - w**2)) + w * ((total - w) ** 2 - (squares - w**2)))

    def banzhaf(p):
        # v(S + i) - v(S) = w_i - w_i z^2 - w_i^2 z - w_i^3 / 3 with z = z(S), S ~ Bernoulli(p) over the others:
        # E z = p (W - w_i), E z^2 = p (1 - p) (Q - w_i^2) + (E z)^2.
        mean = p * (total - w)
        second = p * (1 - p) * (squares - w**2) + mean**2
        return w - w * second - w**2 * mean - w**3 / 3

    return KnownGame(_game(n, value, "saturating_score", seed), w - cubic / 3,
                     f"saturating score z - z^3/3, dense interactions, n={n}", banzhaf)
