"""MLP width: remove intermediate channels of the MLPs, with the removed channels' mean compensated.

An MLP's intermediate channel j is one input feature of the down-projection. Cutting it removes row j
of every projection that makes the channels (Llama: gate and up; GPT-2: c_fc; GPT-NeoX:
dense_h_to_4h; BERT: intermediate.dense) and column j of the down-projection. With
`compensate_with=batch` the channel is replaced by its mean over the batch's real tokens instead of
by zero (FLAP): the down-projection is linear, so a constant channel adds W_down[:, j] * mean_j at
every position, which goes into the down-projection's bias before the column goes. The smaller model
then gives the logits of the full one with those channels held at their means (`mask_mlp_channels`,
same size, is that model).

Bias. GPT-2, GPT-NeoX and BERT down-projections carry a bias. Llama-family MLPs get one through
`mlp_bias=True` (which also gives gate/up zero biases), checked against the stock MLP class so the
export loads without remote code; families whose stock MLP cannot carry one are refused.

Config. Every layer keeping the same width: the global field (`intermediate_size`, GPT-2 `n_inner`),
a plain checkpoint. Different widths: `per_layer_config` entries and the remote-code class of
`surgery/modeling/pruned_attention.py`, as for uneven head counts.
"""

from __future__ import annotations

import copy as copy_module
from contextlib import ExitStack

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from surgery.adapters.layouts import replace_parameter
from surgery.batch import TokenBatch
from surgery.errors import SurgeryError
from surgery.loading import LoadedModel, load
from surgery.config_counts import sync_mlp_widths
from surgery.reference import run_body


def mlp_widths(loaded_or_model) -> list[int]:
    """Intermediate channels of every layer's MLP."""
    loaded = load(loaded_or_model)
    return [loaded.adapter.mlp_width(block) for block in loaded.adapter.blocks(loaded.model)]


@torch.no_grad()
def channel_statistics(loaded: LoadedModel, batch: TokenBatch, layers=None) -> dict[int, dict[str, torch.Tensor]]:
    """{layer: {"mean", "sq_mean"}} (float64, [width]) of every MLP channel (the down-projection's
    input) over the real tokens of `batch`; `tokens`: how many tokens they average."""
    adapter = loaded.adapter
    blocks = adapter.blocks(loaded.model)
    layers = range(len(blocks)) if layers is None else sorted(set(layers))
    batch = batch.to(loaded.device)
    weights = batch.attention_mask.to(torch.float64)
    total = weights.sum()
    stats: dict[int, dict[str, torch.Tensor]] = {}

    def hook(module, args, layer):
        x = args[0].double() * weights.unsqueeze(-1)  # padding rows contribute nothing
        stats[layer] = {"mean": (x.sum(dim=(0, 1)) / total).cpu(),
                        "sq_mean": ((x * args[0].double()).sum(dim=(0, 1)) / total).cpu(), "tokens": int(total)}

    with ExitStack() as stack:
        for layer in layers:
            down = blocks[layer].get_submodule(adapter.mlp_down)
            stack.enter_context(down.register_forward_pre_hook(lambda m, a, layer=layer: hook(m, a, layer)))
        run_body(loaded, batch)
    return stats


def down_column_norms(loaded: LoadedModel, layer: int) -> torch.Tensor:
    """Squared L2 norm of the down-projection's column of every channel of one layer ([width], float64)."""
    down = loaded.adapter.blocks(loaded.model)[layer].get_submodule(loaded.adapter.mlp_down)
    weight = down.weight.detach().double()
    return (weight ** 2).sum(dim=1 if isinstance(down, Conv1D) else 0).cpu()


def remove_mlp_channels(loaded_or_model, channels: dict[int, list[int]], *, copy: bool = True,
                        compensate_with: TokenBatch | None = None) -> LoadedModel:
    """Physically remove MLP channels {layer: [channel, ...]}; compensate_with: calibration batch whose
    mean channel values go into the down-projection bias (mean ablation instead of zero)."""
    return _apply(loaded_or_model, channels, copy, compensate_with, cut=True)


def mask_mlp_channels(loaded_or_model, channels: dict[int, list[int]], *, copy: bool = True,
                      compensate_with: TokenBatch | None = None) -> LoadedModel:
    """The same-size variant: zero the channels' down-projection columns (after compensating)."""
    return _apply(loaded_or_model, channels, copy, compensate_with, cut=False)


