"""Compensated head removal: what a removed head gave on average goes into the output bias (FLAP).

Mean ablation (`AblationEngine(mode="mean", reference=batch)`) replaces a removed head's slice of
the output projection's input by that slice's mean over the real tokens of `batch`. The output
projection is linear, so a constant slice adds the constant W_o[:, slice] @ mean at every position:
a bias. Adding it to the output projection's bias before the head's columns go (cut or zeroed)
makes the smaller model give the mean-ablated model's logits, up to float rounding. The means come
from the engine's own reference code (`record_sites`), so the game and the export use one number.

Families whose output projection has no bias get one through their config flag (Llama family:
`attention_bias=True`, which also adds zero q/k/v biases; GPT-NeoX likewise), checked against the
stock class so the export still loads without remote code; GPT-2 and BERT always carry one.
Models whose stock attention fixes the output projection without a bias (Qwen2, Mistral) are
refused with a one-line error.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from surgery.batch import TokenBatch
from surgery.components import head_name
from surgery.errors import SurgeryError
from surgery.players import resolve_players
from surgery.reference import record_sites

def head_means(loaded, drop: dict[int, list[int]], batch: TokenBatch) -> dict[int, torch.Tensor]:
    """{layer: [H, D]} mean of every head's output-projection input over the real tokens of `batch`
    (the engine's mean-ablation values), for the layers that lose heads."""
    names = [head_name(layer, head) for layer, heads in sorted(drop.items()) for head in heads]
    if not names:
        return {}
    layout = resolve_players(loaded.components, names)
    return dict(record_sites(loaded, layout, batch.to(loaded.device), reduce_mean=True).heads)


def enable_output_bias(model: nn.Module, adapter) -> None:
    """Give every block's attention output projection a (zero) bias, the stock way, or refuse."""
    blocks = adapter.blocks(model)
    if all(_out_proj(b, adapter).bias is not None for b in blocks):
        return
    config = model.config
    family = f"{type(model).__name__} (model_type={config.model_type!r})"
    flag = adapter.attn_bias_attr
    refuse = (f"{family} has no output-projection bias and its stock attention class cannot carry one, so "
              f"compensated removal cannot be exported; use removal='zero' (plain zero ablation) for this model")
    if flag is None or not hasattr(config, flag):
        raise SurgeryError(refuse)
    attn_path = adapter.attn_out_proj.rpartition(".")[0]
    stock = _stock_attention(blocks[0].get_submodule(attn_path), config, flag)
    out_name = adapter.attn_out_proj.rpartition(".")[2]
    if getattr(stock.get_submodule(out_name), "bias", None) is None:
        raise SurgeryError(refuse)
    biased = [name for name, m in stock.named_modules() if isinstance(m, nn.Linear) and m.bias is not None]
    with torch.no_grad():
        for block in blocks:
            attn = block.get_submodule(attn_path)
            for name in biased:
                linear = attn.get_submodule(name)
                if linear.bias is None:
                    linear.bias = nn.Parameter(linear.weight.new_zeros(linear.weight.shape[0]),
                                               requires_grad=linear.weight.requires_grad)
    setattr(config, flag, True)  # the stock class then builds these biases when it loads the export


def fold_head_means(block: nn.Module, adapter, head_dim: int, heads: list[int], means: torch.Tensor) -> None:
    """bias += W_o[:, columns of `heads`] @ their means (means: [H, D]). Call before cutting the columns."""
    proj = _out_proj(block, adapter)
    if proj.bias is None:
        raise SurgeryError("the output projection has no bias to compensate into; call enable_output_bias first")
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]).to(proj.weight.device)
    mean = means[heads].reshape(-1).to(proj.weight.device, torch.float64)
    weight = proj.weight.double()
    # Conv1D (GPT-2) stores [in, out]; nn.Linear stores [out, in].
    shift = mean @ weight[rows] if adapter.out_proj_transposed else weight[:, rows] @ mean
    with torch.no_grad():
        proj.bias.add_(shift.to(proj.bias.dtype))


def _out_proj(block: nn.Module, adapter) -> nn.Module:
    return block.get_submodule(adapter.attn_out_proj)


def _stock_attention(attn: nn.Module, config, flag: str) -> nn.Module:
    """The block's attention class as transformers would build it with `flag` on (on the meta device:
    no memory), to see which of its projections then carry a bias."""
    cfg = copy.deepcopy(config)
    setattr(cfg, flag, True)
    try:
        with torch.device("meta"):
            return type(attn)(cfg, layer_idx=0)
    except Exception as err:  # noqa: BLE001 - any failure means we cannot tell what the stock class does
        raise SurgeryError(f"cannot build {type(attn).__name__} with {flag}=True ({err}); compensated removal "
                           f"is not supported for this model, use removal='zero'") from None
