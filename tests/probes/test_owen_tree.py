"""Owen values over nested trees: against the brute-force definition, Shapley, the one-level
estimator, efficiency at every level, sampling, and bad trees."""

import itertools

import numpy as np
import pytest

from probes.errors import ProbeError, TooManyPlayersError
from probes.estimators import get_estimator
from probes.estimators.exact import exact_shapley
from probes.estimators.owen import owen_values
from probes.estimators.owen_tree import TreeValues, exact_owen_tree, owen_tree, span_tree
from probes.synthetic_games import soum_game

TREE = [[0, [1, 2]], [[3, 4], 5, 6], 7]


def brute_force_owen(game, tree):
    """Average marginal contribution over every order that keeps each subtree contiguous."""
    def orders(node):
        if isinstance(node, int):
            yield [node]
            return
        for arrangement in itertools.permutations(node):
            for parts in itertools.product(*[list(orders(child)) for child in arrangement]):
                yield [p for part in parts for p in part]

    n = game.n_players
    total, count = np.zeros(n), 0
    for order in orders(tree):
        rows = np.zeros((n + 1, n), dtype=bool)
        for k, player in enumerate(order):
            rows[k + 1:, player] = True
        values = game(rows)
        total[order] += np.diff(values)
        count += 1
    return total / count


def test_exact_tree_values_equal_the_brute_force_definition():
    known = soum_game(8, seed=3)
    result = exact_owen_tree(known.game, TREE)
    np.testing.assert_allclose(result.players.means, brute_force_owen(known.game, TREE), atol=1e-10)


def test_singleton_groups_give_the_shapley_value():
    known = soum_game(6, seed=1)
    flat = exact_owen_tree(known.game, list(range(6)))
    singletons = exact_owen_tree(known.game, [[i] for i in range(6)])
    np.testing.assert_allclose(flat.players.means, known.shapley, atol=1e-10)
    np.testing.assert_allclose(singletons.players.means, known.shapley, atol=1e-10)
    np.testing.assert_allclose(singletons.players.means, exact_shapley(known.game).means, atol=1e-10)


def test_every_level_is_efficient_and_groups_sum_their_children():
    known = soum_game(8, seed=5)
    result = exact_owen_tree(known.game, TREE)
    assert [level.names for level in result.levels[:1]] == [["g0", "g1", "p7"]]
    for level in result.levels:
        assert abs(level.efficiency_gap) < 1e-10
    assert result.node("g0") == pytest.approx(result.node("p0") + result.node("g0.1"))
    assert result.node("g0.1") == pytest.approx(result.node("p1") + result.node("p2"))
    assert result.parents["g1.0"] == "g1"


def test_top_level_equals_shapley_of_the_game_between_top_groups():
    known = soum_game(8, seed=6)
    result = exact_owen_tree(known.game, TREE)
    members = [[0, 1, 2], [3, 4, 5, 6], [7]]

    def quotient(present):
        rows = np.zeros((len(present), 8), dtype=bool)
        for g, m in enumerate(members):
            rows[:, m] = present[:, [g]]
        return known.game(rows)

    from probes.game import Game
    truth = exact_shapley(Game(["a", "b", "c"], quotient)).means
    np.testing.assert_allclose(result.levels[0].means, truth, atol=1e-10)


