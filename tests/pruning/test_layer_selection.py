"""Layer choice for removal by operating-point values (weighted Banzhaf, one-shot and iterative) and by
SLEB's greedy evaluation: the right layer on constructed cases, determinism, cornerstones, plans."""

import numpy as np
import pytest
import torch
import transformers as tf
from token_batches import token_batch

import surgery
from probes.game import Game
from pruning.apply import apply_plan
from pruning.errors import PruningError
from pruning.evaluate import plain_logits
from pruning.layer_selection import (banzhaf_layer_order, criterion_layer_plan, layer_objective_game,
                                     sleb_layer_order)
from pruning.plan import PruningPlan, model_identity

N_LAYERS = 6
PASS_THROUGH = 3  # a block whose attention and MLP write nothing: dropping it changes nothing


@pytest.fixture(scope="module")
def six_layers():
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=97, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_hidden_layers=N_LAYERS, intermediate_size=48, max_position_embeddings=64))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1:
                p.add_(torch.randn_like(p) * 0.3)
        block = model.model.layers[PASS_THROUGH]
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    return surgery.load(model.eval())


def calibration(loaded):
    return token_batch(loaded, batch=6, seq=16, seed=3, positions=4, pad_last=False)


def synthetic_layer_game(weights, pair=None):
    """v(S) = sum of kept layers' weights (+ a pair bonus when both layers of `pair` are kept)."""
    weights = np.asarray(weights, dtype=float)

    def value(c):
        v = c.astype(float) @ weights
        if pair is not None:
            i, j, bonus = pair
            v = v + bonus * (c[:, i] & c[:, j])
        return v

    return Game([f"L{i}" for i in range(len(weights))], value, {"task": "synthetic", "ablation": "zero"})


def test_sleb_removes_the_layer_whose_removal_costs_least():
    # Layer 1 has the smallest weight, but removing it (or 4) also costs the 10-point pair bonus:
    # the costs of removal are 5, 11, 3, 4, 12.5, 6, so 2 goes first, then 3.
    game = synthetic_layer_game([5.0, 1.0, 3.0, 4.0, 2.5, 6.0], pair=(1, 4, 10.0))
    order, steps = sleb_layer_order(game, 2)
    assert order == [2, 3]
    assert steps[0]["candidate_values"]["L2"] == max(steps[0]["candidate_values"].values())
    order, _ = sleb_layer_order(game, 2, cornerstones=[2])
    assert 2 not in order


def test_sleb_on_a_model_picks_the_truly_least_harmful_layer(six_layers):
    cal = calibration(six_layers)
    game = layer_objective_game(six_layers, cal, measure="kl")
    order, steps = sleb_layer_order(game, 1)
    # Direct check: drop every layer alone with the real applier, KL of its logits to the dense ones.
    dense = torch.log_softmax(plain_logits(six_layers.model, cal), -1)
    kl = {}
    for layer in range(N_LAYERS):
        pruned = apply_plan(six_layers, PruningPlan(model_identity(six_layers), layers=[layer])).model
        logp = torch.log_softmax(plain_logits(pruned.model, cal), -1)
        kl[layer] = float((dense.exp() * (dense - logp)).sum(-1).mean())
    assert order == [min(kl, key=kl.get)] == [PASS_THROUGH]
    for layer, value in kl.items():  # the game's value is minus that KL
        assert -steps[0]["candidate_values"][f"L{layer}"] == pytest.approx(value, rel=1e-3, abs=1e-6)


def test_banzhaf_values_drop_the_pass_through_layer_and_are_deterministic(six_layers):
    cal = calibration(six_layers)
    runs = [banzhaf_layer_order(layer_objective_game(six_layers, cal), 2, budget=24, seed=5) for _ in range(2)]
    assert runs[0][0] == runs[1][0]
    assert PASS_THROUGH in runs[0][0]
    assert runs[0][1][0]["p"] == pytest.approx(1 - 2 / N_LAYERS)


def test_iterative_banzhaf_revalues_survivors_at_the_remaining_operating_point(six_layers):
    cal = calibration(six_layers)
    order, steps = banzhaf_layer_order(layer_objective_game(six_layers, cal), 3, budget=16, seed=1,
                                       iterative=True, cornerstones=[0])
    assert len(steps) == 3 and len(set(order)) == 3 and 0 not in order
    assert [s["n_players"] for s in steps] == [5, 4, 3]  # removed layers leave the game
    assert [s["p"] for s in steps] == pytest.approx([1 - 3 / 5, 1 - 2 / 4, 1 - 1 / 3])
    assert order[0] == PASS_THROUGH


def test_iterative_banzhaf_beats_one_shot_on_a_redundant_pair():
    # Layers 0 and 1 are copies: either alone carries the bonus. One-shot values both as cheap and
    # drops both; re-valuing after the first removal sees the survivor is now needed.
    def value(c):
        return c[:, 2:].sum(1) * 3.0 + 5.0 * (c[:, 0] | c[:, 1]) + 0.1 * c[:, 0]

    game = Game([f"L{i}" for i in range(5)], value, {"task": "redundant", "ablation": "zero"})
    one_shot, _ = banzhaf_layer_order(game, 2, budget=40, seed=0)
    iterative, _ = banzhaf_layer_order(game, 2, budget=40, seed=0, iterative=True)
    assert sorted(one_shot) == [0, 1]
    assert 1 in iterative and 0 not in iterative


def test_criterion_plan_records_the_choice_and_repairs_when_asked(six_layers):
    cal = calibration(six_layers)
    plan = criterion_layer_plan(six_layers, "sleb", cal, k=2, repair=True, ridge=0.2, cornerstones=[0])
    assert plan.layer_repair == {"method": "replaceme_linear", "ridge": 0.2}
    assert len(plan.layers) == 2 and 0 not in plan.layers
    record = plan.provenance[0]
    assert record["criterion"] == "sleb" and record["removal_order"][0] == PASS_THROUGH
    assert PruningPlan.from_json_dict(plan.to_json_dict()).layers == plan.layers
    bi = criterion_layer_plan(six_layers, "block_influence", cal, fraction=0.34)
    assert len(bi.layers) == 2 and bi.layer_repair is None


def test_bad_layer_criterion_settings_are_refused_before_any_work(six_layers):
    cal = calibration(six_layers)
    with pytest.raises(PruningError, match="unknown layer criterion"):
        criterion_layer_plan(six_layers, "shortest", cal, k=1)
    with pytest.raises(PruningError, match="needs budget"):
        criterion_layer_plan(six_layers, "banzhaf", cal, k=1)
    with pytest.raises(PruningError, match="k=6"):
        criterion_layer_plan(six_layers, "sleb", cal, k=6)
    with pytest.raises(PruningError, match="give k= or fraction="):
        criterion_layer_plan(six_layers, "sleb", cal)
