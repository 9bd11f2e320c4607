"""Attention with its own head counts in every layer, for checkpoints exported by model-surgery.

This file is copied next to the weights of an export whose layers keep different numbers of
attention heads (or, for GPT-2 / GPT-NeoX / BERT, any number other than the original: their stock
classes derive the head size from `hidden_size / num_attention_heads`). It imports only torch and
transformers, so the export loads anywhere with

    AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True)

(AutoModelForMaskedLM for BERT). `surgery.load(export_dir)` needs no trust: it checks that this
file is exactly the one model-surgery ships and builds the class from the installed package.
The head counts live in the config's native `per_layer_config`
({"<layer>": {"num_attention_heads": .., "num_key_value_heads": ..}}), so once transformers builds
heterogeneous attention itself this file can simply be dropped.

Uneven key/value groups (grouped-query attention where a group lost only some of its query heads,
say 3, 1 and 2 query heads left over 3 key/value heads) cannot be written as transformers'
`repeat_kv` (equal groups). Such a layer keeps each key/value head once and its key and value
projections are `SharedKVProjection`s: they project the kept key/value heads and then gather one
per query head (`config.surgery_kv_of_query = {"<layer>": [kv index of each query head]}`), so
attention runs with one key/value head per query head and no weight is stored twice. Rotary
embeddings and per-head norms act on every head alike, so gathering before them is exact.

MLP width works the same way: a layer whose MLP keeps its own number of intermediate channels has
that number in its `per_layer_config` entry (`intermediate_size`; GPT-2: `n_inner`), and the class
below resizes that layer's MLP projections after the stock __init__ built them at the global size.

`model-surgery` imports the same functions to shrink models in memory, so the in-memory model and
the reloaded one are built alike.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
import torch.nn as nn
import transformers
from transformers.pytorch_utils import Conv1D

# Rewritten by model-surgery's exporter to the class of the pruned model (e.g. "Qwen2ForCausalLM").
BASE_CLASS = "LlamaForCausalLM"


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks of any supported family."""
    body = model.base_model
    for path in ("layers", "h", "encoder.layer"):
        try:
            return body.get_submodule(path)
        except AttributeError:
            continue
    raise TypeError(f"{type(model).__name__}: no transformer blocks found (layers, h or encoder.layer)")


def attention_kind(block: nn.Module) -> str:
    """'llama' (q/k/v/o_proj), 'gpt2' (fused Conv1D c_attn), 'gpt_neox' (interleaved query_key_value), 'bert'."""
    if hasattr(block, "self_attn") and hasattr(block.self_attn, "q_proj"):
        return "llama"
    if hasattr(block, "attn") and hasattr(block.attn, "c_attn"):
        return "gpt2"
    if hasattr(block, "attention") and hasattr(block.attention, "query_key_value"):
        return "gpt_neox"
    if hasattr(block, "attention") and hasattr(block.attention, "self"):
        return "bert"
    raise TypeError(f"unsupported attention block {type(block).__name__}")


def layer_heads(config, layer: int) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) of one layer, honouring `per_layer_config`."""
    layer_config = config.per_layer_config[layer] if getattr(config, "is_heterogeneous", False) else config
    n_q = int(layer_config.num_attention_heads)
    n_kv = int(getattr(layer_config, "num_key_value_heads", None) or n_q)
    head_dim = int(getattr(layer_config, "head_dim", None) or layer_config.hidden_size // n_q)
    return n_q, n_kv, head_dim


class SharedKVProjection(nn.Linear):
    """Key or value projection of the kept key/value heads, gathered to one head per query head.

    weight: [n_kv * head_dim, in] (each kept key/value head once); output: [..., n_q * head_dim],
    query head h reading key/value head kv_of_query[h].
    """

    def __init__(self, in_features: int, head_dim: int, kv_of_query: list[int], bias: bool = False,
                 device=None, dtype=None):
        super().__init__(in_features, (max(kv_of_query) + 1) * head_dim, bias=bias, device=device, dtype=dtype)
        self.head_dim = head_dim
        # A plain tuple, not a buffer: the map lives in the config, the checkpoint holds only weights,
        # and transformers' meta-device loading would leave a non-persistent buffer without data.
        self.kv_of_query = tuple(int(k) for k in kv_of_query)
        self._index: dict[torch.device, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = self._index.get(x.device)
        if index is None:
            index = self._index[x.device] = torch.tensor(self.kv_of_query, dtype=torch.long, device=x.device)
        heads = super().forward(x).unflatten(-1, (-1, self.head_dim))
        return heads.index_select(-2, index).flatten(-2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kv_of_query={list(self.kv_of_query)}"


def gather_map(module: nn.Module) -> list[int] | None:
    """The key/value head of each query head if `module` is a SharedKVProjection, else None.

    By attribute, not class: an export's copy of this file (loaded by transformers as remote code)
    defines its own SharedKVProjection class."""
    mapping = getattr(module, "kv_of_query", None)
    return list(mapping) if isinstance(mapping, tuple) else None


def kv_maps(config) -> dict[int, list[int]]:
    """{layer: key/value head of each query head} for layers with uneven key/value groups."""
    return {int(k): [int(i) for i in v] for k, v in (getattr(config, "surgery_kv_of_query", None) or {}).items()}


def set_attention_attributes(block: nn.Module, n_q: int, n_kv: int, head_dim: int) -> None:
    """Set what each family's attention forward reads besides the weight shapes (transformers 5.x)."""
    kind = attention_kind(block)
    if kind == "llama":
        # A SharedKVProjection already hands one key/value head per query head to the attention.
        shared = gather_map(block.self_attn.k_proj) is not None
        block.self_attn.num_key_value_groups = 1 if shared else n_q // n_kv
        block.self_attn.head_dim = head_dim
    elif kind == "gpt2":
        block.attn.num_heads = n_q
        block.attn.head_dim = head_dim
        block.attn.split_size = n_q * head_dim
    elif kind == "gpt_neox":
        block.attention.head_size = head_dim
    elif kind == "bert":
        block.attention.self.num_attention_heads = n_q
        block.attention.self.attention_head_size = head_dim
        block.attention.self.all_head_size = n_q * head_dim


