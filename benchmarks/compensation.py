"""Zero vs mean-compensated head removal on SmolLM2: one plan, two exports, held-out perplexity.

    python benchmarks/compensation.py [--k 27] [--criteria magnitude random] [--n-cal 8] [--n-eval 8]

The built-in documentation text is cut into sequences of --seq-len tokens; --n-cal of them are the
calibration tokens (the mean head outputs folded into the biases), the next --n-eval, disjoint, are
the held-out text the perplexity is measured on. For each criterion one plan removes the --k
lowest-scored heads; it is exported twice (zero removal, compensated removal), each export is
reloaded from disk and evaluated. `export_max_logit_diff` is the largest difference between the
reloaded compensated export and the original model under mean ablation (same calibration batch).
Writes benchmarks/results/compensation.json with its run record (command, git commit, package versions).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import token_rows as rows, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "compensation.json"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=27, help="heads to remove (27 = 10%% of SmolLM2's 270)")
    parser.add_argument("--criteria", nargs="+", default=["magnitude"], choices=["magnitude", "random"])
    parser.add_argument("--n-cal", type=int, default=8)
    parser.add_argument("--n-eval", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(2)

    import surgery
    from probes.tasks import get_task
    from pruning.evaluate import masked_logits, next_token_loss
    from pruning.export import export_pruned
    from pruning.importance import head_magnitude, random_scores, scores_as_values
    from pruning.policies import head_plan

    t0 = time.time()
    loaded = surgery.load(args.model)
    text = get_task("text", n=args.n_cal + args.n_eval, seq_len=args.seq_len).batch(loaded, seed=0).tokens
    cal, held_out = rows(text, 0, args.n_cal), rows(text, args.n_cal, args.n_cal + args.n_eval)
    dense = next_token_loss(loaded, [held_out])
    print(f"dense perplexity {dense['perplexity']:.2f} on {dense['tokens']} held-out tokens", flush=True)
    result = {"model": args.model, "k": args.k, "seq_len": args.seq_len, "n_cal": args.n_cal, "n_eval": args.n_eval,
              "text": "builtin stdlib docs, seed 0: first n_cal sequences calibrate, next n_eval evaluate",
              "dense_perplexity": dense["perplexity"], "held_out_tokens": dense["tokens"], "rows": []}
    for criterion in args.criteria:
        scores = head_magnitude(loaded) if criterion == "magnitude" else random_scores(loaded.components.heads, 0)
        plan = head_plan(scores_as_values(scores, criterion, loaded), loaded, k=args.k)
        row = {"criterion": criterion, "heads": plan.heads}
        with tempfile.TemporaryDirectory() as tmp:
            for removal in ("zero", "mean_compensated"):
                out = Path(tmp) / removal
                manifest = export_pruned(loaded, plan, out, removal=removal, calibration=cal)
                reloaded = surgery.load(str(out))
                ppl = next_token_loss(reloaded, [held_out])["perplexity"]
                row[f"perplexity_{removal}"] = ppl
                row[f"remote_code_{removal}"] = manifest["remote_code"]
                print(f"{criterion}: {removal:<17} perplexity {ppl:.2f}", flush=True)
                if removal == "mean_compensated":
                    from pruning.evaluate import plain_logits
                    diff = (plain_logits(reloaded.model, held_out) -
                            masked_logits(loaded, manifest_plan(manifest), held_out, calibration=cal)).abs().max()
                    row["export_max_logit_diff"] = float(diff)
                del reloaded
        result["rows"].append(row)
    result["wall_seconds"] = round(time.time() - t0, 1)
    write_results(args.out, result, args)
    print(f"wrote {args.out}")


def manifest_plan(manifest):
    from pruning.plan import PruningPlan
    return PruningPlan.from_json_dict(manifest["plan"])


if __name__ == "__main__":
    main()
