"""Plans aimed at a speed-up or a size: deterministic given a seed and a timing table, the least-loss
candidate chosen, the target reached by the table's prediction, and bad targets refused before work."""

import pytest
import torch
import transformers as tf
from token_batches import token_batch

import surgery
from pruning.apply import apply_plan
from pruning.errors import PruningError
from pruning.evaluate import next_token_loss
from pruning.target_plan import component_params, parse_param_count, target_plan
from pruning.timing import check_timing_table, predicted_ms, timing_table

N_LAYERS = 6


@pytest.fixture(scope="module")
def six_layers():
    torch.manual_seed(1)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=97, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_hidden_layers=N_LAYERS, intermediate_size=48, max_position_embeddings=64))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1:
                p.add_(torch.randn_like(p) * 0.3)
    return surgery.load(model.eval())


@pytest.fixture(scope="module")
def cal(six_layers):
    return token_batch(six_layers, batch=8, seq=16, seed=2, positions=6, pad_last=False)


def table_for(loaded, block=10.0, mlp=6.0, other=4.0):
    table = timing_table(loaded, prompt_tokens=8, repeats=1)  # the real shape, then fixed numbers
    table.update(other_ms=other, layers=[{"block_ms": block, "mlp_ms": mlp} for _ in range(N_LAYERS)])
    return table


def test_a_measured_timing_table_covers_every_block(six_layers):
    table = check_timing_table(timing_table(six_layers, prompt_tokens=8, repeats=2), six_layers)
    assert len(table["layers"]) == N_LAYERS and table["repeats"] == 2
    assert all(0 <= l["mlp_ms"] <= l["block_ms"] for l in table["layers"])
    assert table["total_ms"] >= sum(l["block_ms"] for l in table["layers"])


def test_prediction_counts_kept_blocks_and_shrunk_mlps(six_layers):
    table = table_for(six_layers)  # dense: 4 + 6 * 10 = 64 ms
    assert predicted_ms(table) == pytest.approx(64.0)
    assert predicted_ms(table, dropped=[2, 3]) == pytest.approx(44.0)
    assert predicted_ms(table, mlp_kept={l: 0.5 for l in range(N_LAYERS)}) == pytest.approx(64.0 - 18.0)


