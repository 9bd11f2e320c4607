"""A cooperative game whose players are model components and whose value is a task metric.

v(S) = metric(model with every component outside S ablated) on a fixed token batch. The value
function hands whole blocks of coalitions to the ablation engine, which runs them as one batched
forward (surgery.AblationEngine), so estimators that ask for many coalitions at once are fast.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Sequence

import numpy as np
import torch

from probes.game import Game
from probes.metrics import metric_sign
from surgery import TokenBatch
from surgery.engine import AblationEngine
from surgery.loading import LoadedModel, load


# Digests carry their scheme, so a file written with an older scheme is recognised rather than
# reported as "another model". Scheme 1 (no prefix, 16 hex digits) summed each tensor, which cannot
# see the order of heads inside a matrix; it is refused wherever weights are verified.
DIGEST_SCHEME = "w2"
_LEGACY_DIGEST = re.compile(r"^[0-9a-f]{16}$")


def model_digest(loaded: LoadedModel) -> str:
    """Identity of the weights, order included: `w2:` + 20 hex digits of a sha256.

    Hashes the config, then per parameter its name, shape, dtype and every byte of its data. A
    permutation of rows or columns (two heads swapped inside q_proj/o_proj) changes it, unlike the
    sums of scheme 1. Hashing all bytes is also the fast choice: faster than the float64 sums it
    replaces (a strided sample was slower still, since gathering it copies). Bytes are
    device-independent, so the digest is too;
    the same weights in another dtype are other bytes and get another digest.
    """
    h = hashlib.sha256(loaded.model.config.to_json_string(use_diff=True).encode())
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
            data = p.detach().to("cpu").contiguous().reshape(-1)
            h.update(data.view(torch.uint8).numpy())
    return f"{DIGEST_SCHEME}:{h.hexdigest()[:20]}"


def is_legacy_digest(digest) -> bool:
    """True for a digest of scheme 1 (sums only, blind to head order): recompute what carries it."""
    return isinstance(digest, str) and bool(_LEGACY_DIGEST.match(digest))


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
               engine: AblationEngine | None = None, batch_size: int | None = None) -> Game:
    """Game over `players` ('heads', 'layers', 'mlps', 'attns' or component names).

    metric(logits [c, B, P, vocab], batch) -> [c]. A metric with `higher_is_better = False` (loss,
    perplexity, KL) is negated, so in every game a positive value means the component helps and a
    negative value marks a harmful (interference) component.
    store: a directory; every evaluated coalition is appended there and reused on restart.
    batch_size: most coalitions per value-function call (the store persists after each; see Game).
    """
    engine = engine or AblationEngine(load(model), players, mode=mode, reference=reference, max_rows=max_rows)
    sign = metric_sign(metric)
    loaded = engine.loaded
    fingerprint = game_fingerprint(str(loaded.source), model_digest(loaded), task_name, batch, metric, engine.mode,
                                   sign, reference)

    def value_function(coalitions: np.ndarray) -> np.ndarray:
        masks = torch.from_numpy(np.ascontiguousarray(coalitions, dtype=bool))
        return sign * engine.evaluate(masks, batch, metric, progress=progress).numpy()

    def gate_value(gates: torch.Tensor) -> torch.Tensor:
        """The game value for float gates [1, n] (differentiable), for first-order priors."""
        return sign * metric(engine.logits(gates, batch), batch)[0]

    return Game(engine.players, value_function, fingerprint, store=store, batch_size=batch_size, engine=engine,
                gate_value=gate_value,
                objective={"name": "task", "task": task_name or "custom", "metric": fingerprint["metric"]})
