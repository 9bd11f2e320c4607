"""Greater-than: "The war lasted from the year 1732 to the year 17" -> a year after 32.

The natural metric is probability mass: p(years later than the start) - p(years earlier), at the
last token. How a year continues depends on the tokenizer, so the task looks: if every two-digit
string "00".."99" is one token after the century (GPT-2: " 17" + "32"), the sets are two-digit
tokens and the start year yy runs 02..98; if digits are single tokens (SmolLM2, Llama), the next
token is the tens digit, the sets are the digits above / below the start's tens digit (an equal
tens digit counts 0), and yy's tens digit runs 1..8. Otherwise the task refuses the tokenizer.
"""

from __future__ import annotations

import torch

from probes.tasks.base import Row, Task, TaskError, Tok, continuation

NOUNS = ["war", "expedition", "dynasty", "drought", "siege", "reign", "project", "famine", "voyage", "trial",
         "campaign", "strike", "occupation", "pilgrimage", "construction"]
CENTURIES = list(range(11, 18))


def prompt_template(noun: str, century: int, yy: int) -> str:
    return f"The {noun} lasted from the year {century}{yy:02d} to the year {century}"


def year_mode(tok: Tok) -> tuple[str, dict[str, int]]:
    """('pair', {'00': id, ...}) or ('digit', {'0': id, ...}) for this tokenizer."""
    prompt = prompt_template("war", 17, 32)
    for mode, strings in (("pair", [f"{i:02d}" for i in range(100)]), ("digit", [str(i) for i in range(10)])):
        ids = {}
        for s in strings:
            try:
                _, t = continuation(tok, prompt, s, join="")
            except TaskError:
                break
            if len(t) != 1 or (tok.unk_id is not None and t[0] == tok.unk_id):
                break
            ids[s] = t[0]
        else:
            if len(set(ids.values())) == len(strings):
                return mode, ids
    raise TaskError(f"greater_than: tokenizer {tok.name} splits years neither into two-digit tokens nor into "
                    "single digits after the century (e.g. '17' + '32'); this task cannot score it")


def greater_than_task(n: int = 32) -> Task:
    def build(tok: Tok, n: int, seed: int) -> list[Row]:
        mode, ids = year_mode(tok)
        g = torch.Generator().manual_seed(seed)
        pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]
        rows = []
        for _ in range(n):
            noun, century = pick(NOUNS), pick(CENTURIES)
            if mode == "pair":
                yy = int(torch.randint(2, 99, (1,), generator=g))
                key = yy
                values = range(100)
                target = f"{min(yy + 1, 99):02d}"
            else:
                tens = int(torch.randint(1, 9, (1,), generator=g))
                yy = tens * 10 + int(torch.randint(0, 10, (1,), generator=g))
                key, values = tens, range(10)
                target = str(tens + 1)
            prompt = prompt_template(noun, century, yy)
            p, _ = continuation(tok, prompt, target, join="")
            fmt = (lambda v: f"{v:02d}") if mode == "pair" else str
            set_ids = [ids[fmt(v)] for v in values if v != key]
            weights = [1.0 if v > key else -1.0 for v in values if v != key]
            lead = tok.leading
            rows.append(Row(lead + p, [len(lead) + len(p) - 1], [ids[target]], token_ids=[set_ids],
                            token_weights=[weights], text=prompt))
        return rows

    return Task("greater_than", build, ("prob_mass", "kl"), n=n,
                scored="the last token (the century); mass on later minus earlier years",
                description=__doc__.split("\n")[0])
