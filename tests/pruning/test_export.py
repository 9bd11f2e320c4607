"""Plans applied physically and exported: reloaded logits equal the masked original."""

import numpy as np
import pytest
import torch
from token_batches import token_batch

import surgery
from probes.values import values_from_arrays
from pruning.errors import PruningError
from pruning.export import export_pruned
from pruning.plan import PruningPlan, model_identity
from pruning.policies import head_plan
from surgery.engine import AblationEngine
from surgery.save import verify_export


def logits_at(loaded, batch):
    engine = AblationEngine(loaded, "layers")
    return engine.logits(torch.ones(1, engine.n_players, dtype=torch.bool), batch)[0]


def test_exported_head_and_layer_plan_matches_the_masked_original(tiny, tmp_path):
    comps = tiny.components
    heads = ["L0.H1", "L2.H0", "L2.H3"]
    plan = PruningPlan(model_identity(tiny), heads=heads, layers=[1])
    manifest = export_pruned(tiny, plan, tmp_path / "out")
    assert manifest["after"]["parameters"] < manifest["before"]["parameters"]
    assert manifest["plan"]["heads"] == heads and manifest["file_shrinks"]
    verify_export(tmp_path / "out")
    reloaded = surgery.load(str(tmp_path / "out"))
    batch = token_batch(tiny)
    players = heads + ["L1"]
    engine = AblationEngine(tiny, players)
    masked = engine.logits(torch.zeros(1, len(players), dtype=torch.bool), batch)[0]
    torch.testing.assert_close(logits_at(reloaded, batch), masked, rtol=0, atol=1e-5)


def test_existing_output_directory_is_not_overwritten(tiny_llama, tmp_path):
    plan = PruningPlan(model_identity(tiny_llama), layers=[2])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(surgery.SurgeryError, match="already exists"):
        export_pruned(tiny_llama, plan, tmp_path / "out")
    with pytest.raises(surgery.SurgeryError, match="not written by model-surgery.*keep.txt"):
        export_pruned(tiny_llama, plan, tmp_path / "out", force=True)  # force replaces only our exports
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    export_pruned(tiny_llama, plan, tmp_path / "new")
    export_pruned(tiny_llama, PruningPlan(model_identity(tiny_llama), layers=[1]), tmp_path / "new", force=True)
    assert verify_export(tmp_path / "new")["plan"]["layers"] == [1]


def test_plan_for_another_model_is_refused_before_anything_is_written(tiny_llama, tmp_path):
    from tiny_models import build
    other = surgery.load(build("llama", seed=9))
    plan = head_plan(values_from_arrays(other.components.heads, np.arange(18.0)), other, k=2, allow_unverified=True)
    with pytest.raises(PruningError, match="made for model"):
        export_pruned(tiny_llama, plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_corrupted_export_is_detected_on_load(tiny_llama, tmp_path):
    export_pruned(tiny_llama, PruningPlan(model_identity(tiny_llama), heads=["L1.H0", "L1.H1", "L1.H2"]),
                  tmp_path / "out")
    weights = tmp_path / "out" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(surgery.CorruptExportError, match="model.safetensors.*truncated"):
        surgery.load(str(tmp_path / "out"))


def test_uneven_gqa_groups_export_without_copies_and_generate_with_a_cache(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    from surgery.cut import mask_heads, parameter_count
    # L0 keeps 1 + 2 query heads over its 2 key/value heads, L1 keeps 3 + 2: uneven, nothing duplicated.
    plan = PruningPlan(model_identity(tiny_llama), heads=["L0.H0", "L0.H1", "L0.H3", "L1.H5"])
    manifest = export_pruned(tiny_llama, plan, tmp_path / "out")
    assert manifest["remote_code"] and manifest["after"]["parameters"] < manifest["before"]["parameters"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert model.config.surgery_kv_of_query == {"0": [0, 1, 1], "1": [0, 0, 0, 1, 1]}
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (2 * 8, 48) and attn.num_key_value_groups == 1
    k_cut = tiny_llama.model.model.layers[0].self_attn.k_proj.weight
    torch.testing.assert_close(attn.k_proj.weight, k_cut, rtol=0, atol=0)  # both key/value heads, once
    masked = mask_heads(tiny_llama, plan.heads).model
    assert parameter_count(model) < parameter_count(masked)
    prompt = token_batch(tiny_llama).input_ids[:1, :6]
    kwargs = dict(max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, **kwargs), masked.generate(prompt, **kwargs))


def test_uneven_gqa_groups_with_per_head_key_norms_export_exactly(tmp_path):
    # Qwen3 normalises every key head (k_norm over head_dim) after k_proj: the gather must sit before it.
    from tiny_models import build
    qwen = surgery.load(build("qwen3", seed=2))
    plan = PruningPlan(model_identity(qwen), heads=["L0.H0", "L1.H4", "L1.H5", "L2.H1"])
    export_pruned(qwen, plan, tmp_path / "out")
    reloaded = surgery.load(str(tmp_path / "out"))
    assert reloaded.components.kv_maps == {0: [0, 0, 1, 1, 1], 1: [0, 0, 0, 1], 2: [0, 0, 1, 1, 1]}
    batch = token_batch(qwen)
    engine = AblationEngine(qwen, plan.heads)
    masked = engine.logits(torch.zeros(1, len(plan.heads), dtype=torch.bool), batch)[0]
    torch.testing.assert_close(logits_at(reloaded, batch), masked, rtol=0, atol=1e-5)
