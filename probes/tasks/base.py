"""Task, TaskBatch and the tokenisation every task shares.

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

from probes.errors import ProbeError
from probes.metrics import METRICS, Metric, make_metric
from surgery.batch import TokenBatch, context_length

IGNORE = -100


class TaskError(ProbeError):
    """A task cannot be built: unknown name, bad settings, unusable text, or targets the tokenizer splits."""


# ------------------------------------------------------------------------------------ tokenizers
class Tok:
    """The few things tasks need from a tokenizer, for `transformers` tokenizers and raw `tokenizers.Tokenizer`s.

    Everything is encoded without special tokens; the tokenizer's *leading* special tokens (BOS for
    Llama, [CLS] for BERT) are put in front of every sequence, trailing ones ([SEP], EOS) never,
    because a causal model is scored at the end of the prompt. A tokenizer that adds nothing in
    front (GPT-2, SmolLM2) gets its document separator `<|endoftext|>` (else its EOS) in front
    instead: models are trained on documents that follow one, and without it the first tokens act
    as an attention sink and the model is much weaker (SmolLM2-135M induction log-prob -5.2 without,
    -2.3 with). prepend="none" turns this off; a list of ids sets the prefix explicitly.
    """

    def __init__(self, tokenizer, prepend: str | Sequence[int] = "auto"):
        if hasattr(tokenizer, "tokenizer") and not hasattr(tokenizer, "encode"):  # a LoadedModel
            if tokenizer.tokenizer is None:
                raise TaskError("this model was loaded without a tokenizer; pass one (load(..., tokenizer=...))")
            tokenizer = tokenizer.tokenizer
        if not hasattr(tokenizer, "encode"):
            raise TaskError(f"expected a tokenizer (transformers or tokenizers), got {type(tokenizer).__name__}")
        self.raw = tokenizer
        self._hf = not _is_raw_tokenizers(tokenizer)
        self.name = (getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__) if self._hf \
            else f"tokenizers.Tokenizer({type(tokenizer.model).__name__})"
        self.pad_id = self._pad_id()
        if prepend == "auto":
            self.leading = self._leading_specials() or self._document_start()
        elif prepend in ("none", None):
            self.leading = []
        elif isinstance(prepend, str):
            raise TaskError(f"prepend must be 'auto', 'none' or a list of token ids, got {prepend!r}")
        else:
            self.leading = [int(i) for i in prepend]
        self.unk_id = self._unk_id()
        self.vocab_size = tokenizer.get_vocab_size() if not self._hf else len(tokenizer)

    def encode(self, text: str) -> list[int]:
        if self._hf:
            return list(self.raw.encode(text, add_special_tokens=False))
        return list(self.raw.encode(text, add_special_tokens=False).ids)

    def decode_pieces(self, ids: Sequence[int]) -> list[str]:
        if self._hf:
            return [self.raw.decode([i]) for i in ids]
        return [self.raw.id_to_token(i) for i in ids]

    def special_ids(self) -> set[int]:
        if self._hf:
            return set(getattr(self.raw, "all_special_ids", []) or [])
        return {i for tok, i in self.raw.get_vocab(with_added_tokens=True).items()
                if tok in {t.content for t in self.raw.get_added_tokens_decoder().values() if t.special}}

    def vocab(self) -> dict[str, int]:
        return self.raw.get_vocab() if self._hf else self.raw.get_vocab(with_added_tokens=True)

    def _leading_specials(self) -> list[int]:
        probe = "hello"
        if self._hf:
            with_sp = list(self.raw.encode(probe, add_special_tokens=True))
        else:
            with_sp = list(self.raw.encode(probe, add_special_tokens=True).ids)
        without = self.encode(probe)
        for k in range(len(with_sp) - len(without) + 1):
            if with_sp[k:k + len(without)] == without:
                return with_sp[:k]
        return []

    def _document_start(self) -> list[int]:
        vocab = self.vocab()
        if "<|endoftext|>" in vocab:
            return [vocab["<|endoftext|>"]]
        eos = getattr(self.raw, "eos_token_id", None) if self._hf else None
        return [eos] if isinstance(eos, int) else []

    def _pad_id(self) -> int:
        if self._hf:
            for attr in ("pad_token_id", "eos_token_id"):
                value = getattr(self.raw, attr, None)
                if isinstance(value, int):
                    return value
            return 0
        padding = getattr(self.raw, "padding", None)
        if padding and padding.get("pad_id") is not None:
            return int(padding["pad_id"])
        for name in ("[PAD]", "<pad>", "<|endoftext|>", "</s>"):
            value = self.raw.token_to_id(name)
            if value is not None:
                return value
        return 0

    def _unk_id(self) -> int | None:
        if self._hf:
            return getattr(self.raw, "unk_token_id", None)
        unk = getattr(self.raw.model, "unk_token", None)
        return None if unk is None else self.raw.token_to_id(unk)


def _is_raw_tokenizers(tokenizer) -> bool:
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers ships with transformers
        return False
    return isinstance(tokenizer, Tokenizer)


def as_tok(tokenizer) -> Tok:
    """A Tok for any tokenizer (pass Tok(tokenizer, prepend=...) to control the prefix)."""
    return tokenizer if isinstance(tokenizer, Tok) else Tok(tokenizer)


def join_target(prompt: str, target: str, join: str | None = " ") -> tuple[str, str]:
    """Split prompt/target at a word boundary the way BPE tokenizers expect: whitespace goes with the target.

    join=" " (default): targets are words, so a space separates them from the prompt unless one of
    the two already has whitespace there. join="" concatenates as given (digits of a year).
    """
    stripped = prompt.rstrip()
    if stripped != prompt and not target[:1].isspace():
        return stripped, prompt[len(stripped):] + target
    if join and not target[:1].isspace() and not prompt[-1:].isspace():
        return prompt, join + target
    return prompt, target


def continuation(tok: Tok, prompt: str, target: str, join: str | None = " ") -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) such that prompt ids + target ids is how the tokenizer reads prompt+target."""
    prompt, target = join_target(prompt, target, join)
    p = tok.encode(prompt)
    full = tok.encode(prompt + target)
    if full[:len(p)] != p or len(full) == len(p):
        raise TaskError(f"the target {target!r} merges with the end of the prompt {prompt!r} under tokenizer "
                        f"{tok.name} (prompt alone: {tok.decode_pieces(p[-3:])}, with target: "
                        f"{tok.decode_pieces(full[-4:])}); end the prompt at a word boundary")
    return p, full[len(p):]