def test_target_speedup_plans_are_deterministic_given_seed_and_table(six_layers, cal):
    table = table_for(six_layers)
    settings = dict(target_speedup=1.3, timing=table, criterion="banzhaf", budget=20, seed=3,
                    width_ratios=(0.0, 0.25, 0.5))
    first, second = (target_plan(six_layers, cal, **settings) for _ in range(2))
    assert first.to_json_dict() == second.to_json_dict()
    record = first.provenance[0]
    # 0, 0.25, 0.5 and the narrowest width-only cut: 64 / (64 - 36 r) >= 1.3 first at r = 0.45
    assert record["width_only_ratio"] == pytest.approx(0.45)
    assert sorted(c["width_ratio"] for c in record["candidates"]) == pytest.approx([0.0, 0.25, 0.45, 0.5])
    assert [c["layers_dropped"] for c in record["candidates"] if c["width_ratio"] >= 0.45] == [[], []]
    assert all(c["predicted"] >= 1.3 for c in record["candidates"])
    losses = [c["calibration_loss"] for c in record["candidates"]]
    assert record["chosen"]["calibration_loss"] == min(losses)
    assert 0 not in first.layers and first.layer_repair is not None or not first.layers  # repair keeps L0
    # The chosen candidate's loss is what the applied plan gives on the calibration text.
    applied = apply_plan(six_layers, first, calibration=cal).model
    assert next_token_loss(applied, [cal])["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_width_alone_can_reach_a_small_target(six_layers, cal):
    plan = target_plan(six_layers, cal, target_speedup=1.05, timing=table_for(six_layers), criterion="sleb",
                       width_ratios=(0.2,), repair=False)
    assert plan.layers == [] and plan.mlp_channels  # 20% of every MLP: 64 / (64 - 7.2) = 1.13x


def test_the_iso_cost_line_pairs_each_layer_count_with_the_narrowest_cut_that_reaches_the_target(six_layers, cal):
    table = table_for(six_layers)  # dense 64 ms; a block 10 ms, its MLP 6 ms
    plan = target_plan(six_layers, cal, target_speedup=1.3, timing=table, criterion="block_influence")
    record = plan.provenance[0]
    assert record["width_ratios"] == "iso"
    # 1.3x needs 64 / 1.3 = 49.2 ms: k layers dropped save 10 k, the cut r saves 6 r (6 - k) more.
    by_k = {len(c["layers_dropped"]): c for c in record["candidates"]}
    assert sorted(by_k) == [0, 1, 2]  # 2 layers reach it at full width
    assert by_k[0]["width_ratio"] == pytest.approx(0.42) and by_k[1]["width_ratio"] == pytest.approx(0.16)
    assert by_k[2]["width_ratio"] == 0.0
    for c in record["candidates"]:  # on the target, not past it by a whole layer or a grid step
        assert 1.3 <= c["predicted"] < 1.3 * 1.01 or c["width_ratio"] == 0.0
    assert record["chosen"]["calibration_loss"] == min(c["calibration_loss"] for c in record["candidates"])
    with pytest.raises(PruningError, match="'isometric'"):
        target_plan(six_layers, cal, target_speedup=1.3, timing=table, width_ratios="isometric")


def test_several_layer_criteria_compete_and_shared_plans_run_once(six_layers, cal):
    table = table_for(six_layers)
    settings = dict(target_speedup=1.3, timing=table, budget=20, seed=3, width_ratios=(0.0, 0.25))
    both = target_plan(six_layers, cal, criterion=["banzhaf", "block_influence"], **settings).provenance[0]
    alone = {name: target_plan(six_layers, cal, criterion=name, **settings).provenance[0]
             for name in ("banzhaf", "block_influence")}
    losses = sorted(c["calibration_loss"] for r in alone.values() for c in r["candidates"])
    keys = {(tuple(sorted(c["layers_dropped"])), c["width_ratio"]) for r in alone.values() for c in r["candidates"]}
    assert len(both["candidates"]) == len(keys)  # the width-only plan (and any shared one) measured once
    assert both["chosen"]["calibration_loss"] == pytest.approx(losses[0])
    assert {c["criterion"] for c in both["candidates"]} <= {"banzhaf", "block_influence"}
    assert [r["criterion"] for r in both["layer_choice"]] == ["banzhaf", "block_influence"]


@pytest.mark.parametrize("ratios", [(0.0, 0.3), "iso"])
def test_target_params_is_met(six_layers, cal, ratios):
    total = component_params(six_layers)["total"]
    goal = int(total * 0.85)
    plan = target_plan(six_layers, cal, target_params=goal, criterion="block_influence", width_ratios=ratios)
    pruned = apply_plan(six_layers, plan, calibration=cal).model
    assert sum(p.numel() for p in pruned.model.parameters()) <= goal


def test_bad_targets_are_refused_before_any_work(six_layers, cal):
    table = table_for(six_layers)
    # One block kept (10 ms, its MLP cut by the iso line's widest 75%: 5.5 ms) + 4 ms outside: 64 / 9.5
    with pytest.raises(PruningError, match=r"cannot reach 8.00x without removing every layer; the most is 6.74x"):
        target_plan(six_layers, cal, target_speedup=8.0, timing=table)
    with pytest.raises(PruningError, match="above 1"):
        target_plan(six_layers, cal, target_speedup=1.0, timing=table)
    with pytest.raises(PruningError, match=r"outside \[0, 1\)"):
        target_plan(six_layers, cal, target_speedup=1.2, timing=table, width_ratios=(0.0, 1.0))
    with pytest.raises(PruningError, match="one target"):
        target_plan(six_layers, cal, target_speedup=1.2, target_params="1M", timing=table)
    with pytest.raises(PruningError, match="head values"):
        target_plan(six_layers, cal, target_speedup=1.2, timing=table, head_fractions=(0.0, 0.1))
    with pytest.raises(PruningError, match="timing table has 2 layers"):
        target_plan(six_layers, cal, target_speedup=1.2, timing={**table, "layers": table["layers"][:2]})
    assert parse_param_count("100M") == 100_000_000 and parse_param_count("1.5b") == 1_500_000_000
    with pytest.raises(PruningError, match="not a positive count"):
        parse_param_count("lots")


def test_repair_with_too_little_calibration_text_is_refused_before_any_work(six_layers):
    short = token_batch(six_layers, batch=2, seq=8, seed=2, pad_last=False)  # 16 tokens < hidden 32
    with pytest.raises(PruningError, match="at least 32 calibration tokens"):
        target_plan(six_layers, short, target_speedup=1.2, timing=table_for(six_layers))
