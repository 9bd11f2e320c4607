"""Runs that survive faults: killed `surgery values` runs resume from the store to identical values;
a full disk gives a clear error and leaves a store that the next run resumes from."""

import errno
import json
import signal
import time

import numpy as np
import pytest
from helpers import run_cli, spawn

from pruning.cli import main

import probes.store
from probes.head_values import HeadValues

# One coalition per forward (max_rows = n examples), so a resumed run groups its forwards exactly like
# an uninterrupted one and the values can be compared bit for bit.
ARGS = ["values", "heads", "--task", "factual", "--n", "4", "--budget", "600", "--seed", "7", "--max-rows", "4"]


def stored_lines(store) -> int:
    log = store / "values.jsonl"
    return log.read_bytes().count(b"\n") if log.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("clean")
    assert main([*ARGS, "--model", str(tiny_dir), "--store", str(d / "store"), "--out", str(d / "v.json")]) == 0
    return HeadValues.load(d / "v.json"), stored_lines(d / "store")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_run_resumes_to_identical_values(tiny_dir, tmp_path, capsys, uninterrupted, sig):
    clean, n_clean = uninterrupted
    store, out = tmp_path / "store", tmp_path / "v.json"
    proc = spawn(*ARGS, "--model", tiny_dir, "--store", store, "--out", out)
    deadline = time.time() + 120
    while stored_lines(store) < 40 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted; raise the budget"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "rerun to resume" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    before = stored_lines(store)
    assert 40 <= before < n_clean

    code, text, err = run_cli(capsys, *ARGS, "--model", tiny_dir, "--store", store, "--out", out)
    assert code == 0, err
    resumed = HeadValues.load(out)
    computed_now = int(text.split(" computed now")[0].rsplit("(", 1)[1])
    assert computed_now == n_clean - before  # nothing already stored was evaluated again
    assert stored_lines(store) == n_clean
    np.testing.assert_array_equal(resumed.means, clean.means)
    np.testing.assert_array_equal(resumed.stderrs, clean.stderrs)


def test_full_disk_is_a_clear_error_and_the_store_survives(tiny_dir, tmp_path, capsys, monkeypatch, uninterrupted):
    clean, n_clean = uninterrupted
    store, out = tmp_path / "store", tmp_path / "v.json"
    real_open = open
    appends = [0]

    class FullDisk:
        """The 12th append writes half its bytes, then the disk is full (a torn record)."""

        def __init__(self, handle):
            self.handle = handle

        def write(self, text):
            appends[0] += 1
            if appends[0] >= 12:
                self.handle.write(text[: len(text) // 2])
                self.handle.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(text)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    def fake_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if "a" in mode else handle

    monkeypatch.setattr(probes.store, "open", fake_open, raising=False)
    code, _, err = run_cli(capsys, *ARGS, "--model", tiny_dir, "--store", store, "--out", out)
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert not out.exists()
    monkeypatch.undo()

    # The torn last record is dropped on reopening; the 11 whole appends are kept and not recomputed.
    code, text, err = run_cli(capsys, *ARGS, "--model", tiny_dir, "--store", store, "--out", out)
    assert code == 0, err
    assert int(text.split(" computed now")[0].rsplit("(", 1)[1]) < n_clean
    np.testing.assert_array_equal(HeadValues.load(out).means, clean.means)
    assert all(json.loads(line) for line in (store / "values.jsonl").read_text().splitlines())


def test_unwritable_output_fails_before_any_work(tiny_dir, tmp_path, capsys):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")  # --out below a regular file cannot be written, even by root
    code, _, err = run_cli(capsys, *ARGS, "--model", tiny_dir, "--store", tmp_path / "store",
                           "--out", not_a_dir / "v.json")
    assert code == 2 and "Traceback" not in err and "file" in err
    assert not (tmp_path / "store").exists()  # refused before any evaluation


def test_store_repair_command_salvages_a_store_with_a_damaged_middle_record(tmp_path, capsys):
    from probes.game import Game
    from probes.store import LOG

    fingerprint = {"model": "synthetic", "task": "t", "metric": "m", "ablation": "none"}
    game = Game(["a", "b", "c"], lambda c: c.sum(1).astype(float), fingerprint, store=tmp_path / "s")
    game(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool))
    game.store.close()
    log = tmp_path / "s" / LOG
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    code, text, err = run_cli(capsys, "store", "repair", "--store", tmp_path / "s")
    assert code == 0, err
    assert "kept 3 verified records, dropped 1: line 2 (damaged)" in text
    code, _, err = run_cli(capsys, "store", "repair", "--store", tmp_path / "nowhere")
    assert code == 2 and "not a coalition store" in err


@pytest.mark.parametrize("flags, message", [
    (["--address", "auto"], "--address applies only to --backend ray"),
    (["--workers", "4", "--num-gpus", "1"], "--workers, --num-gpus apply only to --backend ray"),
    (["--max-rows", "0"], "--max-rows 0 must be a positive"),
    (["--estimator", "nope"], "unknown estimator 'nope'"),
])
def test_values_flags_are_checked_before_the_model_is_loaded(tiny_dir, tmp_path, capsys, monkeypatch, flags, message):
    import surgery

    monkeypatch.setattr(surgery, "load", lambda *a, **k: pytest.fail("the model was loaded before the flags were checked"))
    code, _, err = run_cli(capsys, *ARGS, *flags, "--model", tiny_dir, "--store", tmp_path / "store",
                           "--out", tmp_path / "v.json")
    assert code == 2 and message in err, err
    assert not (tmp_path / "store").exists()


def test_values_out_that_is_a_directory_fails_before_any_work(tiny_dir, tmp_path, capsys):
    (tmp_path / "outdir").mkdir()
    code, _, err = run_cli(capsys, *ARGS, "--model", tiny_dir, "--store", tmp_path / "store",
                           "--out", tmp_path / "outdir", "--force")
    assert code == 2 and "is a directory" in err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("flags, message", [
    (["--eval-n", "0"], "--eval-n 0 must be a positive"),
    (["--budget", "-5"], "--budget -5 must be a positive"),
])
def test_run_arguments_are_checked_before_any_work(tiny_dir, tmp_path, capsys, monkeypatch, flags, message):
    import surgery

    monkeypatch.setattr(surgery, "load", lambda *a, **k: pytest.fail("the model was loaded before the flags were checked"))
    code, _, err = run_cli(capsys, "run", "--model", tiny_dir, *flags, "--out", tmp_path / "run")
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists()
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "run", "--model", tiny_dir, "--out", tmp_path / "file")
    assert code == 2 and "is a file" in err


