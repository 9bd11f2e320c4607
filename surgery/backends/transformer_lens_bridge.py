"""Head and MLP ablation through a TransformerLens `TransformerBridge`.

The ablation site is `blocks.{l}.attn.hook_z`, which the bridge aliases to `blocks.{l}.attn.o.hook_in`:
the input of the attention output projection reshaped to [batch, pos, n_heads, head_dim], i.e. the
same per-head outputs the native engine's forward pre-hooks see. MLPs are ablated at
`blocks.{l}.hook_mlp_out` (alias of `blocks.{l}.mlp.hook_out`).

The bridge is a convenience input, not the hot loop: one forward per call, hooks only on the layers a
mask actually touches, so an all-True mask runs the bridge unhooked.
"""

from __future__ import annotations

import copy as _copy

import torch

from surgery.backends._masks import (
    check_head_keep,
    check_inputs,
    check_mlp_keep,
    check_replacement,
    default_position_ids,
    layer_replacement,
)
from surgery.errors import SurgeryError, UnsupportedArchitectureError

HOOK_Z = "blocks.{layer}.attn.hook_z"
HOOK_MLP_OUT = "blocks.{layer}.hook_mlp_out"


def bridge_from_hf(model, tokenizer=None, *, copy_model: bool = True):
    """Wrap an already-instantiated HF causal LM in a TransformerBridge, with no hub access.

    Goes through `transformer_lens.model_bridge.sources.build_bridge_from_module`, which takes the
    model and its in-memory config (boot_transformers would fetch config and tokenizer by name).
    The bridge rewires the model in place (its attention/MLP submodules become bridge components
    and it may switch to eager attention), so by default a deep copy is wrapped and the caller's
    model stays untouched; pass copy_model=False to save the memory when the model is not reused.
    No weight processing (fold_ln, centering) is applied: the bridge computes the HF model's logits.
    """
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    hf_config = getattr(model, "config", None)
    if hf_config is None:
        raise SurgeryError(
            f"bridge_from_hf needs a transformers PreTrainedModel with a .config, got {type(model).__name__}")
    architectures = getattr(hf_config, "architectures", None) or [type(model).__name__]
    architecture = architectures[0]
    if copy_model:
        model = _copy.deepcopy(model)
    try:
        bridge = build_bridge_from_module(
            model, architecture, hf_config=hf_config, tokenizer=tokenizer,
            model_name=getattr(hf_config, "_name_or_path", "") or "external")
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise UnsupportedArchitectureError(
            f"TransformerLens has no bridge adapter for architecture {architecture!r} ({exc}); use the "
            "native surgery engine for this model") from exc
    return bridge


def bridge_dims(bridge) -> tuple[int, int, int]:
    """(n_layers, n_query_heads, head_dim) of a TransformerBridge; refuses anything else by name."""
    cfg = getattr(bridge, "cfg", None)
    if cfg is None or not hasattr(bridge, "hook_dict"):
        raise UnsupportedArchitectureError(
            f"expected a transformer_lens TransformerBridge, got {type(bridge).__name__}; build one with "
            "surgery.backends.transformer_lens_bridge.bridge_from_hf(model)")
    return int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head)


def _resolve(bridge, name: str) -> str:
    """Fail now, with our message, if a hook the mask needs does not exist on this bridge."""
    if name not in bridge.hook_dict and bridge.get_hook_point(name) is None:
        raise UnsupportedArchitectureError(
            f"this TransformerBridge ({bridge.cfg.architecture}) exposes no hook {name!r}; heads/MLPs "
            "of this architecture cannot be ablated through the bridge, use the native engine")
    return name


def bridge_masked_logits(bridge, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                         head_keep: torch.Tensor, replacement: torch.Tensor | None = None,
                         mlp_keep: torch.Tensor | None = None,
                         position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, T, vocab] of `bridge` with the heads where head_keep is False ablated.

    head_keep:   bool [n_layers, n_query_heads], True = keep.
    replacement: None (zero ablation) or [n_layers, n_heads, head_dim]: an ablated head's z becomes
                 replacement[l, h] at every position (mean ablation).
    mlp_keep:    None or bool [n_layers]; False zeroes that layer's MLP output.
    position_ids: default 0..T-1 per row, as a plain HF forward uses (the bridge would otherwise
                 derive positions from a left-padded mask).
    """
    n_layers, n_heads, head_dim = bridge_dims(bridge)
    check_inputs(input_ids, attention_mask)
    head_keep = check_head_keep(head_keep, n_layers, n_heads)
    replacement = check_replacement(replacement, n_layers, n_heads, head_dim)
    mlp_keep = check_mlp_keep(mlp_keep, n_layers)
    if getattr(bridge, "_weights_processed", False):
        # fold_value_biases moves b_V out of z (zero-ablating z then means something else) and
        # center_unembed shifts every logit; neither gives the HF model's numbers.
        raise SurgeryError(
            "this TransformerBridge has processed weights (enable_compatibility_mode/process_weights: "
            "fold_ln, centering, fold_value_biases), so its hook_z and logits differ from the HF "
            "model's; build an unprocessed bridge with bridge_from_hf(model)")

    fired: set[str] = set()  # names of the hooks that ran: a hook that never fires ablated nothing
    fwd_hooks = _ablation_hooks(bridge, head_keep, replacement, mlp_keep, fired)

    kwargs = {"position_ids": default_position_ids(input_ids, position_ids)}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    with torch.no_grad():
        if fwd_hooks:
            logits = bridge.run_with_hooks(input_ids, fwd_hooks=fwd_hooks, return_type="logits", **kwargs)
        else:
            logits = bridge(input_ids, return_type="logits", **kwargs)
    missing = [name for name, _ in fwd_hooks if name not in fired]
    if missing:
        # A hook that never fires would silently leave its heads unablated.
        raise SurgeryError(f"bridge hooks {missing} never fired during the forward; the ablation was not "
                           "applied. This architecture's bridge bypasses them: use the native engine")
    return logits


def _ablation_hooks(bridge, head_keep: torch.Tensor, replacement: torch.Tensor | None, mlp_keep: torch.Tensor | None,
                    fired: set[str]) -> list:
    """(hook name, function) pairs for the layers a mask touches; each adds its name to `fired` when it runs."""
    n_layers, n_heads, head_dim = bridge_dims(bridge)
    fwd_hooks = []
    for layer in range(n_layers):
        if bool(head_keep[layer].all()):
            continue
        name = _resolve(bridge, HOOK_Z.format(layer=layer))
        repl_row = None if replacement is None else replacement[layer]

        def ablate_heads(z, hook, keep_row=head_keep[layer], repl_row=repl_row, name=name):
            if z.ndim != 4 or tuple(z.shape[-2:]) != (n_heads, head_dim):
                raise SurgeryError(
                    f"{name} gave shape {tuple(z.shape)}, expected [batch, pos, {n_heads}, {head_dim}]; "
                    "this bridge does not expose per-head z, use the native engine")
            fired.add(name)
            return layer_replacement(z, keep_row, repl_row)

        fwd_hooks.append((name, ablate_heads))
    if mlp_keep is not None:
        for layer in range(n_layers):
            if bool(mlp_keep[layer]):
                continue
            name = _resolve(bridge, HOOK_MLP_OUT.format(layer=layer))

            def ablate_mlp(out, hook, name=name):
                fired.add(name)
                return torch.zeros_like(out)

            fwd_hooks.append((name, ablate_mlp))
    return fwd_hooks
