"""MLP width pruning on SmolLM2: what the refit of the kept channels buys over mean compensation.

    python benchmarks/mlp_width_refit.py [--ratios 0.1 0.2 0.3] [--text FILE]

For each ratio of every MLP's channels removed (the same count in every layer: a stock checkpoint),
each plan is exported, reloaded with transformers and evaluated there (held-out perplexity on text
no score, mean or fit saw; the accuracy-like metric of each built-in task on prompts drawn with a
seed no fit used):
- fluctuation (FLAP: channel variance x squared down-projection column norm) and activation_norm
  (Wanda-style: the channel input norm x its down-projection column norm) scores, each with
- zero removal, mean compensation (removed channels' calibration mean in the down-projection bias),
  and the refit (surgery/mlp_repair.py: kept channels' down-projection columns and bias refitted by
  least squares to the unpruned MLP outputs on the calibration tokens, ridge --ridge).
Scores, means and refits all use the same --n-cal calibration sequences (the refit needs at least
1 + kept channels tokens per layer: 1 + 1536 x (1 - ratio) on SmolLM2). A plan is "best or tied"
when its paired held-out loss difference to the row's best is below 2 standard errors over the
held-out sequences. Writes benchmarks/results/mlp_width_refit.json (after every plan) with the
command, commit and versions; prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import surgery  # noqa: E402
from benchmarks.bench_common import (evaluate_model, export_and_measure, judge_row, task_batches_for,  # noqa: E402
                                     text_split, write_results)
from pruning.apply import with_mlp_repair  # noqa: E402
from pruning.width import channel_scores, width_plan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "mlp_width_refit.json"
SCORES = ("fluctuation", "activation_norm")
REMOVALS = ("zero", "comp", "refit")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", default=None, help="text file for calibration and perplexity (default: built-in)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--n-cal", type=int, default=64, help="calibration sequences (scores, means, refit)")
    parser.add_argument("--n-eval", type=int, default=16, help="held-out sequences for perplexity")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--task-n", type=int, default=16, help="prompts per built-in task")
    parser.add_argument("--ridge", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def plans_for(loaded, ratio: float, scores: dict, ridge: float) -> dict:
    plans = {}
    for name in SCORES:
        compensated = width_plan(loaded, ratio, scores=scores[name], method=name)
        plans[f"{name}+zero"] = width_plan(loaded, ratio, scores=scores[name], method=name, removal="zero")
        plans[f"{name}+comp"] = compensated
        plans[f"{name}+refit"] = with_mlp_repair(compensated, ridge=ridge)
    return plans


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = surgery.load(args.model)
    calibration, held_out, source = text_split(loaded, args.text, args.n_cal, args.n_eval, args.seq_len, args.seed)
    tasks = task_batches_for(loaded, args.task_n, args.seed)
    dense, _ = evaluate_model(loaded, held_out, tasks)
    print(f"dense: perplexity {dense['perplexity']:.2f}, task mean {dense['task_mean']:.3f}", flush=True)
    scores = {name: channel_scores(loaded, calibration.tokens, name) for name in SCORES}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlp-width-") as work:
        for ratio in args.ratios:
            results, per_seq = {}, {}
            for key, plan in plans_for(loaded, ratio, scores, args.ridge).items():
                metrics, per_seq[key] = export_and_measure(loaded, plan, held_out, calibration, work, tasks)
                metrics["channels_removed"] = sum(map(len, plan.mlp_channels.values()))
                metrics["max_task_drop"] = max(dense["task_scores"][t] - s for t, s in metrics["task_scores"].items())
                results[key] = metrics
                print(f"  {ratio:.2f} {key:<24} ppl {metrics['perplexity']:8.2f} ({metrics['perplexity'] / dense['perplexity']:.3f}x) "
                      f"tasks {metrics['task_mean']:.3f} export diff {metrics['export_max_logit_diff']:.1e}", flush=True)
            best, verdicts, refit_best = judge_row(results, per_seq, "fluctuation+refit")
            for key, verdict in verdicts.items():
                results[key].update(verdict)
            rows.append({"ratio": ratio, "best": best, "refit_best_or_tied": refit_best, "results": results})
            summary = {
                "rows": len(rows), "complete": len(rows) == len(args.ratios),
                "refit_best_rows": sum(r["refit_best_or_tied"] for r in rows),
                "max_export_logit_diff": max(m["export_max_logit_diff"] for r in rows for m in r["results"].values()),
                **{f"ppl_ratio_{k}_at_{r['ratio']}": r["results"][k]["perplexity"] / dense["perplexity"]
                   for r in rows for k in ("fluctuation+comp", "fluctuation+refit")},
            }
            write_results(args.out, {"summary": summary, "dense": dense, "text_source": source, "rows": rows,
                                     "wall_seconds": round(time.perf_counter() - started, 1)}, args)
    print(f"\n{'ratio':<7}{'plan':<26}{'ppl ratio':>10}{'tasks':>8}{'max drop':>10}  best/tied")
    for row in rows:
        for key, m in row["results"].items():
            mark = "*" if key == row["best"] else ("=" if m["best_or_tied"] else "")
            print(f"{row['ratio']:<7}{key:<26}{m['perplexity'] / dense['perplexity']:>10.3f}{m['task_mean']:>8.3f}"
                  f"{m['max_task_drop']:>10.3f}  {mark}")


if __name__ == "__main__":
    main()
