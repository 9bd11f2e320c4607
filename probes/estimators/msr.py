"""Regression-adjusted Monte Carlo (MSR; Witter, Musco et al. 2025) for Shapley values.

Write phi(v) = phi(f) + phi(v - f) for any surrogate f whose Shapley values are known exactly
(surrogates.py). Monte Carlo is used only for the residual r = v - f, with the maximum-sample-reuse
form: every evaluated coalition informs every player. For a complementary pair u = (S, N minus S)
of stratum k = |S|,
    g_i(u) = (r(S) - r(N minus S)) * (1[i in S] / |S| - 1[i not in S] / (n - |S|))
and phi_i(r) = (r(N) - r(empty)) / n + sum_k rho_k E_{u in stratum k}[g_i(u)], rho_k = 1 (k < n/2)
or 1/2 (k = n/2). Saturated strata give their term exactly; sampled ones by the mean of
rho_k g_i(u) over the stratum's sampled pairs (the design is stratified: a fixed number of pairs
per stratum, each stratum's a uniform sample; see _design.py). The correction therefore stays unbiased however good f is:
a good f only shrinks the variance. The surrogate is cross-fitted (trained on the other folds'
units) so it cannot hide its own errors on the units that correct it.

Standard errors: from the within-stratum spread of the per-pair terms of each fold, combined over folds.
surrogate: "linear+size" (default: linear in the players plus a smooth function of coalition
size), "linear", "linear+size+trees" / "linear+trees" (add boosted trees on the rest), or "none"
(plain paired MSR). surrogate_settings: {"size_degree": 3, "trees": {sklearn GBR settings}}.
"""

from __future__ import annotations

import numpy as np

from probes.errors import ProbeError
from probes.estimators._common import make_values, require_budget, should_stop, start_stop
from probes.estimators._design import PairedDesign
from probes.estimators.regression import PairedRun, fit_linear, size_basis
from probes.estimators.surrogates import BoostedTreeSurrogate
from probes.game import Game
from probes.stopping import StoppingCriterion
from probes.values import Values

SURROGATES = ("linear+size", "linear", "linear+size+trees", "linear+trees", "none")


def _pair_terms(design: PairedDesign, units: np.ndarray, residual_first, residual_second) -> np.ndarray:
    """rho_k * g_i(u) for each unit (rows) and player (columns)."""
    n = design.n
    k = design.stratum[units].astype(float)[:, None]
    members = design.first[units]
    rho = np.where(2 * k == n, 0.5, 1.0)
    difference = (residual_first[units] - residual_second[units])[:, None]
    return rho * difference * np.where(members, 1.0 / k, -1.0 / (n - k))


class _Fitted:
    """Surrogate trained on some units: f(S) = v(empty) + S @ beta [+ h(|S|)] [+ trees(S)].

    h is a smooth function of the coalition size that vanishes at the empty and full coalitions,
    so it has zero Shapley value and only soaks up variance (see regression.size_basis)."""

    def __init__(self, design, train, first_values, second_values, empty, full, n_sampled, surrogate, settings, seed):
        n = design.n
        self.n = n
        self.empty = empty
        self.beta = np.zeros(n)
        self.gamma = None
        self.size_degree = settings.get("size_degree", 3)
        self.trees = None
        if surrogate == "none":
            return
        with_size = "size" in surrogate
        coef = fit_linear(design, train, first_values, second_values, empty, full, n_sampled,
                          size_degree=self.size_degree if with_size else None)
        self.beta = coef[:n]
        self.gamma = coef[n:] if with_size else None
        if "trees" in surrogate and len(train) >= 8:
            x = np.concatenate([design.first[train], ~design.first[train]])
            y = np.concatenate([first_values[train], second_values[train]])
            self.trees = BoostedTreeSurrogate(seed=seed, **settings.get("trees", {})).fit(x, y - self._smooth(x))

    def _smooth(self, coalitions: np.ndarray) -> np.ndarray:
        out = self.empty + coalitions.astype(float) @ self.beta
        if self.gamma is not None:
            out = out + size_basis(coalitions, self.size_degree) @ self.gamma
        return out

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        out = self._smooth(coalitions)
        return out if self.trees is None else out + self.trees.predict(coalitions)

    def shapley(self, n: int) -> np.ndarray:
        return self.beta if self.trees is None else self.beta + self.trees.shapley(n)


