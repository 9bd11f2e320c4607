"""Shapley-driven pruning vs the usual criteria on the embedded SmolLM2-135M.

    python benchmarks/pruning.py [--text FILE] [--head-fractions 0.1 0.2 0.3] [--seed 0]

Rows (each compares criteria at one setting; every plan is exported, reloaded with transformers
and evaluated there):
- heads removed (only with --head-fractions: the head rows that judge `surgery run` are in
  benchmarks/head_pruning.py, with the operating-point values, compensation and refit): Shapley
  head values (zero ablation) vs magnitude, gradient (Michel et al.), leave-one-out, random;
- Wanda sparsity 50/70% inside layers: per-layer ratios from sliding-window layer values vs uniform vs OWL;
- layers removed 10/20/30%: Shapley (sliding-window) layer values vs Block Influence (ShortGPT) vs last layers.

Values, gradients, Block Influence and Wanda statistics all come from CALIBRATION sequences of the text;
perplexity is measured on disjoint HELD-OUT sequences, task accuracy on built-in task prompts drawn with
a seed no game used. "Within noise of best": the paired difference in held-out loss between a plan and
the best plan of its row is below 2 standard errors (over held-out sequences).

Writes benchmarks/results/pruning.json (top-level `summary`: rows, shapley_best_rows,
export_max_logit_diff) after every row and prints a table. Estimator evaluations stream to
--store-dir and resume.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import surgery  # noqa: E402
from benchmarks.bench_common import (evaluate_model, export_and_measure, judge_row, task_batches_for,  # noqa: E402
                                     text_split, write_results)
from probes.estimators import DEFAULT_ESTIMATOR, estimate  # noqa: E402
from probes.model_game import batch_digest, model_game  # noqa: E402
from pruning import importance  # noqa: E402
from pruning.policies import find_cornerstones, head_plan, layer_plan, sparsity_plan  # noqa: E402
from pruning.sparsity import input_norms, outlier_ratios  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", default=None, help="text file for calibration and perplexity "
                        "(default: the built-in standard-library documentation corpus)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--n-cal", type=int, default=4, help="calibration sequences (games, gradients, Wanda)")
    parser.add_argument("--n-eval", type=int, default=24, help="held-out sequences for perplexity")
    parser.add_argument("--task-n", type=int, default=24, help="prompts per built-in task for accuracy")
    parser.add_argument("--head-budget", type=int, default=600, help="coalition evaluations for head values")
    parser.add_argument("--head-estimator", default=DEFAULT_ESTIMATOR)
    parser.add_argument("--window", type=int, default=4, help="sliding window of the layer values")
    parser.add_argument("--head-fractions", type=float, nargs="*", default=[],
                        help="head rows of the earlier Shapley job (default none: see benchmarks/head_pruning.py)")
    parser.add_argument("--layer-fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--store-dir", default="/tmp/model-surgery-stores/pruning")
    parser.add_argument("--out", default=str(RESULTS / "pruning.json"))
    return parser


def head_criteria(args, loaded, calibration, game, timings) -> dict:
    """Head values by the estimator and the baseline criteria, as Values."""
    t0 = time.perf_counter()
    done = [0]

    def progress(k):
        done[0] += k
        if done[0] % 100 < k:
            print(f"  head game: {done[0]} coalitions, {time.perf_counter() - t0:.0f} s", flush=True)

    shapley_heads = estimate(game("heads", f"heads-{args.head_estimator}-b{args.head_budget}", progress),
                             budget=args.head_budget, seed=args.seed, estimator=args.head_estimator)
    timings["shapley_heads_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    criteria = {
        "shapley": shapley_heads,
        "magnitude": importance.scores_as_values(importance.head_magnitude(loaded), "magnitude", loaded),
        "gradient": importance.scores_as_values(importance.head_gradient(loaded, calibration, "loss"),
                                                "gradient", loaded),
        "leave_one_out": importance.scores_as_values(importance.head_leave_one_out(loaded, calibration, "loss",
                                                                                   max_rows=128), "loo", loaded),
        "random": importance.scores_as_values(importance.random_scores(loaded.components.heads, args.seed),
                                              "random", loaded),
    }
    timings["head_baselines_s"] = time.perf_counter() - t0
    return criteria


def layer_criteria(args, loaded, calibration, game, timings) -> tuple[dict, dict]:
    """(layer criteria as Values, cornerstone layers)."""
    t0 = time.perf_counter()
    layer_values = estimate(game("layers", f"layers-w{args.window}"), estimator="sliding_window",
                            window=args.window)
    corner = find_cornerstones(loaded, calibration.tokens, calibration.metric("loss"))
    timings["layer_values_s"] = time.perf_counter() - t0
    criteria = {
        "shapley": layer_values,
        "block_influence": importance.scores_as_values(importance.block_influence(loaded, calibration.tokens),
                                                       "block_influence", loaded),
        "last": importance.scores_as_values(importance.last_layer_scores(loaded), "last", loaded),
    }
    return criteria, corner


def measure_row(loaded, kind, setting, plans, held_out, calibration, work, task_batches) -> dict:
    """Export, reload and measure every plan of one row; the row's verdicts."""
    results, per_seq = {}, {}
    for method, plan in plans.items():
        results[method], per_seq[method] = export_and_measure(loaded, plan, held_out, calibration, work, task_batches)
        results[method]["removed"] = plan.heads or plan.layers or None
        print(f"  {kind} {setting}: {method:<15} ppl {results[method]['perplexity']:8.2f}  "
              f"tasks {results[method]['task_mean']:.3f}  max|dlogit| "
              f"{results[method]['export_max_logit_diff']:.1e}", flush=True)
    best, verdicts, shapley_ok = judge_row(results, per_seq, "shapley")
    for method in results:
        results[method].update(verdicts[method])
    return {"kind": kind, "setting": setting, "best": best, "shapley_best_or_tied": shapley_ok, "results": results}


