"""Outputs of every command (issue 19, items 3-5): nothing overwritten without --force, --force replaces
only what model-surgery wrote and never an input, every output checked before the work, and a full
disk leaves no half-written file."""

import errno
import os

import numpy as np
import pytest
from helpers import run_cli

import surgery
from probes.values import values_from_arrays
from pruning.plan import PruningPlan, model_identity


def one_line_error(code, err):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("surgery:")]
    assert len(lines) == 1 and lines[0].startswith("surgery: error:") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def made(tiny_dir, tmp_path_factory):
    """A layer-removal plan and head values of two tasks for the tiny model, written by the API."""
    d = tmp_path_factory.mktemp("made")
    loaded = surgery.load(str(tiny_dir))
    PruningPlan(model_identity(loaded), layers=[2]).save(d / "plan.json")
    from probes.model_game import model_digest
    rng = np.random.default_rng(0)
    for task in ("ioi", "factual"):
        values_from_arrays(loaded.components.heads, rng.normal(size=18), estimator="given",
                           fingerprint={"task": task, "model": str(tiny_dir),
                                        "model_digest": model_digest(loaded)}).save(d / f"{task}.json")
    return d


def users_folder(path):
    (path / "sub").mkdir(parents=True)
    (path / "thesis.txt").write_text("four years of work")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")


def untouched(path):
    return (path / "thesis.txt").read_text() == "four years of work" and \
        (path / "sub" / "data.csv").read_text() == "a,b\n1,2\n"


def test_prune_force_never_deletes_a_users_folder(tiny_dir, made, tmp_path, capsys):
    out = tmp_path / "out"
    users_folder(out)
    line = one_line_error(*run_cli(capsys, "prune", "--model", tiny_dir, "--plan", made / "plan.json",
                                   "--out", out, "--force")[::2])
    assert "not written by model-surgery" in line and "sub" in line and "thesis.txt" in line
    assert untouched(out)


def test_prune_force_replaces_its_own_export_and_shows_progress(tiny_dir, made, tmp_path, capsys):
    out = tmp_path / "out"
    for _ in range(2):
        code, text, err = run_cli(capsys, "prune", "--model", tiny_dir, "--plan", made / "plan.json",
                                  "--out", out, "--force")
        assert code == 0, err
    for stage in ("applying the plan ...", "writing the checkpoint ...", "checksumming ...", "done in"):
        assert stage in text
    surgery.verify_export(out)


@pytest.mark.parametrize("spelling", ["same", "trailing_slash", "dot_slash", "symlink"])
def test_prune_never_writes_over_the_model_it_reads(tiny_dir, made, tmp_path, capsys, monkeypatch, spelling):
    source = tmp_path / "source"
    assert run_cli(capsys, "prune", "--model", tiny_dir, "--plan", made / "plan.json", "--out", source)[0] == 0
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    (tmp_path / "link").symlink_to(source)
    monkeypatch.chdir(tmp_path)
    out = {"same": source, "trailing_slash": f"{source}/", "dot_slash": "./source", "symlink": "link"}[spelling]
    plan = tmp_path / "again.json"
    PruningPlan(model_identity(surgery.load(str(source))), layers=[1]).save(plan)
    line = one_line_error(*run_cli(capsys, "prune", "--model", source, "--plan", plan, "--out", out, "--force")[::2])
    assert "would overwrite" in line
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_cluster_figure_is_not_overwritten_without_force(made, tmp_path, capsys):
    files = [made / "ioi.json", made / "factual.json"]
    figure, out = tmp_path / "clusters.png", tmp_path / "clusters.json"
    figure.write_bytes(b"\x89PNG user's own figure")
    line = one_line_error(*run_cli(capsys, "cluster", *files, "--k", "2", "--active-value", "0", "--out", out,
                                   "--figure", figure)[::2])
    assert "clusters.png already exists" in line and not out.exists()
    line = one_line_error(*run_cli(capsys, "cluster", *files, "--k", "2", "--active-value", "0", "--out", out,
                                   "--figure", figure, "--force")[::2])
    assert "not written by model-surgery" in line and figure.read_bytes() == b"\x89PNG user's own figure"
    # our own figure and clusters file: replaced with --force, refused without
    ours = tmp_path / "ours.png"
    args = ["cluster", *files, "--k", "2", "--active-value", "0", "--out", out, "--figure", ours]
    assert run_cli(capsys, *args)[0] == 0
    assert "already exists" in one_line_error(*run_cli(capsys, *args)[::2])
    code, _, err = run_cli(capsys, *args, "--force")
    assert code == 0, err
    assert ours.read_bytes().startswith(b"\x89PNG") and [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cluster_refuses_a_figure_format_it_cannot_mark_and_one_path_for_two_outputs(made, tmp_path, capsys):
    files = [made / "ioi.json", made / "factual.json"]
    line = one_line_error(*run_cli(capsys, "cluster", *files, "--out", tmp_path / "c.json",
                                   "--figure", tmp_path / "c.jpg")[::2])
    assert "unsupported format '.jpg'" in line
    line = one_line_error(*run_cli(capsys, "cluster", *files, "--out", tmp_path / "c.svg",
                                   "--figure", tmp_path / "c.svg")[::2])
    assert "same file" in line
    assert list(tmp_path.iterdir()) == []


def test_plan_never_overwrites_the_values_it_reads(tiny_dir, made, tmp_path, capsys):
    values = tmp_path / "ioi.json"
    values.write_bytes((made / "ioi.json").read_bytes())
    line = one_line_error(*run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--values", values, "--k", "2",
                                   "--out", values, "--force")[::2])
    assert "would overwrite" in line and values.read_bytes() == (made / "ioi.json").read_bytes()


