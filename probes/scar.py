"""SCAR dense rewards (Cao et al. 2025, seed 002): a response's terminal reward spread over its
tokens by the Owen values of its segments.

Steps, as in SCAR's paper and code:
1. the response is split into segments (at the punctuation `[.,;?!]`, the delimiter kept with the
   segment before it, as SCAR's `parse_sentence`; or spans the user gives);
2. the segments are players; a coalition's value is the reward of prompt + the response with every
   absent segment replaced by a space;
3. the segments' Owen values over a tree (paragraphs -> sentences -> segments by default; SCAR used a parse tree
   through shap's Partition explainer) are computed exactly when small, sampled with a budget
   otherwise;
4. per token: each segment's value at the segment's last token, v(empty) spread evenly over the
   tokens, and an alpha mix with the terminal reward at the last token:
       r_t = alpha * (sum of values of segments ending at t + v(empty) / T) + (1 - alpha) [t = T] R
   so sum_t r_t = R, the reward of the whole response (efficiency of the Owen value).

`scar_rewards(prompt, response, reward, tokenizer)` returns one `ScarRewards` (per-token tensor,
segment values, cost); `dense_rewards(prompts, responses, ...)` a list of tensors for an RLHF loop.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probes.errors import ProbeError
from probes.estimators.owen_tree import TreeValues, owen_tree
from probes.game import Game
from probes.inputs.spans import char_spans
from probes.text_tree import text_tree

SEGMENT_END = re.compile(r"[.,;?!]")  # SCAR's delimiters
DEFAULT_MAX_EXACT_SEGMENTS = 12


class TextReward:
    """A reward over whole texts, scored in batches: `TextReward(fn)` for fn(text) -> float,
    `TextReward(fn, batched=True)` for fn(list of texts) -> floats, or `TextReward.classifier(model,
    tokenizer)` for a transformers sequence-classification model (logit `label`). `calls` counts
    the texts scored."""

    def __init__(self, fn: Callable, *, batched: bool = False, name: str | None = None) -> None:
        if not callable(fn):
            raise ProbeError(f"reward must be callable (text -> float) or a sequence-classification model; got {fn!r}")
        self.fn, self.batched = fn, batched
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.calls = 0

    @classmethod
    def classifier(cls, model, tokenizer, *, label: int = 0, batch_size: int = 16) -> TextReward:
        if tokenizer is None or tokenizer.pad_token is None:
            raise ProbeError("a classifier reward needs a tokenizer with a pad token (tokenizer.pad_token = tokenizer.eos_token)")
        device = next(model.parameters()).device

        @torch.no_grad()
        def score(texts: list[str]) -> list[float]:
            out = []
            for start in range(0, len(texts), batch_size):
                inputs = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
                out.extend(model(**inputs).logits[:, label].float().tolist())
            return out

        return cls(score, batched=True, name=type(model).__name__)

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += len(texts)
        raw = self.fn(list(texts)) if self.batched else [self.fn(text) for text in texts]
        return np.asarray([float(x) for x in raw], dtype=float)


def as_text_reward(reward, tokenizer=None) -> TextReward:
    if isinstance(reward, TextReward):
        return reward
    if isinstance(reward, torch.nn.Module):
        return TextReward.classifier(reward, tokenizer)
    return TextReward(reward)


def _split_segments(text: str) -> list[tuple[int, int]]:
    """SCAR's split: a segment ends after each of `.,;?!`; the rest of the text is the last segment.
    Whitespace-only pieces join the segment before them (they carry no content to value)."""
    spans, start = [], 0
    for match in SEGMENT_END.finditer(text):
        spans.append((start, match.end()))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and not text[lo:hi].strip():
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _check_spans(spans: Sequence[tuple[int, int]], text: str) -> list[tuple[int, int]]:
    """The user's segments as sorted (start, end) pairs, checked like every span player (probes.inputs.spans)."""
    if len(spans) == 0:
        raise ProbeError("segments is empty; give at least one (start, end) character span of the response")
    checked = [(span.start, span.end) for span in char_spans(text, spans)]
    if [lo for lo, _ in checked] != [int(lo) for lo, _ in spans]:  # names s0, s1, ... follow the user's order
        raise ProbeError("segments are not in order; give sorted, disjoint (start, end) spans")
    return checked


def _token_ends(response: str | Sequence[int], tokenizer) -> tuple[list[int], str, list[int]]:
    """Token ids, the response text and each token's end offset in that text."""
    if isinstance(response, str):
        encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), response, [hi for _, hi in encoded["offset_mapping"]]
    ids = [int(t) for t in response]
    ends = [len(tokenizer.decode(ids[: k + 1], clean_up_tokenization_spaces=False)) for k in range(len(ids))]
    return ids, tokenizer.decode(ids, clean_up_tokenization_spaces=False), ends