def _linear(old: nn.Linear, n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)


def shared_kv_projection(old: nn.Linear, head_dim: int, kv_of_query: list[int]) -> SharedKVProjection:
    return SharedKVProjection(old.in_features, head_dim, kv_of_query, bias=old.bias is not None,
                              device=old.weight.device, dtype=old.weight.dtype)


def build_attention(block: nn.Module, n_q: int, n_kv: int, head_dim: int, kv_of_query: list[int] | None = None) -> None:
    """Replace a block's attention projections by empty ones sized for n_q query / n_kv key-value heads
    (key/value heads gathered by `kv_of_query` when the groups are uneven)."""
    kind = attention_kind(block)
    q_width, kv_width = n_q * head_dim, n_kv * head_dim
    if kv_of_query is not None and (kind != "llama" or len(kv_of_query) != n_q or max(kv_of_query) + 1 != n_kv):
        raise ValueError(f"kv_of_query {kv_of_query} does not fit a {kind} layer with {n_q} query and {n_kv} "
                         f"key/value heads")
    if kind == "llama":
        attn = block.self_attn
        hidden = attn.q_proj.in_features
        attn.q_proj = _linear(attn.q_proj, hidden, q_width)
        if kv_of_query is None:
            attn.k_proj = _linear(attn.k_proj, hidden, kv_width)
            attn.v_proj = _linear(attn.v_proj, hidden, kv_width)
        else:
            attn.k_proj = shared_kv_projection(attn.k_proj, head_dim, kv_of_query)
            attn.v_proj = shared_kv_projection(attn.v_proj, head_dim, kv_of_query)
        attn.o_proj = _linear(attn.o_proj, q_width, attn.o_proj.out_features)
    elif kind == "gpt2":
        attn = block.attn
        hidden = attn.c_attn.nx
        attn.c_attn = Conv1D(3 * q_width, hidden).to(attn.c_attn.weight)
        attn.c_proj = Conv1D(attn.c_proj.nf, q_width).to(attn.c_proj.weight)
    elif kind == "gpt_neox":
        attn = block.attention
        hidden = attn.query_key_value.in_features
        attn.query_key_value = _linear(attn.query_key_value, hidden, 3 * q_width)
        attn.dense = _linear(attn.dense, q_width, attn.dense.out_features)
    elif kind == "bert":
        attn = block.attention
        hidden = attn.self.query.in_features
        attn.self.query = _linear(attn.self.query, hidden, q_width)
        attn.self.key = _linear(attn.self.key, hidden, q_width)
        attn.self.value = _linear(attn.self.value, hidden, q_width)
        attn.output.dense = _linear(attn.output.dense, q_width, attn.output.dense.out_features)
    set_attention_attributes(block, n_q, n_kv, head_dim)


def apply_per_layer_heads(model: nn.Module) -> None:
    """Resize every layer's attention to the head counts its config gives."""
    maps = kv_maps(model.config)
    for i, block in enumerate(layer_list(model)):
        build_attention(block, *layer_heads(model.config, i), kv_of_query=maps.get(i))


class _GlobalHeadCountWarning(logging.Filter):
    """Drops transformers' "Reading global config value for per-layer attribute" warning while
    `quiet_global_head_counts()` is active: reading the original model's global head counts is what
    these configs opt into (allow_global_per_layer_attribute_access), and every layer is then
    resized from its own entry, so the warning only alarms users of a correct model."""

    active = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.active and record.getMessage().startswith("Reading global config value for per-layer"))


_QUIET = _GlobalHeadCountWarning()
logging.getLogger("transformers.integrations.heterogeneity.configuration_utils").addFilter(_QUIET)


