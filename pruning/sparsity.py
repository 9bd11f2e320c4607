"""Unstructured sparsity inside layers: magnitude and Wanda scores, per-layer ratios, optional N:M.

Wanda (Sun et al. 2023) scores weight W_ij by |W_ij| * ||X_j||, the norm of input feature j over
calibration tokens, and prunes the lowest scores within each output row, with no weight update.
Magnitude scores by |W_ij|. Both prune the linear maps inside transformer blocks (attention
projections and MLP), never embeddings or the vocabulary projection.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Iterable

import torch
import torch.nn as nn

from pruning.errors import PruningError
from surgery.batch import TokenBatch
from surgery.loading import LoadedModel
from surgery.reference import run_body


def block_linears(loaded: LoadedModel, layer: int) -> dict[str, nn.Module]:
    """Every 2-D weight map inside block `layer` (nn.Linear and GPT-2's Conv1D), by qualified name."""
    block = loaded.adapter.blocks(loaded.model)[layer]
    return {f"L{layer}.{name}": m for name, m in block.named_modules()
            if hasattr(m, "weight") and getattr(m, "weight") is not None and m.weight.ndim == 2
            and type(m).__name__ in ("Linear", "Conv1D")}


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] (Conv1D stores [in, out])."""
    return module.weight.data.t() if type(module).__name__ == "Conv1D" else module.weight.data


@torch.no_grad()
def input_norms(loaded: LoadedModel, batches: Iterable[TokenBatch]) -> dict[str, torch.Tensor]:
    """||X_j||_2 over all real calibration tokens, for the input of every block linear."""
    sums: dict[str, torch.Tensor] = {}
    current_mask: list[torch.Tensor] = []
    with ExitStack() as stack:
        for layer in range(loaded.components.n_layers):
            for name, module in block_linears(loaded, layer).items():
                def hook(mod, args, name=name):
                    x = args[0].float()
                    w = current_mask[0].to(x.dtype).unsqueeze(-1)
                    sq = (x.pow(2) * w).sum(dim=tuple(range(x.ndim - 1)))
                    sums[name] = sums.get(name, 0) + sq
                stack.enter_context(module.register_forward_pre_hook(hook))
        for batch in batches:
            current_mask[:] = [batch.attention_mask.to(loaded.device)]
            run_body(loaded, batch)
    if not sums:
        raise PruningError("no calibration tokens reached the block linears (empty calibration batches?)")
    return {k: v.sqrt() for k, v in sums.items()}


def check_n_m(n_m) -> tuple[int, int] | None:
    """(N, M) of a semi-structured pattern, validated: keep N of every M consecutive weights, 1 <= N < M.

    Checked where a plan is made (and when one is read), so 4:2 or 0:0 is refused by name before any
    pruning instead of failing inside it.
    """
    if n_m is None:
        return None
    try:
        n, m = (int(x) for x in n_m)
    except (TypeError, ValueError):
        raise PruningError(f"N:M sparsity must be two integers like (2, 4), got {n_m!r}") from None
    if not 1 <= n < m:
        raise PruningError(f"N:M sparsity {n}:{m} must keep N of every M weights with 1 <= N < M (e.g. 2:4 keeps "
                           f"2 of every 4, sparsity 0.5); {n}:{m} " + ("keeps everything" if n == m > 0 else
                           "is not a pattern"))
    return n, m


def n_m_sparsity(n: int, m: int) -> float:
    """The fraction of weights an N:M pattern zeroes, in every layer: (M - N) / M."""
    return (m - n) / m


def _check_ratio(ratio: float, what: str) -> float:
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise PruningError(f"{what} sparsity ratio {ratio} is outside [0, 1]")
    return ratio


@torch.no_grad()
def sparsify(loaded: LoadedModel, ratios: dict[int, float], method: str = "wanda",
             norms: dict[str, torch.Tensor] | None = None, n_m: tuple[int, int] | None = None) -> dict:
    """Zero the lowest-scoring weights of each block linear in place. ratios: {layer: fraction}.

    n_m=(2, 4): keep 2 of every 4 consecutive input weights per row (ratio is then fixed at 0.5).
    Returns {"zeroed": n, "total": n, "per_layer": {layer: achieved fraction}}.
    """
    n_m = check_n_m(n_m)
    if method not in ("wanda", "magnitude"):
        raise PruningError(f"unknown sparsity method {method!r}: use 'wanda' or 'magnitude'")
    if method == "wanda" and norms is None:
        raise PruningError("wanda needs calibration input norms: pass norms=input_norms(loaded, batches)")
    n_layers = loaded.components.n_layers
    zeroed = total = 0
    per_layer = {}
    for layer, ratio in ratios.items():
        if not 0 <= int(layer) < n_layers:
            raise PruningError(f"layer {layer} out of range 0..{n_layers - 1}")
        ratio = _check_ratio(ratio, f"layer {layer}")
        z_layer = t_layer = 0
        for name, module in block_linears(loaded, int(layer)).items():
            weight = _weight_out_in(module)  # a view: edits land in the module
            score = weight.abs().float()
            if method == "wanda":
                score = score * norms[name].to(score.device).unsqueeze(0)
            if n_m is not None:
                prune = _n_m_mask(score, *n_m)
            else:
                k = int(round(ratio * weight.shape[1]))
                prune = torch.zeros_like(weight, dtype=torch.bool)
                if k > 0:
                    idx = torch.topk(score, k, dim=1, largest=False).indices  # lowest k per output row
                    prune.scatter_(1, idx, True)
            weight[prune] = 0
            z_layer += int(prune.sum())
            t_layer += weight.numel()
        per_layer[int(layer)] = z_layer / max(1, t_layer)
        zeroed += z_layer
        total += t_layer
    return {"zeroed": zeroed, "total": total, "per_layer": per_layer}


def check_n_m_fits(loaded: LoadedModel, n_m: tuple[int, int]) -> None:
    """Every block linear's input width must be a multiple of M (the pattern runs along it)."""
    m = n_m[1]
    for layer in range(loaded.components.n_layers):
        for name, module in block_linears(loaded, layer).items():
            width = _weight_out_in(module).shape[1]
            if width % m:
                raise PruningError(f"{n_m[0]}:{m} sparsity needs every input width to be a multiple of {m}; "
                                   f"{name} has {width}. Choose an M that divides it")


