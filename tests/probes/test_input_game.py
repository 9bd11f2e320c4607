"""The input game on a tiny model: exact = brute force, batched = one at a time, the removal modes
do what they say (attention mask with positions kept = dropping with positions kept), store resumes."""

import numpy as np
import pytest
import torch

from probes.estimators import get_estimator
from probes.inputs import input_game
from tiny_text_model import PROMPT, brute_force_shapley, tiny_text_model

REMOVALS = ("drop", "replace", "attention", "embedding")


@pytest.fixture(scope="module")
def model():
    return tiny_text_model()


@pytest.mark.parametrize("removal", REMOVALS)
def test_exact_equals_brute_force_evaluated_one_coalition_at_a_time(model, removal):
    game = input_game(model, "The dog sees the apple", " and", players="words", removal=removal)
    assert game.n_players == 5
    values = get_estimator("exact")(game)
    cache = {}

    def one(present):
        key = present.tobytes()
        if key not in cache:  # unbatched, no store, no padding next to other rows
            cache[key] = float(game.value_function(present[None].copy())[0])
        return cache[key]

    np.testing.assert_allclose(values.means, brute_force_shapley(one, 5), atol=2e-5)
    assert abs(values.means.sum() - (values.full_value - values.empty_value)) < 1e-6


def test_full_prompt_value_is_the_plain_teacher_forced_logprob(model):
    game = input_game(model, PROMPT, " and cherry", removal="replace")
    ids = torch.cat([game.prepared.ids, game.prepared.target])[None]
    with torch.no_grad():
        logp = torch.log_softmax(model.model(input_ids=ids).logits[0].double(), -1)
    T = len(game.prepared.ids)
    expected = sum(float(logp[T - 1 + k, t]) for k, t in enumerate(game.prepared.target.tolist()))
    for removal in REMOVALS:
        assert input_game(model, PROMPT, " and cherry", removal=removal).full_value == pytest.approx(expected, abs=1e-4)
    per_token = game.per_token(np.ones((1, game.n_players), dtype=bool))[0]
    assert per_token.sum() == pytest.approx(expected, abs=1e-4)


def test_attention_removal_equals_dropping_tokens_with_their_original_positions(model):
    game = input_game(model, PROMPT, " and cherry", players="tokens", removal="attention")
    prep, rng = game.prepared, np.random.default_rng(0)
    coalitions = rng.random((6, game.n_players)) < 0.5
    coalitions[:, -1] = True  # keep the last prompt token so both forms read the same position
    values = game(coalitions)
    sequence = torch.cat([prep.ids, prep.target])
    T = len(prep.ids)
    for row, value in zip(coalitions, values):
        kept = np.flatnonzero(np.concatenate([row, np.ones(len(prep.target), dtype=bool)]))
        with torch.no_grad():
            logits = model.model(input_ids=sequence[kept][None], position_ids=torch.as_tensor(kept)[None]).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        first = len(kept) - len(prep.target) - 1
        direct = sum(float(logp[first + k, t]) for k, t in enumerate(prep.target.tolist()))
        assert value == pytest.approx(direct, abs=1e-4)
    assert T == game.n_players  # BPE without specials: every token is a player


def test_replace_puts_one_filler_per_absent_token_and_keeps_positions(model):
    game = input_game(model, PROMPT, " and", players="words", removal="replace", filler="space")
    prep = game.prepared
    space = model.tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    present = np.ones(game.n_players, dtype=bool)
    present[[1, 4]] = False
    ids = prep.ids.clone()
    ids[(prep.owners == 1) | (prep.owners == 4)] = space
    with torch.no_grad():
        logits = model.model(input_ids=torch.cat([ids, prep.target])[None]).logits[0]
    expected = float(torch.log_softmax(logits.double(), -1)[len(ids) - 1, prep.target[0]])
    assert game(present[None])[0] == pytest.approx(expected, abs=1e-4)


def test_drop_retokenises_the_kept_text(model):
    game = input_game(model, "The dog sees the apple", " and", players="words", removal="drop")
    present = np.array([True, False, True, False, True])
    tok = model.tokenizer
    ids = torch.tensor(tok("The sees apple")["input_ids"] + game.prepared.target.tolist())
    with torch.no_grad():
        logits = model.model(input_ids=ids[None]).logits[0]
    expected = float(torch.log_softmax(logits.double(), -1)[len(ids) - 2, ids[-1]])
    assert game(present[None])[0] == pytest.approx(expected, abs=1e-4)


def test_players_by_sentence_regex_and_char_offsets(model):
    import re

    assert input_game(model, PROMPT, " and", players="sentences").players == (
        "0:The dog sees the apple.", "1:Mary gave John a banana")
    assert input_game(model, PROMPT, " and", players=re.compile(r"Mary|John")).players == ("0:Mary", "1:John")
    game = input_game(model, PROMPT, " and", players=[(0, 7), (29, 33)])
    assert game.players == ("0:The dog", "1:gave")
    assert (game.prepared.owners >= 0).sum() < len(game.prepared.ids)  # text outside the spans always stays


def test_generated_target_and_per_token_metrics(model):
    game = input_game(model, PROMPT, None, max_new_tokens=3)
    assert 1 <= len(game.prepared.target) <= 3
    first = input_game(model, PROMPT, game.prepared.target.tolist(), metric=0)
    mean = input_game(model, PROMPT, game.prepared.target.tolist(), metric="mean")
    full = game.per_token(np.ones((1, game.n_players), dtype=bool))[0]
    assert first.full_value == pytest.approx(full[0], abs=1e-6)
    assert mean.full_value == pytest.approx(full.mean(), abs=1e-6)
    target = game.prepared.target[0]
    judge = input_game(model, PROMPT, game.prepared.target.tolist(), metric=lambda logits, t: logits[:, 0, target])
    assert np.isfinite(judge.full_value)


@pytest.mark.parametrize("estimator,budget", [("permutation", 200), ("chain_krr", 150), ("msr", 200),
                                              ("kernel_shap", 150)])
def test_estimators_run_and_the_store_resumes(model, tmp_path, estimator, budget):
    game = input_game(model, PROMPT, " and", players="words", store=tmp_path / "store")
    values = get_estimator(estimator)(game, budget=budget, seed=0)
    again = input_game(model, PROMPT, " and", players="words", store=tmp_path / "store")
    assert np.allclose(get_estimator(estimator)(again, budget=budget, seed=0).means, values.means)
    assert again.n_evaluations == 0  # everything came from the store


@pytest.mark.parametrize("removal", ["replace", "attention", "embedding"])
def test_shared_prefix_from_the_kv_cache_gives_the_same_values(model, removal):
    prompt = "one two three four five six seven eight nine ten. Mary gave John a"
    spans = [(54, 59), (59, 64), (64, 66)]  # only " gave John a" are players: many shared tokens first
    plain = input_game(model, prompt, " banana", players=spans, removal=removal, reuse_prefix=False)
    cached = input_game(model, prompt, " banana", players=spans, removal=removal, reuse_prefix=True)
    assert cached.removal.prefix is not None and cached.removal.prefix.length >= 8
    coalitions = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)
    np.testing.assert_allclose(cached(coalitions), plain(coalitions), atol=1e-4)