def _stratified_folds(design, sampled: np.ndarray, n_folds: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(test, train) units of each fold. Within every stratum the units are dealt to folds in turn,
    so each fold's test set is a stratified random sample; a stratum with fewer units than folds is
    in every fold's test set and in no training set, so every fold sees every stratum and no
    surrogate is trained on a unit it corrects."""
    tests = [[] for _ in range(n_folds)]
    trains = [[] for _ in range(n_folds)]
    for k in np.unique(design.stratum[sampled]):
        members = sampled[design.stratum[sampled] == k]
        if len(members) < n_folds:
            for f in range(n_folds):
                tests[f].append(members)
            continue
        for f in range(n_folds):
            tests[f].append(members[f::n_folds])
            trains[f].append(np.concatenate([members[g::n_folds] for g in range(n_folds) if g != f]))
    as_array = lambda parts: np.concatenate(parts).astype(int) if parts else np.zeros(0, dtype=int)
    return [as_array(t) for t in tests], [as_array(t) for t in trains]


def _msr_estimate(design, units, first_values, second_values, empty, full, surrogate, n_folds, settings, seed):
    n = design.n
    saturated = units[~design.sampled[units]]
    sampled = units[design.sampled[units]]
    n_folds = max(1, min(n_folds, len(sampled) // 2)) if len(sampled) else 1
    if n_folds > 1:
        tests, trains = _stratified_folds(design, sampled, n_folds)
    else:
        tests, trains = [sampled], [np.zeros(0, dtype=int)]  # too few pairs to split: fit on the exact strata only
    full_empty = np.array([np.ones(n, dtype=bool), np.zeros(n, dtype=bool)])
    estimates, variances = [], []
    for test, train_sampled in zip(tests, trains):
        train = np.concatenate([saturated, train_sampled]).astype(int)
        model = _Fitted(design, train, first_values, second_values, empty, full, len(train_sampled),
                        surrogate if len(train) else "none", settings, seed)
        residual_first = np.full(len(design.first), np.nan)
        residual_second = np.full(len(design.first), np.nan)
        needed = np.concatenate([saturated, test]).astype(int)
        residual_first[needed] = first_values[needed] - model(design.first[needed])
        residual_second[needed] = second_values[needed] - model(~design.first[needed])
        f_full, f_empty = model(full_empty)
        estimate = model.shapley(n) + ((full - f_full) - (empty - f_empty)) / n
        if len(saturated):
            terms = _pair_terms(design, saturated, residual_first, residual_second)
            for k in np.unique(design.stratum[saturated]):
                estimate = estimate + terms[design.stratum[saturated] == k].mean(axis=0)
        variance = np.zeros(n)
        if len(test):
            # Stratified mean: each sampled stratum's term is the mean over its test units (a uniform
            # sample of the stratum), its variance the within-stratum variance over their number.
            terms = _pair_terms(design, test, residual_first, residual_second)
            strata = design.stratum[test]
            spreads, singles = [], 0
            for k in np.unique(strata):
                block = terms[strata == k]
                estimate = estimate + block.mean(axis=0)
                if len(block) > 1:
                    spreads.append(block.var(axis=0, ddof=1) / len(block))
                else:
                    singles += 1
            if spreads:
                # A stratum with one test unit has no spread of its own: give it the average of the others'.
                variance = np.sum(spreads, axis=0) * (1 + singles / len(spreads))
            else:
                variance = np.full(n, np.nan)
        estimates.append(estimate)
        variances.append(variance)
    phi = np.mean(estimates, axis=0)
    stderrs = np.sqrt(np.sum(variances, axis=0)) / len(tests)
    return phi, stderrs


def msr_shapley(
    game: Game,
    budget: int,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    surrogate: str = "linear+size",
    distribution: str = "leverage",
    n_folds: int = 2,
    surrogate_settings: dict | None = None,
    n_rounds: int = 8,
) -> Values:
    if surrogate not in SURROGATES:
        raise ProbeError(f"unknown MSR surrogate {surrogate!r}; choose one of {SURROGATES}")
    n = game.n_players
    budget = require_budget(budget, n + 2, "msr", "v(empty), v(full) and n/2 complementary pairs")
    rng = np.random.default_rng(seed)
    tree_seed = int(rng.integers(2**31))
    stop = start_stop(stop)
    run = PairedRun(game, budget, rng, distribution, stop)
    surrogate_settings = dict(surrogate_settings or {})
    phi, stderrs = np.zeros(n), np.full(n, np.nan)
    for round_number, units, _ in run.rounds(n_rounds):
        phi, stderrs = _msr_estimate(run.design, units, run.first_values, run.second_values, run.empty, run.full,
                                     surrogate, n_folds, surrogate_settings, tree_seed)
        if should_stop(stop, run.ledger, phi, stderrs, round_number):
            break
    settings = {"surrogate": surrogate, "distribution": distribution, "n_folds": n_folds,
                "surrogate_settings": surrogate_settings, "budget": budget}
    return make_values(game, run.ledger, "msr", phi, stderrs, settings=settings, seed=seed, details=run.details())


estimate = msr_shapley
