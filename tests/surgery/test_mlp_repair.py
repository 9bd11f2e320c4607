"""MLP channels removed with a least-squares refit of the down-projection (surgery/mlp_repair.py): on
the calibration tokens every pruned layer's MLP output is at least as close to the unpruned model's as
mean compensation leaves it, on held-out tokens the final hidden states come closer, masked == cut,
and the export reloads with the in-memory logits (stock config for equal widths, remote code else)."""

import pytest
import torch
import transformers as tf
from token_batches import token_batch

from surgery.errors import SurgeryError
from surgery.mlp_repair import repair_mlp_channels
from surgery.mlp_width import mlp_widths, remove_mlp_channels
from surgery.reference import run_body
from surgery.save import save_model


def cal_batch(tiny, seed=11, rows=32):
    return token_batch(tiny, batch=rows, seq=24, seed=seed, positions=1)  # ~760 tokens


def channels_of(tiny, uneven=False):
    width = mlp_widths(tiny)[0]
    if uneven:
        return {0: [1, 2, 3], 2: list(range(0, width, 2))}
    return {l: list(range(l, width, 4)) for l in range(3)}  # a quarter of every layer


def final_hidden(model, batch):
    with torch.no_grad():
        return run_body(model, batch)[batch.attention_mask.bool()]


def test_refit_never_loses_to_compensation_on_calibration_and_wins_held_out(tiny):
    cal = cal_batch(tiny)
    held_out = token_batch(tiny, batch=8, seq=20, seed=99, positions=1)
    repaired = repair_mlp_channels(tiny, channels_of(tiny), cal)
    compensated = remove_mlp_channels(tiny, channels_of(tiny), compensate_with=cal)
    record = repaired.model.config.surgery_mlp_repair[-1]
    assert record["calibration_tokens"] == int(cal.attention_mask.sum()) and set(record["layers"]) == {"0", "1", "2"}
    for layer in record["layers"].values():
        assert layer["relative_error_after"] <= layer["relative_error_before"] + 1e-9
    dense = final_hidden(tiny, held_out)
    assert (final_hidden(repaired, held_out) - dense).norm() < (final_hidden(compensated, held_out) - dense).norm()
    assert mlp_widths(repaired) == mlp_widths(compensated)
    assert not hasattr(repaired.model.config, "surgery_masked_mlp_channels")  # cut, not masked


def test_masked_refit_equals_cut_refit(tiny):
    cal, batch = cal_batch(tiny), token_batch(tiny, batch=4, seq=16, seed=5)
    cut = repair_mlp_channels(tiny, channels_of(tiny, uneven=True), cal)
    masked = repair_mlp_channels(tiny, channels_of(tiny, uneven=True), cal, physical=False)
    assert mlp_widths(masked) == mlp_widths(tiny)
    torch.testing.assert_close(final_hidden(cut, batch), final_hidden(masked, batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("uneven", [False, True], ids=["equal-widths-stock", "uneven-remote-code"])
def test_llama_export_reloads_with_the_in_memory_logits(tiny_llama, tmp_path, uneven):
    repaired = repair_mlp_channels(tiny_llama, channels_of(tiny_llama, uneven), cal_batch(tiny_llama))
    info = save_model(repaired, tmp_path / "out", manifest={})
    assert info["remote_code"] is uneven
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=uneven).eval()
    assert reloaded.config.surgery_mlp_repair[-1]["method"] == "least_squares_refit"
    ids = torch.randint(3, tiny_llama.model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, repaired.model(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)


def test_too_few_calibration_tokens_and_a_negative_ridge_are_refused(tiny):
    with pytest.raises(SurgeryError, match=r"needs at least \d+ calibration tokens"):
        repair_mlp_channels(tiny, channels_of(tiny), token_batch(tiny, batch=1, seq=6, seed=3))
    with pytest.raises(SurgeryError, match="ridge"):
        repair_mlp_channels(tiny, channels_of(tiny), cal_batch(tiny), ridge=-1)
    with pytest.raises(SurgeryError, match="out of range"):
        repair_mlp_channels(tiny, {0: [10_000]}, cal_batch(tiny))
