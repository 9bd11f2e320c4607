"""The main job's pruning method: heads removed so that the model stays the model.

Why this shape (benchmarks/head_pruning.py measures it on SmolLM2-135M; the numbers are in its
results file): at 10-30% of heads, how a head is removed matters more than how it is ranked
(mean-compensated removal stays much nearer the dense perplexity than zero removal), and values
aimed at the operating point beat values averaged over every coalition size. So the default is:

1. game: LM loss on calibration text, plus (in `surgery run`, weight 0.5 each) every built-in task's
   smooth metric on prompts the evaluation never scores, heads ablated to their mean over the
   calibration text (the same means the export folds into the output-projection bias, so the game
   values the model that ships). Text alone keeps perplexity best but lets single tasks fall 0.2-0.4
   at 10% of heads; the task terms hold every task within 0.05 for ~8% more perplexity
   (benchmarks/results/head_pruning.json);
2. screen: E|d term / d gate| per term at the current model (Michel et al.), one backward per sequence;
3. value: weighted Banzhaf values of the 2k lowest-screened survivors at p = 1/2 (the other heads
   held present), so every evaluation informs every candidate, at the point where k of them go;
4. remove the k lowest, re-screen and re-value on the pruned model, in steps of at most 10%;
5. export with the removed heads' mean output folded into the bias (pruning.export).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from probes.objective import keep_model_objective, objective_game
from pruning.errors import PruningError
from pruning.iterative import iterative_head_plan
from pruning.plan import PruningPlan
from pruning.screening import gate_gradient_screen
from surgery.batch import TokenBatch
from surgery.loading import LoadedModel, fast_dtype, with_dtype

DEFAULTS = {"measure": "loss", "screen": 2.0, "max_step_fraction": 0.1, "task_weight": 0.5, "task_n": 4,
            "game_dtype": "auto", "repair_n": 64}
GAME_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def keep_model_head_plan(loaded: LoadedModel, calibration: TokenBatch, *, fraction: float, budget: int, seed: int,
                         store_dir, measure: str = DEFAULTS["measure"], screen: float = DEFAULTS["screen"],
                         max_step_fraction: float = DEFAULTS["max_step_fraction"], max_rows: int = 128,
                         min_per_layer: int = 1, tasks=(), game_dtype: torch.dtype | None = None,
                         progress=None, on_evaluated=None) -> PruningPlan:
    """A plan removing `fraction` of the heads (mean-compensated) by the method above.

    calibration: text sequences with next-token targets (e.g. the text task's batch .tokens); the
    game's mean reference and the export's compensation both come from it. budget: coalition
    evaluations in all, split evenly over ceil(fraction / max_step_fraction) steps. tasks:
    (TaskBatch, metric, weight) terms mixed into the game and the screen (probes.objective); use a
    smooth metric and prompts the evaluation never sees (calibration_task_terms). progress(step record) after each
    step; on_evaluated(n) after every batch of n new coalition evaluations (a live progress bar). game_dtype: run the
    game and the screen on a copy of the model in this dtype (torch.bfloat16 ran 3x faster than float32
    on an AVX-512 BF16 CPU, benchmarks/results/dtype_speed.json); the plan records it, the export stays
    in the model's dtype.
    """
    if not 0.0 < fraction < 1.0:
        raise PruningError(f"fraction of heads {fraction} must lie strictly between 0 and 1")
    if not 0.0 < max_step_fraction <= 1.0:
        raise PruningError(f"max_step_fraction {max_step_fraction} must lie in (0, 1]")
    n = len(loaded.components.heads)
    k = int(round(fraction * n))
    if k < 1:
        raise PruningError(f"fraction {fraction} of {n} heads removes no head; raise it to at least {1 / n:.4f}")
    steps = math.ceil(fraction / max_step_fraction - 1e-9)
    step_fraction = math.ceil(k / steps) / n
    player = with_dtype(loaded, game_dtype) if game_dtype is not None else loaded
    objective = keep_model_objective(player, calibration, measure=measure, source="calibration text", tasks=tasks)
    game = objective_game(player, objective, "heads", mode="mean", max_rows=max_rows)
    plan = iterative_head_plan(game, loaded, budget=budget, store_dir=Path(store_dir), k=k,
                               step_fraction=step_fraction, seed=seed, min_per_layer=min_per_layer,
                               screen=screen, screen_scores=gate_gradient_screen(game.engine, calibration, tasks=tasks),
                               progress=progress, on_evaluated=on_evaluated)
    plan.provenance[0]["settings"]["game_dtype"] = str(next(player.model.parameters()).dtype).removeprefix("torch.")
    return plan


def game_dtype_for(name: str, loaded: LoadedModel) -> torch.dtype:
    """The game's dtype from its setting: "auto" (bfloat16 where the device runs it natively, see
    surgery.loading.fast_dtype), "bf16", "fp32", or "model" (the model's own)."""
    if name == "auto":
        return fast_dtype(loaded.device)
    if name == "model":
        return next(loaded.model.parameters()).dtype
    if name not in GAME_DTYPES:
        raise PruningError(f"unknown game dtype {name!r}; choose auto, model, {', '.join(GAME_DTYPES)}")
    return GAME_DTYPES[name]


def calibration_task_terms(loaded: LoadedModel, names, *, n: int, weight: float, seed: int,
                           held_out: dict | None = None) -> list[tuple]:
    """(TaskBatch, smooth metric, weight) terms of the built-in tasks `names` for the game.

    n prompts per task, drawn with `seed` and never one of `held_out[task]` (the TaskBatch the
    evaluation scores; compared by token ids), so the before/after table reads prompts no game used.
    The metric is the smooth form of the task's natural one (accuracy -> log-prob, pair accuracy -> logit difference):
    a step metric would make most coalitions tie.
    """
    from probes.metrics import smooth_metric
    from probes.tasks import get_task

    terms = []
    for name in names:
        task = get_task(name)
        exclude = _example_keys((held_out or {}).get(name))
        drawn = task.batch(loaded, n=n + len(exclude), seed=seed)
        keep = [i for i, key in enumerate(_example_keys(drawn)) if key not in exclude][:n]
        if len(keep) < n:
            raise PruningError(f"task {name!r} has only {len(keep)} prompts outside the evaluation's; lower the "
                               f"game's prompts per task to {len(keep)} or fewer")
        terms.append((drawn.select(keep), smooth_metric(task.metric_name), weight))
    return terms


def _example_keys(batch) -> list[tuple]:
    """Each example's unpadded token ids (what makes two prompts the same for the model)."""
    if batch is None:
        return []
    tokens = batch.tokens
    return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(tokens.input_ids, tokens.attention_mask)]
