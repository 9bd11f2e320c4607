"""Games whose players are components of a tiny model, played through the ablation engine."""

import itertools
import math

import numpy as np
import pytest
import torch
from token_batches import token_batch

from probes.estimators import estimate
from probes.model_game import model_game


def logprob(logits, batch):
    logp = logits.log_softmax(-1)
    tgt = batch.targets.expand(logits.shape[0], -1, -1).unsqueeze(-1)
    return logp.gather(-1, tgt).squeeze(-1).mean(dim=(1, 2))


def brute_force_shapley(game):
    n = game.n_players
    coalitions = np.array(list(itertools.product([False, True], repeat=n)))
    v = dict(zip(map(tuple, coalitions), game.value_function(coalitions)))
    phi = np.zeros(n)
    for S, value in v.items():
        for i in range(n):
            if not S[i]:
                with_i = list(S)
                with_i[i] = True
                k = sum(S)
                phi[i] += math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) * (v[tuple(with_i)] - value)
    return phi


def test_exact_on_a_tiny_model_head_game_equals_brute_force(tiny_llama):
    batch = token_batch(tiny_llama)
    heads = tiny_llama.components.heads[:10]  # 10 heads of layers 0 and 1, GQA groups split
    game = model_game(tiny_llama, batch, logprob, heads, max_rows=256)
    values = estimate(game, estimator="exact")
    expected = brute_force_shapley(game)
    np.testing.assert_allclose(values.means, expected, atol=1e-6)
    assert abs(values.efficiency_gap) < 1e-6


def test_model_game_store_resumes_without_recomputing(tiny_llama, tmp_path):
    batch = token_batch(tiny_llama)
    game = model_game(tiny_llama, batch, logprob, "layers", store=tmp_path / "store")
    first = estimate(game, estimator="exact")
    again = model_game(tiny_llama, batch, logprob, "layers", store=tmp_path / "store")
    second = estimate(again, estimator="exact")
    assert again.n_evaluations == 0
    np.testing.assert_array_equal(first.means, second.means)


def test_store_of_another_game_is_refused(tiny_llama, tmp_path):
    batch = token_batch(tiny_llama)
    estimate(model_game(tiny_llama, batch, logprob, "layers", store=tmp_path / "s"), estimator="exact")
    other = token_batch(tiny_llama, seed=9)
    with pytest.raises(Exception, match="(?i)fingerprint|another game|different game"):
        estimate(model_game(tiny_llama, other, logprob, "layers", store=tmp_path / "s"), estimator="exact")
