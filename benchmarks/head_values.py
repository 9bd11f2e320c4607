"""Induction head values on the embedded SmolLM2-135M (270 heads), two seeds, and an ablation check.

    python benchmarks/head_values.py [--budget 600] [--stop-at N] [--n 4] [--length 8] [--store-dir DIR]

--budget sizes the estimator's design; --stop-at N stops each seed after the round that reaches N
evaluations (the default estimator's design is evaluated in rounds and every prefix of rounds is a
valid design), so a long run can be taken further later: rerun with a larger --stop-at and the same
--budget and the store supplies everything already evaluated.

--curve-only: read the stores of a finished run and add `seed_spearman_by_evaluations` to --out
(the two seeds' agreement after each prefix of rounds; no model evaluation, every coalition is in
the store), to see how agreement grows with the budget. --curve-estimator NAME replays the stores
with another estimator that draws the same design (leverage_shap_size and leverage_shap_krr do);
every curve lands in `seed_spearman_by_evaluations_by_estimator`, with each prefix's relative L2
error against the other seed's full run.

Writes benchmarks/results/head_values.json. Each seed streams its evaluations to its own store
directory, so an interrupted run resumes (the JSON then says which seeds were resumed, and their
wall time covers only the part computed in this run).
summary.seed_spearman: Spearman correlation of the two seeds' 270 head values.
summary.top5_vs_random5_damage_ratio: metric drop when the 5 top-valued heads (seed 0) are ablated,
divided by the mean drop over `--random-draws` sets of 5 random heads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.estimators import DEFAULT_ESTIMATOR  # noqa: E402
from probes.head_values import head_values  # noqa: E402
from probes.model_game import model_game  # noqa: E402
from probes.stopping import MaxEvaluations  # noqa: E402
from probes.tasks import get_task  # noqa: E402
from benchmarks.bench_common import run_record, store_name, write_results  # noqa: E402
from surgery.atomic_io import atomic_write  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Estimators drawing the same paired leverage design for a seed and budget, so one's store replays under another.
SAME_DESIGN = ("leverage_shap", "leverage_shap_size", "leverage_shap_krr")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budget", type=int, default=600, help="coalition evaluations per seed (the design size)")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="stop each seed after the round that reaches this many evaluations")
    parser.add_argument("--rounds", type=int, default=40, help="rounds the design is evaluated in (with --stop-at)")
    parser.add_argument("--n", type=int, default=4, help="induction examples in the batch")
    parser.add_argument("--length", type=int, default=8, help="random tokens per half")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="two seeds to compare; with one seed the run only fills that seed's store (so the "
                             "seeds can run as parallel processes) and a later two-seed run reads them back")
    parser.add_argument("--random-draws", type=int, default=20)
    parser.add_argument("--max-rows", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="weights and compute; bfloat16 is 2.4x faster on CPUs with AMX (benchmarks/dtype_speed.py), "
                             "and the values are then those of the bfloat16 model")
    parser.add_argument("--store-dir", default=os.environ.get("HEAD_VALUES_STORE", "/tmp/model-surgery-stores/head_values"))
    parser.add_argument("--out", default=str(RESULTS / "head_values.json"))
    parser.add_argument("--curve-only", action="store_true",
                        help="add the seed agreement per prefix of rounds to --out, from the stores only")
    parser.add_argument("--curve-step", type=int, default=4000, help="evaluations between points of the curve")
    parser.add_argument("--curve-estimator", default=DEFAULT_ESTIMATOR, choices=SAME_DESIGN,
                        help="estimator the curve replays the stores with: one that draws the run's design")
    return parser


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(args.threads)

    import surgery
    from scipy.stats import spearmanr

    loaded = surgery.load(args.model, dtype=getattr(torch, args.dtype))
    task = get_task("induction", n=args.n, length=args.length)
    if args.curve_only:
        add_agreement_curve(args, loaded, task)
        return
    runs, values = [], []
    for seed in args.seeds:
        hv, run = value_one_seed(args, loaded, task, seed)
        values.append(hv)
        runs.append(run)
    if len(values) < 2:
        print("one seed: its store is filled; run again with two --seeds to compare them", flush=True)
        return

    rho = float(spearmanr(values[0].means, values[1].means).statistic)
    top_overlap = len({n for n, _ in values[0].top_k(10)} & {n for n, _ in values[1].top_k(10)})

    tb = task.batch(loaded.tokenizer, seed=0)
    n, damage = top5_damage(args, loaded, tb, values[0])
    top_damage, random_damage = damage["top5_damage"], damage["random5_damage_mean"]
    summary = {
        "seed_spearman": round(rho, 4),
        # Model time of one seed, summed over every process that evaluated coalitions into its store
        # (a seed may be computed in several resumed runs, or read back from its store here).
        "wall_seconds": round(float(np.mean([r["compute_seconds_all_runs"] for r in runs])), 1),
        "evaluations": int(np.mean([r["evaluations"] for r in runs])),
        "top5_vs_random5_damage_ratio": round(top_damage / random_damage, 2) if random_damage > 0 else None,
        # What each seed's run predicted from its own standard errors (probes/estimators/reliability.py).
        "predicted_seed_spearman": [r["expected_seed_spearman"] for r in runs],
        "predicted_seed_spearman_deconvolved": [r["expected_seed_spearman_deconvolved"] for r in runs],
    }
    result = {
        "summary": summary,
        "summary_notes": {
            "wall_seconds": "mean over the seeds of the wall clock spent evaluating that seed's coalitions, summed "
                            "over every run that added to its store (runs[].compute_runs; threads per run listed "
                            "there; this shared machine)",
            "evaluations": "coalition evaluations per seed (the estimator budget actually used)",
        },
        "settings": {"model": args.model, "n_heads": n, "task": "induction", "n_examples": args.n,
                     "length": args.length, "tokens_per_example": int(tb.tokens.input_ids.shape[1]),
                     "metric": tb.default_metric, "estimator": DEFAULT_ESTIMATOR, "budget": args.budget, "stop_at": args.stop_at,
                     "budget_per_head": round(args.budget / n, 2), "ablation": "zero", "dtype": args.dtype, "seeds": args.seeds,
                     "random_draws": args.random_draws, "threads": args.threads, "max_rows": args.max_rows},
        "runs": runs,
        "top10_overlap_between_seeds": top_overlap,
        "damage": damage,
    }
    write_results(args.out, result, args)
    print(json.dumps(summary, indent=2))


def value_one_seed(args, loaded, task, seed: int):
    """(HeadValues, run record) of one estimator seed; evaluations stream to (and resume from) its store."""
    store = store_path(args, seed)
    resumed = (store / "values.jsonl").exists()
    start = time.perf_counter()
    done = [0]

    def progress(k):
        done[0] += k
        print(f"  seed {seed}: {done[0]} coalitions evaluated, {time.perf_counter() - start:.0f} s", flush=True)

    stop = {} if args.stop_at is None else {"stop": MaxEvaluations(args.stop_at), "n_rounds": args.rounds}
    hv = head_values(loaded, task, budget=args.budget, seed=seed, store=store, max_rows=args.max_rows,
                     progress=progress, **stop)
    wall = time.perf_counter() - start
    timing = record_compute_time(store, wall, hv.details["wall_evaluations_this_run"], args.threads)
    run = {"seed": seed, "wall_seconds": round(wall, 1), "evaluations": hv.n_evaluations,
           "computed_this_run": hv.details["wall_evaluations_this_run"], "resumed_from_store": resumed,
           "compute_seconds_all_runs": timing["seconds"], "computed_all_runs": timing["evaluations"],
           "compute_runs": timing["runs"],
           "store": str(store), "top5": hv.top_k(5), "harmful_95": [h.as_dict() for h in hv.harmful(0.95)],
           "full_value": hv.full_value, "empty_value": hv.empty_value,
           "median_stderr": float(np.nanmedian(hv.stderrs)),
           "expected_seed_spearman": hv.details.get("expected_seed_spearman"),
           "expected_seed_spearman_deconvolved": hv.details.get("expected_seed_spearman_deconvolved")}
    print(f"seed {seed}: {wall:.0f} s, {hv.n_evaluations} evaluations; top 5 {hv.top_k(5)}", flush=True)
    hv.save(store.parent / f"values-{store.name}.json")
    return hv, run


def top5_damage(args, loaded, tb, values) -> tuple[int, dict]:
    """(number of heads, ablation check on the same batch): the top-5 heads of `values` against
    random sets of 5."""
    game = model_game(loaded, tb.tokens, tb.metric(), "heads", max_rows=args.max_rows, task_name="induction")
    n = game.n_players
    rng = np.random.default_rng(1234)
    top = [game.index_of(name) for name, _ in values.top_k(5)]
    masks = [np.ones(n, dtype=bool)]
    for idx in [top] + [rng.choice(n, 5, replace=False) for _ in range(args.random_draws)]:
        row = np.ones(n, dtype=bool)
        row[list(idx)] = False
        masks.append(row)
    scores = game(np.array(masks))
    full, top_score, random_scores = scores[0], scores[1], scores[2:]
    return n, {"full_value": float(full), "top5_heads": values.top_k(5), "top5_value": float(top_score),
               "top5_damage": float(full - top_score), "random5_damage_mean": float(np.mean(full - random_scores)),
               "random5_damage_each": [float(full - s) for s in random_scores]}


def record_compute_time(store: Path, seconds: float, evaluations: int, threads: int) -> dict:
    """Add this run's wall time to the store's timing.json (only runs that evaluated something)."""
    path = store / "timing.json"
    timing = json.loads(path.read_text()) if path.exists() else {"seconds": 0.0, "evaluations": 0, "runs": []}
    if evaluations:
        timing["seconds"] = round(timing["seconds"] + seconds, 1)
        timing["evaluations"] += int(evaluations)
        timing["runs"].append({"seconds": round(seconds, 1), "evaluations": int(evaluations), "threads": threads})
        atomic_write(path, json.dumps(timing, indent=2) + "\n")
    return timing


def store_path(args, seed: int) -> Path:
    return Path(args.store_dir) / store_name("induction", args.n, args.budget, args.dtype, seed, length=args.length)


def add_agreement_curve(args, loaded, task) -> None:
    """Spearman of the two seeds after every prefix of rounds, all from the stores (no evaluation)."""
    from scipy.stats import spearmanr

    out = Path(args.out)
    if not out.is_file():
        raise SystemExit(f"--curve-only adds to the results of a finished run, and {out} does not exist: run without "
                         "--curve-only first (or pass its --out)")
    result = json.loads(out.read_text())
    if args.stop_at is None:
        raise SystemExit("--curve-only needs the run's --stop-at (and --budget, --rounds) to replay its rounds")
    unit = 2 * (args.budget // 2 // args.rounds)  # evaluations per round, roughly
    step = max(unit, args.curve_step // unit * unit)
    curve, means = [], []
    for stop_at in list(range(step, args.stop_at, step)) + [args.stop_at]:
        per_seed = []
        for seed in args.seeds:
            def refuse(computed, seed=seed, stop_at=stop_at):
                # Called after the first chunk the store lacked is evaluated: stop there, not hours later.
                if computed:
                    raise SystemExit(f"seed {seed}: the store lacks evaluations below {stop_at}, or {args.curve_estimator} "
                                     "draws another design than the run's; finish the run first")

            # No bootstrap: only the means enter the agreement, and a refit per round is enough work.
            per_seed.append(head_values(loaded, task, estimator=args.curve_estimator, budget=args.budget, seed=seed,
                                        store=store_path(args, seed), max_rows=args.max_rows, progress=refuse,
                                        stop=MaxEvaluations(stop_at), n_rounds=args.rounds, n_bootstrap=0))
        rho = float(spearmanr(per_seed[0].means, per_seed[1].means).statistic)
        top = [{name for name, _ in v.top_k(10)} for v in per_seed]
        curve.append({"evaluations": int(np.mean([v.n_evaluations for v in per_seed])), "seed_spearman": round(rho, 4),
                      "top10_overlap": len(top[0] & top[1])})
        means.append([v.means.ravel() for v in per_seed])
        print(curve[-1], flush=True)
    # Error of each prefix against the other seed's full run (independent noise), mean over the seeds.
    final = means[-1]
    for point, (first, second) in zip(curve, means):
        errors = [np.linalg.norm(first - final[1]) / np.linalg.norm(final[1]),
                  np.linalg.norm(second - final[0]) / np.linalg.norm(final[0])]
        point["error_vs_other_seed_final"] = round(float(np.mean(errors)), 4)
    result.setdefault("seed_spearman_by_evaluations_by_estimator", {})[args.curve_estimator] = curve
    if args.curve_estimator == result["settings"]["estimator"]:
        result["seed_spearman_by_evaluations"] = curve
    result.setdefault("curve_runs", []).append(run_record(args))  # "run" stays the run that made the values
    atomic_write(out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
