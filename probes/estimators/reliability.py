"""What a run's own standard errors say about it: the error to expect and how stable its ranking is.

Every estimator's Values carry, in details, `expected_relative_error` = sqrt(sum stderr^2) / ||phi||
(the relative L2 error the sampling noise alone leaves) and two predictions of the Spearman
correlation two runs with different seeds would have if each erred by its standard errors:
- `expected_seed_spearman`: Monte Carlo around the estimate. Optimistic where most players' values
  are near zero and the noise is of their size: the estimate's spread there is itself noise, and
  the simulation counts it as signal (SmolLM2's 270 heads at 2,700 evaluations, chain_krr version
  3: 0.67 / 0.68 predicted, 0.43 measured between seeds).
- `expected_seed_spearman_deconvolved`: the same simulation around values drawn from their
  posterior under a prior estimated from the run itself (the nonparametric maximum-likelihood
  prior on a grid, "empirical Bayes deconvolution"), so the noise is not counted twice. Right when
  the standard errors are right (SmolLM2's heads: 0.47 / 0.50 at 2,700 evaluations against 0.43
  measured, 0.92 / 0.89 at 40,000 against 0.90); low when they overstate the error (the one-chain
  estimate at 2n, the bootstrap that does not refit the kernel step), so it is a lower end.
Below STABLE_RANKING_SPEARMAN (by the first) the run warns: the ranking is not yet stable at this
budget; the warning quotes both. The README's head-values table is this quantity measured between
seeds on SmolLM2's heads; the warning makes it live for any game.
"""

from __future__ import annotations

import warnings

import numpy as np

STABLE_RANKING_SPEARMAN = 0.8
DRAWS = 32
GRID_POINTS = 200  # support of the deconvolution prior
EM_ITERATIONS = 200
PRIOR_PLAYERS = 5000


class UnstableRankingWarning(UserWarning):
    """The budget is below what a stable ranking of the players needs (by the run's own errors)."""


def expected_relative_error(means: np.ndarray, stderrs: np.ndarray) -> float | None:
    means, stderrs = np.asarray(means, float), np.asarray(stderrs, float)
    norm = np.linalg.norm(means)
    if not np.isfinite(stderrs).all() or norm == 0:
        return None
    return float(np.sqrt(np.sum(stderrs**2)) / norm)


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, axis=-1), axis=-1).astype(float)


def expected_seed_spearman(means: np.ndarray, stderrs: np.ndarray, seed: int = 0) -> float | None:
    """Mean Spearman between two draws means + stderrs * z, z standard normal (fixed seed, so the
    number is a deterministic function of the run)."""
    means, stderrs = np.asarray(means, float), np.asarray(stderrs, float)
    if len(means) < 3 or not np.isfinite(stderrs).all():
        return None
    if not (stderrs > 0).any():
        return 1.0
    rng = np.random.default_rng(seed)
    return _spearman_of_draws(np.broadcast_to(means, (DRAWS, len(means))), stderrs, rng)


def _spearman_of_draws(centres: np.ndarray, stderrs: np.ndarray, rng: np.random.Generator) -> float:
    a = _ranks(centres + stderrs * rng.standard_normal(centres.shape))
    b = _ranks(centres + stderrs * rng.standard_normal(centres.shape))
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return float(np.mean((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))


def deconvolved_seed_spearman(means: np.ndarray, stderrs: np.ndarray, seed: int = 0) -> float | None:
    """Mean Spearman between two simulated runs truth + stderrs * z, the truth drawn per player from
    its posterior given its estimate, under the prior on a grid that maximises the likelihood of
    all the estimates (EM on the grid weights; Koenker & Mizera's NPMLE, solved the simple way)."""
    means, stderrs = np.asarray(means, float), np.asarray(stderrs, float)
    if len(means) < 3 or not np.isfinite(stderrs).all():
        return None
    if not (stderrs > 0).any():
        return 1.0
    scale = max(float(np.abs(means).max()), float(stderrs.max()), 1e-300)
    stderrs = np.maximum(stderrs, 1e-9 * scale)
    grid = np.linspace(means.min() - 3 * stderrs.max(), means.max() + 3 * stderrs.max(), GRID_POINTS)
    log_lik = -0.5 * ((means[:, None] - grid[None, :]) / stderrs[:, None]) ** 2
    lik = np.exp(log_lik - log_lik.max(1, keepdims=True))  # per player: the scale cancels in the posterior
    rng = np.random.default_rng(seed)
    # The prior from at most PRIOR_PLAYERS of them (time and memory stay bounded for token players).
    fit = lik if len(means) <= PRIOR_PLAYERS else lik[rng.choice(len(means), PRIOR_PLAYERS, replace=False)]
    weights = np.full(GRID_POINTS, 1.0 / GRID_POINTS)
    for _ in range(EM_ITERATIONS):
        posterior = fit * weights
        posterior /= posterior.sum(1, keepdims=True)
        weights = posterior.mean(0)
    posterior = lik * weights
    cdf = np.cumsum(posterior / posterior.sum(1, keepdims=True), axis=1)
    truths = np.stack([grid[np.minimum((cdf < rng.random((len(means), 1))).sum(1), GRID_POINTS - 1)]
                       for _ in range(DRAWS)])
    return _spearman_of_draws(truths, stderrs, rng)


def reliability_details(estimator: str, means, stderrs, n_evaluations: int) -> dict:
    """The two numbers above, and a warning when the ranking is not yet stable."""
    error = expected_relative_error(means, stderrs)
    spearman = expected_seed_spearman(means, stderrs)
    deconvolved = deconvolved_seed_spearman(means, stderrs)
    if spearman is not None and spearman < STABLE_RANKING_SPEARMAN:
        n = len(np.asarray(means))
        warnings.warn(
            f"{estimator}: at {n_evaluations} evaluations ({n_evaluations / n:.1f} per player) the run's own standard "
            f"errors put the expected relative error at {error:.2f} and the seed-to-seed Spearman of the ranking at "
            f"{spearman:.2f} (around the estimate; {deconvolved:.2f} once the noise in the estimate's own spread is "
            f"taken out), below the {STABLE_RANKING_SPEARMAN} a stable ranking needs. Raise the budget ("
            "the README's head-values table shows how the agreement grows with evaluations) or rank only "
            "the top-k.", UnstableRankingWarning, stacklevel=4)
    return {"expected_relative_error": error, "expected_seed_spearman": spearman,
            "expected_seed_spearman_deconvolved": deconvolved}
