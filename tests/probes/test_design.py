"""Paired designs are nested (a bigger budget extends a smaller run) and lazy (memory and time before
the first evaluation do not depend on the budget); budgets beyond the game are cut with a warning.
Issue 19, items 13 and 17."""

import tracemalloc
import warnings

import numpy as np
import pytest

from probes.estimators import get_estimator
from probes.estimators._design import draw_paired_design, units_in_stratum
from probes.estimators.exact import exact_shapley
from probes.game import Game
from probes.synthetic_games import soum_game

FINGERPRINT = {"model": "synthetic", "task": "soum", "metric": "value", "ablation": "none"}


@pytest.mark.parametrize("n", [9, 12, 40])
@pytest.mark.parametrize("distribution", ["leverage", "kernel"])
def test_the_first_units_of_a_bigger_design_are_the_smaller_design(n, distribution):
    small = draw_paired_design(n, 30, np.random.default_rng(3), distribution)
    big = draw_paired_design(n, 200, np.random.default_rng(3), distribution)
    np.testing.assert_array_equal(big.first[:30], small.first)
    np.testing.assert_array_equal(big.stratum[:30], small.stratum)
    assert len({row.tobytes() for row in np.packbits(big.first, axis=1)}) == len(big.first)  # no repeats
    sizes = big.first.sum(1)
    np.testing.assert_array_equal(np.minimum(sizes, n - sizes), big.stratum)


def test_a_prefix_is_a_stratified_design_with_every_stratum_and_full_strata_saturated():
    n = 12
    design = draw_paired_design(n, 120, np.random.default_rng(0), "leverage")
    counts = np.bincount(design.stratum, minlength=n // 2 + 1)[1:]
    assert (counts > 0).all()
    for k, m in enumerate(counts, start=1):
        full = m == units_in_stratum(n, k)
        assert (k in design.saturated_strata) == full
        assert design.sampled[design.stratum == k].all() != full
    q = design.q[design.q > 0]
    np.testing.assert_allclose(q * design.n_sampled, counts[design.q > 0])
    # Equal mass per size ("leverage"): the sampled strata hold equal numbers of units, within one.
    middle = n // 2
    sampled_counts = [counts[k - 1] * (2 if k == middle else 1) for k in range(1, middle + 1)
                      if k not in design.saturated_strata]
    assert max(sampled_counts) - min(sampled_counts) <= 2


@pytest.mark.parametrize("estimator", ["leverage_shap_krr", "leverage_shap_size", "kernel_shap", "msr", "permutation"])
def test_a_bigger_budget_with_the_same_seed_extends_the_smaller_run(tmp_path, estimator):
    known = soum_game(30, seed=2)
    game = Game(known.game.players, known.game.value_function, FINGERPRINT, store=tmp_path / "s")
    get_estimator(estimator)(game, 240, seed=7)
    first = game.n_evaluations
    game.store.close()
    del game
    resumed = Game(known.game.players, known.game.value_function, FINGERPRINT, store=tmp_path / "s")
    get_estimator(estimator)(resumed, 900, seed=7)
    if estimator == "permutation":  # whole permutations only, and a few coalitions repeat between them
        assert 0 < resumed.n_evaluations <= 900 - first
    else:
        assert resumed.n_evaluations == 900 - first  # before: 898 of 900 recomputed


def measure_until_first_evaluation(n: int, budget: int, estimator: str | None = None) -> tuple[int, float]:
    """(coalitions in the first request after v(empty), v(full); peak traced MB until then)."""

    class Reached(Exception):
        pass

    def value(coalitions):
        if len(coalitions) > 2:
            raise Reached(len(coalitions))
        return coalitions.sum(1).astype(float)

    game = Game([f"p{i}" for i in range(n)], value)
    tracemalloc.start()
    try:
        get_estimator(estimator)(game, budget, seed=0)
    except Reached as reached:
        size = reached.args[0]
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return size, peak


@pytest.mark.parametrize("estimator", [None, "permutation"])
def test_memory_before_the_first_evaluation_does_not_depend_on_the_budget(estimator):
    # Before: 64 players at budget 10^9 hung in the design; at 2 * 10^5 it already took ~100 MB.
    _, small_peak = measure_until_first_evaluation(64, 2 * 10**5, estimator)
    assert small_peak < 40
    huge_size, huge_peak = measure_until_first_evaluation(64, 10**9, estimator)
    assert huge_peak < 40 and huge_size <= 2 * (1 << 14)


def test_a_budget_beyond_every_coalition_is_cut_to_the_game_with_a_warning():
    known = soum_game(8, seed=1)
    with pytest.warns(UserWarning, match=r"budget 1000000 exceeds the 2\^8 = 256 distinct coalitions"):
        values = get_estimator("leverage_shap_size")(known.game, 10**6, seed=0)
    assert values.details["budget_capped_to"] == 256 and values.n_evaluations == 256
    np.testing.assert_allclose(values.means, exact_shapley(known.game).means, atol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "budget_capped_to" not in get_estimator("leverage_shap_size")(known.game, 256, seed=0).details
