"""The seed agreement a run predicts from its own standard errors (probes/estimators/reliability.py)."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from probes.estimators.reliability import deconvolved_seed_spearman, expected_seed_spearman


def two_runs(truth, stderr, rng):
    return truth + stderr * rng.standard_normal(len(truth)), truth + stderr * rng.standard_normal(len(truth))


@pytest.mark.parametrize("case", ["heavy_tailed", "gaussian"])
def test_the_deconvolved_prediction_matches_two_seeds_where_the_plain_one_is_optimistic(case):
    # Most players near zero and noise of their size (SmolLM2's heads): the spread of an estimate is
    # partly noise, which the simulation around the estimate counts as signal.
    rng = np.random.default_rng(1)
    measured, plain, deconvolved = [], [], []
    for _ in range(5):
        if case == "heavy_tailed":
            truth, stderr = np.concatenate([0.1 * rng.standard_normal(280), 3 * rng.standard_normal(20)]), 0.3
        else:
            truth, stderr = rng.standard_normal(300), 1.0
        first, second = two_runs(truth, stderr, rng)
        stderrs = np.full(len(truth), stderr)
        measured.append(spearmanr(first, second).statistic)
        plain.append(expected_seed_spearman(first, stderrs))
        deconvolved.append(deconvolved_seed_spearman(first, stderrs))
    assert abs(np.mean(deconvolved) - np.mean(measured)) < 0.08
    assert np.mean(plain) > np.mean(measured) + 0.15


def test_exact_values_agree_perfectly_and_missing_errors_give_no_prediction():
    means = np.array([3.0, 1.0, 2.0, 0.5])
    assert deconvolved_seed_spearman(means, np.zeros(4)) == 1.0
    assert deconvolved_seed_spearman(means, np.array([0.1, np.nan, 0.1, 0.1])) is None
    assert deconvolved_seed_spearman(means[:2], np.ones(2)) is None


def test_many_players_stay_fast_and_pure_noise_predicts_no_agreement():
    rng = np.random.default_rng(0)
    means = rng.standard_normal(20_000)  # constant truth: all the spread is noise
    assert abs(deconvolved_seed_spearman(means, np.ones(20_000))) < 0.1
