"""Stable names for a model's parts: heads `L5.H3`, layers `L5`, MLPs `L5.mlp`, attention `L5.attn`.

Counts are read from the module shapes, not only the config, so a model whose heads were cut
unevenly across layers is described correctly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from surgery.adapters.base import ArchitectureAdapter
from surgery.errors import SurgeryError
from surgery.modeling.pruned_attention import gather_map, layer_heads

# The one grammar of component names: L<layer>, L<layer>.H<head>, L<layer>.mlp, L<layer>.attn.
COMPONENT_NAME = re.compile(r"^L(\d+)(?:\.(H(\d+)|mlp|attn))?$")
NAME_FORMS = "'L<layer>' (layer), 'L<layer>.H<head>' (attention head), 'L<layer>.mlp' or 'L<layer>.attn'"


@dataclass(frozen=True)
class Component:
    kind: str  # "head" | "layer" | "mlp" | "attn"
    layer: int
    head: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "head":
            return head_name(self.layer, self.head)
        if self.kind == "layer":
            return layer_name(self.layer)
        return f"{layer_name(self.layer)}.{self.kind}"


def head_name(layer: int, head: int) -> str:
    """The name of query head `head` of layer `layer`: 'L<layer>.H<head>'."""
    return f"L{int(layer)}.H{int(head)}"


def layer_name(layer: int) -> str:
    """The name of layer `layer` (the whole block): 'L<layer>'."""
    return f"L{int(layer)}"


def parse_component(name: str) -> Component:
    """The Component a name denotes, by its form alone (no model: counts are not checked).

    Raises SurgeryError naming the accepted forms."""
    match = COMPONENT_NAME.match(name.strip()) if isinstance(name, str) else None
    if not match:
        raise SurgeryError(f"bad component name {name!r}: use {NAME_FORMS}")
    if match.group(3) is not None:
        return Component("head", int(match.group(1)), int(match.group(3)))
    return Component(match.group(2) or "layer", int(match.group(1)))


def parse_head_name(name: str) -> tuple[int, int]:
    """(layer, head) of a head name 'L<layer>.H<head>'; anything else raises SurgeryError."""
    component = parse_component(name)
    if component.kind != "head":
        raise SurgeryError(f"{name!r} is not a head; use 'L<layer>.H<head>'")
    return component.layer, component.head


class ComponentIndex:
    """Names, counts and GQA groups of one model's components."""

    def __init__(self, n_heads: list[int], n_kv_heads: list[int], head_dim: int,
                 kv_maps: dict[int, list[int]] | None = None):
        """kv_maps: {layer: key/value head of each query head} for layers with uneven groups (a pruned
        model's SharedKVProjection); other layers use transformers' equal groups (repeat_kv)."""
        self.n_heads = list(n_heads)
        self.n_kv_heads = list(n_kv_heads)
        self.head_dim = head_dim
        self.kv_maps = {int(layer): list(m) for layer, m in (kv_maps or {}).items()}
        for layer, (q, kv) in enumerate(zip(self.n_heads, self.n_kv_heads)):
            mapping = self.kv_maps.get(layer)
            if mapping is not None:
                if len(mapping) != q or sorted(set(mapping)) != list(range(kv)):
                    raise SurgeryError(f"layer {layer}: key/value map {mapping} does not cover {q} query heads "
                                       f"over {kv} key/value heads")
            elif kv <= 0 or q % kv:
                raise SurgeryError(f"layer {layer}: {q} query heads cannot be grouped over {kv} key/value heads")

    @classmethod
    def from_model(cls, model: nn.Module, adapter: ArchitectureAdapter) -> "ComponentIndex":
        config = model.config
        head_dim = adapter.head_dim(config)
        n_heads, n_kv = [], []
        heterogeneous = getattr(config, "is_heterogeneous", False)
        kv_maps = {}
        for i, block in enumerate(adapter.blocks(model)):
            proj = block.get_submodule(adapter.attn_out_proj)
            width = proj.weight.shape[0] if adapter.out_proj_transposed else proj.weight.shape[1]
            n_heads.append(width // head_dim)
            key = block.get_submodule(adapter.qkv_paths[1]) if adapter.qkv_layout == "separate" else None
            mapping = gather_map(key) if key is not None else None
            if mapping is not None:  # uneven groups: the projection says which query head reads what
                kv_maps[i] = mapping
                n_kv.append(key.weight.shape[0] // head_dim)
            elif adapter.kv_heads_attr is None:  # no GQA in this family: one key/value head per query head
                n_kv.append(n_heads[-1])
            elif heterogeneous:  # per-layer counts of a pruned export (config.per_layer_config)
                n_kv.append(layer_heads(config, i)[1])
            else:
                n_kv.append(adapter.n_kv_heads(config))
        return cls(n_heads, n_kv, head_dim, kv_maps)

    @property
    def n_layers(self) -> int:
        return len(self.n_heads)

    @property
    def heads(self) -> list[str]:
        return [head_name(l, h) for l in range(self.n_layers) for h in range(self.n_heads[l])]

    @property
    def layers(self) -> list[str]:
        return [layer_name(l) for l in range(self.n_layers)]

    @property
    def mlps(self) -> list[str]:
        return [Component("mlp", l).name for l in range(self.n_layers)]

    @property
    def attns(self) -> list[str]:
        return [Component("attn", l).name for l in range(self.n_layers)]

    def kv_head_of(self, layer: int, head: int) -> int:
        """Index of the key/value head that query head `head` reads (repeat_kv layout, or the layer's map)."""
        self.parse(head_name(layer, head))
        if layer in self.kv_maps:
            return self.kv_maps[layer][head]
        return head // (self.n_heads[layer] // self.n_kv_heads[layer])

    def kv_groups(self, layer: int) -> list[list[int]]:
        """Query heads sharing each key/value head of `layer`."""
        groups: list[list[int]] = [[] for _ in range(self.n_kv_heads[layer])]
        for head in range(self.n_heads[layer]):
            groups[self.kv_head_of(layer, head)].append(head)
        return groups

    def parse(self, name: str) -> Component:
        """The Component `name` denotes in this model; refuses bad forms and out-of-range layers/heads."""
        component = parse_component(name)
        layer = component.layer
        if layer >= self.n_layers:
            raise SurgeryError(f"{name}: layer {layer} out of range, this model has layers 0..{self.n_layers - 1}")
        if component.kind == "head" and component.head >= self.n_heads[layer]:
            raise SurgeryError(f"{name}: head {component.head} out of range, layer {layer} has heads "
                               f"0..{self.n_heads[layer] - 1}")
        return component

    def describe(self) -> str:
        total = sum(self.n_heads)
        same = len(set(self.n_heads)) == 1 and len(set(self.n_kv_heads)) == 1
        per = (f"{self.n_heads[0]} query heads, {self.n_kv_heads[0]} key/value heads per layer"
               if same else f"query heads per layer {self.n_heads}, key/value heads {self.n_kv_heads}")
        return f"{self.n_layers} layers, {total} heads ({per}), head_dim {self.head_dim}"
