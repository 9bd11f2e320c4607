"""Bad input to the input game: one-line errors that name the fix."""

import pytest

from probes.errors import ProbeError, TooManyPlayersError
from probes.estimators import get_estimator
from probes.inputs import input_game
from surgery.errors import SurgeryError
from tiny_text_model import PROMPT, tiny_text_model


@pytest.fixture(scope="module")
def model():
    return tiny_text_model()


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(players=[(0, 400)]), "outside the text of 47 characters"),
    (dict(target=""), "tokenises to no tokens"),
    (dict(removal="mask"), "unknown removal 'mask'; use one of drop, replace, attention, embedding"),
    (dict(removal="replace", filler="unk"), "no unk token; use filler="),
    (dict(removal="replace", filler="hello world"), "a replace filler must be one token"),
    (dict(removal="embedding", embedding_mode="resample"), "needs reference="),
    (dict(removal="embedding", embedding_mode="resample", reference="short"), "shorter than the prompt"),
    (dict(players="paragraphs"), "unknown span unit"),
    (dict(metric=7), "the target has 2 tokens"),
    (dict(chat=True), "no chat template"),
])
def test_bad_input_is_refused_in_one_line(model, kwargs, message):
    args = dict(prompt=PROMPT, target=" and cherry", players="words")
    args.update(kwargs)
    with pytest.raises(ProbeError, match=message) as info:
        input_game(model, **args)
    assert "\n" not in str(info.value)


def test_more_players_than_exact_allows_names_a_sampling_estimator(model):
    game = input_game(model, " ".join(["one two three"] * 8), " four", players="tokens")
    assert game.n_players > 20
    with pytest.raises(TooManyPlayersError, match="Use a sampling estimator"):
        get_estimator("exact")(game)


def test_a_bidirectional_model_cannot_score_a_continuation():
    import surgery
    from tiny_models import build
    from tiny_tokenizers import wordlevel

    bert = surgery.load(build("bert"), tokenizer=wordlevel())
    with pytest.raises(SurgeryError, match="bidirectional: use a causal LM"):
        input_game(bert, "the dog", " sees", removal="replace", filler=0)


def test_a_span_inside_a_token_is_refused(model):
    with pytest.raises(ProbeError, match="cover no token of their own"):
        input_game(model, PROMPT, " and", players=[(1, 2)])
