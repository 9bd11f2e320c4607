"""Drop layers and repair without training (ReplaceMe, 2025): a least-squares linear map per removed span,
folded into the down-projection of the block before the span, so the export is a plain checkpoint.

Pre-LN blocks (GPT-2, Llama family, GPT-NeoX, parallel residual included) end with `h = r + m`, where
m is the down-projection's output (the MLP's contribution) and r everything else the block adds to
its input. When blocks i+1..j go, block i's output should become what block j gave, y. We fit T
(hidden x hidden) so that r + m T ~= y over the calibration tokens, each token weighted by
w = 1 / mean(y^2) (the next norm sees y's direction; unweighted, the few tokens with massive
activations decide the fit: on SmolLM2, 6 dropped layers, held-out error 0.61 vs 0.49 of no repair),

    T = argmin sum_tokens w ||m T - (y - r)||^2 + lam ||T||^2 = (m'Wm + lam I)^-1 m'W(y - r),

and fold it into the down-projection: y' = m T is linear in m, so W' = T' W (nn.Linear, [out, in]) or
W T (GPT-2 Conv1D, [in, out]) and bias' = bias T. The repaired block is the same module with other
weights: nothing to load but the stock class. lam = ridge * trace(m'Wm) / hidden (scale-free; 0.1 gave
the lowest held-out error on SmolLM2 from 640 to 2,032 calibration tokens).

Post-LN blocks (BERT) end with `h = LN(a + m)`. LN is invertible up to each token's mean and scale:
to hit y we want a + m T = mu + s * (y - beta) / gamma, with mu and s the mean and scale of the token's
original pre-norm vector a + m (so the norm sees inputs of the usual size), and fit T to that target.

Every span is fitted on the dense model's hidden states in one pass over the calibration tokens (the
maps of later spans do not see the repair of earlier ones). A span starting at layer 0 has no block
before it to take the map and is refused. The map has hidden^2 entries: fewer calibration tokens than
the hidden size leave it underdetermined, and that is refused too.
"""

from __future__ import annotations

import copy as copy_module
from contextlib import ExitStack
from typing import Iterable

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from surgery.batch import TokenBatch
from surgery.cut import remove_layers
from surgery.errors import SurgeryError
from surgery.loading import LoadedModel, load
from surgery.reference import run_body

METHOD = "replaceme_linear"


def contiguous_spans(layers: Iterable[int]) -> list[tuple[int, int]]:
    """[(first, last), ...] of the maximal runs of consecutive layers."""
    spans: list[list[int]] = []
    for layer in sorted(set(int(l) for l in layers)):
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return [(a, b) for a, b in spans]


def repair_layers(loaded_or_model, layers: Iterable[int], calibration: TokenBatch | Iterable[TokenBatch], *,
                  ridge: float = 0.1, copy: bool = True) -> LoadedModel:
    """Drop `layers` and fold one least-squares map per contiguous span into the block before it.

    calibration: the tokens the maps are fitted on (a TokenBatch or several, streamed), at least as
    many real tokens as the hidden size. The record of what was fitted (spans, tokens, ridge, relative
    fit error) is kept in `config.surgery_layer_repair`, so the export says what it is.
    """
    loaded = load(loaded_or_model)
    drop = sorted({int(l) for l in layers})
    spans = _check_spans(loaded, drop)
    if ridge < 0:
        raise SurgeryError(f"ridge={ridge} must be >= 0 (a small positive value keeps the fit stable)")
    batches = [calibration] if isinstance(calibration, TokenBatch) else list(calibration)
    if not batches or not all(isinstance(b, TokenBatch) for b in batches):
        raise SurgeryError("layer repair needs calibration tokens: a TokenBatch or a list of them")
    hidden = int(loaded.model.config.hidden_size)
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    if tokens < hidden:
        raise SurgeryError(f"layer repair fits a {hidden}x{hidden} map per removed span and needs at least "
                           f"{hidden} calibration tokens (the hidden size), got {tokens}; give more calibration "
                           f"text (more or longer sequences)")
    maps, fit = fit_span_maps(loaded, spans, batches, ridge)
    model = copy_module.deepcopy(loaded.model) if copy else loaded.model
    blocks = loaded.adapter.blocks(model)
    for (first, _), transform in maps.items():
        fold_into_down_projection(blocks[first - 1].get_submodule(loaded.adapter.mlp_down), transform)
    work = LoadedModel(model, loaded.tokenizer, loaded.adapter, loaded.components, loaded.source)
    result = remove_layers(work, drop, copy=False)
    previous = list(getattr(model.config, "surgery_layer_repair", None) or [])
    model.config.surgery_layer_repair = previous + [{
        "method": METHOD, "removed_layers": drop, "ridge": ridge, "calibration_tokens": tokens,
        "spans": [{"layers": [a, b], "folded_into_layer": a - 1, "relative_fit_error": fit[(a, b)]}
                  for a, b in spans]}]
    return LoadedModel(result.model, result.tokenizer, result.adapter, result.components,
                       f"{loaded.source} [layers removed and repaired ({METHOD}): {drop}]")


