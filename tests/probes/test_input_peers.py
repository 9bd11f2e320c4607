"""Input values against peers: captum 0.9's exact ShapleyValues on the same game, and TokenSHAP's
published estimator, which is a normalised Banzhaf value rather than a Shapley value."""

import numpy as np
import pytest
import torch

from probes.estimators import get_estimator
from probes.inputs import input_game
from tiny_text_model import tiny_text_model

captum_attr = pytest.importorskip("captum.attr")
PROMPT, TARGET = "Mary gave John a", " banana"


@pytest.fixture(scope="module")
def model():
    return tiny_text_model()


def captum_shapley(model, inp, target_ids):
    attribution = captum_attr.LLMAttribution(captum_attr.ShapleyValues(model.model), model.tokenizer)
    result = attribution.attribute(inp, target=target_ids, forward_in_tokens=False)
    return result.seq_attr.detach().double().numpy()


def test_replace_tokens_matches_captum_exact_shapley_over_text_token_input(model):
    filler = model.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    game = input_game(model, PROMPT, TARGET, players="tokens", removal="replace", filler=filler)
    ours = get_estimator("exact")(game).means
    inp = captum_attr.TextTokenInput(PROMPT, model.tokenizer, baselines=filler)
    theirs = captum_shapley(model, inp, game.prepared.target)
    assert len(theirs) == game.n_players == 4
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_drop_words_matches_captum_exact_shapley_over_text_template_input(model):
    # "Mary" stays (not a player): captum cannot score a coalition that leaves the prompt empty.
    words = [(4, 9), (9, 14), (14, 16)]
    game = input_game(model, PROMPT, TARGET, players=words, removal="drop")
    inp = captum_attr.TextTemplateInput("Mary{}{}{}", values=[s.text for s in game.prepared.spans],
                                        baselines=[""] * len(words))
    ours = get_estimator("exact")(game).means
    np.testing.assert_allclose(ours, captum_shapley(model, inp, game.prepared.target), atol=1e-4)


def tokenshap_estimate(values_by_code, n):
    """TokenSHAP: mean(v | i in S) - mean(v | i not in S) over the evaluated coalitions, normalised to sum 1."""
    codes = np.arange(1 << n)
    raw = np.array([values_by_code[(codes >> i) & 1 == 1].mean() - values_by_code[(codes >> i) & 1 == 0].mean()
                    for i in range(n)])
    return raw / raw.sum()


def test_tokenshap_estimator_is_normalised_banzhaf_not_shapley(model):
    game = input_game(model, PROMPT, TARGET, players="words", removal="replace", filler="space")
    n = game.n_players
    codes = np.arange(1 << n)
    values = game(((codes[:, None] >> np.arange(n)) & 1).astype(bool))
    tokenshap = tokenshap_estimate(values, n)
    shapley = get_estimator("exact")(game).means
    # Over all coalitions the difference of conditional means is the Banzhaf value 2^(1-n) sum_S [v(S+i) - v(S)].
    banzhaf = np.array([np.mean(values[codes[(codes >> i) & 1 == 1]] - values[codes[(codes >> i) & 1 == 1] ^ (1 << i)])
                        for i in range(n)])
    np.testing.assert_allclose(tokenshap, banzhaf / banzhaf.sum(), atol=1e-9)
    # ... which is neither the Shapley value nor proportional to it, and sums to 1 instead of v(N) - v(empty).
    assert not np.allclose(tokenshap, shapley / shapley.sum(), atol=1e-3)
    assert not np.allclose(banzhaf, shapley, atol=1e-3)
    assert shapley.sum() == pytest.approx(values[-1] - values[0], abs=1e-6)
