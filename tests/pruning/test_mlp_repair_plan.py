"""Plans with mlp_repair: saved and loaded as JSON, refused with zero removal or an unknown method,
applied (with heads and dropped layers in the same plan) to exactly what surgery.mlp_repair gives,
exported with a note and the fit record in the manifest, reloaded with the in-memory logits."""

import json

import pytest
import torch
import transformers as tf
from token_batches import token_batch

from pruning.apply import apply_plan, with_mlp_repair
from pruning.errors import PruningError
from pruning.export import export_pruned
from pruning.plan import PruningPlan, model_identity
from surgery.mlp_repair import repair_mlp_channels
from surgery.mlp_width import mlp_widths

CHANNELS = {0: [1, 2, 3, 9], 1: list(range(0, 64, 3)), 2: [5, 6]}


def plan_for(tiny, **kwargs):
    return PruningPlan(model_identity(tiny), mlp_channels=CHANNELS, **kwargs)


def cal(tiny):
    return token_batch(tiny, batch=32, seq=24, seed=11, positions=1)


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_plan_round_trips_and_bad_settings_are_refused(tiny_llama, tmp_path):
    plan = with_mlp_repair(plan_for(tiny_llama), ridge=0.3)
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").mlp_repair == {"method": "least_squares_refit", "ridge": 0.3}
    assert "refit kept MLP channels" in plan.summary()
    with pytest.raises(PruningError, match="mlp_removal='mean_compensated'"):
        plan_for(tiny_llama, mlp_removal="zero", mlp_repair={"method": "least_squares_refit"})
    with pytest.raises(PruningError, match="mlp_repair must be"):
        plan_for(tiny_llama, mlp_repair={"method": "gradient_descent"})
    with pytest.raises(PruningError, match="ridge"):
        with_mlp_repair(plan_for(tiny_llama), ridge=-1.0)


def test_applied_plan_is_the_refitted_model(tiny_llama):
    batch = token_batch(tiny_llama, batch=3, seq=10, seed=4)
    applied = apply_plan(tiny_llama, with_mlp_repair(plan_for(tiny_llama)), calibration=cal(tiny_llama))
    direct = repair_mlp_channels(tiny_llama, CHANNELS, cal(tiny_llama))
    torch.testing.assert_close(logits(applied.model.model, batch), logits(direct.model, batch), rtol=0, atol=1e-6)
    assert applied.report["mlp_channels"]["repair"]["method"] == "least_squares_refit"


def test_export_with_heads_and_a_dropped_layer_records_the_refit_and_reloads(tiny_llama, tmp_path):
    plan = with_mlp_repair(PruningPlan(model_identity(tiny_llama), heads=["L0.H1"], layers=[2],
                                       mlp_channels=CHANNELS))  # heads zero-removed: layers drop only so
    manifest = export_pruned(tiny_llama, plan, tmp_path / "out", calibration=cal(tiny_llama))
    fit = manifest["mlp_width"]["repair"]
    assert set(fit["layers"]) == {"0", "1"}  # layer 2 is dropped: its channels go with it
    assert any("REFITTED" in note for note in manifest["notes"])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["mlp_width"]["repair"] == fit
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    in_memory = apply_plan(tiny_llama, plan, calibration=cal(tiny_llama)).model
    assert mlp_widths(in_memory)[:2] == [60, 42]
    batch = token_batch(tiny_llama, batch=3, seq=10, seed=4)
    torch.testing.assert_close(logits(reloaded, batch), logits(in_memory.model, batch), rtol=0, atol=1e-5)
    with pytest.raises(PruningError, match="calibration"):
        export_pruned(tiny_llama, plan, tmp_path / "none")
