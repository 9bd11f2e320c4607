"""Tokenisation every task shares: a tokenizer wrapper (Tok) and prompt/target splitting.

Which strings are single tokens, and where a target starts, depends on the tokenizer; these are the
few rules every task uses for that (whitespace goes with the target, leading special tokens).
"""

from __future__ import annotations

from typing import Sequence

from probes.tasks.errors import TaskError


class Tok:
    """The few things tasks need from a tokenizer, for `transformers` tokenizers and raw `tokenizers.Tokenizer`s.

    Everything is encoded without special tokens; the tokenizer's *leading* special tokens (BOS for
    Llama, [CLS] for BERT) are put in front of every sequence, trailing ones ([SEP], EOS) never,
    because a causal model is scored at the end of the prompt. A tokenizer that adds nothing in
    front (GPT-2, SmolLM2) gets its document separator `<|endoftext|>` (else its EOS) in front
    instead: models are trained on documents that follow one, and without it the first tokens act
    as an attention sink and the model is much weaker (SmolLM2-135M on induction, for one).
    prepend="none" turns this off; a list of ids sets the prefix explicitly.
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
