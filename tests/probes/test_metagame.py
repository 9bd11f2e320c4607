"""Second order: the interaction matrix and the meta-attribution against their definitions, the
decomposition phi_i = nu_i(empty) + sum_j phi_{j->i}, symmetry for semivalue bases, a directed
gradient base, sampling, and the result type."""

import itertools
from math import factorial

import numpy as np
import pytest
import torch

from probes.errors import ProbeError, TooManyPlayersError
from probes.estimators.exact import exact_shapley
from probes.estimators.interaction import exact_interaction_values, interaction_values
from probes.estimators.metagame import gradient_base, interaction_matrix, meta_attribution
from probes.game import Game
from probes.interaction_matrix import InteractionMatrix
from probes.synthetic_games import soum_game
from token_batches import token_batch

SUBGAME_WEIGHT = {  # weight of v(S + i) - v(S), |S| = s, in i's attribution within T + i, |T| = t
    "shapley": lambda s, t: factorial(s) * factorial(t - s) / factorial(t + 1),
    "banzhaf": lambda s, t: 0.5**t,
    "leave_one_out": lambda s, t: float(s == t),
}


def definition_base(game, kind):
    """nu_i(T) straight from its definition: i's semivalue in the game restricted to T + i."""
    def base(i, coalitions):
        out = []
        for row in coalitions:
            members = [k for k in np.flatnonzero(row) if k != i]
            total = 0.0
            for size in range(len(members) + 1):
                for subset in itertools.combinations(members, size):
                    s = np.zeros(game.n_players, dtype=bool)
                    s[list(subset)] = True
                    with_i = s.copy()
                    with_i[i] = True
                    total += SUBGAME_WEIGHT[kind](size, len(members)) * float(game(with_i)[0] - game(s)[0])
            out.append(total)
        return np.array(out)
    return base


@pytest.mark.parametrize("kind", ["shapley", "banzhaf", "leave_one_out"])
def test_semivalue_meta_attribution_equals_its_definition_and_decomposes(kind):
    known = soum_game(6, seed=4)
    fast = meta_attribution(known.game, base=kind)
    slow = meta_attribution(known.game, base=definition_base(known.game, kind))
    np.testing.assert_allclose(fast.matrix, slow.matrix, atol=1e-10)
    np.testing.assert_allclose(fast.attributions, slow.attributions, atol=1e-10)
    np.testing.assert_allclose(fast.decomposition_gap(), 0.0, atol=1e-10)
    np.testing.assert_allclose(slow.decomposition_gap(), 0.0, atol=1e-10)
    assert fast.asymmetry < 1e-10  # a semivalue base gives a symmetric matrix
    assert np.abs(fast.matrix).max() > 1e-3  # the game has interactions to find


def test_shapley_base_row_sums_rebuild_the_shapley_value():
    known = soum_game(7, seed=2)
    meta = meta_attribution(known.game, base="shapley")
    np.testing.assert_allclose(meta.attributions, exact_shapley(known.game).means, atol=1e-10)
    np.testing.assert_allclose(meta.self_values + meta.matrix.sum(axis=1), known.shapley, atol=1e-10)


def test_leave_one_out_base_is_the_shapley_interaction_index():
    known = soum_game(7, seed=3)
    matrix = interaction_matrix(known.game)
    pairs = exact_interaction_values(known.game, players=list(known.game.players))
    np.testing.assert_allclose(InteractionMatrix.from_pair_values(pairs).matrix, matrix.matrix, atol=1e-10)
    assert matrix["p1", "p2"] == matrix["p2", "p1"]


