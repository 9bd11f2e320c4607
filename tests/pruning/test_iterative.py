"""Iterative head pruning: steps, survivors re-valued on the pruned model, resume after a kill."""

import numpy as np
import pytest
import surgery
from token_batches import token_batch
from tiny_models import build

from probes.game import Game
from probes.objective import keep_model_objective, objective_game
from pruning.errors import PruningError
from pruning.iterative import iterative_head_plan, schedule, survivor_game
from pruning.plan import PruningPlan


@pytest.fixture(scope="module")
def tiny_gpt2():
    return surgery.load(build("gpt2"))  # 3 layers x 4 heads


class Killed(RuntimeError):
    pass


def head_game(loaded, kill_after=None, calls=None):
    """A pairwise game over the model's heads; counts evaluated coalitions, optionally dies mid-run."""
    heads = loaded.components.heads
    rng = np.random.default_rng(0)
    weights, pairs = rng.normal(size=len(heads)), rng.normal(size=(len(heads), len(heads))) * 0.3
    calls = [] if calls is None else calls

    def value(c):
        if kill_after is not None and sum(calls) >= kill_after:
            raise Killed("killed")
        calls.append(len(c))
        x = c.astype(float)
        return x @ weights + np.einsum("mi,ij,mj->m", x, pairs, x)

    return Game(heads, value, {"model": "tiny", "task": "pairwise", "ablation": "zero"}), calls


def test_a_killed_run_resumes_with_nothing_evaluated_twice(tiny_gpt2, tmp_path):
    settings = dict(budget=90, fraction=0.5, step_fraction=0.17, seed=4)
    game, calls = head_game(tiny_gpt2)
    reference = iterative_head_plan(game, tiny_gpt2, store_dir=tmp_path / "whole", **settings)
    total = sum(calls)
    assert len(reference.provenance[0]["steps"]) == 3  # 6 heads in steps of 2

    first_step = reference.provenance[0]["steps"][0]["new_evaluations"]
    dying, died_calls = head_game(tiny_gpt2, kill_after=first_step + 5)  # dies inside the second step
    with pytest.raises(Killed):
        iterative_head_plan(dying, tiny_gpt2, store_dir=tmp_path / "killed", **settings)
    before = sum(died_calls)
    assert first_step < before < total
    resumed_game, resumed_calls = head_game(tiny_gpt2)
    resumed = iterative_head_plan(resumed_game, tiny_gpt2, store_dir=tmp_path / "killed", **settings)
    assert before + sum(resumed_calls) == total  # nothing re-evaluated, nothing skipped
    assert resumed.heads == reference.heads
    assert resumed.provenance[0]["steps"][0]["new_evaluations"] == 0

    again_game, again_calls = head_game(tiny_gpt2)
    iterative_head_plan(again_game, tiny_gpt2, store_dir=tmp_path / "killed", **settings)
    assert sum(again_calls) == 0


def test_plan_records_method_p_objective_and_steps(tiny_gpt2, tmp_path):
    batch = token_batch(tiny_gpt2, batch=2, seq=10, positions=4)
    objective = keep_model_objective(tiny_gpt2, batch, measure="kl", source="random tokens")
    game = objective_game(tiny_gpt2, objective, "heads", mode="mean")
    plan = iterative_head_plan(game, tiny_gpt2, budget=60, store_dir=tmp_path / "s", k=4, step_fraction=0.17,
                               prior="gradient", seed=1)
    assert len(plan.heads) == 4
    record = plan.provenance[0]
    assert record["policy"] == "iterative_head_plan"
    settings = record["settings"]
    assert settings["method"] == "weighted_banzhaf" and settings["ablation"] == "mean"
    assert settings["objective"]["name"] == "keep_model"
    assert settings["objective"]["terms"][0]["source"] == "random tokens"
    assert settings["p_per_step"] == pytest.approx([1 - 2 / 12, 1 - 2 / 10])
    assert [len(s["removed"]) for s in record["steps"]] == [2, 2]
    assert record["steps"][1]["n_players"] == 10
    PruningPlan.from_json_dict(plan.to_json_dict())  # the plan stays valid JSON


def test_survivors_are_valued_with_removed_heads_still_ablated(tiny_gpt2):
    game, _ = head_game(tiny_gpt2)
    removed = ["L0.H1", "L2.H3"]
    sub = survivor_game(game, removed)
    assert "L0.H1" not in sub.players and sub.n_players == 10
    rows = np.random.default_rng(0).random((5, 10)) < 0.7
    wide = np.zeros((5, 12), dtype=bool)
    wide[:, [game.players.index(name) for name in sub.players]] = rows
    np.testing.assert_allclose(sub(rows), game(wide))
    assert sub.fingerprint["removed"] == sorted(removed)


def test_step_larger_than_target_and_bad_budgets_are_refused(tiny_gpt2, tmp_path):
    game, _ = head_game(tiny_gpt2)
    with pytest.raises(PruningError, match="larger than the target"):
        iterative_head_plan(game, tiny_gpt2, budget=100, store_dir=tmp_path, k=1, step_fraction=0.25)
    with pytest.raises(PruningError, match="per step"):
        iterative_head_plan(game, tiny_gpt2, budget=20, store_dir=tmp_path, fraction=0.5, step_fraction=0.17)
    with pytest.raises(PruningError, match="k= or fraction="):
        iterative_head_plan(game, tiny_gpt2, budget=100, store_dir=tmp_path)
    with pytest.raises(PruningError, match="all 12 heads"):
        iterative_head_plan(Game(["a", "b"], lambda c: c.sum(1)), tiny_gpt2, budget=100, store_dir=tmp_path, k=1)


def test_schedule_puts_the_remainder_in_the_last_step():
    assert schedule(100, 25, 10) == [10, 10, 5]
    assert schedule(100, 20, 10) == [10, 10]


def test_one_shot_head_plan_shows_the_objective_and_p_of_its_values(tiny_gpt2):
    from probes.estimators import estimate
    from pruning.policies import head_plan

    batch = token_batch(tiny_gpt2, batch=2, seq=10, positions=4)
    game = objective_game(tiny_gpt2, keep_model_objective(tiny_gpt2, batch, source="calib"), "heads")
    values = estimate(game, budget=40, seed=0, estimator="weighted_banzhaf", fraction=0.25)
    plan = head_plan(values, tiny_gpt2, fraction=0.25)
    shown = plan.provenance[0]["values"]
    assert shown["objective"]["terms"][0]["source"] == "calib"
    assert shown["p"] == pytest.approx(0.75)


def test_on_evaluated_counts_every_new_evaluation_and_nothing_replayed(tiny_gpt2, tmp_path):
    settings = dict(budget=60, k=4, step_fraction=0.17, seed=1)
    game, calls = head_game(tiny_gpt2)
    seen = []
    plan = iterative_head_plan(game, tiny_gpt2, store_dir=tmp_path / "s", on_evaluated=seen.append, **settings)
    steps = plan.provenance[0]["steps"]
    assert sum(seen) == sum(calls) == sum(s["new_evaluations"] for s in steps) > 0
    replay, _ = head_game(tiny_gpt2)
    again = []
    iterative_head_plan(replay, tiny_gpt2, store_dir=tmp_path / "s", on_evaluated=again.append, **settings)
    assert again == []  # every coalition came from the store
