"""Clean-model scores of the built-in tasks: `python -m probes.tasks [--model smollm2-135m] [--n 32]`.

Prints, per task, every metric of the unablated model with a chance-level reference, using the
same path a game uses (AblationEngine over layers, all-present mask, logits only where scored).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from probes.tasks.registry import BUILTIN_TASKS, get_task


def chance(task: str, metric: str, vocab: int) -> float | None:
    """What a model with no knowledge of the task would score (uniform over the vocabulary/the pair)."""
    import math
    return {"logprob": -math.log(vocab), "accuracy": 1.0 / vocab, "pair_accuracy": 0.5, "logit_diff": 0.0,
            "prob_mass": 0.0, "loss": math.log(vocab), "perplexity": float(vocab)}.get(metric)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="*", default=[t for t in BUILTIN_TASKS if t != "text"])
    parser.add_argument("--text", default=None, help="a text file for the 'text' task")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import surgery
    from surgery.engine import AblationEngine

    loaded = surgery.load(args.model)
    engine = AblationEngine(loaded, "layers")
    full = torch.ones(1, engine.n_players, dtype=torch.bool)
    vocab = loaded.model.config.vocab_size
    names = list(args.tasks) + (["text"] if args.text else [])
    results = {}
    for name in names:
        task = get_task(name, path=args.text) if name == "text" else get_task(name)
        tb = task.batch(loaded.tokenizer, n=args.n if name != "induction" else max(1, args.n // 2), seed=args.seed)
        start = time.perf_counter()
        logits = engine.logits(full, tb.tokens)
        seconds = time.perf_counter() - start
        scores = {}
        for metric in task.metrics:
            m = tb.metric(metric, clean=logits[0])
            scores[metric] = round(float(m(logits, tb.tokens)[0]), 4)
        results[name] = {"n": tb.size, "tokens": int(tb.tokens.attention_mask.sum()), "seconds": round(seconds, 2),
                         "scores": scores,
                         "chance": {m: chance(name, m, vocab) for m in scores if chance(name, m, vocab) is not None}}
        print(f"{name:13s} n={tb.size:3d} {seconds:5.1f}s  " +
              "  ".join(f"{m}={v:.4g}" for m, v in scores.items()), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
