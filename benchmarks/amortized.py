"""Amortized head/layer values on the embedded SmolLM2-135M, and the coalition-surrogate control variate.

    nice -n 10 python benchmarks/amortized.py [--tasks induction ioi factual agreement greater_than text]
        [--heldout-inputs induction ioi] [--design 40000] [--evaluations 12000] [--layer-budget 900]
        [--values-store DIR] [--store-dir DIR] [--skip-surrogate]

Writes benchmarks/results/amortized.json (--out), and each batch's target head values (Values JSON)
beside it: benchmarks/results/amortized/values-<task>-task<task_seed>.json.

Part 1, the targets: head values of each batch from the default estimator at the budget where it
agrees with itself (design --design, stopped after the round that reaches --evaluations: 12,310
evaluations, seed-to-seed Spearman 0.80 on induction) on the bfloat16 model, the game
benchmarks/head_values.py and specialization.py play, so their stores are shared (--values-store).
A missing store is computed (about 15 min per batch on one core) and then resumes. Cheap targets
would measure the estimator's noise, not the predictor: at 272 evaluations seed 0 and seed 1 agree
at Spearman 0.05. Layer values (30 players "L{l}.attn") at --layer-budget evaluations, two seeds.

Features (attribution patching, integrated gradients, norms, patterns) come from the float32 model:
in bfloat16 the integrated gradients lose a third of their agreement with the values.

Two protocols:
  held-out tasks   for each task, a ValuePredictor trained on the batches of the other tasks predicts
                   it. "text" is next-token loss on the built-in corpus: held-out text.
  held-out inputs  trained on the task_seed 0 batch of every task, it predicts a task_seed 1 batch
                   (new prompts of a known task), beside the values measured on the known batch.
Baselines on the same batches: attribution patching (zero, mean), integrated gradients alone,
leave-one-out (271 evaluations).

Speedup: in this run, the seconds of 128 fresh game evaluations of the held-out batch (bfloat16,
the estimator's fastest setting) times the estimator's evaluations, over the seconds of features +
prediction. Evaluation time only, so the estimator's own overhead is not counted for it.

Part 2: on synthetic games with known values, a surrogate fitted on an earlier run's evaluations is
used as a control variate; error at a fresh budget against the plain estimator's error curve. Then
on SmolLM2 (induction heads): a surrogate fitted on another batch's stored evaluations corrects the
estimates of this batch, replayed from benchmarks/head_values.py's stores (no model evaluation).

summary: heldout_spearman, heldout_top10_overlap, attribution_patching_spearman, speedup (means
over the held-out-task batches), then the baselines, the held-out-input numbers and the layer values.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probes.amortized import ValuePredictor, estimate_layer_values, head_features, leave_one_out  # noqa: E402
from probes.estimators import DEFAULT_ESTIMATOR  # noqa: E402
from probes.head_values import head_values  # noqa: E402
from probes.model_game import model_game  # noqa: E402
from probes.stopping import MaxEvaluations  # noqa: E402
from benchmarks.bench_common import batch_tag, dtype_tag, make_task, spearman, store_name, write_results  # noqa: E402
from benchmarks.amortized_surrogates import real_surrogate_benchmark, surrogate_benchmark  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("induction", "ioi", "factual", "agreement", "greater_than", "text")


def top_overlap(a, b, k: int = 10) -> float:
    """Share of the k highest-valued players of b that are among the k highest of a."""
    return len(set(np.argsort(a)[-k:]) & set(np.argsort(b)[-k:])) / k


def compare(pred, target) -> dict:
    return {"spearman": spearman(pred, target), "top10_overlap": top_overlap(pred, target)}


def target_seeds(name: str, task_seed: int) -> tuple[int, ...]:
    """Estimator seeds of a batch's targets: seed 1 too where benchmarks/head_values.py has it (induction),
    for the estimator's seed-to-seed agreement."""
    return (0, 1) if (name, task_seed) == ("induction", 0) else (0,)


