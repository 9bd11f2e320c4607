"""Latency measurement: prefill and cached per-token decoding for decoders, prefill only for encoders;
fewer layers decode faster; bad settings are refused."""

import pytest

from pruning.errors import PruningError
from pruning.latency import measure_latency
from surgery.cut import remove_layers


def test_decoders_report_prefill_and_per_token_decoding(tiny):
    result = measure_latency(tiny, prompt_tokens=8, new_tokens=3, repeats=1)
    assert result["prefill_ms"] > 0 and result["prefill_tokens_per_s"] > 0
    if tiny.adapter.causal:
        assert result["decode_ms_per_token"] > 0 and result["new_tokens"] == 3
        assert result["decode_tokens_per_s"] == pytest.approx(1e3 / result["decode_ms_per_token"])
    else:  # BERT: no generation
        assert "decode_ms_per_token" not in result


def test_a_prefill_projects_only_the_last_position_as_generate_does(tiny_llama):
    seen = []
    head = tiny_llama.model.get_submodule(tiny_llama.adapter.unembed)
    handle = head.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    try:
        result = measure_latency(tiny_llama, prompt_tokens=8, new_tokens=2, repeats=1)
    finally:
        handle.remove()
    assert result["prefill_logits"] == "last position"
    assert seen == [1] * len(seen) and len(seen) == 2 * (1 + 2)  # 2 runs x (prefill + 2 decode steps)


def test_a_model_with_one_layer_left_decodes_faster_than_the_full_one():
    import surgery
    import torch
    import transformers as tf
    torch.manual_seed(0)
    full = surgery.load(tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=97, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=8,
        intermediate_size=1024, max_position_embeddings=128)).eval())
    one = remove_layers(full, list(range(1, 8)))
    slow = measure_latency(full, prompt_tokens=64, new_tokens=8, repeats=3)
    fast = measure_latency(one, prompt_tokens=64, new_tokens=8, repeats=3)
    assert fast["decode_ms_per_token"] < slow["decode_ms_per_token"]
    assert fast["prefill_ms"] < slow["prefill_ms"]


@pytest.mark.parametrize("setting", [{"prompt_tokens": 0}, {"repeats": 0}, {"new_tokens": -1}, {"batch_size": 0}])
def test_bad_settings_are_refused(tiny_llama, setting):
    with pytest.raises(PruningError, match="latency"):
        measure_latency(tiny_llama, **setting)
