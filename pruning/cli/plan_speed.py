"""The speed-aimed parts of `surgery plan` (and `surgery run --target-speedup`):

    surgery plan layers --criterion sleb|banzhaf|banzhaf_iterative|block_influence --k 3 [--repair]
    surgery plan layers --target-speedup 1.25            (layers only, fewest that reach it)
    surgery plan width --ratio 0.2 [--score fluctuation|activation_norm]
    surgery plan target --target-speedup 1.25 | --target-params 100M [--timing FILE] [--save-timing FILE]

Calibration text: --text FILE or the built-in documentation text, --cal-n sequences of --cal-seq-len tokens
(seed --seed). Flags are checked before the model is loaded.
"""

from __future__ import annotations

import json

from pruning.cli.common import CLIError

CRITERIA = ("values", "banzhaf", "banzhaf_iterative", "sleb", "block_influence")


def add_speed_flags(p) -> None:
    p.add_argument("--criterion", default="values", choices=CRITERIA,
                   help="layers/target: how layers are chosen: from --values, weighted Banzhaf values at the operating "
                        "point (one-shot or re-valued after each removal), SLEB's greedy evaluation, or Block "
                        "Influence; all but values on the calibration text (keep-the-model objective)")
    p.add_argument("--repair", action=__import__("argparse").BooleanOptionalAction, default=None,
                   help="layers/target: repair dropped layers with ReplaceMe least-squares maps "
                        "(default: off for layers, on for target)")
    p.add_argument("--ridge", type=float, default=0.1, help="layers/width/target: ridge of the repair maps and refits")
    p.add_argument("--measure", default="kl", choices=["kl", "loss"],
                   help="layers/target: objective of the layer criteria: KL to the dense model or LM loss")
    p.add_argument("--budget", type=int, default=None,
                   help="layers/target: evaluations per valuation for --criterion banzhaf / banzhaf_iterative")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw and the estimator")
    p.add_argument("--cal-n", type=int, default=8, help="calibration sequences (layer criteria, width, repair)")
    p.add_argument("--cal-seq-len", type=int, default=128, help="tokens per calibration sequence")
    p.add_argument("--ratio", type=float, default=None, help="width: fraction of every MLP's channels to remove")
    p.add_argument("--score", default="fluctuation", choices=["fluctuation", "activation_norm"],
                   help="width/target: channel score (FLAP fluctuation or Wanda-style activation norm)")
    p.add_argument("--target-speedup", type=float, default=None,
                   help="layers/target: predicted speed-up to reach (by the timing table), e.g. 1.25")
    p.add_argument("--target-params", default=None, help="target: parameter count to reach, e.g. 100M")
    p.add_argument("--timing", default=None, metavar="FILE",
                   help="layers/target: timing table JSON (plan deterministic given it and --seed); "
                        "default: measured now on this machine")
    p.add_argument("--save-timing", default=None, metavar="FILE", help="layers/target: write the timing table used")
    p.add_argument("--mlp-refit", action="store_true",
                   help="width/target: refit the kept MLP channels' down-projection columns and bias to the unpruned "
                        "MLP outputs on the calibration text (least squares; needs 1 + kept channels tokens)")
    p.add_argument("--held-out-rows", type=int, default=0,
                   help="target: the last N calibration sequences only score the candidates (the rest fit them)")
    p.add_argument("--width-ratios", default="iso",
                   help="target: MLP width ratios to combine with layer drops, comma-separated, each in [0, 1); "
                        "iso (default): for each number of dropped layers the narrowest cut reaching the target")


SPEED_KIND_FLAGS = {
    "criterion": ("layers", "target"), "repair": ("layers", "target"), "ridge": ("layers", "width", "target"),
    "measure": ("layers", "target"), "budget": ("layers", "target"), "seed": ("layers", "width", "target"),
    "cal_n": ("layers", "width", "target"), "cal_seq_len": ("layers", "width", "target"), "ratio": ("width",),
    "score": ("width", "target"), "target_speedup": ("layers", "target"), "target_params": ("target",),
    "timing": ("layers", "target"), "save_timing": ("layers", "target"), "width_ratios": ("target",),
    "mlp_refit": ("width", "target"), "held_out_rows": ("target",),
}


