"""The main job's pruning method: heads removed so that the model stays the model.

Why this shape (benchmarks/head_pruning.py measures it on SmolLM2-135M; the numbers are in its
results file): at 10-30% of heads, how a head is removed matters more than how it is ranked
(mean-compensated removal stays much nearer the dense perplexity than zero removal), and values
aimed at the operating point beat values averaged over every coalition size. So the default is:

1. game: LM loss on calibration text, heads ablated to their mean over that text (the same means
   the export folds into the output-projection bias, so the game values the model that ships);
2. screen: E|d loss / d gate| at the current model (Michel et al.), one backward per sequence;
3. value: weighted Banzhaf values of the 2k lowest-screened survivors at p = 1/2 (the other heads
   held present), so every evaluation informs every candidate, at the point where k of them go;
4. remove the k lowest, re-screen and re-value on the pruned model, in steps of at most 10%;
5. export with the removed heads' mean output folded into the bias (pruning.export).
"""

from __future__ import annotations

import math
from pathlib import Path

from probes.objective import keep_model_objective, objective_game
from pruning.errors import PruningError
from pruning.iterative import iterative_head_plan
from pruning.plan import PruningPlan
from pruning.screening import gate_gradient_screen
from surgery.batch import TokenBatch
from surgery.loading import LoadedModel

DEFAULTS = {"measure": "loss", "screen": 2.0, "max_step_fraction": 0.1}


def keep_model_head_plan(loaded: LoadedModel, calibration: TokenBatch, *, fraction: float, budget: int, seed: int,
                         store_dir, measure: str = DEFAULTS["measure"], screen: float = DEFAULTS["screen"],
                         max_step_fraction: float = DEFAULTS["max_step_fraction"], max_rows: int = 128,
                         min_per_layer: int = 1, progress=None) -> PruningPlan:
    """A plan removing `fraction` of the heads (mean-compensated) by the method above.

    calibration: text sequences with next-token targets (e.g. the text task's batch .tokens); the
    game's mean reference and the export's compensation both come from it. budget: coalition
    evaluations in all, split evenly over ceil(fraction / max_step_fraction) steps.
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
    objective = keep_model_objective(loaded, calibration, measure=measure, source="calibration text")
    game = objective_game(loaded, objective, "heads", mode="mean", max_rows=max_rows)
    return iterative_head_plan(game, loaded, budget=budget, store_dir=Path(store_dir), k=k,
                               step_fraction=step_fraction, seed=seed, min_per_layer=min_per_layer,
                               screen=screen, screen_scores=gate_gradient_screen(game.engine, calibration),
                               progress=progress)