# ---------------------------------------------------------------------------------------- part 1
class Batch:
    """One batch: its TaskBatch, features (float32 model), targets and baselines (bfloat16 model)."""

    def __init__(self, name: str, task_seed: int, args, models):
        self.name, self.task_seed = name, task_seed
        self.label = f"{name}-task{task_seed}"
        game_tag = batch_tag(name, args.n, task_seed) + dtype_tag(args.dtype)
        task = make_task(name, args.n)
        self.tb = task.batch(models.values.tokenizer, seed=task_seed)
        start = time.perf_counter()
        self.features = head_features(models.features, self.tb)
        self.features_seconds = time.perf_counter() - start
        self.heads, self.head_seconds = {}, {}
        for seed in target_seeds(name, task_seed):
            store = Path(args.values_store) / store_name(name, args.n, args.design, args.dtype, seed, task_seed)
            if not (store / "values.jsonl").exists():
                print(f"  {self.label}: computing {args.evaluations}+ evaluations of head values (seed {seed}) "
                      f"into {store}", flush=True)
            start = time.perf_counter()
            self.heads[seed] = head_values(models.values, task, budget=args.design, seed=seed, store=store,
                                           max_rows=args.max_rows, task_seed=task_seed,
                                           stop=MaxEvaluations(args.evaluations), n_rounds=args.rounds)
            self.head_seconds[seed] = time.perf_counter() - start
        self.target = self.heads[0].means
        # The targets ship with the results (a few KB each, beside --out): notebooks/05 and anyone
        # retraining the predictor start from them instead of from hours of evaluations.
        targets_dir = Path(args.out).with_suffix("")
        targets_dir.mkdir(parents=True, exist_ok=True)
        self.heads[0].save(targets_dir / f"values-{self.label}.json")
        pair = (self.tb.tokens, self.tb.metric())  # the natural metric, as the head values use
        store = Path(args.store_dir)
        self.loo = leave_one_out(models.values, game_tag, pair, "heads", store_dir=store, max_rows=args.max_rows)[0]
        self.layers = {seed: estimate_layer_values(models.values, game_tag, pair, budget=args.layer_budget,
                                                   seed=seed, store_dir=store, max_rows=args.max_rows)[0].means
                       for seed in (0, 1)}
        self.seconds_per_evaluation = _seconds_per_evaluation(models.values, self.tb, args)
        print(f"  {self.label}: {self.heads[0].n_evaluations} evaluations, integrated gradients rho "
              f"{spearman(self.features.raw['ig'], self.target):.3f}, attribution rho "
              f"{spearman(self.features.raw['ap_zero'], self.target):.3f}, features {self.features_seconds:.1f} s, "
              f"{1000 * self.seconds_per_evaluation:.0f} ms per evaluation", flush=True)

    @property
    def estimator_seconds(self) -> float:
        return self.seconds_per_evaluation * self.heads[0].n_evaluations


def _seconds_per_evaluation(loaded, tb, args, n: int = 128) -> float:
    """Wall time of one coalition evaluation of this batch's head game, measured now (no store)."""
    game = model_game(loaded, tb.tokens, tb.metric(), "heads", max_rows=args.max_rows)
    masks = np.random.default_rng(0).random((n, game.n_players)) < 0.5
    start = time.perf_counter()
    game(masks)
    return (time.perf_counter() - start) / n


def evaluate(predictor: ValuePredictor, batch: Batch, known: Batch | None = None) -> dict:
    """Predictor and baselines against the batch's estimated values (seed 0)."""
    start = time.perf_counter()
    predicted = predictor.predict_array(batch.features)
    predicted_layers = predictor.predict_layers(batch.features).means
    predict_seconds = batch.features_seconds + (time.perf_counter() - start)
    raw, target, layer_target = batch.features.raw, batch.target, batch.layers[0]
    heads = {"predictor": compare(predicted, target),
             "attribution_patching_zero": compare(raw["ap_zero"], target),
             "attribution_patching_mean": compare(raw["ap_mean"], target),
             "integrated_gradients": compare(raw["ig"], target),
             "leave_one_out": compare(batch.loo, target)}
    if 1 in batch.heads:
        heads["estimator_seed1"] = compare(batch.heads[1].means, target)
    if known is not None:
        heads["values_of_the_known_batch"] = compare(known.target, target)
    layers = {"predictor_layer_model": compare(predicted_layers, layer_target),
              "predictor_head_sums": compare([predicted[batch.features.layers == l].sum()
                                              for l in range(batch.features.n_layers)], layer_target),
              "attribution_patching_zero": compare(batch.features.layer_attribution("ap_zero"), layer_target),
              "integrated_gradients": compare(batch.features.layer_attribution("ig"), layer_target),
              "estimator_seed1": compare(batch.layers[1], layer_target)}
    return {"batch": batch.label, "trained_on": list(predictor.trained_on), "heads": heads, "layers": layers,
            "n_evaluations": batch.heads[0].n_evaluations,
            "seconds": {"predict (features + model)": predict_seconds, "estimator": batch.estimator_seconds,
                        "estimator_per_evaluation": batch.seconds_per_evaluation,
                        "estimator_this_run (store replay or compute)": batch.head_seconds[0],
                        "leave_one_out_evaluations": batch.seconds_per_evaluation * 271},
            "speedup": batch.estimator_seconds / predict_seconds}


