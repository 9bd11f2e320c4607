"""Second order: the pairwise Shapley interaction matrix and the directed meta-attribution
(the metagame, seed 003), for any `Game` (tokens, segments, heads).

Meta-attribution: for a first-order attribution ("base") nu_i(T) = i's attribution in the game
restricted to T + i (players outside T + i absent), phi_{j->i} is the Shapley value of j in the
game T -> nu_i(T) over the players other than i. By efficiency of that Shapley value,

    phi_i = nu_i(N - i) = nu_i(empty) + sum_{j != i} phi_{j->i},   nu_i(empty) = v({i}) - v(empty).

Symmetry. When the base is a semivalue (Shapley, Banzhaf, leave-one-out: any attribution
sum_{S in T} p_|T|(|S|) [v(S + i) - v(S)] whose weights satisfy p_{t+1}(s+1) + p_{t+1}(s) = p_t(s)),
phi_{j->i} = sum_{S in N - {i, j}} q(|S|) [v(S+i+j) - v(S+i) - v(S+j) + v(S)], a cardinal interaction
index; the bracket is symmetric in i and j, so the matrix is symmetric. With the leave-one-out base
q is the Shapley interaction index's weight: phi_{j->i} = I_ij. A directed matrix needs a base that
is not a semivalue: `gradient_base(grad_fn)` (gradient x input of a relaxed value at T + i) or any
callable base(i, coalitions) -> nu_i at those coalitions.

Exact for small games (all 2^n coalitions, or 2^(n-1) base calls per player); sampled beyond it:
semivalue bases by importance-weighted antithetic pair samples (interaction.sample_pair_deltas),
callable bases by antithetic permutations of each player's game nu_i.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import comb

from probes.errors import ProbeError, TooManyPlayersError
from probes.estimators._common import Ledger, shapley_weights
from probes.estimators.exact import all_coalitions, evaluate_all, shapley_from_table
from probes.estimators.interaction import interaction_values
from probes.estimators.permutation import permutation_shapley
from probes.game import Game
from probes.interaction_matrix import InteractionMatrix
from probes.stopping import StoppingCriterion

SEMIVALUE_BASES = ("shapley", "banzhaf", "leave_one_out")
MAX_EXACT_META_PLAYERS = 14
Base = Callable[[int, np.ndarray], np.ndarray]


def semivalue_weights(base: str, t: int) -> np.ndarray:
    """p_t(s), s = 0..t: the weight of v(S + i) - v(S), |S| = s, in i's attribution within T + i, |T| = t."""
    if base == "shapley":
        return shapley_weights(t + 1)
    if base == "banzhaf":
        return np.full(t + 1, 0.5**t)
    if base == "leave_one_out":
        return (np.arange(t + 1) == t).astype(float)
    raise ProbeError(f"unknown base {base!r}; semivalue bases are {SEMIVALUE_BASES}, or pass a callable (gradient_base)")


def cardinal_weights(base: str, n: int) -> np.ndarray:
    """q(s), s = 0..n-2: phi_{j->i} = sum_{S in N-{i,j}} q(|S|) (v(S+i+j) - v(S+i) - v(S+j) + v(S))."""
    outer = shapley_weights(n - 1)
    q = np.zeros(n - 1)
    for s in range(n - 1):
        for t in range(s, n - 1):
            q[s] += outer[t] * comb(n - 2 - s, t - s) * semivalue_weights(base, t + 1)[s + 1]
    return q


def gradient_base(grad_fn: Callable[[np.ndarray], np.ndarray]) -> Base:
    """A directed base from gradients: nu_i(T) = d value / d x_i at x = indicator of T + i (gradient
    times input, the input being 1). grad_fn(bool[m, n]) -> float[m, n], e.g. the gradient of a
    metric with respect to per-token embedding scales or per-head gates at those coalitions."""
    def base(i: int, coalitions: np.ndarray) -> np.ndarray:
        present = np.array(coalitions, dtype=bool)
        present[:, i] = True
        return np.asarray(grad_fn(present), dtype=float)[:, i]
    base.__name__ = "gradient"
    return base


def _others(n: int, i: int) -> np.ndarray:
    return np.array([j for j in range(n) if j != i])


def _exact_semivalue(game: Game, base: str, max_players: int) -> InteractionMatrix:
    n = game.n_players
    ledger = Ledger(game)
    values = evaluate_all(game, ledger, max_players)
    codes = np.arange(1 << n)
    sizes = np.bitwise_count(codes)
    q = cardinal_weights(base, n)
    p_full = semivalue_weights(base, n - 1)
    matrix, attributions, self_values = np.zeros((n, n)), np.zeros(n), np.zeros(n)
    for i in range(n):
        without_i = codes[(codes >> i) & 1 == 0]
        attributions[i] = (p_full[sizes[without_i]] * (values[without_i | (1 << i)] - values[without_i])).sum()
        self_values[i] = values[1 << i] - values[0]
        for j in range(i + 1, n):
            c = without_i[(without_i >> j) & 1 == 0]
            delta = values[c | (1 << i) | (1 << j)] - values[c | (1 << i)] - values[c | (1 << j)] + values[c]
            matrix[i, j] = matrix[j, i] = (q[sizes[c]] * delta).sum()
    return InteractionMatrix(names=list(game.players), matrix=matrix, stderrs=np.zeros((n, n)),
                             n_evaluations=ledger.n_used, estimator="exact_meta_attribution", base=base,
                             fingerprint=game.fingerprint, attributions=attributions, self_values=self_values)


