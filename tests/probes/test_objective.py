"""The keep-the-model objective: KL / loss against the unpruned model, task terms, recorded provenance."""

import numpy as np
import pytest
import torch
from token_batches import token_batch

from probes.errors import ProbeError
from probes.estimators import estimate
from probes.metrics import KLDivergence, Loss
from probes.objective import keep_model_objective, objective_game, task_objective
from probes.priors import gate_gradient_prior
from probes.tasks import TaskBatch
from probes.values import Values


def test_kl_objective_is_zero_for_the_full_model_and_negative_when_heads_go(tiny_llama):
    batch = token_batch(tiny_llama, batch=2, seq=12, positions=5)
    objective = keep_model_objective(tiny_llama, batch, measure="kl", source="random tokens")
    game = objective_game(tiny_llama, objective, "heads", mode="mean")
    assert game.full_value == pytest.approx(0.0, abs=1e-9)
    assert game.empty_value < 0
    # The value is minus the KL divergence of the next-token distributions at the scored positions.
    masks = np.zeros((1, game.n_players), dtype=bool)
    masks[0, ::2] = True
    kl = KLDivergence(game.engine, batch.input_ids)
    expected = -float(game.engine.evaluate(torch.from_numpy(masks), batch, kl)[0])
    assert game(masks)[0] == pytest.approx(expected)


def test_objective_is_recorded_in_the_values_file(tiny_llama, tmp_path):
    batch = token_batch(tiny_llama, batch=2, seq=12, positions=5)
    objective = keep_model_objective(tiny_llama, batch, measure="loss", weight=2.0, source="calib.txt")
    game = objective_game(tiny_llama, objective, "layers")
    values = estimate(game, budget=8, estimator="weighted_banzhaf", p=0.8)
    loaded = Values.load(values.save(tmp_path / "v.json"))
    recorded = loaded.fingerprint["objective"]
    assert recorded["name"] == "keep_model"
    assert recorded["terms"][0] == {"term": "loss", "metric": "loss", "weight": 2.0, "source": "calib.txt",
                                    "n_sequences": 2, "batch_digest": recorded["terms"][0]["batch_digest"]}
    assert loaded.fingerprint["ablation"] == "zero"


def test_task_terms_are_mixed_in_with_their_weights(tiny_llama):
    text = token_batch(tiny_llama, batch=2, seq=12, positions=5, seed=1)
    task_tokens = token_batch(tiny_llama, batch=3, seq=10, positions=1, seed=2)
    task = TaskBatch(task_tokens, "lookup", ("loss",))
    mixed = objective_game(tiny_llama, keep_model_objective(tiny_llama, text, measure="kl", weight=1.0,
                                                            tasks=[(task, "loss", 0.5)]), "layers")
    alone = objective_game(tiny_llama, keep_model_objective(tiny_llama, text, measure="kl"), "layers")
    masks = np.array([[True, False, True], [False, True, True]])
    task_loss = alone.engine.evaluate(torch.from_numpy(masks), task_tokens, Loss()).numpy()
    np.testing.assert_allclose(mixed(masks), alone(masks) - 0.5 * task_loss, rtol=1e-6)
    assert mixed.fingerprint["objective"]["name"] == "keep_model+tasks"
    assert mixed.fingerprint != alone.fingerprint  # stores of the two objectives never mix


def test_builtin_text_calibration_records_its_source(tiny_dir):
    import surgery

    loaded = surgery.load(str(tiny_dir))
    objective = keep_model_objective(loaded, None, measure="kl", n=2, seq_len=24, seed=3)
    source = objective.describe()["terms"][0]["source"]
    assert source.startswith("builtin:stdlib-docs@") and "seq_len 24" in source and "seed 3" in source
    game = objective_game(loaded, objective, "layers")
    assert game.full_value == pytest.approx(0.0, abs=1e-9)


def test_bad_objective_settings_are_refused(tiny_llama):
    batch = token_batch(tiny_llama)
    with pytest.raises(ProbeError, match="unknown keep-the-model measure"):
        keep_model_objective(tiny_llama, batch, measure="accuracy")
    with pytest.raises(ProbeError, match="non-zero"):
        keep_model_objective(tiny_llama, batch, weight=0)
    with pytest.raises(ProbeError, match="TaskBatch"):
        keep_model_objective(tiny_llama, batch, tasks=[(batch, "loss", 1.0)])


def test_gate_gradient_prior_matches_a_finite_difference(tiny_llama):
    batch = token_batch(tiny_llama, batch=2, seq=12, positions=5)
    game = objective_game(tiny_llama, task_objective(TaskBatch(batch, "lookup", ("loss",)), "loss"), "layers")
    base = np.full(game.n_players, 0.9)
    grad = gate_gradient_prior(game, base)
    step = 1e-2
    for i in range(game.n_players):
        up, down = base.copy(), base.copy()
        up[i] += step
        down[i] -= step
        with torch.no_grad():
            diff = (game.gate_value(torch.tensor(up, dtype=torch.float32)[None])
                    - game.gate_value(torch.tensor(down, dtype=torch.float32)[None])) / (2 * step)
        assert grad[i] == pytest.approx(float(diff), rel=0.05, abs=1e-4)


def test_kl_gradient_vanishes_at_the_full_model(tiny_llama):
    """Why the prior is taken at the operating point: KL is minimal at the full model."""
    batch = token_batch(tiny_llama, batch=2, seq=12, positions=5)
    game = objective_game(tiny_llama, keep_model_objective(tiny_llama, batch), "layers")
    assert np.abs(gate_gradient_prior(game)).max() < 1e-6
    assert np.abs(gate_gradient_prior(game, np.full(game.n_players, 0.9))).max() > 1e-5
