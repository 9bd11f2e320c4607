"""The stream refit (surgery/stream_refit.py): after layers are dropped (and repaired) and MLP channels
removed, refitting every block's down-projection to the dense model's residual stream brings the pruned
model's final hidden states closer to the dense model's on held-out tokens, each block's fit error falls
on the calibration tokens, the export reloads with the in-memory logits, and bad input is refused."""

import pytest
import torch
import transformers as tf
from token_batches import token_batch

from surgery.errors import SurgeryError
from surgery.layer_repair import repair_layers
from surgery.mlp_repair import repair_mlp_channels
from surgery.mlp_width import mlp_widths
from surgery.reference import run_body
from surgery.save import save_model
from surgery.stream_refit import MIN_TOKENS_PER_COEFFICIENT, refit_to_dense_stream, stream_targets


def big_cal(tiny, seed=11):
    """4x the tokens MIN_TOKENS_PER_COEFFICIENT asks for the widest tiny MLP."""
    need = MIN_TOKENS_PER_COEFFICIENT * (max(mlp_widths(tiny)) + 1)
    return token_batch(tiny, batch=4 * need // 30 + 2, seq=32, seed=seed, positions=1)


def pruned(tiny, cal):
    """Layer 1 dropped (ReplaceMe) and a quarter of the MLP channels removed (refitted)."""
    width = mlp_widths(tiny)[0]
    narrowed = repair_mlp_channels(tiny, {l: list(range(l, width, 4)) for l in (0, 2)}, cal)
    return repair_layers(narrowed, [1], cal)


def final_hidden(model, batch):
    with torch.no_grad():
        return run_body(model, batch)[batch.attention_mask.bool()]


def test_targets_name_the_dense_block_each_kept_block_must_end_as():
    assert stream_targets(6, [0, 1, 4]) == [0, 3, 5]
    assert stream_targets(3, [0, 2]) == [1, 2]
    with pytest.raises(SurgeryError, match="increasing"):
        stream_targets(3, [2, 0])


@pytest.mark.parametrize("attention", [False, True])
def test_refit_brings_held_out_hidden_states_closer_and_each_block_fits_better(tiny, attention):
    if tiny.adapter.mlp_post_norm:
        pytest.skip("post-LN: refused, see test_post_ln_and_bad_input_are_refused")
    cal, held_out = big_cal(tiny), token_batch(tiny, batch=8, seq=24, seed=99, positions=1)
    base = pruned(tiny, cal)
    before = float((final_hidden(base, held_out) - final_hidden(tiny, held_out)).norm())
    refitted = refit_to_dense_stream(tiny, pruned(tiny, cal), [0, 2], cal, attention=attention)
    after = float((final_hidden(refitted, held_out) - final_hidden(tiny, held_out)).norm())
    # Random tiny models (4x the minimum tokens): the error falls 31% (GPT-2), 19% (GPT-NeoX) and only 2%
    # for Llama, whose random MLP activations predict little (its layer repair gains 4-9% for the same reason).
    assert after < (0.985 if tiny.adapter.family == "llama" else 0.9) * before
    record = refitted.model.config.surgery_stream_refit[-1]
    assert record["kept_layers"] == [0, 2] and [b["matches_dense_layer"] for b in record["blocks"]] == [1, 2]
    for block in record["blocks"] + record.get("attention_outputs", []):
        assert block["relative_error_after"] <= block["relative_error_before"] + 1e-9
    assert record["attention"] is attention and len(record.get("attention_outputs", [])) == (2 if attention else 0)


def test_export_reloads_with_the_in_memory_logits(tiny_llama, tmp_path):
    cal = big_cal(tiny_llama)
    refitted = refit_to_dense_stream(tiny_llama, pruned(tiny_llama, cal), [0, 2], cal)
    info = save_model(refitted, tmp_path / "out", manifest={})
    assert info["remote_code"] is False  # equal widths: weights changed, config stock
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.surgery_stream_refit[-1]["method"] == "dense_stream_refit"
    ids = torch.randint(3, tiny_llama.model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, refitted.model(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)


def last_block_output(model, batch):
    seen = []
    block = model.adapter.blocks(model.model)[-1]
    handle = block.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        run_body(model, batch)
    handle.remove()
    return seen[0][batch.attention_mask.bool()].double()


def test_the_in_flight_outputs_are_what_the_refitted_weights_give(tiny_llama):
    """The hook hands the next block h + x delta; the saved weights must give exactly that."""
    cal = big_cal(tiny_llama)
    refitted = refit_to_dense_stream(tiny_llama, pruned(tiny_llama, cal), [0, 2], cal)
    record = refitted.model.config.surgery_stream_refit[-1]
    out, dense = last_block_output(refitted, cal), last_block_output(tiny_llama, cal)
    root_weight = (1.0 / dense.pow(2).mean(-1)).sqrt()[:, None]
    error = float(((dense - out) * root_weight).norm() / (dense * root_weight).norm())
    assert error == pytest.approx(record["blocks"][-1]["relative_error_after"], rel=1e-4)


def test_post_ln_and_bad_input_are_refused(tiny):
    cal = big_cal(tiny)
    if tiny.adapter.mlp_post_norm:
        with pytest.raises(SurgeryError, match="pre-LN"):
            refit_to_dense_stream(tiny, repair_layers(tiny, [1], cal), [0, 2], cal)
        return
    work = repair_layers(tiny, [1], cal)
    with pytest.raises(SurgeryError, match=r"needs at least \d+ calibration tokens"):
        refit_to_dense_stream(tiny, work, [0, 2], token_batch(tiny, batch=4, seq=16, seed=3))
    with pytest.raises(SurgeryError, match="ridge"):
        refit_to_dense_stream(tiny, work, [0, 2], cal, ridge=-1)
    with pytest.raises(SurgeryError, match="names 3 blocks"):
        refit_to_dense_stream(tiny, work, [0, 1, 2], cal)
