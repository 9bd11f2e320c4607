"""Project-generated preference data for the worked example: four synthetic "sources" with different
preferences, and held-out evaluation prompts whose reward is an answer written in digits.

    digits        prefers "7" over "seven" as the answer to an addition          (helps the target reward)
    digits_again  the same preference on other additions                         (helps, overlaps with digits)
    greetings     prefers a friendly greeting over a rude one (other prompts)    (about neutral)
    words         prefers "seven" over "7"                                       (harmful to the target reward)

The preference is a surface feature on purpose: a few DPO steps of a small LoRA adapter learn it and carry
it to held-out prompts (a first version asked for correct sums, which SmolLM2-135M does not learn in a
minute of training, so its values measured noise rather than the sources).
"""

from __future__ import annotations

import random

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lena"]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]


def addition_prompt(a: int, b: int) -> str:
    return f"Question: What is {a} plus {b}?\nAnswer:"


def _additions(seed: int) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    random.Random(seed).shuffle(pairs)
    return pairs


def addition_sources(n_pairs: int = 12, seed: int = 0) -> dict[str, list[dict]]:
    """Preference records {"prompt", "chosen", "rejected"} of each source (the evaluation's additions excluded)."""
    additions = _additions(seed)[16:]  # the first 16 are held out for addition_evaluation

    def answers(chunk, in_words=False):
        records = []
        for a, b in chunk:
            digits, words = f" {a + b}", f" {WORDS[a + b]}"
            chosen, rejected = (words, digits) if in_words else (digits, words)
            records.append({"prompt": addition_prompt(a, b), "chosen": chosen, "rejected": rejected})
        return records
    greetings = [{"prompt": f"Say hello to {name}.", "chosen": f" Hello {name}!", "rejected": " Go away."}
                 for name in (NAMES * 4)[:n_pairs]]
    return {"digits": answers(additions[:n_pairs]), "digits_again": answers(additions[n_pairs: 2 * n_pairs]),
            "greetings": greetings, "words": answers(additions[2 * n_pairs: 3 * n_pairs], in_words=True)}


def addition_evaluation(n_prompts: int = 16, seed: int = 0) -> list[dict]:
    """Held-out records {"prompt", "candidates", "rewards", "preferred"}: the sum in digits (reward 1) against
    the sum in words (reward 0)."""
    return [{"prompt": addition_prompt(a, b), "candidates": [f" {a + b}", f" {WORDS[a + b]}"],
             "rewards": [1.0, 0.0], "preferred": 0} for a, b in _additions(seed)[:n_prompts]]


def write_files(directory: str, n_pairs: int = 8, n_prompts: int = 8, seed: int = 0) -> list[str]:
    """Write each source's preference pairs (<source>.jsonl) and the evaluation prompts (eval.jsonl) as
    JSON lines, the format of `surgery values sources --prompts`; return the paths written."""
    import json
    from pathlib import Path

    from surgery.atomic_io import atomic_write

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = {**addition_sources(n_pairs, seed), "eval": addition_evaluation(n_prompts, seed)}
    return [str(atomic_write(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records)))
            for name, records in files.items()]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write the synthetic sources and evaluation prompts as JSON lines")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--n-pairs", type=int, default=8)
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    print("\n".join(write_files(cli.out, cli.n_pairs, cli.n_prompts, cli.seed)))
