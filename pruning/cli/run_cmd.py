"""`surgery run`: the main job end to end on one model.

head values on a task -> plan removing a fraction of heads -> export -> reload with plain
transformers -> before/after table (perplexity, task scores, parameters, bytes, forward time).
Everything lands in --out: values.json, plan.json, model/ (the export), report.json, and store/
(every coalition evaluation, so an interrupted run resumes where it stopped).
"""

from __future__ import annotations

import time
from pathlib import Path

from pruning.cli.common import CLIError, add_model, progress_bar, step, write_json
from pruning.cli.model_cmds import EVAL_METRICS, _finite, evaluate


def cmd_run(args) -> int:
    import surgery
    from probes.head_values import head_values
    from pruning.export import export_pruned
    from pruning.policies import head_plan
    from transformers import AutoModelForCausalLM

    # Every argument is checked here, before the model is loaded or a coalition evaluated.
    if not 0.0 < args.fraction < 1.0:
        raise CLIError(f"--fraction {args.fraction} must lie strictly between 0 and 1")
    for flag, value in (("--budget", args.budget), ("--n", args.n), ("--length", args.length),
                        ("--max-rows", args.max_rows), ("--eval-n", args.eval_n)):
        if value < 1:
            raise CLIError(f"{flag} {value} must be a positive whole number")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; --out is the directory that receives values, plan, export and report")
    for name in ("values.json", "plan.json", "report.json"):
        if (out / name).is_dir():
            raise CLIError(f"{out / name} is a directory, so the run could not write it; choose another --out")
    export_dir = out / "model"
    if export_dir.exists() and not args.force:
        raise CLIError(f"{export_dir} already exists; pass --force to replace the export (the evaluation store in "
                       f"{out / 'store'} is reused either way) or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with step(f"loading {args.model}"):
        loaded = surgery.load(args.model)
    print(f"  {loaded.components.describe()}")

    from probes.tasks import get_task
    task = get_task(args.task, length=args.length) if args.task == "induction" else get_task(args.task)
    with progress_bar(args.budget, f"head values on {args.task}") as update:
        values = head_values(loaded, task, budget=args.budget, seed=args.seed, store=out / "store",
                             n_examples=args.n, progress=update, max_rows=args.max_rows)
    values.save(out / "values.json")
    print(f"  {values.n_evaluations} evaluations; top 5 heads: "
          + ", ".join(f"{n} {v:+.3f}" for n, v in values.top_k(5)))

    plan = head_plan(values, loaded, fraction=args.fraction, values_file=str(out / "values.json"))
    plan.save(out / "plan.json")
    with step(f"exporting ({plan.summary()})"):
        manifest = export_pruned(loaded, plan, export_dir, force=args.force)
    with step("reloading the export with transformers"):
        reloaded = surgery.load(AutoModelForCausalLM.from_pretrained(
            str(export_dir), trust_remote_code=bool(manifest.get("remote_code"))).eval(), tokenizer=loaded.tokenizer)

    tasks = list(EVAL_METRICS)
    before = evaluate(loaded, tasks, None, args.eval_n, 64, args.eval_seed)
    after = evaluate(reloaded, tasks, None, args.eval_n, 64, args.eval_seed)
    after["bytes_on_disk"] = manifest["bytes"]
    report = {"model": str(loaded.source), "task": args.task, "budget": args.budget, "seed": args.seed,
              "fraction": args.fraction, "heads_removed": plan.heads, "before": before, "after": after,
              "loads_with": manifest["loads_with"], "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json(out / "report.json", _finite(report))
    print_table(before, after)
    print(f"\nexport: {export_dir} ({manifest['loads_with'].replace('dir', repr(str(export_dir)))})")
    print(f"values, plan and report in {out}; {report['wall_seconds']:.0f} s in all")
    return 0


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
    p.add_argument("--task", default="induction", help="task the head values are computed on (default: induction)")
    p.add_argument("--n", type=int, default=4, help="examples in the task batch of the game")
    p.add_argument("--length", type=int, default=8, help="induction: random tokens in each half of a sequence")
    p.add_argument("--budget", type=int, default=600, help="coalition evaluations for the head values")
    p.add_argument("--seed", type=int, default=0, help="estimator seed")
    p.add_argument("--fraction", type=float, default=0.1, help="fraction of heads to remove")
    p.add_argument("--max-rows", type=int, default=128, help="coalitions x examples per batched forward")
    p.add_argument("--eval-n", type=int, default=16, help="sequences/prompts per evaluation task")
    p.add_argument("--eval-seed", type=int, default=1000, help="seed of the evaluation examples")
    p.add_argument("--out", default="surgery-run", help="output directory (default: ./surgery-run)")
    p.add_argument("--force", action="store_true", help="replace an existing export in --out")
    p.set_defaults(func=cmd_run)
