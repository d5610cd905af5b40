"""Mean and standard error (over test users) of NDCG@10 and HR@10 for finished runs.

    GENREC_SOURCE=../shared/data python benchmarks/stderr.py /tmp/bench/quality/ml-100k-hstu ...

Recomputes each user's test rank with the run's own protocol (its saved eval config), so the mean
equals metrics.json's test value; the standard error is std / sqrt(users).
"""

from __future__ import annotations

import math
import sys

from genrec.config import ExperimentConfig
from genrec.data.task_data import load_data
from genrec.evaluation.evaluator import split_ranks
from genrec.evaluation.metrics import per_user
from genrec.checkpoint import load_model


def main() -> None:
    for run in sys.argv[1:]:
        model, _, experiment = load_model(f"{run}/best")
        cfg = ExperimentConfig.from_dict(experiment)
        data = load_data(cfg)
        values = per_user(split_ranks(model, data, "test", cfg.eval), [10])
        gain, hit = values["ndcg@10"], values["hr@10"]
        se = lambda x: (x.std() / math.sqrt(len(x))).item()  # noqa: E731
        print(f"{run}: users {len(gain)}, test ndcg@10 {gain.mean():.4f} ± {se(gain):.4f}, hr@10 {hit.mean():.4f} ± {se(hit):.4f}")


if __name__ == "__main__":
    main()
