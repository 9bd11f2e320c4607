"""How a coalition of input players removes the absent ones, and the batched forward that scores it.

removal modes (the player's tokens are those it owns in the tokenised prompt):
  drop       delete the absent spans' characters and re-tokenise (positions of later tokens shift).
  replace    put one filler token in place of each absent token (positions kept). Filler: 'pad', 'unk',
             'space', '...' or any text that is one token, or a token id.
  attention  hide absent tokens from attention, every token keeping its original position id; the first
             target token is predicted from the last kept prompt token (as if the absent ones were dropped
             with their positions kept).
  embedding  replace absent tokens' input embeddings: zero, the prompt's mean embedding, or a reference
             text's embeddings at the same positions (resample).
A coalition that keeps no prompt token at all is scored after `start_id` alone (BOS, else EOS) in the
drop and attention modes, which otherwise would have nothing to predict the first target token from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probes.errors import ProbeError
from probes.inputs.prompt import PreparedPrompt, tokenizer_of
from surgery.input_forward import (EMBEDDING_MODES, SharedPrefix, check_causal, input_embeddings,
                                   replaced_embeddings, target_logprobs)

REMOVALS = ("drop", "replace", "attention", "embedding")
FILLERS = {"space": " ", "...": "..."}
# Shared prefixes shorter than this are recomputed: copying and expanding the KV cache has a cost of
# its own. Measured: 23 shared of 50 tokens (SmolLM2's chat template) gives 1.67x coalitions/s, against
# a bound of 1.85x (benchmarks/results/input_values.json, "prefix_reuse"); the threshold itself is a
# guess, not measured.
MIN_SHARED_PREFIX = 8


@dataclass
class Removal:
    """A removal mode bound to one prepared prompt; `logprobs(coalitions)` -> [m, K] float64."""

    loaded: object
    prep: PreparedPrompt
    mode: str
    filler_id: int | None = None
    embedding_mode: str = "zero"
    reference_embeds: torch.Tensor | None = None
    logits_fn: object = None
    prefix: SharedPrefix | None = None

    def describe(self) -> dict:
        """What identifies the removal in a game fingerprint."""
        out = {"removal": self.mode}
        if self.mode == "replace":
            out["filler_id"] = self.filler_id
        if self.mode == "embedding":
            out["embedding_ablation"] = self.embedding_mode
        return out

    def keep_tokens(self, coalitions: np.ndarray) -> torch.Tensor:
        """[m, T] True where a prompt token stays: it belongs to a present player, or to none."""
        present = torch.from_numpy(np.ascontiguousarray(coalitions, dtype=bool))
        owners = self.prep.owners
        owned = present[:, owners.clamp_min(0)]
        return owned | (owners < 0).unsqueeze(0)

    def logprobs(self, coalitions: np.ndarray, max_rows: int | None = None) -> torch.Tensor:
        """[m, K] target log-probs of the coalitions, at most `max_rows` rows per forward."""
        coalitions = np.asarray(coalitions, dtype=bool)
        if self.mode == "drop":
            return self._drop(coalitions, max_rows or len(coalitions))
        step = max_rows or len(coalitions)
        return torch.cat([self._kept_positions(coalitions[i:i + step]) for i in range(0, len(coalitions), step)])

    def input_sequence(self) -> torch.Tensor:
        """Prompt and target without the target's last token: no scored prediction reads it."""
        return torch.cat([self.prep.ids, self.prep.target[:-1]])

    def _kept_positions(self, coalitions: np.ndarray) -> torch.Tensor:
        keep = self.keep_tokens(coalitions)
        m, T, K = keep.shape[0], len(self.prep.ids), len(self.prep.target)
        sequence = self.input_sequence()
        positions = (T - 1 + torch.arange(K)).expand(m, K).clone()
        targets = self.prep.target.expand(m, K)
        common = dict(score_positions=positions, targets=targets, logits_fn=self.logits_fn, prefix=self.prefix)
        if self.mode == "replace":
            ids = sequence.repeat(m, 1)
            ids[:, :T][~keep] = self.filler_id
            return target_logprobs(self.loaded, input_ids=ids, **common)
        if self.mode == "embedding":
            embeds = input_embeddings(self.loaded, sequence)
            full_keep = torch.cat([keep, torch.ones(m, K - 1, dtype=torch.bool)], dim=1)
            rows = replaced_embeddings(embeds, full_keep, self.embedding_mode, self.reference_embeds)
            return target_logprobs(self.loaded, inputs_embeds=rows, **common)
        return self._attention(sequence, keep, common)

    def _attention(self, sequence: torch.Tensor, keep: torch.Tensor, common: dict) -> torch.Tensor:
        m, T = keep.shape
        ids = sequence.repeat(m, 1)
        mask = torch.ones_like(ids)
        mask[:, :T] = keep.long()
        none_kept = ~keep.any(dim=1)
        if none_kept.any():  # only the start token, at the last prompt position, is seen
            ids[none_kept, T - 1] = self._start_id()
            mask[none_kept, T - 1] = 1
        index = torch.arange(T).expand(m, T)
        last_kept = torch.where(mask[:, :T].bool(), index, torch.full_like(index, -1)).max(dim=1).values
        common["score_positions"][:, 0] = last_kept
        position_ids = torch.arange(ids.shape[1]).expand_as(ids)
        return target_logprobs(self.loaded, input_ids=ids, attention_mask=mask, position_ids=position_ids, **common)

    def drop_rows(self, coalitions: np.ndarray) -> list[list[int]]:
        """Token ids of each coalition's prompt with the absent spans' characters deleted, re-tokenised."""
        tok, prep = tokenizer_of(self.loaded), self.prep
        rows = []
        for present in coalitions:
            kept, cursor = [], 0
            for span, here in zip(prep.spans, present):
                if not here:
                    kept.append(prep.text[cursor:span.start])
                    cursor = span.end
            kept.append(prep.text[cursor:])
            ids = tok("".join(kept), add_special_tokens=prep.add_special_tokens)["input_ids"]
            rows.append(ids if ids else [self._start_id()])
        return rows

    def _drop(self, coalitions: np.ndarray, max_rows: int) -> torch.Tensor:
        # Rows differ in length: forwarding them sorted by length pads each batch to similar lengths.
        rows = self.drop_rows(coalitions)
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
        out = torch.empty(len(rows), len(self.prep.target), dtype=torch.float64)
        for i in range(0, len(order), max_rows):
            chunk = order[i:i + max_rows]
            out[chunk] = self._drop_forward([rows[r] for r in chunk])
        return out

    def _drop_forward(self, rows: list[list[int]]) -> torch.Tensor:
        prep, K = self.prep, len(self.prep.target)
        tail = prep.target[:-1]
        ids = torch.zeros(len(rows), max(len(r) for r in rows) + K - 1, dtype=torch.long)
        mask = torch.zeros_like(ids)
        positions = torch.empty(len(rows), K, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row) + K - 1] = torch.cat([torch.tensor(row, dtype=torch.long), tail])
            mask[r, :len(row) + K - 1] = 1
            positions[r] = len(row) - 1 + torch.arange(K)
        # The text before the first span is never deleted; when re-tokenising kept its tokens in every row
        # (a boundary token may merge differently), the shared prefix runs once.
        prefix = self.prefix
        if prefix is not None and not (bool((ids[:, :prefix.length] == prep.ids[:prefix.length]).all())
                                       and int(positions.min()) >= prefix.length):
            prefix = None
        return target_logprobs(self.loaded, input_ids=ids, attention_mask=mask, score_positions=positions,
                               targets=prep.target.expand(len(rows), K), logits_fn=self.logits_fn, prefix=prefix)

    def _start_id(self) -> int:
        if self.prep.start_id is None:
            raise ProbeError("a coalition keeps no prompt token and the tokenizer has neither a BOS nor an EOS "
                             "token to start from; use removal='replace' or 'embedding'")
        return int(self.prep.start_id)


