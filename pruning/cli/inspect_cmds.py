"""`surgery info` and `surgery demo`: look inside a model."""

from __future__ import annotations

import time

from pruning.cli.common import add_model, load_model


def cmd_info(args) -> int:
    loaded = load_model(args)
    comps = loaded.components
    print(f"{loaded.source}: {loaded.adapter.family} family, {comps.describe()}")
    print(f"heads  {comps.heads[0]} .. {comps.heads[-1]}   layers {comps.layers[0]} .. {comps.layers[-1]}   "
          f"MLPs {comps.mlps[0]} .. {comps.mlps[-1]}")
    for layer in range(min(comps.n_layers, 1 if not args.all_layers else comps.n_layers)):
        groups = "  ".join(f"kv{k}: {','.join(f'H{h}' for h in g)}" for k, g in enumerate(comps.kv_groups(layer)))
        print(f"L{layer} query heads sharing a key/value head: {groups}")
    return 0


def cmd_demo(args) -> int:
    """Ablate each layer of the embedded model on generated prompts and print the damage."""
    from probes.tasks import get_task
    from surgery.engine import AblationEngine, leave_one_out_masks

    t0 = time.perf_counter()
    loaded = load_model(args)
    print(f"loaded {loaded.source} in {time.perf_counter() - t0:.1f}s: {loaded.components.describe()}")
    task_batch = get_task("factual", n=args.prompts).batch(loaded, seed=args.seed)
    batch, metric = task_batch.tokens, task_batch.metric("logprob")
    engine = AblationEngine(loaded, "layers", mode=args.mode)
    n = engine.n_players
    masks = leave_one_out_masks(n)  # row 0: full model; row 1 + l: layer l skipped
    from tqdm import tqdm
    t0 = time.perf_counter()
    with tqdm(total=n + 1, desc="layer ablations", unit="coalition") as bar:
        values = engine.evaluate(masks, batch, metric, progress=bar.update)
    full = float(values[0])
    print(f"\nmean log p(answer) on {batch.size} generated factual-recall prompts: full model {full:.3f} "
          f"({time.perf_counter() - t0:.1f}s for {n + 1} coalitions)")
    print(f"{'layer':<7}{'log p':>8}{'damage':>9}  (damage = full - ablated; '#' = 0.25 nats)")
    for layer in range(n):
        damage = full - float(values[layer + 1])
        bar = "#" * max(0, min(60, int(round(damage / 0.25))))
        print(f"L{layer:<6}{float(values[layer + 1]):>8.3f}{damage:>9.3f}  {bar}")
    worst = int(values[1:].argmin())
    print(f"\nmost damaging single-layer ablation: L{worst} ({full - float(values[worst + 1]):.2f} nats)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="list a model's components and key/value head groups",
                       description="List a model's heads, layers and MLPs and which query heads share a key/value head.")
    add_model(p)
    p.add_argument("--all-layers", action="store_true", help="print key/value groups for every layer")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("demo", help="ablate each layer of the embedded model and print the effect",
                       description="Skip each layer of the model in turn on generated factual-recall prompts and "
                                   "print how much the answer's log-probability drops (about 30 s).")
    add_model(p)
    p.add_argument("--prompts", type=int, default=8, help="number of generated factual-recall prompts")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the prompts")
    p.add_argument("--mode", default="zero", choices=["zero", "mean", "resample"], help="ablation mode")
    p.set_defaults(func=cmd_demo)
