"""One antithetic permutation chain read as a regression design, then Leverage SHAP ("chain_krr",
the default estimator).

Why: Leverage SHAP's random pairs need about n of them before a fit of n values is determined, so
at 2n-3n evaluations it errs more than answering zero, while antithetic permutation sampling,
which spends 2(n - 1) evaluations on one order and its reverse, is already usable.

What makes one design serve both: the coalitions of an antithetic chain are complementary pairs.
Prefix k of an order pi and prefix n - k of its reverse are S and N minus S, so one chain is n - 1
pairs, one per size k = 1..n-1, each marginally a uniform pair of its size: a Leverage SHAP design
(equal mass per size) whose draws are nested. On the chain alone the efficient regression
interpolates the odd values o(P_k) = (v(P_k) - v(N - P_k)) / 2, and phi_{pi_k} = o(P_k) - o(P_{k-1})
is exactly the antithetic permutation estimate.

1. Design: the chain first, then Leverage SHAP's own design (regression.draw_paired_design: small
   strata enumerated, distinct pairs) for the rest of the budget; one weight formula
   (regression.unit_weights) covers both, as the chain has the leverage size distribution.
2. Linear step, in the odd part (the only part that carries Shapley value): the efficient weighted
   fit with odd coalition-size covariates, ridge-penalised toward a target with the penalty chosen
   by generalized cross-validation (0 is a candidate, so a determined fit is not shrunk). The
   target is the caller's `prior` if given, else the chain's own permutation estimate: while the
   pairs beyond the chain are too few to determine the fit, GCV keeps it near the chain's estimate,
   and lets go as they accumulate.
3. Kernel step: kernel_ridge.fit_odd_kernel on the odd residual, exact Shapley values of the fit,
   linear refit of v - g with the penalty chosen again (as leverage_shap_krr); used only when GCV
   prefers it.
At budget 2n (the chain alone, no prior) the result is the antithetic permutation estimate.
4. Version 3: without a prior, from chainless_budget(n) = max(3, sqrt(n)) * n evaluations on, no
   chain at all: the run is leverage_shap_krr's (same design, evaluations and fit; recorded as
   chain_krr version 3). The chain spends n - 1 units on one order; once the pairs determine the
   fit, those units err more than random pairs would (estimators.json at 5n-10n under version 2).
   sqrt(n) * n: larger games need more pairs per player before the pairs alone beat the chain.
5. Version 4: the chainless run fits one odd size covariate instead of three (leverage_shap_krr with
   size_degree=1, CHAINLESS_SIZE_DEGREE). At 5n on tanh_pairwise_16 the two extra free columns
   cost 8% of error (0.111 against 0.103, version 4 better on each of 10 seeds: same coalitions,
   estimators.json before and after); on the other games the difference is within 1% or in
   version 4's favour (small games at 8n-90% of 2^n). And the chain
   ends by 8n at the latest (chainless_budget: min(max(3, sqrt n), 8) * n): at n = 256, version 3
   kept it up to 16n, and at 10n it erred 13% more than the pairs alone on soum_256, beyond the
   seed spread (estimators.json, 5 seeds; at 8n both 256-player games favoured the pairs alone).
   Version 4 evaluates what version 3 did at every budget for n <= 64, and below 8n for larger n.

Standard errors: a bootstrap over pairs of the linear step (the kernel step is not refitted per
replicate, so they overstate the error, as leverage_shap_krr's do); for the chain alone, half the
difference of each player's forward and reverse marginals (no replicate exists; large when pairwise
terms dominate, which the antithetic average cancels). details["expected_relative_error"] and
["expected_seed_spearman"] follow from them (reliability.py).
"""

from __future__ import annotations

import numpy as np

from probes.errors import ProbeError
from probes.estimators._design import PairedDesign, PairedSequence, total_units
from probes.estimators.kernel_ridge import fit_odd_kernel
from probes.estimators.priors import resolve_prior
from probes.estimators.regression import PairedRun, check_size_degree, size_basis, unit_weights
from probes.estimators._common import make_values, require_budget, should_stop, start_stop
from probes.game import Game, pack_coalitions
from probes.stopping import StoppingCriterion
from probes.values import Values

