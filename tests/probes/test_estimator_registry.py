"""register_estimator: new estimators by registration; the registry is read-only from outside."""

import numpy as np
import pytest

from probes.errors import ProbeError
from probes.estimators import ESTIMATORS, estimate, get_estimator, register_estimator
from probes.estimators.exact import exact_shapley
from probes.synthetic_games import additive_game


def test_a_registered_estimator_is_called_through_estimate_and_cannot_be_shadowed_by_accident():
    calls = []

    def halved_exact(game, budget=None, seed=None, stop=None, **settings):
        calls.append((budget, seed, settings))
        return exact_shapley(game) * 0.5

    name = "halved_exact_for_registry_test"
    try:
        assert register_estimator(name, halved_exact) is halved_exact
        known = additive_game(4, seed=2)
        values = estimate(known.game, budget=7, seed=1, estimator=name, extra=True)
        np.testing.assert_allclose(values.means, 0.5 * known.shapley)
        assert calls == [(7, 1, {"extra": True})] and get_estimator(name) is halved_exact
        with pytest.raises(ProbeError, match="already registered"):
            register_estimator(name, exact_shapley)
        register_estimator(name, exact_shapley, replace=True)
        assert ESTIMATORS[name] is exact_shapley
    finally:
        from probes import estimators

        estimators._REGISTRY.pop(name, None)


def test_bad_registrations_and_in_place_edits_are_refused():
    with pytest.raises(ProbeError, match="non-empty string"):
        register_estimator("", exact_shapley)
    with pytest.raises(ProbeError, match="callable"):
        register_estimator("not_callable", 3)
    with pytest.raises(TypeError):
        ESTIMATORS["exact"] = exact_shapley  # read-only view: register_estimator(..., replace=True) instead