@torch.no_grad()
def fit_span_maps(loaded: LoadedModel, spans: list[tuple[int, int]], batches: list[TokenBatch], ridge: float
                  ) -> tuple[dict[tuple[int, int], torch.Tensor], dict[tuple[int, int], float]]:
    """{span: T [hidden, hidden] float64} and {span: relative fit error ||m T - t||_w / ||t||_w} on the
    calibration tokens (token-weighted), where t = (target - r) is what the down-projection's output must become."""
    hidden = int(loaded.model.config.hidden_size)
    gram = {s: torch.zeros(hidden, hidden, dtype=torch.float64) for s in spans}
    cross = {s: torch.zeros(hidden, hidden, dtype=torch.float64) for s in spans}
    target_sq = {s: 0.0 for s in spans}
    for batch in batches:
        for span, (m, t, w) in span_targets(loaded, spans, batch).items():
            gram[span] += m.T @ (m * w[:, None])
            cross[span] += m.T @ (t * w[:, None])
            target_sq[span] += float((t * t * w[:, None]).sum())
    maps, fit = {}, {}
    for span in spans:
        lam = ridge * float(torch.trace(gram[span])) / hidden
        transform = torch.linalg.solve(gram[span] + lam * torch.eye(hidden, dtype=torch.float64), cross[span])
        maps[span] = transform
        # ||mT - t||^2 = T'GT - 2 T'C + t't, from the accumulated statistics (no second pass).
        residual = float(torch.sum(transform * (gram[span] @ transform)) - 2 * torch.sum(transform * cross[span]))
        fit[span] = float(max(residual + target_sq[span], 0.0) ** 0.5 / max(target_sq[span], 1e-30) ** 0.5)
    return maps, fit


@torch.no_grad()
def span_targets(loaded: LoadedModel, spans: list[tuple[int, int]], batch: TokenBatch
                 ) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{span: (m, t, w)} over the real tokens of `batch` (one dense forward): the down-projection output
    of the block before the span [N, hidden], what it must become [N, hidden], the token weights [N]."""
    batch = batch.to(loaded.device)
    seen = _capture(loaded, loaded.adapter.blocks(loaded.model), spans, batch)
    mask = batch.attention_mask.bool()
    return {span: _design(loaded, seen, span, mask) for span in spans}


def fold_into_down_projection(down: nn.Module, transform: torch.Tensor) -> None:
    """Make `down` output (its old output) @ transform: weight and bias both pass through the map."""
    weight = down.weight.detach().double()
    t = transform.to(weight.device)
    new_weight = weight @ t if isinstance(down, Conv1D) else t.T @ weight
    with torch.no_grad():
        down.weight.copy_(new_weight.to(down.weight.dtype))
        if down.bias is not None:
            down.bias.copy_((down.bias.double() @ t).to(down.bias.dtype))


# ---------------------------------------------------------------------------------------------

def _check_spans(loaded: LoadedModel, drop: list[int]) -> list[tuple[int, int]]:
    n = loaded.components.n_layers
    if not drop:
        raise SurgeryError("repair_layers needs at least one layer to drop")
    bad = [l for l in drop if not 0 <= l < n]
    if bad:
        raise SurgeryError(f"layers {bad} out of range 0..{n - 1}")
    if len(drop) == n:
        raise SurgeryError(f"removing all {n} layers leaves no model; keep at least one")
    if not loaded.adapter.mlp_down:
        raise SurgeryError(f"the {loaded.adapter.family} adapter does not name its MLP down-projection (mlp_down), "
                           f"where layer repair folds its map")
    spans = contiguous_spans(drop)
    if spans[0][0] == 0:
        raise SurgeryError(f"layer repair folds each span's map into the block before it, and the span "
                           f"{list(range(spans[0][0], spans[0][1] + 1))} starts at layer 0; keep layer 0 or drop "
                           f"these layers without repair (remove_layers)")
    return spans


def _capture(loaded: LoadedModel, blocks, spans, batch: TokenBatch) -> dict:
    """One dense forward: the down-projection output (and pre-norm input, post-LN) of each block before a
    span, and the output of each span's last block."""
    adapter = loaded.adapter
    seen: dict = {}
    before = {a - 1 for a, _ in spans}
    last = {b for _, b in spans}

    def block_out(module, args, output, layer):
        seen[("out", layer)] = (output[0] if isinstance(output, tuple) else output).double()

    with ExitStack() as stack:
        for layer in before:
            block = blocks[layer]
            stack.enter_context(block.get_submodule(adapter.mlp_down).register_forward_hook(
                lambda m, a, o, layer=layer: seen.__setitem__(("mlp", layer), o.double())))
            if adapter.mlp_post_norm:
                stack.enter_context(block.get_submodule(adapter.mlp_post_norm).register_forward_pre_hook(
                    lambda m, a, layer=layer: seen.__setitem__(("prenorm", layer), a[0].double())))
            else:
                stack.enter_context(block.register_forward_hook(lambda m, a, o, layer=layer: block_out(m, a, o, layer)))
        for layer in last:
            stack.enter_context(blocks[layer].register_forward_hook(lambda m, a, o, layer=layer: block_out(m, a, o, layer)))
        run_body(loaded, batch)
    return seen


def _design(loaded: LoadedModel, seen: dict, span: tuple[int, int], mask: torch.Tensor):
    """(m, t) over real tokens: the down-projection's output and what it must become."""
    first, last = span
    m = seen[("mlp", first - 1)]
    y = seen[("out", last)]
    if loaded.adapter.mlp_post_norm:
        z = seen[("prenorm", first - 1)]
        norm = loaded.adapter.blocks(loaded.model)[first - 1].get_submodule(loaded.adapter.mlp_post_norm)
        gamma, beta = norm.weight.double(), norm.bias.double()
        mu = z.mean(-1, keepdim=True)
        scale = (z.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        goal = mu + scale * (y - beta) / gamma  # the pre-norm vector whose norm gives y (see the module doc)
        t = goal - (z - m)
    else:
        t = y - (seen[("out", first - 1)] - m)
    # Each token weighs 1 / mean(y^2): the next block's norm sees directions, not the size of y, and a few
    # tokens with massive activations (the first token of each sequence) would otherwise decide the fit.
    weight = 1.0 / y.pow(2).mean(-1).clamp_min(1e-12)
    return m[mask], t[mask], weight[mask]
