"""`surgery values sources`: data-source values from the command line, on a tiny saved model."""

import json
import sys

import pytest
from helpers import run_cli

pytest.importorskip("peft")

from probes.values import Values  # noqa: E402
from tiny_lora import make_adapter  # noqa: E402


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-adapters")
    return [make_adapter(root / name, seed=i) for i, name in enumerate(["alpha", "beta", "gamma"])]


@pytest.fixture
def prompts(tmp_path):
    lines = [{"prompt": "one two", "chosen": " apple", "rejected": " banana"},
             {"prompt": "three four", "candidates": [" grape", " lemon", " melon"], "preferred": 2}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_sources_values_exact_and_resume(capsys, tiny_dir, adapters, prompts, tmp_path):
    args = ["values", "sources", "--base", tiny_dir, "--adapters", *adapters, "--prompts", prompts,
            "--store", tmp_path / "store", "--out", tmp_path / "v.json"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    values = Values.load(tmp_path / "v.json")
    assert values.names == ["alpha", "beta", "gamma"] and values.estimator == "exact"
    assert values.means.sum() == pytest.approx(values.full_value - values.empty_value, abs=1e-9)
    assert values.details["reward"] == "preferred-loglik" and "alpha" in out
    code, _, err = run_cli(capsys, *args[:-1], tmp_path / "again.json")
    assert code == 0, err
    again = Values.load(tmp_path / "again.json")
    assert again.means.tolist() == values.means.tolist()


def test_sources_values_merge_and_targets(capsys, tiny_dir, adapters, tmp_path):
    path = tmp_path / "targets.jsonl"
    path.write_text(json.dumps({"prompt": "one two", "target": " three four"}) + "\n")
    for extra in (["--evaluation", "targets"], ["--evaluation", "targets", "--composition", "merge"]):
        code, _, err = run_cli(capsys, "values", "sources", "--base", tiny_dir, "--adapters", *adapters[:2],
                               "--prompts", path, "--out", tmp_path / f"{len(extra)}.json", *extra)
        assert code == 0, err
    arithmetic, merge = Values.load(tmp_path / "2.json"), Values.load(tmp_path / "4.json")
    assert merge.empty_value == pytest.approx(arithmetic.empty_value, abs=1e-6)


def test_sources_bad_input_is_one_line(capsys, tiny_dir, adapters, prompts, tmp_path, monkeypatch):
    code, _, err = run_cli(capsys, "values", "heads", "--task", "induction", "--adapters", adapters[0],
                           "--out", tmp_path / "h.json")
    assert code == 2 and "--adapters applies only to `surgery values sources`" in err
    code, _, err = run_cli(capsys, "values", "sources", "--base", tiny_dir, "--adapters", *([adapters[0]] * 13),
                           "--prompts", prompts, "--estimator", "exact", "--out", tmp_path / "x.json")
    assert code == 2 and "limited to 12 sources" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "values", "sources", "--base", tiny_dir, "--adapters", *adapters,
                           "--prompts", prompts, "--reward", "file", "--out", tmp_path / "y.json")
    assert code == 2 and "--reward file needs" in err
    monkeypatch.setitem(sys.modules, "peft", None)
    code, _, err = run_cli(capsys, "values", "sources", "--base", tiny_dir, "--adapters", *adapters,
                           "--prompts", prompts, "--out", tmp_path / "z.json")
    assert code == 2 and 'pip install "model-surgery[adapters]"' in err
    assert not (tmp_path / "z.json").exists()
