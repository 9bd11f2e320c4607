"""Weighted Banzhaf (probabilistic) values aimed at the operating point of a pruning run.

Each player is kept independently with probability p (p = 1 - the fraction to remove), and
    phi_i(p) = E_{S ~ Bernoulli(p) over N minus i} [ v(S + i) - v(S) ].
Shapley values weigh every coalition size equally; pruning 10-30% of heads lives at coalitions of
70-90% of them, and these values average marginal contributions exactly there.

Why least squares recovers them: draw S ~ Bernoulli(p) over all n players and regress v(S) on the
centred indicators x_j = 1[j in S] - p with an intercept. The x_j are independent with mean 0 and
variance p(1-p), so the population coefficient of player i is
    Cov(x_i, v) / Var(x_i) = [p(1-p) E v(S | i in S) - (1-p) p E v(S | i not in S)] / (p(1-p))
                           = E[v(S + i)] - E[v(S minus i)] = phi_i(p),
because given i's membership the other players are still Bernoulli(p). Every evaluated coalition
therefore informs every player (maximum sample reuse), and the linear part of the game is fitted
exactly rather than averaged as noise, which is what makes this better per evaluation than
difference-of-means estimators.

Priors: a first-order model of the game (per-player gate gradients at the operating point;
probes.priors) can be given as `prior`. Ordinary least squares is equivariant to a linear prior
(regressing v - g.x on x returns the same fit minus g), so a prior can only help through
shrinkage: the fit solves min ||v - c - X beta||^2 + lam ||beta - g||^2, with lam chosen by
generalised cross-validation on the sample (lam = 0, plain least squares, is always a candidate,
so the prior is used only as far as the data says it predicts). With lam > 0 the fit is also
defined when there are fewer samples than players.
method="msr" is the plain maximum-sample-reuse estimator (difference of the mean value with and
without each player, Li & Yu 2023); with a prior it becomes a control-variate estimator of the
residual v - g.x with g's value g added back. It is kept for comparison (benchmarks) and for
budgets too small to fit.

Standard errors: heteroscedasticity-consistent (sandwich, HC1) errors of the fitted coefficients;
for a shrunk fit they ignore the shrinkage bias. Exact enumeration for small games (2^n within
the budget, or exact=True).

Sampling: a seeded stream of Bernoulli(p) rows in fixed blocks, taken up to the longest prefix
whose distinct coalitions fit in the budget. A larger budget extends the same stream, so a store
filled by a smaller run serves a larger one; repeated rows are free (the game remembers them) and
stay in the fit, because they are genuine draws from the product measure.
"""

from __future__ import annotations

import math

import numpy as np

from probes.errors import BudgetTooSmallError, ProbeError
from probes.estimators._common import Ledger, make_values, should_stop, start_stop
from probes.estimators.exact import MAX_EXACT_PLAYERS, evaluate_all
from probes.game import Game, pack_coalitions
from probes.stopping import StoppingCriterion
from probes.values import Values

DEFAULT_FRACTION = 0.1  # default operating point: 10% of the players removed
METHODS = ("ols", "msr")
BLOCK = 256  # rows drawn at a time; fixed so the stream does not depend on the budget
MAX_ROWS_PER_EVALUATION = 20  # cap on draws per budgeted evaluation (small games repeat a lot)


