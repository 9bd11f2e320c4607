"""Priors an estimator may shrink toward: checked against the game's players once, here."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from probes.errors import ProbeError
from probes.game import Game
from probes.values import Values


def resolve_prior(prior, game: Game, total: float, estimator: str) -> np.ndarray:
    """The prior as an array in the game's player order. None -> the equal split total / n (the
    values of a game that cannot tell its players apart). Accepts n numbers, a dict name -> value
    or a Values for the same players (any order); anything else is refused with the reason."""
    players = list(game.players)
    n = len(players)
    if prior is None:
        return np.full(n, total / n)
    if isinstance(prior, Values):
        if prior.fingerprint and game.fingerprint and prior.fingerprint_id != game.fingerprint_id:
            raise ProbeError(f"{estimator}: the prior Values were computed on another game "
                             f"(id {prior.fingerprint_id}, this game {game.fingerprint_id}); pass values for this game")
        prior = dict(zip(prior.names, prior.means))
    if isinstance(prior, Mapping):
        missing = [p for p in players if p not in prior]
        extra = [p for p in prior if p not in set(players)]
        if missing or extra:
            raise ProbeError(f"{estimator}: the prior's players differ from the game's: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unknown {extra[:5]}{'...' if len(extra) > 5 else ''}; "
                             "give one value per game player")
        prior = [prior[p] for p in players]
    array = np.asarray(prior, dtype=float)
    if array.shape != (n,):
        raise ProbeError(f"{estimator}: the prior must hold one value per player ({n}), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ProbeError(f"{estimator}: the prior holds non-finite values; pass finite numbers (or None)")
    return array
