"""The unit of input every game is played on: token ids plus the positions a metric reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.errors import SurgeryError


@dataclass(frozen=True)
class TokenBatch:
    """A padded batch of token sequences and where it is scored.

    input_ids:       long [B, T]
    attention_mask:  long [B, T] (1 = real token, 0 = padding)
    score_positions: long [B, P] positions whose next-token logits the metric reads. The engine
                     computes the vocabulary projection only at these positions.
    targets:         long [B, P] the token expected after each scored position, or -100 where a
                     position carries no target (padding of ragged P). Optional.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    score_positions: torch.Tensor
    targets: torch.Tensor | None = None

    def __post_init__(self):
        ids, am, pos = self.input_ids, self.attention_mask, self.score_positions
        if ids.ndim != 2 or ids.numel() == 0:
            raise SurgeryError(f"input_ids must be a non-empty [batch, seq] tensor, got shape {tuple(ids.shape)}")
        if am.shape != ids.shape:
            raise SurgeryError(f"attention_mask shape {tuple(am.shape)} must equal input_ids shape {tuple(ids.shape)}")
        if pos.ndim != 2 or pos.shape[0] != ids.shape[0] or pos.shape[1] == 0:
            raise SurgeryError(
                f"score_positions must be [batch={ids.shape[0]}, n_positions>=1], got {tuple(pos.shape)}")
        if pos.min() < 0 or pos.max() >= ids.shape[1]:
            raise SurgeryError(f"score_positions must lie in [0, {ids.shape[1] - 1}], got range "
                               f"[{int(pos.min())}, {int(pos.max())}]")
        if self.targets is not None and self.targets.shape != pos.shape:
            raise SurgeryError(f"targets shape {tuple(self.targets.shape)} must equal score_positions shape {tuple(pos.shape)}")
        if self.targets is not None and bool(((self.targets < 0) & (self.targets != -100)).any()):
            # Metrics clamp -100 to a valid index and mask it out; any other negative id would be
            # scored as token 0 without a word.
            bad = sorted({int(t) for t in self.targets[(self.targets < 0) & (self.targets != -100)].tolist()})[:5]
            raise SurgeryError(f"targets must be token ids >= 0, or -100 for a position without a target; got {bad}")

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "TokenBatch":
        move = lambda t: None if t is None else t.to(device)
        return TokenBatch(move(self.input_ids), move(self.attention_mask), move(self.score_positions), move(self.targets))

    @classmethod
    def last_position(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      targets: torch.Tensor | None = None) -> "TokenBatch":
        """Score only the last real token of each (right-padded) row."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        last = attention_mask.sum(dim=1, keepdim=True).long() - 1
        return cls(input_ids, attention_mask, last, None if targets is None else targets.view(-1, 1))

    @classmethod
    def next_token(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> "TokenBatch":
        """Score every position that has a next real token (language-model loss on text)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        B, T = input_ids.shape
        if T < 2:
            raise SurgeryError("next-token scoring needs sequences of at least 2 tokens")
        pos = torch.arange(T - 1).expand(B, T - 1).clone()
        tgt = input_ids[:, 1:].clone()
        tgt[attention_mask[:, 1:] == 0] = -100
        return cls(input_ids, attention_mask, pos, tgt)


def concat_batches(batches) -> TokenBatch:
    """One batch holding every row of `batches` (right-padded to the longest; extra score positions
    of shorter rows repeat their last position with target -100, so no metric reads them)."""
    batches = [batches] if isinstance(batches, TokenBatch) else list(batches)
    if not batches:
        raise SurgeryError("no batches to join: give at least one TokenBatch")
    if len(batches) == 1:
        return batches[0]
    T = max(b.input_ids.shape[1] for b in batches)
    P = max(b.score_positions.shape[1] for b in batches)
    with_targets = all(b.targets is not None for b in batches)
    ids, masks, positions, targets = [], [], [], []
    for b in batches:
        pad_t, pad_p = T - b.input_ids.shape[1], P - b.score_positions.shape[1]
        ids.append(torch.nn.functional.pad(b.input_ids, (0, pad_t)))
        masks.append(torch.nn.functional.pad(b.attention_mask, (0, pad_t)))
        positions.append(torch.cat([b.score_positions, b.score_positions[:, -1:].expand(-1, pad_p)], 1))
        if with_targets:
            targets.append(torch.nn.functional.pad(b.targets, (0, pad_p), value=-100))
    return TokenBatch(torch.cat(ids), torch.cat(masks), torch.cat(positions),
                      torch.cat(targets) if with_targets else None)


# Config fields that hold the longest sequence a model accepts, by family (GPT-2 uses n_positions).
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(model) -> int | None:
    """The longest sequence `model` (a LoadedModel or a transformers model) accepts, from its config; None if unknown."""
    model = getattr(model, "model", model)
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    for name in _CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_sequence_length(model, length: int, what: str = "sequence length") -> None:
    """Refuse a sequence longer than the model's context before any forward runs.

    Past the learned positions a model either fails inside (GPT-2's position table) or extrapolates
    into nonsense while attention memory grows with the square of the length (a 100k-token request on
    a 256-token model ran to an out-of-memory kill): neither is a result.
    """
    limit = context_length(model)
    if limit is not None and int(length) > limit:
        source = getattr(model, "source", None) or type(getattr(model, "model", model)).__name__
        raise SurgeryError(f"{what} {int(length)} is longer than the context of model {str(source)!r} "
                           f"({limit} tokens); use at most {limit}")
