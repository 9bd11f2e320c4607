"""Plans for MLP width and repaired layer removal, exported: the export equals the in-memory model
(masked channels held at their mean; the repaired model), plan and manifest say what was done, and
bad ratios / plans are refused before any work."""

import json

import numpy as np
import pytest
import torch
import transformers as tf
from token_batches import token_batch

import surgery
from pruning.apply import with_layer_repair
from pruning.errors import PruningError
from pruning.export import export_pruned
from pruning.plan import PruningPlan, model_identity
from pruning.policies import layer_plan
from pruning.width import channel_scores, check_width_ratio, width_plan
from surgery.errors import SurgeryError
from surgery.layer_repair import repair_layers
from surgery.loading import LoadedModel
from surgery.mlp_width import mask_mlp_channels, mlp_widths


def cal(tiny):
    return token_batch(tiny, batch=32, seq=24, seed=7, positions=1)


def logits(model, batch):
    model = model.model if isinstance(model, LoadedModel) else model
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def reload(tiny, path, remote):
    auto = tf.AutoModelForMaskedLM if tiny.adapter.family == "bert" else tf.AutoModelForCausalLM
    return auto.from_pretrained(path, trust_remote_code=remote).eval()


@pytest.mark.parametrize("per_layer", [False, True])
def test_width_export_equals_masked_model_with_mean_compensation(tiny, per_layer, tmp_path):
    calibration = cal(tiny)
    layer_values = np.array([3.0, 1.0, 2.0]) if per_layer else None
    plan = width_plan(tiny, 0.25, calibration=calibration, layer_values=layer_values, lam=0.1)
    counts = [len(plan.mlp_channels.get(l, [])) for l in range(3)]
    assert (len(set(counts)) > 1) is per_layer and counts[1] >= counts[0]  # valuable layer 0 loses fewest
    manifest = export_pruned(tiny, plan, tmp_path / "out", calibration=calibration)
    assert manifest["remote_code"] is per_layer and manifest["file_shrinks"]
    assert manifest["mlp_width"]["mode"] == "mean_compensated"
    assert manifest["mlp_width"]["calibration"]["tokens"] == int(calibration.attention_mask.sum())
    saved = PruningPlan.from_json_dict(json.loads((tmp_path / "out" / "manifest.json").read_text())["plan"])
    assert saved.mlp_channels == plan.mlp_channels and saved.mlp_removal == "mean_compensated"
    masked = mask_mlp_channels(tiny, plan.mlp_channels, compensate_with=calibration)
    batch = token_batch(tiny)
    torch.testing.assert_close(logits(reload(tiny, tmp_path / "out", per_layer), batch), logits(masked, batch),
                               rtol=0, atol=1e-5)
    assert mlp_widths(surgery.load(str(tmp_path / "out"))) == [w - c for w, c in zip(mlp_widths(tiny), counts)]


def test_repaired_layer_export_reloads_with_stock_transformers_and_equals_the_in_memory_repair(tiny, tmp_path):
    calibration = cal(tiny)
    plan = with_layer_repair(layer_plan(None, tiny, k=1, scores={0: 9.0, 1: 0.0, 2: 5.0}), ridge=1e-3)
    manifest = export_pruned(tiny, plan, tmp_path / "out", calibration=calibration)
    assert manifest["remote_code"] is False
    assert manifest["layer_repair"]["method"] == "replaceme_linear"
    assert manifest["layer_repair"]["calibration"]["tokens"] == int(calibration.attention_mask.sum())
    assert manifest["plan"]["layer_repair"] == {"method": "replaceme_linear", "ridge": 1e-3}
    in_memory = repair_layers(tiny, [1], calibration, ridge=1e-3)
    batch = token_batch(tiny)
    torch.testing.assert_close(logits(reload(tiny, tmp_path / "out", False), batch), logits(in_memory, batch),
                               rtol=0, atol=1e-5)


def test_constant_channels_score_zero_fluctuation_and_go_first_without_changing_anything():
    from tiny_models import build
    loaded = surgery.load(build("gpt2"))
    with torch.no_grad():  # channels 3 and 7 of layer 1 ignore their input: a constant activation
        fc = loaded.model.transformer.h[1].mlp.c_fc
        fc.weight[:, [3, 7]] = 0
        fc.bias[[3, 7]] = 1.0
    calibration = cal(loaded)
    scores = channel_scores(loaded, calibration, "fluctuation")
    assert sorted(torch.argsort(scores[1])[:2].tolist()) == [3, 7] and float(scores[1][[3, 7]].max()) < 1e-12
    plan = width_plan(loaded, 2 / 128, scores={l: s for l, s in scores.items()}, method="given")
    assert plan.provenance[0]["settings"]["score"] == "given"
    assert plan.mlp_channels[1] == [3, 7]
    from pruning.apply import apply_plan
    pruned = apply_plan(loaded, PruningPlan(plan.model, mlp_channels={1: [3, 7]}), calibration=calibration).model
    batch = token_batch(loaded)
    torch.testing.assert_close(logits(pruned, batch), logits(loaded, batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("ratio", [1.0, -0.1, float("nan"), 2, "abc"])
def test_width_ratio_outside_zero_one_is_refused(tiny_llama, ratio):
    with pytest.raises(PruningError, match=r"outside \[0, 1\)|not a number"):
        width_plan(tiny_llama, ratio, calibration=cal(tiny_llama))
    with pytest.raises(PruningError):
        check_width_ratio(ratio)


def test_bad_width_and_repair_plans_are_refused(tiny_llama, tmp_path):
    model = model_identity(tiny_llama)
    with pytest.raises(PruningError, match="drops no layers"):
        PruningPlan(model, layer_repair={"method": "replaceme_linear", "ridge": 1e-3})
    with pytest.raises(PruningError, match="layer_repair must be"):
        PruningPlan(model, layers=[1], layer_repair={"method": "magic"})
    with pytest.raises(PruningError, match="out of range"):
        PruningPlan(model, mlp_channels={9: [0]})
    with pytest.raises(PruningError, match="mlp_removal"):
        PruningPlan(model, mlp_channels={0: [0]}, mlp_removal="mean")
    with pytest.raises(PruningError, match="needs calibration tokens"):
        export_pruned(tiny_llama, PruningPlan(model, mlp_channels={0: [0]}), tmp_path / "a")
    short = token_batch(tiny_llama, batch=2, seq=10, pad_last=False)
    with pytest.raises(SurgeryError, match="at least 48 calibration tokens"):
        export_pruned(tiny_llama, with_layer_repair(PruningPlan(model, layers=[1])), tmp_path / "b", calibration=short)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