VERSION = 4  # settings["version"] of what chain_krr returns; chain_krr@1 / @2 / @3 replay the earlier ones (see chain_krr)
VERSIONS = (1, 2, 3, 4)
CHAIN_SIZE_DEGREE = 3  # odd size covariates of the fit with the chain (every version)
CHAINLESS_SIZE_DEGREE = 1  # ... and of the chainless run from version 4 on (version 3: CHAIN_SIZE_DEGREE)
DETERMINED_UNITS_PER_PLAYER = 3  # version 2: from 3n pairs (6n evaluations) on, no ridge toward the chain
RIDGE_PENALTIES = np.concatenate([[0.0], np.logspace(-4, 3, 15)])  # relative to mean diagonal of the normal matrix


class ChainSequence:
    """One antithetic chain (n - 1 units), then Leverage SHAP's nested pair sequence (small strata
    enumerated, distinct pairs), served lazily like _design.PairedSequence: design(upto) holds the
    units evaluated so far, so memory follows the evaluations, not the budget, and a larger budget
    with the same seed extends a smaller one. Chain units of an enumerated stratum repeat an
    enumerated unit, so the fit leaves them out (fit_mask); the ledger does not pay for them twice."""

    def __init__(self, n: int, n_units: int, rng: np.random.Generator, version: int = VERSION) -> None:
        self.n, self.version = n, version
        self.order = np.argsort(rng.random(n))
        ranks = np.argsort(self.order)
        # Prefix k of the order, k = 1..n-1; below 2n evaluations only the first prefixes fit.
        whole_chain = ranks[None, :] < np.arange(1, n)[:, None]
        self.chain = whole_chain[: min(n - 1, n_units)]
        sizes = self.chain.sum(1)
        self.strata = np.minimum(sizes, n - sizes)
        # Version 2: the pairs continue the chain's strata without repeating its units, so the
        # design is a stratified sample without repeats that ends with every coalition (version 1
        # drew them independently: chain units repeated, and at small n a good share of the budget
        # went to coalitions already evaluated).
        self.pairs = PairedSequence(n, rng, "leverage", taken=whole_chain if version >= 2 else None)
        self.ks = self.pairs.ks
        self.max_units = len(self.chain) + self.pairs.total

    def design(self, upto: int) -> PairedDesign:
        pairs = self.pairs.design(max(int(upto) - len(self.chain), 0))
        chain_sampled = ~np.isin(self.strata, pairs.saturated_strata)
        sampled = np.concatenate([chain_sampled, pairs.sampled])
        stratum = np.concatenate([self.strata, pairs.stratum])
        # Each stratum's share among the sampled units, chain included: never 0 where a sampled unit
        # lies (the importance weights divide by it), whatever prefix of the pair sequence is drawn.
        counts = np.bincount(stratum[sampled] - 1, minlength=len(pairs.q)).astype(float)
        q = counts / max(counts.sum(), 1.0)
        return PairedDesign(
            n=self.n, first=np.concatenate([self.chain, pairs.first]),
            stratum=stratum, sampled=sampled,
            saturated_strata=pairs.saturated_strata, q=q, n_sampled=int(sampled.sum()),
            stratum_units=pairs.stratum_units)

    def fit_mask(self, design: PairedDesign) -> np.ndarray:
        chain_fits = ~np.isin(self.strata, design.saturated_strata) if self.version < 2 else np.ones(len(self.chain), bool)
        return np.concatenate([chain_fits, np.ones(len(design.first) - len(self.chain), dtype=bool)])


CHAINLESS_MAX_PER_PLAYER = 8.0  # version 4: the chain ends by 8n at the latest


def chainless_budget(n: int, version: int = VERSION) -> int:
    """From this budget on (and without a prior) chain_krr runs leverage_shap_krr's design (version 3
    on: max(3, sqrt n) * n; version 4 caps it at CHAINLESS_MAX_PER_PLAYER * n)."""
    per_player = max(3.0, np.sqrt(n))
    if version >= 4:
        per_player = min(per_player, CHAINLESS_MAX_PER_PLAYER)
    return int(np.ceil(per_player * n))


def uses_chain(n: int, budget: int, version: int, prior) -> bool:
    return version < 3 or prior is not None or budget < chainless_budget(n, version)


