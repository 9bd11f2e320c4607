"""Baseline importance scores that Shapley values are compared against (higher = more important).

Heads:
- `head_magnitude`: L2 norm of a head's query rows and output-projection columns (the weight-norm
  criterion of structured-pruning toolkits such as Torch-Pruning).
- `head_gradient`: Michel et al. (2019), "Are Sixteen Heads Really Better than One?": a gate xi_h
  on every head, importance = E_x |d loss(x) / d xi_h| at xi = 1, one backward per example.
- `head_leave_one_out`: v(all) - v(all without h), one ablated forward per head.
- `head_fluctuation`: FLAP (An et al. 2024) for heads: the variance over calibration tokens of each
  of the head's output-projection input channels times that channel's squared column norm, summed
  over the head's channels. What mean-compensated removal loses is exactly that fluctuation.
- `random_scores`: a seeded random order (the floor every criterion must beat).

Layers:
- `block_influence`: ShortGPT's BI_l = 1 - mean cos(x_l, x_{l+1}) over tokens, where x_l enters
  block l and x_{l+1} leaves it; a block that barely turns the residual stream is dispensable.
- `last_layer_scores`: drop the deepest layers first, keeping the final one (the "remove the
  deepest layers" baseline of layer-pruning papers; the final layer feeds the unembedding directly).

Every function returns {component name: score} so `pruning.policies` can build a plan from it the
same way it builds one from Values.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from probes.metrics import metric_sign, smooth_metric
from probes.values import Values, values_from_arrays
from surgery.components import head_name, layer_name
from surgery.engine import AblationEngine, leave_one_out_masks
from surgery.loading import LoadedModel


def head_magnitude(loaded: LoadedModel) -> dict[str, float]:
    """||W_Q[head rows]||^2 + ||W_O[:, head columns]||^2, square-rooted, per head."""
    adapter, comps = loaded.adapter, loaded.components
    blocks = adapter.blocks(loaded.model)
    scores: dict[str, float] = {}
    with torch.no_grad():
        for layer in range(comps.n_layers):
            block = blocks[layer]
            out = adapter.out_proj_weight(block)  # [hidden, H * D]
            n_heads = comps.n_heads[layer]
            D = out.shape[1] // n_heads
            q = adapter.query_weights(block, n_heads, D)  # [H, D, hidden]
            for h in range(n_heads):
                o_part = out[:, h * D:(h + 1) * D].float().pow(2).sum()
                scores[head_name(layer, h)] = float((o_part + q[h].float().pow(2).sum()).sqrt())
    return scores


def head_gradient(loaded: LoadedModel, task_batch, metric: str | None = None) -> dict[str, float]:
    """Michel et al. head importance: mean over examples of |d metric / d gate| at gates = 1.

    metric: default 'loss' where the task has it (as in the paper), else the task's natural metric;
    accuracies are replaced by their smooth counterpart, which has a gradient.
    """
    if metric is None:
        metric = "loss" if "loss" in task_batch.metrics else task_batch.default_metric
    metric = smooth_metric(metric)
    engine = AblationEngine(loaded, "heads")
    totals = torch.zeros(engine.n_players, dtype=torch.float64)
    for i in range(task_batch.size):
        example = task_batch.rows(i, i + 1)
        fn = example.metric(metric)
        gates = torch.ones(1, engine.n_players, requires_grad=True)
        value = fn(engine.logits(gates, example.tokens), example.tokens)[0]
        (grad,) = torch.autograd.grad(value, gates)
        totals += grad[0].abs().double()
    return dict(zip(engine.players, (totals / task_batch.size).tolist()))


def head_leave_one_out(loaded: LoadedModel, task_batch, metric: str | None = None, *, max_rows: int = 64,
                       progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """v(all) - v(all without h) for every head (zero ablation, as physical removal does)."""
    engine = AblationEngine(loaded, "heads", max_rows=max_rows)
    return _leave_one_out(engine, task_batch, metric, progress)


def _leave_one_out(engine: AblationEngine, task_batch, metric, progress) -> dict[str, float]:
    fn = task_batch.metric(metric)
    v = metric_sign(fn) * engine.evaluate(leave_one_out_masks(engine.n_players), task_batch.tokens, fn, progress=progress)
    return dict(zip(engine.players, (v[0] - v[1:]).tolist()))


def head_fluctuation(loaded: LoadedModel, batch) -> dict[str, float]:
    """FLAP's fluctuation score per head on calibration `batch` (a TokenBatch; real tokens only)."""
    from surgery.players import resolve_players
    from surgery.reference import record_sites

    comps, adapter = loaded.components, loaded.adapter
    blocks = adapter.blocks(loaded.model)
    acts = record_sites(loaded, resolve_players(comps, "heads"), batch.to(loaded.device), reduce_mean=False).heads
    real = batch.attention_mask.to(loaded.device).bool()  # [B, T]
    scores: dict[str, float] = {}
    with torch.no_grad():
        for layer, x in sorted(acts.items()):  # x: [B, T, H, D]
            tokens = x[real].double()  # [N, H, D]
            variance = tokens.var(dim=0, unbiased=False)  # [H, D]
            column_norms = adapter.out_proj_weight(blocks[layer]).double().pow(2).sum(0)  # [H * D]
            per_head = (variance * column_norms.view(variance.shape)).sum(1)
            scores.update({head_name(layer, h): float(per_head[h]) for h in range(per_head.numel())})
    return scores


def random_scores(names: list[str], seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return dict(zip(names, rng.random(len(names)).tolist()))


@torch.inference_mode()
def block_influence(loaded: LoadedModel, batch) -> dict[str, float]:
    """ShortGPT Block Influence of every layer on the real tokens of `batch` (a TokenBatch)."""
    blocks = loaded.adapter.blocks(loaded.model)
    mask = batch.attention_mask.bool().to(loaded.device)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    handles = []

    def hook(module, args, kwargs, output, layer):
        x_in = args[0] if args else kwargs["hidden_states"]
        x_out = output[0] if isinstance(output, tuple) else output
        cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)  # [B, T]
        sums[layer] = float(cos[mask].double().mean())

    try:
        for layer, block in enumerate(blocks):
            handles.append(block.register_forward_hook(
                lambda m, a, k, o, layer=layer: hook(m, a, k, o, layer), with_kwargs=True))
        loaded.model(input_ids=batch.input_ids.to(loaded.device), attention_mask=mask.long())
    finally:
        for handle in handles:
            handle.remove()
    return {layer_name(layer): float(1.0 - sums[layer]) for layer in range(len(blocks))}


def last_layer_scores(loaded: LoadedModel) -> dict[str, float]:
    """Deeper = less important, except the final layer, which is kept (scored above everything)."""
    n = loaded.components.n_layers
    scores = {layer_name(layer): float(n - layer) for layer in range(n)}
    scores[layer_name(n - 1)] = float(n + 1)
    return scores


def scores_as_values(scores: dict[str, float], method: str, loaded: LoadedModel, **settings) -> Values:
    """A baseline's scores as a Values object, so every plan policy and file format takes them.

    The fingerprint carries the model digest, so a scores file is refused on another model exactly
    like a Shapley values file is.
    """
    from probes.model_game import model_digest

    names = list(scores)
    return values_from_arrays(names, [scores[n] for n in names], estimator=method, settings=settings,
                              fingerprint={"model": loaded.source, "model_digest": model_digest(loaded),
                                           "scores": method})
