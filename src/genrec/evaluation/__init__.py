"""Evaluation: ranking metrics and the full-catalogue evaluator."""

from genrec.evaluation.evaluator import evaluate, target_ranks
from genrec.evaluation.metrics import metrics_from_ranks

__all__ = ["evaluate", "metrics_from_ranks", "target_ranks"]
