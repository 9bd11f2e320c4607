import json

import numpy as np
import pytest

from probes.errors import FingerprintMismatchError, StoreCorruptError
from probes.estimators.msr import msr_shapley
from probes.game import Game
from probes.store import LOG, CoalitionStore
from probes.synthetic_games import soum_game

FINGERPRINT = {"model": "synthetic", "task": "soum", "metric": "value", "ablation": "none"}


class Crash(RuntimeError):
    pass


def crashing_value_function(inner, crash_on_call, seen):
    calls = {"n": 0}

    def value(coalitions):
        calls["n"] += 1
        if calls["n"] == crash_on_call:
            raise Crash("simulated kill")
        seen.extend(map(bytes, np.packbits(coalitions, axis=1)))
        return inner(coalitions)

    return value


def test_resume_after_crash_gives_same_values_and_evaluates_nothing_twice(tmp_path):
    known = soum_game(12, seed=3)
    inner = known.game.value_function
    reference = msr_shapley(Game(known.game.players, inner), 200, seed=5)

    first_seen, second_seen = [], []
    crashing = Game(known.game.players, crashing_value_function(inner, 4, first_seen), FINGERPRINT,
                    batch_size=16, store=tmp_path / "store")
    with pytest.raises(Crash):
        msr_shapley(crashing, 200, seed=5)
    assert len(first_seen) > 0

    resumed = Game(known.game.players, crashing_value_function(inner, -1, second_seen), FINGERPRINT,
                   batch_size=16, store=tmp_path / "store")
    values = msr_shapley(resumed, 200, seed=5)
    np.testing.assert_array_equal(values.means, reference.means)
    assert not set(first_seen) & set(second_seen), "a coalition was evaluated twice across the restart"
    assert len(set(second_seen)) == len(second_seen)


def test_store_for_another_game_is_refused_naming_both(tmp_path):
    game = Game(["a", "b"], lambda c: c.sum(1).astype(float), FINGERPRINT, store=tmp_path / "s")
    game(np.ones((1, 2), dtype=bool))
    other = dict(FINGERPRINT, model="gpt2")
    with pytest.raises(FingerprintMismatchError, match="synthetic.*gpt2"):
        Game(["a", "b"], lambda c: c.sum(1).astype(float), other, store=tmp_path / "s")


def test_torn_last_record_is_dropped_and_appends_continue(tmp_path):
    game = Game(["a", "b", "c"], lambda c: c.sum(1).astype(float), FINGERPRINT, store=tmp_path / "s")
    game(np.array([[1, 0, 0], [0, 1, 1]], dtype=bool))
    log = tmp_path / "s" / LOG
    log.write_bytes(log.read_bytes() + b'{"c": "e0", "v": "3.0", "cr')  # killed mid-write
    store = CoalitionStore.open(tmp_path / "s", game)
    assert store.dropped_torn_record and len(store) == 2
    store.append([bytes([0b11100000])], np.array([3.0]))
    reopened = CoalitionStore.open(tmp_path / "s", game)
    assert len(reopened) == 3 and not reopened.dropped_torn_record


def test_damaged_record_in_the_middle_is_an_error(tmp_path):
    game = Game(["a", "b"], lambda c: c.sum(1).astype(float), FINGERPRINT, store=tmp_path / "s")
    game(np.array([[1, 0], [0, 1], [1, 1]], dtype=bool))
    log = tmp_path / "s" / LOG
    lines = log.read_text().splitlines()
    record = json.loads(lines[0])
    record["v"] = "99.0"  # checksum no longer matches
    lines[0] = json.dumps(record)
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreCorruptError, match="line 1"):
        CoalitionStore.open(tmp_path / "s", game)


def test_store_needs_a_fingerprint(tmp_path):
    with pytest.raises(ValueError, match="fingerprint"):
        Game(["a"], lambda c: c.sum(1), store=tmp_path / "s")
