"""The input game on the real SmolLM2 (small): exact = brute force, chat-template tokens are not players."""

import numpy as np
import pytest

from probes.estimators import get_estimator
from probes.inputs import input_game
from tiny_text_model import brute_force_shapley

pytestmark = pytest.mark.integration


def test_exact_word_values_on_smollm_equal_brute_force_and_chat_template_is_never_a_player(smollm):
    game = input_game(smollm, "The capital of Italy", " is", players="words", removal="attention")
    exact = get_estimator("exact")(game)
    one = lambda present: float(game.value_function(present[None].copy())[0])  # noqa: E731
    np.testing.assert_allclose(exact.means, brute_force_shapley(one, 4), atol=1e-4)
    chat = input_game(smollm, "The capital of Italy", " Rome", players="tokens", chat=True, removal="replace",
                      filler="space")
    assert [name.split(":", 1)[1] for name in chat.players] == ["The", "capital", "of", "Italy"]
    assert chat.removal.prefix is not None  # the template before the prompt runs once
    assert (chat.prepared.owners < 0).sum() > 10
