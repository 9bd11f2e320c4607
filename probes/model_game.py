"""A cooperative game whose players are model components and whose value is a task metric.

v(S) = metric(model with every component outside S ablated) on a fixed token batch. The value
function hands whole blocks of coalitions to the ablation engine, which runs them as one batched
forward (surgery.AblationEngine), so estimators that ask for many coalitions at once are fast.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch

from probes.game import Game
from surgery import TokenBatch
from surgery.engine import AblationEngine
from surgery.loading import LoadedModel, load


def model_digest(loaded: LoadedModel) -> str:
    """Cheap identity of the weights: shapes and sums of every parameter (a 135M model in ~0.1 s).

    Enough to tell a pruned, fine-tuned or other checkpoint from this one; not a cryptographic hash.
    The sums are taken on the CPU in float64, so the same weights give the same digest on any device
    (a GPU reduction adds in another order and can differ in the last digits).
    """
    h = hashlib.sha256(loaded.model.config.to_json_string(use_diff=True).encode())
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            w = p.detach().to("cpu", torch.float64)
            h.update(f"{name}{tuple(p.shape)}{float(w.sum()):.10e}{float(w.abs().sum()):.10e}".encode())
    return h.hexdigest()[:16]


def batch_digest(batch: TokenBatch) -> str:
    h = hashlib.sha256()
    for t in (batch.input_ids, batch.attention_mask, batch.score_positions, batch.targets):
        if t is not None:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def metric_name(metric: Callable) -> str:
    describe = getattr(metric, "describe", None)
    if callable(describe):
        return str(describe())
    return getattr(metric, "name", None) or getattr(metric, "__name__", type(metric).__name__)


def game_fingerprint(model_source: str, model_digest_: str, task_name: str | None, batch: TokenBatch,
                     metric: Callable, mode: str, sign: float, reference: TokenBatch | None) -> dict:
    """What identifies a model game: one builder for local and Ray games, so their stores interchange."""
    return {
        "model": model_source, "model_digest": model_digest_,
        "task": task_name or "custom", "batch_digest": batch_digest(batch),
        "metric": metric_name(metric), "ablation": mode, "value_sign": sign,
        "reference_digest": batch_digest(reference) if reference is not None else None,
    }


def model_game(model, batch: TokenBatch, metric: Callable, players: str | Sequence = "heads", *,
               mode: str = "zero", reference: TokenBatch | None = None, task_name: str | None = None,
               max_rows: int = 64, store=None, progress: Callable[[int], None] | None = None,
               engine: AblationEngine | None = None) -> Game:
    """Game over `players` ('heads', 'layers', 'mlps', 'attns' or component names).

    metric(logits [c, B, P, vocab], batch) -> [c]. A metric with `higher_is_better = False` (loss,
    perplexity, KL) is negated, so in every game a positive value means the component helps and a
    negative value marks a harmful (interference) component.
    store: a directory; every evaluated coalition is appended there and reused on restart.
    """
    engine = engine or AblationEngine(load(model), players, mode=mode, reference=reference, max_rows=max_rows)
    sign = 1.0 if getattr(metric, "higher_is_better", True) else -1.0
    loaded = engine.loaded
    fingerprint = game_fingerprint(str(loaded.source), model_digest(loaded), task_name, batch, metric, engine.mode,
                                   sign, reference)

    def value_function(coalitions: np.ndarray) -> np.ndarray:
        masks = torch.from_numpy(np.ascontiguousarray(coalitions, dtype=bool))
        return sign * engine.evaluate(masks, batch, metric, progress=progress).numpy()

    def gate_value(gates: torch.Tensor) -> torch.Tensor:
        """The game value for float gates [1, n] (differentiable), for first-order priors."""
        return sign * metric(engine.logits(gates, batch), batch)[0]

    game = Game(engine.players, value_function, fingerprint, store=store)
    game.engine = engine  # for callers that want logits or the ablation context too
    game.gate_value = gate_value
    game.objective = {"name": "task", "task": task_name or "custom", "metric": fingerprint["metric"]}
    return game
