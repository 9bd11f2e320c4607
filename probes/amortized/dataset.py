"""Training data for the value predictor: per batch, estimated values plus cheap features.

    batches = task_batches(loaded, ["induction", "ioi"], task_seeds=[0, 1], n_examples=4)
    data = build_dataset(loaded, batches, budget=300, layer_budget=96, store_dir="/tmp/amortized")
    data.save("train.json"); ValueDataset.load("train.json")

Head values come from probes.head_values (any estimator, a set budget, a seed) and layer values
from the game over each layer's attention ("L{l}.attn", all heads of a layer as one player). Every
evaluation streams to a CoalitionStore under store_dir, one directory per (batch, players,
estimator, budget, seed), so a rerun resumes. The metric is the task's natural one made
differentiable (pair_accuracy -> logit_diff, accuracy -> logprob; see probes.metrics.SMOOTH_METRIC):
features and values must describe the same quantity.

Estimation time is recorded per evaluation in a sidecar `<store>.timing.json` when evaluations
are computed, so a resumed run still knows what the estimate costs (for speedup reports).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np

from probes.amortized.features import HeadFeatures, head_features, resolve_batch
from probes.errors import ProbeError
from probes.estimators import DEFAULT_ESTIMATOR, estimate
from probes.head_values import head_values
from probes.model_game import model_game
from probes.values import Values
from surgery.atomic_io import write_json_atomic
from surgery.loading import load
from surgery.engine import leave_one_out_masks

FORMAT = "model-surgery.value-dataset"


@dataclass
class ValueExample:
    """One batch: its features and the estimator's values (heads, and layers when computed)."""

    name: str
    features: HeadFeatures
    head_values: np.ndarray
    head_stderrs: np.ndarray
    layer_values: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "features": self.features.as_dict(), "head_values": self.head_values.tolist(),
                "head_stderrs": [None if not np.isfinite(s) else float(s) for s in self.head_stderrs],
                "layer_values": None if self.layer_values is None else self.layer_values.tolist(), "info": self.info}

    @classmethod
    def from_dict(cls, data: dict) -> ValueExample:
        layer = data.get("layer_values")
        return cls(data["name"], HeadFeatures.from_dict(data["features"]), np.asarray(data["head_values"], dtype=float),
                   np.asarray([np.nan if s is None else s for s in data["head_stderrs"]], dtype=float),
                   None if layer is None else np.asarray(layer, dtype=float), dict(data.get("info", {})))


