"""The input game's cost savings keep its values: drop-mode batches sorted by length, the shared
prefix in drop mode, the target's last token left out of the input, and the dtype it is played in."""

import numpy as np
import pytest
import torch

from probes.errors import ProbeError
from probes.inputs import input_game
from tiny_text_model import PROMPT, tiny_text_model

PREFIXED = "one two three four five six seven eight nine ten. Mary gave John a"
LATE_SPANS = [(54, 59), (59, 64), (64, 66)]  # only " gave John a" are players


@pytest.fixture(scope="module")
def model():
    return tiny_text_model()


def test_drop_batches_sorted_by_length_give_each_coalition_its_own_value(model):
    game = input_game(model, PROMPT, " and", players="words", removal="drop", max_rows=3)
    coalitions = np.random.default_rng(0).random((11, game.n_players)) < 0.5
    lengths = [len(r) for r in game.removal.drop_rows(coalitions)]
    assert len(set(lengths)) > 2  # the rows really differ in length, so the order matters
    one_by_one = np.array([game.value_function(c[None].copy())[0] for c in coalitions])
    np.testing.assert_allclose(game.value_function(coalitions), one_by_one, atol=2e-5)


def test_drop_mode_runs_the_shared_prefix_once_with_the_same_values(model):
    plain = input_game(model, PREFIXED, " banana", players=LATE_SPANS, removal="drop", reuse_prefix=False)
    cached = input_game(model, PREFIXED, " banana", players=LATE_SPANS, removal="drop", reuse_prefix=True)
    assert cached.removal.prefix is not None and cached.removal.prefix.length >= 8
    seen = []
    body = cached.removal.loaded.model.get_submodule(cached.removal.loaded.adapter.body)
    handle = body.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]),
                                            with_kwargs=True)
    coalitions = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)
    try:
        values = cached(coalitions)
    finally:
        handle.remove()
    np.testing.assert_allclose(values, plain(coalitions), atol=1e-4)
    longest = max(len(r) for r in cached.removal.drop_rows(coalitions))
    assert max(seen) <= longest - cached.removal.prefix.length  # only the suffixes ran


def test_the_targets_last_token_is_not_fed_but_every_target_token_is_scored(model):
    game = input_game(model, PROMPT, " and cherry", removal="replace")
    sequence = game.removal.input_sequence()
    assert len(sequence) == len(game.prepared.ids) + len(game.prepared.target) - 1
    ids = torch.cat([game.prepared.ids, game.prepared.target])[None]
    with torch.no_grad():
        logp = torch.log_softmax(game.removal.loaded.model(ids).logits[0].double(), -1)
    T = len(game.prepared.ids)
    expected = [float(logp[T - 1 + k, t]) for k, t in enumerate(game.prepared.target)]
    np.testing.assert_allclose(game.per_token(np.ones((1, game.n_players), bool))[0], expected, atol=1e-4)


def test_the_fingerprint_records_the_dtype_and_a_mismatch_is_refused(model):
    game = input_game(model, PROMPT, " and", removal="replace")
    assert game.fingerprint["dtype"] == "float32"
    with pytest.raises(ProbeError, match="already loaded in torch.float32"):
        input_game(model, PROMPT, " and", removal="replace", dtype="bfloat16")
    with pytest.raises(ProbeError, match="not a floating-point"):
        input_game(model, PROMPT, " and", removal="replace", dtype="int8")
