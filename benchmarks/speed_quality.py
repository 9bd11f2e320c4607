"""Speed against quality on SmolLM2 at target speed-ups (issue 20): for each target (1.1x, 1.25x, 1.5x by
a timing table measured once at the start) every method's plan, its measured speed-up (prefill and
per-token generation), held-out perplexity (built-in text and a --text file) and task scores.

    python benchmarks/speed_quality.py [--targets 1.1 1.25 1.5] [--text FILE]

Methods, each reaching the target by the timing table's prediction (pruning/timing.py):
- ours: pruning.target_plan: layer drop orders from --criteria (default: weighted Banzhaf layer values at
  the target's operating point on the keep-the-model game, and Block Influence), ReplaceMe repair, MLP
  width on the iso-cost line (for each number of dropped layers, the narrowest cut reaching the target;
  --width-ratios R ... for a grid plus the narrowest width-only cut), kept MLP channels refitted by least squares
  (--no-mlp-refit: mean compensation only); of all these candidates the one with the least loss on the
  last --held-out-rows calibration rows, which no fit in the search sees. The chosen plan is then applied
  on all the fitting text (below) with every block's down-projection refitted to the dense residual
  stream (surgery/stream_refit.py; --no-stream-refit leaves it out). Heads are not in the search here (no head values
  are computed: their predicted saving is small and valuing 576 heads costs more than this whole run).
- block_influence: the fewest Block Influence (ShortGPT) layers that reach the target, no repair.
- sleb: the fewest layers of SLEB's greedy order (each step evaluated on the game's text), no repair.
- replaceme_block_influence: the Block Influence layers, repaired.
- flap_width: the smallest MLP width ratio (steps of 0.05, FLAP fluctuation, mean-compensated) alone.
- wanda_2of4 (once, not per target): uniform Wanda 2:4 sparsity, stored as dense zeros: no speed-up on
  this CPU (there is no sparse kernel), measured anyway; and the dense model.

Text: the built-in documentation text in disjoint chunks of --seq-len tokens: rows 0..n_cal-1 calibrate
the choices (ours' search fits its candidates on all but the last --held-out-rows of them and scores them
on those; the layer games use the first --n-select rows; FLAP's channel scores), the next --n-eval rows
are held out, and the --repair-rows after them join the n_cal rows as the fitting text every method's
applied plan uses (ReplaceMe maps, compensation means, MLP refits, the stream refit, Wanda norms): the
same tokens for every method. --text FILE gives a second held-out set (a different source, so disjoint
from the calibration). Task scores: --n-task prompts of each built-in task.

Latency (pruning.latency.measure_latency): --prompts prompts of --prompt-tokens random tokens, each timed
--repeats times after a warm-up (prefill projected at the last position only, as `generate` runs it, then
--new-tokens greedy steps with the KV cache). Each variant and the dense model are timed alternately
prompt by prompt, and a speed-up is the median of the per-prompt ratios: the machine is shared (the load
average is recorded before and after each measurement), so an unpaired dense time from minutes earlier
would carry its load into every ratio. Speed-ups still carry noise that parameters and predictions do not. `ours` at 1.25x is
exported, reloaded with transformers and its logits compared with the in-memory plan (export_max_logit_diff).
Writes benchmarks/results/speed_quality.json (partial results after every variant).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import surgery  # noqa: E402
from benchmarks.bench_common import evaluate_model, task_batches_for, token_rows, write_results  # noqa: E402
from surgery.batch import concat_batches  # noqa: E402
from probes.tasks import get_task  # noqa: E402
from pruning.apply import apply_plan  # noqa: E402
from pruning.evaluate import exported_logits, next_token_loss, plain_logits  # noqa: E402
from pruning.export import export_pruned  # noqa: E402
from pruning.latency import measure_latency, median_of  # noqa: E402
from pruning.layer_selection import layer_objective_game, layer_order, sleb_layer_order  # noqa: E402
from pruning.plan import PruningPlan, model_identity  # noqa: E402
from pruning.policies import sparsity_plan  # noqa: E402
from pruning.target_plan import fewest_layers, target_plan, width_only_ratio  # noqa: E402
from pruning.timing import dense_ms, predicted_ms, timing_table  # noqa: E402
from pruning.width import channel_scores, width_plan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "speed_quality.json"
# The export is checked at one target: each check applies the plan once more (minutes with the stream
# refit on the fitting text), and export == in-memory does not depend on which layers went.
EXPORT_CHECK_TARGET = 1.25


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.1, 1.25, 1.5])
    parser.add_argument("--text", default=None, help="a second held-out text file (user text)")
    parser.add_argument("--n-cal", type=int, default=24)
    parser.add_argument("--repair-rows", type=int, default=256,
                        help="further rows (after the held-out ones) that every method's fits use besides --n-cal; "
                             "ours' candidate search does not see them")
    parser.add_argument("--no-stream-refit", dest="stream_refit", action="store_false",
                        help="ours without the final refit of every block to the dense residual stream")
    parser.add_argument("--held-out-rows", type=int, default=8,
                        help="ours: calibration rows that only score the candidates (fits use the others)")
    parser.add_argument("--criteria", nargs="+", default=["banzhaf", "block_influence"],
                        help="ours: layer criteria whose drop orders the planner searches")
    parser.add_argument("--no-mlp-refit", dest="mlp_refit", action="store_false",
                        help="ours: mean compensation only for the MLP width (no least-squares refit)")
    parser.add_argument("--n-select", type=int, default=1, help="calibration rows the layer games play on")
    parser.add_argument("--n-eval", type=int, default=6)
    parser.add_argument("--n-task", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--budget", type=int, default=48, help="evaluations of each weighted Banzhaf valuation")
    parser.add_argument("--width-ratios", type=float, nargs="+", default=None,
                        help="ours: a grid of MLP width ratios (default: the iso-cost line, pruning.target_plan)")
    parser.add_argument("--ridge", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def latency(args, loaded) -> dict:
    """Median over prompts of the per-prompt median prefill and per-token decode times."""
    runs = [measure_latency(loaded, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                            repeats=args.repeats, seed=seed) for seed in range(args.prompts)]
    load_after = os.getloadavg()[0]
    return {"prefill_ms": median_of([r["prefill_ms"] for r in runs]),
            "decode_ms_per_token": median_of([r["decode_ms_per_token"] for r in runs]),
            "per_prompt": [{k: r[k] for k in ("prefill_ms", "decode_ms_per_token")} for r in runs],
            "load_average_1min_after": load_after}


def paired_latency(args, dense_model, pruned) -> dict:
    """The pruned model's prefill and decode times and the dense model's, alternating prompt by prompt
    (each a median of --repeats runs; which goes first alternates too), so both meet the same load on a
    shared machine. Speed-ups are medians of the per-prompt ratios."""
    pairs = []
    for seed in range(args.prompts):
        order = (dense_model, pruned) if seed % 2 == 0 else (pruned, dense_model)
        timed = {id(m): measure_latency(m, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                                        repeats=args.repeats, seed=seed) for m in order}
        pairs.append((timed[id(dense_model)], timed[id(pruned)]))
    keys = ("prefill_ms", "decode_ms_per_token")
    return {"prefill_ms": median_of([p["prefill_ms"] for _, p in pairs]),
            "decode_ms_per_token": median_of([p["decode_ms_per_token"] for _, p in pairs]),
            "dense_prefill_ms": median_of([d["prefill_ms"] for d, _ in pairs]),
            "dense_decode_ms_per_token": median_of([d["decode_ms_per_token"] for d, _ in pairs]),
            "prefill_speedup": median_of([d["prefill_ms"] / p["prefill_ms"] for d, p in pairs]),
            "decode_speedup": median_of([d["decode_ms_per_token"] / p["decode_ms_per_token"] for d, p in pairs]),
            "per_prompt": [{"dense": {k: d[k] for k in keys}, "pruned": {k: p[k] for k in keys}} for d, p in pairs],
            "prefill_logits": pairs[0][1]["prefill_logits"], "load_average_1min_after": os.getloadavg()[0]}


def quality(loaded, held_out, user_text, tasks) -> dict:
    metrics, _ = evaluate_model(loaded, held_out, tasks)
    if user_text is not None:
        metrics["user_text_perplexity"] = next_token_loss(loaded, [user_text.tokens])["perplexity"]
    return metrics


def baseline_plans(args, loaded, table, target, orders, fluctuation) -> list:
    """(name, plan) of the baselines reaching `target` by the table's prediction."""
    plans = []
    ident = model_identity(loaded)
    for name, order, repair in (("block_influence", orders["block_influence"], False),
                                ("sleb", orders["sleb"], False),
                                ("replaceme_block_influence", orders["block_influence"], True)):
        k = fewest_layers(order, table, target, True)
        if k is None:
            continue
        plans.append((name, PruningPlan(ident, layers=order[:k], layer_repair={
            "method": "replaceme_linear", "ridge": args.ridge} if repair else None)))
    ratio = width_only_ratio(table, target, True, loaded.components.n_layers)  # the narrowest cut reaching it
    if ratio is not None:
        plans.append(("flap_width", width_plan(loaded, ratio, scores=fluctuation, method="fluctuation")))
    return plans


