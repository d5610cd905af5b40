"""Model size and training compute of a sweep point.

Training FLOPs are an estimate, 3 × forward (forward + backward), per trained target token:
2·N_ne (every non-embedding weight once) + 4·L·D·c̄ (attention scores and mixing, c̄ = mean
number of keys a token attends to) + 2·D·S (scoring S items per target, as the loss's registry
entry counts them: 1 + negatives, or the catalogue; ``genrec.training.losses.LOSSES``).
"""

from __future__ import annotations

import numpy as np

from genrec.config import ExperimentConfig
from genrec.training.losses import LOSSES


def count_parameters(model) -> dict[str, int]:
    """Total and non-embedding parameters (item table and absolute position table excluded)."""
    total = sum(p.numel() for p in model.parameters())
    return {"params": total, "params_nonembedding": total - model.embedding_parameters()}


def step_flops(cfg: ExperimentConfig, params_nonembedding: int, tokens: float, pairs: float, num_items: int) -> float:
    """Model FLOPs of training on ``tokens`` targets whose sequences hold ``pairs`` attended
    (query, key) pairs (Σ n(n+1)/2 = tokens · c̄): 3 × (2·N_ne·T + 4·L·D·pairs + 2·D·S·T).
    ``num_items``: the catalogue (the data's; the config never holds it), for full softmax."""
    t, m = cfg.train, cfg.model
    scores = LOSSES[t.loss].pairs(t, num_items, tokens)  # S·T query-item scores
    return 3.0 * (2 * params_nonembedding * tokens + 4 * m.num_layers * m.embedding_dim * pairs + 2 * m.embedding_dim * scores)


def training_flops(cfg: ExperimentConfig, params_nonembedding: int, batches, epochs: int, num_items: int) -> float:
    """Estimated training FLOPs (module docstring) for ``epochs`` over ``batches``' windows."""
    n = (batches.ends - batches.starts - 1).astype(np.float64)  # inputs per window
    pairs = float((n * (n + 1) / 2).sum())  # causal: a token sees itself and all before
    return step_flops(cfg, params_nonembedding, float(n.sum()), pairs, num_items) * epochs
