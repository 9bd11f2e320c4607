"""Head specialization: cluster heads by their values across tasks, and check the clusters by ablation.

    clusters = cluster_heads({"induction": hv_ind, "ioi": hv_ioi, ...})        # k by silhouette
    report = specificity(model, clusters, {"induction": "induction", "ioi": "ioi", ...})
    report.ratios   # {cluster: mean relative damage on its tasks / mean relative damage on the others}

Features. Head h is the vector (v_t(h) / s_t) over tasks t, where s_t is the root-mean-square of
task t's head values. Dividing by the RMS (not z-scoring) keeps 0 meaning "does nothing for this
task" and the sign meaning help/harm, while a task measured in larger units (log-probs vs.
probabilities) no longer dominates the distances.

What is clustered. Specialisation is *which* tasks a head serves, not how much: a head that matters
a lot for everything and one that matters a little for everything are alike. So k-means runs on the
direction of each head's vector (unit length, i.e. cosine k-means), for the *active* heads: those
that on some task are at least `active_value` (default 2) times that task's RMS head value. The
others form the background cluster, which is not clustered further. On real models most heads do
little for any task; clustering magnitudes instead splits "the few large heads" from "the rest"
and finds no specialisation. (The criterion is per task, not the vector's length, so a head that
serves one task is not held to a higher bar than one that serves all of them.)

Tasks a cluster serves. The tasks on which the cluster's mean normalised value is positive and at
least `serve_fraction` (default 1/2) of its largest mean over tasks, and at least `min_value`
(default 0.5 RMS units, so a cluster of near-zero heads serves nothing: it is the background).

Specificity (validation). For each task t, with the clean metric m_t(full), the metric with all
heads ablated m_t(none) and the metric with cluster C's heads ablated m_t(-C),
    relative damage d_t(C) = (m_t(full) - m_t(-C)) / (m_t(full) - m_t(none)),
the fraction of the task performance carried by heads that C's ablation removes (1 = as bad as
removing every head). specificity ratio(C) = mean_{t served by C} d_t(C) / mean_{t not served} d_t(C).
A ratio above 1 means ablating C hurts its own tasks more than the others; it is reported as
infinite when the other tasks are not hurt at all (damage <= 0) and undefined (None) for a
background cluster, which serves no task, or when C serves every task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from probes.errors import ProbeError
from probes.values import Values


@dataclass
class HeadCluster:
    index: int
    heads: list[str]
    mean_values: dict[str, float]        # raw mean head value per task (task units)
    mean_normalised: dict[str, float]    # mean of the RMS-normalised values per task
    tasks: list[str]                     # the tasks this cluster serves

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "size": len(self.heads), "tasks": self.tasks, "heads": self.heads,
                "mean_values": self.mean_values, "mean_normalised": self.mean_normalised}


@dataclass
class HeadClusters:
    names: list[str]                 # head names (rows of `features`)
    tasks: list[str]
    features: np.ndarray             # [heads, tasks] normalised values
    labels: np.ndarray               # [heads] cluster index
    clusters: list[HeadCluster]
    k: int
    silhouettes: dict[int, float]    # k -> silhouette score (empty when k was given)
    scales: dict[str, float]         # task -> RMS used to normalise
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"k": self.k, "tasks": self.tasks, "silhouettes": {str(k): v for k, v in self.silhouettes.items()},
                "scales": self.scales, "seed": self.seed, "settings": self.settings,
                "clusters": [c.as_dict() for c in self.clusters]}


def _matrix(values: Mapping[str, Values]) -> tuple[list[str], list[str], np.ndarray]:
    if not isinstance(values, Mapping) or len(values) < 2:
        raise ProbeError("cluster_heads needs a dict {task_name: HeadValues} with at least two tasks")
    tasks = list(values)
    names = list(values[tasks[0]].names)
    for t in tasks[1:]:
        if sorted(values[t].names) != sorted(names):
            raise ProbeError(f"task {t!r} values cover other heads than task {tasks[0]!r}; "
                             "values of every task must be over the same model's heads")
    raw = np.stack([[values[t][n] for t in tasks] for n in names])
    if not np.isfinite(raw).all():
        raise ProbeError("head values contain NaN/inf; cannot cluster them")
    return names, tasks, raw


def cluster_heads(values: Mapping[str, Values], k: int | None = None, seed: int = 0, *,
                  k_range: tuple[int, int] = (2, 12), serve_fraction: float = 0.5,
                  min_value: float = 0.5, active_value: float = 2.0) -> HeadClusters:
    """Cluster heads by the direction of their (per-task RMS-normalised) value vectors, k-means.

    k: number of clusters, the background included; None picks the k in k_range with the highest
    silhouette score. active_value: heads below this many RMS units on every task are background;
    0 clusters every head by direction.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    names, tasks, raw = _matrix(values)
    scales = np.sqrt(np.mean(raw**2, axis=0))
    scales[scales == 0] = 1.0
    features = raw / scales
    n = len(names)
    threshold = float(active_value)
    length = np.linalg.norm(features, axis=1)
    active = (np.abs(features).max(axis=1) >= threshold) & (length > 0)
    if active.sum() < 2:
        raise ProbeError(f"only {int(active.sum())} head(s) reach active_value={threshold:.3g} RMS units on some "
                         f"task; lower it (active_value=0, --active-value 0, clusters every head)")
    background = ~active
    directions = features[active] / length[active, None]  # cosine k-means: k-means on unit vectors

    def fit(kk: int) -> np.ndarray | None:
        """Labels with kk clusters in all: kk - 1 of directions plus the background (when there is one)."""
        if kk == 1:
            return np.zeros(n, dtype=int)
        n_directions = kk - 1 if background.any() else kk
        if not 1 <= n_directions <= active.sum():
            return None
        labels = np.full(n, n_directions)
        labels[active] = KMeans(n_clusters=n_directions, n_init=10, random_state=seed).fit_predict(directions)
        return labels

    silhouettes: dict[int, float] = {}
    if k is None:
        k, labels = _best_k(fit, directions, active, k_range, n, silhouettes, silhouette_score)
    else:
        if not 1 <= int(k) <= n:
            raise ProbeError(f"k must be between 1 and the number of heads ({n}), got {k}")
        k = int(k)
        labels = fit(k)
        if labels is None:
            raise ProbeError(f"k={k} needs {k - int(background.any())} clusters of the {int(active.sum())} heads "
                             f"reaching active_value={threshold:.3g}; choose a smaller k or lower active_value (--active-value)")
    labels, clusters = _numbered_clusters(features, raw, labels, k, names, tasks, serve_fraction, min_value)
    return HeadClusters(names, tasks, features, labels, clusters, k, silhouettes,
                        {t: float(s) for t, s in zip(tasks, scales)}, seed,
                        {"serve_fraction": serve_fraction, "min_value": min_value, "k_range": list(k_range),
                         "normalisation": "per-task RMS", "method": "kmeans on directions (cosine)",
                         "active_value": threshold, "n_active": int(active.sum())})


