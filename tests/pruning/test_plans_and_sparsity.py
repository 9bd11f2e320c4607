"""Plans, policies and within-layer sparsity on tiny models."""

import json

import numpy as np
import pytest
import torch
from token_batches import token_batch
from tiny_models import build

import surgery
from probes.model_game import model_digest
from probes.values import values_from_arrays
from pruning.errors import PruningError
from pruning.plan import PruningPlan, model_identity
from pruning.policies import find_cornerstones, head_plan, layer_plan, sparsity_plan
from pruning.sparsity import allocate_ratios, block_linears, input_norms, outlier_ratios, sparsify


def head_values(loaded, means, stderrs=None):
    """Head values that carry this model's digest, as values computed on it do."""
    return values_from_arrays(loaded.components.heads, means, stderrs, fingerprint=of_model(loaded))


def layer_values(loaded, means):
    return values_from_arrays(loaded.components.layers, means, fingerprint=of_model(loaded))


def of_model(loaded):
    return {"model": str(loaded.source), "model_digest": model_digest(loaded)}


def test_harmful_heads_are_those_confidently_below_zero(tiny_llama):
    n = len(tiny_llama.components.heads)
    means = np.full(n, 0.5)
    errs = np.full(n, 0.01)
    means[[1, 7, 12]] = [-0.3, -0.05, -0.001]  # the last one is not confidently harmful
    plan = head_plan(head_values(tiny_llama, means, errs), tiny_llama, harmful_confidence=0.95)
    assert plan.heads == ["L0.H1", "L1.H1"]


def test_lowest_k_heads_respect_the_per_layer_minimum(tiny_llama):
    means = np.arange(18, dtype=float)  # layer 0 holds the 6 lowest heads
    plan = head_plan(head_values(tiny_llama, means), tiny_llama, k=7, min_per_layer=2)
    per_layer = [sum(h.startswith(f"L{l}.") for h in plan.heads) for l in range(3)]
    assert per_layer == [4, 3, 0]


def test_plan_round_trips_and_refuses_another_model(tiny_llama, tmp_path):
    plan = head_plan(head_values(tiny_llama, np.arange(18.0)), tiny_llama, fraction=0.2)
    plan.save(tmp_path / "plan.json")
    again = PruningPlan.load(tmp_path / "plan.json")
    assert again == plan and again.provenance[0]["policy"] == "head_plan"
    again.check_model(tiny_llama)
    other = surgery.load(build("llama", seed=5))
    with pytest.raises(PruningError, match="made for model"):
        again.check_model(other)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "something-else"}', "not a pruning plan"),
    ('{"format": "model-surgery.pruning-plan", "version": 9, "model": {}}', "version 9"),
    ('{"format": "model-surgery.pruning-plan", "version": 1, "model": {"n_layers": 3, "n_heads": [6,6,6]},'
     ' "sparsity": {"0": 1.5}}', r"outside \[0, 1\]"),
    ('{"format": "model-surgery.pruning-plan", "version": 1, "model": {"n_layers": 3, "n_heads": [6,6,6]},'
     ' "heads": ["L0.H9"]}', "does not exist"),
    ('{"format": "model-surgery.pruning-plan", "version": 1, "model": {"n_layers": 3, "n_heads": [6,6,6]},'
     ' "layers": [0, 1, 2]}', "removes all 3 layers"),
    ('{"format": "model-surgery.pruning-plan", "version": 1, "model": {"n_layers": 1, "n_heads": [2]},'
     ' "heads": ["L0.H0", "L0.H1"]}', "every attention head"),
])
def test_malformed_plans_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PruningError, match=message):
        PruningPlan.load(path)


def test_layer_plan_never_drops_a_cornerstone(tiny_llama):
    layer_vals = layer_values(tiny_llama, [0.1, 5.0, 0.2])
    plan = layer_plan(layer_vals, tiny_llama, k=1, cornerstones=[0])
    assert plan.layers == [2] and plan.cornerstones == [0]
    with pytest.raises(PruningError, match="leaves none"):
        layer_plan(layer_vals, tiny_llama, k=3)
    with pytest.raises(PruningError, match=r"outside \[0, 1\]"):
        layer_plan(layer_vals, tiny_llama, fraction=1.5)


def test_cornerstone_detection_reports_single_removal_damage(tiny_llama):
    batch = token_batch(tiny_llama)
    metric = lambda logits, b: logits.log_softmax(-1).gather(
        -1, b.targets.expand(logits.shape[0], -1, -1).unsqueeze(-1)).mean(dim=(1, 2, 3))
    report = find_cornerstones(tiny_llama, batch, metric, collapse=0.0)
    assert len(report["single_removal_drop"]) == 3
    assert report["cornerstones"] == [l for l, d in enumerate(report["single_removal_drop"]) if d > 0]


