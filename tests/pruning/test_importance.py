"""Baseline importance criteria: each one equals its definition computed another way."""

import copy

import pytest
import torch
from token_batches import token_batch
from tiny_models import build

import surgery
from probes.tasks.base import TaskBatch
from pruning.importance import (block_influence, head_gradient, head_leave_one_out, head_magnitude,
                                last_layer_scores, random_scores, scores_as_values)
from pruning.errors import PruningError
from pruning.policies import head_plan, layer_plan
from surgery.engine import AblationEngine


@pytest.fixture(scope="module")
def llama():
    return surgery.load(build("llama"))


@pytest.fixture(scope="module")
def toy(llama):
    """Random tokens scored by next-token loss (tiny models have no tokenizer, so no prompt tasks)."""
    return TaskBatch(token_batch(llama, batch=3, seq=10), "toy", ("loss",))


def expected_magnitude(loaded, layer, h):
    """The criterion from the raw weights of each family, written out independently of the code under test."""
    block = loaded.adapter.blocks(loaded.model)[layer]
    family, H = loaded.adapter.family, loaded.components.n_heads[layer]
    D = loaded.adapter.head_dim(loaded.model.config)
    if family == "gpt2":
        q = block.attn.c_attn.weight[:, h * D:(h + 1) * D]          # Conv1D [in, 3 * H * D]
        o = block.attn.c_proj.weight[h * D:(h + 1) * D, :]          # Conv1D [H * D, out]
    elif family == "gpt_neox":
        q = block.attention.query_key_value.weight.view(H, 3 * D, -1)[h, :D]
        o = block.attention.dense.weight[:, h * D:(h + 1) * D]
    else:
        q = block.self_attn.q_proj.weight[h * D:(h + 1) * D]
        o = block.self_attn.o_proj.weight[:, h * D:(h + 1) * D]
    return float((q.detach().pow(2).sum() + o.detach().pow(2).sum()).sqrt())


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_magnitude_is_the_norm_of_query_rows_and_output_columns(family):
    loaded = surgery.load(build(family))
    scores = head_magnitude(loaded)
    assert list(scores) == loaded.components.heads
    for name in ("L0.H0", "L1.H2", "L2.H3"):
        layer, head = int(name[1]), int(name.split("H")[1])
        assert scores[name] == pytest.approx(expected_magnitude(loaded, layer, head), rel=1e-5)
    # Masking a head zeroes only its output columns: its score drops, every other head's stays.
    masked = head_magnitude(surgery.cut.mask_heads(loaded, ["L1.H0"]))
    assert masked["L1.H0"] < scores["L1.H0"]
    assert all(masked[h] == pytest.approx(scores[h]) for h in scores if h != "L1.H0")


def test_gradient_importance_matches_a_finite_difference_of_the_gate(llama, toy):
    scores = head_gradient(llama, toy)
    engine = AblationEngine(llama, "heads")
    head, eps = 4, 1e-3
    total = 0.0
    for i in range(toy.size):
        ex = toy.rows(i, i + 1)
        gates = torch.ones(2, engine.n_players, dtype=torch.float32)
        gates[1, head] = 1 - eps
        v = engine.evaluate(gates, ex.tokens, ex.metric())
        total += abs(float(v[0] - v[1]) / eps)
    assert scores[engine.players[head]] == pytest.approx(total / toy.size, rel=2e-2)


def test_leave_one_out_is_the_drop_when_one_head_is_ablated(llama, toy):
    scores = head_leave_one_out(llama, toy)
    engine = AblationEngine(llama, "heads")
    masks = torch.ones(2, engine.n_players, dtype=torch.bool)
    masks[1, 5] = False
    loss = engine.evaluate(masks, toy.tokens, toy.metric())
    # loss is lower-is-better: importance = loss without the head - loss with it
    assert scores[engine.players[5]] == pytest.approx(float(loss[1] - loss[0]), abs=1e-9)


def test_block_influence_is_zero_for_a_block_that_changes_nothing(llama, toy):
    model = copy.deepcopy(llama.model)
    blocks = llama.adapter.blocks(model)
    with torch.no_grad():  # a block whose attention and MLP write nothing passes the residual through
        llama.adapter.get(blocks[1], llama.adapter.attn_out_proj).weight.zero_()
        blocks[1].mlp.down_proj.weight.zero_()
    identity = surgery.load(model)
    bi = block_influence(identity, toy.tokens)
    assert bi["L1"] == pytest.approx(0.0, abs=1e-5)
    assert bi["L0"] > 1e-3 and bi["L2"] > 1e-3


def test_last_layers_go_first_but_never_the_final_one(llama):
    plan = layer_plan(scores_as_values(last_layer_scores(llama), "last", llama), llama, k=1)
    assert plan.layers == [1]


def test_baseline_scores_build_plans_and_are_refused_on_another_model(llama):
    scores = random_scores(llama.components.heads, seed=3)
    assert scores == random_scores(llama.components.heads, seed=3) != random_scores(llama.components.heads, seed=4)
    values = scores_as_values(scores, "random", llama, seed=3)
    plan = head_plan(values, llama, fraction=0.25)
    assert len(plan.heads) == round(0.25 * len(llama.components.heads))
    with pytest.raises(PruningError, match="another model"):
        head_plan(values, surgery.load(build("llama", seed=1)), fraction=0.25)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fluctuation_is_channel_variance_times_output_column_norm(family):
    """FLAP's head score from the output projection's own input, captured with a plain hook."""
    from pruning.importance import head_fluctuation

    loaded = surgery.load(build(family))
    batch = token_batch(loaded, batch=2, seq=9)
    scores = head_fluctuation(loaded, batch)
    assert list(scores) == loaded.components.heads
    block = loaded.adapter.blocks(loaded.model)[1]
    proj = block.get_submodule(loaded.adapter.attn_out_proj)
    seen = []
    handle = proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    handle.remove()
    x = seen[0][batch.attention_mask.bool()].double()  # [tokens, H * D]
    weight = loaded.adapter.out_proj_weight(block).double()  # [hidden, H * D]
    D = loaded.components.head_dim
    for h in range(loaded.components.n_heads[1]):
        cols = slice(h * D, (h + 1) * D)
        expected = float((x[:, cols].var(0, unbiased=False) * weight[:, cols].pow(2).sum(0)).sum())
        assert scores[f"L1.H{h}"] == pytest.approx(expected, rel=1e-6)
