"""Physical head/layer removal gives the masked model's logits, for every family (no download)."""

import pytest
import torch
from token_batches import token_batch

from surgery.cut import head_counts, mask_heads, parameter_count, remove_heads, remove_layers
from surgery.errors import SurgeryError
from surgery.modeling.pruned_attention import SharedKVProjection


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def assert_cut_equals_masked(tiny, heads, **kwargs):
    batch = token_batch(tiny)
    cut = remove_heads(tiny, heads, **kwargs)
    masked = mask_heads(tiny, heads)
    torch.testing.assert_close(logits(cut.model, batch), logits(masked.model, batch), rtol=0, atol=1e-5)
    return cut


def test_uniform_head_removal_equals_masked_and_shrinks(tiny):
    gqa = tiny.adapter.family == "llama"  # one head of each key/value group, so the groups stay even
    cut = assert_cut_equals_masked(tiny, {l: [0, 3] for l in range(3)} if gqa else {0: [1], 1: [2], 2: [0]})
    n = tiny.components.n_heads[0] - (2 if gqa else 1)
    assert cut.components.n_heads == [n] * 3
    assert parameter_count(cut.model) < parameter_count(tiny.model)
    assert head_counts(cut.config, 3)[0] == [n] * 3


def test_uneven_head_removal_equals_masked_and_records_per_layer_counts(tiny):
    cut = assert_cut_equals_masked(tiny, ["L0.H0", "L1.H1", "L1.H2"])
    H = tiny.components.n_heads[0]
    assert cut.components.n_heads == [H - 1, H - 2, H]
    assert cut.config.is_heterogeneous
    assert head_counts(cut.config, 3)[0] == [H - 1, H - 2, H]


