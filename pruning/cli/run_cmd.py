"""`surgery run`: the main job end to end on one model.

Prune a fraction of the heads so that the model keeps working (pruning/keep_model.py): a game whose
value is the LM loss on calibration text plus the built-in tasks' smooth metrics on prompts the table
never scores (--task-weight), with heads mean-ablated, heads screened by gate gradients,
weighted Banzhaf values of the candidates at the operating point, removal in steps of at most 10%
with re-valuation, and an export that folds the removed heads' mean output into the output bias and
refits the kept heads' output-projection columns to the dense attention outputs (--repair-n more
calibration sequences; surgery/head_repair.py).
Then reload with plain transformers and print a before/after table (held-out perplexity on text
disjoint from the calibration, task scores, parameters, bytes, forward time).
`--method shapley` keeps the earlier job: Shapley head values on a task and zero removal.
Everything lands in --out: plan.json, model/ (the export), report.json, and store/ (every
coalition evaluation, so an interrupted run resumes where it stopped); shapley also values.json.
"""

from __future__ import annotations

import time
from pathlib import Path

from pruning.cli.common import (RUN_REPORT_FORMAT, CLIError, add_model, check_output, finite_or_none, load_model,
                                progress_bar, stages, step, write_json)
from pruning.cli.model_cmds import EVAL_METRICS, evaluate
from pruning.keep_model import DEFAULTS as KEEP_MODEL