def test_outputs_are_checked_before_any_work(tiny_dir, made, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")
    monkeypatch.setattr(surgery, "load", no_work)
    (tmp_path / "a_dir").mkdir()
    cases = [
        (["values", "heads", "--model", tiny_dir, "--task", "ioi", "--store", tmp_path / "store",
          "--out", tmp_path / "a_dir"], "is a directory"),
        (["eval", "--model", tiny_dir, "--out", tmp_path / "a_dir"], "is a directory"),
        (["values", "heads", "--model", tiny_dir, "--task", "ioi", "--store", made / "plan.json",
          "--out", tmp_path / "v.json"], "is a file"),
        (["values", "heads", "--model", tiny_dir, "--task", "ioi", "--store", made,
          "--out", tmp_path / "v.json"], "not a coalition store"),
        (["values", "heads", "--model", tiny_dir, "--task", "ioi", "--store", tmp_path / "v.json",
          "--out", tmp_path / "v.json"], "same file"),
        (["prune", "--model", tiny_dir, "--plan", made / "plan.json", "--out", made / "plan.json", "--force"],
         "would overwrite"),
    ]
    for argv, message in cases:
        assert message in one_line_error(*run_cli(capsys, *argv)[::2])
    assert not (tmp_path / "store").exists()


def test_run_checks_every_output_before_loading_the_model(tiny_dir, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")
    monkeypatch.setattr(surgery, "load", no_work)
    out = tmp_path / "run"
    out.mkdir()
    (out / "values.json").write_text("my own notes")
    for force in ([], ["--force"]):
        line = one_line_error(*run_cli(capsys, "run", "--model", tiny_dir, "--out", out, *force)[::2])
        assert "values.json" in line
    assert (out / "values.json").read_text() == "my own notes"
    (out / "values.json").unlink()
    (out / "report.json").write_text('{"format": "model-surgery.run-report"}')
    line = one_line_error(*run_cli(capsys, "run", "--model", tiny_dir, "--out", out)[::2])
    assert "report.json already exists" in line and "--force" in line


def test_full_disk_names_the_file_and_the_rerun_works(tiny_dir, made, tmp_path, capsys, monkeypatch):
    out = tmp_path / "plan.json"
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    argv = ["plan", "heads", "--model", tiny_dir, "--values", made / "ioi.json", "--k", "2", "--out", out]
    monkeypatch.setattr(os, "write", full)
    line = one_line_error(*run_cli(capsys, *argv)[::2])
    assert f"could not write {out}: No space left on device (errno 28)" in line
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(os, "write", real_write)
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert len(PruningPlan.load(out).heads) == 2
