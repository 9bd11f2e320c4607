"""head_values: Shapley values of every head on a task, for every adapter family, with intervals and identity."""

import numpy as np
import pytest
import torch
import transformers as tf
from token_batches import token_batch

import surgery
from probes.errors import FingerprintMismatchError, ProbeError
from probes.estimators import estimate
from probes.head_values import HeadValues, head_values
from probes.model_game import model_game
from probes.values import values_from_arrays


def logprob(logits, batch):
    logp = logits.log_softmax(-1)
    tgt = batch.targets.expand(logits.shape[0], -1, -1).unsqueeze(-1)
    return logp.gather(-1, tgt).squeeze(-1).mean(dim=(1, 2))


@pytest.fixture(scope="module")
def small_gpt2():
    """2 layers x 4 heads = 8 players, so the exact game (256 coalitions) is cheap."""
    torch.manual_seed(1)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=32, vocab_size=97))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return surgery.load(model.eval())


def test_default_estimator_head_values_match_exact_on_a_tiny_model(small_gpt2):
    batch = token_batch(small_gpt2)
    exact = estimate(model_game(small_gpt2, batch, logprob, "heads"), estimator="exact")
    hv = head_values(small_gpt2, (batch, logprob), budget=120, seed=0)
    assert isinstance(hv, HeadValues) and hv.matrix.shape == (2, 4)
    assert hv.names == exact.names
    np.testing.assert_allclose(hv.means, exact.means, atol=4 * hv.stderrs.max() + 1e-4)
    assert np.corrcoef(hv.means, exact.means)[0, 1] > 0.99
    exact_hv = head_values(small_gpt2, (batch, logprob), estimator="exact")
    np.testing.assert_allclose(exact_hv.matrix.reshape(-1), exact.means, atol=1e-9)


def test_head_values_for_every_family_have_a_layer_by_head_matrix(tiny):
    batch = token_batch(tiny)
    n = len(tiny.components.heads)
    hv = head_values(tiny, (batch, logprob), budget=n + 10, seed=0)
    assert hv.matrix.shape == (tiny.components.n_layers, max(tiny.components.n_heads))
    assert np.isfinite(hv.matrix).all() and np.isfinite(hv.stderr_matrix).all()
    assert hv.fingerprint["model_digest"] and hv.n_evaluations <= n + 10


def test_builtin_task_through_an_in_memory_tokenizer(tiny_llama):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]"] + [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(95)]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    hv = head_values(tiny_llama, "induction", budget=30, seed=0, n_examples=2, tokenizer=raw)
    assert hv.fingerprint["task"] == "induction:logprob" and hv.details["n_examples"] == 2
    with pytest.raises(ProbeError, match="no tokenizer"):
        head_values(tiny_llama, "induction", budget=30)


def test_harmful_heads_are_those_whose_interval_lies_below_zero():
    names = ["L0.H0", "L0.H1", "L1.H0", "L1.H1"]
    hv = HeadValues.from_values(values_from_arrays(names, [0.5, -0.3, -0.05, -0.2], [0.1, 0.1, 0.1, np.nan]))
    harmful = hv.harmful(0.95)
    assert [h.name for h in harmful] == ["L0.H1"]  # L1.H0's interval crosses 0; L1.H1 has no stderr
    h = harmful[0]
    assert h.low < h.mean < h.high < 0 and h.high == pytest.approx(-0.3 + 1.959964 * 0.1, abs=1e-5)
    assert [h.name for h in hv.harmful(0.5)] == ["L0.H1"]
    assert hv.matrix.tolist() == [[0.5, -0.3], [-0.05, -0.2]]
    with pytest.raises(ProbeError, match="confidence"):
        hv.harmful(1.5)


def test_save_load_round_trip_and_values_of_another_model_are_refused(small_gpt2, tiny_llama, tmp_path):
    batch = token_batch(small_gpt2)
    hv = head_values(small_gpt2, (batch, logprob), budget=30, seed=3)
    path = hv.save(tmp_path / "hv.json")
    again = HeadValues.load(path, model=small_gpt2)
    assert isinstance(again, HeadValues)
    np.testing.assert_array_equal(again.matrix, hv.matrix)
    assert again.heads_per_layer == [4, 4] and again.fingerprint == hv.fingerprint
    with pytest.raises(FingerprintMismatchError, match="(?i)computed on model .* not on"):
        HeadValues.load(path, model=tiny_llama)


def test_bad_task_input_is_refused(small_gpt2):
    with pytest.raises(ProbeError, match="no metric"):
        head_values(small_gpt2, token_batch(small_gpt2), budget=30)
    with pytest.raises(ProbeError, match="task must be"):
        head_values(small_gpt2, 42, budget=30)