def keep_probability(p: float | None = None, fraction: float | None = None) -> float:
    """p from p= or from the fraction to remove (p = 1 - fraction); default p = 0.9."""
    if p is not None and fraction is not None:
        raise ProbeError(f"give p (keep probability) or fraction (share to remove), not both; got p={p}, "
                         f"fraction={fraction}")
    if p is None:
        fraction = DEFAULT_FRACTION if fraction is None else fraction
        if not _is_real(fraction) or not 0.0 < float(fraction) < 1.0:
            raise ProbeError(f"fraction to remove must lie strictly between 0 and 1 (p = 1 - fraction), got {fraction}")
        p = 1.0 - float(fraction)
    if not _is_real(p) or not 0.0 < float(p) < 1.0:
        raise ProbeError(f"p (probability that a player is kept) must lie strictly between 0 and 1, got {p}; "
                         "p = 0.9 values players for removing about 10% of them")
    return float(p)


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------------------------- exact
def exact_weighted_banzhaf(game: Game, p: float, *, ledger: Ledger | None = None,
                           max_players: int = MAX_EXACT_PLAYERS) -> np.ndarray:
    """phi_i(p) = sum over S containing i of P_{N-i}(S - i) v(S) - sum over S without i of P_{N-i}(S) v(S)."""
    p = keep_probability(p)
    n = game.n_players
    values = evaluate_all(game, ledger or Ledger(game), max_players)
    codes = np.arange(1 << n, dtype=np.int64)
    sizes = np.bitwise_count(codes).astype(float)
    with_i = np.power(p, np.maximum(sizes - 1, 0)) * np.power(1 - p, n - sizes) * values
    without_i = np.power(p, sizes) * np.power(1 - p, np.maximum(n - 1 - sizes, 0)) * values
    means = np.empty(n)
    for i in range(n):
        member = ((codes >> i) & 1).astype(bool)
        means[i] = with_i[member].sum() - without_i[~member].sum()
    return means


# ---------------------------------------------------------------------------------- sampling
def draw_sample(n: int, p: float, budget_rows: int, seed, already: set[bytes]) -> np.ndarray:
    """Bernoulli(p) rows from the seeded stream: the longest prefix whose distinct coalitions, with
    `already` (v(empty), v(full)), number at most budget_rows + len(already)."""
    rng = np.random.default_rng(seed)
    keys = set(already)
    limit = budget_rows + len(already)
    max_rows = MAX_ROWS_PER_EVALUATION * max(budget_rows, 1)
    taken: list[np.ndarray] = []
    total = 0
    while total < max_rows:
        block = rng.random((BLOCK, n)) < p
        packed = pack_coalitions(block)
        stop_at = None
        for r in range(BLOCK):
            key = packed[r].tobytes()
            if key not in keys:
                if len(keys) >= limit:
                    stop_at = r
                    break
                keys.add(key)
        if stop_at is not None:
            taken.append(block[:stop_at])
            break
        taken.append(block)
        total += BLOCK
    rows = np.concatenate(taken) if taken else np.zeros((0, n), dtype=bool)
    return rows[:max_rows]


# ---------------------------------------------------------------------------------- fitting
def _as_prior(prior, game: Game) -> np.ndarray | None:
    if prior is None:
        return None
    if isinstance(prior, dict):
        missing = [name for name in game.players if name not in prior]
        if missing:
            raise ProbeError(f"prior has no coefficient for {len(missing)} player(s), e.g. {missing[:3]}; give one "
                             "per player (a dict name -> value or an array in player order)")
        prior = [prior[name] for name in game.players]
    prior = np.asarray(getattr(prior, "means", prior), dtype=float).reshape(-1)
    if prior.shape != (game.n_players,) or not np.isfinite(prior).all():
        raise ProbeError(f"prior must be {game.n_players} finite numbers (one per player), got shape {prior.shape}")
    return prior


