"""Forward passes that read a causal LM's log-probabilities of given responses, and greedy decoding from
any next-token log-probability function (the composed distribution of a coalition, in slow mode)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

Pair = tuple[Sequence[int], Sequence[int]]  # (prompt token ids, response token ids)


def _padded(pairs: Sequence[Pair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+response ids, attention mask, response-token targets and the position predicting each."""
    lengths = [len(p) + len(r) for p, r in pairs]
    width, span = max(lengths), max(len(r) for _, r in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    targets = torch.full((len(pairs), span), -100, dtype=torch.long)
    positions = torch.zeros((len(pairs), span), dtype=torch.long)
    for row, (prompt, response) in enumerate(pairs):
        seq = list(prompt) + list(response)
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
        targets[row, : len(response)] = torch.tensor(list(response), dtype=torch.long)
        positions[row, : len(response)] = torch.arange(len(prompt) - 1, len(seq) - 1)
    return ids, mask, targets, positions


def response_logprobs(model: nn.Module, pairs: Sequence[Pair], *, full_vocab: bool = False, max_rows: int = 16,
                      pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probabilities of each pair's response under `model` (as it is set up now).

    Returns (logp, targets, valid): with full_vocab=False logp is [N, T] (the log-probability of each
    response token, 0 at padding); with full_vocab=True logp is [N, T, V] (the whole next-token
    log-softmax at each response position). targets [N, T] (-100 at padding), valid bool [N, T].
    Every prompt needs at least one token (the response's first token is predicted from it)."""
    out = []
    ids, mask, targets, positions = _padded(pairs, pad_id)
    valid = targets != -100
    for start in range(0, len(pairs), max_rows):
        rows = slice(start, start + max_rows)
        logits = model(input_ids=ids[rows], attention_mask=mask[rows]).logits.float()
        picked = torch.gather(logits, 1, positions[rows].unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        logp = torch.log_softmax(picked, dim=-1)
        if not full_vocab:
            logp = torch.gather(logp, 2, targets[rows].clamp(min=0).unsqueeze(-1)).squeeze(-1)
            logp = logp.masked_fill(~valid[rows], 0.0)
        out.append(logp)
    return torch.cat(out), targets, valid


NextLogprobs = Callable[[list[list[int]]], torch.Tensor]  # sequences -> [B, V] next-token log-probabilities


def last_token_logprobs(model: nn.Module, sequences: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """[B, V] log-softmax of the next token after each sequence (right-padded batch, one forward)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    last = torch.tensor([len(s) - 1 for s in sequences])
    return torch.log_softmax(logits[torch.arange(len(sequences)), last], dim=-1)


def greedy_decode(next_logprobs: NextLogprobs, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  eos_id: int | None = None) -> list[list[int]]:
    """Greedy continuation of every prompt, one composed next-token distribution per step (no KV cache:
    the composed distribution is not any single model's, so each step reruns the models it mixes)."""
    sequences = [list(p) for p in prompts]
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        live = [i for i, d in enumerate(done) if not d]
        if not live:
            break
        tokens = next_logprobs([sequences[i] for i in live]).argmax(dim=-1).tolist()
        for i, token in zip(live, tokens):
            sequences[i].append(token)
            generated[i].append(token)
            done[i] = eos_id is not None and token == eos_id
    return generated
