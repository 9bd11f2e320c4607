"""Owen values over a nested tree of players (documents -> sentences -> words -> tokens, or
layers -> heads), with a value for every node and efficiency at every level.

The value of a tree (Owen 1977; for more than one level of nesting also called the Winter value)
is the average marginal contribution of a player over the orders that keep every subtree
contiguous: at every node its children arrive in uniformly random order, each child's whole
subtree arriving before the next child starts. Exactly, for a player i whose ancestors are
root = a_0, a_1, ..., a_k = i:

    phi_i = sum over S_0, ..., S_{k-1}  prod_l |S_l|! (m_l - 1 - |S_l|)! / m_l!  [v(C + i) - v(C)]

where S_l ranges over the subsets of a_{l+1}'s siblings (m_l children of a_l in all) and C is the
union of the players under the chosen siblings. A node's value is the sum of its players' values,
which makes it the value of the node in the same construction one level up (the quotient game).
Every level sums to v(N) - v(empty), exactly, also when sampled: each sampled order telescopes.
A tree whose groups are all single players gives the Shapley value; a one-level tree of groups
gives the `owen` estimator's values.

The tree is nested lists whose leaves are player indices or player names, e.g. [[0, 1], [2, [3, 4]]].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import factorial
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from probes.errors import BudgetTooSmallError, ProbeError, TooManyPlayersError
from probes.estimators._common import Ledger, make_values, mean_and_stderr, require_budget, should_stop, start_stop
from probes.estimators.permutation import walk_marginals
from probes.game import Game
from probes.stopping import StoppingCriterion
from probes.values import Values

MAX_EXACT_COALITIONS = 1 << 18  # structural coalitions an exact run may ask for


@dataclass
class TreeNode:
    """One node: its name, depth (root = 0), parent index, child node indices and players under it."""

    name: str
    depth: int
    parent: int | None
    children: list[int]
    players: list[int]


@dataclass
class SpanTree:
    """A validated tree over the players 0..n-1; nodes[0] is the root, leaves are players."""

    nodes: list[TreeNode]
    n_players: int

    @property
    def depth(self) -> int:
        return max(node.depth for node in self.nodes)

    def leaf_of(self, player: int) -> int:
        return next(k for k, node in enumerate(self.nodes) if not node.children and node.players == [player])

    def level(self, depth: int) -> list[int]:
        """Nodes that partition the players at this depth: the depth's nodes plus shallower leaves."""
        return [k for k, node in enumerate(self.nodes)
                if node.depth == depth or (node.depth < depth and not node.children)]

    def as_nested(self) -> list:
        def nested(k):
            node = self.nodes[k]
            return node.players[0] if not node.children else [nested(c) for c in node.children]
        return nested(0)


def span_tree(tree: Sequence, players: Sequence[str], names: dict[tuple, str] | None = None) -> SpanTree:
    """Validate nested lists of player indices or names into a SpanTree.

    Internal nodes are named by their path ("g1.0" is the first child of the second child of the
    root) unless `names` maps a path tuple to a name. Every player must appear exactly once."""
    if isinstance(tree, (str, int, np.integer)) or not isinstance(tree, Sequence) or len(tree) == 0:
        raise ProbeError("tree must be a non-empty nested list of player indices or names, e.g. [[0, 1], [2, 3]]")
    players = list(players)
    nodes: list[TreeNode] = []

    def player_index(leaf) -> int:
        if isinstance(leaf, (int, np.integer)) and not isinstance(leaf, bool):
            if not 0 <= leaf < len(players):
                raise ProbeError(f"tree leaf {leaf} is not a player index (0..{len(players) - 1})")
            return int(leaf)
        if isinstance(leaf, str):
            if leaf not in players:
                raise ProbeError(f"tree leaf {leaf!r} is not a player; players are {players[:10]}...")
            return players.index(leaf)
        raise ProbeError(f"tree leaves must be player indices or names, got {leaf!r}")

    def add(item, path: tuple, parent: int | None) -> int:
        k = len(nodes)
        if isinstance(item, (str, int, np.integer)):
            index = player_index(item)
            nodes.append(TreeNode(players[index], len(path), parent, [], [index]))
            return k
        if not isinstance(item, Sequence) or len(item) == 0:
            raise ProbeError(f"tree node at path {list(path)} is empty or not a list; every group needs a member")
        default = "root" if not path else "g" + ".".join(str(p) for p in path)
        nodes.append(TreeNode((names or {}).get(path, default), len(path), parent, [], []))
        for position, child in enumerate(item):
            c = add(child, path + (position,), k)
            nodes[k].children.append(c)
            nodes[k].players.extend(nodes[c].players)
        return k

    add(tree, (), None)
    seen = nodes[0].players
    repeated = sorted({players[i] for i in seen if seen.count(i) > 1})
    missing = [players[i] for i in range(len(players)) if i not in seen]
    if repeated or missing:
        raise ProbeError(f"tree must hold every player exactly once; repeated {repeated}, missing {missing[:10]}")
    node_names = [node.name for node in nodes]
    if len(set(node_names)) != len(node_names):
        raise ProbeError("tree node names must be unique (a group name equals a player name?)")
    return SpanTree(nodes, len(players))


