"""Mean and standard error (over test users) of NDCG@10 and HR@10 for finished runs.

    GENREC_SOURCE=../shared/data python benchmarks/stderr.py /tmp/bench/quality/ml-100k-hstu ...

Recomputes each user's test rank with the run's own protocol (its saved eval config), so the mean
equals metrics.json's test value; the standard error is std / sqrt(users). Also the helpers the
other benchmarks use for their ± columns: :func:`user_se` (over test users, one run) and
:func:`mean_se` (over runs, e.g. seeds).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

from genrec.checkpoint import load_model
from genrec.config import ExperimentConfig
from genrec.data.task_data import load_data
from genrec.evaluation.evaluator import split_ranks
from genrec.evaluation.metrics import per_user


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n); NaN for one value)."""
    m = sum(values) / len(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def user_means(folder: str | Path) -> tuple[dict[str, tuple[float, float]], int]:
    """Test NDCG@10 and HR@10 of a run's best/ checkpoint, each (mean, standard error) over the
    test users, and the number of those users."""
    model, _, experiment = load_model(f"{folder}/best")
    cfg = ExperimentConfig.from_dict(experiment)
    values = per_user(split_ranks(model, load_data(cfg), "test", cfg.eval), [10])
    out = {k: (values[k].mean().item(), (values[k].std() / math.sqrt(len(values[k]))).item()) for k in ("ndcg@10", "hr@10")}
    return out, len(values["ndcg@10"])


def user_se(folder: str | Path) -> dict[str, float]:
    """Standard error over test users of NDCG@10 and HR@10 (the run's own protocol)."""
    return {k: se for k, (_, se) in user_means(folder)[0].items()}


def main() -> None:
    for run in sys.argv[1:]:
        m, users = user_means(run)
        (gain, gain_se), (hit, hit_se) = m["ndcg@10"], m["hr@10"]
        print(f"{run}: users {users}, test ndcg@10 {gain:.4f} ± {gain_se:.4f}, hr@10 {hit:.4f} ± {hit_se:.4f}")


if __name__ == "__main__":
    main()
