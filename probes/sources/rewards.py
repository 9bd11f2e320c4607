"""Rewards for data-source values: a batched callable `reward(prompts, responses) -> floats`, or a
transformers sequence-classification reward model loaded from a directory (`RewardModel`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from probes.errors import ProbeError

Reward = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def checked_rewards(reward: Reward, prompts: Sequence[str], responses: Sequence[str],
                    name: str = "reward") -> np.ndarray:
    """reward(prompts, responses) as a float array, refusing a wrong length or a non-finite value at once."""
    try:
        values = np.asarray(reward(list(prompts), list(responses)), dtype=float).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ProbeError(f"{name} must return one float per response: {error}") from error
    if values.size != len(responses):
        raise ProbeError(f"{name} returned {values.size} values for {len(responses)} responses; "
                         "return one per response")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = bad[0]
        raise ProbeError(f"{name} returned {values[i]} for prompt {prompts[i][:40]!r} with response "
                         f"{responses[i][:40]!r}; a reward must be finite (fix the reward)")
    return values


class RewardModel:
    """A sequence-classification model with one output (num_labels=1) that scores prompt + response."""

    def __init__(self, directory: str | Path, *, max_rows: int = 16) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise ProbeError(f"reward model {directory} has no config.json; give a transformers model directory")
        labels = AutoConfig.from_pretrained(str(directory)).num_labels
        if labels != 1:  # checked before loading the weights
            raise ProbeError(f"reward model {directory} has {labels} outputs; a reward model scores with one "
                             "(num_labels=1)")
        self.model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_rows = max_rows
        self.name = f"reward-model:{directory.resolve().name}"

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        texts = [p + r for p, r in zip(prompts, responses)]
        scores = []
        with torch.no_grad():
            for start in range(0, len(texts), self.max_rows):
                batch = self.tokenizer(texts[start: start + self.max_rows], return_tensors="pt", padding=True)
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores
