"""A tiny causal model with a byte-level BPE tokenizer, in memory, for input-game tests (no download)."""

from itertools import permutations
from math import factorial

import numpy as np
import torch
import transformers as tf

import surgery
from tiny_tokenizers import bpe_fast

PROMPT = "The dog sees the apple. Mary gave John a banana"


def tiny_text_model(seed: int = 0):
    tok = bpe_fast()
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=len(tok), hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
        num_hidden_layers=3, intermediate_size=64, max_position_embeddings=128, bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return surgery.load(model, tokenizer=tok)


def brute_force_shapley(value_of, n):
    """Average marginal contribution over all n! orders, each coalition valued on its own (once)."""
    memo = {}

    def value(present):
        key = present.tobytes()
        if key not in memo:
            memo[key] = value_of(present.copy())
        return memo[key]

    phi = np.zeros(n)
    for order in permutations(range(n)):
        present = np.zeros(n, dtype=bool)
        before = value(present)
        for i in order:
            present[i] = True
            after = value(present)
            phi[i] += after - before
            before = after
    return phi / factorial(n)
