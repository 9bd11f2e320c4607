"""The input game: players are spans of a prompt, the value is how well the model predicts a target.

v(S) = log p(target | prompt with the spans outside S removed), teacher-forced, summed over the
target's tokens (or their mean, one token's log-prob, or a user metric of the target logits). The
game is a probes.Game, so it streams to the coalition store and every estimator works on it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from probes.errors import ProbeError
from probes.game import Game
from probes.inputs.prompt import DEFAULT_NEW_TOKENS, prepare_prompt
from probes.inputs.removal import make_removal
from probes.model_game import metric_name, model_digest
from surgery.loading import load

VALUE_METRICS = ("total", "mean")


class InputGame(Game):
    """A Game over prompt spans that also keeps what built it: `prepared` (text, spans, token ids,
    target), `removal` (the bound removal mode) and `per_token(coalitions)` -> [m, K] target log-probs."""

    def __init__(self, players, value_function, fingerprint=None, *, prepared=None, removal=None,
                 per_token: Callable | None = None, **game_options) -> None:
        super().__init__(players, value_function, fingerprint, **game_options)
        self.prepared = prepared
        self.removal = removal
        self.per_token = per_token


def input_game(model, prompt: str, target: str | Sequence[int] | None = None, players="words", *,
               removal: str = "replace", metric: str | int | Callable = "total", filler="pad",
               embedding_mode: str = "zero", reference: str | None = None, chat: bool = False,
               include_special: bool = False, max_new_tokens: int = DEFAULT_NEW_TOKENS, max_rows: int = 64,
               store=None, reuse_prefix: bool | None = None, dtype: str | torch.dtype | None = None) -> Game:
    """A Game whose players are the prompt's `players` and whose value is the target's log-probability.

    players: 'tokens' | 'words' | 'sentences' | a compiled regex | [(start, end), ...] char offsets.
    removal: 'drop' | 'replace' (filler=) | 'attention' | 'embedding' (embedding_mode=, reference=);
        see probes.inputs.removal.
    metric: 'total' (sum of the target tokens' log-probs), 'mean', an int k (target token k alone),
        or a callable metric(logits [m, K, vocab], targets [m, K]) -> [m] (e.g. a judge's logit).
    target: the continuation to score; None = the model's greedy continuation (max_new_tokens).
    max_rows: coalitions per batched forward (memory bound). store: a directory for the resumable store.
    reuse_prefix: run the tokens before the first player once (KV cache) in the position-keeping
        removals; None = when that saves at least MIN_SHARED_PREFIX tokens per coalition.
    dtype: 'float32' | 'bfloat16' (or a torch dtype) to load `model` in when it is a name or path; a
        loaded model keeps its own. The fingerprint (and so the Values file) records the dtype played in.
        bfloat16 is a different game: 1.5-2.4x the coalitions/s of float32 on this project's CPU (bf16
        units; benchmarks/results/input_values.json, "speed"); coalition values within ~0.1 nats, but
        small value differences move: exact values of a 7-word prompt differ by 37% (Spearman 0.86).
    The game also offers `per_token(coalitions)` -> [m, K] log-probs and `prepared` (text, spans, tokens).
    """
    loaded = _load_in(model, dtype)
    prep = prepare_prompt(loaded, prompt, target, players, chat=chat, include_special=include_special,
                          max_new_tokens=max_new_tokens)
    logits_fn = metric if callable(metric) else None
    reduce = _reducer(metric, len(prep.target))
    removal_mode = make_removal(loaded, prep, removal, filler=filler, embedding_mode=embedding_mode,
                                reference=reference, logits_fn=logits_fn, reuse_prefix=reuse_prefix)
    if max_rows < 1:
        raise ProbeError(f"max_rows must be >= 1 coalitions per forward, got {max_rows}")

    def per_token(coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.asarray(coalitions, dtype=bool).reshape(-1, len(prep.spans))
        return removal_mode.logprobs(coalitions, max_rows).numpy()

    def value_function(coalitions: np.ndarray) -> np.ndarray:
        return reduce(per_token(coalitions))

    fingerprint = {
        "model": str(loaded.source), "model_digest": model_digest(loaded), "kind": "input",
        "prompt_digest": hashlib.sha256(prep.text.encode()).hexdigest()[:16], "chat": chat,
        "target_ids": prep.target.tolist(), "players_unit": players if isinstance(players, str) else "spans",
        "metric": metric_name(metric) if callable(metric) else str(metric), **removal_mode.describe(),
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
    }
    objective = {"name": "input", "metric": fingerprint["metric"], "target": prep.target_text}
    return InputGame(prep.names, value_function, fingerprint, batch_size=max(max_rows, 1) * 16, store=store,
                     objective=objective, prepared=prep, removal=removal_mode,
                     per_token=per_token if logits_fn is None else _no_per_token)


def _load_in(model, dtype):
    if dtype is None:
        return load(model)
    wanted = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(wanted, torch.dtype) or not wanted.is_floating_point:
        raise ProbeError(f"dtype {dtype!r} is not a floating-point torch dtype; use 'float32' or 'bfloat16'")
    if isinstance(model, (str, Path)):
        return load(model, dtype=wanted)
    loaded = load(model)
    have = next(loaded.model.parameters()).dtype
    if have != wanted:
        raise ProbeError(f"the model is already loaded in {have}, not {wanted}; load it with "
                         f"surgery.load(..., dtype=torch.{str(wanted).removeprefix('torch.')}) or drop dtype=")
    return loaded


def _reducer(metric, n_target: int):
    if callable(metric):
        return lambda values: values.reshape(-1)
    if isinstance(metric, (int, np.integer)) and not isinstance(metric, bool):
        if not -n_target <= metric < n_target:
            raise ProbeError(f"metric={metric} names target token {metric}, but the target has {n_target} tokens; "
                             f"use an index in [0, {n_target - 1}]")
        return lambda logp: logp[:, metric]
    if metric == "total":
        return lambda logp: logp.sum(axis=1)
    if metric == "mean":
        return lambda logp: logp.mean(axis=1)
    raise ProbeError(f"unknown metric {metric!r}; use 'total', 'mean', a target token index, or a callable "
                     "metric(logits, targets) -> [m]")


def _no_per_token(coalitions):
    raise ProbeError("per_token log-probs are not defined for a user metric; build the game with metric='total'")


def input_values(model, prompt: str, target=None, players="words", *, estimator: str | None = "exact",
                 budget: int | None = None, seed: int | None = 0, **game_options):
    """Values of the prompt's players (a `Values`, details holding the text and spans for rendering).

    estimator: 'exact' (default; up to 20 players) or any probes.estimators name with a budget."""
    from probes.estimators import get_estimator
    from probes.inputs.render import span_details

    game = input_game(model, prompt, target, players, **game_options)
    values = get_estimator(estimator)(game, budget=budget, seed=seed)
    values.details.update(span_details(game.prepared))
    return values
