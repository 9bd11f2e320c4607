"""Shapley estimators (and the weighted Banzhaf values for pruning), one file per family, one call shape:

    estimate(game, budget=..., seed=..., stop=None, **settings) -> Values

`get_estimator(name)` returns that function. DEFAULT_ESTIMATOR is the one with the lowest error
per evaluation at budget 10 n in benchmarks/results/estimators.json (benchmarks/estimators.py).
"""

from __future__ import annotations

from collections.abc import Callable

from probes.errors import ProbeError
from probes.estimators import (bandit, exact, interaction, kernel_ridge, msr, ordered, owen, permutation, regression,
                               weighted_banzhaf)
from probes.values import Values

Estimator = Callable[..., Values]

ESTIMATORS: dict[str, Estimator] = {
    "exact": exact.exact_shapley,
    "permutation": permutation.permutation_shapley,
    "bandit": bandit.bandit_shapley,
    "kernel_shap": regression.kernel_shap,
    "leverage_shap": regression.leverage_shap,
    "leverage_shap_size": regression.leverage_shap_size,
    "leverage_shap_krr": kernel_ridge.leverage_shap_krr,
    "msr": msr.msr_shapley,
    "sliding_window": ordered.sliding_window_values,
    "neighbourhood": ordered.neighbourhood_values,
    "owen": owen.estimate,
    "interaction": interaction.interaction_values,
    # Not a Shapley estimator: p-weighted Banzhaf values for pruning near an operating point.
    "weighted_banzhaf": weighted_banzhaf.weighted_banzhaf,
}

# Chosen from the benchmark table (see module docstring): Leverage SHAP with coalition-size
# covariates and a kernel-ridge surrogate of its residual had the lowest error at 10 n over the
# benchmark games (geometric mean of its error relative to the best estimator per game: 1.03; it is
# the best on 6 of 7 games, KernelSHAP on the tiny GPT-2). It draws the same design as
# leverage_shap_size, so stores filled by either serve both.
DEFAULT_ESTIMATOR = "leverage_shap_krr"


def get_estimator(name: str | None = None) -> Estimator:
    """The estimator called `name` (the default one when None)."""
    name = DEFAULT_ESTIMATOR if name is None else name
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ProbeError(f"unknown estimator {name!r}; available: {sorted(ESTIMATORS)}") from None


def estimate(game, budget=None, seed=None, stop=None, *, estimator: str | None = None, **settings) -> Values:
    """Shapley values of `game` with the named (or default) estimator."""
    return get_estimator(estimator)(game, budget=budget, seed=seed, stop=stop, **settings)
