"""Conversions to and from shapiq (checked against shapiq 1.4.1), so shapiq's approximators can
run on our games and their results can be saved, compared and pruned like ours.

- to_shapiq_game(game): a `shapiq.Game` whose value function calls ours (batched, deduplicated,
  store-backed, counted). Not normalized: values are the game's own, v(empty) included.
- from_shapiq_game(shapiq_game, players=None): our `Game` around a shapiq game.
- to_interaction_values(values): first-order "SV" `InteractionValues` (baseline = v(empty)).
- from_interaction_values(iv, ...): our `Values` from the first-order entries of shapiq's result.
- run_shapiq_approximator(game, approximator_cls, budget, seed): `Values` from any shapiq
  Shapley-value approximator (e.g. shapiq.KernelSHAP), with our provenance fields filled in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from probes.game import Game
from probes.values import Values


def to_shapiq_game(game: Game):
    import shapiq

    class _OurGame(shapiq.Game):
        def __init__(self) -> None:
            super().__init__(n_players=game.n_players, normalize=False, player_names=list(game.players))

        def value_function(self, coalitions: np.ndarray) -> np.ndarray:
            return game(np.asarray(coalitions, dtype=bool))

    return _OurGame()


def from_shapiq_game(shapiq_game, players: Sequence[str] | None = None, fingerprint: dict | None = None, **kwargs: Any) -> Game:
    n = shapiq_game.n_players
    names = list(players) if players is not None else [f"p{i}" for i in range(n)]
    # Calling the shapiq game (not its value_function) keeps its own normalization and lookups.
    return Game(names, lambda coalitions: np.asarray(shapiq_game(coalitions), dtype=float), fingerprint, **kwargs)


def to_interaction_values(values: Values):
    import shapiq

    n = values.n_players
    lookup = {(): 0, **{(i,): i + 1 for i in range(n)}}
    baseline = 0.0 if values.empty_value is None else float(values.empty_value)
    return shapiq.InteractionValues(
        values=np.concatenate([[baseline], values.means]),
        index="SV",
        max_order=1,
        min_order=0,
        n_players=n,
        interaction_lookup=lookup,
        estimated=values.estimator != "exact",
        estimation_budget=int(values.n_evaluations),
        baseline_value=baseline,
    )


def from_interaction_values(
    interaction_values,
    names: Sequence[str] | None = None,
    *,
    estimator: str = "shapiq",
    game: Game | None = None,
    **kwargs: Any,
) -> Values:
    n = interaction_values.n_players
    means = np.array([interaction_values[(i,)] for i in range(n)], dtype=float)
    if names is None:
        names = list(game.players) if game is not None else [f"p{i}" for i in range(n)]
    fields: dict[str, Any] = {
        "n_evaluations": int(interaction_values.estimation_budget or 0),
        "empty_value": float(interaction_values.baseline_value),
    }
    if game is not None:
        fields.update(fingerprint=game.fingerprint, empty_value=game.empty_value, full_value=game.full_value)
    fields.update(kwargs)
    # shapiq approximators report no standard errors: NaN says "unknown", not "exact".
    return Values(names=list(names), means=means, stderrs=np.full(n, np.nan), estimator=estimator, **fields)


def run_shapiq_approximator(game: Game, approximator_cls, budget: int, seed: int | None = None, **settings: Any) -> Values:
    """Run a shapiq Shapley-value approximator (index "SV") on our game and return our Values."""
    approximator = approximator_cls(n=game.n_players, random_state=seed, **settings)
    before = game.n_evaluations
    result = approximator.approximate(budget, to_shapiq_game(game))
    return from_interaction_values(
        result, game=game, estimator=f"shapiq.{approximator_cls.__name__}", seed=seed,
        settings={"budget": budget, **settings},
        n_evaluations=int(result.estimation_budget or (game.n_evaluations - before)),
    )
