"""Evaluation: ranking metrics and the full-catalogue evaluator."""

from genrec.evaluation.evaluator import evaluate, split_ranks, target_ranks
from genrec.evaluation.metrics import metrics_from_ranks, per_user

__all__ = ["evaluate", "metrics_from_ranks", "per_user", "split_ranks", "target_ranks"]
