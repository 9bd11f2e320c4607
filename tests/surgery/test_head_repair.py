"""Heads removed with a least-squares refit of the output projection (surgery/head_repair.py): on the
calibration tokens every layer's attention output is at least as close to the dense model's as mean
compensation leaves it, on held-out tokens the final hidden states come closer, masked == cut, the
export reloads with the in-memory logits, and a heavily shrunk refit is mean compensation."""

import pytest
import torch
import transformers as tf
from token_batches import token_batch

from surgery.cut import remove_heads
from surgery.errors import SurgeryError
from surgery.head_repair import repair_heads
from surgery.reference import run_body
from surgery.save import save_model


def cal_batch(tiny, seed=11, rows=32):
    return token_batch(tiny, batch=rows, seq=24, seed=seed, positions=1)  # ~760 tokens


def heads_of(tiny):
    return {0: [0, 2], 1: [1], 2: [0, 3]}


def final_hidden(model, batch):
    with torch.no_grad():
        return run_body(model, batch)[batch.attention_mask.bool()]


def test_refit_never_loses_to_compensation_on_calibration_and_wins_held_out(tiny):
    cal = cal_batch(tiny)
    held_out = token_batch(tiny, batch=8, seq=20, seed=99, positions=1)
    repaired = repair_heads(tiny, heads_of(tiny), cal)
    compensated = remove_heads(tiny, heads_of(tiny), compensate_with=cal)
    record = repaired.model.config.surgery_head_repair[-1]
    assert record["calibration_tokens"] == int(cal.attention_mask.sum()) and set(record["layers"]) == {"0", "1", "2"}
    for layer in record["layers"].values():
        assert layer["relative_error_after"] <= layer["relative_error_before"] + 1e-9
    dense = final_hidden(tiny, held_out)
    assert (final_hidden(repaired, held_out) - dense).norm() < (final_hidden(compensated, held_out) - dense).norm()
    assert repaired.components.n_heads == compensated.components.n_heads
    assert not hasattr(repaired.model.config, "surgery_masked_heads")  # cut, not masked


def test_masked_refit_equals_cut_refit(tiny):
    cal, batch = cal_batch(tiny), token_batch(tiny, batch=4, seq=16, seed=5)
    cut = repair_heads(tiny, heads_of(tiny), cal)
    masked = repair_heads(tiny, heads_of(tiny), cal, physical=False)
    assert masked.components.n_heads == tiny.components.n_heads
    torch.testing.assert_close(final_hidden(cut, batch), final_hidden(masked, batch), rtol=0, atol=1e-5)


def test_shrunk_refit_of_the_first_layer_is_mean_compensation(tiny):
    # Before the first affected layer nothing drifted, so the residual has mean zero and an infinitely
    # shrunk refit changes nothing: the model is the compensated cut.
    cal, batch = cal_batch(tiny), token_batch(tiny, batch=4, seq=16, seed=5)
    repaired = repair_heads(tiny, {0: [1]}, cal, ridge=1e12)
    compensated = remove_heads(tiny, {0: [1]}, compensate_with=cal)
    torch.testing.assert_close(final_hidden(repaired, batch), final_hidden(compensated, batch), rtol=0, atol=1e-5)


def test_llama_export_is_a_stock_checkpoint_with_the_in_memory_logits(tiny_llama, tmp_path):
    heads = {l: [0, 3] for l in range(3)}  # same count per layer: stock config
    repaired = repair_heads(tiny_llama, heads, cal_batch(tiny_llama))
    info = save_model(repaired, tmp_path / "out", manifest={})
    assert info["remote_code"] is False
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=False).eval()
    assert reloaded.config.surgery_head_repair[-1]["method"] == "least_squares_refit"
    ids = torch.randint(3, tiny_llama.model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, repaired.model(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)


def test_too_few_calibration_tokens_are_refused_naming_the_minimum(tiny):
    tiny_cal = token_batch(tiny, batch=1, seq=6, seed=3)
    with pytest.raises(SurgeryError, match=r"needs at least \d+ calibration tokens"):
        repair_heads(tiny, heads_of(tiny), tiny_cal)
    with pytest.raises(SurgeryError, match="ridge"):
        repair_heads(tiny, heads_of(tiny), cal_batch(tiny), ridge=-1)