def _best_k(fit, directions, active, k_range, n, silhouettes, silhouette_score) -> tuple[int, np.ndarray]:
    """(k, labels) with the highest silhouette in k_range; fills `silhouettes` (k -> score)."""
    lo, hi = k_range
    hi = min(hi, n - 1)
    if lo < 2 or hi < lo:
        raise ProbeError(f"k_range {k_range} leaves no k to try for {n} heads (need 2 <= k <= n - 1)")
    best, best_labels = None, None
    for kk in range(lo, hi + 1):
        labels = fit(kk)
        # Scored on the active heads only (the background is not clustered), so it needs two
        # direction clusters and a head more than clusters.
        if labels is None or not 2 <= len(set(labels[active])) < active.sum():
            continue
        score = float(silhouette_score(directions, labels[active]))
        silhouettes[kk] = score
        if best is None or score > silhouettes[best]:
            best, best_labels = kk, labels
    if best is None:
        raise ProbeError(f"no k in {k_range} gives two clusters of the {int(active.sum())} active heads; "
                         f"set k, or lower active_value (--active-value)")
    return best, best_labels


def _numbered_clusters(features, raw, labels, k, names, tasks, serve_fraction, min_value):
    """(labels, HeadClusters) numbered by decreasing importance (largest mean normalised value
    first), for stable reports; each cluster with the tasks it serves."""
    strength = [features[labels == c].mean(axis=0).max() if (labels == c).any() else -np.inf for c in range(k)]
    order = np.argsort(-np.asarray(strength), kind="stable")
    relabel = {int(old): new for new, old in enumerate(order)}
    labels = np.array([relabel[int(c)] for c in labels])
    clusters = []
    for c in range(k):
        member = labels == c
        norm_means = features[member].mean(axis=0)
        raw_means = raw[member].mean(axis=0)
        top = norm_means.max()
        served = [t for t, m in zip(tasks, norm_means)
                  if m > 0 and m >= serve_fraction * top and m >= min_value]
        clusters.append(HeadCluster(c, [nm for nm, m in zip(names, member) if m],
                                    {t: float(v) for t, v in zip(tasks, raw_means)},
                                    {t: float(v) for t, v in zip(tasks, norm_means)}, served))
    return labels, clusters


# ----------------------------------------------------------------------------------- validation
@dataclass
class Specificity:
    tasks: list[str]
    full: dict[str, float]                 # clean metric per task
    none: dict[str, float]                 # metric with every head ablated
    damage: dict[int, dict[str, float]]    # cluster -> task -> relative damage
    ratios: dict[int, float | None]        # cluster -> specificity ratio (None: undefined)
    served: dict[int, list[str]]

    @property
    def min_ratio(self) -> float | None:
        defined = [r for r in self.ratios.values() if r is not None]
        return min(defined) if defined else None

    def as_dict(self) -> dict[str, Any]:
        def show(r):
            return None if r is None else ("inf" if math.isinf(r) else r)
        return {"tasks": self.tasks, "full": self.full, "all_heads_ablated": self.none,
                "relative_damage": {str(c): d for c, d in self.damage.items()},
                "served": {str(c): s for c, s in self.served.items()},
                "specificity_ratio": {str(c): show(r) for c, r in self.ratios.items()},
                "min_specificity_ratio": show(self.min_ratio)}