def test_ratio_allocation_keeps_the_mean_and_orders_by_importance():
    ratios = allocate_ratios(0.5, {0: 3.0, 1: 1.0, 2: 2.0, 3: 0.0}, lam=0.08)
    assert abs(np.mean(list(ratios.values())) - 0.5) < 1e-12
    assert ratios[0] < ratios[2] < ratios[1] < ratios[3]
    assert max(ratios.values()) - min(ratios.values()) == pytest.approx(0.16)
    with pytest.raises(PruningError, match=r"outside \[0, 1\]"):
        allocate_ratios(1.2, {0: 1.0})


def test_magnitude_sparsity_hits_the_ratio_and_drops_the_smallest_weights(tiny):
    before = {n: m.weight.detach().clone() for n, m in block_linears(tiny, 1).items()}
    import copy
    loaded = surgery.load(copy.deepcopy(tiny.model))
    report = sparsify(loaded, {1: 0.5}, method="magnitude")
    assert abs(report["per_layer"][1] - 0.5) < 0.02
    for name, module in block_linears(loaded, 1).items():
        w, old = module.weight.detach(), before[name]
        w_oi, old_oi = (w.t(), old.t()) if type(module).__name__ == "Conv1D" else (w, old)
        kept_min = old_oi.abs().masked_fill(w_oi == 0, float("inf")).min(dim=1).values
        dropped_max = old_oi.abs().masked_fill(w_oi != 0, -1).max(dim=1).values
        assert (dropped_max <= kept_min).all()


