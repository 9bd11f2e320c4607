import json

import numpy as np
import pytest

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from probes.errors import FingerprintMismatchError, StoreCorruptError, StoreLockedError
from probes.estimators.msr import msr_shapley
from probes.game import Game
from probes.store import LOG, CoalitionStore, repair_store
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
    with pytest.raises(StoreCorruptError, match="line 1 .*surgery store repair --store"):
        CoalitionStore.open(tmp_path / "s", game)


def test_store_needs_a_fingerprint(tmp_path):
    with pytest.raises(ValueError, match="fingerprint"):
        Game(["a"], lambda c: c.sum(1), store=tmp_path / "s")


# A second process that opens the store while this one holds it (issue 19, item 14).
SECOND_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from probes.errors import StoreLockedError
    from probes.game import Game
    fingerprint = {"model": "synthetic", "task": "soum", "metric": "value", "ablation": "none"}
    try:
        game = Game(["a", "b", "c"], lambda c: c.sum(1).astype(float), fingerprint, store=sys.argv[1])
    except StoreLockedError as error:
        print("LOCKED", error)
        sys.exit(3)
    game(np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=bool))
    print("WROTE")
""")


def run_second_writer(store):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", SECOND_WRITER, str(store)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_a_second_process_on_the_same_store_is_refused_naming_the_holder(tmp_path):
    game = Game(["a", "b", "c"], lambda c: c.sum(1).astype(float), FINGERPRINT, store=tmp_path / "s")
    game(np.array([[1, 0, 0]], dtype=bool))
    second = run_second_writer(tmp_path / "s")
    assert second.returncode == 3, second.stderr
    assert f"in use by another process (pid {os.getpid()})" in second.stdout and "another --store" in second.stdout
    assert len(CoalitionStore.open(tmp_path / "s", game)) == 1  # nothing was appended by the refused process

    game.store.close()  # this process is done with it: the next process writes normally
    del game
    second = run_second_writer(tmp_path / "s")
    assert second.returncode == 0 and "WROTE" in second.stdout, second.stderr + second.stdout


def test_same_process_may_open_a_store_twice(tmp_path):
    game = Game(["a", "b"], lambda c: c.sum(1).astype(float), FINGERPRINT, store=tmp_path / "s")
    again = CoalitionStore.open(tmp_path / "s", game)
    again.append([bytes([0b10000000])], np.array([1.0]))
    assert len(CoalitionStore.open(tmp_path / "s", game)) == 1


def test_repair_keeps_every_verifiable_record_and_reports_the_dropped_lines(tmp_path):
    game = Game(["a", "b", "c"], lambda c: c.sum(1).astype(float), FINGERPRINT, store=tmp_path / "s")
    rows = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=bool)
    game(rows)
    log = tmp_path / "s" / LOG
    lines = log.read_text().splitlines()
    # What two writers left behind: a torn record in the middle, followed by more whole records,
    # and one coalition stored twice.
    damaged = lines[:2] + [lines[2][:17]] + lines[3:] + [lines[0]]
    log.write_text("\n".join(damaged) + "\n")
    game.store.close()
    with pytest.raises(StoreCorruptError, match="line 3 is damaged"):
        CoalitionStore.open(tmp_path / "s", game)

    report = repair_store(tmp_path / "s")
    assert report.kept == 4 and report.dropped == [(3, "damaged"), (6, "duplicate")]
    assert "line 3 (damaged)" in report.summary() and "values.jsonl.damaged" in report.summary()
    assert (tmp_path / "s" / "values.jsonl.damaged").read_text() == "\n".join(damaged) + "\n"
    repaired = CoalitionStore.open(tmp_path / "s", game)
    assert len(repaired) == 4
    stored, values = repaired.coalitions()
    np.testing.assert_array_equal(values, stored.sum(1))
    assert repair_store(tmp_path / "s").dropped == []


def test_store_is_the_same_whatever_the_model_path_spelling_when_the_digest_matches(tmp_path):
    """`--model dir`, `dir/` and `/abs/dir` load the same weights: one game (issue 19, item 15)."""
    base = {"model_digest": "0123abcd", "task": "induction:logit_diff", "metric": "m", "ablation": "zero"}
    first = Game(["a", "b"], lambda c: c.sum(1).astype(float), {**base, "model": "runs/tiny"}, store=tmp_path / "s")
    first(np.ones((1, 2), dtype=bool))
    first.store.close()
    again = Game(["a", "b"], lambda c: c.sum(1).astype(float), {**base, "model": str(tmp_path / "runs/tiny/")},
                 store=tmp_path / "s")
    assert len(again.store) == 1
    other_weights = {**base, "model": "runs/tiny", "model_digest": "ffff0000"}
    with pytest.raises(FingerprintMismatchError, match="field 'model_digest' differs \\(stored '0123abcd', "
                                                       "this game 'ffff0000'\\)"):
        Game(["a", "b"], lambda c: c.sum(1).astype(float), other_weights, store=tmp_path / "s")


def test_refused_store_names_the_differing_field_in_one_line(tmp_path):
    game = Game(["a", "b"], lambda c: c.sum(1).astype(float), FINGERPRINT, store=tmp_path / "s")
    game.store.close()
    with pytest.raises(FingerprintMismatchError) as caught:
        Game(["a", "b"], lambda c: c.sum(1).astype(float), dict(FINGERPRINT, ablation="mean"), store=tmp_path / "s")
    assert "field 'ablation' differs (stored 'none', this game 'mean')" in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(FingerprintMismatchError, match="player 1: stored 'b', this game 'c'"):
        Game(["a", "c"], lambda c: c.sum(1).astype(float), FINGERPRINT, store=tmp_path / "s")
