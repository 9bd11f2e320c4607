"""The real embedded model: SmolLM2-135M-Instruct (Llama, GQA 9 query / 3 key-value heads, 30 layers)."""

import pytest
import torch

import surgery
from surgery.engine import AblationEngine

pytestmark = pytest.mark.integration


def prompt_batch(loaded, texts=("The capital of France is", "Two plus two equals")):
    enc = loaded.tokenizer(list(texts), return_tensors="pt", padding=True)
    return surgery.TokenBatch.last_position(enc.input_ids, enc.attention_mask)


def test_embedded_model_components(smollm):
    comps = smollm.components
    assert comps.n_layers == 30 and comps.n_heads == [9] * 30 and comps.n_kv_heads == [3] * 30
    assert len(comps.heads) == 270 and comps.heads[0] == "L0.H0" and comps.heads[-1] == "L29.H8"
    assert comps.kv_groups(5) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and comps.kv_head_of(5, 7) == 2
    assert (surgery.loading.cache_dir()).is_dir()


def test_embedded_model_knows_a_capital(smollm):
    batch = prompt_batch(smollm)
    logits = AblationEngine(smollm, "layers").logits(torch.ones(1, 30, dtype=torch.bool), batch)
    assert smollm.tokenizer.decode(logits[0, 0, 0].argmax()).strip() == "Paris"


def test_head_masks_equal_zeroed_columns_on_the_real_model(smollm):
    batch = prompt_batch(smollm)
    engine = AblationEngine(smollm, "heads")
    mask = torch.ones(1, 270, dtype=torch.bool)
    dropped = [(3, 0), (3, 1), (17, 4), (29, 8)]
    for layer, head in dropped:
        mask[0, engine.players.index(f"L{layer}.H{head}")] = False
    got = engine.logits(mask, batch)[0]
    weights = {}
    blocks = smollm.adapter.blocks(smollm.model)
    try:
        with torch.no_grad():
            for layer, head in dropped:
                w = blocks[layer].self_attn.o_proj.weight
                weights.setdefault(layer, w.clone())
                w[:, head * 64:(head + 1) * 64] = 0
            full = smollm.model(**{"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}).logits
    finally:
        with torch.no_grad():
            for layer, w in weights.items():
                blocks[layer].self_attn.o_proj.weight.copy_(w)
    expected = full.gather(1, batch.score_positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    assert (got - expected).abs().max() < 1e-4


def test_batched_layer_coalitions_with_prefix_reuse_match_single_runs(smollm):
    batch = prompt_batch(smollm)
    engine = AblationEngine(smollm, "layers", max_rows=8)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 30, generator=g) < 0.8
    batched = engine.logits(masks, batch)
    single = torch.cat([engine.logits(m[None], batch) for m in masks])
    # float32 over 30 layers: batch-size-dependent kernels differ in the last bits (logits ~10)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=5e-4)