def test_wanda_scores_weight_times_input_norm_and_two_four_pattern(tiny_llama):
    import copy
    loaded = surgery.load(copy.deepcopy(tiny_llama.model))
    batches = [token_batch(loaded, seed=s) for s in range(2)]
    norms = input_norms(loaded, batches)
    name = "L0.self_attn.q_proj"
    module = block_linears(loaded, 0)[name]
    score = module.weight.detach().abs() * norms[name]
    expected_pruned = torch.zeros_like(score, dtype=torch.bool).scatter_(
        1, torch.topk(score, score.shape[1] // 4, dim=1, largest=False).indices, True)
    sparsify(loaded, {0: 0.25}, method="wanda", norms=norms)
    assert torch.equal(module.weight.detach() == 0, expected_pruned)
    sparsify(loaded, {1: 0.5}, method="wanda", norms=norms, n_m=(2, 4))
    w = block_linears(loaded, 1)["L1.mlp.up_proj"].weight.detach()
    assert ((w.view(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all()
    owl = outlier_ratios(loaded, norms)
    assert set(owl) == {0, 1, 2} and all(0 <= v < 1 for v in owl.values())


def test_sparsity_plans(tiny_llama):
    layer_vals = layer_values(tiny_llama, [1.0, 0.0, 0.5])
    shap = sparsity_plan(tiny_llama, 0.5, allocation="shapley", values=layer_vals)
    assert shap.sparsity[0] < shap.sparsity[2] < shap.sparsity[1]
    assert sparsity_plan(tiny_llama, 0.7, allocation="uniform").sparsity == {0: 0.7, 1: 0.7, 2: 0.7}
    with pytest.raises(PruningError, match=r"outside \[0, 1\]"):
        sparsity_plan(tiny_llama, -0.1, allocation="uniform")
    wrong = values_from_arrays(tiny_llama.components.heads, np.zeros(18))
    with pytest.raises(PruningError, match="not layers values"):
        sparsity_plan(tiny_llama, 0.5, allocation="shapley", values=wrong)


# ------------------------------------------------------------------ values that cannot be verified
@pytest.mark.parametrize("fingerprint", [{}, {"model": "somewhere"}, {"model_digest": ""}])
def test_values_without_a_model_digest_give_no_plan_unless_overridden(tiny_llama, fingerprint):
    heads = values_from_arrays(tiny_llama.components.heads, np.arange(18.0), fingerprint=fingerprint)
    layers = values_from_arrays(tiny_llama.components.layers, [1.0, 0.0, 0.5], fingerprint=fingerprint)
    for make in (lambda **kw: head_plan(heads, tiny_llama, k=2, **kw),
                 lambda **kw: layer_plan(layers, tiny_llama, k=1, **kw),
                 lambda **kw: sparsity_plan(tiny_llama, 0.5, allocation="shapley", values=layers, **kw)):
        with pytest.raises(PruningError, match="no model digest.*--allow-unverified-values"):
            make()
        plan = make(allow_unverified=True)
        record = plan.to_json_dict()["provenance"][0]
        assert record["allow_unverified_values"] is True and record["values"]["model_check"]["verified"] is False


def test_values_of_another_model_are_refused_through_the_api_even_with_the_override(tiny_llama):
    other = surgery.load(build("llama", seed=5))
    theirs = head_values(other, np.arange(18.0))  # same grid, other weights
    for allow in (False, True):
        with pytest.raises(PruningError, match="another model"):
            head_plan(theirs, tiny_llama, k=2, allow_unverified=allow)


def test_values_of_a_wrong_grid_are_refused_even_with_the_override(tiny_llama):
    short = values_from_arrays(tiny_llama.components.heads[:12], np.arange(12.0))
    with pytest.raises(PruningError, match="not heads values of this model"):
        head_plan(short, tiny_llama, k=2, allow_unverified=True)
    from probes.head_values import HeadValues
    regridded = HeadValues.from_values(head_values(tiny_llama, np.arange(18.0)), [4, 8, 6])
    with pytest.raises(PruningError, match="heads per layer"):
        head_plan(regridded, tiny_llama, k=2)


def test_verified_values_record_their_check(tiny_llama):
    plan = head_plan(head_values(tiny_llama, np.arange(18.0)), tiny_llama, k=2)
    record = plan.provenance[0]
    assert record["values"]["model_check"] == {"verified": True, "model_digest": model_digest(tiny_llama)}
    assert "allow_unverified_values" not in record


# ------------------------------------------------------------------ N:M sparsity
def test_n_m_fixes_the_sparsity_so_a_conflicting_target_is_refused(tiny_llama):
    with pytest.raises(PruningError, match="target sparsity 0.9 conflicts with 2:4.*0.5"):
        sparsity_plan(tiny_llama, 0.9, allocation="uniform", n_m=(2, 4))
    with pytest.raises(PruningError, match="allocation 'uniform'"):
        sparsity_plan(tiny_llama, 0.5, allocation="shapley", values=layer_values(tiny_llama, [1, 0, 0.5]),
                      n_m=(2, 4))
    plan = sparsity_plan(tiny_llama, 0.5, allocation="uniform", n_m=(2, 4))
    assert plan.n_m == [2, 4] and set(plan.sparsity.values()) == {0.5}
    assert sparsity_plan(tiny_llama, 0.75, allocation="uniform", n_m=(1, 4)).sparsity[0] == 0.75


@pytest.mark.parametrize("n_m", [(4, 2), (0, 0), (0, 4), (4, 4), (-1, 4)])
def test_impossible_n_m_patterns_are_refused_when_the_plan_is_made_or_read(tiny_llama, tmp_path, n_m):
    with pytest.raises(PruningError, match=r"1 <= N < M"):
        sparsity_plan(tiny_llama, 0.5, allocation="uniform", n_m=n_m)
    good = sparsity_plan(tiny_llama, 0.5, allocation="uniform", n_m=(2, 4)).to_json_dict()
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**good, "n_m": list(n_m)}))
    with pytest.raises(PruningError, match=r"1 <= N < M"):
        PruningPlan.load(path)


def test_n_m_whose_m_does_not_divide_the_widths_is_refused_at_plan_time(tiny_llama):
    with pytest.raises(PruningError, match="multiple of 5"):
        sparsity_plan(tiny_llama, 0.8, allocation="uniform", n_m=(1, 5))


# ------------------------------------------------------------------ no interval, no claim
def test_sliding_window_values_claim_no_harmful_heads(tiny_llama):
    from probes.head_values import HeadValues
    means = np.full(18, 0.5)
    means[[1, 7]] = -0.3
    window = HeadValues.from_values(values_from_arrays(tiny_llama.components.heads, means, np.zeros(18),
                                                       estimator="sliding_window", fingerprint=of_model(tiny_llama)))
    assert window.harmful(0.95) == []
    with pytest.raises(PruningError, match="no confidence intervals"):
        head_plan(window, tiny_llama, harmful_confidence=0.95)
    exact = HeadValues.from_values(values_from_arrays(tiny_llama.components.heads, means, np.zeros(18),
                                                      estimator="exact", fingerprint=of_model(tiny_llama)))
    assert [h.name for h in exact.harmful(0.95)] == ["L0.H1", "L1.H1"]
    assert head_plan(exact, tiny_llama, harmful_confidence=0.95).heads == ["L0.H1", "L1.H1"]
