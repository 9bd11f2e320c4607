"""Leverage SHAP plus a kernel-ridge surrogate of what the linear fit misses ("leverage_shap_krr").

A regression estimator's error is the part of the game its model cannot express: Leverage SHAP
fits v(S) ~ v(empty) + sum_{i in S} phi_i (+ size terms), and every interaction lands in the
residual as noise. This estimator fits that residual with kernel ridge regression, takes the
fitted function's Shapley values exactly, and refits the linear model on what is left:

1. Only the odd part o(S) = (v(S) - v(N minus S)) / 2 carries Shapley value (the game
   S -> v(N minus S) has values -phi(v), so the even part has none), and a complementary pair
   observes o exactly. So the kernel model is fitted to the odd residual of the linear fit, one
   row per pair, with an odd kernel: the paired fit spends nothing on the even part.
2. Kernel: k(S, T) = exp(-gamma * Hamming(S, T) / n), made odd in S. Any kernel that depends only
   on |S & T| and |S - T| has exact Shapley values at a centre T: players in T are
   interchangeable, players outside T too, so each side gets one value, a sum over how many of
   each side precede the player in a random order (`center_shapley_tables`, O(n^3) once).
3. Ridge penalty by generalized cross-validation; the kernel model is used only when GCV prefers
   it to no kernel at all, so a game the linear model already explains costs nothing in accuracy.
   More than `max_centers` pairs: an evenly spaced subset of the (randomly ordered) pairs are the
   centres (Nystroem).
4. g = the fitted odd function; phi = phi(g) + Leverage SHAP of v - g (with g's endpoints, so
   efficiency holds exactly).

The kernel step helps where interactions are dense and smooth in the Hamming geometry this kernel
assumes; at 2n-5n there are too few pairs beyond the linear fit's n unknowns and GCV falls back to
Leverage SHAP. benchmarks/estimators.py (synthetic games) and benchmarks/head_values.py --curve-only
(SmolLM2's heads) measure it; their results files hold the numbers.

Rounds before the last (for stopping criteria) use the plain linear fit; the kernel fit runs once
on everything evaluated (memory O(centres^2): the pairs x centres features are accumulated in
blocks; about a minute for 20,000 pairs and 3,000 centres on two cores). Standard errors are Leverage
SHAP's (bootstrap of the linear fit over sampled pairs): a bootstrap of the refit with g held fixed
was 3-20x too small (g is fitted to the same pairs), and refitting g per replicate costs a kernel
fit each; measured in tests/probes/test_estimators.py, they overstate the error (conservative).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from probes.errors import ProbeError
from probes.estimators.regression import fit_linear, regression_shapley, size_basis
from probes.game import Game
from probes.stopping import StoppingCriterion
from probes.values import Values

GCV_PENALTIES = np.logspace(-6, 2, 17)  # ridge penalties tried, relative to the largest eigenvalue
CHUNK_ROWS = 4096  # pairs per block of kernel features


def _log_comb(n, k):
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def hamming_rbf(gamma: float, n: int):
    """k as a function of a = |S & T|, b = |S - T|, t = |T| (Hamming distance = b + t - a)."""
    return lambda a, b, t: np.exp(-gamma * (b + t - a) / n)


def center_shapley_tables(kernel, n: int) -> tuple[np.ndarray, np.ndarray]:
    """inside[t], outside[t]: the Shapley value of S -> kernel(|S & T|, |S - T|, t) for a player in T
    and for a player not in T, for every centre size t = |T|.

    A player in T whose predecessors hold a players of T (out of t - 1) and b of the others (out of
    n - t) moves the kernel from (a, b) to (a + 1, b); that predecessor set has Shapley weight
    C(t-1, a) C(n-t, b) / (n C(n-1, a+b)). Outside players likewise, with (a, b) -> (a, b + 1)."""
    inside, outside = np.zeros(n + 1), np.zeros(n + 1)
    for t in range(n + 1):
        if t >= 1:
            a, b = np.arange(t)[:, None], np.arange(n - t + 1)[None, :]
            weight = np.exp(_log_comb(t - 1, a) + _log_comb(n - t, b) - _log_comb(n - 1, a + b) - np.log(n))
            inside[t] = np.sum(weight * (kernel(a + 1, b, t) - kernel(a, b, t)))
        if t <= n - 1:
            a, b = np.arange(t + 1)[:, None], np.arange(n - t)[None, :]
            weight = np.exp(_log_comb(t, a) + _log_comb(n - t - 1, b) - _log_comb(n - 1, a + b) - np.log(n))
            outside[t] = np.sum(weight * (kernel(a, b + 1, t) - kernel(a, b, t)))
    return inside, outside


class OddKernelModel:
    """g(S) = sum_c alpha_c k_odd(S, T_c), k_odd(S, T) = (k(S, T) - k(S, N minus T)) / 2, the odd part
    of a Hamming kernel (k(N-S, N-T) = k(S, T) for such kernels)."""

    def __init__(self, n: int, gamma: float, centers: np.ndarray, alpha: np.ndarray) -> None:
        self.n, self.gamma, self.centers, self.alpha = n, gamma, centers, alpha

    def gram(self, coalitions: np.ndarray, centers: np.ndarray | None = None) -> np.ndarray:
        centers = self.centers if centers is None else centers
        x, t = coalitions.astype(float), centers.astype(float)
        distance = x.sum(1)[:, None] + t.sum(1)[None, :] - 2 * x @ t.T
        return (np.exp(-self.gamma * distance / self.n) - np.exp(-self.gamma * (self.n - distance) / self.n)) / 2

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return self.gram(coalitions) @ self.alpha

    def shapley(self) -> np.ndarray:
        inside, outside = center_shapley_tables(hamming_rbf(self.gamma, self.n), self.n)

        def at(centers):  # Shapley values of sum_c alpha_c k(., T_c)
            t = centers.sum(1)
            members = centers.astype(float)
            return (self.alpha * inside[t]) @ members + (self.alpha * outside[t]) @ (1 - members)

        return (at(self.centers) - at(~self.centers)) / 2


def fit_odd_kernel(coalitions: np.ndarray, residual: np.ndarray, gamma: float, max_centers: int) -> OddKernelModel | None:
    """Kernel ridge fit of `residual` (one odd value per pair) with the penalty chosen by GCV;
    None when GCV prefers no kernel model at all. Above max_centers pairs, every (m / max_centers)-th
    pair is a centre: the pairs come in random order, and the choice does not depend on how many
    random numbers other steps (the bootstrap) drew, so the values depend only on the seed."""
    m, n = coalitions.shape
    centers = coalitions if m <= max_centers else coalitions[np.linspace(0, m - 1, max_centers).round().astype(int)]
    model = OddKernelModel(n, gamma, centers, np.zeros(len(centers)))
    # Nystroem features: Phi Phi' = K_nc K_cc^+ K_cn (= K when every pair is a centre). Only Phi'Phi
    # and Phi'r are kept, accumulated over chunks of pairs, so memory is O(centres^2) at any budget.
    eigenvalues, eigenvectors = np.linalg.eigh(model.gram(centers))
    keep = eigenvalues > 1e-10 * max(eigenvalues.max(), 1e-300)
    if not keep.any():
        return None  # the kernel is zero on these pairs: nothing to fit
    to_alpha = eigenvectors[:, keep] / np.sqrt(eigenvalues[keep])
    normal, cross = np.zeros((keep.sum(), keep.sum())), np.zeros(keep.sum())
    for start in range(0, m, CHUNK_ROWS):
        features = model.gram(coalitions[start:start + CHUNK_ROWS]) @ to_alpha
        normal += features.T @ features
        cross += features.T @ residual[start:start + CHUNK_ROWS]
    squares, right = np.linalg.eigh(normal)  # squared singular values of Phi, right singular vectors
    kept = squares > 1e-12 * max(squares.max(), 1e-300)
    if not kept.any():
        return None
    squares, right = squares[kept], right[:, kept]
    projection = right.T @ cross / np.sqrt(squares)  # left singular vectors' coordinates of the residual
    outside_span = residual @ residual - projection @ projection
    best_gcv, best_penalty = np.mean(residual**2), None  # the "no kernel" model
    for relative in GCV_PENALTIES:
        penalty = relative * squares.max()
        shrink = squares / (squares + penalty)
        rss = outside_span + np.sum(((1 - shrink) * projection) ** 2)
        dof = shrink.sum()
        if dof >= m - 1:
            continue
        gcv = rss / m / (1 - dof / m) ** 2
        if gcv < best_gcv:
            best_gcv, best_penalty = gcv, penalty
    if best_penalty is None:
        return None
    weights = right @ (np.sqrt(squares) / (squares + best_penalty) * projection)
    model.alpha = to_alpha @ weights
    return model


def _odd_linear(coalitions: np.ndarray, coef: np.ndarray, n: int, size_degree: int) -> np.ndarray:
    """Odd part of the fitted linear-plus-size model at each coalition."""
    signed = coalitions.astype(float) - (~coalitions).astype(float)
    return (signed @ coef[:n] + (size_basis(coalitions, size_degree) - size_basis(~coalitions, size_degree)) @ coef[n:]) / 2


def kernel_finish(gamma: float, max_centers: int, size_degree: int):
    """The last step of regression_shapley for this estimator: kernel fit, exact values, refit."""

    def finish(run, units, n_sampled, coef):
        design, n = run.design, run.design.n
        first, second = run.first_values, run.second_values
        coalitions = design.first[units]
        residual = (first[units] - second[units]) / 2 - _odd_linear(coalitions, coef, n, size_degree)
        model = fit_odd_kernel(coalitions, residual, gamma, max_centers) if len(units) > n + size_degree + 2 else None
        if model is None:
            return None
        g = np.zeros(len(first))
        g[units] = model(coalitions)
        g_full = float(model(np.ones((1, n), dtype=bool))[0])  # g(empty) = -g(full): g is odd
        args = (design, units, first - g, second + g, run.empty + g_full, run.full - g_full, n_sampled)
        phi = fit_linear(*args, size_degree)[:n] + model.shapley()
        return phi, {"kernel_centers": len(model.centers)}

    return finish


def leverage_shap_krr(game: Game, budget: int, seed: int | None = None, stop: StoppingCriterion | None = None, *,
                      gamma: float = 1.0, max_centers: int = 3000, size_degree: int = 3, **settings) -> Values:
    """Leverage SHAP with size covariates plus an exact-valued kernel-ridge surrogate of the residual
    (module docstring). Same design and evaluations as leverage_shap_size for the same seed and
    budget, so it can re-value a store that estimator filled without a new evaluation."""
    if not gamma > 0:
        raise ProbeError(f"leverage_shap_krr: gamma must be > 0 (the kernel's inverse width), got {gamma}")
    if int(max_centers) < 1:
        raise ProbeError(f"leverage_shap_krr: max_centers must be >= 1, got {max_centers}")
    return regression_shapley(game, budget, seed, stop, distribution="leverage", size_degree=size_degree,
                              name="leverage_shap_krr", finish=kernel_finish(gamma, max_centers, size_degree),
                              extra_settings={"gamma": gamma, "max_centers": max_centers}, **settings)
