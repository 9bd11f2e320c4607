"""Layer removal with a training-free repair (ReplaceMe): on held-out tokens the repaired model's hidden
states are closer to the dense model's than plain removal leaves them, for every family; the export is
a plain checkpoint whose logits equal the in-memory repaired model's; bad input is refused up front."""

import pytest
import torch
import transformers as tf
from token_batches import token_batch

import surgery
from surgery.cut import remove_layers
from surgery.errors import SurgeryError
from surgery.layer_repair import contiguous_spans, fit_span_maps, fold_into_down_projection, repair_layers
from surgery.reference import run_body
from surgery.save import save_model


def cal_batch(tiny, seed=11, rows=32):
    return token_batch(tiny, batch=rows, seq=24, seed=seed, positions=1)  # ~760 tokens, hidden 32..48


def hidden_error(model, dense, batch):
    mask = batch.attention_mask.bool()
    with torch.no_grad():
        return float((run_body(model, batch) - run_body(dense, batch))[mask].norm())


@pytest.mark.parametrize("layers", [[1], [1, 2]])
def test_repair_brings_held_out_hidden_states_closer_than_plain_removal(tiny, layers):
    held_out = token_batch(tiny, batch=6, seq=20, seed=99, positions=1)
    repaired = repair_layers(tiny, layers, cal_batch(tiny))
    dropped = remove_layers(tiny, layers)
    assert repaired.components.n_layers == dropped.components.n_layers == 3 - len(layers)
    # Final hidden states, after the later blocks and the final norm. Random tiny models: the error
    # falls 60-75% for GPT-2, GPT-NeoX and BERT, only 4-9% for Llama, whose random layer-0 MLP output
    # predicts little of what the dropped blocks add (held-out fit error 0.95 even with an affine map).
    assert hidden_error(repaired, tiny, held_out) < 0.97 * hidden_error(dropped, tiny, held_out)
    record = repaired.model.config.surgery_layer_repair[-1]
    assert record["removed_layers"] == layers and record["spans"][0]["folded_into_layer"] == 0
    assert 0 <= record["spans"][0]["relative_fit_error"] < 1
    assert tiny.components.n_layers == 3  # the input is untouched


def test_export_is_a_plain_checkpoint_with_the_in_memory_logits(tiny, tmp_path):
    repaired = repair_layers(tiny, [1], cal_batch(tiny))
    info = save_model(repaired, tmp_path / "out", manifest={})
    assert info["remote_code"] is False
    auto = tf.AutoModelForMaskedLM if tiny.adapter.family == "bert" else tf.AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path / "out", trust_remote_code=False).eval()
    assert reloaded.config.surgery_layer_repair[-1]["method"] == "replaceme_linear"
    batch = token_batch(tiny)
    ids, mask = batch.input_ids, batch.attention_mask
    torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).logits,
                               repaired.model(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-5)


def test_a_span_that_changes_nothing_gets_the_identity_map_and_folding_it_changes_nothing():
    from tiny_models import build
    loaded = surgery.load(build("llama"))
    layer = loaded.model.model.layers[2]
    with torch.no_grad():  # layer 2 adds nothing to the residual: its output is its input
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    maps, fit = fit_span_maps(loaded, [(2, 2)], [cal_batch(loaded, seed=s) for s in range(2)], ridge=0.0)
    torch.testing.assert_close(maps[(2, 2)], torch.eye(48, dtype=torch.float64), rtol=0, atol=1e-8)
    assert fit[(2, 2)] < 1e-6  # from the normal equations: sqrt of a difference, ~1e-8 of rounding
    down = loaded.model.model.layers[1].mlp.down_proj
    before = down.weight.detach().clone()
    fold_into_down_projection(down, maps[(2, 2)])
    torch.testing.assert_close(down.weight, before, rtol=0, atol=1e-6)


def test_spans_are_the_maximal_runs():
    assert contiguous_spans([5, 1, 2, 7, 6]) == [(1, 2), (5, 7)]


def test_too_little_calibration_text_is_refused_before_any_work(tiny_llama):
    short = token_batch(tiny_llama, batch=2, seq=10, seed=0, pad_last=False)  # 20 tokens < hidden 48
    with pytest.raises(SurgeryError, match="needs at least 48 calibration tokens.*got 20"):
        repair_layers(tiny_llama, [1], short)


def test_bad_layers_are_refused(tiny_llama):
    cal = cal_batch(tiny_llama)
    with pytest.raises(SurgeryError, match="starts at layer 0"):
        repair_layers(tiny_llama, [0, 1], cal)
    with pytest.raises(SurgeryError, match="out of range"):
        repair_layers(tiny_llama, [5], cal)
    with pytest.raises(SurgeryError, match="at least one layer"):
        repair_layers(tiny_llama, [], cal)
    with pytest.raises(SurgeryError, match="ridge"):
        repair_layers(tiny_llama, [1], cal, ridge=-1)
    with pytest.raises(SurgeryError, match="TokenBatch"):
        repair_layers(tiny_llama, [1], "some text")
