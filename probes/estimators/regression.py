"""KernelSHAP and Leverage SHAP: Shapley values as a weighted least-squares fit.

Shapley values are the exact solution of
    min_phi  sum_S mu(|S|) (v(S) - v(empty) - sum_{i in S} phi_i)^2   s.t.  sum_i phi_i = v(full) - v(empty)
with the Shapley kernel mu(s) = (n - 1) / (C(n, s) s (n - s)). Both estimators sample the sum
(paired coalitions, small strata enumerated; see _design.py), reweight each sampled row by
mu / (its sampling probability) so the sampled objective is unbiased, and solve it with the
efficiency constraint imposed exactly. They differ only in how coalition sizes are sampled:
"kernel" (KernelSHAP, Lundberg & Lee / Covert & Lee) or "leverage" (Leverage SHAP, Musco & Witter).

Standard errors: bootstrap over the sampled pairs (saturated strata are exact and stay fixed). The
design is stratified (fixed counts per coalition size, _design.py); the bootstrap redraws the
sampled pairs without keeping those counts, so it slightly overstates the error (conservative).

leverage_shap_size adds free columns that are smooth functions of the coalition size (vanishing at
the empty and full coalitions, so they carry no Shapley value) to soak up size-driven curvature.
"""

from __future__ import annotations

import warnings

import numpy as np

from probes.errors import ProbeError
from probes.estimators._common import Ledger, make_values, require_budget, should_stop, start_stop
from probes.estimators._design import PairedDesign, PairedSequence, total_units
from probes.game import Game
from probes.stopping import StoppingCriterion
from probes.values import Values


def unit_weights(design: PairedDesign, units: np.ndarray, n_sampled: int) -> np.ndarray:
    """Regression weight of each unit's two rows, so the weighted sample estimates the full sum."""
    n = design.n
    k = design.stratum[units].astype(float)
    pairs_per_size = np.where(2 * k == n, 0.5, 1.0)  # units in stratum / coalitions of size k
    mass = (n - 1) / (k * (n - k)) * pairs_per_size  # kernel mass of the stratum, per unit, times its unit count
    counts = design.stratum_units[design.stratum[units] - 1]
    probability = np.where(
        design.sampled[units],
        design.q[design.stratum[units] - 1] * max(n_sampled, 1),
        counts,
    )
    return mass / probability


def solve_efficient_wls(x: np.ndarray, y: np.ndarray, w: np.ndarray, total: float, n_constrained: int | None = None) -> np.ndarray:
    """argmin sum w (y - x phi)^2 subject to sum(phi[:n_constrained]) = total (Lagrange, closed form).

    Columns after n_constrained (e.g. functions of the coalition size) are fitted freely."""
    n = x.shape[1]
    xw = x * w[:, None]
    a = xw.T @ x
    b = xw.T @ y
    ones = np.zeros(n)
    ones[: n if n_constrained is None else n_constrained] = 1.0
    # Tiny ridge keeps the solve defined when a small sample leaves a direction unobserved.
    a = a + 1e-10 * max(np.trace(a) / n, 1e-300) * np.eye(n)
    try:
        a_inv_b = np.linalg.solve(a, b)
        a_inv_1 = np.linalg.solve(a, ones)
    except np.linalg.LinAlgError:
        pinv = np.linalg.pinv(a)
        a_inv_b, a_inv_1 = pinv @ b, pinv @ ones
    return a_inv_b - a_inv_1 * (ones @ a_inv_b - total) / (ones @ a_inv_1)


def check_size_degree(size_degree, estimator: str) -> None:
    """None (no size covariates) or a whole number >= 0; anything else is refused with the fix."""
    if size_degree is not None and (isinstance(size_degree, bool) or not isinstance(size_degree, (int, np.integer))
                                    or size_degree < 0):
        raise ProbeError(f"{estimator}: size_degree must be a whole number >= 0 (how many powers of the coalition "
                         f"size the fit may bend with; 1 or 3 are usual) or None, got {size_degree!r}")


def size_basis(coalitions: np.ndarray, degree: int) -> np.ndarray:
    """Smooth functions of the coalition size s that vanish at s = 0 and s = n, so they change no
    player's Shapley value: they let a surrogate follow how the value bends with size (a metric
    that saturates) without touching efficiency."""
    s = coalitions.sum(axis=1) / coalitions.shape[1]
    return np.stack([s * (1 - s) * (2 * s - 1) ** j for j in range(degree + 1)], axis=1)