def computed_now(text: str) -> int:
    return int(text.split(" computed now")[0].rsplit("(", 1)[1])


def test_model_path_spelling_does_not_split_a_store_and_a_bigger_budget_extends_it(tiny_dir, tmp_path, capsys):
    """`--model dir`, `dir/` and a relative path are the same weights (item 15); budget 120 -> 240 with
    the same seed evaluates only the 120 new coalitions (item 17; before: nearly all 240)."""
    import os

    short = ["values", "heads", "--task", "factual", "--n", "4", "--seed", "7", "--store", tmp_path / "store"]
    code, text, err = run_cli(capsys, *short, "--budget", "120", "--model", tiny_dir, "--out", tmp_path / "a.json")
    # The default's chain units that fall in an enumerated coalition size repeat an enumerated
    # coalition: the store pays for them once, so a run may compute a little under its budget.
    first = computed_now(text)
    assert code == 0 and 110 <= first <= 120, err
    relative = os.path.relpath(tiny_dir)
    code, text, err = run_cli(capsys, *short, "--budget", "120", "--model", f"{relative}/", "--out", tmp_path / "b.json")
    assert code == 0 and computed_now(text) == 0, err
    code, text, err = run_cli(capsys, *short, "--budget", "240", "--model", tiny_dir, "--out", tmp_path / "c.json")
    assert code == 0 and 110 <= computed_now(text) <= 240 - first, err  # nothing of the first run computed again


def test_regrouping_coalitions_into_other_forwards_changes_values_only_within_the_stated_tolerance(
        tiny_dir, tmp_path, capsys):
    """A resumed run re-evaluates a torn chunk, possibly grouped into other batched forwards; the README
    states the tolerance (item 16): a coalition's value within 1e-6 relative, the estimates within 1e-4
    of their largest magnitude."""
    from probes.store import CoalitionStore

    outs = {}
    for rows in ("4", "64"):
        code, _, err = run_cli(capsys, *ARGS[:-2], "--max-rows", rows, "--budget", "200", "--model", tiny_dir,
                               "--store", tmp_path / f"s{rows}", "--out", tmp_path / f"v{rows}.json")
        assert code == 0, err
        outs[rows] = HeadValues.load(tmp_path / f"v{rows}.json")
    fingerprint = json.loads((tmp_path / "s4" / "header.json").read_text())["fingerprint"]
    single_matrix, single_values = CoalitionStore.open(tmp_path / "s4", fingerprint).coalitions()
    one = {bytes(key): value for key, value in zip(np.packbits(single_matrix, axis=1), single_values)}
    matrix, values = CoalitionStore.open(tmp_path / "s64", fingerprint).coalitions()
    other = np.array([one[bytes(k)] for k in np.packbits(matrix, axis=1)])
    scale = np.abs(values).max()
    print("max relative coalition difference", np.abs(other - values).max() / scale)
    assert np.abs(other - values).max() <= 1e-6 * scale
    a, b = outs["4"].means, outs["64"].means
    print("max relative value difference", np.abs(a - b).max() / np.abs(a).max())
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
