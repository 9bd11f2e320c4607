"""Every estimator against closed-form truths: convergence, axioms, seeds, bad budgets."""

import numpy as np
import pytest
import shapiq

from probes.errors import BudgetTooSmallError, ProbeError, TooManyPlayersError
from probes.estimators import DEFAULT_ESTIMATOR, ESTIMATORS, get_estimator
from probes.estimators.exact import exact_shapley
from probes.estimators.interaction import exact_interaction_values, interaction_values
from probes.estimators.owen import owen_values
from probes.estimators.surrogates import BoostedTreeSurrogate
from probes.game import Game
from probes.shapiq_interop import from_interaction_values, to_shapiq_game
from probes.stopping import MaxEvaluations, StandardErrorBelow
from probes.synthetic_games import (
    additive_game,
    dummy_players_game,
    harmful_player_game,
    saturating_score_game,
    soum_game,
    symmetric_game,
)

SAMPLERS = ["permutation", "kernel_shap", "leverage_shap", "leverage_shap_size", "leverage_shap_krr", "chain_krr", "msr"]


def extra_settings(name, n):
    """Settings an estimator cannot run without on games whose players are named p0, p1, ..."""
    if name == "interaction":
        return {"players": ["p0", "p1", "p2"]}
    if name == "owen":
        return {"groups": [f"g{i % 3}" for i in range(n)]}
    return {}


def relative_error(estimate, truth):
    return np.linalg.norm(estimate - truth) / np.linalg.norm(truth)


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampling_estimators_converge_to_the_closed_form(name):
    known = soum_game(10, seed=4)
    small = np.mean([relative_error(get_estimator(name)(known.game, 60, seed=s).means, known.shapley) for s in range(3)])
    large = np.mean([relative_error(get_estimator(name)(known.game, 3000, seed=s).means, known.shapley) for s in range(3)])
    assert large < 0.08
    assert large < small / 2


@pytest.mark.parametrize("name", SAMPLERS)
def test_standard_errors_are_honest(name):
    known = saturating_score_game(24, seed=1)
    z = []
    for seed in range(4):
        values = get_estimator(name)(known.game, 600, seed=seed)
        z.append((values.means - known.shapley) / values.stderrs)
    z = np.concatenate(z)
    # Not exact normal theory, but an SE that were 3x too small would fail this.
    assert 0.3 < np.sqrt(np.mean(z**2)) < 2.0


@pytest.mark.parametrize("name", SAMPLERS)
def test_efficiency_holds(name):
    values = get_estimator(name)(soum_game(16, seed=2).game, 200, seed=0)
    assert abs(values.efficiency_gap) < 1e-8


@pytest.mark.parametrize("name", SAMPLERS + ["bandit", "owen"])
def test_symmetric_players_get_equal_values(name):
    known = symmetric_game(12)
    for budget in (200, 2000):
        values = get_estimator(name)(known.game, budget, seed=1, **extra_settings(name, 12))
        # Equal in expectation; an estimate may differ by its own noise, so the tolerance shrinks with
        # budget. Pooled (max) stderr: with few samples a single player's stderr can be small by chance.
        tolerance = 5 * np.nan_to_num(values.stderrs, nan=1.0).max() + 1e-8
        assert np.all(np.abs(values.means - known.shapley) <= tolerance)


@pytest.mark.parametrize("name", SAMPLERS)
def test_null_players_get_zero_within_budget_dependent_tolerance(name):
    known = dummy_players_game(14, n_dummies=4, seed=3)
    for budget in (200, 2000):
        values = get_estimator(name)(known.game, budget, seed=0)
        # Pairwise game: antithetic/paired designs are exact; allow a few standard errors anyway.
        tolerance = 4 * np.nan_to_num(values.stderrs[-4:], nan=1.0) + 1e-8
        assert np.all(np.abs(values.means[-4:]) <= tolerance)


