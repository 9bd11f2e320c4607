"""What a run's own standard errors say about it: the error to expect and how stable its ranking is.

Every estimator's Values carry, in details, `expected_relative_error` = sqrt(sum stderr^2) / ||phi||
(the relative L2 error the sampling noise alone leaves) and `expected_seed_spearman`, the Spearman
correlation two runs with different seeds would have if each erred by its standard errors (Monte
Carlo around the estimate). Below STABLE_RANKING_SPEARMAN the run warns: the ranking is not yet
stable at this budget. The README's head-values table is this quantity measured between seeds on
SmolLM2's heads; the warning makes it live for any game.
"""

from __future__ import annotations

import warnings

import numpy as np

STABLE_RANKING_SPEARMAN = 0.8
DRAWS = 32


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
    a = _ranks(means + stderrs * rng.standard_normal((DRAWS, len(means))))
    b = _ranks(means + stderrs * rng.standard_normal((DRAWS, len(means))))
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return float(np.mean((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))


def reliability_details(estimator: str, means, stderrs, n_evaluations: int) -> dict:
    """The two numbers above, and a warning when the ranking is not yet stable."""
    error = expected_relative_error(means, stderrs)
    spearman = expected_seed_spearman(means, stderrs)
    if spearman is not None and spearman < STABLE_RANKING_SPEARMAN:
        n = len(np.asarray(means))
        warnings.warn(
            f"{estimator}: at {n_evaluations} evaluations ({n_evaluations / n:.1f} per player) the run's own standard "
            f"errors put the expected relative error at {error:.2f} and the seed-to-seed Spearman of the ranking at "
            f"{spearman:.2f}, below the {STABLE_RANKING_SPEARMAN} a stable ranking needs. Raise the budget ("
            "the README's head-values table shows how the agreement grows with evaluations) or rank only "
            "the top-k.", UnstableRankingWarning, stacklevel=4)
    return {"expected_relative_error": error, "expected_seed_spearman": spearman}
