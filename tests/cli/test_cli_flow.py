"""The data flow through the CLI on a tiny saved model: values -> cluster -> plan -> prune -> eval."""

import json

import numpy as np
import pytest
import torch
from helpers import run_cli
from transformers import AutoModelForCausalLM

import surgery
from probes.head_values import HeadValues
from pruning.cli import build_parser
from pruning.evaluate import masked_logits, plain_logits
from pruning.plan import PruningPlan

COMMANDS = ["run", "values", "cluster", "plan", "prune", "eval", "info", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_of_every_command_is_documented(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"surgery {command}: {action.option_strings or action.dest} has no help"


def test_values_plan_prune_eval_on_a_tiny_model(tiny_dir, tmp_path, capsys):
    values = tmp_path / "ioi.json"
    code, out, err = run_cli(capsys, "values", "heads", "--model", tiny_dir, "--task", "ioi", "--n", "4",
                             "--budget", "120", "--seed", "0", "--store", tmp_path / "store", "--out", values)
    assert code == 0, err
    assert "18 heads values" in out and "top 5" in out and "wrote" in out
    hv = HeadValues.load(values, model=tiny_dir)
    assert hv.n_evaluations > 0 and hv.matrix.shape == (3, 6)
    # Same seed, same store: everything comes from the store and the values are identical.
    again = tmp_path / "again.json"
    code, out, _ = run_cli(capsys, "values", "heads", "--model", tiny_dir, "--task", "ioi", "--n", "4",
                           "--budget", "120", "--seed", "0", "--store", tmp_path / "store", "--out", again)
    assert code == 0 and "(0 computed now" in out
    np.testing.assert_array_equal(HeadValues.load(again).means, hv.means)

    plan = tmp_path / "plan.json"
    code, out, err = run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--values", values, "--fraction", "0.25",
                             "--out", plan)
    assert code == 0, err
    assert "remove 4 heads" in out
    export = tmp_path / "export"
    code, out, err = run_cli(capsys, "prune", "--model", tiny_dir, "--plan", plan, "--out", export)
    assert code == 0, err
    assert (export / "manifest.json").is_file() and "load it with" in out
    # The export, loaded by plain transformers, equals the original with those heads ablated.
    loaded = surgery.load(tiny_dir)
    batch = surgery.TokenBatch.next_token(torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0)))
    reloaded = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)
    diff = (plain_logits(reloaded, batch) - masked_logits(loaded, PruningPlan.load(plan), batch)).abs().max()
    assert float(diff) < 1e-5

    report = tmp_path / "eval.json"
    code, out, err = run_cli(capsys, "eval", "--model", export, "--task", "factual", "ioi", "--n", "4",
                             "--seq-len", "32", "--out", report)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert set(data["tasks"]) == {"factual", "ioi"} and data["text"]["perplexity"] > 1
    manifest = json.loads((export / "manifest.json").read_text())
    assert data["parameters"] == manifest["after"]["parameters"] == reloaded.num_parameters()


def test_layer_values_layer_plan_and_sparsity_plan(tiny_dir, tmp_path, capsys):
    layers = tmp_path / "layers.json"
    code, out, err = run_cli(capsys, "values", "layers", "--model", tiny_dir, "--task", "text", "--n", "2",
                             "--seq-len", "32", "--window", "2", "--out", layers)
    assert code == 0, err
    assert "sliding_window" in out
    plan = tmp_path / "layers-plan.json"
    code, out, err = run_cli(capsys, "plan", "layers", "--model", tiny_dir, "--values", layers, "--k", "1",
                             "--protect", "0", "--out", plan)
    assert code == 0, err
    assert len(PruningPlan.load(plan).layers) == 1 and 0 not in PruningPlan.load(plan).layers
    sparse = tmp_path / "sparse.json"
    code, out, err = run_cli(capsys, "plan", "sparsity", "--model", tiny_dir, "--values", layers, "--target", "0.5",
                             "--allocation", "shapley", "--out", sparse)
    assert code == 0, err
    ratios = PruningPlan.load(sparse).sparsity
    assert len(ratios) == 3 and np.mean(list(ratios.values())) == pytest.approx(0.5, abs=1e-6)
    code, out, err = run_cli(capsys, "prune", "--model", tiny_dir, "--plan", sparse, "--out", tmp_path / "sparse",
                             "--calibration-n", "2", "--seq-len", "32")
    assert code == 0, err
    assert "nonzero" in out


def test_cluster_two_tasks(tiny_dir, tmp_path, capsys):
    files = []
    for task in ("ioi", "factual"):
        files.append(tmp_path / f"{task}.json")
        code, _, err = run_cli(capsys, "values", "heads", "--model", tiny_dir, "--task", task, "--n", "4",
                               "--estimator", "permutation", "--budget", "90", "--out", files[-1])
        assert code == 0, err
    out_file = tmp_path / "clusters.json"
    code, out, err = run_cli(capsys, "cluster", *files, "--k", "2", "--out", out_file, "--figure",
                             tmp_path / "clusters.png")
    assert code == 0, err
    data = json.loads(out_file.read_text())
    assert data["k"] == 2 and sum(len(c["heads"]) for c in data["clusters"]) == 18
    assert (tmp_path / "clusters.png").stat().st_size > 1000