@pytest.mark.parametrize("name", SAMPLERS)
def test_linearity_with_shared_seed(name):
    a, b = soum_game(12, seed=1), soum_game(12, seed=2)
    both = Game(a.game.players, lambda c: a.game.value_function(c) + 2 * b.game.value_function(c))
    estimator = get_estimator(name)
    left = estimator(both, 300, seed=7).means
    right = estimator(a.game, 300, seed=7).means + 2 * estimator(b.game, 300, seed=7).means
    np.testing.assert_allclose(left, right, atol=1e-8)


@pytest.mark.parametrize("name", SAMPLERS + ["bandit", "owen", "interaction"])
def test_same_seed_gives_identical_output_and_other_seed_differs(name):
    known = soum_game(12, seed=5)
    run = lambda seed: get_estimator(name)(known.game, 400, seed=seed, **extra_settings(name, 12))  # noqa: E731
    first, again, other = run(3), run(3), run(4)
    np.testing.assert_array_equal(first.means, again.means)
    np.testing.assert_array_equal(first.stderrs, again.stderrs)
    assert not np.array_equal(first.means, other.means)


@pytest.mark.parametrize("name", SAMPLERS + ["bandit", "owen", "interaction"])
def test_budget_below_minimum_names_the_minimum(name):
    game = soum_game(20).game
    with pytest.raises(BudgetTooSmallError, match="at least \\d+"):
        get_estimator(name)(game, 5, seed=0, **extra_settings(name, 20))


def test_exact_matches_shapiq_exact_computer():
    known = soum_game(9, seed=6)
    ours = exact_shapley(known.game)
    theirs = shapiq.ExactComputer(to_shapiq_game(known.game), n_players=9)("SV", 1)
    np.testing.assert_allclose(ours.means, from_interaction_values(theirs).means, atol=1e-12)
    np.testing.assert_allclose(ours.means, known.shapley, atol=1e-12)
    assert ours.n_evaluations == 2**9


def test_exact_refuses_large_games_with_the_evaluation_count():
    game = additive_game(30).game
    with pytest.raises(TooManyPlayersError, match="2\\^30 = 1,073,741,824 evaluations"):
        exact_shapley(game)
    with pytest.raises(BudgetTooSmallError, match="512"):
        exact_shapley(additive_game(9).game, budget=100)


def test_tree_surrogate_shapley_values_are_exact():
    rng = np.random.default_rng(0)
    x = rng.random((300, 8)) < 0.5
    y = x[:, 0] * x[:, 1] - 2 * x[:, 2] * ~x[:, 3] + rng.normal(scale=0.1, size=300)
    trees = BoostedTreeSurrogate(n_estimators=20, max_depth=3).fit(x, y)
    truth = exact_shapley(Game([f"p{i}" for i in range(8)], trees.predict)).means
    np.testing.assert_allclose(trees.shapley(8), truth, atol=1e-10)


def test_msr_with_trees_converges_and_stays_efficient():
    known = soum_game(10, seed=4)
    values = get_estimator("msr")(known.game, 2000, seed=0, surrogate="linear+size+trees",
                                  surrogate_settings={"trees": {"n_estimators": 30}})
    assert relative_error(values.means, known.shapley) < 0.08
    assert abs(values.efficiency_gap) < 1e-8


def test_bandit_flags_the_harmful_player_and_only_it():
    known = harmful_player_game(16, harmful=3, seed=2)
    values = get_estimator("bandit")(known.game, 4000, seed=0, threshold=0.0)
    assert values.details["decision"][3] == "below"
    assert all(d == "above" for i, d in enumerate(values.details["decision"]) if i != 3)
    assert values.means[3] < 0


def test_bandit_stops_sampling_decided_players():
    known = soum_game(16, seed=1)
    values = get_estimator("bandit")(known.game, 20000, seed=0)
    samples = np.array(values.details["n_samples"])
    assert samples.min() < samples.max()  # decided players were dropped early


