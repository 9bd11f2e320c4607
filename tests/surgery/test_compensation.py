"""Compensated removal: heads cut (or masked) with their mean output folded into the output bias give
the mean-ablated model's logits, for every family and every GQA layout; exports reload exactly."""

import pytest
import torch
import transformers as tf
from token_batches import token_batch

import surgery
from surgery.cut import mask_heads, remove_heads
from surgery.engine import AblationEngine
from surgery.errors import SurgeryError
from surgery.save import save_model, verify_export


def calibration(tiny):
    return token_batch(tiny, batch=4, seq=12, seed=7)


def names(heads):
    return [f"L{l}.H{h}" for l, hs in heads.items() for h in hs]


def scored(model, batch):
    engine = AblationEngine(model, "layers")
    return engine.logits(torch.ones(1, engine.n_players, dtype=torch.bool), batch)[0]


def ablated(tiny, heads, mode, reference):
    players = names(heads)
    engine = AblationEngine(tiny, players, mode=mode, reference=reference)
    return engine.logits(torch.zeros(1, len(players), dtype=torch.bool), token_batch(tiny))[0]


def assert_compensated_equals_mean_ablation(tiny, heads, **kwargs):
    cal = calibration(tiny)
    mean = ablated(tiny, heads, "mean", cal)
    cut = remove_heads(tiny, heads, compensate_with=cal, **kwargs)
    torch.testing.assert_close(scored(cut, token_batch(tiny)), mean, rtol=0, atol=1e-5)
    # The bias carries something: the zero-ablated model is measurably elsewhere.
    assert (ablated(tiny, heads, "zero", None) - mean).abs().max() > 1e-2
    return cut


def family_heads(tiny, kind):
    llama = tiny.adapter.family == "llama"
    if kind == "uniform":
        return {l: [0, 3] for l in range(3)} if llama else {l: [1] for l in range(3)}
    return {0: [0, 1], 1: [5], 2: [0, 1, 2]} if llama else {0: [0], 1: [1, 2], 2: [3]}


@pytest.mark.parametrize("kind", ["uniform", "uneven"])
def test_cut_with_compensation_equals_mean_ablation(tiny, kind):
    heads = family_heads(tiny, kind)
    assert_compensated_equals_mean_ablation(tiny, heads)
    cal = calibration(tiny)
    masked = mask_heads(tiny, heads, compensate_with=cal)
    torch.testing.assert_close(scored(masked, token_batch(tiny)), ablated(tiny, heads, "mean", cal), rtol=0, atol=1e-5)


@pytest.mark.parametrize("partial_groups", ["share", "duplicate"])
def test_gqa_partial_and_whole_groups_with_compensation(tiny_llama, partial_groups):
    # L0: 1 of group 0 and 3 of group 1 kept (partial); L1: whole group 0 gone (kv head dropped); L2: one head.
    heads = {0: [0, 1], 1: [0, 1, 2], 2: [5]}
    cut = assert_compensated_equals_mean_ablation(tiny_llama, heads, partial_groups=partial_groups)
    assert cut.components.n_kv_heads[1] == 1


def test_layer_emptied_to_a_placeholder_head_is_compensated(tiny):
    all_of_l1 = {1: list(range(tiny.components.n_heads[1]))}
    assert_compensated_equals_mean_ablation(tiny, all_of_l1, empty_layers="keep_zeroed_head")


def test_llama_gets_stock_attention_biases_and_exports_a_plain_checkpoint(tiny_llama, tmp_path):
    assert tiny_llama.model.model.layers[0].self_attn.o_proj.bias is None
    heads = {l: [0, 3] for l in range(3)}
    cal = calibration(tiny_llama)
    cut = remove_heads(tiny_llama, heads, compensate_with=cal)
    attn = cut.model.model.layers[0].self_attn
    assert cut.config.attention_bias is True
    assert all(torch.count_nonzero(getattr(attn, p).bias) == 0 for p in ("q_proj", "k_proj", "v_proj"))
    assert torch.count_nonzero(attn.o_proj.bias) > 0
    assert tiny_llama.model.model.layers[0].self_attn.o_proj.bias is None  # the input is untouched
    info = save_model(cut, tmp_path / "out", manifest={})
    assert info["remote_code"] is False
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=False).eval()
    torch.testing.assert_close(scored(reloaded, token_batch(tiny_llama)), ablated(tiny_llama, heads, "mean", cal),
                               rtol=0, atol=1e-5)


