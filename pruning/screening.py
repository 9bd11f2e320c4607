"""Screening: which heads are worth valuing at all, from one backward pass per calibration sequence.

Valuing 270 heads at the operating point with a few hundred evaluations is close to noise (about
one evaluation per head). Bonsai (Dery et al. 2024) limits its candidates to the units an
activation prior ranks lowest and regresses only over those. Here the prior is Michel et al.'s
expected absolute gate gradient of the LM loss, taken at the step's current model (heads already
removed gated off, in the game's ablation mode): cheap, and good at telling "surely needed" from
"maybe dispensable". The game is then played only over the candidates (the other survivors stay
present), so the same budget buys several evaluations per candidate, at the operating point where
about half of the candidates go.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from probes.metrics import make_metric
from surgery.batch import TokenBatch
from surgery.engine import AblationEngine

ScreenScores = Callable[[list[str]], dict[str, float]]


def _row(batch: TokenBatch, i: int) -> TokenBatch:
    pick = lambda t: None if t is None else t[i:i + 1]  # noqa: E731
    return TokenBatch(pick(batch.input_ids), pick(batch.attention_mask), pick(batch.score_positions),
                      pick(batch.targets))


def gate_gradient_screen(engine: AblationEngine, batch: TokenBatch, *, tasks=()) -> ScreenScores:
    """A screen for iterative_head_plan: removed -> {surviving head: E_x |d loss / d gate|}.

    engine: over every head (its mode is the removal the plan ships: mean for compensated removal);
    batch: calibration text (next-token targets). Removed heads are gated to 0, the rest to 1.
    tasks: (TaskBatch, metric name, weight) triples of the objective's task terms; each adds
    |weight| x E_example |d metric / d gate| (per example, so opposite signs never cancel). Use a
    smooth metric (probes.metrics.smooth_metric): a step metric has no gradient.
    """
    loss = make_metric("loss")
    terms = [([(_row(batch, i), loss) for i in range(batch.size)], 1.0)]
    for task_batch, metric, weight in tasks:
        rows = [task_batch.rows(i, i + 1) for i in range(task_batch.size)]
        terms.append(([(row.tokens, row.metric(metric)) for row in rows], abs(float(weight))))
    names = engine.players

    def scores(removed: list[str]) -> dict[str, float]:
        base = torch.ones(1, engine.n_players)
        gone = set(removed)
        for i, name in enumerate(names):
            if name in gone:
                base[0, i] = 0.0
        total = torch.zeros(engine.n_players, dtype=torch.float64)
        for rows, weight in terms:
            for example, metric in rows:
                gates = base.clone().requires_grad_(True)
                value = metric(engine.logits(gates, example), example)[0]
                (grad,) = torch.autograd.grad(value, gates)
                total += weight / len(rows) * grad[0].abs().double()
        return {name: float(total[i]) for i, name in enumerate(names) if name not in gone}

    scores.__name__ = "gate_gradient_screen"
    return scores


def candidates(scores: dict[str, float], n: int) -> list[str]:
    """The n heads with the smallest screen score (ties broken by name order, so runs are seeded only)."""
    names = sorted(scores)
    order = np.argsort(np.array([scores[k] for k in names]), kind="stable")
    return [names[i] for i in order[:n]]
