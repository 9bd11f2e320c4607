import numpy as np
import shapiq

from probes.estimators.exact import exact_shapley
from probes.shapiq_interop import (
    from_interaction_values,
    from_shapiq_game,
    run_shapiq_approximator,
    to_interaction_values,
    to_shapiq_game,
)
from probes.synthetic_games import soum_game


def test_values_round_trip_through_interaction_values():
    known = soum_game(7, seed=2)
    ours = exact_shapley(known.game)
    converted = to_interaction_values(ours)
    assert converted.index == "SV" and converted[(4,)] == ours.means[4]
    back = from_interaction_values(converted, names=ours.names)
    np.testing.assert_array_equal(back.means, ours.means)
    assert back.names == ours.names


def test_shapiq_game_wrapper_evaluates_through_our_game_both_ways():
    known = soum_game(8, seed=1)
    wrapped = to_shapiq_game(known.game)
    coalitions = np.random.default_rng(0).random((5, 8)) < 0.5
    np.testing.assert_array_equal(wrapped(coalitions), known.game(coalitions))
    ours_again = from_shapiq_game(wrapped, players=known.game.players)
    np.testing.assert_allclose(exact_shapley(ours_again).means, known.shapley, atol=1e-12)


def test_shapiq_approximator_runs_on_our_game_and_fills_provenance():
    known = soum_game(10, seed=3)
    values = run_shapiq_approximator(known.game, shapiq.KernelSHAP, 1024, seed=0, pairing_trick=True)
    assert values.estimator == "shapiq.KernelSHAP" and values.fingerprint == known.game.fingerprint
    # 1024 = 2^10: every coalition, so only shapiq's soft efficiency weight separates it from the truth.
    np.testing.assert_allclose(values.means, known.shapley, atol=1e-4)
    assert np.isnan(values.stderrs).all()
