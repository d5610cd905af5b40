"""Why the unified model retrieved badly (issue: UniGRF): what an action token carries.

    GENREC_SOURCE=../shared/data python benchmarks/unified_diagnosis.py --variants feedback item_copy \\
        --set train.epochs=8 task.ranking_weight=0             # retrieval loss only, per-epoch curve
    GENREC_SOURCE=../shared/data python benchmarks/unified_diagnosis.py --variants scale:1 scale:3 scale:sqrt \\
        --set train.epochs=20                                   # the feedback scale, on validation
    GENREC_SOURCE=../shared/data python benchmarks/unified_diagnosis.py --ranking --variants scale:1 scale:3 scale:sqrt feedback \\
        --set train.epochs=20                                   # the same for the separate ranker

Each variant trains ``configs/ml-100k/unified-hstu-like.yaml`` (or ``ranking-hstu.yaml`` with
``--ranking``) without the enhancer and with constant loss weights, replacing how the action token
is embedded (this script patches ``InterleavedRanker.tokens``; only ``feedback`` and ``scale:sqrt``
are shipped designs, ``task.action_token=feedback`` / the default):

- ``feedback``: Linear(feedback) with PyTorch's default init (genrec's first design);
- ``feedback_item_scale``: the same, rescaled to the item tokens' mean norm;
- ``item_copy``: the item embedding alone (no feedback);
- ``item_plus_0.1_feedback``: item embedding + 0.1 x the first design's feedback map;
- ``scale:X``: item embedding + X x a feedback map initialised like the item table (X = 1, 3 or
  ``sqrt`` = sqrt(D), the shipped default).

Prints, per variant, validation NDCG@10 (and AUC) of every epoch and of the selected epoch; the
test split is not read for anything but the runs' own metrics.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile

import torch

from genrec.config import load_config
from genrec.experiments.run import train
from genrec.models import generative

NO_MODULES = ["task.weighter=constant", "task.hard_negatives=0", "task.potential_positive_alpha=0"]


def tokens_for(variant: str):
    """A replacement for InterleavedRanker.tokens, and the task.action_token its init needs."""

    def tokens(self, items, labels):
        B, n = items.shape
        it = self.backbone.embed_items(items)  # [B n D], x sqrt(D)
        act = self.action_proj(labels.to(it.dtype))  # [B n D]
        if variant == "feedback_item_scale":
            act = act * (it.detach().norm(dim=-1, keepdim=True).mean() / act.detach().norm(dim=-1, keepdim=True).mean().clamp(min=1e-6))
        elif variant == "item_copy":
            act = it
        elif variant == "item_plus_0.1_feedback":
            act = it + 0.1 * act
        elif variant.startswith("scale:"):
            x = variant.split(":")[1]
            act = it + act * (math.sqrt(it.size(-1)) if x == "sqrt" else float(x))
        return torch.stack([it, act], dim=2).reshape(B, 2 * n, -1)

    init = "item_and_feedback" if variant.startswith("scale:") else "feedback"
    return (None if variant == "feedback" else tokens), init


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--ranking", action="store_true", help="the separate ranker (ranking-hstu.yaml) instead")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every variant")
    args = p.parse_args()
    config = "configs/ml-100k/ranking-hstu.yaml" if args.ranking else "configs/ml-100k/unified-hstu-like.yaml"
    shipped = generative.InterleavedRanker.tokens
    for variant in args.variants:
        tokens, init = tokens_for(variant)
        generative.InterleavedRanker.tokens = tokens or shipped
        extra = [] if args.ranking else NO_MODULES
        cfg = load_config(config, [*extra, f"task.action_token={init}", "train.patience=0", *args.set])
        with tempfile.TemporaryDirectory() as tmp:
            result = train(cfg, tmp)
            log = [json.loads(line) for line in open(f"{tmp}/log.jsonl")]
        curve = [round(r["valid"].get("ndcg@10", float("nan")), 4) for r in log]
        valid = result["valid"]
        print(json.dumps({"variant": variant, "config": config, "overrides": args.set, "valid_ndcg@10_by_epoch": curve,
                          "selected_valid": {k: valid[k] for k in ("ndcg@10", "auc") if k in valid}}), flush=True)
    generative.InterleavedRanker.tokens = shipped


if __name__ == "__main__":
    main()