def test_input_model_is_untouched(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    remove_heads(tiny, ["L0.H1"])
    remove_layers(tiny, [1])
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not getattr(tiny.config, "is_heterogeneous", False)


def test_gqa_full_groups_drop_key_value_heads_plain_config(tiny_llama):
    # Query heads 0-2 read kv head 0: removing all of them removes that kv head.
    cut = assert_cut_equals_masked(tiny_llama, {l: [0, 1, 2] for l in range(3)})
    assert cut.components.n_heads == [3] * 3 and cut.components.n_kv_heads == [1] * 3
    assert (cut.config.num_attention_heads, cut.config.num_key_value_heads, cut.config.head_dim) == (3, 1, 8)
    assert not cut.config.is_heterogeneous
    assert cut.model.model.layers[0].self_attn.k_proj.out_features == 8


def test_gqa_partial_groups_share_key_value_heads_exactly_and_only_shrink(tiny_llama):
    # Layer 0 keeps 1 of group 0 and 3 of group 1: both key/value heads stay once, gathered 1 + 3.
    cut = assert_cut_equals_masked(tiny_llama, {0: [0, 1], 1: [0, 3], 2: [5]})
    comps = cut.components
    assert comps.n_heads == [4, 4, 5] and comps.n_kv_heads == [2, 2, 2]
    assert comps.kv_groups(0) == [[0], [1, 2, 3]] and comps.kv_groups(2) == [[0, 1, 2], [3, 4]]
    attn = cut.model.model.layers[0].self_attn
    assert isinstance(attn.k_proj, SharedKVProjection) and attn.num_key_value_groups == 1
    assert attn.k_proj.weight.shape == (2 * 8, 48) and attn.k_proj.kv_of_query == (0, 1, 1, 1)
    torch.testing.assert_close(attn.v_proj.weight, tiny_llama.model.model.layers[0].self_attn.v_proj.weight)
    # Layer 1 keeps 2 per group: transformers' own layout, no map.
    layer1 = cut.model.model.layers[1].self_attn
    assert type(layer1.k_proj) is torch.nn.Linear and layer1.num_key_value_groups == 2
    assert cut.config.surgery_kv_of_query == {"0": [0, 1, 1, 1], "2": [0, 0, 0, 1, 1]}
    # Removing query heads never adds parameters, however unevenly the groups are left.
    one_per_layer = assert_cut_equals_masked(tiny_llama, {0: [0], 1: [0], 2: [0]})
    assert one_per_layer.components.n_kv_heads == [2, 2, 2]
    assert parameter_count(one_per_layer.model) < parameter_count(tiny_llama.model)


def test_gqa_cutting_an_uneven_layer_again_and_removing_layers_keeps_the_maps(tiny_llama):
    batch = token_batch(tiny_llama)
    first = remove_heads(tiny_llama, {0: [0], 1: [4]})
    # Second cut on the pruned model: L0's map [0, 0, 1, 1, 1] loses its heads 1 and 4 (old H2, H5).
    second = remove_heads(first, {0: [1, 4]})
    assert second.components.kv_groups(0) == [[0], [1, 2]]
    masked = mask_heads(tiny_llama, ["L0.H0", "L0.H2", "L0.H5", "L1.H4"])
    torch.testing.assert_close(logits(second.model, batch), logits(masked.model, batch), rtol=0, atol=1e-5)
    # Both query heads of old group 0 gone: only key/value head 1 is left, in the plain layout.
    whole = remove_heads(first, {0: [0, 1]})
    assert whole.components.n_kv_heads[0] == 1 and 0 not in whole.components.kv_maps
    assert type(whole.model.model.layers[0].self_attn.k_proj) is torch.nn.Linear
    dropped = remove_layers(first, [0])  # old L1 (lost H4: map [0, 0, 0, 1, 1]) becomes L0
    assert dropped.components.kv_maps == {0: [0, 0, 0, 1, 1]}
    assert dropped.config.surgery_kv_of_query == {"0": [0, 0, 0, 1, 1]}


def test_gqa_partial_groups_duplicate_shared_kv_heads_exactly(tiny_llama):
    # Layer 0 keeps 1 of group 0 and 3 of group 1: kv head 1 is duplicated 3 times (gcd 1).
    cut = assert_cut_equals_masked(tiny_llama, {0: [0, 1], 1: [0, 3], 2: [5]}, partial_groups="duplicate")
    assert cut.components.n_heads == [4, 4, 5]
    assert cut.components.n_kv_heads == [4, 2, 5]
    attn = cut.model.model.layers[0].self_attn
    assert attn.num_key_value_groups == 1 and attn.k_proj.out_features == 4 * 8
    k0 = tiny_llama.model.model.layers[0].self_attn.k_proj.weight
    torch.testing.assert_close(attn.k_proj.weight[8:16], k0[8:16], rtol=0, atol=0)
    # Layer 1 keeps 2 per group: no duplication, uniform groups of 2.
    assert cut.model.model.layers[1].self_attn.num_key_value_groups == 2
    # The price of the stock layout: duplicated key/value rows can outweigh the removed query rows.
    one_per_layer = remove_heads(tiny_llama, {0: [0], 1: [0], 2: [0]}, partial_groups="duplicate")
    assert one_per_layer.components.n_kv_heads == [5, 5, 5]
    assert parameter_count(one_per_layer.model) > parameter_count(tiny_llama.model)


def test_gqa_partial_groups_can_be_refused(tiny_llama):
    with pytest.raises(SurgeryError, match="key/value group"):
        remove_heads(tiny_llama, ["L0.H0"], partial_groups="error")
    remove_heads(tiny_llama, ["L0.H0", "L0.H1", "L0.H2"], partial_groups="error")  # whole group is fine


def test_layer_without_heads_refused_or_kept_as_zeroed_placeholder(tiny):
    all_of_l1 = [f"L1.H{h}" for h in range(tiny.components.n_heads[1])]
    with pytest.raises(SurgeryError, match="remove_layers"):
        remove_heads(tiny, all_of_l1)
    cut = assert_cut_equals_masked(tiny, all_of_l1, empty_layers="keep_zeroed_head")
    assert cut.components.n_heads[1] == 1


def test_removing_every_head_or_every_layer_is_refused(tiny):
    with pytest.raises(SurgeryError, match="all .* heads of the model"):
        remove_heads(tiny, tiny.components.heads, empty_layers="keep_zeroed_head")
    with pytest.raises(SurgeryError, match="all 3 layers"):
        remove_layers(tiny, [0, 1, 2])
    with pytest.raises(SurgeryError, match="out of range"):
        remove_heads(tiny, ["L0.H99"])
    with pytest.raises(SurgeryError, match="not a head"):
        remove_heads(tiny, ["L1"])


def test_layer_removal_equals_skipping_the_block(tiny):
    from surgery.engine import AblationEngine
    batch = token_batch(tiny)
    engine = AblationEngine(tiny, "layers")
    mask = torch.tensor([[True, False, True]])
    cut = remove_layers(tiny, [1])
    assert cut.config.num_hidden_layers == 2 and cut.components.n_layers == 2
    expected = engine.logits(mask, batch)[0]
    got = logits(cut.model, batch)
    got = got.gather(1, batch.score_positions.unsqueeze(-1).expand(-1, -1, got.shape[-1]))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    idx = [m.layer_idx for m in tiny.adapter.blocks(cut.model)[1].modules() if hasattr(m, "layer_idx")]
    assert idx and set(idx) == {1}


def test_layer_removal_after_uneven_head_removal_keeps_per_layer_counts(tiny_llama):
    cut = remove_heads(tiny_llama, {0: [0], 2: [0, 1, 2]})
    cut2 = remove_layers(cut, [1])
    assert cut2.components.n_heads == [5, 3] and cut2.components.n_kv_heads == [2, 1]
    assert head_counts(cut2.config, 2) == ([5, 3], [2, 1])
    assert cut2.components.kv_groups(0) == [[0, 1], [2, 3, 4]]
    batch = token_batch(tiny_llama)
    ref = remove_layers(mask_heads(tiny_llama, {0: [0], 2: [0, 1, 2]}), [1])
    torch.testing.assert_close(logits(cut2.model, batch), logits(ref.model, batch), rtol=0, atol=1e-5)


def test_masked_variant_is_labelled_and_same_size(tiny):
    masked = mask_heads(tiny, ["L0.H1", "L2.H0"])
    assert parameter_count(masked.model) == parameter_count(tiny.model)
    assert masked.config.surgery_masked_heads == ["L0.H1", "L2.H0"]
    assert "MASKED" in masked.source
