import math

import pytest
import torch

from genrec.evaluation.metrics import metrics_from_ranks


def test_metrics_hand_computed():
    # ranks 0 (top), 3, 12 and a miss (target excluded)
    m = metrics_from_ranks(torch.tensor([0.0, 3.0, 12.0, math.inf]), [1, 10, 50])
    assert m["hr@1"] == pytest.approx(1 / 4)
    assert m["hr@10"] == pytest.approx(2 / 4)
    assert m["hr@50"] == pytest.approx(3 / 4)
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5)) / 4)
    assert m["ndcg@50"] == pytest.approx((1.0 + 1 / math.log2(5) + 1 / math.log2(14)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 13 + 0) / 4)


def test_metrics_single_user_values():
    m = metrics_from_ranks(torch.tensor([1.0]), [1, 2])
    assert m == pytest.approx({"hr@1": 0.0, "ndcg@1": 0.0, "hr@2": 1.0, "ndcg@2": 1 / math.log2(3), "mrr": 0.5})


def test_metrics_empty_raises():
    with pytest.raises(ValueError):
        metrics_from_ranks(torch.tensor([]), [10])
