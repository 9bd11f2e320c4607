"""Coalition evaluations per second with float32 and bfloat16 weights, side by side, on SmolLM2 heads.

    python benchmarks/dtype_speed.py [--coalitions 128] [--repeats 2] [--threads 2]

The same random head coalitions of the induction game (4 examples x 17 tokens, the game of
benchmarks/head_values.py) are evaluated with the model loaded in float32 and in bfloat16, in
alternation, `--repeats` times each, so both dtypes see the same machine load. Reports evaluations
per second and how far the bfloat16 game values are from the float32 ones (the bfloat16 game is a
different game: its values are those of the bfloat16 model). Writes
benchmarks/results/dtype_speed.json and prints a table. On CPUs with AMX (Sapphire Rapids and
later) oneDNN runs bfloat16 matmuls on the tile units; without them expect little or no gain.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.head_values import resolve_task  # noqa: E402
from probes.model_game import model_game  # noqa: E402
from probes.tasks import get_task  # noqa: E402
from benchmarks.bench_common import write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dtype_speed.json"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--coalitions", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-rows", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(args.threads)
    import surgery

    rng = np.random.default_rng(args.seed)
    make_game, rates, values = {}, {}, {}
    for name in ("float32", "bfloat16"):
        loaded = surgery.load(args.model, dtype=getattr(torch, name))
        batch, metric, task_name = resolve_task(loaded, get_task("induction", n=4, length=8), None, None, 0, None)
        # A fresh game for every timed call: a game remembers the coalitions it has evaluated.
        make_game[name] = (lambda loaded=loaded, batch=batch, metric=metric, task_name=task_name:
                           model_game(loaded, batch, metric, "heads", task_name=task_name, max_rows=args.max_rows))
        rates[name] = []
    n = make_game["float32"]().n_players
    # Coalition sizes spread over 0..n like the estimators' designs.
    coalitions = rng.random((args.coalitions, n)) < rng.random((args.coalitions, 1))
    for name, make in make_game.items():
        make()(~coalitions[:4])  # warm-up: first-call allocations and oneDNN kernel selection
    for _ in range(args.repeats):
        for name, make in make_game.items():
            game = make()
            start = time.perf_counter()
            values[name] = game(coalitions)
            rates[name].append(len(coalitions) / (time.perf_counter() - start))
    diff = values["bfloat16"] - values["float32"]
    from scipy.stats import spearmanr
    summary = {
        "float32_evals_per_second": round(float(np.mean(rates["float32"])), 2),
        "bfloat16_evals_per_second": round(float(np.mean(rates["bfloat16"])), 2),
        "speedup": round(float(np.mean(rates["bfloat16"]) / np.mean(rates["float32"])), 2),
        "value_rms_difference": round(float(np.sqrt(np.mean(diff ** 2))), 4),
        "value_max_abs_difference": round(float(np.abs(diff).max()), 4),
        "value_std_over_coalitions": round(float(values["float32"].std()), 4),
        "value_spearman": round(float(spearmanr(values["float32"], values["bfloat16"]).statistic), 4),
    }
    result = {"summary": summary, "rates": rates,
              "settings": {**vars(args), "n_players": n, "task": "induction n=4 length=8"}}
    write_results(args.out, result, args)
    print(f"{'dtype':10s} {'evals/s':>10s}")
    for name in rates:
        print(f"{name:10s} {np.mean(rates[name]):10.2f}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
