"""Metrics against hand computation on small random logits, vectorised over coalitions."""

import math

import pytest
import torch

from probes.metrics import (METRICS, Accuracy, KLDivergence, LogitDiff, LogProb, Loss, MetricError, PairAccuracy,
                            Perplexity, ProbMass, make_metric)
from surgery.batch import TokenBatch

C, B, P, V = 3, 2, 3, 7


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(C, B, P, V, generator=g)
    ids = torch.randint(0, V, (B, 6), generator=g)
    pos = torch.tensor([[1, 2, 3], [0, 4, 4]])
    targets = torch.tensor([[3, 0, 6], [2, 5, -100]])  # last position of row 1 is padding
    return logits, TokenBatch(ids, torch.ones_like(ids), pos, targets)


def valid_cells():
    return [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


def test_logprob_loss_perplexity_are_token_means_ignoring_padding(case):
    logits, batch = case
    for c in range(C):
        want = sum(torch.log_softmax(logits[c, b, p], -1)[batch.targets[b, p]].item() for b, p in valid_cells()) / 5
        assert LogProb()(logits, batch)[c].item() == pytest.approx(want, abs=1e-5)
        assert Loss()(logits, batch)[c].item() == pytest.approx(-want, abs=1e-5)
        assert Perplexity()(logits, batch)[c].item() == pytest.approx(math.exp(-want), rel=1e-5)
    assert LogProb().higher_is_better and not Loss().higher_is_better and not Perplexity().higher_is_better


def test_accuracy_counts_argmax_hits(case):
    logits, batch = case
    logits = logits.clone()
    logits[0, 0, 0, 3] = 100  # a hit
    logits[0, 1, 2, 1] = 100  # a "hit" on the padding cell must not count
    want = [sum(int(logits[c, b, p].argmax() == batch.targets[b, p]) for b, p in valid_cells()) / 5 for c in range(C)]
    assert Accuracy()(logits, batch).tolist() == pytest.approx(want)


def test_logit_diff_and_pair_accuracy(case):
    logits, batch = case
    cf = torch.tensor([[1, 1, 1], [4, 4, -100]])
    diffs = lambda c: [(logits[c, b, p, batch.targets[b, p]] - logits[c, b, p, cf[b, p]]).item() for b, p in valid_cells()]
    ld = LogitDiff(cf, batch.input_ids)(logits, batch)
    pa = PairAccuracy(cf, batch.input_ids)(logits, batch)
    for c in range(C):
        assert ld[c].item() == pytest.approx(sum(diffs(c)) / 5, abs=1e-5)
        assert pa[c].item() == pytest.approx(sum(d > 0 for d in diffs(c)) / 5)


def test_prob_mass_is_signed_sum_of_probabilities(case):
    logits, batch = case
    ids = torch.tensor([[[0, 1, 2]] * P, [[3, 4, 0]] * P])
    w = torch.tensor([[[1.0, -1.0, 1.0]] * P, [[-1.0, 1.0, 0.0]] * P])
    got = ProbMass(ids, w, batch.input_ids)(logits, batch)
    for c in range(C):
        want = sum((torch.softmax(logits[c, b, p], -1)[ids[b, p]] * w[b, p]).sum().item() for b, p in valid_cells()) / 5
        assert got[c].item() == pytest.approx(want, abs=1e-6)


def test_kl_is_zero_for_the_clean_model_and_matches_hand_computation(case):
    logits, batch = case
    clean = logits[0]
    kl = KLDivergence(clean, batch.input_ids)(logits, batch)
    assert kl[0].item() == pytest.approx(0.0, abs=1e-6)
    for c in (1, 2):
        want = sum(torch.nn.functional.kl_div(torch.log_softmax(logits[c, b, p], -1), torch.log_softmax(clean[b, p], -1),
                                              log_target=True, reduction="sum").item() for b, p in valid_cells()) / 5
        assert kl[c].item() == pytest.approx(want, abs=1e-5)
    assert not KLDivergence(clean).higher_is_better


def test_kl_computes_clean_logits_lazily_once(case):
    logits, batch = case
    calls = []
    metric = KLDivergence(lambda b: calls.append(1) or logits[0])
    metric(logits, batch)
    metric(logits[1:], batch)
    assert len(calls) == 1


def test_bound_metric_refuses_another_batch(case):
    logits, batch = case
    other = TokenBatch(batch.input_ids.flip(1), batch.attention_mask, batch.score_positions, batch.targets)
    metric = LogitDiff(torch.zeros(B, P, dtype=torch.long), batch.input_ids)
    with pytest.raises(MetricError, match="another batch"):
        metric(logits, other)


def test_metric_names_and_bad_input(case):
    logits, batch = case
    assert {m().name if m not in (LogitDiff, PairAccuracy, ProbMass, KLDivergence) else m.name
            for m in METRICS.values()} == set(METRICS)
    with pytest.raises(MetricError, match="known metrics"):
        make_metric("bleu")
    with pytest.raises(MetricError, match="counterfactual"):
        make_metric("logit_diff")
    with pytest.raises(MetricError, match="clean"):
        make_metric("kl")
    with pytest.raises(MetricError, match="shape"):
        LogProb()(logits[0], batch)
    no_targets = TokenBatch(batch.input_ids, batch.attention_mask, batch.score_positions)
    with pytest.raises(MetricError, match="targets"):
        Accuracy()(logits, no_targets)
