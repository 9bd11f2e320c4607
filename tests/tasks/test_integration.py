"""SmolLM2-135M scores far above chance on the built-in tasks through the ablation engine (full model)."""

import math

import pytest
import torch

from probes.tasks import get_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine():
    import surgery
    from surgery.engine import AblationEngine
    from surgery.errors import ModelNotFoundError
    try:
        loaded = surgery.load("smollm2-135m")
    except ModelNotFoundError as error:
        pytest.skip(f"embedded SmolLM2 unavailable: {error}")
    return AblationEngine(loaded, "layers")


def clean_score(engine, name, n, **settings):
    tb = get_task(name, n=n, **settings).batch(engine.loaded.tokenizer, seed=0)
    full = torch.ones(1, engine.n_players, dtype=torch.bool)
    return float(engine.evaluate(full, tb.tokens, tb.metric())[0])


def test_smollm2_knows_facts_copies_sequences_and_orders_years(engine):
    chance_logprob = -math.log(engine.loaded.model.config.vocab_size)  # -10.8
    # ~200 tokens of forward passes in all
    factual = clean_score(engine, "factual", n=6)
    assert factual > -2.0 > chance_logprob + 5
    induction = clean_score(engine, "induction", n=3, length=10)
    assert induction > -4.0
    greater = clean_score(engine, "greater_than", n=6)
    assert greater > 0.2  # chance: 0 (as much mass before the start year as after)