def _n_m_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune m - n of every m consecutive weights along the input dimension (keep the n best)."""
    out_f, in_f = score.shape
    if in_f % m:
        raise PruningError(f"{n}:{m} sparsity needs in_features divisible by {m}, got {in_f}")
    groups = score.view(out_f, in_f // m, m)
    idx = torch.topk(groups, m - n, dim=-1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.view(out_f, in_f)


@torch.no_grad()
def outlier_ratios(loaded: LoadedModel, norms: dict[str, torch.Tensor], m: float = 5.0) -> dict[int, float]:
    """OWL's layer outlier ratio: share of the layer's Wanda scores above m x their layer-wide mean."""
    result = {}
    for layer in range(loaded.components.n_layers):
        scores = torch.cat([(_weight_out_in(mod).abs().float() * norms[name].unsqueeze(0)).flatten()
                            for name, mod in block_linears(loaded, layer).items()])
        result[layer] = float((scores > m * scores.mean()).float().mean())
    return result


def allocate_ratios(target: float, importance: dict[int, float], lam: float = 0.08) -> dict[int, float]:
    """Per-layer sparsity around a mean of `target`: more important layers are pruned less.

    Importance is min-max scaled to [0, 2 lam] and centred, as OWL does with outlier ratios; the
    same rule turns Shapley layer values into ratios (SV-NUP), so the two allocations differ only
    in the importance signal. Ratios are clipped to [0, 1].
    """
    target = _check_ratio(target, "target")
    if not 0 <= lam <= 0.5:
        raise PruningError(f"lam={lam} must lie in [0, 0.5] (the spread of ratios around the target)")
    layers = sorted(importance)
    x = torch.tensor([float(importance[l]) for l in layers], dtype=torch.float64)
    span = float(x.max() - x.min())
    scaled = (x - x.min()) / span * 2 * lam if span > 0 else torch.zeros_like(x)
    keep = scaled - scaled.mean() + (1 - target)
    return {l: float(min(1.0, max(0.0, 1 - k))) for l, k in zip(layers, keep)}