def fit_ols(rows: np.ndarray, y: np.ndarray, p: float, prior: np.ndarray | None, ridge) -> tuple:
    """(phi, stderr, chosen lam) from min ||y - c - X beta||^2 + lam ||beta - prior||^2 with X = rows - p."""
    m, n = rows.shape
    x = rows.astype(float) - p
    g = np.zeros(n) if prior is None else prior
    r = y - x @ g
    xc = x - x.mean(axis=0)
    rc = r - r.mean()
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    rank = int((s > s.max() * 1e-10).sum()) if s.size and s.max() > 0 else 0
    full_rank = rank == n
    ut_r = u.T @ rc
    if ridge == "auto":
        if prior is None:
            candidates = [0.0]
        else:
            scale = float(s.max() ** 2) if s.size else 1.0
            candidates = ([0.0] if full_rank else []) + list(scale * np.logspace(-6, 1, 29))
    else:
        if not _is_real(ridge) or ridge < 0:
            raise ProbeError(f"ridge must be 'auto' or a number >= 0, got {ridge!r}")
        candidates = [float(ridge)]
    best = None
    for lam in candidates:
        if lam == 0.0 and not full_rank:
            continue
        shrink = s**2 / (s**2 + lam) if lam > 0 else (s > s.max() * 1e-10).astype(float)
        fitted = u @ (shrink * ut_r)
        rss = float(((rc - fitted) ** 2).sum())
        dof = float(shrink.sum())
        if m - 1 - dof <= 0:
            continue
        gcv = m * rss / (m - 1 - dof) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam, shrink, rss, dof)
    if best is None:
        raise BudgetTooSmallError(
            f"weighted_banzhaf least squares needs more distinct draws than players: {m} rows for {n} players "
            f"(rank {rank}). Raise the budget above about {n + 2} evaluations, or give a prior (e.g. gate "
            "gradients, probes.priors.gate_gradient_prior) so the fit is shrunk toward it")
    _, lam, shrink, _, dof = best
    with np.errstate(divide="ignore", invalid="ignore"):
        coef_s = np.where(s > 0, shrink / np.where(s > 0, s, 1.0), 0.0)
    delta = vt.T @ (coef_s * ut_r)
    phi = g + delta
    residual = rc - xc @ delta
    # Sandwich: A X' diag(e^2) X A with A = (X'X + lam I)^-1 = V diag(1 / (s^2 + lam)) V'.
    inv = np.where(s**2 + lam > 0, 1.0 / np.where(s**2 + lam > 0, s**2 + lam, 1.0), 0.0)
    if lam == 0.0:
        inv = np.where(s > s.max() * 1e-10, inv, 0.0)
    a_xt = (vt.T * (inv * s)) @ u.T  # [n, m] = A X'
    influence = a_xt * residual[None, :]
    variance = (influence**2).sum(axis=1) * m / max(m - 1 - dof, 1.0)
    return phi, np.sqrt(variance), lam


def fit_msr(rows: np.ndarray, y: np.ndarray, p: float, prior: np.ndarray | None) -> tuple:
    """Difference of means with and without each player (of y - prior.x when a prior is given), and
    the prior's value added back. Standard errors of a difference of two independent means."""
    n = rows.shape[1]
    g = np.zeros(n) if prior is None else prior
    r = y - (rows.astype(float) - p) @ g
    phi, err = np.empty(n), np.empty(n)
    for i in range(n):
        inside, outside = r[rows[:, i]], r[~rows[:, i]]
        if len(inside) < 2 or len(outside) < 2:
            raise BudgetTooSmallError(
                f"weighted_banzhaf msr saw player {i} present {len(inside)} and absent {len(outside)} times; each "
                f"needs at least 2 (at p={p} that takes about {math.ceil(2 / min(p, 1 - p))} draws). Raise the budget")
        phi[i] = g[i] + inside.mean() - outside.mean()
        err[i] = math.sqrt(inside.var(ddof=1) / len(inside) + outside.var(ddof=1) / len(outside))
    return phi, err, None


