"""Task terms of the main job's game: prompts the evaluation never sees, smooth metrics, clear refusals."""

import pytest
from tiny_text_model import tiny_text_model

from probes.tasks import get_task
from pruning.errors import PruningError
from pruning.keep_model import calibration_task_terms, keep_model_head_plan

TASKS = ["induction", "ioi", "factual", "agreement", "greater_than"]


@pytest.fixture(scope="module")
def model():
    return tiny_text_model()


def unpadded(batch):
    return {tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch.tokens.input_ids, batch.tokens.attention_mask)}


def test_task_terms_avoid_the_evaluation_prompts_and_use_smooth_metrics(model):
    held = {name: get_task(name).batch(model, n=8, seed=1000) for name in TASKS}
    terms = calibration_task_terms(model, TASKS, n=4, weight=0.5, seed=1000, held_out=held)  # same seed on purpose
    assert [t[0].task for t in terms] == TASKS
    for task_batch, metric, weight in terms:
        assert task_batch.size == 4 and weight == 0.5
        assert not unpadded(task_batch) & unpadded(held[task_batch.task])
        assert metric in ("logprob", "logit_diff", "prob_mass")  # never a step metric


def test_a_task_without_enough_fresh_prompts_is_refused_by_name(model):
    held = {"factual": get_task("factual").batch(model, n=200, seed=0)}  # the whole (small) pool
    with pytest.raises(PruningError, match="factual.*prompts outside the evaluation"):
        calibration_task_terms(model, ["factual"], n=4, weight=1.0, seed=3, held_out=held)


def test_task_terms_enter_the_plans_objective(model, tmp_path):
    text = get_task("text", n=2, seq_len=16).batch(model, seed=0).tokens
    terms = calibration_task_terms(model, ["agreement"], n=2, weight=0.25, seed=0)
    plan = keep_model_head_plan(model, text, fraction=0.1, budget=24, seed=0, store_dir=tmp_path, tasks=terms)
    objective = plan.provenance[0]["settings"]["objective"]
    assert [t["term"] for t in objective["terms"]] == ["loss", "agreement"]
    assert objective["terms"][1]["weight"] == 0.25 and objective["terms"][1]["metric"] == "logit_diff"
    assert plan.removal_mode == "mean_compensated"


def test_a_bfloat16_game_leaves_the_model_in_float32_and_is_recorded(model, tmp_path):
    import torch

    text = get_task("text", n=2, seq_len=16).batch(model, seed=0).tokens
    plan = keep_model_head_plan(model, text, fraction=0.1, budget=24, seed=0, store_dir=tmp_path,
                                game_dtype=torch.bfloat16)
    assert plan.provenance[0]["settings"]["game_dtype"] == "bfloat16"
    assert next(model.model.parameters()).dtype == torch.float32
    assert len(plan.heads) == round(0.1 * len(model.components.heads))