def test_owen_group_values_equal_shapley_of_the_game_between_groups():
    known = soum_game(9, seed=7)
    labels = ["a", "a", "a", "b", "b", "c", "c", "c", "c"]
    result = owen_values(known.game, 6000, seed=0, groups=labels)
    members = {g: [i for i, x in enumerate(labels) if x == g] for g in "abc"}

    def quotient(groups_present):
        rows = np.zeros((len(groups_present), 9), dtype=bool)
        for g, name in enumerate("abc"):
            rows[:, members[name]] = groups_present[:, [g]]
        return known.game(rows)

    truth = exact_shapley(Game(list("abc"), quotient)).means
    np.testing.assert_allclose(result.groups.means, truth, atol=5 * result.groups.stderrs.max() + 1e-9)
    assert abs(result.players.efficiency_gap) < 1e-9


def test_owen_groups_parsed_from_head_names_and_equal_shapley_on_additive_game():
    known = additive_game(6, seed=1)
    names = [f"L{i // 3}.H{i % 3}" for i in range(6)]
    game = Game(names, known.game.value_function)
    result = owen_values(game, 200, seed=0)
    assert result.groups.names == ["L0", "L1"]
    np.testing.assert_allclose(result.players.means, known.shapley, atol=1e-10)


def test_interaction_index_converges_to_exact():
    known = soum_game(9, seed=8)
    exact = exact_interaction_values(known.game, players=["p0", "p1", "p2", "p3"])
    sampled = interaction_values(known.game, 12000, seed=0, players=["p0", "p1", "p2", "p3"])
    assert sampled.names == exact.names == ["(p0, p1)", "(p0, p2)", "(p0, p3)", "(p1, p2)", "(p1, p3)", "(p2, p3)"]
    assert sampled.details["pairs"][0] == ["p0", "p1"]
    assert np.all(np.abs(sampled.means - exact.means) <= 5 * sampled.stderrs + 1e-9)


def test_interaction_of_a_pure_pair_game_is_the_pair_coefficient():
    game = Game(["a", "b", "c"], lambda c: 2.0 * (c[:, 0] & c[:, 1]) + c[:, 2])
    exact = exact_interaction_values(game, pairs=[("a", "b"), ("a", "c")])
    np.testing.assert_allclose(exact.means, [2.0, 0.0], atol=1e-12)


def test_sliding_window_over_all_players_is_exact_and_narrow_windows_report_their_gap():
    known = soum_game(8, seed=9)
    full_window = get_estimator("sliding_window")(known.game, window=8)
    np.testing.assert_allclose(full_window.means, known.shapley, atol=1e-12)
    narrow = get_estimator("sliding_window")(known.game, window=3)
    assert narrow.n_evaluations < 2**8 and np.isfinite(narrow.efficiency_gap)


def test_sliding_window_of_additive_game_is_exact():
    known = additive_game(10, seed=2)
    values = get_estimator("sliding_window")(known.game, window=3)
    np.testing.assert_allclose(values.means, known.shapley, atol=1e-12)


def test_neighbourhood_single_removals_are_leave_one_out():
    known = soum_game(7, seed=3)
    values = get_estimator("neighbourhood")(known.game, max_window=1)
    full = known.game.full_value
    loo = [full - known.game(~np.eye(7, dtype=bool)[i])[0] for i in range(7)]
    np.testing.assert_allclose(values.means, loo)
    assert values.n_evaluations == 2 + 7
    with pytest.raises(BudgetTooSmallError, match="at least"):
        get_estimator("neighbourhood")(known.game, budget=5, max_window=3)


def test_stopping_criterion_ends_sampling_early():
    known = additive_game(12, seed=0)  # permutation marginals are exact: stderr 0 after 2 pairs
    values = get_estimator("permutation")(known.game, 20000, seed=0, stop=StandardErrorBelow(1e-6))
    assert values.n_evaluations < 2000
    capped = get_estimator("msr")(soum_game(12).game, 2000, seed=0, stop=MaxEvaluations(300))
    assert capped.n_evaluations < 2000


def test_registry_knows_every_family_and_refuses_unknown_names():
    assert {"exact", "permutation", "bandit", "kernel_shap", "leverage_shap", "msr", "sliding_window",
            "neighbourhood", "owen", "interaction"} <= set(ESTIMATORS)
    assert DEFAULT_ESTIMATOR in ESTIMATORS
    with pytest.raises(ProbeError, match="available"):
        get_estimator("nope")
