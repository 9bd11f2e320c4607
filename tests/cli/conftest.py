"""A tiny Llama with a real (byte-level BPE) tokenizer saved to a directory, so the CLI can load it by path."""

import pytest
import torch
import transformers as tf
from tiny_tokenizers import bpe_fast


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    tokenizer = bpe_fast()
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
        num_hidden_layers=3, intermediate_size=64, max_position_embeddings=128,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
