import math

import numpy as np
import pytest
import torch

from genrec.config import EvalConfig
from genrec.data.batches import EvalBatch
from genrec.data.prepare import SequenceData
from genrec.evaluation.evaluator import evaluate, target_ranks
from genrec.models.base import ModelConfig, SequentialRecommender


class FixedScores(SequentialRecommender):
    """Scores fixed by hand: item i scores ``item_scores[i]`` for every user (dot products with a
    1-d user vector of 1.0), so ranks can be worked out on paper."""

    def __init__(self, item_scores: list[float]):
        super().__init__(ModelConfig(name="fixed", num_items=len(item_scores), embedding_dim=1, l2_normalize=False))
        with torch.no_grad():
            self.item_embedding.weight[1:, 0] = torch.tensor(item_scores)

    def encode(self, items, timestamps=None, query_timestamps=None, segments=None, behaviours=None):
        return torch.ones(*items.shape, 1)


def _batch(history, target, exclude):
    return EvalBatch(torch.tensor([0]), torch.tensor([history]), None, None, torch.tensor([target]), torch.tensor([exclude]))


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_target_ranks_hand_computed(chunk):
    # items 1..6 score 0.9 0.5 0.7 0.5 0.1 0.8
    model = FixedScores([0.9, 0.5, 0.7, 0.5, 0.1, 0.8])
    # target 3 (0.7): items 1 (0.9) and 6 (0.8) ahead -> rank 2; excluding item 1 -> rank 1
    assert target_ranks(model, _batch([5], 3, [0]), chunk).item() == 2
    assert target_ranks(model, _batch([1], 3, [1]), chunk).item() == 1
    # target 2 (0.5) ties with item 4: ties count against the model -> 1, 6, 3, 4 ahead = 4
    assert target_ranks(model, _batch([5], 2, [5]), chunk).item() == 4
    # target inside the excluded history can never be ranked: a miss
    assert math.isinf(target_ranks(model, _batch([2], 2, [2]), chunk).item())


class HistoryScores(SequentialRecommender):
    """Small-integer item vectors (dot products exact in float32, many ties); a user's vector is
    its last history item's, so every row ranks differently."""

    def __init__(self, num_items: int, seed: int):
        super().__init__(ModelConfig(name="history", num_items=num_items, embedding_dim=3, l2_normalize=False))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.item_embedding.weight[1:] = torch.randint(-2, 3, (num_items, 3), generator=g).float()

    def encode(self, items, timestamps=None, query_timestamps=None, segments=None, behaviours=None):
        return self.item_embedding(items)


def _brute_force_ranks(model, batch):
    """Every score at once, every rule written out per row."""
    user = model.user_vectors(batch.items)
    scores = model.score_items(user, 1, model.config.num_items + 1).float()
    ranks = []
    for b in range(len(batch.targets)):
        row = torch.nan_to_num(scores[b], nan=float("-inf"), posinf=float("-inf"))  # non-finite: never ahead of a finite target
        t = int(batch.targets[b])
        tgt = scores[b, t - 1] if torch.isfinite(scores[b, t - 1]) else torch.tensor(float("-inf"))
        if t in batch.exclude[b].tolist():
            ranks.append(math.inf)
            continue
        lo, hi = (1, model.config.num_items + 1) if batch.item_range is None else batch.item_range[b].tolist()
        ranks.append(sum(1 for j in range(lo, hi) if j != t and j not in batch.exclude[b].tolist() and row[j - 1] >= tgt))
    return torch.tensor(ranks, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_target_ranks_match_brute_force(seed, chunk):
    """Repeated and padded exclusions, a target in the excluded items, ties, non-finite item and
    target scores, and per-row item ranges (multi-domain) against a per-row count."""
    n, B = 40, 12
    model = HistoryScores(n, seed)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        model.item_embedding.weight[[3, 17]] = torch.tensor([[float("inf"), 0.0, 0.0], [float("nan"), 1.0, 1.0]])
    history = torch.randint(1, n + 1, (B, 5), generator=g)
    exclude = torch.cat([history, torch.zeros(B, 2, dtype=torch.long)], 1)  # padding, and repeats where history repeats
    exclude[0, 1] = exclude[0, 0]
    targets = torch.randint(1, n + 1, (B,), generator=g)
    targets[1], targets[2] = exclude[1, 2], 17  # an excluded target; a NaN-scored one
    batch = EvalBatch(torch.arange(B), history, None, None, targets, exclude)
    torch.testing.assert_close(target_ranks(model, batch, chunk), _brute_force_ranks(model, batch))
    ranges = torch.tensor([[1, 21] if t <= 20 else [21, n + 1] for t in targets.tolist()])
    ranged = EvalBatch(torch.arange(B), history, None, None, targets, exclude, item_range=ranges)
    counts: dict = {}
    torch.testing.assert_close(target_ranks(model, ranged, chunk, counts), _brute_force_ranks(model, ranged))
    assert counts["targets"] >= 1 and counts["scores"] > 0  # target 17 at least; item 3 and 17 scores (and rows reading them)


def test_evaluate_protocol_and_exclusions():
    # user 0: items 1,2,3,4 -> valid target 3 (history 1,2), test target 4 (history 1,2,3)
    data = SequenceData(np.array([0, 4]), np.array([1, 2, 3, 4]), None, np.array(["a", "b", "c", "d", "e"], dtype=object), np.array(["u"], dtype=object), {})
    model = FixedScores([0.9, 0.8, 0.7, 0.6, 0.95])
    cfg = EvalConfig(ks=[1, 2], select_metric="ndcg@2")
    valid = evaluate(model, data, "valid", cfg)
    # valid target 3 (0.7); 1 and 2 excluded; item 5 (0.95) ahead -> rank 1
    assert valid["metrics"]["hr@1"] == 0.0 and valid["metrics"]["hr@2"] == 1.0
    test = evaluate(model, data, "test", EvalConfig(ks=[1, 2], select_metric="mrr", exclude_history="none"))
    # nothing excluded: target 4 (0.6) has 5, 1, 2, 3 ahead -> rank 4
    assert test["metrics"]["mrr"] == pytest.approx(1 / 5)
    assert "full catalogue (5 items)" in test["protocol"]["ranking"]
    assert test["protocol"]["users"] == 1
