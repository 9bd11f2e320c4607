"""Before/after measurements: perplexity on text, task scores, parameters, bytes, forward time."""

from __future__ import annotations

import math
import time
from typing import Iterable

import torch

from surgery.batch import TokenBatch
from surgery.cut import parameter_count as surgery_parameter_count
from surgery.engine import AblationEngine
from surgery.loading import LoadedModel


def parameter_count(loaded: LoadedModel) -> dict:
    params = list(loaded.model.parameters())  # shared (tied) parameters are yielded once
    total = surgery_parameter_count(loaded.model)
    nonzero = sum(int((p != 0).sum()) for p in params)
    return {"parameters": total, "nonzero_parameters": nonzero,
            "parameter_bytes": sum(p.numel() * p.element_size() for p in params)}


@torch.inference_mode()
def next_token_loss(loaded: LoadedModel, batches: Iterable[TokenBatch]) -> dict:
    """Mean next-token loss and perplexity over every scored target token."""
    engine = AblationEngine(loaded, "layers")
    ones = torch.ones(1, engine.n_players, dtype=torch.bool)
    total, count = 0.0, 0
    for batch in batches:
        logp = engine.logits(ones, batch)[0].float().log_softmax(-1)  # [B, P, V]
        tgt = batch.targets.to(logp.device)
        valid = tgt >= 0
        picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total -= float(picked[valid].sum())
        count += int(valid.sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


@torch.inference_mode()
def task_score(loaded: LoadedModel, task_batch, metric: str | None = None) -> float:
    engine = AblationEngine(loaded, "layers")
    ones = torch.ones(1, engine.n_players, dtype=torch.bool)
    return float(engine.evaluate(ones, task_batch.tokens, task_batch.metric(metric))[0])


@torch.inference_mode()
def forward_seconds(loaded: LoadedModel, batch: TokenBatch, repeats: int = 3) -> float:
    """Median wall time of one full forward of `batch`."""
    kwargs = dict(input_ids=batch.input_ids.to(loaded.device), attention_mask=batch.attention_mask.to(loaded.device))
    loaded.model(**kwargs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loaded.model(**kwargs)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
