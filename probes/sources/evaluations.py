"""What a coalition of adapters is scored on: fixed candidate responses, or next-token targets.

Each evaluation reads the base's and every adapter's log-probabilities once (n + 1 forward passes over
its pairs, `cache`), and then scores any block of coalitions by arithmetic in one tensor operation
(`arithmetic_values`); `merged_value` scores one coalition whose adapters were merged in weight space.
(Free generation, the slow mode, is in probes.sources.generation.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probes.errors import ProbeError
from probes.sources.forward import response_logprobs
from surgery.lora_compose import AdapterSet, active, compose_logprobs

TOKEN_ELEMENTS_PER_CHUNK = 1 << 25  # coalitions x tokens x vocabulary composed at once (memory bound)


def evaluation_digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, allow_nan=False).encode()).hexdigest()[:16]


def check_tokens(name: str, rows: Sequence[Sequence[int]]) -> list[list[int]]:
    rows = [[int(t) for t in row] for row in rows]
    empty = [i for i, row in enumerate(rows) if not row]
    if empty:
        raise ProbeError(f"{name} {empty[0]} has no tokens; every prompt and response needs at least one")
    return rows


@dataclass
class ModelCache:
    """Log-probabilities of the base [*shape] and of each adapter [n, *shape] on one evaluation."""

    base: torch.Tensor
    adapters: torch.Tensor


class CandidateEvaluation:
    """Prompts with a fixed set of candidate responses each; the coalition's distribution is normalised
    over each prompt's candidates (sequence level). Value: expected reward over the candidates when
    `rewards` [P, K] is given, else the mean log-probability of the `preferred` candidate."""

    kind = "candidates"

    def __init__(self, prompts, candidates, *, rewards=None, preferred=None, reward_name: str = "reward",
                 max_rows: int = 16, pad_id: int = 0) -> None:
        self.prompts = check_tokens("prompt", prompts)
        if len(candidates) != len(self.prompts):
            raise ProbeError(f"{len(self.prompts)} prompts but {len(candidates)} candidate lists; "
                             "give one list per prompt")
        self.candidates = [check_tokens(f"prompt {p}: candidate", c) for p, c in enumerate(candidates)]
        few = [p for p, c in enumerate(self.candidates) if len(c) < 2]
        if few:
            raise ProbeError(f"prompt {few[0]} has {len(self.candidates[few[0]])} candidate(s); give at least two")
        width = max(len(c) for c in self.candidates)
        self.valid = torch.zeros((len(self.prompts), width), dtype=torch.bool)
        for p, c in enumerate(self.candidates):
            self.valid[p, : len(c)] = True
        if (rewards is None) == (preferred is None):
            raise ProbeError("give either rewards (expected reward over candidates) or preferred "
                             "(their log-likelihood)")
        self.rewards = None if rewards is None else self._check_rewards(rewards, reward_name)
        self.preferred = None if preferred is None else self._check_preferred(preferred)
        self.reward_name = reward_name if rewards is not None else "preferred-loglik"
        self.max_rows, self.pad_id = max_rows, pad_id

    def _check_rewards(self, rewards, name: str) -> torch.Tensor:
        table = torch.zeros(self.valid.shape, dtype=torch.float64)
        for p, row in enumerate(rewards):
            if len(row) != len(self.candidates[p]):
                raise ProbeError(f"prompt {p}: {len(row)} rewards for {len(self.candidates[p])} candidates")
            values = np.asarray(row, dtype=float)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise ProbeError(f"{name} returned {values[bad[0]]} for prompt {p}, candidate {bad[0]}; "
                                 "a reward must be a finite number for every candidate (fix the reward)")
            table[p, : len(row)] = torch.from_numpy(values)
        return table

    def _check_preferred(self, preferred) -> torch.Tensor:
        preferred = [int(k) for k in preferred]
        if len(preferred) != len(self.prompts):
            raise ProbeError(f"{len(preferred)} preferred indices for {len(self.prompts)} prompts")
        for p, k in enumerate(preferred):
            if not 0 <= k < len(self.candidates[p]):
                raise ProbeError(f"prompt {p}: preferred candidate {k} does not exist "
                                 f"({len(self.candidates[p])} given)")
        return torch.tensor(preferred)

    def digest(self) -> str:
        rewards = None if self.rewards is None else self.rewards.tolist()
        preferred = None if self.preferred is None else self.preferred.tolist()
        return evaluation_digest([self.kind, self.prompts, self.candidates, rewards, preferred])

    def logprob_table(self, model) -> torch.Tensor:
        """[P, K] summed log-probability of every candidate given its prompt (0 where no candidate)."""
        pairs = [(self.prompts[p], c) for p, cs in enumerate(self.candidates) for c in cs]
        token_logp, _, _ = response_logprobs(model, pairs, max_rows=self.max_rows, pad_id=self.pad_id)
        table = torch.zeros(self.valid.shape, dtype=torch.float64)
        table[self.valid] = token_logp.sum(dim=1).double()
        return table

    def cache(self, adapters: AdapterSet) -> ModelCache:
        with torch.no_grad():
            with active(adapters, None) as model:
                base = self.logprob_table(model)
            tables = []
            for name in adapters.names:
                with active(adapters, name) as model:
                    tables.append(self.logprob_table(model))
        return ModelCache(base, torch.stack(tables))

    def score(self, logits: torch.Tensor) -> np.ndarray:
        """Values of [m, P, K] unnormalised candidate log-probabilities (one row per coalition)."""
        logp = torch.log_softmax(logits.masked_fill(~self.valid, -torch.inf), dim=-1)
        if self.rewards is not None:
            return (logp.exp() * self.rewards).sum(dim=-1).mean(dim=-1).numpy()
        index = self.preferred.view(1, -1, 1).expand(logp.shape[0], -1, 1)
        return torch.gather(logp, 2, index).squeeze(-1).mean(dim=-1).numpy()

    def arithmetic_values(self, cache: ModelCache, coalitions: torch.Tensor) -> np.ndarray:
        return self.score(compose_logprobs(cache.base, cache.adapters, coalitions))

    def merged_value(self, model) -> float:
        with torch.no_grad():
            return float(self.score(self.logprob_table(model).unsqueeze(0))[0])


class TokenEvaluation:
    """Prompts with target continuations; the coalition's next-token distribution is composed and
    normalised over the vocabulary at every target position. Value: mean log-probability per target token."""

    kind = "tokens"
    reward_name = "target-loglik"

    def __init__(self, prompts, targets, *, max_rows: int = 16, pad_id: int = 0) -> None:
        self.prompts = check_tokens("prompt", prompts)
        self.targets = check_tokens("target", targets)
        if len(self.targets) != len(self.prompts):
            raise ProbeError(f"{len(self.prompts)} prompts but {len(self.targets)} targets; give one target per prompt")
        self.max_rows, self.pad_id = max_rows, pad_id

    def digest(self) -> str:
        return evaluation_digest([self.kind, self.prompts, self.targets])

    def _logprobs(self, model, full_vocab: bool):
        return response_logprobs(model, list(zip(self.prompts, self.targets)), full_vocab=full_vocab,
                                 max_rows=self.max_rows, pad_id=self.pad_id)

    def cache(self, adapters: AdapterSet) -> ModelCache:
        with torch.no_grad():
            with active(adapters, None) as model:
                base, self._target_ids, self._valid = self._logprobs(model, True)
            per = []
            for name in adapters.names:
                with active(adapters, name) as model:
                    per.append(self._logprobs(model, True)[0])
        return ModelCache(base, torch.stack(per))

    def arithmetic_values(self, cache: ModelCache, coalitions: torch.Tensor) -> np.ndarray:
        step = max(1, TOKEN_ELEMENTS_PER_CHUNK // cache.base.numel())
        index = self._target_ids.clamp(min=0).unsqueeze(-1)
        out = []
        for start in range(0, coalitions.shape[0], step):
            composed = compose_logprobs(cache.base, cache.adapters, coalitions[start: start + step])
            logp = torch.log_softmax(composed, dim=-1)
            picked = torch.gather(logp, 3, index.unsqueeze(0).expand(logp.shape[0], -1, -1, -1)).squeeze(-1)
            out.append((picked * self._valid).sum(dim=(1, 2)) / self._valid.sum())
        return torch.cat(out).double().numpy()

    def merged_value(self, model) -> float:
        with torch.no_grad():
            logp, _, valid = self._logprobs(model, False)
        return float(logp.sum() / valid.sum())
