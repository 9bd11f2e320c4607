"""`surgery plan heads|layers|sparsity|width|target`: values (or calibration text) in, a replayable
PruningPlan JSON out (the speed-aimed kinds and layer criteria: pruning/cli/plan_speed.py)."""

from __future__ import annotations

from pruning.cli.common import CLIError, add_model, check_output, load_model, write_json
from pruning.cli.plan_speed import SPEED_KIND_FLAGS, add_speed_flags, check_speed_args, layer_list, speed_plan


def _load_values(path: str, kind: str):
    from probes.head_values import HeadValues
    from probes.values import Values

    return HeadValues.load(path) if kind == "heads" else Values.load(path)


def calibration_batches(loaded, text: str | None, n: int, seq_len: int, seed: int = 0):
    """Text batches for Wanda/OWL statistics: the user's file, else the built-in documentation text."""
    from probes.tasks import get_task

    return [get_task("text", path=text, n=n, seq_len=seq_len).batch(loaded, seed=seed).tokens]


def _n_m(args) -> tuple[int, int] | None:
    from pruning.policies import check_n_m_settings

    if not args.n_m:
        return None
    parts = args.n_m.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise CLIError(f"--n-m must look like 2:4, got {args.n_m!r}")
    return check_n_m_settings((int(parts[0]), int(parts[1])), args.target, args.allocation)


# Flags of `plan` that only one or two kinds read; any other kind refuses them instead of ignoring them.
KIND_FLAGS = {
    "fraction": ("heads", "layers"), "k": ("heads", "layers"), "harmful": ("heads",),
    "min_per_layer": ("heads",), "masked": ("heads",), "removal": ("heads",), "protect": ("layers", "target"),
    "find_cornerstones": ("layers",),
    "target": ("sparsity",), "allocation": ("sparsity",), "lam": ("sparsity",), "method": ("sparsity",),
    "n_m": ("sparsity",), **SPEED_KIND_FLAGS,
}
KIND_HINT = {"heads": "--fraction, --k or --harmful", "layers": "--fraction or --k",
             "sparsity": "--target for the mean fraction of weights zeroed", "width": "--ratio",
             "target": "--target-speedup or --target-params"}


def _refuse_foreign_flags(args, parser_defaults: dict) -> None:
    for dest, kinds in KIND_FLAGS.items():
        if args.kind not in kinds and getattr(args, dest) != parser_defaults[dest]:
            flag = "--" + dest.replace("_", "-")
            raise CLIError(f"{flag} does not apply to `plan {args.kind}` (only to plan {' / '.join(kinds)}); "
                           f"plan {args.kind} takes {KIND_HINT[args.kind]}")


