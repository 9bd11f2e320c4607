"""Invariants of the ablation engine on tiny models of every family (no download)."""

import copy

import pytest
import torch
from token_batches import token_batch
from tiny_models import MLP_DOWN

import surgery
from surgery.engine import AblationEngine


def reference_logits(model, batch):
    """Plain HF forward, logits read at the scored positions: [B, P, V]."""
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return full.gather(1, batch.score_positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))


def zero_head_columns(loaded, heads):
    """A deep copy with the output-projection columns of `heads` (layer, head) zeroed."""
    model = copy.deepcopy(loaded.model)
    adapter, D = loaded.adapter, loaded.components.head_dim
    blocks = adapter.blocks(model)
    with torch.no_grad():
        for layer, head in heads:
            proj = blocks[layer].get_submodule(adapter.attn_out_proj)
            cols = slice(head * D, (head + 1) * D)
            if adapter.out_proj_transposed:
                proj.weight[cols, :] = 0
            else:
                proj.weight[:, cols] = 0
    return model


def random_masks(n, p, seed=0, keep=0.6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, p, generator=g) < keep


def test_all_ones_mask_equals_unhooked_model(tiny):
    batch = token_batch(tiny)
    engine = AblationEngine(tiny, "heads")
    ones = torch.ones(1, engine.n_players, dtype=torch.bool)
    got = engine.logits(ones, batch)[0]
    torch.testing.assert_close(got, reference_logits(tiny.model, batch), rtol=0, atol=1e-6)


def test_full_coalition_inside_a_batch_of_ablated_ones_is_unchanged(tiny):
    batch = token_batch(tiny)
    engine = AblationEngine(tiny, "heads")
    masks = random_masks(5, engine.n_players, seed=1)
    masks[2] = True
    got = engine.logits(masks, batch)[2]
    torch.testing.assert_close(got, reference_logits(tiny.model, batch), rtol=0, atol=1e-5)


def test_zero_ablating_heads_equals_zeroing_output_projection_columns(tiny):
    batch = token_batch(tiny)
    engine = AblationEngine(tiny, "heads")
    masks = random_masks(4, engine.n_players, seed=2)
    got = engine.logits(masks, batch)
    for c in range(masks.shape[0]):
        dropped = [tiny.components.parse(n) for n, keep in zip(engine.players, masks[c]) if not keep]
        edited = zero_head_columns(tiny, [(d.layer, d.head) for d in dropped])
        torch.testing.assert_close(got[c], reference_logits(edited, batch), rtol=0, atol=1e-5)