def test_gradient_base_gives_a_directed_matrix():
    # value(x) = x_a * x_b^2 + x_c: d/dx_a = x_b^2, d/dx_b = 2 x_a x_b, so b moves a's attribution by 1
    # and a moves b's by 2 (a semivalue base would give the same number both ways).
    def relaxed(x):
        return x[:, 0] * x[:, 1] ** 2 + x[:, 2]

    def grad(coalitions):
        x = torch.tensor(coalitions, dtype=torch.float64, requires_grad=True)
        relaxed(x).sum().backward()
        return x.grad.numpy()

    game = Game(["a", "b", "c"], lambda c: relaxed(c.astype(float)))
    meta = meta_attribution(game, base=gradient_base(grad))
    assert meta["a", "b"] == pytest.approx(1.0) and meta["b", "a"] == pytest.approx(2.0)
    assert meta["c", "a"] == pytest.approx(0.0) and meta.asymmetry == pytest.approx(1.0)
    np.testing.assert_allclose(meta.decomposition_gap(), 0.0, atol=1e-12)
    sampled = meta_attribution(game, budget=300, seed=0, base=gradient_base(grad))
    np.testing.assert_allclose(sampled.matrix, meta.matrix, atol=1e-9)  # 3 players: every order is seen


@pytest.mark.parametrize("kind", ["shapley", "leave_one_out"])
def test_sampled_semivalue_matrix_converges_to_exact(kind):
    known = soum_game(9, seed=8)
    exact = meta_attribution(known.game, base=kind)
    players = ["p0", "p1", "p2", "p3"]
    sampled = meta_attribution(known.game, 12000, seed=0, base=kind, players=players)
    block = np.ix_(range(4), range(4))
    off = ~np.eye(4, dtype=bool)
    assert np.all(np.abs(sampled.matrix[block] - exact.matrix[block])[off] <= 5 * sampled.stderrs[block][off] + 1e-9)
    assert np.isnan(sampled.matrix[5, 6])  # pairs outside players= are not computed
    if kind == "leave_one_out":  # same samples as the interaction estimator: importance weights are 1
        pairs = interaction_values(known.game, 12000, seed=0, players=players)
        np.testing.assert_allclose(sampled.matrix[0, 1:4], pairs.means[:3], rtol=1e-12)


def test_matrix_round_trips_json_and_bad_input_is_refused(tmp_path):
    known = soum_game(5, seed=1)
    meta = meta_attribution(known.game)
    meta.save(tmp_path / "meta.json")
    back = InteractionMatrix.load(tmp_path / "meta.json")
    np.testing.assert_array_equal(back.matrix, meta.matrix)
    assert back.names == meta.names and back.base == "shapley"
    assert back.strongest(1)[0][2] == pytest.approx(meta.strongest(1)[0][2])
    with pytest.raises(ProbeError, match="unknown base"):
        meta_attribution(known.game, base="owen")
    with pytest.raises(TooManyPlayersError, match="budget"):
        meta_attribution(soum_game(16, seed=0).game)
    with pytest.raises(ProbeError, match="finite"):
        meta_attribution(known.game, base=lambda i, rows: np.full(len(rows), np.nan))


def test_meta_attribution_and_layer_tree_on_the_heads_of_a_tiny_model():
    import transformers as tf

    import surgery
    from probes.estimators.owen_tree import exact_owen_tree
    from probes.model_game import model_game

    torch.manual_seed(1)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=32, vocab_size=97))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    loaded = surgery.load(model.eval())

    def logprob(logits, batch):
        tgt = batch.targets.expand(logits.shape[0], -1, -1).unsqueeze(-1)
        return logits.log_softmax(-1).gather(-1, tgt).squeeze(-1).mean(dim=(1, 2))

    game = model_game(loaded, token_batch(loaded), logprob, "heads")
    meta = meta_attribution(game, base="shapley")
    assert meta.names[:2] == ["L0.H0", "L0.H1"] and meta.asymmetry < 1e-9
    np.testing.assert_allclose(meta.attributions, exact_shapley(game).means, atol=1e-9)
    np.testing.assert_allclose(meta.decomposition_gap(), 0.0, atol=1e-9)
    layers = exact_owen_tree(game, [[f"L{layer}.H{h}" for h in range(4)] for layer in range(2)])
    assert abs(layers.levels[0].efficiency_gap) < 1e-9 and layers.levels[0].names == ["g0", "g1"]
