"""Weighted Banzhaf values: closed forms, regression, exact enumeration, errors, seeds, stores, priors."""

import numpy as np
import pytest
from token_batches import token_batch

from probes.errors import BudgetTooSmallError, ProbeError
from probes.estimators import estimate
from probes.estimators.weighted_banzhaf import exact_weighted_banzhaf, keep_probability, weighted_banzhaf
from probes.game import Game
from probes.metrics import LogProb
from probes.model_game import model_game
from probes.synthetic_games import (additive_game, dummy_players_game, saturating_score_game, soum_game,
                                    sparse_pairwise_game, symmetric_game)


def relative_error(estimate_, truth):
    return np.linalg.norm(estimate_ - truth) / np.linalg.norm(truth)


@pytest.mark.parametrize("make", [lambda: additive_game(9, seed=1), lambda: sparse_pairwise_game(9, seed=2),
                                  lambda: soum_game(9, seed=3), lambda: symmetric_game(9),
                                  lambda: dummy_players_game(9, 3), lambda: saturating_score_game(9, seed=4)])
@pytest.mark.parametrize("p", [0.25, 0.9])
def test_exact_enumeration_equals_the_closed_form(make, p):
    known = make()
    np.testing.assert_allclose(exact_weighted_banzhaf(known.game, p), known.weighted_banzhaf(p), atol=1e-12)


def test_unanimity_game_gives_p_to_the_size_minus_one_to_each_member():
    members = [1, 3, 4, 6]
    game = Game([f"p{i}" for i in range(8)], lambda c: c[:, members].all(axis=1).astype(float), {"game": "u_T"})
    for p in (0.5, 0.8):
        truth = np.zeros(8)
        truth[members] = p ** (len(members) - 1)
        np.testing.assert_allclose(exact_weighted_banzhaf(game, p), truth, atol=1e-12)
        sampled = weighted_banzhaf(game, 200, seed=0, p=p, exact=False)  # 256 coalitions: sample, do not enumerate
        assert np.abs(sampled.means - truth).max() < 0.05


def test_regression_is_exact_on_an_additive_game_as_soon_as_it_can_be_fitted():
    known = additive_game(40, seed=5)
    values = weighted_banzhaf(known.game, 60, seed=0, p=0.9)
    np.testing.assert_allclose(values.means, known.weighted_banzhaf(0.9), atol=1e-9)
    np.testing.assert_allclose(values.stderrs, 0, atol=1e-9)


@pytest.mark.parametrize("make", [lambda: sparse_pairwise_game(30, seed=2), lambda: soum_game(30, seed=3),
                                  lambda: saturating_score_game(30, seed=4)])
def test_regression_converges_to_the_closed_form_with_honest_errors(make):
    known = make()
    truth = known.weighted_banzhaf(0.85)
    small = relative_error(weighted_banzhaf(known.game, 80, seed=1, p=0.85).means, truth)
    values = weighted_banzhaf(known.game, 4000, seed=1, p=0.85)
    assert relative_error(values.means, truth) < 0.05
    assert relative_error(values.means, truth) < small / 2
    z = (values.means - truth) / values.stderrs
    assert 0.3 < np.mean(z**2) < 3.0  # standard errors neither much too small nor much too large


def test_exact_on_a_tiny_model_agrees_with_regression_at_large_budget(tiny_llama):
    batch = token_batch(tiny_llama)
    heads = tiny_llama.components.heads[:8]
    game = model_game(tiny_llama, batch, LogProb(), heads, max_rows=256)
    exact = estimate(game, budget=256, estimator="weighted_banzhaf", p=0.8)
    assert exact.details["exact"] and exact.n_evaluations == 256
    sampled = estimate(game, budget=230, seed=0, estimator="weighted_banzhaf", p=0.8, exact=False)
    assert not sampled.details["exact"] and sampled.n_evaluations <= 230
    assert relative_error(sampled.means, exact.means) < 0.1
    assert np.all(np.abs(sampled.means - exact.means) < 4 * sampled.stderrs + 1e-9)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan"), True, "0.9"])
def test_p_outside_the_open_unit_interval_is_refused(bad):
    with pytest.raises(ProbeError, match="strictly between 0 and 1"):
        weighted_banzhaf(additive_game(5).game, 100, p=bad)


def test_p_comes_from_the_fraction_to_remove_and_defaults_to_ten_percent():
    assert keep_probability(fraction=0.3) == pytest.approx(0.7)
    assert keep_probability() == pytest.approx(0.9)
    assert weighted_banzhaf(additive_game(12).game, 40, seed=0, fraction=0.25).settings["p"] == pytest.approx(0.75)
    with pytest.raises(ProbeError, match="not both"):
        keep_probability(p=0.9, fraction=0.1)
    with pytest.raises(ProbeError, match="fraction"):
        keep_probability(fraction=1.0)


