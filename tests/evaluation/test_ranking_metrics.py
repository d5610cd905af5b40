"""AUC, GAUC, LogLoss and list NDCG against hand-computed values and degenerate cases."""

import math

import pytest
import torch

from genrec.evaluation.metrics import auc, gauc, list_ndcg, logloss


def test_auc_hand_value():
    # positives 0.35, 0.8; negatives 0.1, 0.4 -> pairs won: (0.35>0.1), (0.8>0.1), (0.8>0.4) = 3 of 4
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


def test_auc_ties_count_half():
    # one positive tied with one of two negatives, above the other: (1 + 0.5) / 2
    assert auc(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([1, 0, 0])) == pytest.approx(0.75)


def test_auc_one_class_is_nan():
    assert math.isnan(auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1])))


def test_gauc_weights_by_impressions_and_skips_one_class_users():
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    scores = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.8, 0.3, 0.4])
    labels = torch.tensor([1, 0, 0, 1, 0, 1, 1])  # group 2 has positives only
    # group 0: AUC 1 (3 impressions); group 1: AUC 0 (2 impressions) -> (3*1 + 2*0) / 5
    value, skipped = gauc(groups, scores, labels)
    assert value == pytest.approx(0.6) and skipped == 1


def test_logloss_hand_value():
    p, y = torch.tensor([0.8, 0.3]), torch.tensor([1.0, 0.0])
    assert logloss(p, y) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert math.isfinite(logloss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])))  # clipped


def test_list_ndcg_hand_values_ties_and_rows_without_positives():
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.5, 0.5, 0.1], [0.3, 0.2, 0.1]])
    labels = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    value, skipped = list_ndcg(scores, labels, k=3)
    # row 0: positives at ranks 2 and 3: (1/log2 3 + 1/log2 4) / (1 + 1/log2 3)
    row0 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    # row 1: the positive is tied with a negative: pessimistic -> rank 2 -> 1/log2 3
    row1 = 1 / math.log2(3)
    assert value == pytest.approx((row0 + row1) / 2) and skipped == 1
