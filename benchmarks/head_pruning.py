"""Head pruning that keeps the model: the `surgery run` method against the usual criteria, on SmolLM2.

    python benchmarks/head_pruning.py [--fractions 0.1 0.2 0.3] [--budget 300] [--text FILE]

For each fraction of heads removed, every criterion's plan is exported (zero or mean-compensated
removal), reloaded with transformers and evaluated there: perplexity on held-out sequences of the
text that no game, gradient or compensation saw, and the accuracy-like metric of each built-in task
on prompts drawn with a seed no game used. Criteria:
- keep_model (ours, the `surgery run` default): screened operating-point weighted Banzhaf values,
  iterative, mean-compensated (pruning/keep_model.py), --budget evaluations per fraction;
- michel: E|d loss/d gate| at the full model (mean-ablation gates), one shot, compensated and zero;
- michel_iterative: the same re-computed on the pruned model after every 10% step, compensated;
- magnitude (weight norms) and random (3 seeds), compensated and zero.
A plan is "best or tied" when its paired held-out loss difference to the row's best is below 2
standard errors over the held-out sequences. Writes benchmarks/results/head_pruning.json with the
command, the git commit and package versions, and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import surgery  # noqa: E402
from pruning import importance  # noqa: E402
from pruning.keep_model import keep_model_head_plan  # noqa: E402
from pruning.plan import PruningPlan, model_identity  # noqa: E402
from pruning.screening import candidates as lowest, gate_gradient_screen  # noqa: E402
from surgery.engine import AblationEngine  # noqa: E402

from benchmarks.bench_common import (evaluate_model, export_and_measure, judge_row, task_batches_for,  # noqa: E402
                                     text_split, write_results)

RESULTS = ROOT / "benchmarks" / "results" / "head_pruning.json"


def plan_removing(loaded, heads, removal_mode, method, calibration=None):
    return PruningPlan(model_identity(loaded), heads=list(heads), removal_mode=removal_mode,
                       calibration=calibration, provenance=[{"policy": method}])


def michel_iterative(screen, k: int, step: int) -> list[str]:
    removed: list[str] = []
    while len(removed) < k:
        removed += lowest(screen(removed), min(step, k - len(removed)))
    return removed


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", default=None, help="text file (default: the built-in documentation corpus)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--n-cal", type=int, default=4, help="calibration sequences (games, gradients, compensation)")
    parser.add_argument("--n-eval", type=int, default=24, help="held-out sequences for perplexity")
    parser.add_argument("--task-n", type=int, default=24, help="prompts per built-in task")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--budget", type=int, default=300, help="evaluations of the keep_model method per fraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--store-dir", default="/tmp/model-surgery-stores/head_pruning")
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def fraction_row(args, loaded, fraction: float, screens: dict, held_out, calibration, tasks, dense, seconds,
                 work) -> dict:
    """One row: the keep_model plan and the baselines removing the same number of heads, each exported,
    reloaded and measured."""
    n_heads = len(loaded.components.heads)
    k = int(round(fraction * n_heads))
    t0 = time.perf_counter()
    ours = keep_model_head_plan(loaded, calibration.tokens, fraction=fraction, budget=args.budget,
                                seed=args.seed, store_dir=Path(args.store_dir) / f"f{fraction}-s{args.seed}")
    seconds[f"keep_model_{fraction}"] = round(time.perf_counter() - t0, 1)
    evaluations = sum(s["n_evaluations"] for s in ours.provenance[0]["steps"])
    t0 = time.perf_counter()
    iterative = michel_iterative(screens["screen"], k, max(1, round(0.1 * n_heads)))
    seconds[f"michel_iterative_{fraction}"] = round(time.perf_counter() - t0, 1)
    comp = {"source": "benchmark calibration split"}
    plans = {"keep_model": ours}
    for name, heads in [("michel", lowest(screens["michel"], k)), ("michel_iterative", iterative),
                        ("magnitude", lowest(screens["magnitude"], k))] + [
            (f"random_{s}", lowest(importance.random_scores(loaded.components.heads, s), k))
            for s in range(args.random_seeds)]:
        plans[f"{name}+comp"] = plan_removing(loaded, heads, "mean_compensated", name, comp)
        if name != "michel_iterative":
            plans[f"{name}+zero"] = plan_removing(loaded, heads, "zero", name)
    results, per_seq = {}, {}
    for method, plan in plans.items():
        results[method], per_seq[method] = export_and_measure(loaded, plan, held_out, calibration, work, tasks)
        results[method]["removed"] = plan.heads
        results[method]["removal"] = plan.removal_mode
        print(f"  heads -{fraction:.0%} {method:<18} ppl {results[method]['perplexity']:8.2f} "
              f"({results[method]['perplexity'] / dense['perplexity']:.3f}x)  tasks "
              f"{results[method]['task_mean']:.3f}  max|dlogit| {results[method]['export_max_logit_diff']:.1e}",
              flush=True)
    best, verdicts, ours_ok = judge_row(results, per_seq, "keep_model")
    for method in results:
        results[method].update(verdicts[method])
    randoms = [results[m]["perplexity"] for m in results if m.startswith("random_") and m.endswith("+comp")]
    return {"kind": "heads_removed", "setting": fraction, "heads": k, "best": best,
            "ours_best_or_tied": ours_ok, "keep_model_evaluations": evaluations,
            "random_comp_perplexity_mean": float(np.mean(randoms)),
            "random_comp_perplexity_spread": float(np.ptp(randoms)), "results": results}


def print_table(rows, dense, summary) -> None:
    print(f"\n{'row':<12}{'method':<20}{'ppl':>9}{'x dense':>9}{'tasks':>8}  best/tied")
    for r in rows:
        for method, res in r["results"].items():
            mark = "*" if method == r["best"] else ("=" if res["best_or_tied"] else "")
            print(f"-{r['setting']:.0%} heads  {method:<20}{res['perplexity']:>9.2f}"
                  f"{res['perplexity'] / dense['perplexity']:>9.3f}{res['task_mean']:>8.3f}  {mark}")
    print(f"\nours best or tied in {summary['ours_best_rows']} of {summary['rows']} rows; dense perplexity "
          f"{dense['perplexity']:.2f}; {summary['wall_seconds']:.0f} s")


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = surgery.load(args.model)
    calibration, held_out, text_source = text_split(loaded, args.text, args.n_cal, args.n_eval, args.seq_len,
                                                    args.seed)
    tasks = task_batches_for(loaded, args.task_n, args.seed)
    dense, _ = evaluate_model(loaded, held_out, tasks)
    print(f"dense: perplexity {dense['perplexity']:.2f}, task mean {dense['task_mean']:.3f}", flush=True)
    mean_engine = AblationEngine(loaded, "heads", mode="mean", reference=calibration.tokens)
    screen = gate_gradient_screen(mean_engine, calibration.tokens)
    t0 = time.perf_counter()
    screens = {"screen": screen, "michel": screen([]), "magnitude": importance.head_magnitude(loaded)}
    seconds = {"michel_gradient": round(time.perf_counter() - t0, 1)}
    with tempfile.TemporaryDirectory(prefix="head-pruning-") as work:
        rows = [fraction_row(args, loaded, fraction, screens, held_out, calibration, tasks, dense, seconds, work)
                for fraction in args.fractions]
    summary = {
        "rows": len(rows),
        "ours_best_rows": sum(r["ours_best_or_tied"] for r in rows),
        "evaluations": {str(r["setting"]): r["keep_model_evaluations"] for r in rows},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "export_max_logit_diff": max(res["export_max_logit_diff"] for r in rows for res in r["results"].values()),
    }
    for r in rows:
        summary[f"ppl_ratio_heads_{round(r['setting'] * 100)}"] = (r["results"]["keep_model"]["perplexity"]
                                                                    / dense["perplexity"])
    report = {"summary": summary, "dense": dense, "settings": {**vars(args), "text_source": text_source},
              "seconds": seconds, "rows": rows}
    write_results(args.out, report, args)
    print_table(rows, dense, summary)


if __name__ == "__main__":
    main()
