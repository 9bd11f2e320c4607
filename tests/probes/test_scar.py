"""SCAR dense rewards: the rewards sum to the full reward, the alpha extremes, SCAR's split and
placement, batched classifier rewards, and bad input."""

import math

import numpy as np
import pytest
import torch
import transformers as tf

from probes.errors import InvalidGameOutputError, ProbeError
from probes.estimators.exact import exact_shapley
from probes.scar import TextReward, dense_rewards, scar_rewards, segment_game
from tests.tiny_tokenizers import bpe_fast

PROMPT = "Tell me about fruit. "
RESPONSE = "one apple, two banana. three cherry; four melon."


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_fast()


def fruit_reward(text: str) -> float:
    """Rewards fruit words, more when apple and banana come together (an interaction to share)."""
    words = set(text.replace(",", " ").replace(".", " ").replace(";", " ").split())
    score = 0.5 * len(words & {"apple", "banana", "cherry", "melon"})
    return score + 2.0 * ({"apple", "banana"} <= words) - 0.1 * len(text.split())


@pytest.mark.parametrize("alpha", [1.0, 0.8, 0.0])
def test_rewards_sum_to_the_full_reward_and_alpha_zero_is_the_sparse_reward(tokenizer, alpha):
    result = scar_rewards(PROMPT, RESPONSE, fruit_reward, tokenizer, alpha=alpha)
    full = fruit_reward(PROMPT + RESPONSE)
    assert result.full_reward == pytest.approx(full)
    assert float(result.rewards.double().sum()) == pytest.approx(full, abs=1e-5)
    assert len(result.rewards) == len(result.token_ids) == len(tokenizer(RESPONSE, add_special_tokens=False)["input_ids"])
    if alpha == 0.0:
        assert torch.count_nonzero(result.rewards[:-1]) == 0
    if alpha == 1.0:  # SCAR's placement: segment values at their last tokens, v(empty) spread evenly
        expected = np.full(len(result.token_ids), result.empty_reward / len(result.token_ids))
        np.add.at(expected, result.segment_last_token, result.values.players.means)
        np.testing.assert_allclose(result.rewards.numpy(), expected, atol=1e-5)


def test_segments_follow_scar_split_and_absent_segments_become_spaces(tokenizer):
    result = scar_rewards(PROMPT, RESPONSE, fruit_reward, tokenizer)
    assert result.segments == ["one apple,", " two banana.", " three cherry;", " four melon."]
    assert result.values.tree == [[0, 1], [2, 3]]  # two sentences
    seen = []
    game = segment_game(PROMPT, RESPONSE, [(0, 10), (10, 22)], TextReward(lambda t: seen.append(t) or 0.0))
    game(np.array([[True, False]]))
    assert seen == [PROMPT + "one apple,  three cherry; four melon."]
    decoded = [tokenizer.decode(result.token_ids[: t + 1]) for t in result.segment_last_token]
    assert [d.endswith(s[-1]) for d, s in zip(decoded, result.segments)] == [True] * 4


def test_flat_tree_gives_shapley_values_and_token_ids_give_the_same_rewards(tokenizer):
    flat = scar_rewards(PROMPT, RESPONSE, fruit_reward, tokenizer, tree="flat")
    spans = [(0, 10), (10, 22), (22, 36), (36, 48)]
    truth = exact_shapley(segment_game(PROMPT, RESPONSE, spans, TextReward(fruit_reward))).means
    np.testing.assert_allclose(flat.values.players.means, truth, atol=1e-10)
    ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    from_ids = scar_rewards(PROMPT, ids, fruit_reward, tokenizer, tree="flat")
    torch.testing.assert_close(from_ids.rewards, flat.rewards)


def test_sampled_values_with_a_budget_still_sum_exactly(tokenizer):
    result = scar_rewards(PROMPT, RESPONSE, fruit_reward, tokenizer, budget=40, seed=3)
    assert float(result.rewards.double().sum()) == pytest.approx(result.full_reward, abs=1e-5)
    assert result.reward_calls <= 40 and result.seconds > 0


def test_classifier_reward_is_batched_and_dense_rewards_serve_a_batch(tokenizer):
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                            num_hidden_layers=2, intermediate_size=64, num_labels=1,
                            pad_token_id=tokenizer.pad_token_id)
    model = tf.LlamaForSequenceClassification(config).eval()
    reward = TextReward.classifier(model, tokenizer, batch_size=4)
    tensors = dense_rewards([PROMPT, PROMPT], [RESPONSE, "one apple."], reward, tokenizer)
    with torch.no_grad():
        inputs = tokenizer([PROMPT + RESPONSE, PROMPT + "one apple."], return_tensors="pt", padding=True)
        full = model(**inputs).logits[:, 0]
    torch.testing.assert_close(torch.stack([t.sum() for t in tensors]), full, atol=1e-4, rtol=1e-4)
    assert len(tensors[1]) == len(tokenizer("one apple.", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("response, reward, options, error, message", [
    ("", fruit_reward, {}, ProbeError, "empty"),
    ("   ", fruit_reward, {}, ProbeError, "empty"),
    (RESPONSE, lambda text: math.nan, {}, InvalidGameOutputError, "non-finite"),
    (RESPONSE, fruit_reward, {"alpha": 1.5}, ProbeError, "alpha"),
    (RESPONSE, fruit_reward, {"segments": [(0, 99)]}, ProbeError, "outside"),
    (RESPONSE, fruit_reward, {"segments": [(5, 9), (0, 3)]}, ProbeError, "sorted"),
    ("a, " * 14, fruit_reward, {"tree": "flat"}, ProbeError, "budget"),
    (RESPONSE, "not a reward", {}, ProbeError, "callable"),
])
def test_bad_input_is_refused_with_the_fix(tokenizer, response, reward, options, error, message):
    with pytest.raises(error, match=message):
        scar_rewards(PROMPT, response, reward, tokenizer, **options)


def test_with_alpha_reuses_the_values_and_the_game_remembers_every_coalition(tokenizer):
    calls = []
    reward = TextReward(lambda text: calls.append(text) or fruit_reward(text))
    result = scar_rewards(PROMPT, RESPONSE, reward, tokenizer, alpha=1.0)
    scored = len(calls)
    again = scar_rewards(PROMPT, RESPONSE, fruit_reward, tokenizer, alpha=0.3)
    torch.testing.assert_close(result.with_alpha(0.3), again.rewards)
    result.game(np.ones((1, 4), dtype=bool))
    assert len(calls) == scored == result.reward_calls