def single_token(tok: Tok, prompt: str, target: str, join: str | None = " ", what: str = "target",
                 why: str = "this metric") -> tuple[list[int], int]:
    """Like `continuation`, but the target must be exactly one (known) token."""
    p, t = continuation(tok, prompt, target, join)
    shown = join_target(prompt, target, join)[1]
    if len(t) != 1:
        raise TaskError(
            f"{what} {shown!r} is {len(t)} tokens {tok.decode_pieces(t)} for tokenizer {tok.name}, but {why} "
            "needs a single-token target. Choose one that is a single token (BPE tokenizers such as GPT-2 or "
            "SmolLM2 include the leading space: ' Paris'), or score it with metric='logprob', which accepts "
            "multi-token targets.")
    if tok.unk_id is not None and t[0] == tok.unk_id:
        raise TaskError(f"{what} {shown!r} is the unknown token for tokenizer {tok.name}; it is not in the vocabulary")
    return p, t[0]


def is_single_token(tok: Tok, prompt: str, target: str, join: str | None = " ") -> bool:
    try:
        single_token(tok, prompt, target, join)
        return True
    except TaskError:
        return False


# ----------------------------------------------------------------------------------- batching
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

    def fingerprint(self, metric: str | None = None) -> dict:
        """What identifies a game played on this batch: task, metric and a hash of the exact tensors.

        The hash covers token ids, positions, targets and metric data, so a store or a values file
        computed on other examples (another seed, n, tokenizer or task version) never matches.
        """
        h = hashlib.sha256()
        for t in (self.tokens.input_ids, self.tokens.attention_mask, self.tokens.score_positions,
                  self.tokens.targets, self.counterfactuals, self.token_ids, self.token_weights):
            h.update(b"-" if t is None else t.contiguous().numpy().tobytes())
        name = metric if isinstance(metric, str) else (metric.name if metric is not None else self.default_metric)
        return {"task": self.task, "metric": name, "n_examples": self.size, "batch_sha": h.hexdigest()[:16]}

    def rows(self, start: int, stop: int) -> "TaskBatch":
        """Examples start:stop, with padding trimmed to the longest of them."""
        t = self.tokens
        am = t.attention_mask[start:stop]
        if am.shape[0] == 0:
            raise TaskError(f"rows({start}, {stop}) of a batch of {self.size} is empty")
        width = int(am.sum(1).max())
        cut = lambda x: None if x is None else x[start:stop]
        tokens = TokenBatch(t.input_ids[start:stop, :width], am[:, :width], t.score_positions[start:stop],
                            cut(t.targets))
        return TaskBatch(tokens, self.task, self.metrics, cut(self.counterfactuals), cut(self.token_ids),
                         cut(self.token_weights), tuple(self.texts[start:stop]))


def build_batch(task: str, metrics: Sequence[str], rows: Sequence[Row], tok: Tok) -> TaskBatch:
    parts = collate(rows, tok.pad_id)
    return TaskBatch(parts["tokens"], task, tuple(metrics), parts["counterfactuals"], parts["token_ids"],
                     parts["token_weights"], tuple(r.text or "" for r in rows))


# --------------------------------------------------------------------------------------- tasks
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

    def fingerprint(self) -> dict:
        return {"task": self.name, "metric": self.metric_name, "n": self.n, **self.settings}

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
