"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

As in the reference implementations (Kang's, and the one in Meta's generative-recommenders used for
the HSTU tables' baseline rows):

    x = E[items] × √D + P[positions] → dropout
    per block:  q = LN(x);  x = q + MHA(q, x, x)       (residual onto the *normalised* input)
                x = LN(x);  x = x + FFN(x)             (ReLU, dropout)
    out = LN(x)

Scaling-study variants (PAPERS.md §3), each a config choice:

- ``residual="pre_ln"``: x = x + MHA(LN(x), LN(x), LN(x)); x = x + FFN(LN(x)) — the residual stream
  carries the raw input instead of the normalised one (the exact change of the study is not
  published; this is the standard pre-LN fix);
- ``position_bias`` / ``time_bias``: HSTU's relative attention bias (a learned scalar per relative
  position and per log time-gap bucket, shared across heads, one per layer) added to the softmax
  logits; absolute position embeddings stay.

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
from genrec.models.layers import run_blocks, run_blocks_at
from genrec.models.ops import Context, RelativeBias, softmax_attention


@dataclass
class SASRecConfig(ModelConfig):
    name: str = "sasrec"
    ffn_dim: int = 0
    """Hidden width of the point-wise feed-forward network (0 = embedding_dim, as the reference)."""
    residual: str = "original"
    """``original``: attention added to the normalised input (Kang's SASRec); ``pre_ln``: added to
    the raw residual stream, with keys and values from the normalised input too."""
    position_bias: bool = False
    """Add HSTU's learned relative-position bias to the attention logits."""
    time_bias: bool = False
    """Add HSTU's learned log time-gap bias to the attention logits (needs timestamps)."""
    num_time_buckets: int = 128
    """Largest time bucket index (as HSTU)."""
    time_bucket_divisor: float = 0.301
    """bucket = floor(ln(max(|Δt|, 1)) / divisor) (as HSTU)."""

    def derived(self) -> dict[str, int]:
        return {"ffn_dim": self.embedding_dim}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.residual not in ("original", "pre_ln"):
            raise ConfigError(f"model.residual={self.residual!r} is not one of ['original', 'pre_ln']")
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
        self.rel_bias = None
        if cfg.position_bias or cfg.time_bias:
            self.rel_bias = RelativeBias(cfg.max_seq_len, cfg.position_bias, cfg.time_bias, cfg.num_time_buckets, cfg.time_bucket_divisor)

    def forward(
        self, x: torch.Tensor, ctx: Context, buckets: torch.Tensor | None = None, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, Nq, D]; buckets [B, Nq, Nk] time buckets (time bias only) -> (x [B, Nq, D], (k, v) of past + these tokens)."""
        B, N, D = x.shape
        H, pre_ln = self.cfg.num_heads, self.cfg.residual == "pre_ln"
        q_in = self.attn_norm(x)
        kv_in = q_in if pre_ln else x  # original: keys and values from the raw stream (reference MHA(Q, x, x))
        wq, wk, wv = self.qkv.weight.split(D)
        bq, bk, bv = self.qkv.bias.split(D)
        q = F.linear(q_in, wq, bq)
        k = F.linear(kv_in, wk, bk)
        v = F.linear(kv_in, wv, bv)
        q, k, v = (t.view(B, N, H, D // H).transpose(1, 2) for t in (q, k, v))  # [B H Nq d]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # [B H Nk d]
        bias = None  # [B|1 Nq Nk]
        if self.rel_bias is not None:
            bias = (self.rel_bias.causal_block(0, k.size(2), buckets) if ctx.is_causal
                    else ctx.memo(("bias", id(self)), lambda: self.rel_bias(ctx.q_pos, ctx.k_pos, buckets)))
        mask = None if ctx.is_causal else ctx.mask
        a = softmax_attention(q, k, v, mask, bias, self.cfg.dropout, self.training).transpose(1, 2).reshape(B, N, D)
        a = F.dropout(self.proj(a), p=self.cfg.dropout, training=self.training)
        if pre_ln:
            x = x + a
            return x + self.ffn(self.ffn_norm(x)), (k, v)
        x = self.ffn_norm(q_in + a)
        return x + self.ffn(x), (k, v)

    def forward_at(self, x: torch.Tensor, ctx: Context, at: torch.Tensor, buckets: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward` of a plain causal call (no cache) read at one token per row, without
        autograd: x [B, N, D], at [B] -> the output [B, D] at tokens ``at``. Keys and values come
        from every token; the query, the attention row and the feed-forward from those B only."""
        B, N, D = x.shape
        H, pre_ln = self.cfg.num_heads, self.cfg.residual == "pre_ln"
        b = torch.arange(B, device=x.device)
        x_at = x[b, at]  # [B D]
        q_in = self.attn_norm(x_at)
        kv_in = self.attn_norm(x) if pre_ln else x
        wq, wkv = self.qkv.weight.split([D, 2 * D])
        bq, bkv = self.qkv.bias.split([D, 2 * D])
        q = F.linear(q_in, wq, bq).view(B, H, 1, D // H)
        k, v = (t.view(B, N, H, D // H).transpose(1, 2) for t in F.linear(kv_in, wkv, bkv).split(D, dim=-1))  # [B H N d]
        visible = ctx.row_mask(at)  # [B 1 N]
        bias = None if self.rel_bias is None else self.rel_bias.row(at, N, buckets)  # [B 1 N] or None
        a = self.proj(softmax_attention(q, k, v, visible, bias).reshape(B, D))
        if pre_ln:
            x = x_at + a
            return x + self.ffn(self.ffn_norm(x))
        x = self.ffn_norm(q_in + a)
        return x + self.ffn(x)


class SASRec(SequentialRecommender):
    config: SASRecConfig

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.embedding_dim, eps=1e-8)

    @property
    def uses_timestamps(self) -> bool:
        return self.config.time_bias

    def transduce(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None,
                  layer_outputs: list | None = None) -> tuple[torch.Tensor, KVCache]:
        x = self.add_positions(x, ctx.q_pos)  # [B Nq D]
        buckets = ctx.memo(("buckets", id(self)), lambda: self.time_buckets(ctx, self.blocks[0].rel_bias))
        x, new_cache = run_blocks(self.blocks, x, ctx, cache, layer_outputs, buckets=buckets)
        return self.final_norm(x), new_cache

    def transduce_at(self, x: torch.Tensor, ctx: Context, at: torch.Tensor) -> torch.Tensor:
        """The last block for the tokens ``at`` only (:meth:`SASRecBlock.forward_at`) where :meth:`reads_at`."""
        if not self.reads_at(ctx):
            return super().transduce_at(x, ctx, at)
        buckets = self.time_buckets(ctx, self.blocks[0].rel_bias)
        return self.final_norm(run_blocks_at(self.blocks, self.add_positions(x, ctx.q_pos), ctx, at, buckets=buckets))