def test_budget_below_a_fit_names_the_minimum_and_a_prior_lowers_it():
    known = additive_game(30, seed=3)
    with pytest.raises(BudgetTooSmallError, match="at least 34"):
        weighted_banzhaf(known.game, 20, seed=0)
    values = weighted_banzhaf(known.game, 20, seed=0, prior=known.weighted_banzhaf(0.9) + 0.01)
    assert relative_error(values.means, known.weighted_banzhaf(0.9)) < 0.05


def test_a_prior_that_is_the_truth_is_kept_and_a_wrong_one_is_overruled():
    known = saturating_score_game(40, seed=1)
    truth = known.weighted_banzhaf(0.9)
    with_truth = weighted_banzhaf(known.game, 80, seed=2, p=0.9, prior=truth)
    without = weighted_banzhaf(known.game, 80, seed=2, p=0.9)
    assert relative_error(with_truth.means, truth) < relative_error(without.means, truth) / 3
    wrong = weighted_banzhaf(known.game, 2000, seed=2, p=0.9, prior=-5 * truth)
    assert relative_error(wrong.means, truth) < 0.1


def test_msr_with_a_control_variate_has_lower_error_than_plain_msr():
    known = saturating_score_game(40, seed=1)
    truth = known.weighted_banzhaf(0.9)
    prior = truth * 0.8  # a decent but imperfect first-order model
    plain = [relative_error(weighted_banzhaf(known.game, 300, seed=s, p=0.9, method="msr").means, truth)
             for s in range(5)]
    controlled = [relative_error(weighted_banzhaf(known.game, 300, seed=s, p=0.9, method="msr", prior=prior).means,
                                 truth) for s in range(5)]
    assert np.mean(controlled) < np.mean(plain) / 3


def test_bad_prior_and_method_are_refused():
    game = additive_game(6).game
    with pytest.raises(ProbeError, match="one per player"):
        weighted_banzhaf(game, 40, prior=np.zeros(5))
    with pytest.raises(ProbeError, match="no coefficient"):
        weighted_banzhaf(game, 40, prior={"p0": 1.0})
    with pytest.raises(ProbeError, match="unknown weighted_banzhaf method"):
        weighted_banzhaf(game, 40, method="lasso")


def test_same_seed_gives_identical_values_and_another_seed_differs():
    game = soum_game(25, seed=1).game
    a = estimate(game, budget=200, seed=7, estimator="weighted_banzhaf", p=0.9)
    b = estimate(game, budget=200, seed=7, estimator="weighted_banzhaf", p=0.9)
    c = estimate(game, budget=200, seed=8, estimator="weighted_banzhaf", p=0.9)
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.stderrs, b.stderrs)
    assert not np.allclose(a.means, c.means)
    assert a.estimator == "weighted_banzhaf" and a.n_evaluations <= 200


def test_resume_from_store_gives_identical_values_without_evaluating(tmp_path):
    known = soum_game(20, seed=2)
    calls = []

    def counted(c):
        calls.append(len(c))
        return known.game.value_function(c)

    first = weighted_banzhaf(Game(known.game.players, counted, {"g": "soum"}, store=tmp_path / "s"), 150, seed=3)
    evaluated = sum(calls)
    assert evaluated == first.n_evaluations
    again = weighted_banzhaf(Game(known.game.players, counted, {"g": "soum"}, store=tmp_path / "s"), 150, seed=3)
    assert sum(calls) == evaluated  # nothing evaluated twice
    np.testing.assert_array_equal(first.means, again.means)
    np.testing.assert_array_equal(first.stderrs, again.stderrs)
    bigger = weighted_banzhaf(Game(known.game.players, counted, {"g": "soum"}, store=tmp_path / "s"), 300, seed=3)
    assert sum(calls) - evaluated == bigger.n_evaluations - first.n_evaluations  # the smaller run is a prefix


def test_a_stopping_criterion_ends_sampling_early():
    from probes.stopping import StandardErrorBelow

    known = sparse_pairwise_game(20, seed=1)
    full = weighted_banzhaf(known.game, 3000, seed=0, p=0.9)
    stopped = weighted_banzhaf(known.game, 3000, seed=0, p=0.9, stop=StandardErrorBelow(0.2))
    assert stopped.n_evaluations < full.n_evaluations
    assert stopped.details["rounds"] < 8