def default_size_degree(n: int, budget: int, version: int, prior) -> int:
    """The size covariates a run of this version uses when the caller does not name them."""
    if version >= 4 and not uses_chain(n, budget, version, prior):
        return CHAINLESS_SIZE_DEGREE
    return CHAIN_SIZE_DEGREE


def _odd_problem(design, units, first_values, second_values, size_degree):
    """Rows of the odd part: z = S - 1/2 (players), odd size columns, targets and weights."""
    coalitions = design.first[units]
    z = coalitions - 0.5
    columns = [z]
    if size_degree is not None:
        odd = (size_basis(coalitions, size_degree) - size_basis(~coalitions, size_degree)) / 2
        columns.append(odd[:, 1::2])  # the even-j columns are even functions: zero here
    return np.concatenate(columns, 1), (first_values[units] - second_values[units]) / 2


def ridge_fit(x, y, w, total, n, prior, penalty):
    """argmin sum w (y - x b)^2 + penalty ||b[:n] - prior||^2 s.t. sum b[:n] = total; (b, dof)."""
    p = x.shape[1]
    target = np.zeros(p)
    target[:n] = prior
    gram = (x * w[:, None]).T @ x
    scale = max(np.trace(gram[:n, :n]) / n, 1e-300)
    penalty_matrix = np.zeros(p)
    penalty_matrix[:n] = penalty * scale
    a = gram + np.diag(penalty_matrix) + 1e-10 * scale * np.eye(p)
    b = (x * w[:, None]).T @ (y - x @ target)
    ones = np.zeros(p)
    ones[:n] = 1.0
    a_inv = np.linalg.pinv(a)
    a_inv_b, a_inv_1 = a_inv @ b, a_inv @ ones
    slack = total - prior.sum()
    delta = a_inv_b - a_inv_1 * (ones @ a_inv_b - slack) / (ones @ a_inv_1)
    constrained = a_inv - np.outer(a_inv_1, a_inv_1) / (ones @ a_inv_1)
    return target + delta, float(np.trace(constrained @ gram))


def fit_linear_gcv(design, units, first_values, second_values, total, size_degree, prior, penalty=None):
    """The efficient ridge fit toward `prior` of the odd part, penalty by GCV (or the given one).
    Returns (coef, penalty, odd residual)."""
    n = design.n
    x, y = _odd_problem(design, units, first_values, second_values, size_degree)
    w = unit_weights(design, units, int(design.sampled[units].sum()))
    m = len(units)
    if penalty is not None:
        coef = ridge_fit(x, y, w, total, n, prior, penalty)[0]
        return coef, penalty, y - x @ coef
    best = (np.inf, None, None)
    for relative in RIDGE_PENALTIES:
        coef, dof = ridge_fit(x, y, w, total, n, prior, relative)
        if dof >= m - 0.5:
            continue
        residual = y - x @ coef
        gcv = (w @ residual**2) / w.sum() / (1 - dof / m) ** 2
        if gcv < best[0]:
            best = (gcv, coef, relative)
    if best[1] is None:  # fewer pairs than unknowns at every penalty: the strongest shrinkage
        best = (None, ridge_fit(x, y, w, total, n, prior, RIDGE_PENALTIES[-1])[0], RIDGE_PENALTIES[-1])
    return best[1], best[2], y - x @ best[1]


