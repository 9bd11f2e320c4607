"""Objectives: what a pruning game's value measures, as a weighted sum of metric terms.

A task-specific game (`model_game`) scores one task. For general-purpose pruning the question is
"how much of the model is left", so `keep_model_objective` measures closeness to the unpruned
model on calibration text: the negative KL divergence of the next-token distributions (full model
vs ablated model) over every calibration token, or the negative LM loss; task batches can be mixed
in with weights. `objective_game` turns an objective into a Game whose value is
    v(S) = sum_k weight_k * sign_k * metric_k(model with the players outside S ablated, batch_k)
(sign_k = -1 for lower-is-better metrics such as KL and loss, so higher always means "better
kept"). The objective's description (measure, weights, text source, batch digests) goes into the
game fingerprint, hence into every store and values file made from it, so a plan can say what it
optimised and a store of another objective is never reused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from probes.errors import ProbeError
from probes.game import Game
from probes.metrics import KLDivergence, Metric, make_metric, metric_sign
from probes.model_game import batch_digest, metric_name, model_digest
from probes.tasks.base import Task, TaskBatch
from surgery.batch import TokenBatch
from surgery.engine import AblationEngine
from surgery.loading import load

MEASURES = ("kl", "loss")


@dataclass
class ObjectiveTerm:
    """One weighted metric on one batch. metric=None with name 'kl' is bound to the engine later."""

    name: str
    batch: TokenBatch
    weight: float
    source: str
    metric: Metric | Callable | None = None
    metric_label: str | None = None

    def describe(self) -> dict:
        label = self.metric_label or (metric_name(self.metric) if self.metric is not None else self.name)
        return {"term": self.name, "metric": label, "weight": self.weight, "source": self.source,
                "n_sequences": int(self.batch.size), "batch_digest": batch_digest(self.batch)}


@dataclass
class Objective:
    name: str
    terms: list[ObjectiveTerm] = field(default_factory=list)

    def describe(self) -> dict:
        return {"name": self.name, "terms": [t.describe() for t in self.terms]}

    @property
    def calibration_batch(self) -> TokenBatch:
        """The first term's batch: the reference of mean ablation unless the caller gives one."""
        return self.terms[0].batch


def _text_batch(text, tokenizer, n: int, seq_len: int, seed: int, source: str | None) -> tuple[TokenBatch, str]:
    """Calibration text as a TokenBatch plus a description of where it came from."""
    from probes.tasks.text import text_task

    if isinstance(text, TokenBatch):
        return text, source or f"token batch {batch_digest(text)}"
    if isinstance(text, TaskBatch):
        return text.tokens, source or f"task batch {text.task}"
    if text is None or isinstance(text, (str, Path)):
        task = text_task(path=text, n=n, seq_len=seq_len)
    elif isinstance(text, Task):
        task = text
    else:
        raise ProbeError(f"calibration text must be a text file path, a Task, a TaskBatch or a TokenBatch; got "
                         f"{type(text).__name__}")
    if tokenizer is None:
        raise ProbeError("building calibration text needs a tokenizer: this model was loaded without one; pass "
                         "tokenizer=... or give the text as a TokenBatch")
    batch = task.batch(tokenizer, n=n, seed=seed)
    settings = task.settings
    label = f"{settings.get('source', task.name)} (seq_len {settings.get('seq_len', '?')}, n {n}, seed {seed})"
    return batch.tokens, source or label


