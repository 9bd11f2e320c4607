"""Plans with stream_repair: saved and loaded as JSON, an unknown method refused, applied (after MLP width,
dropped layers and their repairs) to exactly what surgery.stream_refit gives, exported with a note and the
fit record, reloaded with the in-memory logits; target_plan marks only its chosen plan; the CLI refuses a
stream refit its calibration text is too short for before any work."""

import json

import pytest
import torch
import transformers as tf
from token_batches import token_batch

from pruning.apply import apply_plan, with_layer_repair, with_mlp_repair, with_stream_repair
from pruning.errors import PruningError
from pruning.export import export_pruned
from pruning.plan import PruningPlan, model_identity
from pruning.target_plan import target_plan
from pruning.timing import timing_table
from surgery.mlp_width import mlp_widths
from surgery.stream_refit import MIN_TOKENS_PER_COEFFICIENT, refit_to_dense_stream


def plan_for(tiny):
    width = mlp_widths(tiny)[0]
    plan = PruningPlan(model_identity(tiny), layers=[1], mlp_channels={0: list(range(0, width, 4)), 2: [1, 5, 9]})
    return with_stream_repair(with_mlp_repair(with_layer_repair(plan)), ridge=0.2)


def cal(tiny):
    need = MIN_TOKENS_PER_COEFFICIENT * (max(mlp_widths(tiny)) + 1)
    return token_batch(tiny, batch=need // 20 + 2, seq=24, seed=11, positions=1)


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_plan_round_trips_and_a_bad_setting_is_refused(tiny_llama, tmp_path):
    plan = plan_for(tiny_llama)
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").stream_repair == {"method": "dense_stream_refit", "ridge": 0.2,
                                                                       "attention": True}
    assert "dense residual stream" in plan.summary()
    with pytest.raises(PruningError, match="stream_repair must be"):
        PruningPlan(model_identity(tiny_llama), stream_repair={"method": "fine_tune"})
    with pytest.raises(PruningError, match="ridge"):
        with_stream_repair(plan, ridge=-1.0)


def test_applied_plan_is_the_stream_refit_of_the_repaired_model(tiny_llama):
    plan, calibration = plan_for(tiny_llama), cal(tiny_llama)
    applied = apply_plan(tiny_llama, plan, calibration=calibration)
    without = apply_plan(tiny_llama, PruningPlan(**{**plan.__dict__, "stream_repair": None}), calibration=calibration)
    direct = refit_to_dense_stream(tiny_llama, without.model, [0, 2], calibration, ridge=0.2, attention=True)
    batch = token_batch(tiny_llama, batch=3, seq=10, seed=4)
    torch.testing.assert_close(logits(applied.model.model, batch), logits(direct.model, batch), rtol=0, atol=1e-6)
    assert applied.report["stream_repair"]["kept_layers"] == [0, 2]


def test_export_reloads_with_the_in_memory_logits_and_says_what_was_done(tiny_llama, tmp_path):
    plan, calibration = plan_for(tiny_llama), cal(tiny_llama)
    manifest = export_pruned(tiny_llama, plan, tmp_path / "out", calibration=calibration)
    assert manifest["stream_repair"]["method"] == "dense_stream_refit"
    assert manifest["stream_repair"]["calibration"]["tokens"] == int(calibration.attention_mask.sum())
    assert any("residual stream" in note for note in manifest["notes"])
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["plan"]["stream_repair"] == plan.stream_repair
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=manifest["remote_code"])
    batch = token_batch(tiny_llama, batch=2, seq=12, seed=5)
    in_memory = apply_plan(tiny_llama, plan, calibration=calibration).model.model
    torch.testing.assert_close(logits(reloaded.eval(), batch), logits(in_memory, batch), rtol=0, atol=1e-5)


def test_target_plan_marks_the_chosen_plan_only(tiny_llama):
    calibration = token_batch(tiny_llama, batch=16, seq=24, seed=3, positions=1)
    table = timing_table(tiny_llama, prompt_tokens=8, repeats=1)  # the real shape, then fixed numbers
    table.update(other_ms=1.0, layers=[{**row, "block_ms": 4.0, "mlp_ms": 2.0} for row in table["layers"]])
    plain = target_plan(tiny_llama, calibration, target_speedup=1.2, timing=table, criterion="block_influence")
    marked = target_plan(tiny_llama, calibration, target_speedup=1.2, timing=table, criterion="block_influence",
                         stream_repair=True)
    assert plain.stream_repair is None and marked.stream_repair == {"method": "dense_stream_refit", "ridge": 0.1,
                                                                          "attention": True}
    assert (marked.layers, marked.mlp_channels) == (plain.layers, plain.mlp_channels)  # the search is the same
    assert marked.provenance[0]["stream_repair"] is True
