"""Before/after measurements: perplexity on text, task scores, parameters, bytes, forward time."""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Sequence

import torch

from surgery.batch import TokenBatch
from surgery.components import parse_head_name
from surgery.cut import parameter_count as surgery_parameter_count
from surgery.engine import AblationEngine
from surgery.loading import LoadedModel

# Built-in tasks and the accuracy-like metric `surgery eval` (and evaluate_model) reports for each.
EVAL_METRICS = {"induction": "accuracy", "ioi": "pair_accuracy", "factual": "accuracy",
                "agreement": "pair_accuracy", "greater_than": "prob_mass"}


def size_report(loaded: LoadedModel) -> dict:
    """Parameters (tied ones once), nonzero parameters and their bytes: the size columns of an evaluation."""
    params = list(loaded.model.parameters())  # shared (tied) parameters are yielded once
    total = surgery_parameter_count(loaded.model)
    nonzero = sum(int((p != 0).sum()) for p in params)
    return {"parameters": total, "nonzero_parameters": nonzero,
            "parameter_bytes": sum(p.numel() * p.element_size() for p in params)}


@torch.inference_mode()
def sequence_losses(loaded: LoadedModel, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token loss, number of scored tokens) per sequence, float64 [B] each.

    Per-sequence sums let a benchmark tell a real difference between two models from noise: the
    paired difference of two models on the same sequences has a standard error.
    """
    engine = AblationEngine(loaded, "layers")
    ones = torch.ones(1, engine.n_players, dtype=torch.bool)
    logp = engine.logits(ones, batch)[0].float().log_softmax(-1)  # [B, P, V]
    tgt = batch.targets.to(logp.device)
    valid = tgt >= 0
    picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (-(picked * valid).sum(-1)).double().cpu(), valid.sum(-1).double().cpu()


def next_token_loss(loaded: LoadedModel, batches: Iterable[TokenBatch]) -> dict:
    """Mean next-token loss and perplexity over every scored target token."""
    total, count = 0.0, 0
    for batch in batches:
        sums, counts = sequence_losses(loaded, batch)
        total, count = total + float(sums.sum()), count + int(counts.sum())
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


@torch.inference_mode()
def masked_logits(loaded: LoadedModel, plan, batch: TokenBatch, calibration: TokenBatch | None = None
                  ) -> torch.Tensor:
    """Logits [B, P, V] of the ORIGINAL model with the plan's heads and layers ablated by hooks.

    This is what a physically cut export must reproduce (zero ablation of a head = its output
    columns removed; a skipped layer = the block removed; a mean-compensated plan = mean ablation
    with `calibration` as the reference batch). Sparsity has no hook equivalent.
    """
    if plan.sparsity:
        raise ValueError("masked_logits covers head and layer removal; compare sparsity against apply_plan")
    dropped = set(plan.layers)
    players = [h for h in plan.heads if parse_head_name(h)[0] not in dropped] + [f"L{l}" for l in plan.layers]
    if not players:
        return plain_logits(loaded.model, batch)
    mode = "mean" if getattr(plan, "removal_mode", "zero") == "mean_compensated" else "zero"
    if mode == "mean" and calibration is None:
        raise ValueError("a mean-compensated plan is mean ablation: pass the calibration batch it was exported with")
    engine = AblationEngine(loaded, players, mode=mode, reference=calibration)
    return engine.logits(torch.zeros(1, len(players), dtype=torch.bool), batch)[0]


@torch.inference_mode()
def plain_logits(model, batch: TokenBatch) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
    pos = batch.score_positions.to(device)
    return out.gather(1, pos.unsqueeze(-1).expand(-1, -1, out.shape[-1]))


def exported_logits(export_dir, batch: TokenBatch, trust_remote_code: bool) -> tuple[torch.Tensor, object]:
    """Reload an export with plain transformers (what users do) and return its logits [B, P, V] and model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(export_dir), trust_remote_code=trust_remote_code,
                                                 dtype=torch.float32).eval()
    return plain_logits(model, batch), model


def evaluate_model(loaded: LoadedModel, tasks: Sequence[str] | None = None, *, text: str | None = None, n: int = 16,
                   seq_len: int = 128, seed: int = 0, prompt_tokens: int = 128, new_tokens: int = 16,
                   progress: Callable[[int], None] | None = None) -> dict:
    """Perplexity on text and the accuracy-like metric of each task (default: every one in
    EVAL_METRICS), plus size, forward time and latency (prefill of a prompt, per-token generation
    with the cache: pruning/latency.py). What `surgery eval` prints and writes.

    text: a text file (default: the built-in standard-library documentation); n sequences of
    seq_len tokens, and n examples per task, drawn with `seed`. progress(1) after each of the
    len(tasks) + 1 evaluations.
    """
    from probes.tasks import get_task
    from pruning.latency import measure_latency

    tasks = list(EVAL_METRICS) if tasks is None else list(tasks)
    results: dict = {"model": str(loaded.source), **size_report(loaded)}
    text_batch = get_task("text", path=text, n=n, seq_len=seq_len).batch(loaded, seed=seed)
    results["text"] = next_token_loss(loaded, [text_batch.tokens])
    results["text"]["source"] = text or "builtin standard-library documentation"
    results["text"]["sequences"] = text_batch.size
    results["text"]["sequences_requested"] = n
    results["text"]["seq_len"] = seq_len
    if progress is not None:
        progress(1)
    scores = {}
    for name in tasks:
        tb = get_task(name, n=n).batch(loaded, seed=seed)
        scores[name] = {"metric": EVAL_METRICS.get(name, tb.default_metric),
                        "value": task_score(loaded, tb, EVAL_METRICS.get(name))}
        if progress is not None:
            progress(1)
    results["tasks"] = scores
    results["forward_seconds"] = forward_seconds(loaded, text_batch.tokens)
    results["latency"] = measure_latency(loaded, prompt_tokens=prompt_tokens, new_tokens=new_tokens, seed=seed)
    return results