def keep_model_objective(model, text=None, *, measure: str = "kl", weight: float = 1.0, n: int = 8,
                         seq_len: int = 128, seed: int = 0, tasks: Sequence = (), tokenizer=None,
                         source: str | None = None) -> Objective:
    """Closeness to the unpruned model on calibration text, optionally mixed with task terms.

    text: a text file path, a Task (e.g. text_task(...)), a TaskBatch or TokenBatch, or None for the
        built-in corpus (probes.tasks.builtin_text). Every position with a next token is scored.
    measure: "kl" (KL(full || ablated) of the next-token distributions) or "loss" (LM loss on the
        text's own next tokens). Both are lower-is-better, so the game value is their negative.
    tasks: (task batch, metric name or Metric or None, weight) triples mixed in, e.g.
        [(factual.batch(tok), "accuracy", 0.5)]; a weight 0 term is refused (leave it out instead).
    """
    if measure not in MEASURES:
        raise ProbeError(f"unknown keep-the-model measure {measure!r}; choose one of {MEASURES}")
    loaded = load(model)
    tokenizer = tokenizer if tokenizer is not None else loaded.tokenizer
    batch, label = _text_batch(text, tokenizer, n, seq_len, seed, source)
    if measure == "loss" and batch.targets is None:
        raise ProbeError("measure='loss' needs the calibration batch's targets (next tokens); give text, not a "
                         "TokenBatch without targets")
    terms = [ObjectiveTerm(measure, batch, _weight(weight, measure), label,
                           None if measure == "kl" else make_metric("loss"), measure)]
    for item in tasks:
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ProbeError(f"each task term is (task batch, metric, weight); got {item!r}")
        task_batch, metric, w = item
        if not isinstance(task_batch, TaskBatch):
            raise ProbeError(f"a task term needs a TaskBatch (task.batch(tokenizer)), got {type(task_batch).__name__}")
        bound = task_batch.metric(metric)
        terms.append(ObjectiveTerm(task_batch.task, task_batch.tokens, _weight(w, task_batch.task),
                                   f"task {task_batch.task}", bound, bound.name))
    return Objective("keep_model" if not tasks else "keep_model+tasks", terms)


def task_objective(task_batch: TaskBatch, metric=None) -> Objective:
    """One task's metric (task-specific pruning), in the same form as keep_model_objective."""
    bound = task_batch.metric(metric)
    return Objective("task", [ObjectiveTerm(task_batch.task, task_batch.tokens, 1.0, f"task {task_batch.task}",
                                            bound, bound.name)])


def _weight(w, what: str) -> float:
    try:
        w = float(w)
    except (TypeError, ValueError):
        raise ProbeError(f"weight of objective term {what!r} must be a number, got {w!r}") from None
    if not np.isfinite(w) or w == 0:
        raise ProbeError(f"weight of objective term {what!r} must be a finite non-zero number, got {w}")
    return w


def objective_game(model, objective: Objective, players="heads", *, mode: str = "zero",
                   reference: TokenBatch | None = None, max_rows: int = 64, store=None,
                   engine: AblationEngine | None = None) -> Game:
    """A Game whose value is the objective's weighted sum; mean ablation uses the calibration text as
    reference unless one is given (one set of means for every term, as an export bias would be)."""
    if not objective.terms:
        raise ProbeError("the objective has no terms")
    if mode == "mean" and reference is None:
        reference = objective.calibration_batch
    engine = engine or AblationEngine(load(model), players, mode=mode, reference=reference, max_rows=max_rows)
    bound = []
    for term in objective.terms:
        metric = term.metric if term.metric is not None else KLDivergence(engine, term.batch.input_ids)
        sign = metric_sign(metric)
        bound.append((term, metric, sign))
    loaded = engine.loaded
    fingerprint = {"model": str(loaded.source), "model_digest": model_digest(loaded), "task": "objective",
                   "objective": objective.describe(), "metric": objective.name, "ablation": engine.mode,
                   "reference_digest": batch_digest(reference) if reference is not None else None}

    def value_function(coalitions: np.ndarray) -> np.ndarray:
        masks = torch.from_numpy(np.ascontiguousarray(coalitions, dtype=bool))
        total = np.zeros(len(coalitions))
        for term, metric, sign in bound:
            total += term.weight * sign * engine.evaluate(masks, term.batch, metric).numpy()
        return total

    def gate_value(gates: torch.Tensor) -> torch.Tensor:
        """The same value for float gates [1, n] (differentiable), for first-order priors."""
        out = 0.0
        for term, metric, sign in bound:
            out = out + term.weight * sign * metric(engine.logits(gates, term.batch), term.batch)[0]
        return out

    return Game(engine.players, value_function, fingerprint, store=store, engine=engine, gate_value=gate_value,
                objective=objective.describe())
