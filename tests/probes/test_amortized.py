"""Amortized values: features from one pass, the predictor, its files, and the dataset builder."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from token_batches import token_batch
from probes.amortized import (HEAD_FEATURES, ValueDataset, ValuePredictor, build_example, head_features,
                              leave_one_out)
from probes.amortized.features import HeadFeatures, gate_integrated_gradients
from probes.errors import ProbeError
from probes.metrics import LogProb
from surgery.engine import AblationEngine
from surgery.reference import record_sites

torch.set_num_threads(1)


def _per_head_gate_gradient(loaded, batch, name, mode):
    """d metric / d gate of one head alone, through a one-player engine (the per-head definition)."""
    engine = AblationEngine(loaded, [name], mode=mode)
    gate = torch.ones(1, 1, requires_grad=True)
    LogProb()(engine.logits(gate, batch), batch).sum().backward()
    return gate.grad.item()


def test_batched_attribution_equals_per_head_gates(tiny):
    batch = token_batch(tiny)
    feats = head_features(tiny, (batch, LogProb()))
    for mode, key in (("zero", "ap_zero"), ("mean", "ap_mean")):
        per_head = np.array([_per_head_gate_gradient(tiny, batch, name, mode) for name in feats.names])
        assert np.abs(per_head).max() > 0
        np.testing.assert_allclose(feats.raw[key], per_head, rtol=1e-4, atol=1e-7)


def test_batched_output_norms_equal_per_head_projection(tiny_llama):
    batch = token_batch(tiny_llama)
    feats = head_features(tiny_llama, (batch, LogProb()))
    layout = AblationEngine(tiny_llama, "heads").layout
    z = record_sites(tiny_llama, layout, batch, reduce_mean=False).heads  # [B, T, H, D] per layer
    real = batch.attention_mask.bool()
    for i, name in enumerate(feats.names):
        layer, head = int(name[1:].split(".")[0]), int(name.split("H")[1])
        proj = tiny_llama.adapter.blocks(tiny_llama.model)[layer].get_submodule(tiny_llama.adapter.attn_out_proj)
        only = torch.zeros_like(z[layer])
        only[:, :, head] = z[layer][:, :, head]
        with torch.no_grad():
            out = proj(only.flatten(2)) - proj(torch.zeros_like(only.flatten(2)))
        assert feats.raw["out_norm"][i] == pytest.approx(out.norm(dim=-1)[real].mean().item(), rel=1e-4)


def test_attention_statistics_are_patterns_and_implementation_is_restored(tiny_llama):
    before = tiny_llama.model.config._attn_implementation
    feats = head_features(tiny_llama, (token_batch(tiny_llama), LogProb()))
    assert tiny_llama.model.config._attn_implementation == before
    for column in ("entropy", "max_attention", "first_token_attention", "previous_token_attention", "self_attention"):
        values = feats.column(column)
        assert (values > 0).all() and (values <= 1 + 1e-9).all(), column
    assert np.isfinite(feats.matrix).all() and feats.matrix.shape == (18, len(HEAD_FEATURES))


def test_integrated_gradients_batched_equal_one_step_at_a_time(tiny_llama):
    batch = token_batch(tiny_llama, seed=3)
    engine = AblationEngine(tiny_llama, "heads")
    steps = 5
    per_step = []
    for k in range(steps):  # the definition: gradient of the metric at every gate = t_k, one setting at a time
        gates = torch.full((1, engine.n_players), (k + 0.5) / steps, requires_grad=True)
        LogProb()(engine.logits(gates, batch), batch).sum().backward()
        per_step.append(gates.grad[0].double().numpy())
    expected = np.mean(per_step, axis=0)
    # max_rows=4 with 3 sequences per batch: one step per chunk; 64: all five steps in one pass.
    for max_rows in (4, 64):
        got = gate_integrated_gradients(engine, batch, LogProb(), steps=steps, max_rows=max_rows)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    feats = head_features(tiny_llama, (batch, LogProb()), ig_steps=steps)
    np.testing.assert_allclose(feats.raw["ig"], expected, rtol=1e-4, atol=1e-7)
    assert feats.column("rank_ig").argmax() == expected.argmax()


def test_integrated_gradients_sum_to_the_full_minus_empty_value(tiny_llama):
    """Completeness (the efficiency of the values it stands in for): the midpoint rule converges as
    1 / steps^2 to v(all heads) - v(no heads)."""
    batch = token_batch(tiny_llama, seed=4)
    engine = AblationEngine(tiny_llama, "heads")
    ends = engine.evaluate(torch.stack([torch.ones(engine.n_players), torch.zeros(engine.n_players)]).bool(),
                           batch, LogProb()).numpy()
    gap = ends[0] - ends[1]
    errors = [abs(gate_integrated_gradients(engine, batch, LogProb(), steps=k).sum() - gap) for k in (2, 8, 32)]
    assert abs(gap) > 1e-3 and errors[2] < errors[0] and errors[2] < 0.02 * abs(gap), (gap, errors)


def test_features_on_a_bfloat16_model_match_float32(tiny_llama):
    """Float gates on a bfloat16 model stay in bfloat16 (they used to promote the stream and fail)."""
    import copy

    from surgery.loading import load

    half = load(copy.deepcopy(tiny_llama.model).to(torch.bfloat16), tokenizer=tiny_llama.tokenizer)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    batch = token_batch(tiny_llama, seed=5)
    feats = head_features(half, (batch, LogProb()), ig_steps=4)
    reference = head_features(tiny_llama, (batch, LogProb()), ig_steps=4)
    assert np.isfinite(feats.matrix).all()
    assert spearmanr(feats.raw["ig"], reference.raw["ig"])[0] > 0.9
    assert spearmanr(feats.raw["ap_zero"], reference.raw["ap_zero"])[0] > 0.9


def test_features_saved_by_an_older_version_are_refused_by_name(tiny_llama):
    data = head_features(tiny_llama, (token_batch(tiny_llama), LogProb()), ig_steps=2).as_dict()
    old = {**data, "feature_names": data["feature_names"][:-3], "raw": {k: v for k, v in data["raw"].items() if k != "ig"}}
    with pytest.raises(ProbeError, match="recompute them with head_features"):
        HeadFeatures.from_dict(old)
    assert HeadFeatures.from_dict(data).feature_names == HEAD_FEATURES


def test_ig_steps_below_one_are_refused(tiny_llama):
    with pytest.raises(ProbeError, match="ig_steps must be >= 1"):
        head_features(tiny_llama, (token_batch(tiny_llama), LogProb()), ig_steps=0)


def _features(loaded, n, seed0=0):
    return [head_features(loaded, (token_batch(loaded, seed=seed0 + s), LogProb())) for s in range(n)]


def _planted(feats):
    """A nonlinear relation of the features the predictor must recover on new batches."""
    ap = feats.column("ap_zero")
    return np.tanh(ap) * (1 + 2 * feats.column("layer_position")) + 3 * feats.column("previous_token_attention")


def test_training_learns_a_planted_relation(tiny_llama):
    feats = _features(tiny_llama, 10)
    train, test = feats[:7], feats[7:]
    # A noiseless relation needs none of the default regularisation (which is sized for noisy values).
    predictor = ValuePredictor(seed=0, epochs=400, weight_decay=1e-3).fit_heads(train, [_planted(f) for f in train])
    scores = [spearmanr(predictor.predict_array(f), _planted(f))[0] for f in test]
    assert min(scores) > 0.9, scores
    # Control: the same predictor trained on targets shuffled within each batch learns nothing.
    rng = np.random.default_rng(0)
    shuffled = ValuePredictor(seed=0, epochs=400, weight_decay=1e-3).fit_heads(train, [rng.permutation(_planted(f)) for f in train])
    assert np.mean([spearmanr(shuffled.predict_array(f), _planted(f))[0] for f in test]) < 0.6


def test_save_load_round_trip_gives_identical_predictions(tiny_llama, tmp_path):
    feats = _features(tiny_llama, 4, seed0=20)
    layer_targets = [f.layer_attribution() ** 2 for f in feats]
    predictor = ValuePredictor(hidden=(8,), epochs=50, seed=3).fit_heads(feats, [_planted(f) for f in feats])
    predictor.fit_layers(feats, layer_targets)
    predictor.save(tmp_path / "predictor")
    assert sorted(p.name for p in (tmp_path / "predictor").iterdir()) == ["config.json", "weights.safetensors"]
    again = ValuePredictor.load(tmp_path / "predictor")
    for f in feats:
        np.testing.assert_array_equal(again.predict_array(f), predictor.predict_array(f))
        np.testing.assert_array_equal(again.predict_layers(f).means, predictor.predict_layers(f).means)
    hv = again.predict(feats[0])
    assert hv.matrix.shape == (3, 6) and hv.estimator == "amortized"


def test_a_predictor_of_an_older_version_is_refused_with_the_fix(tiny_llama, tmp_path):
    import json

    feats = _features(tiny_llama, 2, seed0=30)
    directory = ValuePredictor(hidden=(4,), epochs=5).fit_heads(feats, [_planted(f) for f in feats]).save(tmp_path / "p")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "version": 1}))
    with pytest.raises(ProbeError, match="version=1.*retrain it"):
        ValuePredictor.load(directory)


def test_training_is_deterministic_given_the_seed(tiny_llama):
    feats = _features(tiny_llama, 3, seed0=40)
    targets = [_planted(f) for f in feats]
    fit = lambda seed: ValuePredictor(hidden=(8,), epochs=30, seed=seed).fit_heads(feats, targets).predict_array(feats[0])
    np.testing.assert_array_equal(fit(1), fit(1))
    assert not np.array_equal(fit(1), fit(2))


def test_layer_values_are_head_sums_without_a_layer_model(tiny_llama):
    feats = _features(tiny_llama, 2, seed0=60)
    predictor = ValuePredictor(hidden=(8,), epochs=20).fit_heads(feats, [_planted(f) for f in feats])
    heads = predictor.predict_array(feats[0])
    layers = predictor.predict_layers(feats[0])
    assert layers.names == ["L0.attn", "L1.attn", "L2.attn"]
    np.testing.assert_allclose(layers.means, [heads[feats[0].layers == l].sum() for l in range(3)])


def test_dataset_streams_to_the_store_and_resumes(tiny_llama, tmp_path):
    task = (token_batch(tiny_llama, seed=7), LogProb())
    settings = dict(budget=40, layer_budget=6, seed=0, store_dir=tmp_path / "stores")
    first = build_example(tiny_llama, "random", task, **settings)
    assert first.info["heads"]["fresh_evaluations"] > 0 and first.layer_values.shape == (3,)
    again = build_example(tiny_llama, "random", task, **settings)
    assert again.info["heads"]["fresh_evaluations"] == 0 and again.info["layers"]["fresh_evaluations"] == 0
    np.testing.assert_array_equal(again.head_values, first.head_values)
    assert again.info["heads"]["seconds_full_estimate"] == pytest.approx(first.info["heads"]["seconds_full_estimate"])
    ValueDataset([first]).save(tmp_path / "data.json")
    loaded = ValueDataset.load(tmp_path / "data.json").examples[0]
    np.testing.assert_array_equal(loaded.head_values, first.head_values)
    np.testing.assert_array_equal(loaded.features.matrix, first.features.matrix)


def test_leave_one_out_is_full_minus_one_head_ablated(tiny_llama):
    batch = token_batch(tiny_llama, seed=9)
    loo, _ = leave_one_out(tiny_llama, "random", (batch, LogProb()))
    engine = AblationEngine(tiny_llama, "heads")
    masks = torch.ones(2, engine.n_players, dtype=torch.bool)
    masks[1, 4] = False
    full, without = engine.evaluate(masks, batch, LogProb()).tolist()
    assert loo[4] == pytest.approx(full - without, abs=1e-6)


def test_smollm_attribution_ranks_real_ablation_effects(smollm):
    """Integration: on the real model, heads with the largest attribution change the metric more,
    when ablated alone, than the heads with the smallest (attribution is a first-order estimate)."""
    from probes.tasks import get_task

    tb = get_task("induction", n=2, length=6).batch(smollm.tokenizer, seed=0)
    feats = head_features(smollm, tb)
    assert feats.matrix.shape == (270, len(HEAD_FEATURES)) and np.isfinite(feats.matrix).all()
    order = np.argsort(np.abs(feats.raw["ap_zero"]))
    chosen = np.concatenate([order[-5:], order[:5]])
    engine = AblationEngine(smollm, "heads")
    masks = torch.ones(len(chosen) + 1, engine.n_players, dtype=torch.bool)
    masks[torch.arange(1, len(chosen) + 1), torch.as_tensor(chosen)] = False
    values = engine.evaluate(masks, tb.tokens, tb.metric()).numpy()
    effect = np.abs(values[0] - values[1:])
    assert effect[:5].mean() > 3 * effect[5:].mean(), effect