def tree_from_groups(labels: Sequence[str]) -> tuple[list[list[int]], dict[tuple, str]]:
    """The one-level tree of the `owen` estimator's group labels, with the groups' names."""
    group_names = list(dict.fromkeys(labels))
    tree = [[i for i, label in enumerate(labels) if label == g] for g in group_names]
    return tree, {(k,): g for k, g in enumerate(group_names)}


@dataclass
class TreeValues:
    """Owen values of a tree: the players' values and one `Values` per level of the tree.

    levels[d - 1] holds the nodes at depth d (shallower leaves carried down), so every level is a
    partition of the players and sums to v(N) - v(empty); levels[-1] is the players' level."""

    players: Values
    levels: list[Values]
    tree: list = field(default_factory=list)
    parents: dict[str, str | None] = field(default_factory=dict)

    def node(self, name: str) -> float:
        for level in self.levels:
            if name in level.names:
                return level[name]
        raise KeyError(f"no node {name!r} in this tree")

    def render(self, labels: dict[str, str] | None = None, *, digits: int = 4) -> str:
        """The tree as indented text, one node per line with its value, children under their group in
        level order (e.g. SCAR's sentences and segments: labels={name: segment text})."""
        labels = labels or {}
        children: dict[str | None, list[str]] = {}
        for name, parent in self.parents.items():  # insertion order is the tree's order
            children.setdefault(parent, []).append(name)
        total = float(np.sum(self.levels[0].means)) if self.levels else 0.0
        lines: list[str] = []

        def walk(name: str, depth: int) -> None:
            value = total if self.parents.get(name, "") is None else self.node(name)
            label = f"  {labels[name]!r}" if name in labels else ""
            lines.append(f"{'    ' * depth}{name}: {value:+.{digits}f}{label}")
            for child in children.get(name, []):
                walk(child, depth + 1)

        for root in children.get(None, []):
            walk(root, 0)
        return "\n".join(lines)

    def to_json_dict(self) -> dict[str, Any]:
        return {"schema": "model-surgery.tree-values", "version": 1, "tree": self.tree, "parents": self.parents,
                "players": self.players.to_json_dict(), "levels": [level.to_json_dict() for level in self.levels]}

    def save(self, path: str | PathLike) -> Path:
        from surgery.atomic_io import write_json_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(path, self.to_json_dict())

    @classmethod
    def from_json_dict(cls, data: dict) -> TreeValues:
        if not isinstance(data, dict) or data.get("schema") != "model-surgery.tree-values":
            raise ProbeError("not a tree-values JSON (schema model-surgery.tree-values)")
        return cls(players=Values.from_json_dict(data["players"]),
                   levels=[Values.from_json_dict(level) for level in data["levels"]],
                   tree=data.get("tree", []), parents=dict(data.get("parents", {})))


def exact_owen_tree(game: Game, tree: Sequence, *, names: dict[tuple, str] | None = None,
                    max_coalitions: int = MAX_EXACT_COALITIONS) -> TreeValues:
    """Owen values of the tree by the formula above (structural coalitions only, one batched request)."""
    structure = span_tree(tree, game.players, names)
    n = game.n_players
    total = 2 * sum(_structural_count(structure, player) for player in range(n))
    if total > max_coalitions:
        raise TooManyPlayersError(f"exact Owen values of this tree need {total:,} coalitions (limit {max_coalitions:,}); "
                                  "use owen_tree(game, tree, budget=..., seed=...) to sample, or a flatter tree")
    blocks, weights = zip(*(_structural_coalitions(structure, player, n) for player in range(n)))
    ledger = Ledger(game)
    ledger.empty_and_full()
    without = np.concatenate(blocks)
    with_player = without.copy()
    with_player[np.arange(len(without)), np.repeat(np.arange(n), [len(b) for b in blocks])] = True
    values = ledger(np.concatenate([with_player, without]))
    deltas = values[: len(without)] - values[len(without):]
    splits = np.cumsum([len(b) for b in blocks])[:-1]
    means = np.array([(w * d).sum() for w, d in zip(weights, np.split(deltas, splits))])
    samples = means[None, :]
    return _tree_result(game, ledger, structure, samples, exact=True, seed=None, settings={"tree": structure.as_nested()})


def _structural_count(structure: SpanTree, player: int) -> int:
    """How many coalitions C the formula has for one player: prod over ancestors of 2^(siblings)."""
    count, k = 1, structure.leaf_of(player)
    while structure.nodes[k].parent is not None:
        k = structure.nodes[k].parent
        count *= 1 << (len(structure.nodes[k].children) - 1)
    return count


