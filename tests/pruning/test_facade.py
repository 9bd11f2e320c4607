"""The pruning facade: model first, values second, the same plans as the policies, a named result."""

import numpy as np
import pytest
from token_batches import token_batch

import pruning
from probes.model_game import model_digest
from probes.values import values_from_arrays
from pruning.policies import head_plan, layer_plan, sparsity_plan
from pruning.sparsity import input_norms, outlier_ratios


def _values(loaded, names, means):
    return values_from_arrays(names, means, fingerprint={"model": str(loaded.source),
                                                         "model_digest": model_digest(loaded)})


def test_facade_plans_equal_the_policies_with_the_model_first(tiny_llama):
    heads = _values(tiny_llama, tiny_llama.components.heads, np.linspace(-1, 1, len(tiny_llama.components.heads)))
    layers = _values(tiny_llama, tiny_llama.components.layers, [0.3, 0.1, 0.2])
    assert pruning.plan_heads(tiny_llama, heads, k=3) == head_plan(heads, tiny_llama, k=3)
    assert pruning.plan_layers(tiny_llama, layers, k=1) == layer_plan(layers, tiny_llama, k=1)
    assert pruning.plan_sparsity(tiny_llama, layers, target=0.5) == sparsity_plan(tiny_llama, 0.5, values=layers)
    uniform = pruning.plan_sparsity(tiny_llama, target=0.4, method="magnitude")
    assert set(uniform.sparsity.values()) == {0.4}


def test_owl_outliers_are_measured_on_the_calibration_tokens_when_not_given(tiny_llama):
    batch = token_batch(tiny_llama)
    owl = outlier_ratios(tiny_llama, input_norms(tiny_llama, [batch]))
    expected = sparsity_plan(tiny_llama, 0.5, allocation="owl", outliers=owl)
    assert pruning.plan_sparsity(tiny_llama, target=0.5, allocation="owl", calibration=batch) == expected
    with pytest.raises(pruning.PruningError, match="calibration="):
        pruning.plan_sparsity(tiny_llama, target=0.5, allocation="owl")


def test_apply_plan_returns_a_named_result_and_leaves_the_model_alone(tiny_llama):
    before = sum(p.numel() for p in tiny_llama.model.parameters())
    plan = pruning.plan_layers(tiny_llama, scores={0: 1.0, 1: 0.0, 2: 2.0}, k=1)
    applied = pruning.apply_plan(tiny_llama, plan)
    assert isinstance(applied, pruning.AppliedPlan)
    assert applied.report["layers"] == {"removed": [1]}
    assert applied.model.components.n_layers == 2
    assert sum(p.numel() for p in tiny_llama.model.parameters()) == before
