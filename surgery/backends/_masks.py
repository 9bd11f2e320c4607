"""Checks shared by the backends: one mask contract, one error message, whichever library runs it.

Both backends take the same arguments as the native engine and must refuse the same bad inputs,
so the validation lives here rather than twice.
"""

from __future__ import annotations

import torch

from surgery.errors import SurgeryError


def check_head_keep(head_keep, n_layers: int, n_heads: int) -> torch.Tensor:
    """head_keep must be bool [n_layers, n_query_heads]; True keeps the head."""
    if not isinstance(head_keep, torch.Tensor):
        raise SurgeryError(
            f"head_keep must be a torch.bool tensor of shape [n_layers={n_layers}, n_heads={n_heads}], "
            f"got {type(head_keep).__name__}")
    if head_keep.dtype != torch.bool:
        raise SurgeryError(
            f"head_keep must have dtype torch.bool (True = keep the head), got {head_keep.dtype}; "
            "convert with mask.bool() if 1/0 was meant")
    if tuple(head_keep.shape) != (n_layers, n_heads):
        raise SurgeryError(
            f"head_keep must have shape [n_layers={n_layers}, n_heads={n_heads}] (query heads, not "
            f"key/value heads), got {tuple(head_keep.shape)}")
    return head_keep


def check_mlp_keep(mlp_keep, n_layers: int) -> torch.Tensor | None:
    """mlp_keep must be None or bool [n_layers]; True keeps that layer's MLP output."""
    if mlp_keep is None:
        return None
    if not isinstance(mlp_keep, torch.Tensor) or mlp_keep.dtype != torch.bool:
        raise SurgeryError(
            f"mlp_keep must be None or a torch.bool tensor of shape [n_layers={n_layers}], got "
            f"{getattr(mlp_keep, 'dtype', type(mlp_keep).__name__)}")
    if tuple(mlp_keep.shape) != (n_layers,):
        raise SurgeryError(f"mlp_keep must have shape [n_layers={n_layers}], got {tuple(mlp_keep.shape)}")
    return mlp_keep


def check_replacement(replacement, n_layers: int, n_heads: int, head_dim: int) -> torch.Tensor | None:
    """replacement (mean ablation) must be None or float [n_layers, n_heads, head_dim]."""
    if replacement is None:
        return None
    if not isinstance(replacement, torch.Tensor) or not replacement.is_floating_point():
        raise SurgeryError(
            f"replacement must be None (zero ablation) or a floating tensor [n_layers={n_layers}, "
            f"n_heads={n_heads}, head_dim={head_dim}], got "
            f"{getattr(replacement, 'dtype', type(replacement).__name__)}")
    if tuple(replacement.shape) != (n_layers, n_heads, head_dim):
        raise SurgeryError(
            f"replacement must have shape [n_layers={n_layers}, n_heads={n_heads}, head_dim={head_dim}], "
            f"got {tuple(replacement.shape)}")
    return replacement


def check_inputs(input_ids, attention_mask) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        raise SurgeryError(
            f"input_ids must be an integer tensor [batch, seq], got "
            f"{tuple(getattr(input_ids, 'shape', ())) or type(input_ids).__name__}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise SurgeryError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
            f"{tuple(input_ids.shape)}")


def default_position_ids(input_ids: torch.Tensor, position_ids) -> torch.Tensor:
    """Positions 0..T-1 for every row unless the caller gives their own.

    A plain HF forward numbers positions 0..T-1 whatever the padding, but TransformerBridge and
    nnsight's TransformersModel both derive positions from a left-padded attention mask. Passing
    them explicitly makes the three agree on every padding layout.
    """
    if position_ids is not None:
        if tuple(position_ids.shape) != tuple(input_ids.shape):
            raise SurgeryError(
                f"position_ids shape {tuple(position_ids.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}")
        return position_ids
    B, T = input_ids.shape
    return torch.arange(T, device=input_ids.device).unsqueeze(0).expand(B, T)


def layer_replacement(z: torch.Tensor, keep_row: torch.Tensor, repl_row: torch.Tensor | None) -> torch.Tensor:
    """z [..., n_heads, head_dim] with the heads where keep_row is False set to zero or repl_row."""
    keep = keep_row.to(z.device).view(*([1] * (z.ndim - 2)), -1, 1)
    fill = torch.zeros((), dtype=z.dtype, device=z.device) if repl_row is None else repl_row.to(z.device, z.dtype)
    return torch.where(keep, z, fill)
