"""`surgery run`: the main job end to end on one model.

head values on a task -> plan removing a fraction of heads -> export -> reload with plain
transformers -> before/after table (perplexity, task scores, parameters, bytes, forward time).
Everything lands in --out: values.json, plan.json, model/ (the export), report.json, and store/
(every coalition evaluation, so an interrupted run resumes where it stopped).
"""

from __future__ import annotations

import time
from pathlib import Path

from pruning.cli.common import (RUN_REPORT_FORMAT, CLIError, add_model, check_output, load_model, progress_bar, stages,
                                step, write_json)
from pruning.cli.model_cmds import EVAL_METRICS, _finite, evaluate


def cmd_run(args) -> int:
    import surgery
    from probes.head_values import head_values
    from pruning.export import export_pruned
    from pruning.policies import head_plan
    from surgery.remote_code import installed_model_class
    from surgery.save import verify_export
    from transformers import AutoModelForCausalLM

    if not 0.0 < args.fraction < 1.0:
        raise CLIError(f"--fraction {args.fraction} must lie strictly between 0 and 1")
    out = Path(args.out)
    export_dir = check_run_outputs(out, args)
    started = time.perf_counter()
    with step(f"loading {args.model}"):
        loaded = load_model(args)
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
    with stages(f"exporting ({plan.summary()})") as stage:
        manifest = export_pruned(loaded, plan, export_dir, force=args.force, progress=stage)
    with step("reloading the export with transformers"):
        # Plain transformers runs the export's own modeling file: first make sure it is exactly ours.
        installed_model_class(export_dir, verify_export(export_dir), trust_remote_code=False)
        reloaded = surgery.load(AutoModelForCausalLM.from_pretrained(
            str(export_dir), trust_remote_code=bool(manifest.get("remote_code"))).eval(), tokenizer=loaded.tokenizer)

    tasks = list(EVAL_METRICS)
    before = evaluate(loaded, tasks, None, args.eval_n, 64, args.eval_seed)
    after = evaluate(reloaded, tasks, None, args.eval_n, 64, args.eval_seed)
    after["bytes_on_disk"] = manifest["bytes"]
    report = {"model": str(loaded.source), "task": args.task, "budget": args.budget, "seed": args.seed,
              "fraction": args.fraction, "heads_removed": plan.heads, "before": before, "after": after,
              "loads_with": manifest["loads_with"], "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json(out / "report.json", {"format": RUN_REPORT_FORMAT, **_finite(report)})
    print_table(before, after)
    print(f"\nexport: {export_dir} ({manifest['loads_with'].replace('dir', repr(str(export_dir)))})")
    print(f"values, plan and report in {out}; {report['wall_seconds']:.0f} s in all")
    return 0


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
    p.add_argument("--force", action="store_true",
                   help="replace the values, plan, export and report of an earlier run in --out")
    p.set_defaults(func=cmd_run)
