import json

import matplotlib
import numpy as np
import pytest

from probes.errors import FingerprintMismatchError, MalformedValuesFileError, ProbeError
from probes.stopping import MaxEvaluations, Progress, RankStable, StandardErrorBelow
from probes.values import Values

matplotlib.use("Agg")

FINGERPRINT = {"model": "m", "task": "t", "players": ["L0.H0", "L0.H1", "L1.H0", "L1.H1"]}


def head_values(means=(0.5, -0.2, 0.1, 0.3)):
    return Values(names=["L0.H0", "L0.H1", "L1.H0", "L1.H1"], means=np.array(means), stderrs=np.array([0.1, np.nan, 0.0, 0.2]),
                  n_evaluations=40, estimator="msr", settings={"surrogate": "linear"}, seed=3,
                  fingerprint=FINGERPRINT, empty_value=0.0, full_value=1.0)


def test_save_load_round_trip_keeps_everything_including_unknown_stderr(tmp_path):
    values = head_values()
    path = values.save(tmp_path / "v.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "model-surgery.values" and data["version"] == 1 and data["stderrs"][1] is None
    loaded = Values.load(path, expected_fingerprint=FINGERPRINT)
    np.testing.assert_array_equal(loaded.means, values.means)
    np.testing.assert_array_equal(loaded.stderrs, values.stderrs)
    assert loaded.settings == values.settings and loaded.seed == 3 and loaded.fingerprint_id == values.fingerprint_id


def test_load_refuses_values_of_another_game(tmp_path):
    head_values().save(tmp_path / "v.json")
    with pytest.raises(FingerprintMismatchError, match="expected game"):
        Values.load(tmp_path / "v.json", expected_fingerprint=dict(FINGERPRINT, model="other"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"schema": "other"}', "schema"),
        ('{"schema": "model-surgery.values", "version": 99}', "version 99"),
        ('{"schema": "model-surgery.values", "version": 1, "names": ["a"]}', "missing field"),
        ('{"schema": "model-surgery.values", "version": 1, "names": ["a"], "means": [1, 2], "stderrs": [0],'
         ' "n_evaluations": 1, "estimator": "x"}', "one name, mean and stderr"),
    ],
)
def test_malformed_values_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises((MalformedValuesFileError, ProbeError), match=message):
        Values.load(path)


def test_efficiency_gap_top_and_bottom_k():
    values = head_values()
    assert values.efficiency_gap == pytest.approx(0.7 - 1.0)
    assert values.top_k(2) == [("L0.H0", 0.5), ("L1.H1", 0.3)]
    assert values.bottom_k(1) == [("L0.H1", -0.2)]


def test_arithmetic_combines_means_and_stderrs():
    a, b = head_values(), head_values((0.1, 0.1, 0.1, 0.1))
    total = a + b
    np.testing.assert_allclose(total.means, [0.6, -0.1, 0.2, 0.4])
    np.testing.assert_allclose(total.stderrs[[0, 2]], [np.sqrt(0.02), 0.0])
    np.testing.assert_allclose((a - a).means, 0.0)
    scaled = -2 * a
    np.testing.assert_allclose(scaled.means, -2 * a.means)
    np.testing.assert_allclose(scaled.stderrs[0], 0.2)
    with pytest.raises(ProbeError, match="same players"):
        a + Values(names=["x"], means=[1], stderrs=[0], n_evaluations=1, estimator="e")


def test_as_matrix_and_heatmap_for_head_names():
    values = head_values()
    np.testing.assert_allclose(values.as_matrix(), [[0.5, -0.2], [0.1, 0.3]])
    assert np.isnan(values.as_matrix(3, 2)[2]).all()
    ax = values.heatmap()
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
    with pytest.raises(ProbeError, match="L3.H7"):
        Values(names=["mlp"], means=[1], stderrs=[0], n_evaluations=1, estimator="e").as_matrix()


def progress(n, means, stderrs):
    return Progress(n, np.asarray(means, float), np.asarray(stderrs, float), 1)


def test_stopping_criteria_compose_with_or_and_and():
    either = MaxEvaluations(100) | StandardErrorBelow(0.1)
    both = MaxEvaluations(100) & StandardErrorBelow(0.1)
    assert either(progress(100, [0], [1.0])) and not both(progress(100, [0], [1.0]))
    assert either(progress(5, [0], [0.01])) and not both(progress(5, [0], [0.01]))
    assert both(progress(100, [0], [0.01]))
    assert not StandardErrorBelow(0.1)(progress(5, [0, 1], [0.01, np.nan]))


def test_rank_stable_needs_patience_rounds_of_the_same_top_k():
    criterion = RankStable(k=1, patience=2)
    answers = [criterion(progress(1, means, [0, 0])) for means in ([1, 0], [1, 0], [0, 1], [0, 1], [0, 1])]
    assert answers == [False, False, False, False, True]
    criterion.reset()
    assert not criterion(progress(1, [0, 1], [0, 0]))


@pytest.mark.parametrize("bad", ["NaN", "null", "Infinity", "-Infinity", "1e999"])
def test_non_finite_means_are_refused_at_load_naming_file_and_player(tmp_path, bad):
    """A NaN/null/inf mean used to load and rank last or first, so a plan cut heads in file order."""
    data = head_values().to_json_dict()
    text = json.dumps(data).replace('"means": [0.5, -0.2', f'"means": [0.5, {bad}')
    assert bad in text
    path = tmp_path / "v.json"
    path.write_text(text)
    with pytest.raises(MalformedValuesFileError, match=r"v\.json.*L0\.H1.*finite") as error:
        Values.load(path)
    assert "Recompute" in str(error.value)


def test_an_unknown_stderr_is_still_accepted(tmp_path):
    path = head_values().save(tmp_path / "v.json")  # stderr of L0.H1 is null
    assert np.isnan(Values.load(path).stderrs[1])


def test_zero_stderr_is_an_interval_only_for_exact_values():
    values = head_values()  # msr, stderrs [0.1, nan, 0.0, 0.2]
    assert values.has_interval().tolist() == [True, False, False, True]
    exact = Values(names=["a", "b"], means=[-1.0, 1.0], stderrs=[0.0, 0.0], n_evaluations=4, estimator="exact")
    window = Values(names=["a", "b"], means=[-1.0, 1.0], stderrs=[0.0, 0.0], n_evaluations=4,
                    estimator="sliding_window")
    assert exact.has_interval().all() and not window.has_interval().any()
