"""Hierarchical (Owen) values for grouped players, e.g. heads grouped by layer.

The Owen value is the average marginal contribution over the orders that keep every group
contiguous: groups arrive in random order, and within a group its players arrive in random order.
Sampling exactly those orders (with antithetic reversal, which keeps groups contiguous) gives:
- player values: each head's value inside the layer structure;
- group values: the sum of a group's Owen values, which equals the Shapley value of the game
  played by whole groups (quotient game), e.g. a layer's value as a unit.
Groups come from a function of the player name, an explicit list, or names like `L3.H7`.
Deeper trees (documents -> sentences -> words -> tokens): probes.estimators.owen_tree, or
`estimate(game, tree=[...])`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from probes.errors import ProbeError
from probes.estimators._common import Ledger, make_values, mean_and_stderr, require_budget, start_stop
from probes.estimators.owen_tree import antithetic_order_rounds, owen_tree
from probes.game import Game
from probes.stopping import StoppingCriterion
from probes.values import Values

LAYER_OF_HEAD = re.compile(r"^(L\d+)\.")


def groups_from(players: Sequence[str], groups: Callable[[str], str] | Sequence[str] | None) -> list[str]:
    if groups is None:
        labels = []
        for name in players:
            match = LAYER_OF_HEAD.match(name)
            if match is None:
                raise ProbeError(f"cannot parse a group from player {name!r}; pass groups=function or a list of labels")
            labels.append(match[1])
        return labels
    if callable(groups):
        return [str(groups(name)) for name in players]
    labels = [str(g) for g in groups]
    if len(labels) != len(players):
        raise ProbeError(f"groups has {len(labels)} labels for {len(players)} players")
    return labels


@dataclass
class HierarchicalValues:
    groups: Values
    players: Values


def draw_group_orders(rng: np.random.Generator, n_units: int, members: list[np.ndarray]) -> np.ndarray:
    """[n_units, 2, n] orders keeping each group contiguous, each with its reverse."""
    rows = []
    for _ in range(n_units):
        order = np.concatenate([rng.permutation(members[g]) for g in rng.permutation(len(members))])
        rows.append([order, order[::-1]])
    return np.asarray(rows)


def owen_values(
    game: Game,
    budget: int,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    groups: Callable[[str], str] | Sequence[str] | None = None,
    n_rounds: int = 8,
) -> HierarchicalValues:
    n = game.n_players
    labels = groups_from(game.players, groups)
    group_names = list(dict.fromkeys(labels))
    members = [np.array([i for i, label in enumerate(labels) if label == g]) for g in group_names]
    budget = require_budget(budget, 2 * n, "owen", "v(empty), v(full) and one group-contiguous order with its reverse")
    rng = np.random.default_rng(seed)
    stop = start_stop(stop)
    ledger = Ledger(game)
    player_samples = antithetic_order_rounds(ledger, budget, n_rounds, stop,
                                             lambda n_units: draw_group_orders(rng, n_units, members))
    group_samples = np.stack([player_samples[:, m].sum(axis=1) for m in members], axis=1)
    settings = {"groups": labels, "budget": budget}
    player_means, player_stderrs = mean_and_stderr(player_samples)
    group_means, group_stderrs = mean_and_stderr(group_samples)
    players = make_values(game, ledger, "owen", player_means, player_stderrs, settings=settings, seed=seed,
                          details={"group_names": group_names, "group_values": group_means.tolist()})
    group_values = make_values(game, ledger, "owen_groups", group_means, group_stderrs, settings=settings, seed=seed,
                               names=group_names)
    return HierarchicalValues(groups=group_values, players=players)


def estimate(game: Game, budget: int | None = None, seed: int | None = None, stop: StoppingCriterion | None = None,
             *, tree: Sequence | None = None, **settings) -> Values:
    """Player-level Owen values (group values in details); use owen_values for both as Values.

    With tree=[nested lists of player indices or names], the values of that nested tree instead
    (owen_tree: exact when budget is None, sampled otherwise; every level's values in
    details["levels"]; owen_tree returns them as a TreeValues)."""
    if tree is not None:
        result = owen_tree(game, tree, budget, seed, stop, **settings)
        result.players.details["levels"] = [level.as_dict() for level in result.levels]
        return result.players
    return owen_values(game, budget, seed, stop, **settings).players
