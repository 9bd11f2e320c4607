"""What the benchmarks share, in one module: the run record every results file carries, store
names of the head-value games, and the pruning benchmarks' splits, export check and verdicts.

Every benchmark script defines `make_parser()` (its command line, so tests/test_results_fresh.py
can compare a results file's settings with the script's current defaults) and writes its results
with `write_results(path, result, args)`, which adds the run record under "run":

    command, script, argv   how it was run (rerun: the command, from the repository root)
    settings                every argument as parsed, defaults included
    git_commit, git_dirty   the code it ran (commit the code first, then run, then commit the file)
    versions, machine       python and package versions, platform and threads
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import surgery
from probes.tasks import get_task
from pruning.apply import apply_plan
from pruning.evaluate import (EVAL_METRICS, exported_logits, forward_seconds, masked_logits, plain_logits,
                              sequence_losses, task_score)
from pruning.export import export_pruned

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "numpy", "scipy", "scikit-learn", "shapiq", "safetensors", "captum", "peft", "shap")


# ------------------------------------------------------------------------------------ run record
def git_state(root: Path = ROOT) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it); (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip())


def package_versions() -> dict:
    """Python and the installed versions of the packages the benchmarks measure with (None: absent)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def plain(value):
    """A JSON value for an argparse value (paths as strings, tuples as lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# Taken when the script starts: the code that runs. (At the end the results file itself, rewritten
# as partial results stream in, would count as an uncommitted change.)
STARTED_AT_COMMIT = git_state()


def run_record(args, argv: list[str] | None = None) -> dict:
    """How this results file was made: command, settings, commit (at start), versions, machine."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script = Path(sys.argv[0]).resolve()
    try:
        script_name = script.relative_to(ROOT).as_posix()
    except ValueError:
        script_name = script.as_posix()
    commit, dirty = STARTED_AT_COMMIT
    return {"command": " ".join(["python", script_name, *argv]), "script": script_name, "argv": argv,
            "settings": {k: plain(v) for k, v in sorted(vars(args).items())},
            "git_commit": commit, "git_dirty": dirty, "versions": package_versions(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "torch_threads": _torch_threads()}}


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def write_results(path, result: dict, args) -> Path:
    """Write `result` plus its run record (under "run") to `path` atomically, as indented JSON."""
    from surgery.atomic_io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({**result, "run": run_record(args)}, indent=2, default=str) + "\n")
    return path


# ------------------------------------------------------------------ head-value stores and tasks
# One game -> one store directory, so a store one benchmark filled is replayed by the others
# (head_values, specialization, amortized, low_budget):
#     store_dir / store_name("ioi", n=4, design=40000, dtype="bfloat16", seed=0)  # ioi-n4-b40000-bfloat16-seed0
INDUCTION_LENGTH = 8   # random tokens per half of an induction prompt
TEXT_SEQ_LEN = 16      # tokens per row of the text task (the built-in corpus)


def make_task(name: str, n: int, length: int = INDUCTION_LENGTH):
    """The built-in task `name` with n examples per batch, at the benchmarks' sizes."""
    if name == "induction":
        return get_task("induction", n=n, length=length)
    if name == "text":
        return get_task("text", n=n, seq_len=TEXT_SEQ_LEN)
    return get_task(name, n=n)


def batch_tag(name: str, n: int, task_seed: int = 0, length: int = INDUCTION_LENGTH) -> str:
    """Which batch: task, its size and (when not 0) the seed of its examples."""
    tag = {"induction": f"induction-n{n}-L{length}", "text": f"text-n{n}-L{TEXT_SEQ_LEN}"}.get(name, f"{name}-n{n}")
    return tag + (f"-task{task_seed}" if task_seed else "")


def dtype_tag(dtype: str) -> str:
    """float32 stores carry no tag (they came first); others are named, since their values differ."""
    return "" if dtype == "float32" else f"-{dtype}"


def store_name(name: str, n: int, design: int, dtype: str, seed: int, task_seed: int = 0,
               length: int = INDUCTION_LENGTH) -> str:
    """Directory of the head-value game's store: batch, estimator design size, dtype, estimator seed."""
    return f"{batch_tag(name, n, task_seed, length)}-b{design}{dtype_tag(dtype)}-seed{seed}"


def token_rows(batch, start: int, stop: int):
    """Rows start:stop of a TokenBatch (padding kept)."""
    from surgery.batch import TokenBatch

    cut = lambda t: None if t is None else t[start:stop]
    return TokenBatch(cut(batch.input_ids), cut(batch.attention_mask), cut(batch.score_positions), cut(batch.targets))


def spearman(a, b) -> float:
    """Spearman rank correlation of two score vectors."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def tiny_gpt2(seed: int = 0):
    """The tiny GPT-2 of the tests (3 layers x 4 heads, vocabulary 97, built in memory, weights
    jittered so ablations change the output): the same construction as tests/tiny_models.build("gpt2"),
    here so that no benchmark imports from tests/."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=64, vocab_size=97))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


# ------------------------------------------------------------------------- pruning benchmarks
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
    """(held-out perplexity, loss and task scores, per-sequence losses) of one model."""
    sums, counts = sequence_losses(loaded, held_out.tokens)
    scores = {name: task_score(loaded, tb, TASK_METRICS[name]) for name, tb in task_batches.items()}
    loss = float(sums.sum() / counts.sum())
    return {"perplexity": math.exp(loss), "loss": loss, "task_scores": scores,
            "task_mean": float(np.mean(list(scores.values())))}, (sums / counts).numpy()


def export_and_measure(loaded, plan, held_out, calibration, work_dir, task_batches, repair_calibration=None):
    """Export the plan, reload the directory with transformers, check its logits, evaluate it there.
    repair_calibration: the TokenBatch of a plan with head_repair or mlp_repair (compensation means and refit)."""
    out = Path(work_dir) / "export"
    refits = bool(plan.head_repair or plan.mlp_repair)
    tokens = repair_calibration if refits and repair_calibration is not None else calibration.tokens
    t0 = time.perf_counter()
    manifest = export_pruned(loaded, plan, out, force=True, calibration=[tokens])
    export_s = time.perf_counter() - t0
    probe = held_out.rows(0, 2).tokens
    reloaded_logits, model = exported_logits(out, probe, trust_remote_code=bool(manifest.get("remote_code")))
    if plan.sparsity or refits or plan.mlp_channels:  # no hook equivalent: the plan applied in memory
        reference = plain_logits(apply_plan(loaded, plan, calibration=[tokens]).model.model, probe)
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
