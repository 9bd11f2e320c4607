"""How a family stores the query/key/value projections of its heads, written once per layout.

A family adapter names its layout (`qkv_layout`); the code that reads a head's query weights or cuts
heads out of the projections lives here, so families that share a layout and differ only in module
paths (Llama, Qwen2, Mistral, BERT) are one line of data each, and no caller branches on a family.

  separate           q/k/v linears, each [n_heads * head_dim, hidden] (Llama family with GQA, BERT)
  fused_conv1d       GPT-2 `c_attn` Conv1D, weight [hidden, q | k | v]
  fused_interleaved  GPT-NeoX `query_key_value`, weight [per head (q_h | k_h | v_h), hidden]
"""

from __future__ import annotations

import torch
import torch.nn as nn

from surgery.errors import SurgeryError
from surgery.modeling.pruned_attention import gather_map, shared_kv_projection


def replace_parameter(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Swap `module.<name>` for a new parameter holding `tensor` (same requires_grad)."""
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(tensor.contiguous(), requires_grad=old.requires_grad))


def head_rows(heads: list[int], width: int, offset: int = 0) -> torch.Tensor:
    """Indices of the `width` consecutive features of each head in `heads`, starting at `offset`."""
    return torch.cat([torch.arange(offset + h * width, offset + (h + 1) * width) for h in heads])


def keep_output_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    """Keep output features `rows` of an nn.Linear (weight [out, in])."""
    replace_parameter(linear, "weight", linear.weight[rows.to(linear.weight.device)])
    if linear.bias is not None:
        replace_parameter(linear, "bias", linear.bias[rows.to(linear.bias.device)])
    linear.out_features = len(rows)


class QKVLayout:
    """One way of storing q/k/v. `cut` keeps query heads `keep_q` and key/value heads `kv_src` (in that
    order); `kv_map` (uneven groups) says which kept key/value head each kept query head reads."""

    name = ""

    def query_weights(self, block: nn.Module, paths: tuple[str, ...], n_heads: int, head_dim: int) -> torch.Tensor:
        """Query-projection weights of each head as [n_heads, head_dim, hidden]."""
        raise NotImplementedError

    def cut(self, block: nn.Module, paths: tuple[str, ...], n_q: int, n_kv: int, head_dim: int,
            keep_q: list[int], kv_src: list[int], kv_map: list[int] | None) -> None:
        raise NotImplementedError

    def gathers_kv(self, block: nn.Module, paths: tuple[str, ...]) -> bool:
        """Whether the key projection already hands one key/value head per query head (uneven groups)."""
        return False


class Separate(QKVLayout):
    name = "separate"

    def query_weights(self, block, paths, n_heads, head_dim):
        return block.get_submodule(paths[0]).weight[: n_heads * head_dim].reshape(n_heads, head_dim, -1)

    def cut(self, block, paths, n_q, n_kv, head_dim, keep_q, kv_src, kv_map):
        q, k, v = (block.get_submodule(p) for p in paths)
        keep_output_rows(q, head_rows(keep_q, head_dim))
        kv_rows = head_rows(kv_src, head_dim)
        keep_output_rows(k, kv_rows)
        keep_output_rows(v, kv_rows)
        for path, module in zip(paths[1:], (k, v)):
            _set_kv_gather(block, path, module, kv_map, head_dim)

    def gathers_kv(self, block, paths):
        return gather_map(block.get_submodule(paths[1])) is not None


class FusedConv1D(QKVLayout):
    name = "fused_conv1d"

    def query_weights(self, block, paths, n_heads, head_dim):
        # Conv1D weight [hidden, 3 * H * D], queries first.
        return block.get_submodule(paths[0]).weight[:, : n_heads * head_dim].T.reshape(n_heads, head_dim, -1)

    def cut(self, block, paths, n_q, n_kv, head_dim, keep_q, kv_src, kv_map):
        (fused_path,) = paths
        fused = block.get_submodule(fused_path)
        q_width, kv_width = n_q * head_dim, n_kv * head_dim
        cols = torch.cat([head_rows(keep_q, head_dim), head_rows(kv_src, head_dim, q_width),
                          head_rows(kv_src, head_dim, q_width + kv_width)])
        replace_parameter(fused, "weight", fused.weight[:, cols])
        replace_parameter(fused, "bias", fused.bias[cols])
        fused.nf = len(cols)


class FusedInterleaved(QKVLayout):
    name = "fused_interleaved"

    def query_weights(self, block, paths, n_heads, head_dim):
        return block.get_submodule(paths[0]).weight.reshape(n_heads, 3 * head_dim, -1)[:, :head_dim]

    def cut(self, block, paths, n_q, n_kv, head_dim, keep_q, kv_src, kv_map):
        if kv_src != keep_q:
            raise SurgeryError("interleaved q/k/v layout with grouped key/value heads is not supported")
        (fused_path,) = paths
        keep_output_rows(block.get_submodule(fused_path), head_rows(keep_q, 3 * head_dim))


QKV_LAYOUTS: dict[str, QKVLayout] = {layout.name: layout for layout in (Separate(), FusedConv1D(), FusedInterleaved())}


def _set_kv_gather(block: nn.Module, path: str, linear: nn.Linear, kv_map: list[int] | None, head_dim: int) -> None:
    """Make a shrunk key/value projection gather by `kv_map` (uneven groups) or be a plain Linear."""
    if kv_map is None and gather_map(linear) is None:
        return
    if kv_map is None:
        new = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                        device=linear.weight.device, dtype=linear.weight.dtype)
    else:
        new = shared_kv_projection(linear, head_dim, kv_map)
    new.weight, new.bias = linear.weight, linear.bias
    parent, _, name = path.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, name, new)
