"""A timing table: how long each block (and the MLP inside it) takes in a prefill, measured once.

The target-speedup planner (pruning/target_plan.py) predicts a plan's forward time from this table,
so the plan is deterministic given the seed and the table: measure the table once (`timing_table`),
save it as JSON, and pass it again (`surgery plan target --timing FILE`) to get the same plan on any
machine, whatever its load. Timings are medians over `repeats` prefill runs (after a warm-up run) of
random prompts, projected onto the vocabulary at the last position only, as `generate` and
pruning/latency.py run a prefill; forward hooks on each block and on its MLP read the clock.
`other_ms` is what is not inside any block (embeddings, final norm, the unembedding), the part no plan
removes.

Prediction (`predicted_ms`): the kept blocks' time, an MLP's time scaled by the share of its channels
kept, the attention-and-rest part of a block (block - MLP) scaled by the share of its query heads kept
(an upper bound on what removing heads saves: norms and key/value heads stay), plus `other_ms`. A
dropped block that is repaired costs nothing extra: its map is folded into the block before it.
"""

from __future__ import annotations

import torch

from pruning.errors import PruningError
from pruning.latency import clock_now, last_logits_only, median_of
from surgery.loading import LoadedModel

TABLE_KIND = "model_surgery_timing_table"


@torch.inference_mode()
def timing_table(loaded: LoadedModel, *, prompt_tokens: int = 128, repeats: int = 5, seed: int = 0) -> dict:
    """{"kind", "model", "prompt_tokens", "repeats", "total_ms", "other_ms", "layers": [{"block_ms",
    "mlp_ms"}, ...], "device", "threads"}: median prefill time of the model and of each block / MLP."""
    from pruning.plan import model_identity

    if int(prompt_tokens) < 1 or int(repeats) < 1:
        raise PruningError(f"timing table: prompt_tokens and repeats must be >= 1, got {prompt_tokens}, {repeats}")
    adapter, model = loaded.adapter, loaded.model
    blocks = adapter.blocks(model)
    mlps = [adapter.get(block, adapter.mlp_out) for block in blocks]
    clock = {}
    handles = []
    for i, (block, mlp) in enumerate(zip(blocks, mlps)):
        for key, module in ((("block", i), block), (("mlp", i), mlp)):
            handles.append(module.register_forward_pre_hook(lambda m, a, key=key: clock.__setitem__(key, clock_now(loaded.device))))
            handles.append(module.register_forward_hook(
                lambda m, a, o, key=key: clock.__setitem__(key, clock_now(loaded.device) - clock[key])))
    generator = torch.Generator().manual_seed(seed)
    last_only = last_logits_only(model) if adapter.causal else {}
    runs = []
    try:
        for run in range(repeats + 1):  # run 0 warms up
            ids = torch.randint(0, int(model.config.vocab_size), (1, prompt_tokens), generator=generator)
            start = clock_now(loaded.device)
            model(input_ids=ids.to(loaded.device), **last_only)
            total = clock_now(loaded.device) - start
            if run:
                runs.append((total, dict(clock)))
    finally:
        for handle in handles:
            handle.remove()
    n = len(blocks)
    layers = [{"block_ms": 1e3 * median_of([r[1][("block", i)] for r in runs]),
               "mlp_ms": 1e3 * median_of([r[1][("mlp", i)] for r in runs])} for i in range(n)]
    total_ms = 1e3 * median_of([r[0] for r in runs])
    return {"kind": TABLE_KIND, "model": model_identity(loaded), "prompt_tokens": int(prompt_tokens),
            "repeats": int(repeats), "seed": seed, "total_ms": total_ms,
            "other_ms": max(total_ms - sum(l["block_ms"] for l in layers), 0.0), "layers": layers,
            "prefill_logits": "last position" if last_only else "every position",
            "device": str(loaded.device), "threads": torch.get_num_threads()}


def check_timing_table(table: dict, loaded: LoadedModel) -> dict:
    """The table, checked: made for this model's layer count, every time a finite number >= 0."""
    if not isinstance(table, dict) or table.get("kind") != TABLE_KIND:
        raise PruningError("this is not a timing table (no \"kind\": \"model_surgery_timing_table\"); make one with "
                           "`surgery plan target --save-timing FILE` or pruning.timing.timing_table")
    n = loaded.components.n_layers
    layers = table.get("layers")
    if not isinstance(layers, list) or len(layers) != n:
        raise PruningError(f"the timing table has {len(layers) if isinstance(layers, list) else 'no'} layers, this "
                           f"model has {n}; measure a table on this model")
    try:
        numbers = [float(table["other_ms"])] + [float(l[k]) for l in layers for k in ("block_ms", "mlp_ms")]
    except (KeyError, TypeError, ValueError):
        raise PruningError("the timing table needs other_ms and block_ms / mlp_ms for every layer") from None
    if not all(x >= 0 and x < float("inf") for x in numbers):
        raise PruningError("the timing table holds a negative or non-finite time")
    if any(float(l["mlp_ms"]) > float(l["block_ms"]) for l in layers):
        raise PruningError("the timing table has an MLP slower than the block that holds it")
    return table


def predicted_ms(table: dict, *, dropped=(), mlp_kept: dict | None = None, heads_kept: dict | None = None) -> float:
    """Predicted forward time of a plan: kept blocks, MLPs scaled by channels kept, the rest of each
    block by query heads kept (shares in [0, 1] per layer, default 1), plus what lies outside blocks."""
    gone = set(dropped)
    total = float(table["other_ms"])
    for layer, times in enumerate(table["layers"]):
        if layer in gone:
            continue
        mlp = float(times["mlp_ms"])
        rest = float(times["block_ms"]) - mlp
        total += mlp * (mlp_kept or {}).get(layer, 1.0) + rest * (heads_kept or {}).get(layer, 1.0)
    return total


def dense_ms(table: dict) -> float:
    return predicted_ms(table)