def specificity_ratio(damage: Mapping[str, float], served: list[str]) -> float | None:
    """mean damage on served tasks / mean damage on the others (None when either set is empty)."""
    own = [damage[t] for t in damage if t in served]
    other = [damage[t] for t in damage if t not in served]
    if not own or not other:
        return None
    own_mean, other_mean = float(np.mean(own)), float(np.mean(other))
    if other_mean <= 0:
        return math.inf if own_mean > 0 else None
    return own_mean / other_mean


def specificity(model, clusters: HeadClusters, tasks: Mapping[str, Any], *, mode: str = "zero",
                n_examples: int | None = None, task_seed: int = 0, max_rows: int = 64) -> Specificity:
    """Ablate each cluster's heads on each task and measure the relative damage (see module docstring).

    tasks: {task_name: anything head_values accepts as a task (name, Task, TaskBatch, (TokenBatch, metric))};
    the names must be those the clusters were built from.
    """
    from probes.head_values import resolve_task
    from surgery.engine import AblationEngine
    from surgery.loading import load

    missing = [t for t in clusters.tasks if t not in tasks]
    if missing:
        raise ProbeError(f"specificity needs a task for every clustered task; missing {missing}")
    loaded = load(model)
    engine = AblationEngine(loaded, "heads", mode=mode, max_rows=max_rows)
    index = {name: i for i, name in enumerate(engine.players)}
    unknown = [h for h in clusters.names if h not in index]
    if unknown:
        raise ProbeError(f"clustered heads {unknown[:5]} are not heads of model {loaded.source!r}")
    import torch

    n = engine.n_players
    masks = torch.ones(2 + len(clusters.clusters), n, dtype=torch.bool)
    masks[1] = False
    for c in clusters.clusters:
        masks[2 + c.index, [index[h] for h in c.heads]] = False
    full, none, damage = {}, {}, {c.index: {} for c in clusters.clusters}
    for t in clusters.tasks:
        batch, metric, _ = resolve_task(loaded, tasks[t], n_examples, None, task_seed, None)
        scores = engine.evaluate(masks, batch, metric).numpy()
        full[t], none[t] = float(scores[0]), float(scores[1])
        span = scores[0] - scores[1]
        if span <= 0:
            raise ProbeError(f"task {t!r}: ablating every head does not lower the metric ({scores[0]:.4g} -> "
                             f"{scores[1]:.4g}), so relative damage is undefined; is the metric higher-is-better?")
        for c in clusters.clusters:
            damage[c.index][t] = float((scores[0] - scores[2 + c.index]) / span)
    ratios = {c.index: specificity_ratio(damage[c.index], c.tasks) for c in clusters.clusters}
    return Specificity(list(clusters.tasks), full, none, damage, ratios, {c.index: c.tasks for c in clusters.clusters})


def plot_clusters(clusters: HeadClusters, ax=None, *, title: str | None = None):
    """Heatmap heads x tasks (normalised values), heads grouped by cluster with boundaries and labels."""
    import matplotlib.pyplot as plt

    order = np.lexsort((-clusters.features.max(axis=1), clusters.labels))
    data = clusters.features[order]
    if ax is None:
        _, ax = plt.subplots(figsize=(2 + 1.1 * len(clusters.tasks), 8))
    bound = float(np.abs(data).max()) or 1.0
    image = ax.imshow(data, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(clusters.tasks)), clusters.tasks, rotation=30, ha="right")
    ax.set_ylabel("heads (grouped by cluster)")
    labels = clusters.labels[order]
    starts = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]] + [len(labels)]
    for a, b in zip(starts[:-1], starts[1:]):
        ax.axhline(a - 0.5, color="black", lw=1)
        c = clusters.clusters[int(labels[a])]
        tag = f"C{c.index} ({len(c.heads)}): {', '.join(c.tasks) or 'background'}"
        ax.text(len(clusters.tasks) - 0.45, (a + b - 1) / 2, tag, va="center", fontsize=8)
    if len(labels) <= 60:
        ax.set_yticks(range(len(labels)), [clusters.names[i] for i in order], fontsize=6)
    else:
        ax.set_yticks([])
    ax.set_title(title or f"head values / task RMS, k={clusters.k}")
    ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.35)
    return ax


__all__ = ["cluster_heads", "HeadClusters", "HeadCluster", "specificity", "Specificity", "specificity_ratio",
           "plot_clusters"]
