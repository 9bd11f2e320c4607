"""cluster_heads recovers planted specializations; specificity measures relative damage by ablation."""

import math

import numpy as np
import pytest
from token_batches import token_batch

from probes.clustering import cluster_heads, plot_clusters, specificity, specificity_ratio
from probes.errors import ProbeError
from probes.head_values import HeadValues
from probes.values import values_from_arrays

TASKS = ["induction", "ioi", "factual", "greater_than"]


def planted(seed=0, noise=0.05):
    """48 heads: 3 specialist groups of 8 (tasks 0, 1 and 2+3) and 24 background heads near 0.

    Tasks are given on very different scales so that only per-task normalisation can recover them."""
    rng = np.random.default_rng(seed)
    names = [f"L{l}.H{h}" for l in range(6) for h in range(8)]
    truth = np.repeat([0, 1, 2, 3, 3, 3], 8)
    rng.shuffle(truth)
    profile = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=float)
    scale = np.array([5.0, 0.01, 1.0, 100.0])
    values = (profile[truth] + noise * rng.standard_normal((48, 4))) * scale
    hvs = {t: HeadValues.from_values(values_from_arrays(names, values[:, j], estimator="synthetic"))
           for j, t in enumerate(TASKS)}
    return hvs, truth, names


def test_planted_clusters_are_recovered_with_k_chosen_by_silhouette():
    from sklearn.metrics import adjusted_rand_score

    hvs, truth, names = planted()
    clusters = cluster_heads(hvs, seed=0)
    assert clusters.k == 4 and max(clusters.silhouettes, key=clusters.silhouettes.get) == 4
    assert adjusted_rand_score(truth, clusters.labels) == 1.0
    served = sorted(tuple(c.tasks) for c in clusters.clusters)
    assert served == [(), ("factual", "greater_than"), ("induction",), ("ioi",)]
    background = next(c for c in clusters.clusters if not c.tasks)
    assert len(background.heads) == 24
    ioi = next(c for c in clusters.clusters if c.tasks == ["ioi"])
    assert ioi.mean_values["ioi"] == pytest.approx(0.01, rel=0.1)  # raw units are reported too
    assert {h for c in clusters.clusters for h in c.heads} == set(names)


def test_k_can_be_set_and_bad_input_is_refused():
    hvs, _, _ = planted()
    assert cluster_heads(hvs, k=2).k == 2 and cluster_heads(hvs, k=2).silhouettes == {}
    assert cluster_heads(hvs, k=1).labels.tolist() == [0] * 48
    with pytest.raises(ProbeError, match="active_value"):
        cluster_heads(hvs, k=40)  # 24 active heads cannot fill 39 clusters
    with pytest.raises(ProbeError, match="at least two tasks"):
        cluster_heads({"induction": hvs["induction"]})
    other = HeadValues.from_values(values_from_arrays(["L0.H0", "L0.H1"], [1.0, 2.0]))
    with pytest.raises(ProbeError, match="other heads"):
        cluster_heads({"induction": hvs["induction"], "ioi": other})


def test_specificity_ratio_definition():
    damage = {"a": 0.6, "b": 0.4, "c": 0.1, "d": 0.1}
    assert specificity_ratio(damage, ["a", "b"]) == pytest.approx(0.5 / 0.1)
    assert specificity_ratio(damage, []) is None  # background cluster
    assert specificity_ratio(damage, list(damage)) is None
    assert math.isinf(specificity_ratio({"a": 0.3, "b": 0.0}, ["a"]))


def test_specificity_ablates_each_cluster_on_every_task(tiny_llama):
    def logprob(logits, batch):
        logp = logits.log_softmax(-1)
        tgt = batch.targets.expand(logits.shape[0], -1, -1).unsqueeze(-1)
        return logp.gather(-1, tgt).squeeze(-1).mean(dim=(1, 2))

    names = tiny_llama.components.heads
    rng = np.random.default_rng(0)
    hvs = {t: HeadValues.from_values(values_from_arrays(names, rng.standard_normal(len(names)))) for t in ("a", "b")}
    clusters = cluster_heads(hvs, k=3, seed=0)
    tasks = {"a": (token_batch(tiny_llama, seed=0), logprob), "b": (token_batch(tiny_llama, seed=5), logprob)}
    # On a random tiny model ablating every head need not lower the metric; only check when it does.
    try:
        report = specificity(tiny_llama, clusters, tasks)
    except ProbeError as error:
        assert "relative damage is undefined" in str(error)
        return
    assert set(report.damage) == {0, 1, 2}
    assert all(set(d) == {"a", "b"} for d in report.damage.values())
    for c in clusters.clusters:
        assert report.ratios[c.index] == specificity_ratio(report.damage[c.index], c.tasks)
    assert report.as_dict()["tasks"] == ["a", "b"]


def test_cluster_plot_marks_clusters(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    hvs, _, _ = planted()
    ax = plot_clusters(cluster_heads(hvs, seed=0))
    ax.figure.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    assert any("background" in t.get_text() for t in ax.texts)


def test_specialists_are_grouped_by_which_tasks_they_serve_not_by_how_much():
    # Two specialist groups whose sizes span a factor 10, plus a few heads that matter a lot for
    # every task: clustering magnitudes would split large from small; directions recover the roles.
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(3)
    names = [f"L{l}.H{h}" for l in range(10) for h in range(20)]
    roles = np.repeat([0, 1, 2, 3], [10, 10, 4, 176])  # induction, ioi, everything, background
    rng.shuffle(roles)
    profile = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=float)
    size = np.where(roles < 2, rng.uniform(8, 20, len(roles)), 10.0)
    values = profile[roles] * size[:, None] + 0.02 * rng.standard_normal((len(roles), 4))
    hvs = {t: HeadValues.from_values(values_from_arrays(names, values[:, j], estimator="synthetic"))
           for j, t in enumerate(TASKS)}
    clusters = cluster_heads(hvs, seed=0)
    assert clusters.k == 4
    assert adjusted_rand_score(roles, clusters.labels) == 1.0
    served = {tuple(c.tasks): len(c.heads) for c in clusters.clusters}
    assert served[("induction",)] == 10 and served[("ioi",)] == 10 and served[()] == 176
    # The generalists serve (at least) the tasks only they serve; on induction and ioi the
    # specialists set the scale, so there they count less after normalisation.
    generalists = next(c for c in clusters.clusters if len(c.heads) == 4)
    assert {"factual", "greater_than"} <= set(generalists.tasks)
