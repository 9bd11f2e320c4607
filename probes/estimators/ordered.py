"""Estimators for ordered players (layers), where interactions are mostly between neighbours.

sliding_window_values (SV-NUP, Sun et al. 2025): each player's Shapley value is computed exactly in
the small game of its window of `window` consecutive players, everyone outside the window kept
present (the rest of the model intact). Cost: the distinct coalitions of all windows, about
(n - window + 1) * 2^window, shared between overlapping windows. The values are not efficient
for the whole game (the efficiency gap reports by how much); that is the method's trade.

neighbourhood_values (Zhang, Dong & Kawaguchi 2024): coalitions are the full model minus one
contiguous block of 1..max_window players. A player's value averages, over the blocks it ends,
the value lost when it joins the block: v(full minus block without it) - v(full minus block).
Cost: sum over block lengths l of (n - l + 1) evaluations.

Both are deterministic given the game: stderrs are 0 (their error is modelling, not noise).
"""

from __future__ import annotations

import numpy as np

from probes.errors import ProbeError
from probes.estimators._common import Ledger, make_values, require_budget, shapley_weights
from probes.game import Game
from probes.stopping import StoppingCriterion
from probes.values import Values


def window_start(i: int, n: int, window: int) -> int:
    """First player of the window around i (centred, shifted inward at the ends)."""
    return int(min(max(i - window // 2, 0), n - window))


def _window_coalitions(n: int, start: int, window: int) -> np.ndarray:
    codes = np.arange(1 << window)
    inside = ((codes[:, None] >> np.arange(window)) & 1).astype(bool)
    rows = np.ones((len(codes), n), dtype=bool)
    rows[:, start : start + window] = inside
    return rows


def sliding_window_values(
    game: Game,
    budget: int | None = None,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    window: int = 4,
) -> Values:
    n = game.n_players
    if not 1 <= window <= min(n, 16):
        raise ProbeError(f"window must be between 1 and min(n_players, 16) = {min(n, 16)}, got {window}")
    starts = sorted({window_start(i, n, window) for i in range(n)})
    blocks = {s: _window_coalitions(n, s, window) for s in starts}
    everything = np.concatenate([np.zeros((1, n), dtype=bool), *blocks.values()])
    needed = len(np.unique(np.packbits(everything, axis=1), axis=0))
    budget = require_budget(budget if budget is not None else needed, needed, "sliding_window",
                            f"all 2^{window} coalitions of each of the {len(starts)} windows")
    ledger = Ledger(game)
    ledger.empty_and_full()
    values_of = dict(zip(starts, np.split(ledger(np.concatenate(list(blocks.values()))), len(starts))))
    w = shapley_weights(window)
    codes = np.arange(1 << window)
    sizes = np.bitwise_count(codes).astype(int) if hasattr(np, "bitwise_count") else np.array([bin(c).count("1") for c in codes])
    means = np.empty(n)
    for i in range(n):
        start = window_start(i, n, window)
        local = i - start
        member = ((codes >> local) & 1).astype(bool)
        v = values_of[start]
        # Exact Shapley value of local player `local` in the window's 2^window-coalition game.
        means[i] = (w[sizes[member] - 1] * v[member]).sum() - (w[np.minimum(sizes[~member], window - 1)] * v[~member]).sum()
    return make_values(game, ledger, "sliding_window", means, np.zeros(n), settings={"window": window}, seed=None,
                       details={"window_starts": starts})


def neighbourhood_values(
    game: Game,
    budget: int | None = None,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    max_window: int = 3,
) -> Values:
    n = game.n_players
    if not 1 <= max_window <= n:
        raise ProbeError(f"max_window must be between 1 and n_players = {n}, got {max_window}")
    needed = 2 + sum(n - length + 1 for length in range(1, max_window + 1)) - (1 if max_window == n else 0)
    budget = require_budget(budget if budget is not None else needed, needed, "neighbourhood",
                            f"the full model minus every contiguous block of 1..{max_window} players")
    ledger = Ledger(game)
    ledger.empty_and_full()
    blocks = [(a, length) for length in range(1, max_window + 1) for a in range(n - length + 1)]
    rows = np.ones((len(blocks), n), dtype=bool)
    for r, (a, length) in enumerate(blocks):
        rows[r, a : a + length] = False
    removed_value = dict(zip(blocks, ledger(rows)))
    full = ledger.empty_and_full()[1]
    sums, counts = np.zeros(n), np.zeros(n)
    for (a, length), value in removed_value.items():
        last = a + length - 1  # the block ends at `last`; its marginal is what adding it back restores
        before = full if length == 1 else removed_value[(a, length - 1)]
        sums[last] += before - value
        counts[last] += 1
    means = sums / counts
    return make_values(game, ledger, "neighbourhood", means, np.zeros(n), settings={"max_window": max_window},
                       seed=None, details={"n_blocks": len(blocks)})
