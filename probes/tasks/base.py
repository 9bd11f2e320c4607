"""Task: what the model should do and how it is scored, and prompt_row for tasks built from prompts.

The tokenisation every task shares is in probes/tasks/tokens.py, the tensors (Row, TaskBatch) in
probes/tasks/batch.py, TaskError in probes/tasks/errors.py; they stay importable from here.

A task is "what the model should do, and how to score it": a seeded generator of examples, the
positions a metric reads, and its metrics (the first one is the task's natural metric). A task
becomes tensors only against a tokenizer, because which strings are single tokens depends on it:
`task.batch(tokenizer, n, seed)` returns a `TaskBatch`, whose `.tokens` is the `TokenBatch` the
engine consumes and whose `.metric()` is the metric bound to that batch's per-example data.

    task = get_task("ioi", n=32)
    tb = task.batch(loaded.tokenizer, seed=0)
    values = engine.evaluate(masks, tb.tokens, tb.metric())
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from probes.metrics import METRICS
from probes.tasks.batch import IGNORE, Row, TaskBatch, build_batch, collate  # noqa: F401  (import paths of before the split)
from probes.tasks.errors import TaskError
from probes.tasks.tokens import (Tok, as_tok, continuation, is_single_token, join_target,  # noqa: F401
                                 single_token)
from surgery.batch import context_length

Builder = Callable[[Tok, int, int], list[Row]]


@dataclass
class Task:
    """What the model should do and how it is scored.

    name:        registry name (also part of a game's fingerprint).
    build:       (tok, n, seed) -> list[Row]; seeded, so the same (tokenizer, n, seed) gives the same batch.
    metrics:     metric names this task supports; the first is its natural metric.
    n:           default number of examples (the size setting).
    scored:      which positions are scored, in words (the engine computes logits only there).
    settings:    the settings the task was built with (JSON-able; part of the fingerprint).
    """

    name: str
    build: Builder = field(repr=False)
    metrics: tuple[str, ...]
    n: int = 32
    scored: str = "the last token of each prompt"
    settings: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        self.metrics = tuple(self.metrics)
        unknown = [m for m in self.metrics if m not in METRICS]
        if not self.metrics or unknown:
            raise TaskError(f"task {self.name!r}: unknown metric(s) {unknown}; known metrics: {', '.join(METRICS)}")
        if int(self.n) < 1:
            raise TaskError(f"task {self.name!r}: n (number of examples) must be >= 1, got {self.n}")

    @property
    def metric_name(self) -> str:
        return self.metrics[0]

    def batch(self, tokenizer, n: int | None = None, seed: int = 0) -> TaskBatch:
        """n examples (default: the task's size) as one right-padded TaskBatch for this tokenizer."""
        n = self.n if n is None else int(n)
        if n < 1:
            raise TaskError(f"task {self.name!r}: n must be >= 1, got {n}")
        # Given the model itself, refuse sequences beyond its context before tokenising anything.
        limit = context_length(tokenizer) if hasattr(tokenizer, "components") else None
        seq_len = self.settings.get("seq_len")
        if limit is not None and isinstance(seq_len, int) and seq_len > limit:
            raise TaskError(f"task {self.name!r}: seq_len={seq_len} is longer than the model's context of {limit} "
                            f"tokens; use seq_len <= {limit} (--seq-len {limit})")
        tok = as_tok(tokenizer)
        rows = self.build(tok, n, seed)
        longest = max((len(r.ids) for r in rows), default=0)
        if limit is not None and longest > limit:
            raise TaskError(f"task {self.name!r}: an example is {longest} tokens long, more than the model's context "
                            f"of {limit} tokens; use shorter examples")
        return build_batch(self.name, self.metrics, rows, tok)

    def batches(self, tokenizer, n: int | None = None, seed: int = 0, batch_size: int | None = None
                ) -> list[TaskBatch]:
        """The same n examples as `batch`, split into TaskBatches of at most batch_size examples."""
        whole = self.batch(tokenizer, n, seed)
        if not batch_size or batch_size >= whole.size:
            return [whole]
        return [whole.rows(i, min(i + batch_size, whole.size)) for i in range(0, whole.size, batch_size)]

    # ------------------------------------------------------------------------ user-defined tasks
    @classmethod
    def from_prompts(cls, name: str, prompts: Sequence[str], targets: Sequence[str],
                     metric: str | Sequence[str] = "logprob", counterfactuals: Sequence[str] | None = None,
                     join: str | None = " ", description: str = "") -> "Task":
        """A task from your own prompts and the word expected after each.

        Task.from_prompts("capitals", ["The capital of France is"], ["Paris"], metric="accuracy")

        The prompt is scored at its last token. `metric` is one name or a list (first = natural).
        logprob/loss/perplexity/kl accept multi-token targets (teacher-forced, every target token
        scored); accuracy needs single-token targets, logit_diff/pair_accuracy single-token targets
        and a counterfactual (wrong) word per prompt. A space is put between prompt and target
        unless one of them already has whitespace there (join="" to concatenate as given).
        """
        metrics = (metric,) if isinstance(metric, str) else tuple(metric)
        prompts, targets = list(prompts), list(targets)
        if len(prompts) != len(targets) or not prompts:
            raise TaskError(f"task {name!r}: need as many targets as prompts (>= 1); got {len(prompts)} prompts "
                            f"and {len(targets)} targets")
        if counterfactuals is not None and len(counterfactuals) != len(prompts):
            raise TaskError(f"task {name!r}: got {len(counterfactuals)} counterfactuals for {len(prompts)} prompts")
        needs_pair = {"logit_diff", "pair_accuracy"} & set(metrics)
        if needs_pair and counterfactuals is None:
            raise TaskError(f"task {name!r}: metric(s) {sorted(needs_pair)} compare the target with a wrong "
                            "answer; pass counterfactuals=[...] (one per prompt)")
        if "prob_mass" in metrics:
            raise TaskError("prob_mass needs token sets; build such a task with Task(build=...) "
                            "(see probes/tasks/greater_than.py)")
        single = any(METRICS[m].needs_single_token for m in metrics)
        cfs = list(counterfactuals) if counterfactuals is not None else None

        def build(tok: Tok, n: int, seed: int) -> list[Row]:
            g = torch.Generator().manual_seed(seed)
            order = list(range(len(prompts)))
            if n != len(prompts):  # sample n of them (with repeats only when n exceeds the pool)
                order = _sample(len(prompts), n, g)
            rows = []
            for i in order:
                rows.append(prompt_row(tok, prompts[i], targets[i], None if cfs is None else cfs[i],
                                       single=single, join=join, why=f"metric {', '.join(metrics)}"))
            return rows

        content = json.dumps([prompts, targets, cfs, join], ensure_ascii=False)
        return cls(name, build, metrics, n=len(prompts), scored="the last token of each prompt "
                   "(and, for multi-token targets, every target token but the last)",
                   settings={"prompts": len(prompts), "content_sha": hashlib.sha256(content.encode()).hexdigest()[:16]},
                   description=description)


def _sample(pool: int, n: int, g: torch.Generator) -> list[int]:
    """n indices into a pool: a random permutation, repeated (reshuffled) when n > pool."""
    out: list[int] = []
    while len(out) < n:
        out.extend(torch.randperm(pool, generator=g).tolist())
    return out[:n]


def prompt_row(tok: Tok, prompt: str, target: str, counterfactual: str | None = None, *, single: bool,
               join: str | None = " ", why: str = "this metric") -> Row:
    """Tokenise one (prompt, target[, counterfactual]) example, scored at the end of the prompt."""
    lead = tok.leading
    if single or counterfactual is not None:
        p, t = single_token(tok, prompt, target, join, why=why)
        target_ids = [t]
    else:
        p, target_ids = continuation(tok, prompt, target, join)
    cf = None
    if counterfactual is not None:
        p2, c = single_token(tok, prompt, counterfactual, join, what="counterfactual", why=why)
        if p2 != p:
            raise TaskError(f"prompt {prompt!r} tokenises differently before {target!r} and before "
                            f"{counterfactual!r} under tokenizer {tok.name}")
        cf = [c]
    ids = lead + p + target_ids[:-1]
    start = len(lead) + len(p) - 1
    if start < 0:
        raise TaskError(f"prompt {prompt!r} is empty under tokenizer {tok.name}; a prompt needs at least one token")
    positions = list(range(start, start + len(target_ids)))
    return Row(ids, positions, target_ids, cf, text="".join(join_target(prompt, target, join)))
