"""Head specialization on the embedded SmolLM2-135M over the built-in tasks: values, clusters, specificity.

    python benchmarks/specialization.py [--budget 600] [--stop-at N] [--dtype bfloat16] [--n 4]
        [--validation-n 8] [--store-dir DIR]

For each built-in prompt task (the `text` task needs a user's file and is left out), head values
with the default estimator (streamed to a store per task; a rerun resumes, and the induction game
is the one benchmarks/head_values.py plays, so its store is reused when the settings agree; --budget
sizes the design, --stop-at stops after the round that reaches N evaluations, as there).
Heads are clustered with probes.clustering.cluster_heads (k by silhouette), and each cluster is
validated by ablation on *held-out* examples (another task seed), see probes.clustering for the
definition of the specificity ratio. Writes benchmarks/results/specialization.json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.clustering import cluster_heads, plot_clusters, specificity  # noqa: E402
from probes.estimators import DEFAULT_ESTIMATOR  # noqa: E402
from probes.stopping import MaxEvaluations  # noqa: E402
from probes.head_values import head_values  # noqa: E402
from benchmarks.bench_common import make_task, store_name, write_results  # noqa: E402
from surgery.atomic_io import atomic_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("induction", "ioi", "factual", "agreement", "greater_than")


def value_task(args, loaded, name: str, stop: dict):
    """(HeadValues, run record) of one task; evaluations stream to (and resume from) its store."""
    task = make_task(name, args.n, args.length)
    store = Path(args.store_dir) / store_name(name, args.n, args.budget, args.dtype, args.seed, length=args.length)
    resumed = (store / "values.jsonl").exists()
    start = time.perf_counter()
    hv = head_values(loaded, task, budget=args.budget, seed=args.seed, store=store, max_rows=args.max_rows, **stop)
    wall = time.perf_counter() - start
    run = {"wall_seconds": round(wall, 1), "evaluations": hv.n_evaluations,
           "computed_this_run": hv.details["wall_evaluations_this_run"], "resumed_from_store": resumed,
           "metric": hv.fingerprint.get("metric"), "full_value": hv.full_value,
           "empty_value": hv.empty_value, "top5": hv.top_k(5),
           "harmful_95": [h.as_dict() for h in hv.harmful(0.95)][:10],
           "median_stderr": float(np.nanmedian(hv.stderrs))}
    print(f"{name}: {wall:.0f} s, {hv.n_evaluations} evaluations, top {hv.top_k(3)}", flush=True)
    hv.save(store.parent / f"values-{store.name}.json")
    return hv, run


def save_figure(path: Path, clusters, per_task: int, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_clusters(clusters, title=f"SmolLM2-135M head values / task RMS, k={clusters.k}\n"
                                       f"({DEFAULT_ESTIMATOR}, {per_task} evals/task, {args.dtype})")
    ax.figure.tight_layout()
    with atomic_path(path) as tmp:
        ax.figure.savefig(tmp, format="png", dpi=110)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--budget", type=int, default=600, help="coalition evaluations per task (the design size)")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="stop each task after the round that reaches this many evaluations")
    parser.add_argument("--rounds", type=int, default=40, help="rounds the design is evaluated in (with --stop-at)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="weights and compute (bfloat16: 2.4x faster on CPUs with AMX, benchmarks/dtype_speed.py)")
    parser.add_argument("--n", type=int, default=4, help="examples per task for the values")
    parser.add_argument("--length", type=int, default=8, help="induction: random tokens per half")
    parser.add_argument("--validation-n", type=int, default=8, help="held-out examples per task for specificity")
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rows", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--store-dir", default=os.environ.get("HEAD_VALUES_STORE", "/tmp/model-surgery-stores/head_values"))
    parser.add_argument("--out", default=str(RESULTS / "specialization.json"))
    return parser


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(args.threads)

    import surgery

    loaded = surgery.load(args.model, dtype=getattr(torch, args.dtype))
    stop = {} if args.stop_at is None else {"stop": MaxEvaluations(args.stop_at), "n_rounds": args.rounds}
    values, runs = {}, {}
    for name in args.tasks:
        values[name], runs[name] = value_task(args, loaded, name, stop)
    if len(values) < 2:
        print("one task: its store is filled; run again with every task to cluster them", flush=True)
        return

    clusters = cluster_heads(values, k=args.k, seed=args.seed)
    per_task = min(v.n_evaluations for v in values.values())
    start = time.perf_counter()
    held_out = {name: make_task(name, args.validation_n, args.length) for name in args.tasks}
    report = specificity(loaded, clusters, held_out, task_seed=1, max_rows=args.max_rows)
    validation_wall = time.perf_counter() - start
    for c in clusters.clusters:
        ratio = report.ratios[c.index]
        print(f"C{c.index}: {len(c.heads)} heads, serves {c.tasks or 'nothing'}, ratio {ratio}", flush=True)

    min_ratio = report.min_ratio
    summary = {"n_clusters": clusters.k,
               "min_specificity_ratio": None if min_ratio is None else ("inf" if math.isinf(min_ratio)
                                                                        else round(min_ratio, 3))}
    result = {
        "summary": summary,
        "summary_notes": {
            "min_specificity_ratio": "minimum over clusters that serve some but not all tasks of "
                                     "mean relative damage on served tasks / mean relative damage on the others; "
                                     "relative damage = (m(full) - m(cluster ablated)) / (m(full) - m(all heads "
                                     "ablated)), measured on held-out examples (task seed 1)",
        },
        "settings": {"model": args.model, "tasks": args.tasks, "left_out": {"text": "needs a user's text file"},
                     "estimator": DEFAULT_ESTIMATOR, "budget_per_task": args.budget, "stop_at": args.stop_at,
                     "evaluations_per_task": {name: v.n_evaluations for name, v in values.items()},
                     "budget_per_head": round(per_task / len(clusters.names), 2),
                     "reduced_budget": per_task < 10 * len(clusters.names),
                     "dtype": args.dtype,
                     "n_examples_values": args.n, "induction_length": args.length,
                     "n_examples_validation": args.validation_n, "ablation": "zero", "k": args.k or "silhouette",
                     "seed": args.seed, "threads": args.threads},
        "runs": runs,
        "clusters": clusters.as_dict(),
        "specificity": report.as_dict(),
        "validation_wall_seconds": round(validation_wall, 1),
    }
    out = write_results(args.out, result, args)

    save_figure(out.with_suffix(".png"), clusters, per_task, args)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