def export_check(loaded, plan, cal, probe, in_memory) -> float:
    """Largest logit difference of the exported, reloaded plan against the plan applied in memory (by
    measure, on the same calibration)."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_pruned(loaded, plan, Path(tmp) / "export", calibration=cal, force=True)
        logits, _ = exported_logits(Path(tmp) / "export", probe, bool(manifest.get("remote_code")))
    return float((logits - plain_logits(in_memory.model, probe)).abs().max())


def measure(args, loaded, name, plan, target, cal, held_out, user_text, tasks, dense, table) -> tuple[dict, object]:
    """One plan applied (fitted on `cal`), its quality and its speed: (row, the pruned model)."""
    t0 = time.time()
    pruned = apply_plan(loaded, plan, calibration=cal).model if plan is not None else loaded
    row = {"name": name, "target_speedup": target, "layers_removed": plan.layers if plan else [],
           "repair": bool(plan and plan.layer_repair), "stream_refit": bool(plan and plan.stream_repair),
           "fit_tokens": int(cal.attention_mask.sum()),
           "mlp_channels_removed": sum(map(len, plan.mlp_channels.values())) if plan else 0,
           "heads_removed": len(plan.heads) if plan else 0,
           "parameters": sum(p.numel() for p in pruned.model.parameters()),
           "load_average_1min_before": os.getloadavg()[0]}
    if plan is not None and not plan.sparsity:
        n = loaded.components.n_layers
        kept = {l: 1 - len(plan.mlp_channels.get(l, [])) / loaded.adapter.mlp_width(loaded.adapter.blocks(loaded.model)[l])
                for l in range(n)}
        row["predicted_speedup"] = dense_ms(table) / predicted_ms(table, dropped=plan.layers, mlp_kept=kept)
    row.update(quality(pruned, held_out, user_text, tasks))
    row.update(paired_latency(args, loaded, pruned), ppl_ratio=row["perplexity"] / dense["perplexity"],
               seconds=round(time.time() - t0, 1))
    if "user_text_perplexity" in row:
        row["user_text_ppl_ratio"] = row["user_text_perplexity"] / dense["user_text_perplexity"]
    print(f"[{target or '-'}x] {name:<28} ppl x{row['ppl_ratio']:.3f}  prefill x{row['prefill_speedup']:.2f}  decode "
          f"x{row['decode_speedup']:.2f}  tasks {row['task_mean']:.3f}  params {row['parameters'] / 1e6:.1f}M  "
          f"load {row['load_average_1min_before']:.1f}", flush=True)
    return row, pruned


def summarize(result: dict) -> dict:
    rows = [v for v in result["variants"] if v["target_speedup"] is not None]
    by_target = {}
    for row in rows:
        by_target.setdefault(str(row["target_speedup"]), {})[row["name"]] = row
    ours_best = {t: min(group, key=lambda n: group[n]["ppl_ratio"]) == "ours" for t, group in by_target.items()
                 if "ours" in group}
    ours_125 = by_target.get("1.25", {}).get("ours")
    diffs = [v["export_max_logit_diff"] for v in rows if v.get("export_max_logit_diff") is not None]
    return {"ppl_ratio_at_speedup_1.25": ours_125["ppl_ratio"] if ours_125 else None,
            "measured_prefill_speedup_of_ours_at_1.25": ours_125["prefill_speedup"] if ours_125 else None,
            "measured_decode_speedup_of_ours_at_1.25": ours_125["decode_speedup"] if ours_125 else None,
            "goal_ppl_ratio_at_most_1.3_at_1.25": bool(ours_125 and ours_125["ppl_ratio"] <= 1.3),
            "ours_best_at_every_speedup": bool(ours_best) and all(ours_best.values()),
            "ours_best_per_target": ours_best, "best_per_target": {t: min(g, key=lambda n: g[n]["ppl_ratio"])
                                                                   for t, g in by_target.items()},
            "max_export_logit_diff": max(diffs) if diffs else None,
            "ppl_ratio": {f"{t}:{n}": round(r["ppl_ratio"], 3) for t, g in by_target.items() for n, r in g.items()}}


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    loaded = surgery.load(args.model)
    # One seeded draw of disjoint chunks: a longer draw keeps the first rows, so the held-out rows stay
    # the same whatever --repair-rows is.
    text = get_task("text", n=args.n_cal + args.n_eval + args.repair_rows, seq_len=args.seq_len).batch(loaded, seed=0)
    cal = token_rows(text.tokens, 0, args.n_cal)
    first_after = args.n_cal + args.n_eval
    fit_all = concat_batches([cal, token_rows(text.tokens, first_after, first_after + args.repair_rows)])
    select = token_rows(text.tokens, 0, args.n_select)
    held_out = text.rows(args.n_cal, args.n_cal + args.n_eval)
    user_text = None if args.text is None else get_task("text", path=args.text, n=args.n_eval,
                                                        seq_len=args.seq_len).batch(loaded, seed=0)
    tasks = task_batches_for(loaded, args.n_task, args.seed)
    dense = quality(loaded, held_out, user_text, tasks)
    table = timing_table(loaded, prompt_tokens=args.prompt_tokens, repeats=args.repeats, seed=args.seed)
    result = {"model": args.model, "calibration_tokens": int(cal.attention_mask.sum()),
              "fit_tokens": int(fit_all.attention_mask.sum()),
              "layer_game_tokens": int(select.attention_mask.sum()), "held_out_tokens": int(held_out.tokens.attention_mask.sum()),
              "user_text": args.text, "dense": {**dense, **latency(args, loaded)}, "timing_table": table,
              "load_average_at_start": os.getloadavg(), "variants": [],
              "note": "shared 2-core machine: speed-ups are noisy; see load_average_* per row"}
    n, protect = loaded.components.n_layers, [0]  # layer 0 stays everywhere: a repair map needs a block before it
    cheapest = sorted(range(1, n), key=lambda l: (table["layers"][l]["block_ms"], l))
    k_max = fewest_layers(cheapest, table, max(args.targets), True) or n - 2
    orders = {"block_influence": layer_order(loaded, "block_influence", k_max, select, cornerstones=protect)[0]}
    # SLEB is greedy: one game (its memory keeps every evaluated coalition) serves every target, so
    # each target only pays for the steps beyond the previous one.
    sleb_game = layer_objective_game(loaded, select)
    result["layer_orders"] = {"block_influence": orders["block_influence"]}
    fluctuation = channel_scores(loaded, cal, "fluctuation")
    probe = token_rows(held_out.tokens, 0, 2)
    for target in args.targets:
        start = time.time()
        orders["sleb"], _ = sleb_layer_order(sleb_game, fewest_layers(cheapest, table, target, True) or n - 2,
                                             cornerstones=protect)
        result["layer_orders"][f"sleb_for_{target}"] = {"order": orders["sleb"], "evaluations": sleb_game.n_evaluations,
                                                         "seconds": round(time.time() - start, 1)}
        print(f"[{target}x] SLEB order {orders['sleb']} ({time.time() - start:.0f} s)", flush=True)
        start = time.time()
        ours = target_plan(loaded, cal, target_speedup=target, timing=table, criterion=args.criteria,
                           budget=args.budget, seed=args.seed, width_ratios=args.width_ratios or "iso", repair=True,
                           ridge=args.ridge, cornerstones=protect, selection=select, mlp_repair=args.mlp_refit,
                           held_out_rows=args.held_out_rows, stream_repair=args.stream_refit)
        plan_seconds = round(time.time() - start, 1)
        for name, plan in [("ours", ours)] + baseline_plans(args, loaded, table, target, orders, fluctuation):
            row, pruned = measure(args, loaded, name, plan, target, fit_all, held_out, user_text, tasks, dense, table)
            if name == "ours":
                row.update(plan_seconds=plan_seconds, chosen=ours.provenance[0]["chosen"],
                           candidates=ours.provenance[0]["candidates"],
                           export_max_logit_diff=export_check(loaded, plan, fit_all, probe, pruned)
                           if target == EXPORT_CHECK_TARGET else None)
            del pruned
            result["variants"].append(row)
            result["summary"] = summarize(result)  # partial results carry their summary too
            write_results(args.out, result, args)
    wanda = sparsity_plan(loaded, 0.5, allocation="uniform", method="wanda", n_m=(2, 4))
    row, _ = measure(args, loaded, "wanda_2of4", wanda, None, fit_all, held_out, user_text, tasks, dense, table)
    row["note"] = "2:4 zeros stored dense: same shapes and FLOPs, no speed-up expected on CPU"
    result["variants"].append(row)
    result["summary"] = summarize(result)
    result["load_average_at_end"] = os.getloadavg()
    result["wall_seconds"] = round(time.time() - t0, 1)
    write_results(args.out, result, args)
    print(f"summary: {result['summary']}\nwrote {args.out} in {result['wall_seconds']} s")


if __name__ == "__main__":
    main()