def _exact_directed(game: Game, base: Base, max_players: int) -> InteractionMatrix:
    n = game.n_players
    if n > max_players:
        raise TooManyPlayersError(f"exact meta-attribution is limited to {max_players} players; this game has {n}. "
                                  "Pass budget=... and seed=... to sample")
    inner = all_coalitions(n - 1)
    matrix, attributions, self_values = np.zeros((n, n)), np.zeros(n), np.zeros(n)
    for i in range(n):
        others = _others(n, i)
        rows = np.zeros((len(inner), n), dtype=bool)
        rows[:, others] = inner
        nu = _check_base_output(base(i, rows), len(rows))
        matrix[i, others] = shapley_from_table(nu, n - 1)
        self_values[i], attributions[i] = nu[0], nu[-1]
    return InteractionMatrix(names=list(game.players), matrix=matrix, stderrs=np.zeros((n, n)),
                             n_evaluations=n * len(inner), estimator="exact_meta_attribution",
                             base=getattr(base, "__name__", "callable"), fingerprint=game.fingerprint,
                             attributions=attributions, self_values=self_values,
                             details={"unit": "base evaluations"})


def _check_base_output(raw, m: int) -> np.ndarray:
    values = np.asarray(raw, dtype=float)
    if values.shape != (m,) or not np.isfinite(values).all():
        raise ProbeError(f"the base must return {m} finite attributions (one per coalition); got shape {values.shape}")
    return values


def _sampled_directed(game: Game, base: Base, budget: int, seed: int | None, stop) -> InteractionMatrix:
    n = game.n_players
    matrix, stderrs = np.zeros((n, n)), np.zeros((n, n))
    attributions, self_values, used = np.zeros(n), np.zeros(n), 0
    for i in range(n):
        others = _others(n, i)

        def nu(coalitions, i=i, others=others):
            rows = np.zeros((len(coalitions), n), dtype=bool)
            rows[:, others] = coalitions
            return base(i, rows)

        row = permutation_shapley(Game([game.players[j] for j in others], nu), budget // n,
                                  None if seed is None else seed + i, stop)
        matrix[i, others], stderrs[i, others] = row.means, row.stderrs
        self_values[i], attributions[i], used = row.empty_value, row.full_value, used + row.n_evaluations
    return InteractionMatrix(names=list(game.players), matrix=matrix, stderrs=stderrs, n_evaluations=used,
                             estimator="meta_attribution", base=getattr(base, "__name__", "callable"),
                             settings={"budget": budget}, seed=seed, fingerprint=game.fingerprint,
                             attributions=attributions, self_values=self_values,
                             details={"unit": "base evaluations"})


def meta_attribution(game: Game, budget: int | None = None, seed: int | None = None,
                     stop: StoppingCriterion | None = None, *, base: str | Base = "shapley",
                     players: Sequence[str] | None = None,
                     max_players: int = MAX_EXACT_META_PLAYERS) -> InteractionMatrix:
    """phi_{j->i} for every ordered pair, as an InteractionMatrix (row i = influenced player).

    budget None: exact (refused above max_players). Otherwise sampled with the seed; for a
    semivalue base, `players` restricts the pairs to those among them (others' entries NaN).
    A callable base's budget counts base evaluations (split evenly over the rows)."""
    if game.n_players < 2:
        raise ProbeError("a meta-attribution needs at least two players")
    if callable(base):
        return _exact_directed(game, base, max_players) if budget is None else _sampled_directed(game, base, budget, seed, stop)
    cardinal_weights(base, 2)  # refuses an unknown base name before any evaluation
    if budget is None:
        if players is not None:
            raise ProbeError("players= selects pairs for sampling; the exact matrix covers every player")
        return _exact_semivalue(game, base, max_players)
    n = game.n_players
    size_weights = cardinal_weights(base, n) * (n - 1) * comb(n - 2, np.arange(n - 1))
    pair_values = interaction_values(game, budget, seed, stop, players=list(players or game.players),
                                     size_weights=size_weights)
    result = InteractionMatrix.from_pair_values(pair_values, list(game.players))
    result.estimator, result.base = "meta_attribution", base
    result.settings = {"budget": budget, "base": base}
    return result


def interaction_matrix(game: Game, budget: int | None = None, seed: int | None = None,
                       stop: StoppingCriterion | None = None, *, players: Sequence[str] | None = None,
                       max_players: int = MAX_EXACT_META_PLAYERS) -> InteractionMatrix:
    """The Shapley interaction index I_ij of every pair as a symmetric matrix (the meta-attribution
    with the leave-one-out base); exact when budget is None, sampled otherwise."""
    result = meta_attribution(game, budget, seed, stop, base="leave_one_out", players=players, max_players=max_players)
    result.estimator = result.estimator.replace("meta_attribution", "interaction_matrix")
    return result
