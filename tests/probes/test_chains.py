"""chain_krr (the default estimator): no cliff at small budgets, priors, replay, expected error."""

import warnings

import numpy as np
import pytest

from probes.errors import BudgetTooSmallError, ProbeError
from probes.estimators import DEFAULT_ESTIMATOR, get_estimator
from probes.estimators.reliability import UnstableRankingWarning
from probes.game import Game
from probes.synthetic_games import saturating_score_game, soum_game, sparse_pairwise_game
from probes.values import Values

chain_krr = get_estimator("chain_krr")


def error(estimate, truth):
    return np.linalg.norm(estimate - truth) / np.linalg.norm(truth)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableRankingWarning)
        yield


def test_default_is_chain_krr_and_the_old_default_keeps_its_name():
    assert DEFAULT_ESTIMATOR == "chain_krr"
    game = soum_game(16, seed=2).game
    assert get_estimator("leverage_shap_krr")(game, 160, seed=0).estimator == "leverage_shap_krr"


def test_at_the_minimum_budget_it_is_antithetic_permutation_sampling_exact_on_pairwise_games():
    # One chain = one order and its reverse: exact when interactions are at most pairwise.
    known = sparse_pairwise_game(20, seed=3)
    values = chain_krr(known.game, 2 * 20, seed=1)
    assert values.n_evaluations <= 40
    np.testing.assert_allclose(values.means, known.shapley, atol=1e-10)
    old = get_estimator("leverage_shap_krr")(known.game, 40, seed=1)
    assert error(old.means, known.shapley) > 0.01  # a random-pair regression is not exact here


@pytest.mark.parametrize("known", [soum_game(64, seed=64), saturating_score_game(64, seed=64), soum_game(16, seed=16)],
                         ids=["soum_64", "saturating_score_64", "soum_16"])
def test_at_2n_never_worse_than_permutation_sampling_beyond_the_seed_spread(known):
    n = known.game.n_players
    ours = [error(chain_krr(known.game, 2 * n, seed=s).means, known.shapley) for s in range(5)]
    permutation = [error(get_estimator("permutation")(known.game, 2 * n, seed=s).means, known.shapley) for s in range(5)]
    assert np.mean(ours) <= np.mean(permutation) + np.std(permutation)


def test_at_5n_no_worse_than_the_old_default_or_permutation_beyond_the_seed_spread():
    known = saturating_score_game(64, seed=64)
    runs = {name: [error(get_estimator(name)(known.game, 320, seed=s).means, known.shapley) for s in range(4)]
            for name in ("chain_krr", "leverage_shap_krr", "permutation")}
    for other in ("leverage_shap_krr", "permutation"):
        assert np.mean(runs["chain_krr"]) <= np.mean(runs[other]) + np.std(runs[other])


@pytest.mark.parametrize("budget", [128, 320])
def test_a_prior_equal_to_the_truth_gives_the_truth(budget):
    known = soum_game(64, seed=64)
    values = chain_krr(known.game, budget, seed=0, prior=known.shapley)
    assert error(values.means, known.shapley) < 1e-9
    assert values.details["prior_weight"] == 1.0


def test_a_useless_prior_does_not_hurt_beyond_noise():
    known = soum_game(64, seed=64)
    rng = np.random.default_rng(0)
    plain, with_prior = [], []
    for seed in range(3):
        useless = rng.normal(size=64) * known.shapley.std()
        plain.append(error(chain_krr(known.game, 320, seed=seed).means, known.shapley))
        with_prior.append(error(chain_krr(known.game, 320, seed=seed, prior=useless).means, known.shapley))
    assert np.mean(with_prior) <= np.mean(plain) * 1.1


def test_a_prior_by_name_or_values_is_put_in_player_order():
    known = soum_game(16, seed=2)
    by_name = {f"p{i}": float(v) for i, v in reversed(list(enumerate(known.shapley)))}
    as_values = Values(names=known.game.players, means=known.shapley, stderrs=np.zeros(16), n_evaluations=0,
                       estimator="exact", fingerprint=known.game.fingerprint)
    as_array = chain_krr(known.game, 80, seed=0, prior=known.shapley).means
    for prior in (by_name, as_values):
        np.testing.assert_array_equal(chain_krr(known.game, 80, seed=0, prior=prior).means, as_array)