def row_plans(args, loaded, heads: dict, layers: dict, corner: dict, owl: dict):
    """(kind, setting, {method: plan}) of every row, in the order of the table."""
    for fraction in args.head_fractions:
        yield "heads_removed", fraction, {m: head_plan(v, loaded, fraction=fraction, scores_are=m)
                                          for m, v in heads.items()}
    for target in args.sparsities:
        yield "wanda_sparsity", target, {
            "shapley": sparsity_plan(loaded, target, allocation="shapley", values=layers["shapley"]),
            "uniform": sparsity_plan(loaded, target, allocation="uniform"),
            "owl": sparsity_plan(loaded, target, allocation="owl", outliers=owl)}
    for fraction in args.layer_fractions:
        # Cornerstone layers are protected for every criterion, so the rows compare the rankings alone.
        yield "layers_removed", fraction, {
            m: layer_plan(v, loaded, fraction=fraction, scores_are=m, cornerstones=corner["cornerstones"])
            for m, v in layers.items()}


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = surgery.load(args.model)
    calibration, held_out, text_source = text_split(loaded, args.text, args.n_cal, args.n_eval, args.seq_len,
                                                    args.seed)
    task_batches = task_batches_for(loaded, args.task_n, args.seed)
    base_metrics, _ = evaluate_model(loaded, held_out, task_batches)
    print(f"unpruned: perplexity {base_metrics['perplexity']:.2f}, task mean {base_metrics['task_mean']:.3f}",
          flush=True)
    store = Path(args.store_dir)
    calibration_id = batch_digest(calibration.tokens)  # another text/size/seed is another game: another store

    def game(players, name, progress=None):
        return model_game(loaded, calibration.tokens, calibration.metric("loss"), players, task_name="text",
                          store=store / f"{name}-{args.seed}-{calibration_id}", max_rows=128, progress=progress)

    timings = {}
    heads = head_criteria(args, loaded, calibration, game, timings) if args.head_fractions else {}
    layers, corner = layer_criteria(args, loaded, calibration, game, timings)
    owl = outlier_ratios(loaded, input_norms(loaded, [calibration.tokens]))
    print(f"criteria computed: {json.dumps({k: round(v, 1) for k, v in timings.items()})}; "
          f"cornerstone layers {corner['cornerstones']}", flush=True)
    rows = []
    all_rows = list(row_plans(args, loaded, heads, layers, corner, owl))
    with tempfile.TemporaryDirectory(prefix="pruning-bench-") as work:
        for kind, setting, plans in all_rows:  # the file is rewritten after every row: a killed run keeps its rows
            rows.append(measure_row(loaded, kind, setting, plans, held_out, calibration, work, task_batches))
            report = {
                "summary": {
                    "rows": len(rows), "complete": len(rows) == len(all_rows),
                    "shapley_best_rows": sum(r["shapley_best_or_tied"] for r in rows),
                    "export_max_logit_diff": max(res["export_max_logit_diff"] for r in rows
                                                 for res in r["results"].values()),
                    "head_rows": "benchmarks/results/head_pruning.json" if not args.head_fractions else "here"},
                "unpruned": base_metrics,
                "settings": {**vars(args), "text_source": text_source,
                             "head_estimator_evaluations": heads["shapley"].n_evaluations if heads else 0,
                             "layer_value_evaluations": layers["shapley"].n_evaluations},
                "criteria_seconds": {k: round(v, 1) for k, v in timings.items()},
                "cornerstones": corner,
                "rows": rows,
                "wall_seconds": round(time.perf_counter() - started, 1),
            }
            write_results(args.out, report, args)
    print_table(report)


def print_table(report) -> None:
    base = report["unpruned"]
    print(f"\nunpruned: perplexity {base['perplexity']:.2f}, task mean {base['task_mean']:.3f}")
    print(f"{'row':<24}{'method':<17}{'ppl':>9}{'tasks':>8}{'params':>12}{'fwd s':>8}  best/tied")
    for row in report["rows"]:
        for method, r in row["results"].items():
            mark = "*" if method == row["best"] else ("=" if r["best_or_tied"] else "")
            print(f"{row['kind'] + ' ' + str(row['setting']):<24}{method:<17}{r['perplexity']:>9.2f}"
                  f"{r['task_mean']:>8.3f}{r['nonzero_parameters']:>12,}{r['forward_seconds']:>8.3f}  {mark}")
    s = report["summary"]
    print(f"\nShapley best or tied in {s['shapley_best_rows']} of {s['rows']} rows; "
          f"largest exported-vs-masked logit difference {s['export_max_logit_diff']:.2e}")


if __name__ == "__main__":
    main()
