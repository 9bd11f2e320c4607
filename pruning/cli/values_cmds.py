"""`surgery values heads|layers` and `surgery cluster`."""

from __future__ import annotations

import time

import numpy as np

from pruning.cli.common import (CLUSTERS_FORMAT, CLIError, add_model, add_task, check_distinct_outputs, check_output,
                                check_seq_len, check_store, check_values_args, load_model, progress_bar, save_figure,
                                task_from_args, write_json)
from pruning.cli.sources_cmd import add_sources_kind


def cmd_values(args) -> int:
    from probes.head_values import DEFAULT_BUDGET_PER_PLAYER, head_values
    from probes.layer_values import DEFAULT_LAYER_ESTIMATOR, layer_values

    check_values_args(args)
    out = check_output(args.out, args.force, inputs=[args.model, args.text])
    check_store(args.store, inputs=[args.model, args.text])
    check_distinct_outputs(out, args.store)
    loaded = load_model(args)
    if args.text or args.task == "text":  # the only tasks --seq-len shapes
        check_seq_len(loaded, args.seq_len)
    task = task_from_args(args)
    n_players = len(loaded.components.heads if args.kind == "heads" else loaded.components.layers)
    estimator = args.estimator or (None if args.kind == "heads" else DEFAULT_LAYER_ESTIMATOR)
    budget = args.budget
    if budget is None and args.kind == "heads" and estimator != "exact":
        budget = DEFAULT_BUDGET_PER_PLAYER * n_players
    compute = head_values if args.kind == "heads" else layer_values
    settings = {}
    if args.window is not None:
        if estimator not in ("sliding_window", "neighbourhood"):
            raise CLIError(f"--window applies to the sliding_window and neighbourhood estimators, not {estimator or 'the default'}")
        settings = {"window" if estimator == "sliding_window" else "max_window": args.window}
    games = []  # Ray games, closed (workers stopped) however the run ends
    builder = _ray_builder(args, games) if args.backend == "ray" else None
    t0 = time.perf_counter()
    try:
        with progress_bar(budget, f"{args.kind} values") as update:
            values = compute(loaded, task, estimator=estimator, budget=budget, seed=args.seed, store=args.store,
                             n_examples=args.n, mode=args.mode, metric=args.metric, task_seed=args.task_seed,
                             max_rows=args.max_rows, progress=update, game_builder=builder, **settings)
    finally:
        for game in games:
            game.evaluator.close()
    wall = time.perf_counter() - t0
    values.details["wall_seconds"] = round(wall, 2)
    values.save(out)
    fresh = values.details.get("wall_evaluations_this_run", values.n_evaluations)
    print(f"{n_players} {args.kind} values of {loaded.source} on {values.fingerprint.get('task')}: "
          f"{values.estimator}, {values.n_evaluations} evaluations ({fresh} computed now, the rest from the store), "
          f"{wall:.0f} s")
    print("top 5: " + ", ".join(f"{name} {v:+.4f}" for name, v in values.top_k(5)))
    if args.kind == "heads":
        harmful = values.harmful(0.95)
        print(f"harmful heads (95% interval below 0): {len(harmful)}" + (": " + ", ".join(
            f"{h.name} {h.mean:+.4f} [{h.low:+.4f}, {h.high:+.4f}]" for h in harmful[:8]) if harmful else ""))
    gap = values.efficiency_gap
    if np.isfinite(gap):
        print(f"efficiency gap (sum of values - (v(all) - v(none))): {gap:+.3g}")
    print(f"wrote {out}")
    return 0


def _ray_builder(args, games: list):
    """Build the game with Ray workers that each load --model themselves (same fingerprint as local)."""
    from probes.distributed import ray_model_game

    spec = args.model
    if args.trust_remote_code:  # each worker loads the model itself, trusting it as the user asked
        import functools

        import surgery
        spec = functools.partial(surgery.load, args.model, trust_remote_code=True)

    def build(_loaded, batch, metric, players, **options):
        games.append(ray_model_game(spec, batch, metric, players, workers=args.workers,
                                    address=args.address, num_gpus=args.num_gpus or 0, **options))
        return games[-1]
    return build