def test_bad_priors_and_budgets_are_refused_with_the_fix():
    known = soum_game(16, seed=2)
    with pytest.raises(ProbeError, match="one value per player \\(16\\)"):
        chain_krr(known.game, 80, seed=0, prior=np.zeros(15))
    with pytest.raises(ProbeError, match="players differ.*missing \\['p15'\\].*unknown \\['q'\\]"):
        chain_krr(known.game, 80, seed=0, prior={**{f"p{i}": 0.0 for i in range(15)}, "q": 1.0})
    other = soum_game(16, seed=3)
    foreign = Values(names=other.game.players, means=other.shapley, stderrs=np.zeros(16), n_evaluations=0,
                     estimator="exact", fingerprint=other.game.fingerprint)
    with pytest.raises(ProbeError, match="another game"):
        chain_krr(known.game, 80, seed=0, prior=foreign)
    with pytest.raises(ProbeError, match="non-finite"):
        chain_krr(known.game, 80, seed=0, prior=np.full(16, np.nan))
    with pytest.raises(BudgetTooSmallError, match="at least 18 evaluations"):
        chain_krr(known.game, 17, seed=0)
    partial = chain_krr(known.game, 18, seed=0)  # the smallest budget: a partial chain, efficient
    assert partial.n_evaluations <= 18
    assert np.isclose(partial.means.sum(), partial.full_value - partial.empty_value)


def test_a_run_is_replayed_from_its_evaluations_without_new_ones():
    known = soum_game(24, seed=5)
    calls = []

    def counted(coalitions):
        calls.append(len(coalitions))
        return known.game.value_function(coalitions)

    game = Game(known.game.players, counted, known.game.fingerprint)
    first = chain_krr(game, 240, seed=2)
    used = game.n_evaluations
    again = chain_krr(game, 240, seed=2)
    assert game.n_evaluations == used  # the game's cache serves every coalition of the same run
    np.testing.assert_array_equal(first.means, again.means)


def test_expected_error_is_reported_and_tracks_the_actual_error():
    known = soum_game(64, seed=64)
    ratios = []
    for seed in range(3):
        values = chain_krr(known.game, 640, seed=seed)
        ratios.append(values.details["expected_relative_error"] / error(values.means, known.shapley))
        assert 0 < values.details["expected_seed_spearman"] <= 1
    # Conservative (the kernel step is not refitted per replicate), but the right order.
    assert 0.7 < np.mean(ratios) < 4


@pytest.mark.parametrize("make", [lambda: soum_game(12, seed=12), lambda: saturating_score_game(10, seed=10),
                                  lambda: sparse_pairwise_game(12, seed=3)])
def test_inside_the_chain_the_expected_error_does_not_understate_the_actual_one(make):
    # At n + 2 evaluations (half a chain) the ridge bootstrap put the expected error 2-12x below the
    # measured one; the spread of the reached players' values around the prior covers the rest.
    known = make()
    n = known.game.n_players
    expected, actual = [], []
    for seed in range(10):
        values = chain_krr(known.game, n + 2, seed=seed)
        expected.append(values.details["expected_relative_error"])
        actual.append(error(values.means, known.shapley))
    assert 0.9 < np.mean(expected) / np.mean(actual) < 5


def test_a_budget_too_small_for_a_stable_ranking_warns_and_a_large_one_does_not():
    known = saturating_score_game(64, seed=64)
    with pytest.warns(UnstableRankingWarning, match="Spearman of the ranking at 0\\.\\d+.*Raise the budget"):
        warnings.simplefilter("always", UnstableRankingWarning)
        chain_krr(known.game, 128, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnstableRankingWarning)
        values = chain_krr(soum_game(16, seed=2).game, 1600, seed=0)
    assert values.details["expected_seed_spearman"] >= 0.8