def fit_linear(design: PairedDesign, units: np.ndarray, values_first, values_second, empty, full, n_sampled,
               size_degree: int | None = None) -> np.ndarray:
    """Efficient weighted fit of v(S) - v(empty) ~ S @ beta (+ size_basis(S) @ gamma): returns beta (, gamma)."""
    w = unit_weights(design, units, n_sampled)
    x = np.concatenate([design.first[units], ~design.first[units]])
    y = np.concatenate([values_first[units], values_second[units]]) - empty
    features = x.astype(float)
    if size_degree is not None:
        features = np.concatenate([features, size_basis(x, size_degree)], axis=1)
    return solve_efficient_wls(features, y, np.concatenate([w, w]), full - empty, n_constrained=design.n)


def order_units(design: PairedDesign, rng: np.random.Generator) -> np.ndarray:
    """Units in evaluation order. The nested sequence (_design.py) is already in an order whose every
    prefix is a valid design, so this is the identity; `rng` is not used (kept for callers)."""
    return np.arange(len(design.first))


class PairedRun:
    """A paired design drawn for a game and evaluated in rounds, shared by the regression and MSR
    estimators: v(empty), v(full), then complementary pairs in the nested sequence's order, so every
    prefix of rounds is a valid design to fit on and a larger budget with the same seed extends a
    smaller one. Units are generated and evaluated CHUNK at a time, so memory follows what has been
    evaluated, not the budget. A budget above the game's 2^n distinct coalitions is cut to 2^n (the
    design is then the whole game), with a warning and `details['budget_capped_to']`."""

    CHUNK = 1 << 14  # units generated and evaluated per request to the game

    def __init__(self, game: Game, budget: int, rng: np.random.Generator, distribution: str, stop,
                 sequence=None) -> None:
        """sequence: None draws the nested paired sequence of `distribution`; another object with
        .design(upto), .ks and .max_units (chains.ChainSequence) supplies another nested design."""
        n = game.n_players
        self.ledger = Ledger(game)
        self.empty, self.full = self.ledger.empty_and_full()
        self.capped_to = None
        self.sequence = sequence if sequence is not None else PairedSequence(n, rng, distribution)
        self.n_units = (budget - 2) // 2
        most = getattr(self.sequence, "max_units", total_units(n))
        if self.n_units > most:
            self.n_units = most
            self.capped_to = 2 ** n
            warnings.warn(f"budget {budget} exceeds the 2^{n} = {2 ** n} distinct coalitions of this {n}-player "
                          f"game; using all {2 ** n} (the values are then exact)", stacklevel=3)
        self.design = self.sequence.design(0)
        self.order = np.arange(0)
        self.first_values = np.zeros(0)
        self.second_values = np.zeros(0)
        self.stop = stop
        self.done = 0

    def rounds(self, n_rounds: int):
        """Evaluate the next round of pairs; yield (round_number, units so far, is_last_round).
        One round when nothing can stop the run early; the first round holds a unit of every stratum."""
        if self.stop is None:
            edges = [self.n_units]
        else:
            first = min(self.n_units, len(self.sequence.ks))
            edges = sorted(set(np.linspace(first, self.n_units, n_rounds).round().astype(int).tolist()))
        for round_number, edge in enumerate(edges, start=1):
            firsts, seconds = [self.first_values], [self.second_values]
            while self.done < edge:
                upto = min(edge, self.done + self.CHUNK)
                rows = self.sequence.design(upto).first[self.done:upto]
                values = self.ledger(np.concatenate([rows, ~rows]))
                firsts.append(values[: len(rows)])
                seconds.append(values[len(rows):])
                self.done = upto
            self.first_values, self.second_values = np.concatenate(firsts), np.concatenate(seconds)
            self.design = self.sequence.design(self.done)
            self.order = np.arange(self.done)
            yield round_number, self.order, round_number == len(edges)

    def details(self) -> dict:
        out = {"saturated_sizes": self.design.saturated_strata.tolist(),
               "n_sampled_pairs": int(self.design.sampled[self.order[:self.done]].sum())}
        if self.capped_to is not None:
            out["budget_capped_to"] = self.capped_to
        return out