def enable_mlp_bias(model: nn.Module, adapter) -> None:
    """Give every block's MLP projections (zero) biases the stock way, or refuse."""
    blocks = adapter.blocks(model)
    if all(b.get_submodule(adapter.mlp_down).bias is not None for b in blocks):
        return
    config = model.config
    flag = adapter.mlp_bias_attr
    refuse = (f"{type(model).__name__} (model_type={config.model_type!r}) has no MLP down-projection bias and its "
              f"stock MLP class cannot carry one, so mean-compensated width pruning cannot be exported; "
              f"remove the channels without compensation (compensate_with=None)")
    if flag is None or not hasattr(config, flag):
        raise SurgeryError(refuse)
    mlp_path = adapter.mlp_down.rpartition(".")[0]
    mlp = blocks[0].get_submodule(mlp_path)
    cfg = copy_module.deepcopy(config)
    setattr(cfg, flag, True)
    try:
        with torch.device("meta"):
            stock = type(mlp)(cfg)
    except Exception as err:  # noqa: BLE001 - any failure means we cannot tell what the stock class does
        raise SurgeryError(f"{refuse} (building {type(mlp).__name__} with {flag}=True failed: {err})") from None
    biased = [name for name, m in stock.named_modules() if isinstance(m, nn.Linear) and m.bias is not None]
    if adapter.mlp_down.rpartition(".")[2] not in biased:
        raise SurgeryError(refuse)
    with torch.no_grad():
        for block in blocks:
            for name in biased:
                linear = block.get_submodule(mlp_path).get_submodule(name)
                if linear.bias is None:
                    linear.bias = nn.Parameter(linear.weight.new_zeros(linear.weight.shape[0]),
                                               requires_grad=linear.weight.requires_grad)
    setattr(config, flag, True)  # the stock class then builds these biases when it loads the export


def check_channels(loaded: LoadedModel, channels) -> dict[int, list[int]]:
    """{layer: sorted unique channels}, refusing unknown layers, channels and emptied MLPs."""
    if not isinstance(channels, dict):
        raise SurgeryError(f"MLP channels must be a dict {{layer: [channel, ...]}}, got {type(channels).__name__}")
    widths = mlp_widths(loaded)
    out = {}
    for layer, chosen in channels.items():
        layer = int(layer)
        if not 0 <= layer < len(widths):
            raise SurgeryError(f"MLP channels for layer {layer}, but the model has layers 0..{len(widths) - 1}")
        chosen = sorted({int(c) for c in chosen})
        bad = [c for c in chosen if not 0 <= c < widths[layer]]
        if bad:
            raise SurgeryError(f"layer {layer}: MLP channels {bad[:5]} out of range 0..{widths[layer] - 1}")
        if len(chosen) == widths[layer]:
            raise SurgeryError(f"removing all {widths[layer]} MLP channels of layer {layer} leaves no MLP; keep at "
                               f"least one channel (or drop the whole layer)")
        if chosen:
            out[layer] = chosen
    return out


# ---------------------------------------------------------------------------------------------

def _apply(loaded_or_model, channels, copy: bool, compensate_with: TokenBatch | None, cut: bool) -> LoadedModel:
    loaded = load(loaded_or_model)
    adapter = loaded.adapter
    if not adapter.mlp_down:
        raise SurgeryError(f"the {adapter.family} adapter does not say where its MLP projections are (mlp_down)")
    drop = check_channels(loaded, channels)
    stats = channel_statistics(loaded, compensate_with, drop) if compensate_with is not None and drop else None
    model = copy_module.deepcopy(loaded.model) if copy else loaded.model
    if stats is not None:
        enable_mlp_bias(model, adapter)
    blocks = adapter.blocks(model)
    with torch.no_grad():
        for layer, removed in drop.items():
            block = blocks[layer]
            down = block.get_submodule(adapter.mlp_down)
            idx = torch.tensor(removed, device=down.weight.device)
            transposed = isinstance(down, Conv1D)  # Conv1D (GPT-2) stores [in, out]
            if stats is not None:
                mean = stats[layer]["mean"][idx.cpu()].to(down.weight.device)
                weight = down.weight.double()
                shift = mean @ weight[idx] if transposed else weight[:, idx] @ mean
                down.bias.add_(shift.to(down.bias.dtype))
            if cut:
                _cut_channels(block, adapter, removed)
            elif transposed:
                down.weight[idx] = 0
            else:
                down.weight[:, idx] = 0
    if cut:
        sync_mlp_widths(model, adapter)
    else:
        previous = dict(getattr(model.config, "surgery_masked_mlp_channels", None) or {})
        for layer, removed in drop.items():
            previous[str(layer)] = sorted(set(previous.get(str(layer), [])) | set(removed))
        model.config.surgery_masked_mlp_channels = previous
    n = sum(len(c) for c in drop.values())
    how = "removed" if cut else "MASKED, same size"
    comp = ", mean-compensated" if stats is not None else ""
    return LoadedModel(model, loaded.tokenizer, adapter, loaded.components,
                       f"{loaded.source} [MLP channels {how}: {n}{comp}]")


def _cut_channels(block: nn.Module, adapter, removed: list[int]) -> None:
    down = block.get_submodule(adapter.mlp_down)
    width = adapter.mlp_width(block)
    keep = torch.tensor([c for c in range(width) if c not in set(removed)], device=down.weight.device)
    for path in adapter.mlp_in_paths:
        module = block.get_submodule(path)
        if isinstance(module, Conv1D):  # [in, out]: keep output columns
            replace_parameter(module, "weight", module.weight[:, keep])
            module.nf = len(keep)
        else:
            replace_parameter(module, "weight", module.weight[keep])
            module.out_features = len(keep)
        if module.bias is not None:
            replace_parameter(module, "bias", module.bias[keep])
    if isinstance(down, Conv1D):
        replace_parameter(down, "weight", down.weight[keep])
        down.nx = len(keep)
    else:
        replace_parameter(down, "weight", down.weight[:, keep])
        down.in_features = len(keep)
