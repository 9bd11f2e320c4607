"""A short, hand-written DPO trainer for LoRA adapters (no trl): the loss of Rafailov et al. against a frozen
reference, and sequential DPO (Algorithm 1 of Tamine, Sakhi, Heymann), where each stage's reference is the
model the previous stage left.

The reference log-probabilities of a stage are read once, before the stage trains, from the model as it is
then: for a fresh LoRA adapter (B = 0) that is the base model, and for a later stage of sequential DPO it is
the model after the previous stage; so one function serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probes.errors import ProbeError
from probes.sources.forward import response_logprobs
from surgery.lora_compose import require_peft


@dataclass(frozen=True)
class PreferencePair:
    """One preference: the prompt's token ids, and the chosen and rejected responses' token ids."""

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """-log sigmoid(beta [(log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-))]), averaged over pairs."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


def _sequence_logprobs(model, pairs: Sequence[PreferencePair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    both = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    token_logp, _, _ = response_logprobs(model, both, max_rows=len(both), pad_id=pad_id)
    summed = token_logp.sum(dim=1)
    return summed[: len(pairs)], summed[len(pairs):]


def lora_model(base, *, rank: int = 4, targets: Sequence[str] = ("q_proj", "v_proj"), seed: int = 0):
    """`base` wrapped (in place) with one fresh trainable LoRA adapter (B = 0, so it starts as the base)."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0))


def train_dpo(model, pairs: Sequence[PreferencePair], *, beta: float = 0.1, lr: float = 5e-3, epochs: int = 4,
              batch_size: int = 8, seed: int = 0, pad_id: int = 0) -> list[float]:
    """Train `model`'s trainable parameters (its LoRA adapter) with DPO on `pairs`, the reference being the
    model as it is when called. Returns the mean loss of each epoch."""
    if not pairs:
        raise ProbeError("DPO needs at least one preference pair")
    model.eval()  # no dropout: the reference and the policy must see the same function at step 0
    with torch.no_grad():
        reference_chosen, reference_rejected = _sequence_logprobs(model, pairs, pad_id)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ProbeError("the model has no trainable parameters; wrap it with lora_model(...) first")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        order = torch.randperm(len(pairs), generator=generator).tolist()
        losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            chosen, rejected = _sequence_logprobs(model, [pairs[i] for i in idx], pad_id)
            loss = dpo_loss(chosen, rejected, reference_chosen[idx], reference_rejected[idx], beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(sum(losses) / len(losses))
    return history


def sequential_dpo(base, datasets: Sequence[Sequence[PreferencePair]], *, rank: int = 4,
                   targets: Sequence[str] = ("q_proj", "v_proj"), seed: int = 0, **settings):
    """Sequential DPO over `datasets` in order on one LoRA adapter; stage k's reference is stage k-1's model.
    Returns the trained peft model (base modified in place) and each stage's loss history."""
    model = lora_model(base, rank=rank, targets=targets, seed=seed)
    histories = [train_dpo(model, data, seed=seed + k, **settings) for k, data in enumerate(datasets)]
    return model.eval(), histories