@dataclass
class ScarRewards:
    """Per-token rewards of one response and where they came from.

    rewards: float tensor, one per response token, summing to `full_reward`.
    text, spans: the response text and the segments' (start, end) characters in it (segment_game's input).
    values: the segments' Owen values (TreeValues; players are the segments, named s0, s1, ...).
    seconds, reward_calls: the cost of this response (wall time, texts scored by the reward).
    game: the segment game (its memory answers coalitions already scored, e.g. for meta_attribution)."""

    rewards: torch.Tensor
    token_ids: list[int]
    text: str
    spans: list[tuple[int, int]]
    segments: list[str]
    segment_last_token: list[int]
    values: TreeValues
    full_reward: float
    empty_reward: float
    alpha: float
    seconds: float
    reward_calls: int
    game: Game | None = None

    def to_json_dict(self) -> dict:
        """Plain JSON: the rewards, the segments and where they end, the cost, and the Owen values."""
        return {"schema": "model-surgery.scar-rewards", "version": 1, "rewards": self.rewards.tolist(),
                "token_ids": list(self.token_ids), "text": self.text, "spans": [list(s) for s in self.spans],
                "segments": self.segments, "segment_last_token": self.segment_last_token,
                "full_reward": self.full_reward, "empty_reward": self.empty_reward, "alpha": self.alpha,
                "seconds": self.seconds, "reward_calls": self.reward_calls, "values": self.values.to_json_dict()}

    def with_alpha(self, alpha: float) -> torch.Tensor:
        """The per-token rewards for another alpha, from the same values (no reward call)."""
        return _place(self.values.players.means, self.empty_reward, self.full_reward, self.segment_last_token,
                      len(self.token_ids), alpha)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ProbeError(f"alpha must be in [0, 1] (1 = all reward dense, 0 = all at the last token); got {alpha}")


def _place(phi: np.ndarray, empty: float, full: float, last: list[int], n_tokens: int, alpha: float) -> torch.Tensor:
    """SCAR's per-token reward: values at segments' last tokens, v(empty) spread, alpha mix with the terminal reward."""
    _check_alpha(alpha)
    dense = np.full(n_tokens, empty / n_tokens)
    np.add.at(dense, last, phi)
    rewards = alpha * dense
    rewards[-1] += (1.0 - alpha) * full
    return torch.tensor(rewards, dtype=torch.float32)


def segment_game(prompt: str, text: str, spans: list[tuple[int, int]], reward: TextReward, **game_options) -> Game:
    """The game whose players are the spans: absent spans are replaced by a space (as SCAR)."""
    pieces = [text[: spans[0][0]]]
    for k, (lo, hi) in enumerate(spans):
        gap_end = spans[k + 1][0] if k + 1 < len(spans) else len(text)
        pieces.append(text[hi:gap_end])

    def value(coalitions: np.ndarray) -> np.ndarray:
        texts = []
        for row in coalitions:
            body = pieces[0] + "".join((text[lo:hi] if row[k] else " ") + pieces[k + 1] for k, (lo, hi) in enumerate(spans))
            texts.append(prompt + body)
        return reward(texts)

    fingerprint = {"game": "scar", "prompt": prompt, "response": text, "spans": [list(s) for s in spans],
                   "reward": reward.name}
    return Game([f"s{k}" for k in range(len(spans))], value, fingerprint, **game_options)


def scar_rewards(prompt: str, response: str | Sequence[int], reward, tokenizer, *, alpha: float = 1.0,
                 segments: Sequence[tuple[int, int]] | None = None, tree: str | Sequence = "sentences",
                 budget: int | None = None, seed: int | None = 0, store=None) -> ScarRewards:
    """SCAR dense rewards of one response (text, or token ids decoded with `tokenizer`).

    reward: callable text -> float, a `TextReward`, or a sequence-classification model (with tokenizer).
    segments: (start, end) character spans of the response to use as players (default: SCAR's split).
    tree: "sentences" (segments grouped by paragraph and sentence, probes.text_tree), "flat" (plain Shapley) or nested lists of segment indices.
    budget: None = exact Owen values (refused above the exact limit, naming a budget); else sampled with seed.
    """
    _check_alpha(alpha)
    started = time.perf_counter()
    reward = as_text_reward(reward, tokenizer)
    calls_before = reward.calls
    ids, text, ends = _token_ends(response, tokenizer)
    if not ids or not text.strip():
        raise ProbeError("the response is empty (no tokens or only whitespace); SCAR needs a response to spread the reward over")
    spans = _check_spans(segments, text) if segments is not None else _split_segments(text)
    shape = text_tree(text, spans, ("paragraph", "sentence")) if tree == "sentences" else \
        list(range(len(spans))) if tree == "flat" else tree
    if budget is None and shape == list(range(len(spans))) and len(spans) > DEFAULT_MAX_EXACT_SEGMENTS:
        raise ProbeError(f"{len(spans)} segments in one flat group is too many for exact values; pass budget=... "
                         "(e.g. 20 * segments) and seed, or tree='sentences'")
    game = segment_game(prompt, text, spans, reward, store=store)
    values = owen_tree(game, shape, budget, seed)
    empty, full = values.players.empty_value, values.players.full_value
    last = [next((t for t, end in enumerate(ends) if end >= hi), len(ids) - 1) for _, hi in spans]
    rewards = _place(values.players.means, empty, full, last, len(ids), alpha)
    return ScarRewards(rewards=rewards, token_ids=ids, text=text, spans=spans,
                       segments=[text[lo:hi] for lo, hi in spans], segment_last_token=last, values=values,
                       full_reward=full, empty_reward=empty, alpha=alpha, seconds=time.perf_counter() - started,
                       reward_calls=reward.calls - calls_before, game=game)


def dense_rewards(prompts: Sequence[str], responses: Sequence, reward, tokenizer, **options) -> list[torch.Tensor]:
    """SCAR per-token reward tensors for a batch of (prompt, response) pairs, for an RLHF loop
    (e.g. as the token-level scores of a PPO step). Options as `scar_rewards`."""
    if len(prompts) != len(responses):
        raise ProbeError(f"{len(prompts)} prompts but {len(responses)} responses; give one prompt per response")
    reward = as_text_reward(reward, tokenizer)
    return [scar_rewards(p, r, reward, tokenizer, **options).rewards for p, r in zip(prompts, responses)]
