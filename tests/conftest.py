import os
import sys

# Tests never touch the network: fail fast instead of retrying hub requests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from tiny_models import FAMILIES, build  # noqa: E402


@pytest.fixture(scope="session", params=FAMILIES)
def tiny(request):
    import surgery
    return surgery.load(build(request.param))


@pytest.fixture(scope="session")
def tiny_llama():
    import surgery
    return surgery.load(build("llama"))


@pytest.fixture(scope="session")
def smollm():
    """The real embedded model (dequantised once into the cache, then reloaded in seconds)."""
    import surgery
    return surgery.load("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer saved to a directory, so the CLI can load it by path."""
    import transformers as tf
    from tiny_tokenizers import bpe_fast

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