def regression_shapley(
    game: Game,
    budget: int,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    distribution: str = "leverage",
    n_bootstrap: int = 30,
    n_rounds: int = 8,
    size_degree: int | None = None,
    name: str | None = None,
    finish=None,
    extra_settings: dict | None = None,
) -> Values:
    """The shared loop of the regression estimators. `finish(run, units, n_sampled, coef)` may replace
    the last round's linear estimate (coef: that fit, size terms included) with a refined
    (phi, details), or return None to keep it (kernel_ridge.py); earlier rounds, which only feed
    stopping criteria, and the bootstrap standard errors stay linear."""
    n = game.n_players
    name = name or {"leverage": "leverage_shap", "kernel": "kernel_shap"}[distribution] + ("_size" if size_degree is not None else "")
    budget = require_budget(budget, n + 2, name, "v(empty), v(full) and n/2 complementary pairs to determine n values")
    check_size_degree(size_degree, name)
    rng = np.random.default_rng(seed)
    stop = start_stop(stop)
    run = PairedRun(game, budget, rng, distribution, stop)
    phi, stderrs = np.zeros(n), np.full(n, np.nan)
    for round_number, units, last in run.rounds(n_rounds):
        n_sampled = int(run.design.sampled[units].sum())
        args = (run.design, units, run.first_values, run.second_values, run.empty, run.full, n_sampled)
        coef = fit_linear(*args, size_degree)
        phi = coef[:n]
        stderrs = _bootstrap(*args, n_bootstrap if last else min(n_bootstrap, 10), rng, size_degree)
        if should_stop(stop, run.ledger, phi, stderrs, round_number):
            break
    details = run.details()
    if finish is not None:
        refined = finish(run, units, n_sampled, coef)
        if refined is not None:
            phi, more = refined
            details.update(more)
    settings = {"distribution": distribution, "n_bootstrap": n_bootstrap, "size_degree": size_degree, "budget": budget,
                **(extra_settings or {})}
    return make_values(game, run.ledger, name, phi, stderrs, settings=settings, seed=seed, details=details)


def _bootstrap(design, units, first_values, second_values, empty, full, n_sampled, n_bootstrap, rng, size_degree) -> np.ndarray:
    n = design.n
    sampled = units[design.sampled[units]]
    fixed = units[~design.sampled[units]]
    if n_bootstrap < 2 or len(sampled) < 2:
        return np.zeros(n) if len(sampled) == 0 else np.full(n, np.nan)
    replicates = np.empty((n_bootstrap, n))
    for b in range(n_bootstrap):
        redraw = sampled[rng.integers(0, len(sampled), size=len(sampled))]
        replicates[b] = fit_linear(design, np.concatenate([fixed, redraw]), first_values, second_values, empty, full,
                                   n_sampled, size_degree)[:n]
    return replicates.std(axis=0, ddof=1)


def kernel_shap(game: Game, budget: int, seed: int | None = None, stop: StoppingCriterion | None = None, **settings) -> Values:
    """Paired KernelSHAP with the efficiency constraint (sizes drawn by the Shapley kernel)."""
    return regression_shapley(game, budget, seed, stop, distribution="kernel", **settings)


def leverage_shap(game: Game, budget: int, seed: int | None = None, stop: StoppingCriterion | None = None, **settings) -> Values:
    """Leverage SHAP: sizes drawn uniformly (leverage scores), paired, without repeats."""
    return regression_shapley(game, budget, seed, stop, distribution="leverage", **settings)


def leverage_shap_size(game: Game, budget: int, seed: int | None = None, stop: StoppingCriterion | None = None,
                       size_degree: int = 3, **settings) -> Values:
    """Leverage SHAP whose regression also fits a smooth function of coalition size (size_basis).

    The size terms vanish at the empty and full coalitions, so they leave the Shapley values and
    efficiency alone; they absorb how the value bends with the number of players present (a
    saturating metric), which a model linear in the players cannot, and which otherwise lands in
    the residual as noise. benchmarks/estimators.py measures its error per evaluation against the others.
    """
    return regression_shapley(game, budget, seed, stop, distribution="leverage", size_degree=size_degree, **settings)
