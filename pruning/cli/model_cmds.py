"""`surgery prune` (apply a plan and export) and `surgery eval` (measure a model)."""

from __future__ import annotations

import sys
import warnings

from pruning.cli.common import (EVAL_FORMAT, CLIError, add_model, check_output, check_seq_len, finite_or_none,
                                load_model, progress_bar, stages, write_json)
from pruning.cli.plan_cmds import calibration_batches
from pruning.evaluate import EVAL_METRICS



def cmd_prune(args) -> int:
    from pruning.export import export_pruned
    from pruning.plan import PruningPlan

    target = check_output(args.out, args.force, inputs=[args.model, args.plan, args.text], kind="dir")
    plan = PruningPlan.load(args.plan)
    loaded = load_model(args)
    plan.check_model(loaded)
    calibration = None
    # Calibration text for every part of a plan that is fitted on it (width means and repair maps too).
    if (plan.sparsity and plan.sparsity_method == "wanda" or plan.heads and plan.removal_mode == "mean_compensated"
            or plan.mlp_channels and plan.mlp_removal == "mean_compensated" or plan.layer_repair
            or plan.stream_repair):
        check_seq_len(loaded, args.seq_len)
        calibration = calibration_batches(loaded, args.text, args.calibration_n, args.seq_len)
    dtype = None if args.dtype == "model" else args.dtype
    with stages(f"pruning ({plan.summary()}) and exporting to {target}") as stage:
        manifest = export_pruned(loaded, plan, target, force=args.force, calibration=calibration, dtype=dtype,
                                 progress=stage)
    b, a = manifest["before"], manifest["after"]
    print(f"parameters {b['parameters']:,} -> {a['parameters']:,} (nonzero {a['nonzero_parameters']:,}); "
          f"files {manifest['bytes'] / 2**20:.1f} MiB ({manifest['dtype']})")
    for note in manifest["notes"]:
        print(f"note: {note}")
    print(f"load it with: {manifest['loads_with'].replace('dir', repr(str(target)))}")
    return 0


def evaluate(loaded, tasks: list[str], text: str | None, n: int, seq_len: int, seed: int, *,
             prompt_tokens: int = 128, new_tokens: int = 16) -> dict:
    """pruning.evaluate.evaluate_model with a progress bar, and the text task's warnings (a text too
    short for n sequences) printed as one line each."""
    from pruning.evaluate import evaluate_model

    with warnings.catch_warnings(record=True) as caught, progress_bar(len(tasks) + 1, "evaluating", unit="task") as update:
        warnings.simplefilter("always", UserWarning)
        results = evaluate_model(loaded, tasks, text=text, n=n, seq_len=seq_len, seed=seed,
                                 prompt_tokens=prompt_tokens, new_tokens=new_tokens, progress=update)
    for w in caught:  # ours as one line; anything else as it was
        if issubclass(w.category, UserWarning) and str(w.message).startswith("text:"):
            print(f"surgery: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return results


def cmd_eval(args) -> int:
    out = check_output(args.out, args.force, inputs=[args.model, args.text]) if args.out else None
    tasks = list(EVAL_METRICS) if args.task is None else args.task
    unknown = [t for t in tasks if t not in EVAL_METRICS]
    if unknown:
        raise CLIError(f"unknown task(s) {unknown}; built-in tasks: {', '.join(EVAL_METRICS)}")
    loaded = load_model(args)
    check_seq_len(loaded, args.seq_len)
    if args.prompt_tokens < 1 or args.new_tokens < 0:
        raise CLIError(f"--prompt-tokens must be >= 1 and --new-tokens >= 0, got {args.prompt_tokens} and "
                       f"{args.new_tokens}")
    results = evaluate(loaded, tasks, args.text, args.n, args.seq_len, args.seed,
                       prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens)
    t = results["text"]
    print(f"{loaded.source}: {results['parameters']:,} parameters ({results['nonzero_parameters']:,} nonzero), "
          f"{results['parameter_bytes'] / 2**20:.1f} MiB")
    print(f"  perplexity {t['perplexity']:.2f} on {t['tokens']} tokens ({t['sequences']} sequences) of {t['source']}")
    for name, s in results["tasks"].items():
        print(f"  {name:<13} {s['metric']:<14} {s['value']:.3f}")
    print(f"  forward {results['forward_seconds'] * 1000:.0f} ms for {t['sequences']} x {args.seq_len} tokens")
    lat = results["latency"]
    line = (f"  latency on {lat['device']} ({lat['threads']} threads): prefill {lat['prefill_ms']:.1f} ms for "
            f"{lat['prompt_tokens']} tokens ({lat['prefill_tokens_per_s']:.0f} tokens/s)")
    if "decode_ms_per_token" in lat:
        line += (f", generation {lat['decode_ms_per_token']:.1f} ms/token "
                 f"({lat['decode_tokens_per_s']:.1f} tokens/s)")
    print(line)
    if out:
        write_json(out, {"format": EVAL_FORMAT, **finite_or_none(results)})
        print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("prune", help="apply a plan to a model and export the smaller checkpoint",
                       description="Apply a PruningPlan (physically: heads cut, layers dropped, weights zeroed) and "
                                   "export a checkpoint that transformers loads, with manifest.json.")
    add_model(p)
    p.add_argument("--plan", required=True, help="plan JSON from `surgery plan`")
    p.add_argument("--out", required=True, help="export directory (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace --out if it is an export of model-surgery")
    p.add_argument("--text", default=None, metavar="FILE",
                   help="calibration text for Wanda, mean-compensated head and MLP-channel removal and layer repair "
                        "(default: built-in documentation text)")
    p.add_argument("--calibration-n", type=int, default=8,
                   help="calibration sequences (Wanda statistics, compensation means)")
    p.add_argument("--dtype", default="model", choices=["model", "bf16", "fp16", "fp32"],
                   help="dtype of the exported weights (default: the model's own)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per calibration sequence")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("eval", help="perplexity, task accuracy, size and speed of a model or export",
                       description="Measure a model (or an exported directory): perplexity on text, the "
                                   "accuracy-like metric of built-in tasks, parameters, bytes and forward time.")
    add_model(p)
    p.add_argument("--task", nargs="+", default=None, help=f"tasks to score (default: all: {', '.join(EVAL_METRICS)})")
    p.add_argument("--text", default=None, metavar="FILE",
                   help="text for perplexity (default: built-in documentation text)")
    p.add_argument("--n", type=int, default=16, help="sequences / prompts per task")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per text sequence")
    p.add_argument("--seed", type=int, default=1000, help="seed of the evaluation examples")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length for the prefill latency")
    p.add_argument("--new-tokens", type=int, default=16,
                   help="tokens generated (greedy, with the cache) for the per-token latency; 0: prefill only")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_eval)
