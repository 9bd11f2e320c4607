"""Tiny LoRA adapters for the tiny in-memory Llama, written to directories the way peft saves them."""

from __future__ import annotations

import copy

import torch

from tiny_models import build


def make_adapter(path, seed: int, *, family: str = "llama", targets=("q_proj", "v_proj"), rank: int = 4,
                 scale: float = 0.3, base=None):
    """Save a LoRA adapter with random (non-zero) A and B for the tiny model of `family` (or `base`); return the path."""
    from peft import LoraConfig, get_peft_model

    base = build(family) if base is None else base
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


def narrow_llama():
    """A tiny Llama with another hidden size than tiny_models' (same module names, other shapes)."""
    import transformers as tf

    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=97, hidden_size=32, num_attention_heads=4,
                                              num_key_value_heads=2, head_dim=8, num_hidden_layers=3,
                                              intermediate_size=64, max_position_embeddings=64)).eval()


class SpacedTokenizer:
    """Decodes token ids as space-separated numbers (enough for rewards over generated text)."""

    eos_token_id = None

    def decode(self, tokens, skip_special_tokens=True):
        return " ".join(str(t) for t in tokens)
