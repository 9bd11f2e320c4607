"""Slow mode: each coalition's composed distribution generates responses (greedy, token by token) and a
reward scores them. Every step reruns the models the coalition mixes, so this costs |S| + 1 forwards per
new token per coalition; use candidates or targets when the question allows."""

from __future__ import annotations

import numpy as np
import torch

from probes.errors import ProbeError
from probes.sources.evaluations import check_tokens, evaluation_digest
from probes.sources.forward import greedy_decode, last_token_logprobs
from probes.sources.rewards import Reward, checked_rewards
from surgery.lora_compose import AdapterSet, active, merged


class GenerationEvaluation:
    """Prompts (token ids and their text); value = mean reward of the coalition's greedy responses."""

    kind = "generation"

    def __init__(self, prompts, prompt_texts, reward: Reward, tokenizer, *, max_new_tokens: int = 16,
                 reward_name: str = "reward", pad_id: int = 0) -> None:
        self.prompts = check_tokens("prompt", prompts)
        self.prompt_texts = [str(t) for t in prompt_texts]
        if len(self.prompt_texts) != len(self.prompts):
            raise ProbeError(f"{len(self.prompts)} prompts but {len(self.prompt_texts)} prompt texts")
        if max_new_tokens < 1:
            raise ProbeError(f"max_new_tokens {max_new_tokens} must be at least 1")
        self.reward, self.tokenizer, self.reward_name = reward, tokenizer, reward_name
        self.max_new_tokens, self.pad_id = max_new_tokens, pad_id
        self.eos_id = getattr(tokenizer, "eos_token_id", None)

    def digest(self) -> str:
        return evaluation_digest([self.kind, self.prompts, self.max_new_tokens])

    def responses(self, next_logprobs) -> list[str]:
        with torch.no_grad():
            generated = greedy_decode(next_logprobs, self.prompts, self.max_new_tokens, self.eos_id)
        return [self.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in generated]

    def value_of(self, next_logprobs) -> float:
        responses = self.responses(next_logprobs)
        return float(np.mean(checked_rewards(self.reward, self.prompt_texts, responses, self.reward_name)))

    def value_function(self, adapters: AdapterSet, composition: str):
        def arithmetic_next(members):
            def next_logprobs(sequences):
                with active(adapters, None) as model:
                    base = last_token_logprobs(model, sequences, self.pad_id)
                composed = base.clone()
                for name in members:
                    with active(adapters, name) as model:
                        composed += last_token_logprobs(model, sequences, self.pad_id) - base
                return torch.log_softmax(composed, dim=-1)
            return next_logprobs

        def values(coalitions: np.ndarray) -> np.ndarray:
            out = []
            for row in coalitions:
                members = [name for name, present in zip(adapters.names, row) if present]
                if composition == "merge":
                    with merged(adapters, members) as model:
                        out.append(self.value_of(lambda seqs: last_token_logprobs(model, seqs, self.pad_id)))
                else:
                    out.append(self.value_of(arithmetic_next(members)))
            return np.asarray(out)
        return values