def cmd_run(args) -> int:
    import surgery
    from pruning.export import export_pruned
    from surgery.remote_code import installed_model_class
    from surgery.save import verify_export
    from transformers import AutoModelForCausalLM

    check_run_arguments(args)
    out = Path(args.out)
    export_dir = check_run_outputs(out, args)
    started = time.perf_counter()
    with step(f"loading {args.model}"):
        loaded = load_model(args)
    print(f"  {loaded.components.describe()}")

    from probes.tasks import get_task
    # One seeded draw of the built-in text: the first eval_n sequences are what `evaluate` scores
    # (same seed, same prefix), the next cal_n calibrate the game and the compensation: disjoint.
    # The next repair_n (keep-model) give the compensation means and the refit of the kept heads more tokens.
    # Targets: the repair rows feed the stream refit of the chosen plan (the search fits on --cal-n only).
    targeted = args.target_speedup is not None or args.target_params is not None
    repair_n = (args.repair_n if args.stream_refit else 0) if targeted else \
        (args.repair_n if args.method == "keep-model" else 0)
    wanted = args.eval_n + args.cal_n + repair_n
    if args.stream_refit:
        check_stream_tokens(loaded, args)
    text = get_task("text", n=wanted, seq_len=args.seq_len).batch(loaded, seed=args.eval_seed)
    if text.size < wanted:
        raise CLIError(f"the built-in text gives only {text.size} sequences of {args.seq_len} tokens, the run asks for "
                       f"{wanted} (--eval-n + --cal-n + --repair-n); lower them or --seq-len")
    calibration = text.rows(args.eval_n, args.eval_n + args.cal_n).tokens
    plan = plan_heads_for_run(args, loaded, calibration, out)
    if repair_n and plan.heads:
        from pruning.apply import with_head_repair
        plan = with_head_repair(plan)
    if repair_n:
        calibration = text.rows(args.eval_n, wanted).tokens  # the game's rows and the repair rows
    plan.save(out / "plan.json")
    needs_calibration = plan.removal_mode == "mean_compensated" or bool(plan.mlp_channels or plan.layer_repair
                                                                         or plan.stream_repair)
    with stages(f"exporting ({plan.summary()}, {plan.removal_mode} removal, {args.dtype})") as stage:
        manifest = export_pruned(loaded, plan, export_dir, force=args.force, progress=stage,
                                 calibration=calibration if needs_calibration else None,
                                 dtype=None if args.dtype == "model" else args.dtype)
    with step("reloading the export with transformers"):
        # Plain transformers runs the export's own modeling file: first make sure it is exactly ours.
        installed_model_class(export_dir, verify_export(export_dir), trust_remote_code=False)
        reloaded = surgery.load(AutoModelForCausalLM.from_pretrained(
            str(export_dir), trust_remote_code=bool(manifest.get("remote_code"))).eval(), tokenizer=loaded.tokenizer)

    tasks = list(EVAL_METRICS)
    before = evaluate(loaded, tasks, None, args.eval_n, args.seq_len, args.eval_seed)
    after = evaluate(reloaded, tasks, None, args.eval_n, args.seq_len, args.eval_seed)
    after["bytes_on_disk"] = manifest["bytes"]
    report = {"model": str(loaded.source), "method": args.method, "task": args.task if args.method == "shapley"
              else "keep-model (LM loss on calibration text" + (" + task terms)" if args.task_weight else ")"),
              "objective": plan.provenance[0].get("settings", {}).get("objective"),
              "game_dtype": plan.provenance[0].get("settings", {}).get("game_dtype"),
              "budget": args.budget, "seed": args.seed,
              "fraction": args.fraction, "target_speedup": args.target_speedup, "target_params": args.target_params,
              "layers_removed": plan.layers, "mlp_channels_removed": sum(map(len, plan.mlp_channels.values())),
              "removal": plan.removal_mode, "dtype": manifest.get("dtype"),
              "calibration": {"sequences": args.cal_n, "seq_len": args.seq_len, "repair_sequences": repair_n,
                              "disjoint_from_evaluation": True},
              "head_repair": manifest.get("removal", {}).get("head_repair"),
              "heads_removed": plan.heads, "before": before, "after": after,
              "loads_with": manifest["loads_with"], "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json(out / "report.json", {"format": RUN_REPORT_FORMAT, **finite_or_none(report)})
    print_table(before, after)
    print(f"\nexport: {export_dir} ({manifest['loads_with'].replace('dir', repr(str(export_dir)))})")
    print(f"values, plan and report in {out}; {report['wall_seconds']:.0f} s in all")
    return 0


def check_run_arguments(args) -> None:
    """Every argument checked, before the model is loaded or a coalition evaluated."""
    if args.repair_n < 0:
        raise CLIError(f"--repair-n {args.repair_n} must be >= 0 (0: no refit of the kept heads)")
    targeted = args.target_speedup is not None or args.target_params is not None
    if targeted:
        from pruning.target_plan import DEFAULT_WIDTH_RATIOS, check_targets

        check_targets(args.target_speedup, args.target_params, DEFAULT_WIDTH_RATIOS, (0.0,), None)
    elif args.mlp_refit or args.held_out_rows or args.stream_refit:
        raise CLIError("--mlp-refit, --held-out-rows and --stream-refit shape a --target-speedup / --target-params "
                       "plan; give a target, or leave them out for a head plan")
    if args.held_out_rows and not 0 < args.held_out_rows < args.cal_n:
        raise CLIError(f"--held-out-rows {args.held_out_rows} must lie in 0..{args.cal_n - 1} (--cal-n {args.cal_n}: "
                       f"at least one sequence must remain to fit the plan)")
    if not 0.0 < args.fraction < 1.0:
        raise CLIError(f"--fraction {args.fraction} must lie strictly between 0 and 1")
    if not (args.task_weight >= 0 and args.task_weight < float("inf")):
        raise CLIError(f"--task-weight {args.task_weight} must be a finite number >= 0 (0: calibration text only)")
    for flag, value, least in (("--budget", args.budget, 1), ("--n", args.n, 1), ("--length", args.length, 1),
                               ("--max-rows", args.max_rows, 1), ("--eval-n", args.eval_n, 1),
                               ("--cal-n", args.cal_n, 1), ("--seq-len", args.seq_len, 2),
                               ("--game-task-n", args.game_task_n, 1)):
        if value < least:
            raise CLIError(f"{flag} {value} must be a positive whole number" if least == 1 else
                           f"{flag} {value} must be at least {least}")


def check_stream_tokens(loaded, args) -> None:
    """Refuse, before any work, a stream refit the calibration text is too short for (at full MLP width:
    a narrowed MLP needs a little less, so this is a bound)."""
    from surgery.mlp_width import mlp_widths
    from surgery.stream_refit import MIN_TOKENS_PER_COEFFICIENT

    need = MIN_TOKENS_PER_COEFFICIENT * (max(mlp_widths(loaded)) + 1)
    tokens = (args.cal_n + args.repair_n) * args.seq_len
    if tokens < need:
        raise CLIError(f"--stream-refit fits every MLP down-projection and needs about {need} calibration tokens "
                       f"({MIN_TOKENS_PER_COEFFICIENT} per MLP channel); (--cal-n {args.cal_n} + --repair-n "
                       f"{args.repair_n}) x --seq-len {args.seq_len} gives {tokens}: raise --repair-n to at least "
                       f"{-(-need // args.seq_len) - args.cal_n}")


def plan_heads_for_run(args, loaded, calibration, out: Path):
    """The run's PruningPlan: keep-model (operating-point values, iterative, on the calibration text)
    or shapley (head values on --task, the lowest --fraction removed)."""
    from probes.head_values import head_values
    from probes.tasks import get_task
    from pruning.policies import head_plan

    if args.target_speedup is not None or args.target_params is not None:
        return target_plan_for_run(args, loaded, calibration)
    if args.method == "keep-model":
        from pruning.keep_model import calibration_task_terms, game_dtype_for, keep_model_head_plan

        terms = []
        if args.task_weight:
            # The game's task prompts are never ones the before/after table scores.
            held_out = {name: get_task(name, n=args.eval_n).batch(loaded, seed=args.eval_seed) for name in EVAL_METRICS}
            terms = calibration_task_terms(loaded, list(EVAL_METRICS), n=args.game_task_n, weight=args.task_weight,
                                           seed=args.seed, held_out=held_out)
        dtype = game_dtype_for(args.game_dtype, loaded)
        print(f"  game: LM loss on {args.cal_n} calibration sequences"
              + (f" + {len(terms)} task terms (weight {args.task_weight}, {args.game_task_n} prompts each)" if terms
                 else "") + f", heads mean-ablated, in {str(dtype).removeprefix('torch.')}")
        with progress_bar(args.budget, "operating-point head values (screened, iterative)") as update:
            plan = keep_model_head_plan(loaded, calibration, fraction=args.fraction, budget=args.budget,
                                        seed=args.seed, store_dir=out / "store", max_rows=args.max_rows,
                                        tasks=terms, game_dtype=dtype,
                                        on_evaluated=update)
        steps = plan.provenance[0]["steps"]
        print(f"  {sum(s['n_evaluations'] for s in steps)} evaluations in {len(steps)} step(s); removed "
              + ", ".join(plan.heads[:8]) + (" ..." if len(plan.heads) > 8 else ""))
    else:
        task = get_task(args.task, length=args.length) if args.task == "induction" else get_task(args.task)
        with progress_bar(args.budget, f"head values on {args.task}") as update:
            values = head_values(loaded, task, budget=args.budget, seed=args.seed, store=out / "store",
                                 n_examples=args.n, progress=update, max_rows=args.max_rows)
        values.save(out / "values.json")
        print(f"  {values.n_evaluations} evaluations; top 5 heads: "
              + ", ".join(f"{n} {v:+.3f}" for n, v in values.top_k(5)))
        plan = head_plan(values, loaded, fraction=args.fraction, values_file=str(out / "values.json"))
    return plan


def target_plan_for_run(args, loaded, calibration):
    """Layers (+ repair) and MLP width reaching --target-speedup / --target-params at the least loss on the
    run's calibration text (pruning.target_plan)."""
    import json

    from pruning.target_plan import target_plan

    timing = None
    if args.timing:
        with open(args.timing) as fh:
            timing = json.load(fh)
    width = "MLP width, refitted" if args.mlp_refit else "MLP width"
    with step(f"planning for {args.target_speedup or args.target_params} ({args.criterion} layers, repair, {width})"):
        plan = target_plan(loaded, calibration, target_speedup=args.target_speedup, target_params=args.target_params,
                           timing=timing, criterion=args.criterion, budget=args.budget, seed=args.seed,
                           cornerstones=[0], mlp_repair=args.mlp_refit, held_out_rows=args.held_out_rows,
                           stream_repair=args.stream_refit)
    chosen = plan.provenance[0]["chosen"]
    print(f"  chosen: layers {chosen['layers_dropped']}, MLP width ratio {chosen['width_ratio']}, predicted "
          f"{chosen['predicted']:.3f}, calibration loss {chosen['calibration_loss']:.4f}")
    return plan


def check_run_outputs(out: Path, args) -> Path:
    """Every output of the run, checked before any work: none replaced without --force, and --force
    replaces only what model-surgery wrote; the store in --out is reused either way. Returns model/."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; `surgery run` writes a directory (values, plan, model, report)")
    hint = f" (the evaluation store in {out / 'store'} is reused either way)"
    for name, kind in (("values.json", "file"), ("plan.json", "file"), ("model", "dir"), ("report.json", "file")):
        try:
            check_output(out / name, args.force, inputs=[args.model], kind=kind)
        except CLIError as err:
            raise CLIError(f"{err}{hint if 'already exists' in str(err) else ''}") from None
    return out / "model"


def print_table(before: dict, after: dict) -> None:
    rows = [("perplexity (held-out text)", before["text"]["perplexity"], after["text"]["perplexity"], ".2f")]
    rows += [(f"{name} {s['metric']}", s["value"], after["tasks"][name]["value"], ".3f")
             for name, s in before["tasks"].items()]
    rows += [("parameters", before["parameters"], after["parameters"], ",d"),
             ("parameter bytes", before["parameter_bytes"], after["parameter_bytes"], ",d"),
             ("forward time (ms)", before["forward_seconds"] * 1e3, after["forward_seconds"] * 1e3, ".0f")]
    print(f"\n{'':<30}{'before':>16}{'after':>16}")
    for label, b, a, fmt in rows:
        print(f"{label:<30}{format(b, fmt):>16}{format(a, fmt):>16}")


def register(sub) -> None:
    p = sub.add_parser("run", help="the main job: head values, a pruning plan, export, reload, before/after table",
                       description=__doc__)
    add_model(p)
    p.add_argument("--method", default="keep-model", choices=["keep-model", "shapley"],
                   help="keep-model (default): mean-compensated removal by screened operating-point values on "
                        "calibration text; shapley: Shapley head values on --task, zero removal (the earlier job)")
    p.add_argument("--task", default="induction", help="shapley: task the head values are computed on")
    p.add_argument("--n", type=int, default=4, help="shapley: examples in the task batch of the game")
    p.add_argument("--cal-n", type=int, default=4, help="keep-model: calibration sequences (game and compensation)")
    p.add_argument("--repair-n", type=int, default=KEEP_MODEL["repair_n"],
                   help="keep-model: further calibration sequences for the compensation means and the least-squares "
                        "refit of the kept heads (0: no refit, means from --cal-n); targets with --stream-refit: the "
                        "sequences it fits on besides --cal-n")
    p.add_argument("--task-weight", type=float, default=KEEP_MODEL["task_weight"],
                   help="keep-model: weight of each built-in task's term in the game, on prompts the table never "
                        "scores (0: calibration text only)")
    p.add_argument("--game-task-n", type=int, default=KEEP_MODEL["task_n"], help="keep-model: game prompts per task")
    p.add_argument("--game-dtype", default=KEEP_MODEL["game_dtype"], choices=["auto", "model", "bf16", "fp32"],
                   help="keep-model: dtype the game is evaluated in (auto: bfloat16 where the device runs it "
                        "natively); the export keeps --dtype")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per calibration and evaluation text sequence")
    p.add_argument("--dtype", default="model", choices=["model", "bf16", "fp16", "fp32"],
                   help="dtype of the exported weights (default: the model's own)")
    p.add_argument("--length", type=int, default=8, help="induction: random tokens in each half of a sequence")
    p.add_argument("--budget", type=int, default=300, help="coalition evaluations for the head values (all steps)")
    p.add_argument("--seed", type=int, default=0, help="estimator seed")
    p.add_argument("--fraction", type=float, default=0.1, help="fraction of heads to remove")
    p.add_argument("--max-rows", type=int, default=128, help="coalitions x examples per batched forward")
    p.add_argument("--eval-n", type=int, default=16, help="sequences/prompts per evaluation task")
    p.add_argument("--eval-seed", type=int, default=1000, help="seed of the evaluation examples")
    p.add_argument("--out", default="surgery-run", help="output directory (default: ./surgery-run)")
    p.add_argument("--force", action="store_true",
                   help="replace the values, plan, export and report of an earlier run in --out")
    p.add_argument("--target-speedup", type=float, default=None,
                   help="instead of --fraction of heads: drop layers (+ repair) and MLP width to reach this predicted "
                        "speed-up at the least calibration loss (needs calibration tokens >= hidden size: raise --cal-n)")
    p.add_argument("--target-params", default=None, help="instead of --fraction: a parameter count to reach, e.g. 100M")
    p.add_argument("--criterion", default="sleb", choices=["sleb", "banzhaf", "banzhaf_iterative", "block_influence"],
                   help="targets: how layers are chosen (banzhaf: --budget evaluations per valuation)")
    p.add_argument("--timing", default=None, metavar="FILE",
                   help="targets: timing table JSON (`surgery plan target --save-timing`); default: measured now")
    p.add_argument("--mlp-refit", action="store_true",
                   help="targets: refit the kept MLP channels to the unpruned MLP outputs (least squares) instead of "
                        "mean compensation alone")
    p.add_argument("--held-out-rows", type=int, default=0,
                   help="targets: the last N of the --cal-n sequences only score the candidate plans (the rest fit "
                        "them)")
    p.add_argument("--stream-refit", action="store_true",
                   help="targets: after the chosen plan's repairs, refit every block's MLP down-projection to the dense "
                        "model's residual stream on the --cal-n + --repair-n sequences (8 tokens per MLP channel: "
                        "SmolLM2 needs about 12k, e.g. --repair-n 200)")
    p.set_defaults(func=cmd_run)
