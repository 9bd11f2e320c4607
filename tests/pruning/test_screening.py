"""Screened operating-point pruning: only the lowest-screened survivors are valued, the rest stay present."""

import numpy as np
import pytest
import surgery
import torch
from token_batches import token_batch
from tiny_models import build

from probes.game import Game
from probes.objective import keep_model_objective, objective_game
from pruning.errors import PruningError
from pruning.iterative import iterative_head_plan, survivor_game
from pruning.screening import candidates, gate_gradient_screen


@pytest.fixture(scope="module")
def tiny_llama():
    return surgery.load(build("llama"))


def test_survivor_game_holds_non_players_present_and_removed_absent():
    seen = []
    full = Game(["a", "b", "c", "d"], lambda c: (seen.append(c.copy()), c.sum(1).astype(float))[1], {"task": "t"})
    sub = survivor_game(full, removed=["a"], players=["c"])
    sub.value_function(np.array([[True], [False]]))
    assert seen[-1].tolist() == [[False, True, True, True], [False, True, False, True]]
    assert sub.fingerprint["present"] == ["b", "d"] and sub.fingerprint["removed"] == ["a"]
    with pytest.raises(PruningError, match="both removed and playing"):
        survivor_game(full, removed=["a"], players=["a"])


def test_candidates_are_the_lowest_scores_in_a_seed_free_order():
    assert candidates({"x": 3.0, "y": 1.0, "z": 1.0, "w": 0.5}, 3) == ["w", "y", "z"]


def test_gradient_screen_matches_a_finite_difference(tiny_llama):
    batch = token_batch(tiny_llama, batch=2, seq=12, positions=5)
    from surgery.engine import AblationEngine
    engine = AblationEngine(tiny_llama, "heads", mode="mean", reference=batch)
    scores = gate_gradient_screen(engine, batch)(["L0.H1"])
    assert "L0.H1" not in scores and len(scores) == engine.n_players - 1
    from probes.metrics import make_metric
    loss, head = make_metric("loss"), engine.players.index("L1.H0")
    eps, total = 1e-3, 0.0
    for i in range(batch.size):  # E|d loss/d gate| by central differences, one sequence at a time
        row = type(batch)(*(None if t is None else t[i:i + 1] for t in
                            (batch.input_ids, batch.attention_mask, batch.score_positions, batch.targets)))
        gates = torch.ones(2, engine.n_players, dtype=torch.float64)
        gates[:, engine.players.index("L0.H1")] = 0.0
        gates[0, head] -= eps
        with torch.no_grad():
            lo, hi = loss(engine.logits(gates.float(), row), row)
        total += abs(float(hi - lo)) / eps
    assert scores["L1.H0"] == pytest.approx(total / batch.size, rel=5e-2, abs=1e-4)


def test_screened_iterative_plan_values_candidates_and_ships_compensated_removal(tiny_llama, tmp_path):
    batch = token_batch(tiny_llama, batch=2, seq=12, positions=5)
    objective = keep_model_objective(tiny_llama, batch, measure="loss", source="random tokens")
    game = objective_game(tiny_llama, objective, "heads", mode="mean")
    screen = gate_gradient_screen(game.engine, batch)
    n = game.n_players
    plan = iterative_head_plan(game, tiny_llama, budget=60, store_dir=tmp_path, k=2, step_fraction=1 / n,
                               screen=2.0, screen_scores=screen, seed=1)
    steps = plan.provenance[0]["steps"]
    assert len(steps) == 2 and all(len(s["candidates"]) == 2 and s["p"] == 0.5 for s in steps)
    assert all(set(s["removed"]) <= set(s["candidates"]) for s in steps)
    assert plan.removal_mode == "mean_compensated" and plan.calibration["digest"]
    with pytest.raises(PruningError, match="screen"):
        iterative_head_plan(game, tiny_llama, budget=60, store_dir=tmp_path / "x", k=2, screen=2.0)


def test_task_terms_add_their_weighted_gradient_to_the_screen(tiny_llama):
    """A task term adds |weight| x E|d metric / d gate| (per example) to the text screen."""
    from probes.tasks.base import TaskBatch

    batch = token_batch(tiny_llama, batch=2, seq=10, positions=4)
    task = TaskBatch(token_batch(tiny_llama, batch=3, seq=8, positions=3), "toy", ("loss",))
    from surgery.engine import AblationEngine
    engine = AblationEngine(tiny_llama, "heads", mode="mean", reference=batch)
    text_only = gate_gradient_screen(engine, batch)([])
    task_only = gate_gradient_screen(engine, task.tokens)([])  # the same loss, as a text term
    mixed = gate_gradient_screen(engine, batch, tasks=[(task, "loss", -0.5)])([])
    for name in ("L0.H0", "L1.H3", "L2.H5"):
        assert mixed[name] == pytest.approx(text_only[name] + 0.5 * task_only[name], rel=1e-5)
