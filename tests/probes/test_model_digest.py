"""The model digest identifies weights including their order, and old-scheme digests are refused by name."""

import copy

import numpy as np
import pytest
import torch
from tiny_models import build

import surgery
from probes.errors import FingerprintMismatchError
from probes.head_values import HeadValues
from probes.model_game import is_legacy_digest, model_digest
from probes.values import values_from_arrays
from pruning.errors import PruningError
from pruning.plan import PruningPlan
from pruning.policies import head_plan

LEGACY = "0123456789abcdef"  # what scheme 1 wrote: 16 hex digits of sums


def swap_heads(model, layer: int, a: int, b: int, head_dim: int = 8):
    """Swap query heads a and b of one layer: their q_proj rows and o_proj columns (same function, other order)."""
    attn = model.model.layers[layer].self_attn
    rows = lambda h: slice(h * head_dim, (h + 1) * head_dim)
    with torch.no_grad():
        q, o = attn.q_proj.weight, attn.o_proj.weight
        q[rows(a)], q[rows(b)] = q[rows(b)].clone(), q[rows(a)].clone()
        o[:, rows(a)], o[:, rows(b)] = o[:, rows(b)].clone(), o[:, rows(a)].clone()


def test_permuting_two_heads_inside_a_layer_changes_the_digest():
    original = build("llama")
    permuted = copy.deepcopy(original)
    # Heads 0 and 1 share key/value head 0 (6 query heads over 2 kv heads), so the swap is a pure relabelling.
    swap_heads(permuted, layer=1, a=0, b=1)
    assert model_digest(surgery.load(original)) != model_digest(surgery.load(permuted))
    # The same weights give the same digest (another copy, another load).
    assert model_digest(surgery.load(original)) == model_digest(surgery.load(copy.deepcopy(original)))


def test_any_single_weight_change_changes_the_digest():
    original = build("gpt2")
    changed = copy.deepcopy(original)
    with torch.no_grad():
        changed.transformer.h[2].mlp.c_fc.weight[5, 7] += 1e-3
    assert model_digest(surgery.load(original)) != model_digest(surgery.load(changed))


def test_digest_names_its_scheme_and_old_digests_are_recognised():
    digest = model_digest(surgery.load(build("llama")))
    assert digest.startswith("w2:") and not is_legacy_digest(digest)
    assert is_legacy_digest(LEGACY)


def test_values_with_an_old_scheme_digest_are_refused_with_the_fix_named(tiny_llama, tmp_path):
    values = HeadValues.from_values(values_from_arrays(
        tiny_llama.components.heads, np.arange(18.0), fingerprint={"model": "m", "model_digest": LEGACY}))
    with pytest.raises(FingerprintMismatchError, match="older scheme.*recompute"):
        values.check_model(tiny_llama)
    with pytest.raises(PruningError, match="older scheme.*recompute"):
        head_plan(values, tiny_llama, k=2)
    plan = head_plan(values, tiny_llama, k=2, allow_unverified=True)
    assert plan.provenance[0]["allow_unverified_values"] is True


def test_a_plan_with_an_old_scheme_digest_is_refused_with_the_fix_named(tiny_llama):
    values = values_from_arrays(tiny_llama.components.heads, np.arange(18.0),
                                fingerprint={"model_digest": model_digest(tiny_llama)})
    plan = head_plan(values, tiny_llama, k=2)
    old = PruningPlan.from_json_dict({**plan.to_json_dict(), "model": {**plan.model, "digest": LEGACY}})
    with pytest.raises(PruningError, match="older scheme.*make the plan again"):
        old.check_model(tiny_llama)
