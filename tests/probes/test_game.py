import numpy as np
import pytest

from probes.errors import InvalidGameOutputError, ProbeError
from probes.game import Game, fingerprint_id


def counting_game(n=4, batch_size=None):
    seen = []

    def value(coalitions):
        seen.append(coalitions.copy())
        return coalitions.sum(axis=1).astype(float)

    return Game([f"p{i}" for i in range(n)], value, batch_size=batch_size), seen


def test_duplicate_player_names_are_refused_by_name():
    with pytest.raises(ProbeError, match="duplicated: \\['a'\\]"):
        Game(["a", "b", "a"], lambda c: c.sum(1))


def test_nan_from_value_function_raises_instead_of_averaging():
    game = Game(["a", "b"], lambda c: np.where(c[:, 0], np.nan, 1.0))
    with pytest.raises(InvalidGameOutputError, match="non-finite.*absent players"):
        game(np.array([[True, False], [False, False]]))


def test_inf_from_value_function_raises():
    game = Game(["a", "b"], lambda c: np.full(len(c), np.inf))
    with pytest.raises(InvalidGameOutputError, match="non-finite"):
        game(np.array([[True, True]]))


def test_wrong_output_shape_names_expected_shape():
    game = Game(["a", "b"], lambda c: np.zeros((len(c), 2)))
    with pytest.raises(InvalidGameOutputError, match=r"shape \(3, 2\).*shape \(3,\)"):
        game(np.array([[1, 1], [1, 0], [0, 1]], dtype=bool))


def test_wrong_coalition_width_is_refused():
    game, _ = counting_game(4)
    with pytest.raises(ProbeError, match="\\[n_coalitions, 4\\]"):
        game(np.ones((2, 3), dtype=bool))


def test_duplicates_within_a_call_and_repeats_across_calls_are_evaluated_once():
    game, seen = counting_game(4)
    coalitions = np.array([[1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 1]], dtype=bool)
    values = game(coalitions)
    np.testing.assert_array_equal(values, [2, 2, 3])
    assert game.n_evaluations == 2
    game(coalitions[:1])
    assert game.n_evaluations == 2 and len(seen) == 1


def test_batch_size_chunks_value_function_calls():
    game, seen = counting_game(6, batch_size=5)
    rng = np.random.default_rng(0)
    coalitions = np.unique(rng.random((40, 6)) < 0.5, axis=0)
    values = game(coalitions)
    np.testing.assert_array_equal(values, coalitions.sum(1))
    assert max(len(chunk) for chunk in seen) <= 5
    assert sum(len(chunk) for chunk in seen) == len(coalitions)


def test_fingerprint_id_is_stable_and_includes_players():
    a = Game(["x", "y"], lambda c: c.sum(1), {"model": "m", "task": "t"})
    b = Game(["x", "y"], lambda c: c.sum(1), {"task": "t", "model": "m"})
    c = Game(["x", "z"], lambda c: c.sum(1), {"model": "m", "task": "t"})
    assert a.fingerprint_id == b.fingerprint_id != c.fingerprint_id
    assert fingerprint_id({"a": 1}) == fingerprint_id({"a": 1})


def test_value_function_cannot_corrupt_the_callers_coalitions():
    def mutating(c):
        out = c.sum(1).astype(float)
        c[:] = False
        return out

    game = Game(["a", "b"], mutating)
    coalitions = np.array([[True, True]])
    game(coalitions)
    assert coalitions.all()


def test_fingerprint_id_ignores_the_model_spelling_only_when_the_weights_digest_is_there():
    with_digest = {"model": "runs/m", "model_digest": "abc", "task": "t"}
    assert fingerprint_id(with_digest) == fingerprint_id(dict(with_digest, model="/home/u/runs/m/"))
    assert fingerprint_id(with_digest) != fingerprint_id(dict(with_digest, model_digest="abd"))
    without = {"model": "runs/m", "task": "t"}  # no digest: the name is all that identifies the model
    assert fingerprint_id(without) != fingerprint_id(dict(without, model="other"))