def cmd_plan(args) -> int:
    from pruning.policies import find_cornerstones, head_plan, layer_plan, sparsity_plan

    _refuse_foreign_flags(args, args.plan_defaults)
    out = check_output(args.out, args.force, inputs=[args.values, args.model, args.text])
    by_speed = args.kind in ("width", "target") or (args.kind == "layers" and (
        args.criterion != "values" or args.target_speedup is not None))
    if args.kind in ("heads", "layers") and not args.values and not by_speed:
        raise CLIError(f"plan {args.kind} needs --values FILE (from `surgery values {args.kind}`)"
                       + (" or --criterion sleb|banzhaf|banzhaf_iterative|block_influence" if args.kind == "layers" else ""))
    if by_speed and args.values:
        raise CLIError(f"--values does not apply with --criterion {args.criterion} / targets: the layers are chosen "
                       f"on calibration text")
    ratios = check_speed_args(args) if by_speed else None
    n_m = _n_m(args) if args.kind == "sparsity" else None  # before loading anything
    loaded = load_model(args)
    if by_speed:
        plan = speed_plan(args, loaded, ratios)
    elif args.kind == "heads":
        if sum(x is not None for x in (args.fraction, args.k, args.harmful)) != 1:
            raise CLIError("plan heads needs exactly one of --fraction F, --k K or --harmful CONFIDENCE")
        values = _load_values(args.values, "heads")
        plan = head_plan(values, loaded, k=args.k, fraction=args.fraction, harmful_confidence=args.harmful,
                         min_per_layer=args.min_per_layer, removal="masked" if args.masked else "physical",
                         values_file=str(args.values), removal_mode=None if args.removal == "auto" else args.removal,
                         allow_unverified=args.allow_unverified_values)
    elif args.kind == "layers":
        values = _load_values(args.values, "layers")
        protected = layer_list(args.protect, loaded.components.n_layers)
        corner = None
        if args.find_cornerstones:
            from probes.tasks import get_task
            tb = get_task("text", path=args.text, n=4, seq_len=64).batch(loaded, seed=0)
            corner = find_cornerstones(loaded, tb.tokens, tb.metric("loss"))
            protected = sorted(set(protected) | set(corner["cornerstones"]))
            print(f"cornerstone layers (removing one alone costs > half of the text loss gap): "
                  f"{corner['cornerstones'] or 'none'}")
        plan = layer_plan(values, loaded, k=args.k, fraction=args.fraction, cornerstones=protected,
                          values_file=str(args.values), allow_unverified=args.allow_unverified_values)
    else:
        values = _load_values(args.values, "layers") if args.values else None
        outliers = None
        if args.allocation == "owl":
            from pruning.sparsity import input_norms, outlier_ratios
            outliers = outlier_ratios(loaded, input_norms(loaded, calibration_batches(loaded, args.text, 8, 64)))
        plan = sparsity_plan(loaded, args.target, allocation=args.allocation, values=values, outliers=outliers,
                             lam=args.lam, method=args.method, n_m=n_m,
                             values_file=str(args.values) if args.values else None,
                             allow_unverified=args.allow_unverified_values)
    write_json(out, plan.to_json_dict())
    print(plan.summary())
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("plan", help="turn values into a pruning plan (JSON)",
                       description="Build a PruningPlan from values: which heads to remove, which layers to drop, "
                                   "or the sparsity of each layer. The plan records the values file and settings.")
    p.add_argument("kind", choices=["heads", "layers", "sparsity", "width", "target"],
                   help="what the plan removes (target: layers + MLP width + heads to reach a speed-up or size)")
    add_model(p, " the plan is for (values of another model are refused)")
    p.add_argument("--values", default=None, help="values JSON from `surgery values` (layer values for sparsity)")
    p.add_argument("--fraction", type=float, default=None, help="fraction of heads/layers to remove, in [0, 1]")
    p.add_argument("--k", type=int, default=None, help="number of heads/layers to remove")
    p.add_argument("--harmful", type=float, default=None, metavar="CONFIDENCE",
                   help="heads: remove every head whose two-sided confidence interval lies below 0 (e.g. 0.95), "
                        "the heads `surgery values heads` lists as harmful")
    p.add_argument("--min-per-layer", type=int, default=1, help="heads: keep at least this many heads per layer")
    p.add_argument("--masked", action="store_true",
                   help="heads: zero output-projection columns instead of cutting (loads anywhere, no size gain)")
    p.add_argument("--removal", default="auto", choices=["auto", "zero", "mean_compensated"],
                   help="heads: what a removed head leaves behind: nothing (zero) or its mean output folded into "
                        "the output bias (mean_compensated, needs calibration text at `surgery prune`); auto: "
                        "what the values' game ablated (mean -> mean_compensated). A mismatch is refused")
    p.add_argument("--protect", default=None, help="layers: comma-separated layers never to drop, e.g. 0,29")
    p.add_argument("--find-cornerstones", action="store_true",
                   help="layers: detect and protect layers whose removal alone collapses next-token loss")
    p.add_argument("--target", type=float, default=0.5, help="sparsity: mean fraction of weights zeroed")
    p.add_argument("--allocation", default="shapley", choices=["shapley", "uniform", "owl"],
                   help="sparsity: per-layer ratios from layer values, uniform, or outlier-weighted (OWL)")
    p.add_argument("--lam", type=float, default=0.08, help="sparsity: max deviation of a layer from the target")
    p.add_argument("--method", default="wanda", choices=["wanda", "magnitude"], help="sparsity: weight score")
    p.add_argument("--n-m", default=None, help="sparsity: semi-structured N:M pattern, e.g. 2:4")
    p.add_argument("--allow-unverified-values", action="store_true",
                   help="accept a values file that carries no model digest (or one of an older scheme); "
                        "the plan records that the values were not verified against the model")
    p.add_argument("--text", default=None, metavar="FILE",
                   help="calibration text for OWL, cornerstones, layer criteria, width and target plans (default: built-in documentation text)")
    add_speed_flags(p)
    p.add_argument("--out", required=True, help="plan JSON to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_plan, plan_defaults={dest: p.get_default(dest) for dest in KIND_FLAGS})
