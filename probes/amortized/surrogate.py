"""Coalition surrogate: a model of v(coalition) fitted to evaluations already in a store, used as a
control variate by any estimator.

    surrogate = CoalitionSurrogate(seed=0).fit_store(store)      # store: probes.CoalitionStore
    values = control_variate_shapley(game, surrogate, budget=600, seed=1)

phi(v) = phi(f) + phi(v - f) for any f. The surrogate's Shapley values are exact (linear part: its
coefficients; size part: 0, it vanishes at the empty and full coalitions and treats players
alike; trees: path-indicator closed form of probes.estimators.surrogates), so only the residual
v - f is estimated, from fresh evaluations. f is fitted on *earlier* evaluations, not on the ones
that correct it, so the result stays as unbiased as the estimator is; a good f only lowers the
variance. What it buys depends on the estimator: Monte Carlo estimators (permutation) lose the
variance of every main effect the surrogate captured; a regression estimator already fits the
linear and size terms itself, so for it only the trees (interactions) can help.
"""

from __future__ import annotations

import numpy as np

from probes.errors import ProbeError
from probes.estimators import estimate
from probes.estimators.regression import size_basis
from probes.estimators.surrogates import BoostedTreeSurrogate
from probes.game import Game
from probes.values import Values


class CoalitionSurrogate:
    """f(S) = c + S @ beta + size_basis(S) @ gamma [+ boosted trees on what remains].

    ridge: penalty on beta and gamma (keeps the fit defined with fewer coalitions than players);
    trees: add gradient-boosted trees (interactions) when at least `min_tree_rows` coalitions exist.
    """

    def __init__(self, size_degree: int = 3, trees: bool = True, ridge: float = 1e-3, tree_settings: dict | None = None,
                 min_tree_rows: int = 32, seed: int | None = 0):
        self.size_degree, self.use_trees, self.ridge = size_degree, trees, ridge
        self.tree_settings = dict(tree_settings or {})
        self.min_tree_rows, self.seed = min_tree_rows, seed
        self.n_players: int | None = None
        self.intercept, self.beta, self.gamma, self.trees = 0.0, None, None, None
        self.n_fitted = 0

    def _design(self, coalitions: np.ndarray) -> np.ndarray:
        return np.concatenate([coalitions.astype(float), size_basis(coalitions, self.size_degree)], axis=1)

    def fit(self, coalitions: np.ndarray, values: np.ndarray) -> CoalitionSurrogate:
        coalitions = np.asarray(coalitions, dtype=bool)
        values = np.asarray(values, dtype=float)
        if coalitions.ndim != 2 or len(coalitions) != len(values) or len(values) < 2:
            raise ProbeError(f"a surrogate needs >= 2 evaluated coalitions with one value each; got "
                             f"{coalitions.shape} coalitions and {values.shape} values")
        n = coalitions.shape[1]
        x = self._design(coalitions)
        x_mean, y_mean = x.mean(0), values.mean()
        xc, yc = x - x_mean, values - y_mean
        # Ridge in closed form on centred data (the intercept is not penalised).
        a = xc.T @ xc + self.ridge * len(values) * np.eye(x.shape[1])
        coef = np.linalg.solve(a, xc.T @ yc)
        self.n_players, self.n_fitted = n, len(values)
        self.beta, self.gamma = coef[:n], coef[n:]
        self.intercept = float(y_mean - x_mean @ coef)
        self.trees = None
        if self.use_trees and len(values) >= self.min_tree_rows:
            self.trees = BoostedTreeSurrogate(seed=self.seed, **self.tree_settings).fit(coalitions, values - self._smooth(coalitions))
        return self

    def fit_store(self, store) -> CoalitionSurrogate:
        """Fit on every coalition a probes.store.CoalitionStore holds."""
        coalitions, values = store.coalitions()
        return self.fit(coalitions, values)

    def _smooth(self, coalitions: np.ndarray) -> np.ndarray:
        return self.intercept + self._design(coalitions) @ np.concatenate([self.beta, self.gamma])

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        if self.beta is None:
            raise ProbeError("fit the surrogate before using it")
        coalitions = np.asarray(coalitions, dtype=bool)
        out = self._smooth(coalitions)
        return out if self.trees is None else out + self.trees.predict(coalitions)

    def shapley(self) -> np.ndarray:
        """Exact Shapley values of f (the size terms carry none)."""
        if self.beta is None:
            raise ProbeError("fit the surrogate before using it")
        return self.beta.copy() if self.trees is None else self.beta + self.trees.shapley(self.n_players)


def residual_game(game: Game, surrogate: CoalitionSurrogate) -> Game:
    """The game v - f; each of its evaluations is one evaluation of `game` (store and memory included)."""
    if surrogate.n_players != game.n_players:
        raise ProbeError(f"surrogate fitted on {surrogate.n_players} players, the game has {game.n_players}")
    fingerprint = {**{k: v for k, v in game.fingerprint.items() if k != "players"}, "control_variate": True}
    return Game(game.players, lambda c: game(c) - surrogate(c), fingerprint)


def control_variate_shapley(game: Game, surrogate: CoalitionSurrogate, budget: int, seed: int | None = None, *,
                            estimator: str | None = None, **settings) -> Values:
    """phi(f) exactly + the named estimator's estimate of phi(v - f) at `budget` fresh evaluations."""
    residual = residual_game(game, surrogate)
    part = estimate(residual, budget=budget, seed=seed, estimator=estimator, **settings)
    return Values(names=list(game.players), means=surrogate.shapley() + part.means, stderrs=part.stderrs,
                  n_evaluations=part.n_evaluations, estimator=f"control_variate:{part.estimator}",
                  settings={**part.settings, "surrogate_fitted_on": surrogate.n_fitted,
                            "surrogate_trees": surrogate.trees is not None},
                  seed=seed, fingerprint=dict(game.fingerprint),
                  empty_value=None if part.empty_value is None else part.empty_value + float(surrogate(np.zeros((1, game.n_players), bool))[0]),
                  full_value=None if part.full_value is None else part.full_value + float(surrogate(np.ones((1, game.n_players), bool))[0]),
                  details=dict(part.details))