@dataclass
class ValueDataset:
    examples: list[ValueExample]

    def save(self, path: str | PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(path, {"format": FORMAT, "examples": [e.as_dict() for e in self.examples]},
                                 indent=None)

    @classmethod
    def load(cls, path: str | PathLike) -> ValueDataset:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ProbeError(f"{path} is not a value dataset (format {data.get('format')!r})")
        return cls([ValueExample.from_dict(e) for e in data["examples"]])

    def __len__(self) -> int:
        return len(self.examples)


def task_batches(model, tasks: Sequence[str], task_seeds: Sequence[int] = (0,), n_examples: int = 4,
                 text_path: str | PathLike | None = None, text_seq_len: int = 16) -> list[tuple[str, object]]:
    """[(label, TaskBatch)] for built-in tasks; "text" reads `text_path` (seq_len tokens per row)."""
    from probes.tasks import get_task

    loaded = load(model)
    if loaded.tokenizer is None:
        raise ProbeError(f"model {loaded.source!r} has no tokenizer; pass ready (name, (TokenBatch, metric)) pairs")
    out = []
    for name in tasks:
        if name == "text":
            if text_path is None:
                raise ProbeError("the text task needs text_path (a local text file)")
            task = get_task("text", path=text_path, n=n_examples, seq_len=text_seq_len)
        else:
            task = get_task(name, n=n_examples)
        for seed in task_seeds:
            out.append((f"{name}-seed{seed}", task.batch(loaded.tokenizer, seed=seed)))
    return out


def _store_path(store_dir, name: str, players: str, estimator: str, budget, seed) -> Path | None:
    if store_dir is None:
        return None
    return Path(store_dir) / f"{name}-{players}-{estimator}-b{budget}-s{seed}"


def _timed_info(store: Path | None, seconds: float, fresh: int, total: int) -> dict:
    """Wall time of the estimate; per-evaluation cost kept beside the store for resumed runs."""
    info = {"seconds_this_run": seconds, "fresh_evaluations": fresh, "n_evaluations": total}
    per_eval = seconds / fresh if fresh else None
    if store is not None:
        sidecar = store.with_name(store.name + ".timing.json")
        if fresh:
            write_json_atomic(sidecar, {"seconds_per_evaluation": per_eval, "fresh_evaluations": fresh}, indent=None)
        elif sidecar.exists():
            per_eval = json.loads(sidecar.read_text())["seconds_per_evaluation"]
    info["seconds_per_evaluation"] = per_eval
    info["seconds_full_estimate"] = per_eval * total if per_eval is not None else None
    return info


def estimate_head_values(model, name: str, task, *, estimator: str | None = None, budget: int | None = None,
                         seed: int = 0, store_dir=None, max_rows: int = 64):
    """(HeadValues, timing info) of one batch; evaluations stream to a store under store_dir."""
    estimator = estimator or DEFAULT_ESTIMATOR
    tokens, metric = resolve_batch(task)
    store = _store_path(store_dir, name, "heads", estimator, budget, seed)
    start = time.perf_counter()
    hv = head_values(model, (tokens, metric), estimator=estimator, budget=budget, seed=seed, store=store,
                     max_rows=max_rows)
    fresh = int(hv.details["wall_evaluations_this_run"])
    return hv, _timed_info(store, time.perf_counter() - start, fresh, hv.n_evaluations)


def estimate_layer_values(model, name: str, task, *, estimator: str | None = None, budget: int | None = None,
                          seed: int = 0, store_dir=None, max_rows: int = 64) -> tuple[Values, dict]:
    """(Values over "L{l}.attn", timing info): each layer's heads ablated together as one player."""
    estimator = estimator or DEFAULT_ESTIMATOR
    loaded = load(model)
    tokens, metric = resolve_batch(task)
    store = _store_path(store_dir, name, "attns", estimator, budget, seed)
    # batch_size: chunks, so the store persists as it goes
    game = model_game(loaded, tokens, metric, "attns", store=store, task_name=name, max_rows=max_rows,
                      batch_size=max(1, max_rows))
    budget = budget if budget is not None else 10 * game.n_players
    start = time.perf_counter()
    values = estimate(game, budget=budget, seed=seed, estimator=estimator)
    return values, _timed_info(store, time.perf_counter() - start, game.n_evaluations, values.n_evaluations)


def leave_one_out(model, name: str, task, players: str = "heads", *, store_dir=None, max_rows: int = 64
                  ) -> tuple[np.ndarray, dict]:
    """v(all) - v(all but i) for every player: the n + 1 evaluations baseline."""
    loaded = load(model)
    tokens, metric = resolve_batch(task)
    store = None if store_dir is None else Path(store_dir) / f"{name}-{players}-loo"
    game = model_game(loaded, tokens, metric, players, store=store, task_name=name, max_rows=max_rows,
                      batch_size=max(1, max_rows))
    start = time.perf_counter()
    values = game(leave_one_out_masks(game.n_players).numpy())  # row 0: everyone; row 1 + i: all but i
    return values[0] - values[1:], _timed_info(store, time.perf_counter() - start, game.n_evaluations,
                                               game.n_players + 1)


def build_example(model, name: str, task, *, estimator: str | None = None, budget: int | None = None,
                  seed: int = 0, layer_budget: int | None = None, store_dir=None, max_rows: int = 64) -> ValueExample:
    """Features, head values and (with layer_budget) layer values of one batch."""
    loaded = load(model)
    features = head_features(loaded, task)
    hv, info = estimate_head_values(loaded, name, task, estimator=estimator, budget=budget, seed=seed,
                                    store_dir=store_dir, max_rows=max_rows)
    info = {"estimator": hv.estimator, "budget": budget, "seed": seed, "features_seconds": features.seconds,
            "heads": info}
    layer = None
    if layer_budget is not None:
        lv, linfo = estimate_layer_values(loaded, name, task, estimator=estimator, budget=layer_budget, seed=seed,
                                          store_dir=store_dir, max_rows=max_rows)
        layer, info["layers"] = lv.means, {"budget": layer_budget, **linfo}
    return ValueExample(name, features, hv.means, hv.stderrs, layer, info)


def build_dataset(model, batches: Sequence[tuple[str, object]], *, progress=print, **settings) -> ValueDataset:
    """A ValueExample for each (label, TaskBatch or (TokenBatch, metric)); settings go to build_example."""
    examples = []
    for i, (name, task) in enumerate(batches):
        examples.append(build_example(model, name, task, **settings))
        if progress:
            info = examples[-1].info
            progress(f"[{i + 1}/{len(batches)}] {name}: {info['heads']['n_evaluations']} head evaluations "
                     f"({info['heads']['fresh_evaluations']} new, {info['heads']['seconds_this_run']:.1f} s)")
    return ValueDataset(examples)
