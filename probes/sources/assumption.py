"""How far are the adapters from the regime where arithmetic composition is exact?

At convergence, sequential DPO over the sources of S gives log pi_S = sum_{l in S} log pi_l - (|S|-1) log pi_0
(up to normalisation). `assumption_check` compares a sequentially fine-tuned model of a small coalition (trained
with probes.sources.dpo.sequential_dpo, or any model the user brings) with the arithmetic composition of the
coalition's adapters, on the evaluation's prompts and candidates:

    kl_candidates    KL(sequential || arithmetic) of the distributions over each prompt's candidates (nats,
                     mean over prompts): what the candidate-set values see;
    kl_per_token     KL(sequential || arithmetic) of the next-token distributions (token-level composition)
                     at every candidate token, mean over tokens;
and, for scale, the same two divergences between the sequential model and the base (how far training moved it).
A divergence to the composition that is small next to the divergence to the base means the values are
computed in the regime the method assumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probes.errors import ProbeError
from probes.sources.evaluations import CandidateEvaluation
from probes.sources.forward import response_logprobs
from surgery.lora_compose import AdapterSet, active, compose_logprobs


def _kl(p_log: torch.Tensor, q_log: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, with invalid entries (p = 0) contributing nothing."""
    p = p_log.exp()
    terms = torch.where(valid, p * (p_log - q_log.masked_fill(~valid, 0.0)), torch.zeros_like(p))
    return terms.sum(dim=-1)


def _candidate_logp(evaluation: CandidateEvaluation, table: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(table.masked_fill(~evaluation.valid, -torch.inf), dim=-1)


def _token_logprobs(evaluation: CandidateEvaluation, model) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [(evaluation.prompts[p], c) for p, cs in enumerate(evaluation.candidates) for c in cs]
    logp, _, valid = response_logprobs(model, pairs, full_vocab=True, max_rows=evaluation.max_rows,
                                       pad_id=evaluation.pad_id)
    return logp, valid


def assumption_check(adapters: AdapterSet, members: Sequence[str], evaluation: CandidateEvaluation,
                     sequential_model) -> dict:
    """Divergences (nats) between `sequential_model` (fine-tuned on the sources `members`, in any order) and
    the arithmetic composition of those adapters, with the divergences to the base for scale."""
    unknown = [m for m in members if m not in adapters.names]
    if unknown or len(members) < 1:
        raise ProbeError(f"coalition {list(members)} must name adapters among {adapters.names}")
    row = torch.tensor([[name in members for name in adapters.names]])
    with torch.no_grad():
        cache = evaluation.cache(adapters)
        arithmetic = _candidate_logp(evaluation, compose_logprobs(cache.base, cache.adapters, row)[0])
        base = _candidate_logp(evaluation, cache.base)
        sequential = _candidate_logp(evaluation, evaluation.logprob_table(sequential_model))
        with active(adapters, None) as model:
            base_tokens, valid = _token_logprobs(evaluation, model)
        per_member = []
        for name in members:
            with active(adapters, name) as model:
                per_member.append(_token_logprobs(evaluation, model)[0])
        composed = torch.log_softmax(base_tokens + sum(m - base_tokens for m in per_member), dim=-1)
        sequential_tokens = torch.log_softmax(_token_logprobs(evaluation, sequential_model)[0], dim=-1)
    all_vocab = torch.ones_like(sequential_tokens, dtype=torch.bool)

    def per_token(other):
        return float(_kl(sequential_tokens, other, all_vocab)[valid].mean())
    return {"coalition": list(members),
            "kl_candidates": float(_kl(sequential, arithmetic, evaluation.valid).mean()),
            "kl_candidates_to_base": float(_kl(sequential, base, evaluation.valid).mean()),
            "kl_per_token": per_token(composed), "kl_per_token_to_base": per_token(base_tokens),
            "n_prompts": len(evaluation.prompts), "n_tokens": int(valid.sum())}


def train_and_check(fresh_base, adapters: AdapterSet, members: Sequence[str], pairs_by_source: dict,
                    evaluation: CandidateEvaluation, **dpo_settings) -> dict:
    """Train the sequential model of `members` (sequential DPO in that order on a fresh copy of the base,
    modified in place; settings as probes.sources.dpo.train_dpo) and run `assumption_check` on it. Train the
    coalition's sequential model with the settings its adapters were trained with, or the check measures the
    settings rather than the arithmetic."""
    from probes.sources.dpo import sequential_dpo

    missing = [m for m in members if m not in pairs_by_source]
    if missing:
        raise ProbeError(f"no preference pairs for {missing}; pairs_by_source has {sorted(pairs_by_source)}")
    model, histories = sequential_dpo(fresh_base, [pairs_by_source[m] for m in members], **dpo_settings)
    return {**assumption_check(adapters, members, evaluation, model), "losses": histories}
