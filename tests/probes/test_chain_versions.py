"""chain_krr version 2 on small games (design without repeats, no ridge once determined) and the
versioning that keeps version-1 stores and values replayable."""

import json
import warnings

import numpy as np
import pytest

from probes.errors import ProbeError
from probes.estimators import get_estimator
from probes.estimators.chains import VERSION, ChainSequence, chainless_budget
from probes.estimators.reliability import UnstableRankingWarning
from probes.game import Game
from probes.synthetic_games import saturating_game, soum_game

chain_krr = get_estimator("chain_krr")


def error(estimate, truth):
    return np.linalg.norm(estimate - truth) / np.linalg.norm(truth)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableRankingWarning)
        warnings.filterwarnings("ignore", message="budget .* exceeds")
        yield


@pytest.mark.parametrize("n", [5, 8])
def test_the_pairs_continue_the_chain_without_repeats_and_end_with_every_coalition(n):
    sequence = ChainSequence(n, 2**n, np.random.default_rng(0))
    design = sequence.design(sequence.max_units)
    assert sequence.max_units == 2 ** (n - 1) - 1  # every complementary pair but (empty, full)
    np.testing.assert_array_equal(design.first[: n - 1], sequence.chain)  # the chain comes first
    coalitions = np.concatenate([design.first, ~design.first])
    assert len({row.tobytes() for row in np.packbits(coalitions, axis=1)}) == 2**n - 2  # no repeats
    assert design.sampled.sum() == 0  # every stratum enumerated: the fit is exact


def test_at_every_coalition_the_values_are_exact_where_version_1_was_not():
    known = soum_game(7, seed=7)
    assert error(chain_krr(known.game, 2**7, seed=0).means, known.shapley) < 1e-9
    old = get_estimator("chain_krr@1")(known.game, 2**7, seed=0)  # chain units repeated: fewer distinct coalitions
    assert old.n_evaluations < 2**7


@pytest.mark.parametrize("known,budget", [(soum_game(7, seed=7), 96), (saturating_game(8, seed=8), 128)],
                         ids=["soum_7@96", "tanh_pairwise_8@128"])
def test_near_every_coalition_no_worse_than_leverage_shap_krr_beyond_the_seed_spread(known, budget):
    # Version 1 erred 2-4x more than leverage_shap_krr here (ridge toward the chain, repeated units).
    ours = [error(chain_krr(known.game, budget, seed=s).means, known.shapley) for s in range(6)]
    other = [error(get_estimator("leverage_shap_krr")(known.game, budget, seed=s, n_bootstrap=0).means, known.shapley)
             for s in range(6)]
    assert np.mean(ours) <= np.mean(other) + np.std(other)


def test_values_record_the_version_and_an_unknown_version_is_refused():
    known = soum_game(10, seed=1)
    assert chain_krr(known.game, 60, seed=0).settings["version"] == VERSION == 4
    assert get_estimator("chain_krr@1")(known.game, 60, seed=0).settings["version"] == 1
    with pytest.raises(ProbeError, match="unknown version 5; 1 .*, 2 .*, 3 .* or 4"):
        chain_krr(known.game, 60, seed=0, version=5)


def counted_game(known, store):
    calls = []

    def value(coalitions):
        calls.append(len(coalitions))
        return known.game.value_function(coalitions)

    return Game(known.game.players, value, known.game.fingerprint, store=store), calls


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "made-before-versions-were-recorded"])
def test_a_store_holding_a_version_1_run_is_refused_naming_the_fix_and_replayed_by_chain_krr_at_1(tmp_path, recorded):
    known = soum_game(12, seed=4)
    game, _ = counted_game(known, tmp_path / "store")
    old = get_estimator("chain_krr@1")(game, 200, seed=3)
    assert json.loads((tmp_path / "store" / "estimators.json").read_text()) == {"chain_krr": 1}
    if not recorded:  # a store from before this change has no estimators.json
        (tmp_path / "store" / "estimators.json").unlink()
    game.store.close()
    again, calls = counted_game(known, tmp_path / "store")
    with pytest.raises(ProbeError, match="holds a run of chain_krr version 1.*'chain_krr@1'.*'chain_krr@4'"):
        chain_krr(again, 200, seed=3)
    replay = get_estimator("chain_krr@1")(again, 200, seed=3)
    np.testing.assert_array_equal(replay.means, old.means)
    assert calls == []  # every coalition came from the store
    fresh = get_estimator("chain_krr@4")(again, 200, seed=3)  # naming the current version values it anew
    assert fresh.settings["version"] == 4
    assert json.loads((tmp_path / "store" / "estimators.json").read_text()) == {"chain_krr": 4}


def test_a_store_of_the_current_version_replays_without_new_evaluations(tmp_path):
    known = soum_game(12, seed=4)
    game, _ = counted_game(known, tmp_path / "store")
    first = chain_krr(game, 200, seed=3)
    game.store.close()
    again, calls = counted_game(known, tmp_path / "store")
    np.testing.assert_array_equal(chain_krr(again, 200, seed=3).means, first.means)
    assert calls == []
    # Another seed's run on the same store is not mistaken for a version-1 run.
    chain_krr(again, 120, seed=8)


