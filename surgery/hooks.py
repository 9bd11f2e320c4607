"""The hot path: forward hooks that apply c coalitions to a batch of B inputs in one forward.

Rows are coalition-major (row = coalition * B + input). Keep values broadcast over the B rows of a
coalition and over positions, so no mask is ever materialised per row. Boolean masks use
torch.where, which makes a kept site bit-identical to the unhooked model; float masks are gates
(x * g + (1 - g) * replacement) that gradients can flow through.

Prefix reuse: blocks below `expand_from` run once on the B clean inputs; the pre-hook of block
`expand_from` repeats the hidden states (and every other per-input tensor: attention masks,
rotary tables) c times, so only the blocks from the first ablated layer on pay for c coalitions.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from surgery.loading import LoadedModel
from surgery.players import PlayerLayout
from surgery.reference import SiteValues


def keep_tensors(layout: PlayerLayout, masks: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer, the keep values of each site for c coalitions. Sites kept everywhere are left out,
    except for gates that need gradients (d/dgate is wanted exactly where the gate is 1)."""
    is_bool = masks.dtype == torch.bool
    c = masks.shape[0]
    result: dict[int, dict[str, torch.Tensor]] = {}
    for layer, site in layout.sites.items():
        entry = {}
        idx = torch.tensor(site.head_players, device=masks.device)
        if (idx >= 0).any() or site.attn_player >= 0:
            heads = torch.ones(c, len(site.head_players), dtype=masks.dtype, device=masks.device)
            valid = idx >= 0
            if valid.any():
                heads[:, valid] = masks[:, idx[valid]]
            if site.attn_player >= 0:
                attn = masks[:, site.attn_player, None]
                heads = heads & attn if is_bool else heads * attn
            entry["heads"] = heads
        if site.mlp_player >= 0:
            entry["mlp"] = masks[:, site.mlp_player]
        if site.layer_player >= 0:
            entry["layer"] = masks[:, site.layer_player]
        if not masks.requires_grad:
            entry = {k: v for k, v in entry.items() if not (bool(v.all()) if is_bool else bool((v == 1).all()))}
        if entry:
            result[layer] = entry
    return result


def _mix(keep: torch.Tensor, clean: torch.Tensor, replacement) -> torch.Tensor:
    if keep.dtype == torch.bool:
        return torch.where(keep, clean, replacement if replacement is not None else clean.new_zeros(()))
    # Float gates follow the activations' dtype: float32 gates on a bfloat16 model would otherwise
    # promote the stream to float32 and the next layer's bfloat16 weights would refuse it.
    keep = keep.to(clean.dtype)
    if replacement is None:
        return clean * keep
    return clean * keep + (1 - keep) * replacement


def _broadcast_source(value: torch.Tensor | None, lead: int) -> torch.Tensor | None:
    """Mean values [..] broadcast as they are; resample values [B, T, ..] gain a coalition axis."""
    if value is None or value.ndim <= lead:
        return value
    return value.unsqueeze(0)


def install(stack: ExitStack, loaded: LoadedModel, keeps: dict[int, dict[str, torch.Tensor]], n_coalitions: int,
            n_inputs: int, replacements: SiteValues | None, expand_from: int | None) -> None:
    """Register on `stack` the hooks that apply `keeps` (from keep_tensors) to rows of n_coalitions x
    n_inputs; with `expand_from`, the clean inputs are repeated per coalition only from that block on."""
    adapter, comps = loaded.adapter, loaded.components
    blocks = adapter.blocks(loaded.model)
    rep = replacements or SiteValues()
    for layer, entry in keeps.items():
        block = blocks[layer]
        if "heads" in entry:
            hook = _head_hook(entry["heads"], comps.n_heads[layer], comps.head_dim,
                              _broadcast_source(rep.heads.get(layer), lead=2))
            stack.enter_context(block.get_submodule(adapter.attn_out_proj).register_forward_pre_hook(hook))
        if "mlp" in entry:
            hook = _mlp_hook(entry["mlp"], _broadcast_source(rep.mlp.get(layer), lead=1))
            stack.enter_context(block.get_submodule(adapter.mlp_out).register_forward_hook(hook))
        if "layer" in entry:
            hook = _block_hook(entry["layer"], _broadcast_source(rep.layer_delta.get(layer), lead=1))
            stack.enter_context(block.register_forward_hook(hook, with_kwargs=True))
    if expand_from is not None and n_coalitions > 1:
        expand_pre = _prefix_expansion(n_coalitions, n_inputs)
        for block in list(blocks)[expand_from:]:
            stack.enter_context(block.register_forward_pre_hook(expand_pre, with_kwargs=True, prepend=True))


def _head_hook(keep: torch.Tensor, H: int, D: int, source):
    """Pre-hook of the output projection: mix each head's slice of its input [R, T, H * D]."""
    c = keep.shape[0]
    keep5 = keep.view(c, 1, 1, H, 1)

    def head_pre(module, args):
        x = args[0]
        R, T, W = x.shape
        mixed = _mix(keep5, x.view(c, R // c, T, H, D), source)
        return (mixed.view(R, T, W),) + tuple(args[1:])
    return head_pre


def _mlp_hook(keep: torch.Tensor, source):
    """Forward hook of the MLP: mix its output (its contribution to the residual)."""
    c = keep.shape[0]
    keep4 = keep.view(c, 1, 1, 1)

    def mlp_hook(module, args, output):
        R, T, d = output.shape
        return _mix(keep4, output.view(c, R // c, T, d), source).view(R, T, d)
    return mlp_hook


def _block_hook(keep: torch.Tensor, delta):
    """Forward hook of a block: an ablated block passes its input through (plus `delta`, the mean or
    resampled block update, when given)."""
    c = keep.shape[0]
    keep4 = keep.view(c, 1, 1, 1)

    def block_hook(module, args, kwargs, output):
        inp = args[0] if args else kwargs["hidden_states"]
        res = output if torch.is_tensor(output) else output[0]
        R, T, d = res.shape
        inp4 = inp.view(c, R // c, T, d)
        skipped = inp4 if delta is None else inp4 + delta
        if keep4.dtype == torch.bool:
            new = torch.where(keep4, res.view(c, R // c, T, d), skipped)
        else:
            new = skipped + keep4.to(res.dtype) * (res.view(c, R // c, T, d) - skipped)
        new = new.view(R, T, d)
        return new if torch.is_tensor(output) else (new,) + tuple(output[1:])
    return block_hook


def _prefix_expansion(c: int, B: int):
    """Pre-hook that repeats every per-input tensor of a block's arguments c times (coalition-major)."""
    # Every block gets the same mask/rotary tensors from the body: repeat each once. The cache
    # keeps the original alive so its id cannot be reused by another tensor in this forward.
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def expand(value):
        if torch.is_tensor(value) and value.ndim >= 2 and value.shape[0] == B:
            key = id(value)
            if key not in cache:
                cache[key] = (value, value.repeat(c, *([1] * (value.ndim - 1))))
            return cache[key][1]
        if isinstance(value, tuple):
            return tuple(expand(v) for v in value)
        return value

    def expand_pre(module, args, kwargs):
        return tuple(expand(a) for a in args), {k: expand(v) for k, v in kwargs.items()}
    return expand_pre
