"""Shapley estimators (and the weighted Banzhaf values for pruning), one file per family, one call shape:

    estimate(game, budget=..., seed=..., stop=None, **settings) -> Values

`get_estimator(name)` returns that function; `register_estimator(name, fn)` adds one (ESTIMATORS is
a read-only view of what is registered). DEFAULT_ESTIMATOR was chosen by error per evaluation over
budgets 2n-20n (benchmarks/estimators.py writes the table, benchmarks/results/estimators.json).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import MappingProxyType

from probes.errors import ProbeError
from probes.estimators import (bandit, chains, exact, interaction, kernel_ridge, msr, ordered, owen, permutation,
                               regression, weighted_banzhaf)
from probes.values import Values

Estimator = Callable[..., Values]

_REGISTRY: dict[str, Estimator] = {
    "exact": exact.exact_shapley,
    "permutation": permutation.permutation_shapley,
    "bandit": bandit.bandit_shapley,
    "kernel_shap": regression.kernel_shap,
    "leverage_shap": regression.leverage_shap,
    "leverage_shap_size": regression.leverage_shap_size,
    "leverage_shap_krr": kernel_ridge.leverage_shap_krr,
    "chain_krr": chains.chain_krr,
    # Each version as it was, so a store or values file a version made replays to the same values.
    "chain_krr@1": functools.partial(chains.chain_krr, version=1),
    "chain_krr@2": functools.partial(chains.chain_krr, version=2),
    "chain_krr@3": functools.partial(chains.chain_krr, version=3),
    "chain_krr@4": functools.partial(chains.chain_krr, version=4),
    "msr": msr.msr_shapley,
    "sliding_window": ordered.sliding_window_values,
    "neighbourhood": ordered.neighbourhood_values,
    "owen": owen.estimate,
    "interaction": interaction.interaction_values,
    # Not a Shapley estimator: p-weighted Banzhaf values for pruning near an operating point.
    "weighted_banzhaf": weighted_banzhaf.weighted_banzhaf,
}
# Read-only: add an estimator with register_estimator, so a typo cannot silently replace one.
ESTIMATORS = MappingProxyType(_REGISTRY)

# Chosen from the benchmark table at every budget 2n-20n (see module docstring): one antithetic
# permutation chain read as regression pairs, then Leverage SHAP pairs, ridge toward a prior and
# the kernel-ridge step of leverage_shap_krr (chains.py). At 2n it is antithetic permutation
# sampling; from min(max(3, sqrt n), 8) * n evaluations on it is leverage_shap_krr's run with one
# size covariate instead of three (version 4; version 3: from max(3, sqrt n) * n, three covariates).
# leverage_shap_krr, the default before, keeps its name and exact behaviour, so its stores and
# values files replay unchanged.
DEFAULT_ESTIMATOR = "chain_krr"


def register_estimator(name: str, estimator: Estimator, *, replace: bool = False) -> Estimator:
    """Make `estimator` callable as estimate(game, ..., estimator=name) and get_estimator(name).

    estimator(game, budget=None, seed=None, stop=None, **settings) -> Values, like the built-in ones.
    replace=True overwrites an estimator of that name (a built-in one included). Returns `estimator`,
    so it works as a decorator: `@functools.partial(register_estimator, "mine")`.
    """
    if not isinstance(name, str) or not name.strip():
        raise ProbeError(f"an estimator name must be a non-empty string, got {name!r}")
    if not callable(estimator):
        raise ProbeError(f"estimator {name!r} must be callable as estimator(game, budget=, seed=, stop=, ...); "
                         f"got {type(estimator).__name__}")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not estimator:
        raise ProbeError(f"an estimator named {name!r} is already registered; choose another name or pass replace=True")
    _REGISTRY[name] = estimator
    return estimator


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