def test_uneven_export_with_compensation_reloads_through_remote_code(tiny, tmp_path):
    heads = family_heads(tiny, "uneven")
    cal = calibration(tiny)
    cut = remove_heads(tiny, heads, compensate_with=cal)
    info = save_model(cut, tmp_path / "out", manifest={})
    assert info["remote_code"] is True
    verify_export(tmp_path / "out")
    auto = tf.AutoModelForMaskedLM if tiny.adapter.family == "bert" else tf.AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    torch.testing.assert_close(scored(reloaded, token_batch(tiny)), ablated(tiny, heads, "mean", cal),
                               rtol=0, atol=1e-5)


def test_gpt_neox_without_attention_bias_gets_one_through_its_config(tmp_path):
    torch.manual_seed(0)
    model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
        vocab_size=97, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
        max_position_embeddings=64, rotary_pct=0.5, attention_bias=False)).eval()
    loaded = surgery.load(model)
    heads = {0: [1], 1: [1]}
    cut = assert_compensated_equals_mean_ablation(loaded, heads)
    assert cut.config.attention_bias is True and cut.model.gpt_neox.layers[0].attention.dense.bias is not None
    save_model(cut, tmp_path / "out", manifest={})
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    torch.testing.assert_close(scored(reloaded, token_batch(loaded)), scored(cut, token_batch(loaded)),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_attention_that_cannot_carry_an_output_bias_is_refused_in_one_line(family):
    config_class, model_class = {"mistral": (tf.MistralConfig, tf.MistralForCausalLM),
                                 "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[family]
    model = model_class(config_class(vocab_size=97, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                     num_hidden_layers=2, intermediate_size=64, max_position_embeddings=64)).eval()
    loaded = surgery.load(model)
    with pytest.raises(SurgeryError, match="cannot carry one.*removal='zero'") as err:
        remove_heads(loaded, ["L0.H0"], compensate_with=calibration(loaded))
    assert "\n" not in str(err.value)
    remove_heads(loaded, ["L0.H0"])  # zero removal still works


def test_compensating_with_several_batches_equals_mean_over_their_joined_tokens(tiny_llama):
    from surgery.batch import concat_batches
    first, second = token_batch(tiny_llama, seed=1), token_batch(tiny_llama, batch=2, seq=14, seed=2)
    joined = concat_batches([first, second])
    assert joined.input_ids.shape == (5, 14) and int(joined.attention_mask.sum()) == 27 + 25
    heads = {0: [2]}
    cut = remove_heads(tiny_llama, heads, compensate_with=joined)
    torch.testing.assert_close(scored(cut, token_batch(tiny_llama)), ablated(tiny_llama, heads, "mean", joined),
                               rtol=0, atol=1e-5)


def test_compensating_an_already_uneven_model_again_reloads_exactly(tiny_llama, tmp_path):
    # The second cut meets per-layer head counts and a shared key/value map in L0.
    cal = calibration(tiny_llama)
    first = remove_heads(tiny_llama, {0: [0], 1: [4]})
    heads = {0: [1, 4], 2: [2]}
    second = remove_heads(first, heads, compensate_with=cal)
    expected = ablated(first, heads, "mean", cal)
    torch.testing.assert_close(scored(second, token_batch(tiny_llama)), expected, rtol=0, atol=1e-5)
    save_model(second, tmp_path / "out", manifest={})
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    torch.testing.assert_close(scored(reloaded, token_batch(tiny_llama)), expected, rtol=0, atol=1e-5)
