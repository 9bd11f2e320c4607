"""What an architecture family looks like to the ablation engine and the cutter.

An adapter is data, not code: dotted module paths and a few facts about the attention layout.
The engine, the backends, the cutter and the exporter only ever ask an adapter where things are and
which layout they have; none of them branches on the family. Register one with
`surgery.register_family(adapter)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from surgery.adapters.layouts import QKV_LAYOUTS, QKVLayout
from surgery.errors import SurgeryError
from surgery.modeling.pruned_attention import MLP_PATHS

# n_q / n_kv: query / key-value heads of the layer; head_dim; q_width = n_q * head_dim; kv_groups:
# query heads per key/value head as the attention sees them (1 when the key projection already
# gathers one key/value head per query head, see SharedKVProjection).
ATTENTION_QUANTITIES = ("n_q", "n_kv", "head_dim", "q_width", "kv_groups")


@dataclass(frozen=True)
class ArchitectureAdapter:
    family: str
    # `config.model_type` values this adapter serves.
    model_types: tuple[str, ...]
    # Path from the top model to the module that returns the final (normalised) hidden states.
    body: str
    # Path from the top model to the vocabulary projection applied to those hidden states.
    unembed: str
    # Path from the top model to the ModuleList of transformer blocks.
    layers: str
    # Path from a block to the attention output projection. Its *input* is the concatenation of
    # per-head outputs [.., n_heads * head_dim] (TransformerLens `hook_z`), where heads are ablated.
    attn_out_proj: str
    # Path from a block to the module whose *output* is the MLP's contribution to the residual.
    mlp_out: str
    # Query/key/value projection layout, used by the physical cutter:
    #   "separate": q_proj/k_proj/v_proj linears (paths below),
    #   "fused_conv1d": GPT-2 `c_attn` Conv1D, output [q | k | v] each n_heads*head_dim,
    #   "fused_interleaved": GPT-NeoX `query_key_value`, output per head [q_h | k_h | v_h].
    qkv_layout: str
    qkv_paths: tuple[str, ...]
    # True when the output projection stores its weight transposed (GPT-2 Conv1D: [in, out]).
    out_proj_transposed: bool = False
    # Config attribute holding the number of key/value heads (None: same as query heads).
    kv_heads_attr: str | None = None
    # Whether the family is a decoder scored by next-token logits (False: masked LM encoder).
    causal: bool = True
    # Config flag that gives the attention projections biases when the output projection has none
    # (compensated removal writes a bias there; None: the output projection always has one).
    attn_bias_attr: str | None = None
    # MLP width (surgery/mlp_width.py): paths from a block to the projections that make the
    # intermediate channels (Llama: gate and up) and to the down-projection that reads them.
    mlp_in_paths: tuple[str, ...] = ()
    mlp_down: str = ""
    # Config flag that gives the MLP projections biases when the down-projection has none (None:
    # it always has one). Post-LN families name the norm applied after the MLP's residual add.
    mlp_bias_attr: str | None = None
    mlp_post_norm: str | None = None
    # Config field holding the MLP width (GPT-2: n_inner), rewritten when channels are cut.
    mlp_size_attr: str = "intermediate_size"
    # What the attention forward reads besides the weight shapes, set after heads are cut: pairs of
    # (attribute path from a block, quantity), quantity one of ATTENTION_QUANTITIES.
    attention_attrs: tuple[tuple[str, str], ...] = ()
    # Which block layout of the exported modeling file (surgery/modeling/pruned_attention.py:
    # "llama", "gpt2", "gpt_neox", "bert") rebuilds this family's blocks with per-layer head counts
    # or MLP widths. None: exports that need per-layer counts are refused (uniform cuts, layer
    # removal and masking still export as plain checkpoints). That file travels inside exports and
    # may import only torch and transformers, so it recognises its layouts by their module names.
    export_layout: str | None = None

    def __post_init__(self):
        unknown = sorted({q for _, q in self.attention_attrs} - set(ATTENTION_QUANTITIES))
        if unknown:
            raise SurgeryError(f"adapter {self.family!r}: unknown attention_attrs quantities {unknown}; use "
                               f"{', '.join(ATTENTION_QUANTITIES)}")
        if self.qkv_layout not in QKV_LAYOUTS:
            raise SurgeryError(f"adapter {self.family!r}: unknown qkv_layout {self.qkv_layout!r}; use one of "
                               f"{sorted(QKV_LAYOUTS)} (surgery/adapters/layouts.py)")
        if self.export_layout is not None and self.export_layout not in MLP_PATHS:
            raise SurgeryError(f"adapter {self.family!r}: export_layout {self.export_layout!r} is not a layout of "
                               f"surgery/modeling/pruned_attention.py ({', '.join(MLP_PATHS)}) nor None")
        if not self.model_types:
            raise SurgeryError(f"adapter {self.family!r} serves no model_type; name the config.model_type values")

    @property
    def layout(self) -> QKVLayout:
        """The q/k/v storage layout (surgery/adapters/layouts.py)."""
        return QKV_LAYOUTS[self.qkv_layout]

    def query_weights(self, block: nn.Module, n_heads: int, head_dim: int) -> torch.Tensor:
        """Query-projection weights of each head of `block` as [n_heads, head_dim, hidden]."""
        return self.layout.query_weights(block, self.qkv_paths, n_heads, head_dim)

    def out_proj_weight(self, block: nn.Module) -> torch.Tensor:
        """The attention output projection's weight as [hidden, n_heads * head_dim], whatever its storage."""
        weight = block.get_submodule(self.attn_out_proj).weight
        return weight.T if self.out_proj_transposed else weight

    def get(self, root: nn.Module, path: str) -> nn.Module:
        return root.get_submodule(path)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers)

    def head_dim(self, config) -> int:
        head_dim = getattr(config, "head_dim", None)
        if head_dim:
            return int(head_dim)
        return config.hidden_size // config.num_attention_heads

    def n_kv_heads(self, config) -> int:
        if self.kv_heads_attr and getattr(config, self.kv_heads_attr, None):
            return int(getattr(config, self.kv_heads_attr))
        return int(config.num_attention_heads)

    def set_attention_counts(self, block: nn.Module, n_q: int, n_kv: int, head_dim: int) -> None:
        """Set the attributes (attention_attrs) the attention forward reads for n_q / n_kv heads."""
        shared = self.layout.gathers_kv(block, self.qkv_paths)
        values = {"n_q": n_q, "n_kv": n_kv, "head_dim": head_dim, "q_width": n_q * head_dim,
                  "kv_groups": 1 if shared else n_q // n_kv}
        for path, quantity in self.attention_attrs:
            owner, _, name = path.rpartition(".")
            setattr(block.get_submodule(owner) if owner else block, name, values[quantity])

    def mlp_width(self, block: nn.Module) -> int:
        """Intermediate channels of a block's MLP (input features of its down-projection)."""
        down = block.get_submodule(self.mlp_down)
        return int(down.weight.shape[0] if isinstance(down, Conv1D) else down.in_features)  # Conv1D: [in, out]
