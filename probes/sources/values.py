"""Shapley values of data sources: exact over all 2^n coalitions for n <= MAX_EXACT_SOURCES, else any
estimator of probes.estimators with a budget (each coalition is cheap under arithmetic composition)."""

from __future__ import annotations

from probes.errors import TooManyPlayersError
from probes.estimators import estimate
from probes.game import Game
from probes.values import Values

MAX_EXACT_SOURCES = 12
DEFAULT_BUDGET_PER_SOURCE = 20


def source_values(game: Game, *, estimator: str | None = None, budget: int | None = None, seed: int = 0,
                  **settings) -> Values:
    """Values of the game's sources. estimator None: "exact" up to MAX_EXACT_SOURCES sources, else the
    default estimator with `budget` (default DEFAULT_BUDGET_PER_SOURCE per source). Asking for exact on
    more sources is refused before anything is evaluated."""
    n = game.n_players
    if estimator is None:
        estimator = "exact" if n <= MAX_EXACT_SOURCES else None
    if estimator == "exact":
        if n > MAX_EXACT_SOURCES:
            raise TooManyPlayersError(
                f"exact values are limited to {MAX_EXACT_SOURCES} sources (2^{MAX_EXACT_SOURCES} coalitions); "
                f"this game has {n}. Use a sampling estimator with a budget, e.g. estimator='chain_krr', "
                f"budget={20 * n}")
        return estimate(game, estimator="exact", max_players=MAX_EXACT_SOURCES)
    if budget is None:
        budget = DEFAULT_BUDGET_PER_SOURCE * n
    return estimate(game, budget=budget, seed=seed, estimator=estimator, **settings)