def shared_prefix_length(prep: PreparedPrompt) -> int:
    """Inputs every coalition shares in the position-keeping modes: the tokens before the first removable
    one, less one (attention removal may read the first target's prediction at the last of them)."""
    owned = (prep.owners >= 0).nonzero()
    return max(0, int(owned[0]) - 1) if len(owned) else 0


def make_removal(loaded, prep: PreparedPrompt, mode: str = "replace", *, filler="pad", embedding_mode: str = "zero",
                 reference: str | None = None, logits_fn=None, reuse_prefix: bool | None = None) -> Removal:
    """Bind a removal mode to a prepared prompt, refusing what the model or tokenizer cannot do.

    reuse_prefix: compute the tokens every coalition shares once (KV cache); None = when they are at
    least MIN_SHARED_PREFIX tokens. In drop mode a batch uses it when all its rows kept those tokens."""
    check_causal(loaded)
    if mode not in REMOVALS:
        raise ProbeError(f"unknown removal {mode!r}; use one of {', '.join(REMOVALS)}")
    removal = Removal(loaded, prep, mode, logits_fn=logits_fn)
    if mode == "replace":
        removal.filler_id = filler_id(loaded, filler)
    if mode == "embedding":
        if embedding_mode not in EMBEDDING_MODES:
            raise ProbeError(f"unknown embedding ablation {embedding_mode!r}; use one of {', '.join(EMBEDDING_MODES)}")
        removal.embedding_mode = embedding_mode
        input_embeddings(loaded, prep.ids[:1])  # refuses a model without an input embedding module
        if embedding_mode == "resample":
            removal.reference_embeds = _reference_embeddings(loaded, prep, reference)
    if mode == "attention":
        _check_position_ids(loaded)
    shared = shared_prefix_length(prep)
    if shared > 0 and (reuse_prefix or (reuse_prefix is None and shared >= MIN_SHARED_PREFIX)):
        removal.prefix = SharedPrefix(loaded, shared, input_ids=prep.ids)
    return removal


