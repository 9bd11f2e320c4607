"""A prompt made ready for an input game: the text the model reads, its players, tokens and target.

Special tokens (BOS, chat-template markers) and template text are never players unless
`include_special=True`: only characters of the user's prompt can be removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from probes.errors import ProbeError
from probes.inputs.spans import Span, char_spans, owners_of_tokens, regex_spans, shift, span_names, split_text

DEFAULT_NEW_TOKENS = 8


@dataclass
class PreparedPrompt:
    """text: what the model reads (the prompt, or the prompt inside a chat template).
    spans: the players, as char offsets into `text`; names: their unique names.
    ids [T]: tokens of `text`; offsets: their char offsets; owners [T]: player index per token, -1 = none.
    target [K]: target token ids. start_id: the context token used when a coalition keeps no token."""

    text: str
    prompt: str
    spans: list[Span]
    names: list[str]
    ids: torch.Tensor
    offsets: list[tuple[int, int]]
    owners: torch.Tensor
    target: torch.Tensor
    target_text: str
    add_special_tokens: bool
    start_id: int | None


def tokenizer_of(loaded):
    tok = getattr(loaded, "tokenizer", None)
    if tok is None:
        raise ProbeError(f"{loaded.source} has no tokenizer; load it with surgery.load(model, tokenizer=...)")
    if not getattr(tok, "is_fast", False):
        raise ProbeError("input players need a fast tokenizer (character offsets); load the model's "
                         "tokenizers-backed tokenizer (use_fast=True)")
    return tok


def prepare_prompt(loaded, prompt: str, target: str | Sequence[int] | None = None, players="words", *,
                   chat: bool = False, include_special: bool = False,
                   max_new_tokens: int = DEFAULT_NEW_TOKENS) -> PreparedPrompt:
    """Tokenise `prompt` (inside the chat template when chat=True), find its players, fix the target.

    players: 'tokens', 'words', 'sentences', a compiled regex (each match a player), or a list of
    (start, end) character offsets into `prompt`. target: text, token ids, or None to generate
    `max_new_tokens` greedily from the full prompt once."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ProbeError("the prompt is empty; give the text whose parts should be valued (prompt='...')")
    tok = tokenizer_of(loaded)
    text, offset, add_special = prompt, 0, True
    if chat:
        if not getattr(tok, "chat_template", None):
            raise ProbeError(f"{loaded.source}'s tokenizer has no chat template; leave chat=False")
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        offset, add_special = text.index(prompt), False
    encoded = tok(text, return_offsets_mapping=True, add_special_tokens=add_special)
    ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
    offsets = [tuple(map(int, o)) for o in encoded["offset_mapping"]]
    spans = _player_spans(prompt, players, offsets, offset, text)
    if include_special:
        spans = sorted(spans + _special_spans(text, offsets, ids, tok, spans), key=lambda s: s.start)
    if not spans:
        raise ProbeError(f"the prompt has no {players if isinstance(players, str) else 'given'} players; "
                         "check the prompt or the players argument")
    owners = torch.tensor(owners_of_tokens(spans, offsets), dtype=torch.long)
    empty = sorted(set(range(len(spans))) - set(owners.tolist()))
    if empty:
        raise ProbeError(f"span(s) {[(spans[i].start - offset, spans[i].end - offset) for i in empty]} cover no "
                         "token of their own (the tokenizer merges them into a neighbour); widen them to token "
                         "boundaries or use players='tokens'")
    start_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    target_ids, target_text = _target_ids(loaded, tok, ids, target, max_new_tokens)
    return PreparedPrompt(text, prompt, spans, span_names(spans), ids, offsets, owners, target_ids, target_text,
                          add_special, start_id)


def _player_spans(prompt: str, players, offsets, offset: int, text: str) -> list[Span]:
    if isinstance(players, str) and players == "tokens":
        end_of_prompt = offset + len(prompt)
        return [Span(s, e, text[s:e]) for s, e in offsets if e > s and s >= offset and e <= end_of_prompt]
    if isinstance(players, str):
        spans = split_text(prompt, players)
    elif isinstance(players, re.Pattern):
        spans = regex_spans(prompt, players)
    else:
        spans = char_spans(prompt, players)
    return shift(spans, offset, text)


def _special_spans(text, offsets, ids, tok, spans) -> list[Span]:
    """Tokens outside every span (special tokens, template text) as players of their own."""
    owners = owners_of_tokens(spans, offsets)
    out = []
    for i, ((s, e), owner) in enumerate(zip(offsets, owners)):
        if owner < 0:
            label = text[s:e] if e > s else tok.convert_ids_to_tokens(int(ids[i]))
            if e <= s:
                raise ProbeError("include_special needs special tokens with character offsets; this tokenizer "
                                 "gives them none: leave include_special=False")
            out.append(Span(s, e, label))
    return out


def _target_ids(loaded, tok, ids: torch.Tensor, target, max_new_tokens: int) -> tuple[torch.Tensor, str]:
    if target is None:
        if max_new_tokens < 1:
            raise ProbeError(f"max_new_tokens must be >= 1 to generate a target, got {max_new_tokens}")
        generated = greedy_continuation(loaded, ids, max_new_tokens, tok.eos_token_id)
        if generated.numel() == 0:
            raise ProbeError("the model ends the prompt at once (first generated token is end-of-sequence); "
                             "give target='...' explicitly")
        return generated, tok.decode(generated.tolist())
    if isinstance(target, str):
        target_ids = tok(target, add_special_tokens=False)["input_ids"]
        text = target
    else:
        target_ids, text = [int(t) for t in target], None
    if len(target_ids) == 0:
        raise ProbeError(f"target {target!r} tokenises to no tokens; give a non-empty continuation, or "
                         "target=None to generate one")
    target_ids = torch.tensor(target_ids, dtype=torch.long)
    return target_ids, text if text is not None else tok.decode(target_ids.tolist())


def greedy_continuation(loaded, ids: torch.Tensor, max_new_tokens: int, eos_id: int | None) -> torch.Tensor:
    """The model's greedy continuation of `ids` (stops at end-of-sequence, which is not included)."""
    # No KV cache: a few tokens on a short prompt, and the cache API differs across transformers versions.
    sequence = ids.to(loaded.device)[None]
    out = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            next_id = int(loaded.model(input_ids=sequence).logits[0, -1].argmax())
            if eos_id is not None and next_id == eos_id:
                break
            out.append(next_id)
            sequence = torch.cat([sequence, torch.tensor([[next_id]], device=sequence.device)], dim=1)
    return torch.tensor(out, dtype=torch.long)