def fit(args, batches: list[Batch]) -> ValuePredictor:
    predictor = ValuePredictor(hidden=tuple(args.hidden), epochs=args.epochs, weight_decay=args.weight_decay,
                               seed=args.seed)
    predictor.fit_heads([b.features for b in batches], [b.target for b in batches])
    predictor.fit_layers([b.features for b in batches], [b.layers[0] for b in batches])
    predictor.trained_on = [b.label for b in batches]
    return predictor


def value_prediction(args) -> dict:
    import surgery

    models = SimpleNamespace(values=surgery.load(args.model, dtype=getattr(torch, args.dtype)),
                             features=surgery.load(args.model, dtype=getattr(torch, args.feature_dtype)))

    wanted = [(name, 0) for name in args.tasks] + [(name, 1) for name in args.heldout_inputs]
    print(f"batches: {[f'{n}-task{s}' for n, s in wanted]}", flush=True)
    batches = {(name, seed): Batch(name, seed, args, models) for name, seed in wanted}

    held_out_tasks = []
    for name in args.tasks:
        train = [b for (n, _), b in batches.items() if n != name]
        predictor = fit(args, train)
        held_out_tasks += [evaluate(predictor, b) for (n, _), b in batches.items() if n == name]
    known = [batches[(name, 0)] for name in args.tasks]
    predictor = fit(args, known)
    predictor.save(Path(args.store_dir) / "predictor")
    held_out_inputs = [evaluate(predictor, batches[(name, 1)], known=batches[(name, 0)]) for name in args.heldout_inputs]
    in_sample = [spearman(predictor.predict_array(b.features), b.target) for b in known]

    first = [r for r in held_out_tasks if r["batch"].endswith("-task0")]
    mean = lambda rows, path: float(np.mean([_get(r, path) for r in rows])) if rows else None
    summary = {
        "heldout_spearman": mean(first, "heads.predictor.spearman"),
        "heldout_top10_overlap": mean(first, "heads.predictor.top10_overlap"),
        "attribution_patching_spearman": mean(first, "heads.attribution_patching_zero.spearman"),
        "speedup": mean(first, "speedup"),
        "attribution_patching_top10_overlap": mean(first, "heads.attribution_patching_zero.top10_overlap"),
        "attribution_patching_mean_spearman": mean(first, "heads.attribution_patching_mean.spearman"),
        "integrated_gradients_spearman": mean(first, "heads.integrated_gradients.spearman"),
        "integrated_gradients_top10_overlap": mean(first, "heads.integrated_gradients.top10_overlap"),
        "leave_one_out_spearman": mean(first, "heads.leave_one_out.spearman"),
        "leave_one_out_top10_overlap": mean(first, "heads.leave_one_out.top10_overlap"),
        "heldout_text_spearman": mean([r for r in first if r["batch"].startswith("text-")], "heads.predictor.spearman"),
        "estimator_seed_spearman (noise ceiling, induction)": mean(
            [r for r in first if "estimator_seed1" in r["heads"]], "heads.estimator_seed1.spearman"),
        "heldout_inputs_spearman": mean(held_out_inputs, "heads.predictor.spearman"),
        "heldout_inputs_top10_overlap": mean(held_out_inputs, "heads.predictor.top10_overlap"),
        "heldout_inputs_attribution_patching_spearman": mean(held_out_inputs, "heads.attribution_patching_zero.spearman"),
        "heldout_inputs_known_batch_values_spearman": mean(held_out_inputs, "heads.values_of_the_known_batch.spearman"),
        "layer_heldout_spearman": mean(first, "layers.predictor_layer_model.spearman"),
        "layer_head_sum_spearman": mean(first, "layers.predictor_head_sums.spearman"),
        "layer_attribution_patching_spearman": mean(first, "layers.attribution_patching_zero.spearman"),
        "layer_integrated_gradients_spearman": mean(first, "layers.integrated_gradients.spearman"),
        "layer_estimator_seed_spearman (noise ceiling)": mean(first, "layers.estimator_seed1.spearman"),
        "train_in_sample_spearman": float(np.mean(in_sample)),
    }
    summary["goal_beats_attribution_patching"] = summary["heldout_spearman"] > summary["attribution_patching_spearman"]
    summary["goal_spearman_0.8_and_50x"] = summary["heldout_spearman"] >= 0.8 and summary["speedup"] >= 50
    return {"summary": summary, "held_out_tasks": held_out_tasks, "held_out_inputs": held_out_inputs,
            "predictor_config": predictor.config(),
            "targets": {"estimator": DEFAULT_ESTIMATOR, "design": args.design, "stop_at": args.evaluations,
                        "rounds": args.rounds, "dtype": args.dtype, "feature_dtype": args.feature_dtype,
                        "layer_budget": args.layer_budget}}


