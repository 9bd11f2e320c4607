"""Indirect object identification: "When Mary and John went to the store, John gave a drink to" -> " Mary".

Templated from names, places and objects; the two names appear in both orders (ABBA and BABA).
Scored at the last token; natural metric: logit(indirect object) - logit(subject), averaged.
Names that are not one token for the tokenizer (after a space) are left out of the pool.
"""

from __future__ import annotations

import torch

from probes.tasks.base import Row, Task, TaskError, Tok, is_single_token, prompt_row

NAMES = ["Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "Michael", "David", "Emma", "Kate", "Peter",
         "Lisa", "Mark", "Susan", "Robert", "Alice", "Daniel", "Laura", "Steve", "Rachel", "Chris", "Emily", "Jack"]
PLACES = ["store", "park", "school", "hospital", "office", "restaurant", "beach", "station", "garden", "library"]
OBJECTS = ["drink", "book", "ball", "gift", "letter", "key", "ring", "bag", "snack", "computer"]
TEMPLATES = [
    "When {A} and {B} went to the {place}, {S} gave a {obj} to",
    "After {A} and {B} went to the {place}, {S} gave a {obj} to",
    "While {A} and {B} were working at the {place}, {S} handed a {obj} to",
    "Then, {A} and {B} had a long day at the {place}. {S} gave a {obj} to",
    "When {A} and {B} got a {obj} at the {place}, {S} decided to give it to",
]


def examples(n: int, seed: int, names=NAMES) -> list[tuple[str, str, str]]:
    """(prompt, indirect object, subject) triples, seeded."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]
    out = []
    for i in range(n):
        idx = torch.randperm(len(names), generator=g)[:2].tolist()
        io, s = names[idx[0]], names[idx[1]]
        a, b = (io, s) if i % 2 == 0 else (s, io)  # alternate ABBA / BABA
        prompt = pick(TEMPLATES).format(A=a, B=b, S=s, place=pick(PLACES), obj=pick(OBJECTS))
        out.append((prompt, io, s))
    return out


def ioi_task(n: int = 32) -> Task:
    def build(tok: Tok, n: int, seed: int) -> list[Row]:
        names = [x for x in NAMES if is_single_token(tok, "gave it to", x)]
        if len(names) < 2:
            raise TaskError(f"ioi: fewer than 2 of the built-in names are single tokens for tokenizer {tok.name}")
        return [prompt_row(tok, p, io, s, single=True, why="ioi (logit difference IO - S)")
                for p, io, s in examples(n, seed, names)]

    return Task("ioi", build, ("logit_diff", "pair_accuracy", "logprob"), n=n,
                scored="the last token (' to'); target = indirect object, counterfactual = subject",
                description=__doc__.split("\n")[0])
