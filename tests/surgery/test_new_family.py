"""A family defined in one file (tests/surgery/renamed_phi_family.py) runs through the engine, a cut
and an export, with no edit anywhere in surgery/."""

import pytest
import torch
from token_batches import token_batch

import renamed_phi_family
import surgery
from surgery.adapters import registered_families
from surgery.cut import mask_heads, parameter_count, remove_heads
from surgery.engine import AblationEngine
from surgery.errors import SurgeryError
from surgery.save import save_model


@pytest.fixture(scope="module")
def phi():
    torch.manual_seed(0)
    config = renamed_phi_family.RenamedPhiConfig(
        vocab_size=97, hidden_size=32, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2,
        intermediate_size=48, max_position_embeddings=64)
    model = renamed_phi_family.RenamedPhiForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return surgery.load(model)


def logits(loaded, batch):
    with torch.no_grad():
        return loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def test_the_family_is_registered_and_found_by_model_type(phi):
    assert renamed_phi_family.ADAPTER in registered_families()
    assert phi.adapter is renamed_phi_family.ADAPTER
    assert phi.components.heads[:2] == ["L0.H0", "L0.H1"] and len(phi.components.heads) == 8


def test_the_engine_ablates_heads_at_the_adapters_output_projection(phi):
    batch = token_batch(phi)
    engine = AblationEngine(phi, "heads")
    masks = torch.ones(2, engine.n_players, dtype=torch.bool)
    masks[1, 3] = False  # L0.H3
    got = engine.logits(masks, batch)
    # By hand: zero head 3's slice of the input of layer 0's `self_attn.dense`.
    dense = phi.model.model.layers[0].self_attn.dense
    handle = dense.register_forward_pre_hook(lambda m, a: (a[0].index_fill(-1, torch.arange(24, 32), 0.0),))
    try:
        expected = logits(phi, batch)
    finally:
        handle.remove()
    pos = batch.score_positions
    torch.testing.assert_close(got[1], expected.gather(1, pos[..., None].expand(-1, -1, expected.shape[-1])),
                               rtol=0, atol=1e-5)
    assert not torch.equal(got[0], got[1])


def test_a_uniform_cut_equals_masking_and_exports_a_checkpoint_that_reloads(phi, tmp_path):
    batch = token_batch(phi)
    heads = ["L0.H1", "L1.H2"]  # one head in every layer: a plain checkpoint
    cut = remove_heads(phi, heads)
    masked = mask_heads(phi, heads)
    assert cut.components.n_heads == [3, 3]
    assert parameter_count(cut.model) < parameter_count(phi.model)
    torch.testing.assert_close(logits(cut, batch), logits(masked, batch), rtol=0, atol=1e-5)
    info = save_model(cut, tmp_path / "export")
    assert info["remote_code"] is False
    reloaded = surgery.load(tmp_path / "export")
    assert type(reloaded.model) is renamed_phi_family.RenamedPhiForCausalLM
    assert reloaded.adapter is renamed_phi_family.ADAPTER and reloaded.components.n_heads == [3, 3]
    torch.testing.assert_close(logits(reloaded, batch), logits(cut, batch), rtol=0, atol=1e-6)


def test_an_export_needing_per_layer_counts_is_refused_by_name(phi, tmp_path):
    cut = remove_heads(phi, ["L0.H1"])  # layers keep 3 and 4 heads: needs the exported modeling file
    with pytest.raises(SurgeryError, match="renamed_phi adapter names no export_layout"):
        save_model(cut, tmp_path / "uneven")


def test_a_registered_model_type_is_not_taken_over_silently():
    from dataclasses import replace

    with pytest.raises(SurgeryError, match="already served by family renamed_phi"):
        surgery.register_family(replace(renamed_phi_family.ADAPTER, family="other"))