def _get(row, path):
    for key in path.split("."):
        row = row[key]
    return row


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), help="task_seed 0 batches (held-out-task protocol)")
    parser.add_argument("--heldout-inputs", nargs="*", default=["induction", "ioi"],
                        help="tasks whose task_seed 1 batch is predicted by a predictor trained on every task's seed 0")
    parser.add_argument("--n", type=int, default=4, help="examples per batch")
    parser.add_argument("--design", type=int, default=40000, help="the estimator's design size (as head_values.py)")
    parser.add_argument("--evaluations", type=int, default=12000, help="stop after the round that reaches this")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--layer-budget", type=int, default=900, help="layer-value evaluations per batch and seed")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype of the game (targets, baselines, timing)")
    parser.add_argument("--feature-dtype", default="float32", help="model dtype of the features")
    parser.add_argument("--hidden", type=int, nargs="*", default=[32, 32])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="predictor seed")
    parser.add_argument("--max-rows", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--values-store", default=os.environ.get("HEAD_VALUES_STORE", "/tmp/model-surgery-stores/head_values"))
    parser.add_argument("--surrogate-players", type=int, default=32)
    parser.add_argument("--surrogate-seeds", type=int, default=2)
    parser.add_argument("--skip-surrogate", action="store_true")
    parser.add_argument("--skip-values", action="store_true")
    parser.add_argument("--store-dir", default=os.environ.get("AMORTIZED_STORE", "/tmp/model-surgery-stores/amortized"))
    parser.add_argument("--out", default=str(RESULTS / "amortized.json"))
    return parser


def main() -> None:
    args = make_parser().parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = {"benchmark": "amortized", "settings": dict(vars(args))}
    if not args.skip_values:
        result.update(value_prediction(args))
    if not args.skip_surrogate:
        print("coalition surrogate (synthetic games):", flush=True)
        result["coalition_surrogate"] = surrogate_benchmark(args)
        print("coalition surrogate (SmolLM2, fitted on another batch's store):", flush=True)
        result["coalition_surrogate_smollm2"] = real_surrogate_benchmark(args)
    result["wall_seconds"] = time.perf_counter() - started
    write_results(args.out, result, args)
    print_table(result)
    print(f"wrote {args.out} in {result['wall_seconds']:.0f} s")


def print_table(result: dict) -> None:
    if "held_out_tasks" not in result:
        return
    print(f"\n{'held-out batch':22s} {'pred rho':>8s} {'top10':>6s} {'AP rho':>7s} {'IG rho':>7s} {'LOO rho':>8s} "
          f"{'known':>6s} {'seed':>6s} {'layer pred':>10s} {'layer seed':>10s} {'speedup':>8s}")
    for protocol in ("held_out_tasks", "held_out_inputs"):
        print(protocol.replace("_", " ") + ":")
        for r in result[protocol]:
            h, l = r["heads"], r["layers"]
            cell = lambda key: f"{h[key]['spearman']:6.3f}" if key in h else f"{'':6s}"
            print(f"  {r['batch']:20s} {h['predictor']['spearman']:8.3f} {h['predictor']['top10_overlap']:6.1f} "
                  f"{h['attribution_patching_zero']['spearman']:7.3f} {h['integrated_gradients']['spearman']:7.3f} "
                  f"{h['leave_one_out']['spearman']:8.3f} {cell('values_of_the_known_batch')} {cell('estimator_seed1')} "
                  f"{l['predictor_layer_model']['spearman']:10.3f} {l['estimator_seed1']['spearman']:10.3f} "
                  f"{r['speedup']:8.1f}")
    print("\nsummary:")
    for key, value in result["summary"].items():
        print(f"  {key:52s} {value:.3f}" if isinstance(value, float) else f"  {key:52s} {value}")


if __name__ == "__main__":
    main()
