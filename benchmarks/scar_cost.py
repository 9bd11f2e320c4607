"""What SCAR dense rewards cost per response on SmolLM2 (issue 16: "report what it costs per response").

The reward is SmolLM2's log-probability of a reference answer after the response (an LM-as-judge
style score, as in notebook 07), asked in batches. For responses of 2 to 10 segments it records,
per response: SCAR's wall time, the reward calls (texts scored) of the exact Owen values over the
default sentence tree, the 2^n calls a flat exact Shapley run would need, and the wall time of
scoring the same number of texts in one batch with no game around it (the reward's own cost), so
the overhead of the valuation is visible. One warm-up forward is not timed.

    python benchmarks/scar_cost.py            # writes benchmarks/results/scar_cost.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_common import write_results  # noqa: E402

PROMPT = "Q: Where did Anna go, and what did she do there?\nA:"
SUFFIX, REFERENCE = "\nAnna went to", " Rome"
RESPONSES = [
    " Anna stayed home. She read a book.",
    " Anna went to Rome. She ate pasta, and it rained.",
    " Anna went to Rome in May. She ate pasta, saw the Forum, and walked a lot. Then she flew home.",
    " Anna went to Rome. She ate pasta, saw the Forum, and walked a lot; it rained twice. "
    "Then she took a train to Florence, met a friend, and flew home.",
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "scar_cost.json")
    parser.add_argument("--alpha", type=float, default=0.8, help="SCAR's mix with the terminal reward")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per reward forward")
    return parser


def answer_logprob_reward(loaded, batch_size: int):
    """texts -> log p(REFERENCE | text + SUFFIX), one forward per batch, vocabulary projection only
    where the reference is predicted."""
    model, tok = loaded.model, loaded.tokenizer
    reference = tok(REFERENCE, add_special_tokens=False)["input_ids"]
    k = len(reference)

    @torch.no_grad()
    def score(texts):
        out = []
        for start in range(0, len(texts), batch_size):
            rows = [tok(t + SUFFIX, add_special_tokens=False)["input_ids"] + reference
                    for t in texts[start:start + batch_size]]
            ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):
                ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            for r, row in enumerate(rows):
                n = len(row)
                logp = model.lm_head(hidden[r, n - k - 1:n - 1]).float().log_softmax(-1)
                out.append(float(logp[torch.arange(k), torch.tensor(row[n - k:])].sum()))
        return out

    return score


def measure(response: str, reward, score, tokenizer, alpha: float) -> dict:
    from probes.scar import scar_rewards

    result = scar_rewards(PROMPT, response, reward, tokenizer, alpha=alpha)
    assert abs(float(result.rewards.double().sum()) - result.full_reward) < 1e-3
    texts = [PROMPT + response] * result.reward_calls
    started = time.perf_counter()
    score(texts)
    reward_only = time.perf_counter() - started
    n = len(result.segments)
    return {"response": response, "segments": n, "tokens": len(result.token_ids),
            "scar_seconds": result.seconds, "reward_calls": result.reward_calls,
            "flat_exact_shapley_calls": 2 ** n, "reward_only_seconds_same_calls": reward_only,
            "seconds_per_reward_call": result.seconds / max(result.reward_calls, 1),
            "segment_values": result.values.players.means.tolist()}


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    import surgery
    from probes.scar import TextReward

    torch.manual_seed(0)
    loaded = surgery.load("smollm2-135m")
    score = answer_logprob_reward(loaded, args.batch_size)
    reward = TextReward(score, batched=True, name="answer_logprob")
    score([PROMPT + RESPONSES[0]])  # warm-up: first-forward costs are not SCAR's
    rows = []
    for response in RESPONSES:
        rows.append(measure(response, reward, score, loaded.tokenizer, args.alpha))
        row = rows[-1]
        print(f"{row['segments']:3d} segments {row['tokens']:3d} tokens  SCAR {row['scar_seconds']:6.2f} s  "
              f"{row['reward_calls']:4d} reward calls (flat exact: {row['flat_exact_shapley_calls']:5d})  "
              f"reward alone {row['reward_only_seconds_same_calls']:6.2f} s", flush=True)
        write_results(args.out, {"rows": rows, "complete": False}, args)
    write_results(args.out, {"rows": rows, "complete": True, "torch_threads": torch.get_num_threads()}, args)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