def test_gqa_heads_sharing_a_kv_head_are_ablated_independently(tiny_llama):
    comps = tiny_llama.components
    assert comps.kv_groups(0) == [[0, 1, 2], [3, 4, 5]]
    batch = token_batch(tiny_llama)
    engine = AblationEngine(tiny_llama, "heads")
    for dropped in ([(1, 0)], [(1, 0), (1, 1)], [(1, 0), (1, 1), (1, 2)], [(0, 2), (2, 3)]):
        mask = torch.ones(1, engine.n_players, dtype=torch.bool)
        for layer, head in dropped:
            mask[0, engine.players.index(f"L{layer}.H{head}")] = False
        torch.testing.assert_close(engine.logits(mask, batch)[0],
                                   reference_logits(zero_head_columns(tiny_llama, dropped), batch),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("players", ["heads", "layers", "mlps", "attns"])
@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_batched_coalitions_equal_one_by_one(tiny, players, mode):
    batch = token_batch(tiny, batch=3)
    engine = AblationEngine(tiny, players, mode=mode, max_rows=6)
    masks = random_masks(7, engine.n_players, seed=3)
    batched = engine.logits(masks, batch)
    single = torch.cat([engine.logits(masks[i:i + 1], batch) for i in range(7)])
    torch.testing.assert_close(batched, single, rtol=0, atol=2e-5)
    no_prefix = AblationEngine(tiny, players, mode=mode, max_rows=64, reuse_prefix=False).logits(masks, batch)
    torch.testing.assert_close(batched, no_prefix, rtol=0, atol=2e-5)


def test_layer_ablation_equals_model_without_the_block(tiny):
    batch = token_batch(tiny)
    engine = AblationEngine(tiny, "layers")
    for layer in range(tiny.components.n_layers):
        mask = torch.ones(1, engine.n_players, dtype=torch.bool)
        mask[0, layer] = False
        cut = copy.deepcopy(tiny.model)
        blocks = tiny.adapter.blocks(cut)
        del blocks[layer]
        cut.config.num_hidden_layers -= 1
        torch.testing.assert_close(engine.logits(mask, batch)[0], reference_logits(cut, batch), rtol=0, atol=1e-5)


def test_mlp_ablation_equals_zeroed_mlp_output(tiny):
    batch = token_batch(tiny)
    engine = AblationEngine(tiny, "mlps")
    mask = torch.ones(1, engine.n_players, dtype=torch.bool)
    mask[0, 1] = False
    edited = copy.deepcopy(tiny.model)
    down = tiny.adapter.blocks(edited)[1].get_submodule(MLP_DOWN[tiny.adapter.family])
    with torch.no_grad():
        down.weight.zero_()
        if down.bias is not None:
            down.bias.zero_()
    torch.testing.assert_close(engine.logits(mask, batch)[0], reference_logits(edited, batch), rtol=0, atol=1e-5)


def test_resampling_from_the_same_inputs_changes_nothing(tiny):
    batch = token_batch(tiny)
    for players in ("heads", "layers", "mlps"):
        engine = AblationEngine(tiny, players, mode="resample", resample_source=batch)
        masks = torch.zeros(2, engine.n_players, dtype=torch.bool)
        torch.testing.assert_close(engine.logits(masks, batch)[0], reference_logits(tiny.model, batch),
                                   rtol=0, atol=1e-5)


def test_mean_ablation_replaces_heads_with_their_token_mean(tiny_llama):
    batch = token_batch(tiny_llama)
    reference = token_batch(tiny_llama, seed=7)
    engine = AblationEngine(tiny_llama, ["L1.H4"], mode="mean", reference=reference)
    captured = []
    proj = tiny_llama.adapter.blocks(tiny_llama.model)[1].self_attn.o_proj
    handle = proj.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach().clone()))
    with torch.no_grad():
        tiny_llama.model(input_ids=reference.input_ids, attention_mask=reference.attention_mask)
    handle.remove()
    z = captured[0].view(*captured[0].shape[:2], 6, 8)[:, :, 4]  # [B, T, D]
    w = reference.attention_mask.float().unsqueeze(-1)
    expected_mean = (z * w).sum((0, 1)) / w.sum()
    # Expected: o_proj input with head 4 replaced by its mean.
    edited = copy.deepcopy(tiny_llama.model)
    eproj = edited.model.layers[1].self_attn.o_proj

    def replace(module, args):
        x = args[0].clone()
        x.view(*x.shape[:2], 6, 8)[:, :, 4] = expected_mean
        return (x,)
    eproj.register_forward_pre_hook(replace)
    got = engine.logits(torch.tensor([[False]]), batch)[0]
    torch.testing.assert_close(got, reference_logits(edited, batch), rtol=0, atol=1e-5)


def test_float_gates_interpolate_and_carry_gradients(tiny):
    batch = token_batch(tiny)
    engine = AblationEngine(tiny, "heads")
    gates = torch.ones(1, engine.n_players, requires_grad=True)
    logp = engine.logits(gates, batch).log_softmax(-1)
    loss = -logp.gather(-1, batch.targets.unsqueeze(0).unsqueeze(-1)).mean()
    loss.backward()
    assert gates.grad is not None and gates.grad.abs().sum() > 0
    half = torch.ones(2, engine.n_players)
    half[1, 0] = 0.0
    hard = torch.ones(2, engine.n_players, dtype=torch.bool)
    hard[1, 0] = False
    torch.testing.assert_close(engine.logits(half, batch), engine.logits(hard, batch), rtol=0, atol=1e-5)


def test_evaluate_applies_metric_per_coalition(tiny):
    batch = token_batch(tiny)
    engine = AblationEngine(tiny, "layers", max_rows=4)
    masks = random_masks(6, engine.n_players, seed=5)
    metric = lambda logits, b: logits.log_softmax(-1).gather(
        -1, b.targets.expand(logits.shape[0], -1, -1).unsqueeze(-1)).squeeze(-1).mean(dim=(1, 2))
    values = engine.evaluate(masks, batch, metric)
    expected = metric(engine.logits(masks, batch), batch).double()
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-6)
