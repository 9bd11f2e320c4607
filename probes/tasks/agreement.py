"""Subject-verb agreement with attractors: "The keys near the cabinet" -> " are" (not " is").

The subject and the attractor noun in the prepositional phrase differ in number, so copying the
nearest noun's number gives the wrong verb. Scored at the last token; target = the verb form that
agrees with the subject, counterfactual = the other form. Natural metric: pair accuracy (right form
scores above the wrong one); logit difference for a smooth alternative.
"""

from __future__ import annotations

import torch

from probes.tasks.base import Row, Task, TaskError, Tok, is_single_token, prompt_row

NOUNS = [("key", "keys"), ("author", "authors"), ("doctor", "doctors"), ("teacher", "teachers"),
         ("dog", "dogs"), ("picture", "pictures"), ("boy", "boys"), ("girl", "girls"), ("student", "students"),
         ("house", "houses"), ("car", "cars"), ("book", "books"), ("farmer", "farmers"), ("painting", "paintings")]
ATTRACTORS = [("cabinet", "cabinets"), ("table", "tables"), ("window", "windows"), ("tree", "trees"),
              ("chair", "chairs"), ("building", "buildings"), ("river", "rivers"), ("wall", "walls")]
PREPOSITIONS = ["near the", "next to the", "behind the", "by the", "on the left of the", "beside the"]
VERBS = [("is", "are"), ("was", "were"), ("has", "have")]


def examples(n: int, seed: int, verbs=VERBS, attractors: bool = True) -> list[tuple[str, str, str]]:
    """(prompt, right verb, wrong verb), half singular and half plural subjects, seeded."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]
    out = []
    for i in range(n):
        plural = i % 2 == 1
        subject = pick(NOUNS)[plural]
        attractor = pick(ATTRACTORS)[not plural if attractors else plural]
        singular_verb, plural_verb = pick(verbs)
        right, wrong = (plural_verb, singular_verb) if plural else (singular_verb, plural_verb)
        out.append((f"The {subject} {pick(PREPOSITIONS)} {attractor}", right, wrong))
    return out


def agreement_task(n: int = 32, attractors: bool = True) -> Task:
    """attractors=False puts the attractor noun in the subject's number (an easier control)."""

    def build(tok: Tok, n: int, seed: int) -> list[Row]:
        verbs = [v for v in VERBS if all(is_single_token(tok, "The dog", x) for x in v)]
        if not verbs:
            raise TaskError(f"agreement: none of the verb pairs {VERBS} are single tokens for tokenizer {tok.name}")
        return [prompt_row(tok, p, r, w, single=True, why="agreement (right vs wrong verb form)")
                for p, r, w in examples(n, seed, verbs, attractors)]

    return Task("agreement", build, ("pair_accuracy", "logit_diff", "logprob"), n=n,
                scored="the last token (the attractor noun); target = agreeing verb, counterfactual = the other",
                settings={"attractors": attractors}, description=__doc__.split("\n")[0])
