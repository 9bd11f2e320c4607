"""Clean activations at the ablation sites, for mean and resample ablation.

mean:     per-site averages over the real (non-padding) tokens of a reference batch, computed once.
resample: per-token activations of a source batch (other inputs), substituted position by position.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from surgery.batch import TokenBatch, check_sequence_length
from surgery.loading import LoadedModel
from surgery.players import PlayerLayout


@dataclass
class SiteValues:
    """Replacement values per layer. Heads: [H, D] (mean) or [B, T, H, D] (resample);
    MLP outputs and block deltas (output - input): [d] or [B, T, d]."""

    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp: dict[int, torch.Tensor] = field(default_factory=dict)
    layer_delta: dict[int, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def record_sites(loaded: LoadedModel, layout: PlayerLayout, batch: TokenBatch, reduce_mean: bool) -> SiteValues:
    adapter, comps = loaded.adapter, loaded.components
    blocks = adapter.blocks(loaded.model)
    out = SiteValues()
    weights = batch.attention_mask.to(loaded.device, torch.float32)  # [B, T]

    def finish(x: torch.Tensor) -> torch.Tensor:  # x: [B, T, ...]
        if not reduce_mean:
            return x.detach().clone()
        w = weights.view(*weights.shape, *([1] * (x.ndim - 2)))
        # Averaged in float32, stored in the model's dtype: a float32 mean would promote a bfloat16
        # model's stream where it is substituted, and its next layer would refuse the input.
        return ((x * w).sum(dim=(0, 1)) / w.sum()).to(x.dtype)

    with ExitStack() as stack:
        for layer, site in layout.sites.items():
            block = blocks[layer]
            if any(p >= 0 for p in site.head_players) or site.attn_player >= 0:
                H, D = comps.n_heads[layer], comps.head_dim

                def head_pre(module, args, layer=layer, H=H, D=D):
                    x = args[0]
                    out.heads[layer] = finish(x.view(*x.shape[:2], H, D))
                stack.enter_context(block.get_submodule(adapter.attn_out_proj).register_forward_pre_hook(head_pre))
            if site.mlp_player >= 0:
                def mlp_hook(module, args, output, layer=layer):
                    out.mlp[layer] = finish(output)
                stack.enter_context(block.get_submodule(adapter.mlp_out).register_forward_hook(mlp_hook))
            if site.layer_player >= 0:
                def block_hook(module, args, kwargs, output, layer=layer):
                    inp = args[0] if args else kwargs["hidden_states"]
                    res = output if torch.is_tensor(output) else output[0]
                    out.layer_delta[layer] = finish(res - inp)
                stack.enter_context(block.register_forward_hook(block_hook, with_kwargs=True))
        run_body(loaded, batch)
    return out


def run_body(loaded: LoadedModel, batch: TokenBatch) -> torch.Tensor:
    """Final hidden states [B, T, d] of the model body (no vocabulary projection)."""
    check_sequence_length(loaded, batch.input_ids.shape[1], "batch sequence length")
    body = loaded.model.get_submodule(loaded.adapter.body)
    kwargs = {"use_cache": False} if loaded.adapter.causal else {}
    result = body(input_ids=batch.input_ids.to(loaded.device),
                  attention_mask=batch.attention_mask.to(loaded.device), **kwargs)
    return result[0] if not hasattr(result, "last_hidden_state") else result.last_hidden_state
