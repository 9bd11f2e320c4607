"""The main job end to end on the embedded SmolLM2-135M: values -> plan -> export -> reload."""

import pytest
import torch

import probes
import surgery
from pruning.export import export_pruned
from pruning.policies import head_plan, layer_plan
from surgery.engine import AblationEngine

pytestmark = pytest.mark.integration


def test_layer_values_plan_export_and_reload(smollm, tmp_path):
    task = probes.get_task("factual", n=4).batch(smollm, seed=0)
    game = probes.model_game(smollm, task.tokens, task.metric(), "layers", store=tmp_path / "store",
                             task_name="factual")
    values = probes.estimate(game, budget=90, seed=0)
    assert values.n_evaluations <= 90 and abs(values.efficiency_gap) < 1e-6
    values.save(tmp_path / "layer_values.json")
    plan = layer_plan(probes.Values.load(tmp_path / "layer_values.json"), smollm, k=3, cornerstones=[0, 1])
    assert not {0, 1} & set(plan.layers)
    manifest = export_pruned(smollm, plan, tmp_path / "export")
    assert manifest["after"]["parameters"] < manifest["before"]["parameters"]
    reloaded = surgery.load(str(tmp_path / "export"))
    assert reloaded.components.n_layers == 27
    ones = torch.ones(1, 27, dtype=torch.bool)
    got = AblationEngine(reloaded, "layers").logits(ones, task.tokens)[0]
    engine = AblationEngine(smollm, [f"L{l}" for l in plan.layers])
    expected = engine.logits(torch.zeros(1, 3, dtype=torch.bool), task.tokens)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=5e-4)


def test_uneven_head_removal_exports_with_remote_code_and_matches_masking(smollm, tmp_path):
    from probes.values import values_from_arrays
    import numpy as np
    means = np.ones(270)
    means[[0, 1, 2, 39, 40, 41, 100]] = -1.0  # KV group 0 of L0 and group 1 of L4 whole; one head of L11
    from probes.model_game import model_digest
    exact = values_from_arrays(smollm.components.heads, means, np.zeros(270), estimator="exact",
                               fingerprint={"model_digest": model_digest(smollm)})  # stderr 0 is a point only if exact
    plan = head_plan(exact, smollm, harmful_confidence=0.95)
    manifest = export_pruned(smollm, plan, tmp_path / "heads")
    assert manifest["remote_code"]
    reloaded = surgery.load(str(tmp_path / "heads"))
    comps = reloaded.components
    assert (comps.n_heads[0], comps.n_kv_heads[0]) == (6, 2) and (comps.n_heads[4], comps.n_kv_heads[4]) == (6, 2)
    # L11 lost one head of a group: its 3 key/value heads stay, read through a gather map (2 + 3 + 3).
    assert (comps.n_heads[11], comps.n_kv_heads[11]) == (8, 3)
    assert comps.kv_groups(11) == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert manifest["after"]["parameters"] < manifest["before"]["parameters"]
    batch = probes.get_task("factual", n=2).batch(smollm, seed=1).tokens
    got = AblationEngine(reloaded, "layers").logits(torch.ones(1, 30, dtype=torch.bool), batch)[0]
    expected = AblationEngine(smollm, plan.heads).logits(torch.zeros(1, len(plan.heads), dtype=torch.bool), batch)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=5e-4)
