"""Tiny LoRA adapters for the tiny in-memory Llama, written to directories the way peft saves them."""

from __future__ import annotations

import copy

import torch

from tiny_models import build


def make_adapter(path, seed: int, *, family: str = "llama", targets=("q_proj", "v_proj"), rank: int = 4,
                 scale: float = 0.3):
    """Save a LoRA adapter with random (non-zero) A and B for the tiny model of `family`; return the path."""
    from peft import LoraConfig, get_peft_model

    base = build(family)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                                                           init_lora_weights=False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(str(path))
    return path


def random_candidates(n_prompts: int = 3, n_candidates: int = 3, seed: int = 0, vocab: int = 97):
    """Token-id prompts and candidate responses of varying lengths (no tokenizer needed)."""
    g = torch.Generator().manual_seed(seed)

    def tokens(length):
        return torch.randint(1, vocab, (length,), generator=g).tolist()
    prompts = [tokens(3 + p) for p in range(n_prompts)]
    candidates = [[tokens(1 + (p + k) % 3) for k in range(n_candidates)] for p in range(n_prompts)]
    return prompts, candidates
