"""Induction: a random token sequence repeated once; the model should copy the second half.

Each example is [leading specials] s_1 .. s_L s_1 .. s_L with the s_i drawn without repetition from
ordinary word tokens of the tokenizer. Scored positions are the second half: at the position of
s_i (second copy) the target is s_{i+1}, i = 1 .. L-1, which only an induction mechanism (find the
earlier s_i, copy what followed it) can predict. Natural metric: mean log-prob of those targets.
"""

from __future__ import annotations

import re

import torch

from probes.tasks.base import Row, Task, TaskError, Tok

_WORD = re.compile(r"^(Ġ|▁)?[A-Za-z]{3,}$")
_POOLS: dict[int, list[int]] = {}


def token_pool(tok: Tok) -> list[int]:
    """Ordinary word tokens, sorted: space-marked whole words if there are many, else letter tokens, else all non-special ids."""
    key = (id(tok.raw), tok.vocab_size, tok.name)  # id alone could be reused by a later tokenizer
    if key not in _POOLS:
        special = tok.special_ids() | {tok.pad_id}
        if tok.unk_id is not None:
            special.add(tok.unk_id)
        vocab = tok.vocab()
        words = [(t, i) for t, i in vocab.items() if _WORD.match(t) and i not in special]
        spaced = sorted(i for t, i in words if t[0] in "Ġ▁")  # whole words (BPE/SentencePiece space marker)
        pool = spaced if len(spaced) >= 1000 else sorted(i for _, i in words)
        if len(pool) < 64:
            pool = sorted(i for i in vocab.values() if i not in special)
        _POOLS[key] = pool
    return _POOLS[key]


def induction_task(n: int = 16, length: int = 16) -> Task:
    """n examples of `length` random tokens repeated once (2 * length tokens each)."""
    if length < 2:
        raise TaskError(f"induction: length (tokens per half) must be >= 2, got {length}")

    def build(tok: Tok, n: int, seed: int) -> list[Row]:
        pool = token_pool(tok)
        if len(pool) < length:
            raise TaskError(f"induction: tokenizer {tok.name} has only {len(pool)} usable tokens, fewer than "
                            f"length={length}; use a smaller length")
        g = torch.Generator().manual_seed(seed)
        pool_t = torch.tensor(pool)
        rows, lead = [], tok.leading
        for _ in range(n):
            seq = pool_t[torch.randperm(len(pool), generator=g)[:length]].tolist()
            second = len(lead) + length
            positions = list(range(second, second + length - 1))
            rows.append(Row(lead + seq + seq, positions, seq[1:]))
        return rows

    return Task("induction", build, ("logprob", "accuracy", "loss", "kl"), n=n,
                scored="the second copy of the sequence (tokens 2..L of the repeat are the targets)",
                settings={"length": length}, description=__doc__.split("\n")[0])