def chain_krr(game: Game, budget: int, seed: int | None = None, stop: StoppingCriterion | None = None, *,
              prior=None, gamma: float = 1.0, max_centers: int = 3000, size_degree: int | None = None,
              size_margin: float = 1.0, n_bootstrap: int = 30, n_rounds: int = 8, version: int | None = None) -> Values:
    """One antithetic chain + Leverage SHAP pairs, ridge toward a prior, kernel step (module
    docstring). `prior`: n values, a dict name -> value or Values for the same players; None = the
    equal split, used only once the data determine the fit (one chain alone = permutation sampling).

    size_degree: odd coalition-size covariates of the fit; None = the version's own (3 with the
    chain; 1 on version 4's chainless run).

    version: None = the current one (VERSION), refusing a store that holds a run of another version
    (check_store_version); 1, 2, 3 or 4 (registered as "chain_krr@1" ... "chain_krr@4") runs
    that version as it was, so a store or values file made by it replays to the same values."""
    n = game.n_players
    name = "chain_krr"
    explicit = version is not None
    version = VERSION if version is None else version
    if version not in VERSIONS:
        raise ProbeError(f"chain_krr: unknown version {version!r}; 1 (before small games were fixed), 2 (chain at "
                         f"every budget), 3 (leverage_shap_krr's run from the chainless budget on) or 4 (current)")
    # As Leverage SHAP: below 2n only part of the chain fits, and the fit leans on the prior.
    budget = require_budget(budget, n + 2, name, "v(empty), v(full) and n/2 complementary pairs to determine n values")
    if not gamma > 0 or int(max_centers) < 1:
        raise ProbeError(f"chain_krr: gamma must be > 0 and max_centers >= 1, got {gamma}, {max_centers}")
    check_size_degree(size_degree, name)
    if size_degree is None:
        size_degree = default_size_degree(n, budget, version, prior)
    record_as = version
    if game.store is not None and not explicit:
        record_as = check_store_version(game.store, n, budget, seed, prior)
    if not uses_chain(n, budget, version, prior):
        return _without_chain(game, budget, seed, stop, version, gamma=gamma, max_centers=max_centers,
                              size_degree=size_degree, n_bootstrap=n_bootstrap, n_rounds=n_rounds)
    rng = np.random.default_rng(seed)
    stop = start_stop(stop)
    sequence = ChainSequence(n, (budget - 2) // 2, rng, version)
    run = PairedRun(game, budget, rng, "leverage", stop, sequence=sequence)
    run.chain_order = sequence.order
    total = run.full - run.empty
    prior_values = resolve_prior(prior, game, total, name)
    for round_number, evaluated, last in run.rounds(n_rounds):
        units = evaluated[sequence.fit_mask(run.design)[evaluated]]
        if stop is not None and not last:
            coef = fit_linear_gcv(run.design, units, run.first_values, run.second_values, total, None, prior_values)[0]
            if should_stop(stop, run.ledger, coef[:n], np.full(n, np.nan), round_number):
                break
    # Version 2, no prior: once the pairs determine the fit (DETERMINED_UNITS_PER_PLAYER * n units),
    # no ridge toward the chain's noisy estimate (version 1 kept it, 4x leverage_shap_krr's error near 2^n).
    fixed_penalty = 0.0 if version >= 2 and prior is None and len(units) >= DETERMINED_UNITS_PER_PLAYER * n else None
    phi, stderrs, details = _final_estimate(run, units, len(evaluated), prior_values, prior is not None, gamma,
                                            max_centers, size_degree, size_margin, n_bootstrap, rng, fixed_penalty)
    if game.store is not None:
        game.store.record_estimator_version(name, record_as)
    settings = {"gamma": gamma, "max_centers": max_centers, "size_degree": size_degree, "size_margin": size_margin,
                "n_bootstrap": n_bootstrap, "budget": budget, "prior": None if prior is None else prior_values.tolist(),
                "version": version}
    return make_values(game, run.ledger, name, phi, stderrs, settings=settings, seed=seed, details=details)


def _without_chain(game, budget, seed, stop, version, **settings) -> Values:
    """leverage_shap_krr's run, named and recorded as chain_krr of this version (a store it filled
    replays by either name)."""
    from probes.estimators.kernel_ridge import leverage_shap_krr

    values = leverage_shap_krr(game, budget, seed, stop, **settings)
    if game.store is not None:
        game.store.record_estimator_version("chain_krr", version)
    values.estimator = "chain_krr"
    values.settings = {**values.settings, "version": version, "design": "leverage_shap_krr",
                       "chainless_budget": chainless_budget(game.n_players, version)}
    return values


def _final_estimate(run, units, n_evaluated, prior, prior_given, gamma, max_centers, size_degree, size_margin,
                    n_bootstrap, rng, fixed_penalty=None):
    design, n = run.design, run.design.n
    total = run.full - run.empty
    details = {"n_chain_pairs": int(min(n_evaluated, n - 1)), "n_pairs": int(max(n_evaluated - (n - 1), 0))}
    if n_evaluated < n - 1:  # stopped inside the chain: the prior plus what its first pairs say
        coef, penalty, _ = fit_linear_gcv(design, units, run.first_values, run.second_values, total, None, prior)
        details["ridge_penalty"] = float(penalty)
        details["stderr_method"] = ("partial chain: forward/reverse half-difference for the players it reached; "
                                    "for the others, the spread of the reached players' values around the prior")
        return coef[:n], partial_chain_stderrs(run, n_evaluated, prior), details
    chain_estimate, halfdiff = chain_permutation_estimate(run)
    if n_evaluated == n - 1:
        # The chain alone determines the fit: it is the antithetic permutation estimate. Its spread
        # is not observable from one chain; half the forward/reverse difference of each player's
        # marginals stands in (large when pairwise terms dominate, which the average cancels).
        details["stderr_method"] = "forward/reverse half-difference (one chain; an overestimate for pairwise games)"
        return _toward_prior(chain_estimate, halfdiff, prior, details) if prior_given else chain_estimate, halfdiff, details
    # Without a prior the chain's own estimate is the target: GCV keeps the fit near it while the
    # pairs beyond the chain are too few to determine the regression, and lets go once they are.
    prior = prior if prior_given else chain_estimate
    degree = size_degree if len(units) > size_margin * (n + size_degree) else None
    coef, penalty, residual = fit_linear_gcv(design, units, run.first_values, run.second_values, total, degree, prior,
                                             fixed_penalty)
    phi = coef[:n]
    problem = (run.first_values, run.second_values, total, degree, prior, penalty)
    # Kernel step on the odd residual of the linear fit; g is odd, so v - g keeps its pairs
    # complementary, and its values are phi - phi(g), summing to total - 2 g(full).
    coalitions = design.first[units]
    model = fit_odd_kernel(coalitions, residual, gamma, max_centers) if degree is not None else None
    if model is not None:
        g = np.zeros(len(run.first_values))
        g[units] = model(coalitions)
        kernel_values = model.shapley()
        # The penalty is chosen again on v - g: with the interactions g explains out of the
        # residual, GCV can tell a wrong prior from noise.
        refit, penalty, _ = fit_linear_gcv(design, units, run.first_values - g, run.second_values + g,
                                           total - kernel_values.sum(), degree, prior - kernel_values, fixed_penalty)
        phi = refit[:n] + kernel_values
        details["kernel_centers"] = len(model.centers)
    details.update({"ridge_penalty": float(penalty), "size_degree_used": degree})
    stderrs = _bootstrap(design, units, problem[:-1] + (penalty,), n_bootstrap, rng)
    details["stderr_method"] = "bootstrap over pairs of the linear step (kernel step not refitted: conservative)"
    if prior_given:
        phi = _toward_prior(phi, stderrs, prior, details)
    return phi, stderrs, details


def _toward_prior(phi, stderrs, prior, details):
    """Positive-part James-Stein toward the caller's prior: when the estimate sits within its own
    noise of the prior, the data cannot tell them apart and the prior is kept; a prior far from
    the data is left alone. (The GCV ridge alone shrank too little: the interactions it sees as
    noise dwarf a prior's error.)"""
    n = len(phi)
    distance = np.sum((phi - prior) ** 2)
    if not np.isfinite(stderrs).all() or n < 3:
        return phi
    keep = max(0.0, 1.0 - (n - 2) / n * np.sum(stderrs**2) / distance) if distance > 0 else 0.0
    details["prior_weight"] = float(1.0 - keep)
    return prior + keep * (phi - prior)


def chain_permutation_estimate(run) -> tuple[np.ndarray, np.ndarray]:
    """The chain's antithetic permutation estimate, from its pairs' odd values, and half the
    difference of each player's forward and reverse marginals."""
    n = run.design.n
    first, second = run.first_values[: n - 1], run.second_values[: n - 1]  # v(P_k), v(N - P_k)
    forward_values = np.concatenate([[run.empty], first, [run.full]])
    reverse_values = np.concatenate([[run.full], second, [run.empty]])  # v(N - P_k), k = 0..n
    forward = np.diff(forward_values)  # the player at position k joins P_{k-1}
    reverse = -np.diff(reverse_values)  # ... and joins N - P_k in the reversed order
    order = run.chain_order
    estimate, halfdiff = np.empty(n), np.empty(n)
    estimate[order], halfdiff[order] = (forward + reverse) / 2, np.abs(forward - reverse) / 2
    return estimate, halfdiff


def partial_chain_stderrs(run, reached: int, prior: np.ndarray) -> np.ndarray:
    """Standard errors of a run that stopped inside the chain, after `reached` < n - 1 of its pairs.

    The first `reached` players of the order have a forward and a reverse marginal each (as in a
    whole chain: half their difference stands in for the spread); the other players' values are
    the prior adjusted to the sum the chain leaves them, so their error is how far values sit from
    the prior, estimated from the reached players (a random subset of the same players): the variance
    of their antithetic estimates around the prior, less the part their own noise explains. (A
    bootstrap over the pairs of the ridge fit, used before, saw only the noise of the fit and put the
    expected error 2-12x below the measured one at n + 2 evaluations: small_games.json.)"""
    n = run.design.n
    first, second = run.first_values[:reached], run.second_values[:reached]  # v(P_k), v(N - P_k)
    forward = np.diff(np.concatenate([[run.empty], first]))
    reverse = -np.diff(np.concatenate([[run.full], second]))
    reached_players = run.chain_order[:reached]
    halfdiff = np.abs(forward - reverse) / 2
    deviation = (forward + reverse) / 2 - prior[reached_players]
    noise = float(np.mean(halfdiff**2))
    spread = np.var(deviation, ddof=1) if reached > 1 else float(deviation[0] ** 2)
    unreached = n - reached
    stderrs = np.full(n, np.sqrt(max(spread - noise, 0.0) + noise / unreached))
    stderrs[reached_players] = halfdiff
    return stderrs


def _bootstrap(design, units, problem, n_bootstrap, rng):
    if n_bootstrap < 2:
        return np.full(design.n, np.nan)
    replicates = np.empty((n_bootstrap, design.n))
    for b in range(n_bootstrap):
        redraw = units[rng.integers(0, len(units), size=len(units))]
        replicates[b] = fit_linear_gcv(design, redraw, *problem)[0][: design.n]
    return replicates.std(axis=0, ddof=1)



def check_store_version(store, n: int, budget: int, seed, prior=None) -> int:
    """Refuse to re-value, with the current version, a store that holds a run of another version of
    chain_krr: the one its estimators.json names, or, for a store made before versions were recorded,
    version 1 when that version's design for this budget and seed is in the store and the current
    one's is not (a run that stopped early is not recognised). A version-2 or version-3 store is
    accepted where the current version runs the same design and fit (with the chain: below
    chainless_budget or with a prior), and stays recorded as that version (so a later run beyond it
    is still refused). Returns the version to record for this run."""
    recorded = store.estimator_versions().get("chain_krr")
    if recorded is None and len(store) and seed is not None:
        # Versions 2 and 3 share the chain design (version 3 leaves it only at large budgets).
        held = {v: _design_in_store(store, n, budget, seed, v) for v in (1, 2)}
        recorded = 1 if held[1] and not held[2] else None
    if recorded in (2, 3) and uses_chain(n, budget, VERSION, prior) and uses_chain(n, budget, recorded, prior):
        return recorded  # versions 2-4 run the chain alike
    if recorded is not None and recorded != VERSION:
        raise ProbeError(
            f"store {store.path} holds a run of chain_krr version {recorded}; this chain_krr is version {VERSION}, "
            f"which evaluates other coalitions or fits them differently, so it would not replay that run. Replay it "
            f"with estimator 'chain_krr@{recorded}' (CLI: --estimator chain_krr@{recorded}), value it with the "
            f"current version by naming it ('chain_krr@{VERSION}'), or use a new store")
    return VERSION


def _design_in_store(store, n: int, budget: int, seed, version: int) -> bool:
    """Whether every coalition chain_krr `version` evaluates at this budget and seed is in the store."""
    sequence = ChainSequence(n, (budget - 2) // 2, np.random.default_rng(seed), version)
    first = sequence.design(min((budget - 2) // 2, sequence.max_units)).first
    keys = pack_coalitions(np.concatenate([first, ~first]))
    return all(key.tobytes() in store for key in keys)
