"""Plans with head_repair: saved and loaded as JSON, refused with zero removal or an unknown method,
applied (physical or masked) to exactly what surgery.head_repair gives, exported with a note and the
fit record in the manifest."""

import json

import pytest
import torch
from token_batches import token_batch

from pruning.apply import apply_plan, with_head_repair
from pruning.errors import PruningError
from pruning.export import export_pruned
from pruning.plan import PruningPlan, model_identity
from surgery.head_repair import repair_heads

HEADS = ["L0.H1", "L1.H0", "L1.H2", "L2.H3"]


def plan_for(tiny, **kwargs):
    return PruningPlan(model_identity(tiny), heads=HEADS, removal_mode="mean_compensated", **kwargs)


def cal(tiny):
    return token_batch(tiny, batch=32, seq=24, seed=11, positions=1)


def logits(loaded, batch):
    with torch.no_grad():
        return loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_plan_round_trips_and_bad_settings_are_refused(tiny_llama, tmp_path):
    plan = with_head_repair(plan_for(tiny_llama), ridge=0.3)
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").head_repair == {"method": "least_squares_refit", "ridge": 0.3}
    assert "refit kept heads" in plan.summary()
    with pytest.raises(PruningError, match="removal_mode='mean_compensated'"):
        PruningPlan(model_identity(tiny_llama), heads=HEADS, head_repair={"method": "least_squares_refit"})
    with pytest.raises(PruningError, match="head_repair must be"):
        plan_for(tiny_llama, head_repair={"method": "gradient_descent"})
    with pytest.raises(PruningError, match="ridge"):
        with_head_repair(plan_for(tiny_llama), ridge=-1.0)


@pytest.mark.parametrize("removal", ["physical", "masked"])
def test_applied_plan_is_the_refitted_model(tiny_llama, removal):
    plan = with_head_repair(plan_for(tiny_llama, head_removal=removal))
    batch = token_batch(tiny_llama, batch=3, seq=10, seed=4)
    applied = apply_plan(tiny_llama, plan, calibration=cal(tiny_llama))
    direct = repair_heads(tiny_llama, HEADS, cal(tiny_llama), physical=removal == "physical")
    torch.testing.assert_close(logits(applied.model, batch), logits(direct, batch), rtol=0, atol=1e-6)
    assert applied.report["heads"]["repair"]["method"] == "least_squares_refit"


def test_export_records_the_refit_and_says_so(tiny_llama, tmp_path):
    plan = with_head_repair(plan_for(tiny_llama))
    manifest = export_pruned(tiny_llama, plan, tmp_path / "out", calibration=cal(tiny_llama))
    fit = manifest["removal"]["head_repair"]
    assert fit["calibration_tokens"] == int(cal(tiny_llama).attention_mask.sum())
    assert set(fit["layers"]) == {"0", "1", "2"}
    assert any("REFITTED" in note for note in manifest["notes"])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["removal"]["head_repair"] == fit
    with pytest.raises(PruningError, match="calibration"):
        export_pruned(tiny_llama, plan, tmp_path / "none")
