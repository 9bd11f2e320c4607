"""Coalition surrogate fitted on stored evaluations, used as a control variate."""

import numpy as np
import pytest

from probes.amortized import CoalitionSurrogate, control_variate_shapley
from probes.estimators import estimate
from probes.game import Game
from probes.synthetic_games import additive_game, saturating_score_game


def _fresh(known):
    return Game(known.game.players, known.game.value_function, known.game.fingerprint)


def test_surrogate_fitted_on_a_store_recovers_an_additive_game(tmp_path):
    known = additive_game(12, seed=0)
    game = Game(known.game.players, known.game.value_function, known.game.fingerprint, store=tmp_path / "store")
    estimate(game, budget=40, seed=0)
    surrogate = CoalitionSurrogate(trees=False, ridge=1e-9).fit_store(game.store)
    assert surrogate.n_fitted == len(game.store)
    np.testing.assert_allclose(surrogate.shapley(), known.shapley, atol=1e-5)
    values = control_variate_shapley(_fresh(known), surrogate, budget=30, seed=1, estimator="permutation")
    np.testing.assert_allclose(values.means, known.shapley, atol=1e-5)


def test_tree_shapley_values_sum_to_the_fit_of_full_minus_empty():
    rng = np.random.default_rng(0)
    known = saturating_score_game(10, seed=1)
    coalitions = rng.random((200, 10)) < 0.5
    surrogate = CoalitionSurrogate(seed=0).fit(coalitions, known.game(coalitions))
    assert surrogate.trees is not None
    ends = surrogate(np.array([np.ones(10, bool), np.zeros(10, bool)]))
    assert surrogate.shapley().sum() == pytest.approx(ends[0] - ends[1], abs=1e-8)


def test_control_variate_from_earlier_evaluations_lowers_permutation_error():
    known = saturating_score_game(48, seed=0)
    earlier = _fresh(known)
    estimate(earlier, budget=1000, seed=100)  # a previous run; its evaluations train the surrogate
    coalitions = np.array([np.frombuffer(k, np.uint8) for k in earlier._memory], dtype=np.uint8)
    matrix = np.unpackbits(coalitions, axis=1, count=48).astype(bool)
    surrogate = CoalitionSurrogate(seed=0).fit(matrix, np.array(list(earlier._memory.values())))
    error = lambda phi: np.linalg.norm(phi - known.shapley) / np.linalg.norm(known.shapley)
    plain = [error(estimate(_fresh(known), budget=200, seed=s, estimator="permutation").means) for s in range(4)]
    cv = [error(control_variate_shapley(_fresh(known), surrogate, budget=200, seed=s,
                                        estimator="permutation").means) for s in range(4)]
    assert np.mean(cv) < 0.85 * np.mean(plain), (plain, cv)


def test_surrogate_refuses_a_game_with_other_players():
    surrogate = CoalitionSurrogate(trees=False).fit(np.eye(4, dtype=bool), np.arange(4.0))
    with pytest.raises(Exception, match="4 players"):
        control_variate_shapley(_fresh(additive_game(5)), surrogate, budget=20, seed=0)
