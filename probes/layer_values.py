"""Values of every layer on a task: `layer_values(model, task) -> Values` over players L0..L{n-1}.

Layers are ordered players, so the default is the sliding-window estimator: each layer's Shapley
value inside a window of `window` neighbours with everything outside the window kept. That is what
pruning by layer values needs (the model that is pruned keeps most layers) and it is exact within
each window at a fixed cost (2^window coalitions per window, ~400 evaluations for 30 layers).
Any other estimator (including the plain Shapley ones) can be named instead.
"""

from __future__ import annotations

from os import PathLike
from typing import Any, Callable

from probes.head_values import component_values
from probes.values import Values
from surgery.loading import load

DEFAULT_LAYER_ESTIMATOR = "sliding_window"


def layer_values(model, task, estimator: str | None = None, budget: int | None = None, seed: int | None = 0,
                 store: str | PathLike | None = None, n_examples: int | None = None, mode: str = "zero", *,
                 metric: str | Callable | None = None, tokenizer=None, task_seed: int = 0, max_rows: int = 64,
                 progress: Callable[[int], None] | None = None, game_builder: Callable | None = None,
                 **settings: Any) -> Values:
    """Value of every layer of `model` on `task` (same arguments as probes.head_values).

    A positive value means the layer helps the task; with a loss metric the game is negated, so
    the sign convention is the same as for head values.
    """
    loaded = load(model) if tokenizer is None else load(model, tokenizer=tokenizer)
    return component_values(loaded, task, "layers", estimator or DEFAULT_LAYER_ESTIMATOR, budget, seed, store,
                            n_examples, mode, metric, tokenizer, task_seed, max_rows, progress, game_builder,
                            settings)
