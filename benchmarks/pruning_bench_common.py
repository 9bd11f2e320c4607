"""What the pruning benchmarks share: disjoint text splits, evaluation of an exported plan, row verdicts."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np

import surgery
from probes.tasks import get_task
from pruning.apply import apply_plan
from pruning.cli.model_cmds import EVAL_METRICS
from pruning.evaluate import exported_logits, forward_seconds, masked_logits, plain_logits, sequence_losses, task_score
from pruning.export import export_pruned

TASK_METRICS = EVAL_METRICS  # one accuracy-like metric per built-in prompt task, as `surgery eval` reports


def task_batches_for(loaded, n: int, seed: int) -> dict:
    """Prompts of every built-in task, drawn with a seed no game uses."""
    return {name: get_task(name, n=n).batch(loaded, seed=10_000 + seed) for name in TASK_METRICS}


def text_split(loaded, path, n_cal, n_eval, seq_len, seed):
    """Calibration and held-out sequences: one seeded draw of disjoint chunks, split in two."""
    task = get_task("text", path=path, n=n_cal + n_eval, seq_len=seq_len)
    batch = task.batch(loaded, seed=seed)
    return batch.rows(0, n_cal), batch.rows(n_cal, n_cal + n_eval), task.settings["source"]


def evaluate_model(loaded, held_out, task_batches):
    sums, counts = sequence_losses(loaded, held_out.tokens)
    scores = {name: task_score(loaded, tb, TASK_METRICS[name]) for name, tb in task_batches.items()}
    loss = float(sums.sum() / counts.sum())
    return {"perplexity": math.exp(loss), "loss": loss, "task_scores": scores,
            "task_mean": float(np.mean(list(scores.values())))}, (sums / counts).numpy()


def export_and_measure(loaded, plan, held_out, calibration, work_dir, task_batches):
    """Export the plan, reload the directory with transformers, check its logits, evaluate it there."""
    out = Path(work_dir) / "export"
    t0 = time.perf_counter()
    manifest = export_pruned(loaded, plan, out, force=True, calibration=[calibration.tokens])
    export_s = time.perf_counter() - t0
    probe = held_out.rows(0, 2).tokens
    reloaded_logits, model = exported_logits(out, probe, trust_remote_code=bool(manifest.get("remote_code")))
    if plan.sparsity:  # no hook equivalent: the reference is the same plan applied in memory
        reference = plain_logits(apply_plan(loaded, plan, calibration=[calibration.tokens]).model.model, probe)
    else:
        compensated = plan.removal_mode == "mean_compensated"
        reference = masked_logits(loaded, plan, probe, calibration=calibration.tokens if compensated else None)
    diff = float((reloaded_logits - reference).abs().max())
    reloaded = surgery.load(model)
    metrics, per_seq = evaluate_model(reloaded, held_out, task_batches)
    metrics.update({"export_max_logit_diff": diff, "bytes": manifest["bytes"],
                    "parameters": manifest["after"]["parameters"],
                    "nonzero_parameters": manifest["after"]["nonzero_parameters"],
                    "forward_seconds": forward_seconds(reloaded, held_out.rows(0, 4).tokens),
                    "export_seconds": round(export_s, 1), "loads_with": manifest["loads_with"]})
    shutil.rmtree(out)
    return metrics, per_seq


def judge_row(results, per_seq, shapley_key):
    """Best = lowest held-out loss; a plan ties when its paired loss difference is < 2 standard errors."""
    best = min(results, key=lambda k: results[k]["loss"])
    verdicts = {}
    for key in results:
        d = per_seq[key] - per_seq[best]
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if key != best else 0.0
        verdicts[key] = {"loss_minus_best": float(d.mean()), "paired_stderr": se,
                         "best_or_tied": key == best or float(d.mean()) < 2 * se}
    return best, verdicts, verdicts[shapley_key]["best_or_tied"]