def cmd_cluster(args) -> int:
    from probes.clustering import cluster_heads, plot_clusters
    from probes.head_values import HeadValues

    out = check_output(args.out, args.force, inputs=args.values)
    if args.figure:
        check_output(args.figure, args.force, inputs=args.values, kind="figure", flag="--figure")
        check_distinct_outputs(out, args.figure)
    by_task = {}
    digests = {}
    for path in args.values:
        values = HeadValues.load(path)
        task = str(values.fingerprint.get("task") or path).split(":")[0]
        if task in by_task:
            raise CLIError(f"two values files for task {task!r} ({digests[task][1]} and {path}); give one per task")
        by_task[task] = values
        digests[task] = (values.fingerprint.get("model_digest"), path)
    models = {d for d, _ in digests.values() if d is not None}
    if len(models) > 1:
        listing = ", ".join(f"{p} (model digest {d})" for d, p in digests.values())
        raise CLIError(f"values files come from different models: {listing}; cluster values of one model")
    if len(by_task) < 2:
        raise CLIError("clustering needs head values of at least two tasks (one values file per task)")
    clusters = cluster_heads(by_task, k=args.k, seed=args.seed, active_value=args.active_value)
    write_json(out, {"format": CLUSTERS_FORMAT, **clusters.as_dict()})
    print(f"{len(clusters.names)} heads, {len(by_task)} tasks -> {clusters.k} clusters"
          + (f" (k by silhouette: {', '.join(f'{k}: {s:.2f}' for k, s in clusters.silhouettes.items())})"
             if clusters.silhouettes else ""))
    for c in clusters.clusters:
        serves = ", ".join(c.tasks) or "no task (background)"
        print(f"  cluster {c.index}: {len(c.heads):>3} heads, serves {serves}; e.g. {', '.join(c.heads[:5])}")
    if args.figure:
        import matplotlib
        matplotlib.use("Agg")
        ax = plot_clusters(clusters)
        save_figure(ax.figure, args.figure)
        print(f"figure: {args.figure}")
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("values", help="Shapley values of every head or layer on a task",
                       description="Shapley values of every head (or layer) of a model on a task. Evaluations "
                                   "stream to --store; rerunning with the same --store resumes.")
    p.add_argument("kind", choices=["heads", "layers"], help="which components are the players")
    add_model(p)
    add_task(p)
    p.add_argument("--estimator", default=None,
                   help="estimator name (default: probes.estimators.DEFAULT_ESTIMATOR for heads, "
                        "sliding_window for layers)")
    p.add_argument("--budget", type=int, default=None,
                   help="coalition evaluations (default: 10 per head; the sliding window needs none)")
    p.add_argument("--window", type=int, default=None, help="window of the sliding-window layer values")
    p.add_argument("--seed", type=int, default=0, help="the estimator's seed")
    p.add_argument("--mode", default="zero", choices=["zero", "mean", "resample"], help="ablation mode")
    p.add_argument("--store", default=None, metavar="DIR", help="directory streaming every evaluation (resumable)")
    p.add_argument("--max-rows", type=int, default=64, help="coalitions x examples per batched forward (memory)")
    p.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="evaluate coalitions here, or fan them out over Ray workers (see README)")
    p.add_argument("--address", default=None,
                   help="ray: cluster address (ray://host:10001, host:6379 or auto; default: start a local one)")
    p.add_argument("--workers", type=int, default=None, help="ray: number of workers (default: one per GPU/CPU)")
    p.add_argument("--num-gpus", type=float, default=None, help="ray: GPUs per worker (default 0; 0.5 puts two on a GPU)")
    p.add_argument("--out", required=True, help="values JSON to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_values)
    add_sources_kind(p)  # `surgery values sources`: LoRA adapters (data sources) as players
    from pruning.cli.tokens_cmd import extend_values_parser  # `surgery values tokens` (input players)
    extend_values_parser(p)
    from pruning.cli.scar_cmd import add_scar_kind  # `surgery values scar` (after tokens: shares --prompt)
    add_scar_kind(p)

    p = sub.add_parser("cluster", help="cluster heads by their values across tasks",
                       description="Cluster heads by their value vectors across tasks (one head-values file per "
                                   "task, all of one model); k by silhouette unless --k.")
    p.add_argument("values", nargs="+", help="head-values JSON files, one per task")
    p.add_argument("--k", type=int, default=None, help="number of clusters (default: best silhouette)")
    p.add_argument("--active-value", type=float, default=2.0,
                   help="heads below this many task-RMS units on every task are background, not clustered "
                        "(0: cluster every head)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--figure", default=None,
                   help="also save a heads x tasks heatmap (.png, .pdf or .svg; not replaced without --force)")
    p.add_argument("--out", required=True, help="clusters JSON to write")
    p.add_argument("--force", action="store_true",
                   help="replace --out / --figure if they exist (only files model-surgery wrote)")
    p.set_defaults(func=cmd_cluster)
