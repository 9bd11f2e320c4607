"""Tiny models of every supported family, built from configs in memory (no download)."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 97


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB)
    if family == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=64, **common))
    elif family == "llama":  # grouped-query attention: 6 query heads over 2 key/value heads
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8, num_hidden_layers=3,
            intermediate_size=64, max_position_embeddings=64, **common))
    elif family == "qwen3":  # grouped-query attention with per-head query/key norms
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(
            hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8, num_hidden_layers=3,
            intermediate_size=64, max_position_embeddings=64, **common))
    elif family == "gpt_neox":
        model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=3, intermediate_size=64,
            max_position_embeddings=64, rotary_pct=0.5, **common))
    elif family == "bert":
        model = tf.BertForMaskedLM(tf.BertConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=3, intermediate_size=64,
            max_position_embeddings=64, **common))
    else:
        raise ValueError(family)
    # Give every weight some scale so ablations change the output measurably.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


FAMILIES = ("gpt2", "llama", "gpt_neox", "bert")

# Where each family's MLP down-projection lives in a block (to zero it by hand in tests).
MLP_DOWN = {"gpt2": "mlp.c_proj", "llama": "mlp.down_proj", "gpt_neox": "mlp.dense_4h_to_h", "bert": "output.dense"}