def test_one_level_tree_matches_the_owen_estimator_and_sampling_converges():
    known = soum_game(9, seed=7)
    labels = ["a", "a", "a", "b", "b", "c", "c", "c", "c"]
    tree = [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    exact = exact_owen_tree(known.game, tree)
    one_level = owen_values(known.game, 6000, seed=0, groups=labels)
    sampled = owen_tree(known.game, tree, 6000, seed=0)
    for estimate in (one_level.players, sampled.players):
        assert np.all(np.abs(estimate.means - exact.players.means) <= 5 * estimate.stderrs + 1e-9)
    assert abs(sampled.players.efficiency_gap) < 1e-9 and abs(sampled.levels[0].efficiency_gap) < 1e-9
    again = owen_tree(known.game, tree, 6000, seed=0)
    np.testing.assert_array_equal(again.players.means, sampled.players.means)


def test_registered_estimator_takes_a_tree_and_results_round_trip_json(tmp_path):
    known = soum_game(8, seed=2)
    values = get_estimator("owen")(known.game, tree=TREE)
    np.testing.assert_allclose(values.means, exact_owen_tree(known.game, TREE).players.means)
    assert set(values.details["levels"][0]) == {"g0", "g1", "p7"}
    result = owen_tree(known.game, TREE, 400, seed=1)
    result.save(tmp_path / "tree.json")
    import json
    back = TreeValues.from_json_dict(json.loads((tmp_path / "tree.json").read_text()))
    np.testing.assert_array_equal(back.levels[0].means, result.levels[0].means)
    assert back.tree == TREE


@pytest.mark.parametrize("tree, message", [
    ([[0, 1], [1, 2]], "exactly once"),
    ([[0, 1]], "missing"),
    ([[0, 1], [], [2]], "empty"),
    ([[0, 9], [1, 2]], "not a player index"),
    ([["p0", "zz"], [1, 2]], "not a player"),
])
def test_bad_trees_are_refused_with_the_reason(tree, message):
    with pytest.raises(ProbeError, match=message):
        span_tree(tree, ["p0", "p1", "p2"])


def test_exact_refuses_a_tree_too_large_and_names_the_sampler():
    known = soum_game(30, seed=0)
    with pytest.raises(TooManyPlayersError, match="budget"):
        exact_owen_tree(known.game, list(range(30)))


def test_binary_tree_values_equal_shap_partition_explainer():
    shap = pytest.importorskip("shap")  # dev extra; shap's Partition explainer walks the same binary tree
    known = soum_game(6, seed=3)
    # Linkage rows (left, right, distance, size) for the tree (((0, 1), (2, (3, 4))), 5); new nodes are 6, 7, ...
    linkage = np.array([[0, 1, 1, 2], [3, 4, 1, 2], [2, 7, 2, 3], [6, 8, 3, 5], [5, 9, 4, 6]], dtype=float)
    explainer = shap.PartitionExplainer(lambda x: known.game(np.asarray(x) > 0.5),
                                        shap.maskers.Partition(np.zeros((1, 6)), clustering=linkage))
    theirs = explainer(np.ones((1, 6)), max_evals=5000).values[0]
    ours = exact_owen_tree(known.game, [[[0, 1], [2, [3, 4]]], 5])
    np.testing.assert_allclose(ours.players.means, theirs, atol=1e-10)


def test_sampled_tree_values_resume_from_the_coalition_store(tmp_path):
    from probes.game import Game

    known = soum_game(8, seed=4)
    def make():
        return Game(known.game.players, known.game.value_function, {"game": "soum", "seed": 4}, store=tmp_path / "s")
    first_game = make()
    first = owen_tree(first_game, TREE, 300, seed=2)
    again_game = make()
    again = owen_tree(again_game, TREE, 300, seed=2)
    assert first_game.n_evaluations > 0 and again_game.n_evaluations == 0  # every coalition read back
    np.testing.assert_array_equal(first.players.means, again.players.means)


def test_text_tree_groups_token_spans_by_paragraph_sentence_and_word():
    from probes.text_tree import text_tree

    text = "Anna went to Rome. She liked it.\n\nThe end."
    words = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)]
    tokens = [(lo, lo + 2) if hi - lo > 4 else (lo, hi) for lo, hi in words]  # split long words in two
    tokens = sorted(tokens + [(lo + 2, hi) for lo, hi in words if hi - lo > 4])
    tree = text_tree(text, tokens)
    # paragraphs -> sentences -> words -> tokens; "Rome." (5 chars) and "liked" are two tokens each
    assert tree == [[[0, 1, 2, [3, 4]], [5, [6, 7], 8]], [9, 10]]
    assert text_tree(text, tokens, ["word"])[3] == [3, 4]
    with pytest.raises(ProbeError, match="unknown text level"):
        text_tree(text, tokens, ["chapter"])
    result = exact_owen_tree(soum_game(11, seed=0).game, tree)
    assert [round(level.efficiency_gap, 10) for level in result.levels] == [0.0] * len(result.levels)


def test_exact_tree_values_count_as_exact_intervals():
    result = exact_owen_tree(soum_game(5, seed=0).game, [[0, 1], [2, 3, 4]])
    assert result.players.has_interval().all() and result.levels[0].has_interval().all()
    assert result.levels[0].details["depth"] == 1


def test_render_shows_every_node_with_groups_summing_their_children():
    from probes.estimators.owen_tree import owen_tree
    from probes.synthetic_games import soum_game

    game = soum_game(8, seed=0).game
    tree = owen_tree(game, [[0, [1, 2]], [[3, 4], 5, 6], 7])
    lines = tree.render({"p7": "last one"}, digits=10).splitlines()
    depth = [(len(line) - len(line.lstrip(" "))) // 4 for line in lines]
    names = [line.strip().split(":")[0] for line in lines]
    values = [float(line.split(":")[1].split()[0]) for line in lines]
    assert sorted(n for n in names if n.startswith("p")) == sorted(game.players)
    assert "'last one'" in lines[names.index("p7")]
    for i, d in enumerate(depth):  # a node's value is the sum of the nodes one level below it, up to the next sibling
        kids = []
        for j in range(i + 1, len(lines)):
            if depth[j] <= d:
                break
            if depth[j] == d + 1:
                kids.append(values[j])
        if kids:
            assert abs(values[i] - sum(kids)) < 1e-6, names[i]
    assert abs(values[0] - float(game(np.ones((1, 8), bool))[0] - game(np.zeros((1, 8), bool))[0])) < 1e-6
