"""Head values on SmolLM2 at small budgets: regression (the default) against permutation sampling.

    python benchmarks/low_budget.py [--budgets 600 1350] [--seeds 3] [--store-dir DIR]

The reference is the mean of the two 40,000-evaluation induction runs of benchmarks/head_values.py
(replayed from their stores, bfloat16; run that benchmark first). Each estimator and budget runs
with --seeds seeds on the same batch, each with its own store under --store-dir/low_budget (a rerun
replays it: `seconds` then times the replay, and `evaluated_now` says how many were computed).
Reported per estimator and budget, mean over seeds: relative L2 error and Spearman against the
reference, and how many of the reference's 27 lowest-valued heads (the 10% that `surgery run`
removes) the estimate also puts in its lowest 27. Writes benchmarks/results/low_budget.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.estimators import DEFAULT_ESTIMATOR  # noqa: E402
from probes.head_values import head_values  # noqa: E402
from benchmarks.bench_common import make_task, store_name, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "low_budget.json"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budgets", type=int, nargs="+", default=[600, 1350])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=4, help="induction examples in the batch")
    parser.add_argument("--store-dir", default=os.environ.get("HEAD_VALUES_STORE", "/tmp/model-surgery-stores/head_values"))
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(2)

    import surgery
    from scipy.stats import spearmanr

    root = Path(args.store_dir)
    references = [root / store_name("induction", args.n, 40000, "bfloat16", s) for s in (0, 1)]
    missing = [str(p) for p in references if not (p / "values.jsonl").exists()]
    if missing:
        raise SystemExit(f"no reference store at {missing}: run benchmarks/head_values.py --budget 40000 --stop-at 40000 "
                         "--dtype bfloat16 first")
    loaded = surgery.load(args.model, dtype=torch.bfloat16)
    task = make_task("induction", args.n)

    def values(store: Path, estimator: str, budget: int, seed: int):
        settings = {} if estimator == "permutation" else {"n_bootstrap": 0}
        return head_values(loaded, task, estimator=estimator, budget=budget, seed=seed, store=store,
                           max_rows=128, **settings)

    reference = np.mean([values(store, DEFAULT_ESTIMATOR, 40000, s).means.ravel() for s, store in enumerate(references)],
                        axis=0)
    removed = set(np.argsort(reference)[:27])
    rows = []
    for estimator in ("permutation", DEFAULT_ESTIMATOR):
        for budget in args.budgets:
            per_seed = []
            for seed in range(args.seeds):
                store = root / "low_budget" / f"induction-n{args.n}-bfloat16-{estimator}-b{budget}-seed{seed}"
                start = time.perf_counter()
                hv = values(store, estimator, budget, seed)
                means = hv.means.ravel()
                per_seed.append({"relative_l2": float(np.linalg.norm(means - reference) / np.linalg.norm(reference)),
                                 "spearman": float(spearmanr(means, reference).statistic),
                                 "lowest27_overlap": len(set(np.argsort(means)[:27]) & removed),
                                 "seconds": round(time.perf_counter() - start, 1),
                                 "evaluated_now": hv.details["wall_evaluations_this_run"]})  # the rest from the store
            row = {"estimator": estimator, "budget": budget, "per_head": round(budget / 270, 2), "seeds": per_seed}
            row.update({k: float(np.mean([s[k] for s in per_seed])) for k in ("relative_l2", "spearman", "lowest27_overlap")})
            rows.append(row)
            print(f"{estimator:20s} {budget:6d}  error {row['relative_l2']:.3f}  Spearman {row['spearman']:.3f}  "
                  f"lowest-27 overlap {row['lowest27_overlap']:.1f}/27", flush=True)
    out = write_results(args.out, {"benchmark": "low_budget", "reference": "mean of two 40,000-evaluation runs "
                        f"({DEFAULT_ESTIMATOR}), induction n={args.n}, bfloat16", "rows": rows}, args)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
