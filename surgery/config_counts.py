"""What a cut writes into the model's config: head counts and MLP widths, per layer where they differ.

Plain fields (num_attention_heads, num_key_value_heads, head_dim, the MLP width) when every layer
agrees and the stock config class accepts the values; otherwise transformers' native
`per_layer_config`, which the exported modeling file (surgery/modeling/pruned_attention.py) reads
back. The adapter says where the MLP is and which config field holds its width.
"""

from __future__ import annotations

import torch.nn as nn

from surgery.adapters import ArchitectureAdapter
from surgery.modeling.pruned_attention import layer_heads, quiet_global_head_counts


def head_counts(config, n_layers: int) -> tuple[list[int], list[int]]:
    """Per-layer (query heads, key/value heads) that a config describes (per_layer_config aware)."""
    counts = [layer_heads(config, i) for i in range(n_layers)]
    return [c[0] for c in counts], [c[1] for c in counts]



def clear_per_layer(config) -> None:
    """Drop per_layer_config (keyed by layer index: clear it before the layer count changes)."""
    if getattr(config, "is_heterogeneous", False):
        config.per_layer_config = None


def _global(config, name, default=None):
    getter = getattr(config, "_getattr_without_heterogeneous_validation", None)
    return getter(name, default) if getter else getattr(config, name, default)


@quiet_global_head_counts()  # reading the original global counts is intended here
def write_head_counts(model: nn.Module, adapter: ArchitectureAdapter, n_q: list[int], n_kv: list[int], head_dim: int,
                      kv_maps: dict[int, list[int]] | None = None) -> None:
    """Record every layer's head counts (and key/value maps) in the config, keeping per-layer MLP widths."""
    _write_attention_counts(model, n_q, n_kv, head_dim, kv_maps)
    sync_mlp_widths(model, adapter)  # the head counts rewrite per_layer_config: put back per-layer MLP widths


def _write_attention_counts(model: nn.Module, n_q: list[int], n_kv: list[int], head_dim: int,
                            kv_maps: dict[int, list[int]] | None = None) -> None:
    """Record per-layer head counts in the config: plain fields when possible, else per_layer_config
    (always when some layer gathers uneven key/value groups, whose maps go in surgery_kv_of_query)."""
    config = model.config
    clear_per_layer(config)
    config.head_dim = head_dim
    if hasattr(config, "surgery_kv_of_query"):
        del config.surgery_kv_of_query
    if kv_maps:
        config.surgery_kv_of_query = {str(layer): list(m) for layer, m in sorted(kv_maps.items())}
    global_q = int(_global(config, "num_attention_heads"))
    global_kv = int(_global(config, "num_key_value_heads", None) or global_q)
    uniform = len(set(n_q)) == 1 and len(set(n_kv)) == 1 and not kv_maps
    if uniform and (n_q[0], n_kv[0]) == (global_q, global_kv):
        return
    if uniform and hasattr(config, "num_key_value_heads") and _plain_config_ok(config, n_q[0], n_kv[0]):
        config.num_attention_heads = n_q[0]
        config.num_key_value_heads = n_kv[0]
        return
    # Stock config validators read the global counts when the config is loaded; they stay the
    # original (valid) ones, and reading them is allowed so the config round-trips through JSON.
    config.allow_global_per_layer_attribute_access = True
    config.per_layer_config = {str(i): {"num_attention_heads": q, "num_key_value_heads": kv}
                               for i, (q, kv) in enumerate(zip(n_q, n_kv))}


def _plain_config_ok(config, n_q: int, n_kv: int) -> bool:
    """Whether the stock config class accepts these counts (e.g. Llama needs hidden % heads == 0)."""
    data = config.to_dict()
    data.update(num_attention_heads=n_q, num_key_value_heads=n_kv)
    data.pop("per_layer_config", None)
    try:
        type(config).from_dict(data)
    except Exception:  # noqa: BLE001 - any validator refusal means "not expressible plainly"
        return False
    return True


def sync_mlp_widths(model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Write every block's actual MLP width into the config: the global field when all layers agree,
    else an entry per layer in `per_layer_config` (kept beside any per-layer head counts)."""
    widths = [adapter.mlp_width(b) for b in adapter.blocks(model)]
    config = model.config
    attr = adapter.mlp_size_attr
    overrides = {}
    if getattr(config, "is_heterogeneous", False):
        overrides = {int(k): {a: v for a, v in o.items() if a != attr}
                     for k, o in config._heterogeneity_spec.per_layer_overrides.items()}
    config.per_layer_config = None
    if len(set(widths)) == 1:
        if widths[0] != _global_mlp_width(config, attr):
            setattr(config, attr, widths[0])
    else:
        for layer, width in enumerate(widths):
            overrides.setdefault(layer, {})[attr] = width
    overrides = {k: v for k, v in overrides.items() if v}
    if overrides:
        config.allow_global_per_layer_attribute_access = True
        config.per_layer_config = {str(k): v for k, v in sorted(overrides.items())}


def _global_mlp_width(config, attr: str) -> int:
    value = getattr(config, attr, None)
    return int(value) if value is not None else 4 * int(config.hidden_size)  # GPT-2: n_inner None = 4 x hidden
