"""Project-generated preference data for the worked example: four synthetic "sources" with different
preferences about one-digit additions, and held-out evaluation prompts whose reward is a correct sum.

    sums         prefers the correct sum over an off-by-one answer            (helps the target reward)
    sums_again   the same preference on other prompts                         (helps, overlaps with sums)
    greetings    prefers a friendly greeting over a rude one (other prompts)  (about neutral)
    off_by_one   prefers sum + 1 over the correct sum                         (harmful to the target reward)
"""

from __future__ import annotations

import random

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lena"]


def addition_prompt(a: int, b: int) -> str:
    return f"Question: What is {a} plus {b}?\nAnswer:"


def _additions(seed: int) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    random.Random(seed).shuffle(pairs)
    return pairs


def addition_sources(n_pairs: int = 24, seed: int = 0) -> dict[str, list[dict]]:
    """Preference records {"prompt", "chosen", "rejected"} of each source (the evaluation's additions excluded)."""
    additions = _additions(seed)[16:]  # the first 16 are held out for addition_evaluation
    rng = random.Random(seed + 1)

    def sums(chunk, flipped=False):
        records = []
        for a, b in chunk:
            right, wrong = f" {a + b}", f" {a + b + rng.choice((1, -1))}"
            if flipped:
                right, wrong = f" {a + b + 1}", f" {a + b}"
            records.append({"prompt": addition_prompt(a, b), "chosen": right, "rejected": wrong})
        return records
    greetings = [{"prompt": f"Question: Say hello to {name}.\nAnswer:", "chosen": f" Hello {name}, nice to see you!",
                  "rejected": " Go away."} for name in (NAMES * 4)[:n_pairs]]
    return {"sums": sums(additions[:n_pairs]), "sums_again": sums(additions[n_pairs: 2 * n_pairs]),
            "greetings": greetings, "off_by_one": sums(additions[2 * n_pairs: 3 * n_pairs], flipped=True)}


def addition_evaluation(n_prompts: int = 16, seed: int = 0) -> list[dict]:
    """Held-out records {"prompt", "candidates", "rewards", "preferred"}: the correct sum (reward 1) against
    sum + 1 and sum - 1 (reward 0)."""
    records = []
    for a, b in _additions(seed)[:n_prompts]:
        records.append({"prompt": addition_prompt(a, b), "candidates": [f" {a + b}", f" {a + b + 1}", f" {a + b - 1}"],
                        "rewards": [1.0, 0.0, 0.0], "preferred": 0})
    return records


def write_files(directory: str, n_pairs: int = 12, n_prompts: int = 8, seed: int = 0) -> list[str]:
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
    parser.add_argument("--n-pairs", type=int, default=12)
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    print("\n".join(write_files(cli.out, cli.n_pairs, cli.n_prompts, cli.seed)))