def filler_id(loaded, filler) -> int:
    """The token id of a filler: 'pad', 'unk', 'space', '...', any text that is one token, or an id."""
    tok = tokenizer_of(loaded)
    if isinstance(filler, (int, np.integer)):
        return int(filler)
    if filler in ("pad", "unk"):
        value = getattr(tok, f"{filler}_token_id")
        if value is None:
            raise ProbeError(f"the tokenizer has no {filler} token; use filler='space', '...' or a token id")
        return int(value)
    ids = tok(FILLERS.get(filler, filler), add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ProbeError(f"filler {filler!r} is {len(ids)} tokens for this tokenizer; a replace filler must be "
                         "one token: use 'pad', 'unk', a single-token text or a token id")
    return int(ids[0])


def _reference_embeddings(loaded, prep: PreparedPrompt, reference: str | None) -> torch.Tensor:
    if not reference:
        raise ProbeError("embedding resample needs reference='<another text>' whose token embeddings replace the "
                         "absent ones; or use embedding_mode='zero' or 'mean'")
    ids = tokenizer_of(loaded)(reference, add_special_tokens=prep.add_special_tokens)["input_ids"]
    T, K = len(prep.ids), len(prep.target)
    if len(ids) < T:
        raise ProbeError(f"the reference text is {len(ids)} tokens, shorter than the prompt ({T}); give a "
                         "reference at least as long")
    sequence = torch.cat([torch.tensor(ids[:T], dtype=torch.long), prep.target[:-1]])
    return input_embeddings(loaded, sequence).reshape(T + K - 1, -1)


def _check_position_ids(loaded) -> None:
    import inspect

    body = loaded.model.get_submodule(loaded.adapter.body)
    if "position_ids" not in inspect.signature(body.forward).parameters:
        raise ProbeError(f"{type(body).__name__} takes no position_ids, so hidden tokens cannot keep their "
                         "positions; use removal='replace' or 'drop'")