def check_speed_args(args) -> tuple[float, ...]:
    """Every speed flag checked before the model is loaded; returns the width ratios of `plan target`."""
    from pruning.target_plan import check_targets
    from pruning.width import check_width_ratio

    if args.cal_n < 1 or args.cal_seq_len < 2:
        raise CLIError(f"--cal-n {args.cal_n} must be >= 1 and --cal-seq-len {args.cal_seq_len} >= 2")
    if args.held_out_rows and not 0 < args.held_out_rows < args.cal_n:
        raise CLIError(f"--held-out-rows {args.held_out_rows} must lie in 0..{args.cal_n - 1} (--cal-n {args.cal_n}: "
                       f"at least one sequence must remain to fit the plan)")
    if args.criterion in ("banzhaf", "banzhaf_iterative") and (args.budget is None or args.budget < 1):
        raise CLIError(f"--criterion {args.criterion} needs --budget N (evaluations per valuation), e.g. 70 for 30 layers")
    if args.kind == "width":
        if args.ratio is None:
            raise CLIError("plan width needs --ratio (fraction of every MLP's channels to remove, e.g. 0.2)")
        check_width_ratio(args.ratio, "--ratio")
        return ()
    try:
        ratios = "iso" if args.width_ratios.strip() == "iso" else tuple(float(r) for r in args.width_ratios.split(","))
    except ValueError:
        raise CLIError(f"--width-ratios {args.width_ratios!r}: give comma-separated fractions, e.g. 0,0.1,0.2, or iso "
                       f"(the narrowest cut for each number of dropped layers)") from None
    targets = (args.target_speedup, args.target_params)
    if args.kind == "target" or any(t is not None for t in targets):
        check_targets(*targets, ratios if args.kind == "target" else (0.0,), (0.0,), None)
        if args.criterion == "values":
            raise CLIError("a target plan chooses layers on calibration text: give --criterion sleb, banzhaf, "
                           "banzhaf_iterative or block_influence")
    return ratios if args.kind == "target" else (0.0,)


def calibration_for(args, loaded):
    from probes.tasks import get_task

    return get_task("text", path=args.text, n=args.cal_n, seq_len=args.cal_seq_len).batch(loaded, seed=args.seed).tokens


def speed_plan(args, loaded, ratios):
    """The plan of `plan width`, `plan target`, `plan layers --criterion/--target-speedup`."""
    from pruning.layer_selection import criterion_layer_plan
    from pruning.target_plan import target_plan
    from pruning.width import width_plan

    cal = calibration_for(args, loaded)
    if args.kind == "width":
        plan = width_plan(loaded, args.ratio, calibration=cal, method=args.score)
        if args.mlp_refit:
            from pruning.apply import with_mlp_repair

            plan = with_mlp_repair(plan, ridge=args.ridge)
        return plan
    layer_settings = dict(measure=args.measure, budget=args.budget, seed=args.seed)
    protect = _protected(args, loaded)
    if args.kind == "target" or args.target_speedup is not None:
        timing = None
        if args.timing:
            with open(args.timing) as fh:
                timing = json.load(fh)
        elif args.target_speedup is not None:
            from pruning.timing import timing_table

            timing = timing_table(loaded)
        if args.save_timing and timing is not None:
            from surgery.atomic_io import write_json_atomic

            write_json_atomic(args.save_timing, timing)
            print(f"wrote the timing table to {args.save_timing}")
        plan = target_plan(loaded, cal, target_speedup=args.target_speedup, target_params=args.target_params,
                           timing=timing, criterion=args.criterion, width_ratios=ratios, width_score=args.score,
                           repair=args.repair is not False, ridge=args.ridge, cornerstones=protect,
                           progress=_print_candidate, mlp_repair=args.mlp_refit,
                           held_out_rows=args.held_out_rows, **layer_settings)
        chosen = plan.provenance[0]["chosen"]
        print(f"chosen: {len(chosen['layers_dropped'])} layers dropped, MLP width ratio {chosen['width_ratio']}, "
              f"calibration loss {chosen['calibration_loss']:.4f}, predicted {chosen['predicted']:.3f}")
        return plan
    return criterion_layer_plan(loaded, args.criterion, cal, k=args.k, fraction=args.fraction,
                                repair=bool(args.repair), ridge=args.ridge, cornerstones=protect, **layer_settings)


def _protected(args, loaded) -> list[int]:
    return layer_list(args.protect, loaded.components.n_layers) if args.kind != "width" else []


def _print_candidate(record: dict) -> None:
    if "calibration_loss" in record:
        print(f"  candidate: {len(record['layers_dropped'])} layers {record['layers_dropped']}, width "
              f"{record['width_ratio']}, heads {record['head_fraction']}: calibration loss "
              f"{record['calibration_loss']:.4f}, predicted {record['predicted']:.3f}", flush=True)


def layer_list(text: str | None, n_layers: int) -> list[int]:
    """--protect's comma-separated layer numbers, checked against the model."""
    if not text:
        return []
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) < n_layers for p in parts):
        raise CLIError(f"--protect {text!r}: give comma-separated layer numbers in 0..{n_layers - 1}, e.g. 0,{n_layers - 1}")
    return [int(p) for p in parts]