@contextmanager
def quiet_global_head_counts():
    """Silence the global-per-layer-attribute warning for configs of pruned models, inside this block."""
    _QUIET.active += 1
    try:
        yield
    finally:
        _QUIET.active -= 1


# Config field holding the MLP width of each family, and where its projections live in a block:
# (paths that make the intermediate channels, path of the down-projection that reads them).
MLP_SIZE_ATTR = {"llama": "intermediate_size", "gpt2": "n_inner", "gpt_neox": "intermediate_size",
                 "bert": "intermediate_size"}
MLP_PATHS = {"llama": (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
             "gpt2": (("mlp.c_fc",), "mlp.c_proj"),
             "gpt_neox": (("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),
             "bert": (("intermediate.dense",), "output.dense")}


def mlp_width(block: nn.Module) -> int:
    """Number of intermediate channels of a block's MLP (input features of its down-projection)."""
    down = block.get_submodule(MLP_PATHS[attention_kind(block)][1])
    return int(down.weight.shape[0] if isinstance(down, Conv1D) else down.in_features)


def layer_mlp_width(config, layer: int) -> int | None:
    """The per-layer MLP width `per_layer_config` gives this layer, or None (global size)."""
    if not getattr(config, "is_heterogeneous", False):
        return None
    overrides = config._heterogeneity_spec.per_layer_overrides.get(layer, {})
    for attr in set(MLP_SIZE_ATTR.values()):
        if overrides.get(attr) is not None:
            return int(overrides[attr])
    return None


def build_mlp(block: nn.Module, width: int) -> None:
    """Replace a block's MLP projections by empty ones with `width` intermediate channels."""
    in_paths, down_path = MLP_PATHS[attention_kind(block)]
    for path in (*in_paths, down_path):
        parent_path, _, name = path.rpartition(".")
        parent = block.get_submodule(parent_path)
        old = getattr(parent, name)
        if isinstance(old, Conv1D):  # weight [in, out]
            n_in, n_out = old.weight.shape
            new = Conv1D(width if path != down_path else n_out, width if path == down_path else n_in).to(old.weight)
        else:
            n_in, n_out = (width, old.out_features) if path == down_path else (old.in_features, width)
            new = _linear(old, n_in, n_out)
        setattr(parent, name, new)


def sync_mlp_widths(model: nn.Module) -> None:
    """Write every block's actual MLP width into the config: the global field when all layers agree,
    else an entry per layer in `per_layer_config` (kept beside any per-layer head counts)."""
    blocks = layer_list(model)
    widths = [mlp_width(b) for b in blocks]
    config = model.config
    attr = MLP_SIZE_ATTR[attention_kind(blocks[0])]
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


def apply_per_layer_mlp(model: nn.Module) -> None:
    """Resize every layer's MLP whose `per_layer_config` entry gives it its own width."""
    for i, block in enumerate(layer_list(model)):
        width = layer_mlp_width(model.config, i)
        if width is not None and width != mlp_width(block):
            build_mlp(block, width)


def _pruned_class(base: type) -> type:
    class Pruned(base):
        def __init__(self, config, *args, **kwargs):
            # The stock __init__ reads the global head counts; they are valid (the original model's),
            # and every layer is resized right after from its own entry in `per_layer_config`.
            allow = config.allow_global_per_layer_attribute_access
            config.allow_global_per_layer_attribute_access = True
            try:
                with quiet_global_head_counts():
                    super().__init__(config, *args, **kwargs)
            finally:
                config.allow_global_per_layer_attribute_access = allow
            apply_per_layer_heads(self)
            apply_per_layer_mlp(self)

    Pruned.__name__ = Pruned.__qualname__ = f"Pruned{base.__name__}"
    return Pruned


_CLASSES: dict[str, type] = {}


def pruned_model_class(base_name: str) -> type:
    """The Pruned<base_name> class (one per base class and process), with the stock class's checkpoint
    key renamings registered for it."""
    if base_name not in _CLASSES:
        base = getattr(transformers, base_name, None)
        if not (isinstance(base, type) and issubclass(base, transformers.PreTrainedModel)):
            raise TypeError(f"{base_name!r} is not a transformers model class")
        cls = _CLASSES[base_name] = _pruned_class(base)
        _register_conversion_mapping(base_name, cls)
    return _CLASSES[base_name]


def _register_conversion_mapping(base_name: str, cls: type) -> None:
    # Checkpoint key renamings transformers applies to the stock class (e.g. GPT-NeoX saves its
    # `lm_head` as `embed_out`) are looked up by class name and skipped for remote code unless
    # registered: register the stock class's mapping under this class's name.
    try:
        from transformers.conversion_mapping import (get_checkpoint_conversion_mapping,
                                                     register_checkpoint_conversion_mapping)
    except ImportError:  # transformers without checkpoint conversion mappings: nothing to register
        return
    mapping = get_checkpoint_conversion_mapping(base_name)
    if mapping:
        register_checkpoint_conversion_mapping(cls.__name__, mapping, overwrite=True)


PrunedModel = pruned_model_class(BASE_CLASS)
