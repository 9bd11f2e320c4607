"""Head and MLP ablation through an nnsight-wrapped HF model.

Inside one `trace`, the input of each attention output projection (o_proj / c_proj: the concatenated
per-head outputs, TransformerLens' hook_z) is viewed as [batch, pos, n_heads, head_dim], the
ablated heads are set to zero or to their replacement, and the tensor is written back. MLP outputs
are replaced by zeros where mlp_keep is False.

Module paths come from the model's architecture adapter (surgery/adapters), as for the native
engine: every registered family works here too.
"""

from __future__ import annotations

import torch

from surgery.backends._masks import (
    check_head_keep,
    check_inputs,
    check_mlp_keep,
    check_replacement,
    default_position_ids,
    layer_replacement,
)
from surgery.adapters import ArchitectureAdapter, adapter_for
from surgery.errors import SurgeryError, UnsupportedArchitectureError


def nnsight_from_hf(model):
    """Wrap an instantiated HF model for tracing, with no hub access and no tokenizer.

    `nnsight.NNsight(model)` wraps any nn.Module and leaves the model unchanged. (nnsight's
    LanguageModel/TransformersModel also accept an in-memory model but build a transformers
    pipeline that must be handed a tokenizer object, or it tries to load one by the model's name.)
    """
    from nnsight import NNsight

    return NNsight(model)


def _hf_module(nn_model):
    module = getattr(nn_model, "_module", None)
    if module is None or not isinstance(module, torch.nn.Module):
        raise UnsupportedArchitectureError(
            f"expected an nnsight model (nnsight.NNsight / LanguageModel wrapping a transformers model), "
            f"got {type(nn_model).__name__}; wrap it with surgery.backends.nnsight_backend.nnsight_from_hf(model)")
    return module


def nnsight_dims(nn_model) -> tuple[ArchitectureAdapter, int, int, int]:
    """(architecture adapter, n_layers, n_query_heads, head_dim) of the wrapped model."""
    module = _hf_module(nn_model)
    adapter = adapter_for(module)
    config = module.config
    n_layers = config.num_hidden_layers
    n_heads = config.num_attention_heads
    return adapter, int(n_layers), int(n_heads), adapter.head_dim(config)


def _get(envoy, dotted: str):
    for part in dotted.split("."):
        envoy = getattr(envoy, part)
    return envoy


def nnsight_masked_logits(nn_model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          head_keep: torch.Tensor, replacement: torch.Tensor | None = None,
                          mlp_keep: torch.Tensor | None = None,
                          position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, T, vocab] with the heads where head_keep is False ablated (same contract as
    surgery.backends.transformer_lens_bridge.bridge_masked_logits).

    head_keep:   bool [n_layers, n_query_heads], True = keep (GQA: query heads, not kv heads).
    replacement: None (zero ablation) or [n_layers, n_heads, head_dim] for mean ablation.
    mlp_keep:    None or bool [n_layers]; False zeroes that layer's MLP output.
    position_ids: default 0..T-1 per row, as a plain HF forward uses (TransformersModel would
                 otherwise derive positions from a left-padded mask).
    """
    adapter, n_layers, n_heads, head_dim = nnsight_dims(nn_model)
    check_inputs(input_ids, attention_mask)
    head_keep = check_head_keep(head_keep, n_layers, n_heads)
    replacement = check_replacement(replacement, n_layers, n_heads, head_dim)
    mlp_keep = check_mlp_keep(mlp_keep, n_layers)

    # Decide outside the trace which modules are touched; only those are intervened on, so an
    # all-True mask runs the model untouched. Envoys are visited in forward order (layer by layer,
    # attention before MLP), which nnsight requires.
    layers = _get(nn_model, adapter.layers)
    plan = []
    for layer in range(n_layers):
        block = layers[layer]
        heads = None if bool(head_keep[layer].all()) else _get(block, adapter.attn_out_proj)
        mlp = None if mlp_keep is None or bool(mlp_keep[layer]) else _get(block, adapter.mlp_out)
        repl_row = None if replacement is None else replacement[layer]
        plan.append((heads, head_keep[layer], repl_row, mlp))

    kwargs = {"input_ids": input_ids, "position_ids": default_position_ids(input_ids, position_ids)}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    with torch.no_grad():
        with nn_model.trace(**kwargs):
            for heads, keep_row, repl_row, mlp in plan:
                if heads is not None:
                    x = heads.input
                    if x.shape[-1] != n_heads * head_dim:
                        raise SurgeryError(
                            f"output-projection input has width {x.shape[-1]}, expected n_heads*head_dim = "
                            f"{n_heads}*{head_dim}; the {adapter.family} adapter's module paths for this model are wrong")
                    z = x.reshape(*x.shape[:-1], n_heads, head_dim)
                    heads.input = layer_replacement(z, keep_row, repl_row).reshape(x.shape)
                if mlp is not None:
                    mlp.output = torch.zeros_like(mlp.output)
            logits = nn_model.output.logits.save()
    return _unwrap(logits)


def _unwrap(value):
    # nnsight >= 0.5 returns the saved tensor itself; older versions return a proxy with .value.
    return getattr(value, "value", value) if not isinstance(value, torch.Tensor) else value
