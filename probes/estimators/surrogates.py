"""Surrogate games whose Shapley values are known exactly, for regression-adjusted Monte Carlo.

MSR subtracts a surrogate f from the game, takes f's Shapley values exactly, and samples only the
residual v - f. The closer f is to v, the smaller the residual and the lower the variance.

- Linear surrogate: f(S) = v(empty) + sum_{i in S} beta_i, fitted by the efficient kernel
  regression (regression.py); its Shapley values are beta.
- Tree surrogate: gradient-boosted trees fitted to what the linear part leaves. A tree on 0/1
  coalition features is a sum over leaves of value * 1[P subset of S, S misses Q], where P (Q) are
  the players a path requires present (absent). That indicator game has closed-form Shapley
  values: each p in P gets (|P|-1)! |Q|! / (|P|+|Q|)!, each q in Q gets -|P|! (|Q|-1)! / (|P|+|Q|)!
  (the probability, over random orders of P and Q, that the player is the one that switches the
  indicator on or off). Summing leaves gives the trees' exact Shapley values in O(leaves x depth).
"""

from __future__ import annotations

from math import factorial

import numpy as np


def path_indicator_shapley(n: int, present: list[int], absent: list[int]) -> np.ndarray:
    """Shapley values of S -> 1[present subset of S and absent disjoint from S]."""
    phi = np.zeros(n)
    p, q = len(present), len(absent)
    if p + q == 0:
        return phi  # constant game: no player changes anything
    total = factorial(p + q)
    if p:
        phi[present] = factorial(p - 1) * factorial(q) / total
    if q:
        phi[absent] = -factorial(p) * factorial(q - 1) / total
    return phi


def tree_shapley(tree, n: int) -> np.ndarray:
    """Exact Shapley values of a fitted sklearn regression tree over 0/1 coalition features."""
    children_left, children_right = tree.children_left, tree.children_right
    feature, threshold, value = tree.feature, tree.threshold, tree.value[:, 0, 0]
    phi = np.zeros(n)
    stack = [(0, (), ())]
    while stack:
        node, present, absent = stack.pop()
        if children_left[node] == -1:
            phi += value[node] * path_indicator_shapley(n, list(present), list(absent))
            continue
        player, cut = int(feature[node]), threshold[node]
        if not 0.0 <= cut < 1.0:
            # A split outside (0, 1) sends every coalition one way; follow that branch only.
            stack.append((children_left[node] if cut >= 1.0 else children_right[node], present, absent))
            continue
        # Repeated splits on a player already fixed on this path: only the consistent branch is reachable.
        if player in present:
            stack.append((children_right[node], present, absent))
        elif player in absent:
            stack.append((children_left[node], present, absent))
        else:
            stack.append((children_left[node], present, absent + (player,)))
            stack.append((children_right[node], present + (player,), absent))
    return phi


class BoostedTreeSurrogate:
    """Gradient-boosted trees on coalition masks, with exact Shapley values of the fit."""

    def __init__(self, n_estimators: int = 100, max_depth: int = 3, learning_rate: float = 0.1, seed: int | None = 0):
        from sklearn.ensemble import GradientBoostingRegressor

        self.model = GradientBoostingRegressor(
            n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate,
            subsample=1.0, random_state=seed,
        )

    def fit(self, coalitions: np.ndarray, targets: np.ndarray) -> BoostedTreeSurrogate:
        self.model.fit(coalitions.astype(np.float32), targets)
        return self

    def predict(self, coalitions: np.ndarray) -> np.ndarray:
        return self.model.predict(coalitions.astype(np.float32))

    def shapley(self, n: int) -> np.ndarray:
        phi = np.zeros(n)
        for (estimator,) in self.model.estimators_:
            phi += tree_shapley(estimator.tree_, n)
        return self.model.learning_rate * phi
