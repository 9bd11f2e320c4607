"""Examples as tensors: Row (one tokenised example), collate (right padding) and TaskBatch.

    tb = task.batch(loaded.tokenizer, seed=0)     # a TaskBatch
    values = engine.evaluate(masks, tb.tokens, tb.metric())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from probes.metrics import METRICS, Metric, make_metric
from probes.tasks.errors import TaskError
from probes.tasks.tokens import Tok
from surgery.batch import TokenBatch

IGNORE = -100


@dataclass
class Row:
    """One example as token ids: the sequence, its scored positions and their targets."""

    ids: list[int]
    positions: list[int]
    targets: list[int]
    counterfactuals: list[int] | None = None
    token_ids: list[list[int]] | None = None      # per position, a token set (prob_mass)
    token_weights: list[list[float]] | None = None
    text: str | None = None


def collate(rows: Sequence[Row], pad_id: int) -> dict:
    """Right-pad rows into tensors. Ragged position lists are padded with their last position and target -100."""
    if not rows:
        raise TaskError("a task batch needs at least one example (n >= 1)")
    B = len(rows)
    T = max(len(r.ids) for r in rows)
    P = max(len(r.positions) for r in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    am = torch.zeros((B, T), dtype=torch.long)
    pos = torch.zeros((B, P), dtype=torch.long)
    tgt = torch.full((B, P), IGNORE, dtype=torch.long)
    cf = torch.full((B, P), IGNORE, dtype=torch.long) if any(r.counterfactuals is not None for r in rows) else None
    K = max((len(s) for r in rows for s in (r.token_ids or [])), default=0)
    tok_ids = torch.zeros((B, P, K), dtype=torch.long) if K else None
    tok_w = torch.zeros((B, P, K), dtype=torch.float32) if K else None
    for b, r in enumerate(rows):
        n, p = len(r.ids), len(r.positions)
        if not p or max(r.positions) >= n or min(r.positions) < 0:
            raise TaskError(f"example {b} scores positions {r.positions} outside its {n} tokens")
        ids[b, :n] = torch.tensor(r.ids)
        am[b, :n] = 1
        pos[b, :p] = torch.tensor(r.positions)
        pos[b, p:] = r.positions[-1]
        tgt[b, :p] = torch.tensor(r.targets)
        if cf is not None and r.counterfactuals is not None:
            cf[b, :p] = torch.tensor(r.counterfactuals)
        if tok_ids is not None and r.token_ids is not None:
            for j, (s, w) in enumerate(zip(r.token_ids, r.token_weights)):
                tok_ids[b, j, :len(s)] = torch.tensor(s, dtype=torch.long)
                tok_w[b, j, :len(w)] = torch.tensor(w, dtype=torch.float32)
    return dict(tokens=TokenBatch(ids, am, pos, tgt), counterfactuals=cf, token_ids=tok_ids, token_weights=tok_w)


@dataclass(frozen=True)
class TaskBatch:
    """A task's examples as tensors for one tokenizer, plus what its metrics need beyond the targets.

    tokens:          the TokenBatch the engine runs (score_positions = where logits are computed).
    counterfactuals: [B, P] the "wrong" token per scored position (IOI: the subject name; agreement:
                     the verb in the other number), -100 where none. Used by logit_diff/pair_accuracy.
    token_ids, token_weights: [B, P, K] signed token sets for prob_mass (greater-than: +1 later
                     years, -1 earlier ones, 0 padding).
    texts:           the examples as text, for inspection.
    """

    tokens: TokenBatch
    task: str
    metrics: tuple[str, ...]
    counterfactuals: torch.Tensor | None = None
    token_ids: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    texts: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return self.tokens.size

    @property
    def default_metric(self) -> str:
        return self.metrics[0]

    def metric(self, name: str | None = None, *, clean=None) -> Metric:
        """The metric `name` (default: the task's natural one) bound to this batch.

        clean: for 'kl', the unablated logits [B, P, vocab], a callable batch -> logits, or the engine.
        """
        name = name or self.default_metric
        if isinstance(name, Metric):
            return name
        if name not in METRICS:
            raise TaskError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
        return make_metric(name, counterfactuals=self.counterfactuals, token_ids=self.token_ids,
                           weights=self.token_weights, clean=clean, input_ids=self.tokens.input_ids)

    def rows(self, start: int, stop: int) -> "TaskBatch":
        """Examples start:stop, with padding trimmed to the longest of them."""
        if not 0 <= start < min(stop, self.size):
            raise TaskError(f"rows({start}, {stop}) of a batch of {self.size} is empty")
        return self.select(range(start, min(stop, self.size)))

    def select(self, indices: Sequence[int]) -> "TaskBatch":
        """The examples at `indices` (in that order), with padding trimmed to the longest of them."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        if index.numel() == 0:
            raise TaskError(f"select() of no examples from a batch of {self.size}")
        t = self.tokens
        am = t.attention_mask[index]
        width = int(am.sum(1).max())
        cut = lambda x: None if x is None else x[index]  # noqa: E731
        tokens = TokenBatch(t.input_ids[index, :width], am[:, :width], t.score_positions[index], cut(t.targets))
        return TaskBatch(tokens, self.task, self.metrics, cut(self.counterfactuals), cut(self.token_ids),
                         cut(self.token_weights), tuple(self.texts[i] for i in index.tolist()) if self.texts else ())


def build_batch(task: str, metrics: Sequence[str], rows: Sequence[Row], tok: Tok) -> TaskBatch:
    parts = collate(rows, tok.pad_id)
    return TaskBatch(parts["tokens"], task, tuple(metrics), parts["counterfactuals"], parts["token_ids"],
                     parts["token_weights"], tuple(r.text or "" for r in rows))