def _structural_coalitions(structure: SpanTree, player: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """All coalitions C of the formula for one player (rows) and their weights."""
    rows, weights = np.zeros((1, n), dtype=bool), np.ones(1)
    k = structure.leaf_of(player)
    while structure.nodes[k].parent is not None:
        parent = structure.nodes[structure.nodes[k].parent]
        siblings = [c for c in parent.children if c != k]
        m = len(parent.children)
        codes = np.arange(1 << len(siblings))
        chosen = ((codes[:, None] >> np.arange(len(siblings))) & 1).astype(bool)
        level_rows = np.zeros((len(codes), n), dtype=bool)
        for s, sibling in enumerate(siblings):
            level_rows[np.ix_(chosen[:, s], structure.nodes[sibling].players)] = True
        sizes = chosen.sum(axis=1)
        level_w = np.array([factorial(s) * factorial(m - 1 - s) / factorial(m) for s in sizes])
        rows = (rows[:, None, :] | level_rows[None, :, :]).reshape(-1, n)
        weights = (weights[:, None] * level_w[None, :]).reshape(-1)
        k = structure.nodes[k].parent
    return rows, weights


def draw_tree_orders(rng: np.random.Generator, n_units: int, structure: SpanTree) -> np.ndarray:
    """[n_units, 2, n] orders keeping every subtree contiguous, each with its reverse."""
    def order(k):
        node = structure.nodes[k]
        if not node.children:
            return node.players
        return [p for c in rng.permutation(node.children) for p in order(c)]

    rows = []
    for _ in range(n_units):
        forward = np.array(order(0))
        rows.append([forward, forward[::-1]])
    return np.asarray(rows)


def antithetic_order_rounds(ledger: Ledger, budget: int, n_rounds: int, stop, draw_orders) -> np.ndarray:
    """Per-unit player samples [units, n] from orders drawn as antithetic pairs (draw_orders(k) ->
    [k, 2, n]), spent in rounds a stopping criterion can end; each sample is the pair's mean marginal.
    Shared by the one-level and the tree Owen samplers."""
    n = ledger.game.n_players
    empty, full = ledger.empty_and_full()
    per_unit = 2 * (n - 1)
    units_per_round = max(1, (budget - 2) // per_unit // n_rounds)
    samples, round_number = [], 0
    while budget - ledger.spent >= per_unit:
        n_units = max(1, min(units_per_round, (budget - ledger.spent) // per_unit))
        marginals, _ = walk_marginals(ledger, draw_orders(n_units).reshape(-1, n), empty, full, None)
        samples.append(marginals.reshape(n_units, 2, n).mean(axis=1))
        round_number += 1
        means, stderrs = mean_and_stderr(np.concatenate(samples))
        if should_stop(stop, ledger, means, stderrs, round_number):
            break
    return np.concatenate(samples)


def owen_tree(game: Game, tree: Sequence, budget: int | None = None, seed: int | None = None,
              stop: StoppingCriterion | None = None, *, names: dict[tuple, str] | None = None,
              n_rounds: int = 8) -> TreeValues:
    """Owen values of the tree from sampled tree-contiguous orders (antithetic pairs), in rounds
    that a stopping criterion can end; exact (no budget needed) when budget is None."""
    if budget is None:
        return exact_owen_tree(game, tree, names=names)
    structure = span_tree(tree, game.players, names)
    n = game.n_players
    if n < 2:
        raise BudgetTooSmallError("a sampled tree value needs two players; use budget=None for the exact value")
    per_unit = 2 * (n - 1)
    budget = require_budget(budget, 2 + per_unit, "owen_tree", "v(empty), v(full) and one tree-contiguous order with its reverse")
    rng = np.random.default_rng(seed)
    stop = start_stop(stop)
    ledger = Ledger(game)
    samples = antithetic_order_rounds(ledger, budget, n_rounds, stop,
                                      lambda n_units: draw_tree_orders(rng, n_units, structure))
    return _tree_result(game, ledger, structure, samples, exact=False, seed=seed,
                        settings={"tree": structure.as_nested(), "budget": budget})


def _tree_result(game, ledger, structure: SpanTree, samples: np.ndarray, *, exact: bool, seed, settings) -> TreeValues:
    """Player values and per-level node values (sums of their players, per sample, for honest errors)."""
    estimator = "exact_owen_tree" if exact else "owen_tree"

    def summarise(columns):
        means, stderrs = mean_and_stderr(columns)
        return means, np.zeros_like(means) if exact else stderrs

    means, stderrs = summarise(samples)
    players = make_values(game, ledger, estimator, means, stderrs, settings=settings, seed=seed)
    levels = []
    for depth in range(1, structure.depth + 1):
        nodes = structure.level(depth)
        columns = np.stack([samples[:, structure.nodes[k].players].sum(axis=1) for k in nodes], axis=1)
        level_means, level_stderrs = summarise(columns)
        levels.append(make_values(game, ledger, estimator, level_means, level_stderrs,
                                  settings=settings, seed=seed, names=[structure.nodes[k].name for k in nodes],
                                  details={"depth": depth}))
    parents = {node.name: None if node.parent is None else structure.nodes[node.parent].name for node in structure.nodes}
    return TreeValues(players=players, levels=levels, tree=structure.as_nested(), parents=parents)
