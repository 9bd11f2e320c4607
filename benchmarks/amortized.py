"""Amortized head/layer values on the embedded SmolLM2-135M, and the coalition-surrogate control variate.

    nice -n 10 python benchmarks/amortized.py [--budget 272] [--layer-budget 64] [--n 2]
        [--train-tasks induction ioi factual text] [--train-seeds 0] [--heldout-tasks agreement greater_than text]
        [--train-text FILE] [--heldout-text FILE] [--store-dir DIR] [--skip-surrogate]

Writes benchmarks/results/amortized.json. Part 1: per training batch, head values (default estimator
at --budget, 270 heads) and layer-attention values (30 players "L{l}.attn" at --layer-budget) plus
features; a ValuePredictor is trained on them. On held-out batches (tasks and a text the predictor
never saw) it is compared with the estimator's values (seed 0), next to the cheap baselines
(attribution patching with zero/mean ablation, leave-one-out) and the estimator's own seed-to-seed
agreement (seed 0 vs seed 1 at the same budget: the noise ceiling no predictor can beat by much).
Every estimate streams to a store under --store-dir, so a rerun resumes; the estimator's wall time
then comes from the per-evaluation cost recorded when the evaluations were made.
Part 2: on synthetic games with known values, a surrogate fitted on an earlier run's evaluations is
used as a control variate; error at a fresh budget against the plain estimator's error curve.

summary: heldout_spearman, heldout_top10_overlap, attribution_patching_spearman, speedup (means
over held-out batches, head values), plus baselines, the noise ceiling and the layer-value numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probes.amortized import (CoalitionSurrogate, ValueDataset, ValuePredictor, build_dataset,  # noqa: E402
                              control_variate_shapley, estimate_head_values, estimate_layer_values, head_features,
                              leave_one_out, task_batches)

RESULTS = Path(__file__).resolve().parent / "results"


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def top_overlap(a, b, k: int = 10) -> float:
    """Share of the k highest-valued players of b that are among the k highest of a."""
    return len(set(np.argsort(a)[-k:]) & set(np.argsort(b)[-k:])) / k


def compare(pred, target) -> dict:
    return {"spearman": spearman(pred, target), "top10_overlap": top_overlap(pred, target)}


def default_train_text() -> str:
    for candidate in ("/usr/share/common-licenses/GPL-3", str(ROOT / "LICENSE")):
        if Path(candidate).is_file():
            return candidate
    raise SystemExit("no default training text found; pass --train-text FILE")


# ---------------------------------------------------------------------------------------- part 1
def heldout_report(loaded, predictor, name, task, args, store) -> dict:
    feats = head_features(loaded, task)
    start = time.perf_counter()
    predicted = predictor.predict_array(feats)
    predicted_layers = predictor.predict_layers(feats).means
    predict_seconds = feats.seconds + (time.perf_counter() - start)
    common = dict(store_dir=store, max_rows=args.max_rows)
    est = [estimate_head_values(loaded, name, task, budget=args.budget, seed=s, **common) for s in (0, 1)]
    loo, loo_info = leave_one_out(loaded, name, task, "heads", **common)
    lest = [estimate_layer_values(loaded, name, task, budget=args.layer_budget, seed=s, **common) for s in (0, 1)]
    lloo, _ = leave_one_out(loaded, name, task, "attns", **common)
    target, second = est[0][0].means, est[1][0].means
    ltarget, lsecond = lest[0][0].means, lest[1][0].means
    heads_sum = np.array([predicted[feats.layers == l].sum() for l in range(feats.n_layers)])
    estimate_seconds = est[0][1]["seconds_full_estimate"]
    row = {
        "batch": name, "tokens": int(task.tokens.attention_mask.sum()), "full_value": feats.full_value,
        "heads": {
            "predictor": compare(predicted, target),
            "attribution_patching_zero": compare(feats.raw["ap_zero"], target),
            "attribution_patching_mean": compare(feats.raw["ap_mean"], target),
            "leave_one_out": compare(loo, target),
            "estimator_seed1": compare(second, target),
            "vs_two_seed_mean": {"predictor": compare(predicted, (target + second) / 2),
                                 "attribution_patching_zero": compare(feats.raw["ap_zero"], (target + second) / 2)},
        },
        "layers": {
            "predictor_layer_model": compare(predicted_layers, ltarget),
            "predictor_head_sums": compare(heads_sum, ltarget),
            "attribution_patching_zero": compare(feats.layer_attribution("ap_zero"), ltarget),
            "attribution_patching_mean": compare(feats.layer_attribution("ap_mean"), ltarget),
            "leave_one_out": compare(lloo, ltarget),
            "estimator_seed1": compare(lsecond, ltarget),
        },
        "seconds": {"predict (features + model)": predict_seconds, "estimate_heads": estimate_seconds,
                    "estimate_layers": lest[0][1]["seconds_full_estimate"],
                    "leave_one_out_heads": loo_info["seconds_full_estimate"]},
        "speedup": estimate_seconds / predict_seconds if estimate_seconds else None,
        "n_evaluations": {"heads": est[0][0].n_evaluations, "layers": lest[0][0].n_evaluations,
                          "leave_one_out_heads": 271},
    }
    print(f"  {name}: predictor rho={row['heads']['predictor']['spearman']:.3f}, AP rho="
          f"{row['heads']['attribution_patching_zero']['spearman']:.3f}, LOO rho={row['heads']['leave_one_out']['spearman']:.3f}, "
          f"seed-to-seed rho={row['heads']['estimator_seed1']['spearman']:.3f}; layers: predictor "
          f"{row['layers']['predictor_layer_model']['spearman']:.3f}, seed-to-seed {row['layers']['estimator_seed1']['spearman']:.3f}",
          flush=True)
    return row


def value_prediction(args) -> dict:
    import surgery

    loaded = surgery.load(args.model)
    store = Path(args.store_dir)
    train_text = args.train_text or default_train_text()
    heldout_text = args.heldout_text or str(ROOT / "README.md")
    train = task_batches(loaded, [t for t in args.train_tasks if t != "text"], args.train_seeds, args.n)
    if "text" in args.train_tasks:
        train += [(f"train-{label}", tb) for label, tb in
                  task_batches(loaded, ["text"], args.train_seeds, args.n, text_path=train_text, text_seq_len=args.seq_len)]
    heldout = task_batches(loaded, [t for t in args.heldout_tasks if t != "text"], [args.heldout_seed], args.n)
    if "text" in args.heldout_tasks:
        heldout += [(f"heldout-{label}", tb) for label, tb in
                    task_batches(loaded, ["text"], [args.heldout_seed], args.n, text_path=heldout_text,
                                 text_seq_len=args.seq_len)]
    heldout = [(f"heldout-{label}" if not label.startswith("heldout") else label, tb) for label, tb in heldout]

    print(f"training set: {len(train)} batches, {args.budget} head / {args.layer_budget} layer evaluations each", flush=True)
    start = time.perf_counter()
    dataset = build_dataset(loaded, train, budget=args.budget, layer_budget=args.layer_budget, seed=0,
                            store_dir=store, max_rows=args.max_rows)
    build_seconds = time.perf_counter() - start
    dataset.save(store / "train_dataset.json")
    start = time.perf_counter()
    predictor = ValuePredictor(hidden=tuple(args.hidden), epochs=args.epochs, seed=args.seed).fit(dataset)
    train_seconds = time.perf_counter() - start
    predictor.save(store / "predictor")
    in_sample = [spearman(predictor.predict_array(e.features), e.head_values) for e in dataset.examples]
    in_sample_ap = [spearman(e.features.raw["ap_zero"], e.head_values) for e in dataset.examples]

    print(f"held out: {[name for name, _ in heldout]}", flush=True)
    rows = [heldout_report(loaded, predictor, name, tb, args, store) for name, tb in heldout]
    mean = lambda path: float(np.mean([_get(r, path) for r in rows]))
    summary = {
        "heldout_spearman": mean("heads.predictor.spearman"),
        "heldout_top10_overlap": mean("heads.predictor.top10_overlap"),
        "attribution_patching_spearman": mean("heads.attribution_patching_zero.spearman"),
        "speedup": mean("speedup"),
        "attribution_patching_mean_spearman": mean("heads.attribution_patching_mean.spearman"),
        "attribution_patching_top10_overlap": mean("heads.attribution_patching_zero.top10_overlap"),
        "leave_one_out_spearman": mean("heads.leave_one_out.spearman"),
        "leave_one_out_top10_overlap": mean("heads.leave_one_out.top10_overlap"),
        "estimator_seed_spearman (noise ceiling)": mean("heads.estimator_seed1.spearman"),
        "estimator_seed_top10_overlap (noise ceiling)": mean("heads.estimator_seed1.top10_overlap"),
        "heldout_spearman_vs_two_seed_mean": mean("heads.vs_two_seed_mean.predictor.spearman"),
        "layer_heldout_spearman": mean("layers.predictor_layer_model.spearman"),
        "layer_heldout_top10_overlap": mean("layers.predictor_layer_model.top10_overlap"),
        "layer_head_sum_spearman": mean("layers.predictor_head_sums.spearman"),
        "layer_attribution_patching_spearman": mean("layers.attribution_patching_zero.spearman"),
        "layer_leave_one_out_spearman": mean("layers.leave_one_out.spearman"),
        "layer_estimator_seed_spearman (noise ceiling)": mean("layers.estimator_seed1.spearman"),
        "train_in_sample_spearman": float(np.mean(in_sample)),
        "train_attribution_patching_spearman": float(np.mean(in_sample_ap)),
    }
    summary["goal_beats_attribution_patching"] = summary["heldout_spearman"] > summary["attribution_patching_spearman"]
    summary["goal_spearman_0.8_and_50x"] = summary["heldout_spearman"] >= 0.8 and summary["speedup"] >= 50
    return {"summary": summary, "heldout": rows,
            "training": {"batches": [e.name for e in dataset.examples], "build_seconds_this_run": build_seconds,
                         "predictor_train_seconds": train_seconds, "in_sample_spearman": in_sample,
                         "predictor_config": predictor.config(),
                         "estimate_seconds_per_batch": [e.info["heads"]["seconds_full_estimate"] for e in dataset.examples]},
            "texts": {"train": train_text, "heldout": heldout_text}}


def _get(row, path):
    for key in path.split("."):
        row = row[key]
    return row


# ---------------------------------------------------------------------------------------- part 2
def surrogate_benchmark(args) -> dict:
    from probes.estimators import estimate
    from probes.game import Game
    from probes.synthetic_games import saturating_score_game, soum_game

    n = args.surrogate_players
    games = {"saturating_score": saturating_score_game(n, seed=0), "soum": soum_game(n, seed=0)}
    fresh = lambda known: Game(known.game.players, known.game.value_function, known.game.fingerprint)
    grid = [2 * n + 4, 4 * n, 8 * n, 16 * n]
    budget = 4 * n
    out = []
    for game_name, known in games.items():
        error = lambda phi: float(np.linalg.norm(phi - known.shapley) / np.linalg.norm(known.shapley))
        for estimator in ("permutation", "leverage_shap_size"):
            curve = {b: float(np.mean([error(estimate(fresh(known), budget=b, seed=s, estimator=estimator).means)
                                       for s in range(args.surrogate_seeds)])) for b in grid}
            for prior in (4 * n, 16 * n):
                earlier = Game(known.game.players, known.game.value_function, known.game.fingerprint,
                               store=Path(args.store_dir) / f"surrogate-{game_name}-n{n}-prior{prior}")
                estimate(earlier, budget=prior, seed=1000)  # the earlier run whose evaluations are in the store
                for trees in (False, True):
                    surrogate = CoalitionSurrogate(trees=trees, seed=0).fit_store(earlier.store)
                    cv = float(np.mean([error(control_variate_shapley(fresh(known), surrogate, budget=budget, seed=s,
                                                                      estimator=estimator).means)
                                        for s in range(args.surrogate_seeds)]))
                    out.append({"game": game_name, "n_players": n, "estimator": estimator, "stored_evaluations": len(earlier.store),
                                "surrogate": "linear+size" + ("+trees" if trees else ""), "fresh_budget": budget,
                                "plain_error_curve": {str(b): e for b, e in curve.items()},
                                "control_variate_error": cv, "surrogate_alone_error": error(surrogate.shapley()),
                                "plain_budget_for_same_error": _budget_for(curve, cv)})
                    r = out[-1]
                    print(f"  {game_name} {estimator} prior={prior} {r['surrogate']}: plain@{budget} "
                          f"{curve[budget]:.3f}, control variate {cv:.3f}, surrogate alone {r['surrogate_alone_error']:.3f}, "
                          f"plain needs ~{r['plain_budget_for_same_error']}", flush=True)
    return {"settings": {"seeds": args.surrogate_seeds, "error": "relative L2 to the exact Shapley values",
                         "plain_budget_for_same_error": "log-log interpolation of the plain estimator's error curve; "
                                                        "'>max' / '<min' outside the grid"},
            "rows": out}


def _budget_for(curve: dict, target: float):
    budgets = sorted(curve)
    errors = [curve[b] for b in budgets]
    if target <= errors[-1]:
        return f">{budgets[-1]}" if target < errors[-1] else budgets[-1]
    if target >= errors[0]:
        return f"<={budgets[0]}"
    for (b0, e0), (b1, e1) in zip(zip(budgets, errors), zip(budgets[1:], errors[1:])):
        if e1 <= target <= e0 and e0 > e1:
            t = (np.log(e0) - np.log(target)) / (np.log(e0) - np.log(e1))
            return int(round(np.exp(np.log(b0) + t * (np.log(b1) - np.log(b0)))))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budget", type=int, default=272, help="head-value evaluations per batch and seed")
    parser.add_argument("--layer-budget", type=int, default=64, help="layer-value evaluations per batch and seed")
    parser.add_argument("--n", type=int, default=2, help="examples per batch")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per text row")
    parser.add_argument("--train-tasks", nargs="*", default=["induction", "ioi", "factual", "text"])
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--heldout-tasks", nargs="*", default=["agreement", "greater_than", "text"])
    parser.add_argument("--heldout-seed", type=int, default=0)
    parser.add_argument("--train-text", default=None, help="text file for training batches (default: GPL-3 text)")
    parser.add_argument("--heldout-text", default=None, help="held-out text file (default: the repo README)")
    parser.add_argument("--hidden", type=int, nargs="*", default=[32, 32])
    parser.add_argument("--epochs", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="predictor seed")
    parser.add_argument("--max-rows", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--surrogate-players", type=int, default=32)
    parser.add_argument("--surrogate-seeds", type=int, default=2)
    parser.add_argument("--skip-surrogate", action="store_true")
    parser.add_argument("--skip-values", action="store_true")
    parser.add_argument("--store-dir", default=os.environ.get("AMORTIZED_STORE", "/tmp/model-surgery-stores/amortized"))
    parser.add_argument("--out", default=str(RESULTS / "amortized.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = {"benchmark": "amortized", "settings": {k: v for k, v in vars(args).items()},
              "machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__}}
    if not args.skip_values:
        result.update(value_prediction(args))
    if not args.skip_surrogate:
        print("coalition surrogate (synthetic games):", flush=True)
        result["coalition_surrogate"] = surrogate_benchmark(args)
    result["wall_seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    print(f"wrote {args.out} in {result['wall_seconds']:.0f} s")


def print_table(result: dict) -> None:
    if "heldout" in result:
        print(f"\n{'held-out batch':28s} {'pred rho':>8s} {'pred top10':>10s} {'AP rho':>7s} {'LOO rho':>8s} "
              f"{'seed rho':>8s} {'layer pred':>10s} {'layer seed':>10s} {'speedup':>8s}")
        for r in result["heldout"]:
            h, l = r["heads"], r["layers"]
            print(f"{r['batch']:28s} {h['predictor']['spearman']:8.3f} {h['predictor']['top10_overlap']:10.2f} "
                  f"{h['attribution_patching_zero']['spearman']:7.3f} {h['leave_one_out']['spearman']:8.3f} "
                  f"{h['estimator_seed1']['spearman']:8.3f} {l['predictor_layer_model']['spearman']:10.3f} "
                  f"{l['estimator_seed1']['spearman']:10.3f} {r['speedup']:8.1f}")
        print("\nsummary:")
        for key, value in result["summary"].items():
            print(f"  {key:48s} {value:.3f}" if isinstance(value, float) else f"  {key:48s} {value}")


if __name__ == "__main__":
    main()
