"""Factual recall: "The capital of France is" -> " Paris", and similar templated facts.

The facts are ones SmolLM2-135M(-Instruct) gets right (its top-1 next token was the answer when this
list was curated; capitals it misses, such as Canberra or Warsaw, are left out), so a clean model
scores high and ablations have something to destroy. Facts whose answer is not one token for the
tokenizer are dropped from the pool. Scored at the last token; metrics: log-prob and accuracy.
"""

from __future__ import annotations

import torch

from probes.tasks.base import Row, Task, TaskError, Tok, is_single_token, prompt_row

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("England", "London"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Denmark", "Copenhagen"), ("Hungary", "Budapest"), ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"), ("Cuba", "Havana"), ("Netherlands", "Amsterdam"), ("Chile", "Santiago"),
    ("Scotland", "Edinburgh"), ("Wales", "Cardiff"), ("Syria", "Damascus"), ("Korea", "Seoul"),
    ("Philippines", "Manila"), ("Czech Republic", "Prague"), ("Israel", "Jerusalem"),
]
CAPITAL_TEMPLATES = ["The capital of {} is", "The capital city of {} is"]
LANGUAGES = [("France", "French"), ("Germany", "German"), ("Spain", "Spanish"), ("Italy", "Italian"),
             ("Russia", "Russian"), ("Mexico", "Spanish"), ("Poland", "Polish"), ("Turkey", "Turkish"),
             ("Egypt", "Arabic")]
OTHER = [
    ("The Eiffel Tower is located in the city of", "Paris"),
    ("The Colosseum is located in the city of", "Rome"),
    ("The currency of the United Kingdom is the", "pound"),
    ("The largest planet in the solar system is", "Jupiter"),
    ("The chemical symbol for gold is", "Au"),
]


def facts() -> list[tuple[str, str]]:
    """All (prompt, answer) pairs of the built-in pool."""
    out = [(t.format(c), a) for c, a in CAPITALS for t in CAPITAL_TEMPLATES]
    out += [(f"The official language of {c} is", a) for c, a in LANGUAGES]
    return out + OTHER


def factual_task(n: int = 32) -> Task:
    def build(tok: Tok, n: int, seed: int) -> list[Row]:
        pool = [(p, a) for p, a in facts() if is_single_token(tok, p, a)]
        if not pool:
            raise TaskError(f"factual: none of the built-in answers is a single token for tokenizer {tok.name}")
        g = torch.Generator().manual_seed(seed)
        order = []
        while len(order) < n:  # a permutation of the pool, repeated only when n exceeds it
            order.extend(torch.randperm(len(pool), generator=g).tolist())
        return [prompt_row(tok, *pool[i], single=True, why="factual recall (accuracy)") for i in order[:n]]

    return Task("factual", build, ("logprob", "accuracy", "loss"), n=n,
                scored="the last token of the prompt; target = the answer word",
                description=__doc__.split("\n")[0])