# ------------------------------------------------------------------------------- estimator
def weighted_banzhaf(
    game: Game,
    budget: int | None = None,
    seed: int | None = None,
    stop: StoppingCriterion | None = None,
    *,
    p: float | None = None,
    fraction: float | None = None,
    method: str = "ols",
    prior=None,
    ridge="auto",
    exact: bool | str = "auto",
    n_rounds: int = 8,
) -> Values:
    """p-weighted Banzhaf values of `game` (p = keep probability; default 1 - fraction, fraction 0.1).

    method: "ols" (least squares on the centred indicators; default) or "msr" (difference of means).
    prior: per-player first-order coefficients (array, dict or Values) used as shrinkage target
        ("ols", lam by cross-validation, or `ridge=` fixed) or as control variate ("msr").
    exact: "auto" enumerates all 2^n coalitions when they fit in the budget; True always does.
    """
    p = keep_probability(p, fraction)
    if method not in METHODS:
        raise ProbeError(f"unknown weighted_banzhaf method {method!r}; choose one of {METHODS}")
    if n_rounds < 1:
        raise ProbeError(f"n_rounds must be >= 1, got {n_rounds}")
    n = game.n_players
    prior_vector = _as_prior(prior, game)
    settings = {"p": p, "method": method, "ridge": ridge if isinstance(ridge, str) else float(ridge),
                "prior": None if prior_vector is None else "given", "budget": budget}
    stop = start_stop(stop)
    ledger = Ledger(game)
    use_exact = exact is True or (exact == "auto" and n <= MAX_EXACT_PLAYERS and budget is not None
                                  and budget >= 2**n)
    if use_exact:
        if budget is not None and budget < 2**n:
            raise BudgetTooSmallError(f"exact weighted Banzhaf needs 2^{n} = {2**n} evaluations; got budget {budget}")
        means = exact_weighted_banzhaf(game, p, ledger=ledger)
        return make_values(game, ledger, "weighted_banzhaf", means, np.zeros(n), settings={**settings, "exact": True},
                           seed=seed, details={"exact": True, "p": p})
    minimum = 2 + (3 if method == "msr" or prior_vector is not None else n + 2)
    if budget is None or int(budget) != budget or budget < minimum:
        raise BudgetTooSmallError(
            f"weighted_banzhaf ({method}{' with a prior' if prior_vector is not None else ''}) needs a budget of at "
            f"least {minimum} evaluations (v(empty), v(full) and enough Bernoulli draws to fit {n} players); got {budget}")
    empty, full = ledger.empty_and_full()
    ends = {row.tobytes() for row in pack_coalitions(np.array([np.zeros(n, bool), np.ones(n, bool)]))}
    rows = draw_sample(n, p, int(budget) - 2, seed, ends)
    phi, stderrs, lam, done, rounds_used = _fit_in_rounds(ledger, rows, n, p, method, prior_vector, ridge, n_rounds,
                                                          stop)
    details = {"p": p, "n_draws": int(done), "n_distinct": int(ledger.n_used), "rounds": rounds_used,
               "ridge_chosen": lam, "exact": False}
    return make_values(game, ledger, "weighted_banzhaf", phi, stderrs, settings=settings, seed=seed, details=details)


def _fit_in_rounds(ledger, rows: np.ndarray, n: int, p: float, method: str, prior_vector, ridge, n_rounds: int,
                   stop) -> tuple[np.ndarray, np.ndarray, float | None, int, int]:
    """Evaluate the draws in n_rounds blocks, refitting after each when a stopping criterion may end
    the run (else once, at the end): (phi, stderrs, lam, draws used, rounds used)."""
    y = np.empty(0)
    phi, stderrs, lam = np.zeros(n), np.full(n, np.nan), None
    bounds = np.linspace(0, len(rows), n_rounds + 1).round().astype(int)[1:]
    done = 0
    rounds_used = 0
    for round_number, upto in enumerate(bounds):
        if upto <= done:
            continue
        y = np.concatenate([y, ledger(rows[done:upto])])
        done = upto
        rounds_used = round_number + 1
        if stop is None and done < len(rows):
            continue  # nothing can end the run early: fit once, at the end
        try:
            if method == "ols":
                phi, stderrs, lam = fit_ols(rows[:done], y, p, prior_vector, ridge)
            else:
                phi, stderrs, lam = fit_msr(rows[:done], y, p, prior_vector)
        except BudgetTooSmallError:
            if done == len(rows):
                raise
            continue  # an early round too small to fit; later rounds add draws
        if should_stop(stop, ledger, phi, stderrs, round_number):
            break
    return phi, stderrs, lam, done, rounds_used


estimate = weighted_banzhaf