@pytest.mark.parametrize("n", [16, 64])
def test_from_the_chainless_budget_on_it_is_leverage_shap_krr_and_below_it_version_2(n):
    known = soum_game(n, seed=2)
    at = chainless_budget(n)
    assert at == int(np.ceil(max(3, np.sqrt(n)) * n))
    above = chain_krr(known.game, at, seed=5)
    krr = get_estimator("leverage_shap_krr")(known.game, at, seed=5, size_degree=1)  # version 4: one size covariate
    np.testing.assert_array_equal(above.means, krr.means)
    assert above.estimator == "chain_krr" and above.settings["design"] == "leverage_shap_krr"
    assert above.settings["size_degree"] == 1
    version_3 = get_estimator("chain_krr@3")(known.game, at, seed=5)
    np.testing.assert_array_equal(version_3.means, get_estimator("leverage_shap_krr")(known.game, at, seed=5).means)
    below = chain_krr(known.game, at - 2, seed=5)
    np.testing.assert_array_equal(below.means, get_estimator("chain_krr@2")(known.game, at - 2, seed=5).means)
    # A prior keeps the chain (its shrinkage lives in the chain's fit) at any budget.
    with_prior = chain_krr(known.game, at, seed=5, prior=np.full(n, known.shapley.mean()))
    assert "design" not in with_prior.settings


def test_a_version_2_store_replays_where_version_3_keeps_the_chain_and_is_refused_where_it_does_not(tmp_path):
    known = soum_game(16, seed=4)
    game, _ = counted_game(known, tmp_path / "store")
    small = get_estimator("chain_krr@2")(game, 40, seed=3)
    big = get_estimator("chain_krr@2")(game, 80, seed=3)
    game.store.close()
    again, calls = counted_game(known, tmp_path / "store")
    np.testing.assert_array_equal(chain_krr(again, 40, seed=3).means, small.means)  # 40 < 64: same run
    assert calls == []
    with pytest.raises(ProbeError, match="version 2.*'chain_krr@2'"):
        chain_krr(again, 80, seed=3)
    np.testing.assert_array_equal(get_estimator("chain_krr@2")(again, 80, seed=3).means, big.means)
    assert calls == []


def test_a_version_3_store_replays_where_version_4_keeps_the_chain_and_is_refused_where_it_does_not(tmp_path):
    known = soum_game(16, seed=4)
    game, _ = counted_game(known, tmp_path / "store")
    small = get_estimator("chain_krr@3")(game, 40, seed=3)
    big = get_estimator("chain_krr@3")(game, 80, seed=3)  # 80 >= chainless_budget(16) = 64
    game.store.close()
    again, calls = counted_game(known, tmp_path / "store")
    np.testing.assert_array_equal(chain_krr(again, 40, seed=3).means, small.means)
    with pytest.raises(ProbeError, match="version 3.*'chain_krr@3'"):
        chain_krr(again, 80, seed=3)
    np.testing.assert_array_equal(get_estimator("chain_krr@3")(again, 80, seed=3).means, big.means)
    # Version 4 evaluates the same coalitions as version 3 (only the chainless fit differs).
    get_estimator("chain_krr@4")(again, 80, seed=3)
    assert calls == []
    assert json.loads((tmp_path / "store" / "estimators.json").read_text()) == {"chain_krr": 4}


@pytest.mark.parametrize("budget", [40, 80])
def test_a_size_degree_named_by_the_caller_is_kept_and_recorded(budget):
    known = soum_game(16, seed=4)
    values = chain_krr(known.game, budget, seed=1, size_degree=2)
    assert values.settings["size_degree"] == 2
    replay = chain_krr(known.game, budget, seed=1, **{k: values.settings[k] for k in ("size_degree", "version")})
    np.testing.assert_array_equal(replay.means, values.means)


def test_version_4_ends_the_chain_by_8n_and_a_version_3_chain_run_beyond_it_is_refused(tmp_path):
    assert [chainless_budget(n) for n in (9, 16, 64, 100, 256)] == [27, 64, 512, 800, 2048]
    assert [chainless_budget(n, version=3) for n in (64, 100, 256)] == [512, 1000, 4096]
    known = soum_game(100, seed=1)
    game, _ = counted_game(known, tmp_path / "store")
    old = get_estimator("chain_krr@3")(game, 900, seed=0, n_bootstrap=0)  # 900 < 1000: version 3 keeps the chain
    assert "design" not in old.settings
    game.store.close()
    again, calls = counted_game(known, tmp_path / "store")
    with pytest.raises(ProbeError, match="version 3.*'chain_krr@3'"):
        chain_krr(again, 900, seed=0)  # version 4 runs no chain from 800 on
    np.testing.assert_array_equal(get_estimator("chain_krr@3")(again, 900, seed=0, n_bootstrap=0).means, old.means)
    assert calls == []
    assert chain_krr(known.game, 900, seed=0, n_bootstrap=0).settings["chainless_budget"] == 800


@pytest.mark.parametrize("name", ["chain_krr", "leverage_shap_krr", "leverage_shap_size"])
@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_a_size_degree_that_is_not_a_whole_number_is_refused_with_the_fix(name, bad):
    with pytest.raises(ProbeError, match=f"{name}: size_degree must be a whole number >= 0.*got {bad!r}"):
        get_estimator(name)(soum_game(8, seed=0).game, 40, seed=0, size_degree=bad)
