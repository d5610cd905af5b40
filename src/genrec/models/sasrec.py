"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

As in the reference implementations (Kang's, and the one in Meta's generative-recommenders used for
the HSTU tables' baseline rows):

    x = E[items] × √D + P[positions] → dropout
    per block:  q = LN(x);  x = q + MHA(q, x, x)       (residual onto the *normalised* input)
                x = LN(x);  x = x + FFN(x)             (ReLU, dropout)
    out = LN(x)

Deviations: right-padded sequences (positions count from the first item, as in the HSTU
reference's SASRec); the user/item vectors are L2-normalised when ``l2_normalize`` is on, which the
sampled-softmax loss with temperature expects. Causal softmax attention runs through
``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import KVCache, ModelConfig, SequentialRecommender
from genrec.models.ops import Context, softmax_attention


@dataclass
class SASRecConfig(ModelConfig):
    name: str = "sasrec"
    ffn_dim: int = 0
    """Hidden width of the point-wise feed-forward network (0 = embedding_dim, as the reference)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.ffn_dim = self.ffn_dim or self.embedding_dim
        if self.embedding_dim % self.num_heads:
            raise ConfigError(f"model.embedding_dim={self.embedding_dim} is not divisible by num_heads={self.num_heads}")


class SASRecBlock(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        D = cfg.embedding_dim
        self.cfg = cfg
        self.attn_norm = nn.LayerNorm(D, eps=1e-8)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.ffn_norm = nn.LayerNorm(D, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(D, cfg.ffn_dim), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ffn_dim, D), nn.Dropout(cfg.dropout)
        )

    def forward(
        self, x: torch.Tensor, ctx: Context, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, Nq, D] -> (x [B, Nq, D], (k, v) of past + these tokens)."""
        B, N, D = x.shape
        H = self.cfg.num_heads
        q_in = self.attn_norm(x)
        wq, wk, wv = self.qkv.weight.split(D)
        bq, bk, bv = self.qkv.bias.split(D)
        q = F.linear(q_in, wq, bq)  # queries from the normalised stream,
        k = F.linear(x, wk, bk)  # keys and values from the raw stream (reference MHA(Q, x, x))
        v = F.linear(x, wv, bv)
        q, k, v = (t.view(B, N, H, D // H).transpose(1, 2) for t in (q, k, v))  # [B H Nq d]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # [B H Nk d]
        mask = None if ctx.is_causal else ctx.mask
        a = softmax_attention(q, k, v, mask, None, self.cfg.dropout, self.training).transpose(1, 2).reshape(B, N, D)
        x = q_in + F.dropout(self.proj(a), p=self.cfg.dropout, training=self.training)
        x = self.ffn_norm(x)
        return x + self.ffn(x), (k, v)


class SASRec(SequentialRecommender):
    config: SASRecConfig

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.embedding_dim, eps=1e-8)

    def transduce(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        x = self.add_positions(x, ctx.q_pos)  # [B Nq D]
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, ctx, None if cache is None else cache[i])
            new_cache.append(kv)
        return self.final_norm(x), new_cache
