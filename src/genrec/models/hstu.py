"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al., ICML 2024).

Follows the layer of the reference code used for the published tables (PAPERS.md §1.1):

    x̂ = LayerNorm(x)                       no affine, eps 1e-6 (pre-norm)
    U, V, Q, K = SiLU(x̂ W_uvqk)            one fused projection, no bias
    A = SiLU(Q Kᵀ + rab) / L  ⊙ causal     no softmax, no 1/√d; L = max_seq_len (constant)
    Y = U ⊙ LayerNorm(A V)                  no affine, over all heads' values
    x ← x + W_o Dropout(Y)                  W_o with bias; no separate FFN

rab = learned scalar per relative position + learned scalar per log-bucketed time gap
Δ(i, j) = t[i+1] − t[j] (query i uses the next item's time; at the last history position that is
the request time), shared across heads, one bias module per layer.

``model.attention=softmax`` is the paper's ablation: A = softmax(Q Kᵀ / √d_qk + rab) over the
visible keys in place of the pointwise SiLU, everything else unchanged.

Deviations from the reference, on purpose: the attention normaliser is ``max_seq_len`` rather than
the reference's padded length (``max_seq_len + 11`` there) — a constant either way, so outputs do not
depend on how a batch is padded; sequences are right-padded dense tensors rather than jagged ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import KVCache, ModelConfig, SequentialRecommender
from genrec.models.layers import run_blocks, run_blocks_at
from genrec.models.ops import Context, RelativeBias, hstu_attention, hstu_attention_inference, softmax_attention


@dataclass
class HSTUConfig(ModelConfig):
    name: str = "hstu"
    attention_dim: int = 0
    """Per-head width d_qk of Q and K (0 = embedding_dim / num_heads)."""
    value_dim: int = 0
    """Per-head width d_v of U and V (0 = embedding_dim / num_heads)."""
    attn_dropout: float = 0.0
    """Dropout on the attention weights."""
    position_bias: bool = True
    """Learned relative-position bias."""
    time_bias: bool = True
    """Learned log-bucketed time-gap bias; needs timestamps (turned off, and said so, when the data has none)."""
    num_time_buckets: int = 128
    """Largest time bucket index; gaps beyond it share the last bucket."""
    time_bucket_divisor: float = 0.301
    """bucket = floor(ln(max(|Δt|, 1)) / divisor), Δt in seconds."""
    attention: str = "pointwise"
    """``pointwise``: SiLU(Q Kᵀ + rab) / max_seq_len (HSTU); ``softmax``: softmax(Q Kᵀ / √d_qk + rab)
    over the visible keys (the paper's softmax ablation; U-gating, norms and biases unchanged)."""

    def derived(self) -> dict[str, int]:
        return {"attention_dim": self.embedding_dim // self.num_heads, "value_dim": self.embedding_dim // self.num_heads}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention not in ("pointwise", "softmax"):
            raise ConfigError(f"model.attention={self.attention!r}: expected 'pointwise' or 'softmax'")
        if min(self.attention_dim, self.value_dim) < 1:
            raise ConfigError(f"model.attention_dim/value_dim must be >= 1 (embedding_dim={self.embedding_dim}, num_heads={self.num_heads})")


class HSTULayer(nn.Module):
    def __init__(self, cfg: HSTUConfig):
        super().__init__()
        self.cfg = cfg
        H, dqk, dv, D = cfg.num_heads, cfg.attention_dim, cfg.value_dim, cfg.embedding_dim
        self.uvqk = nn.Linear(D, H * (2 * dv + 2 * dqk), bias=False)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        self.out = nn.Linear(H * dv, D)
        self.rel_bias = RelativeBias(
            cfg.max_seq_len, cfg.position_bias, cfg.time_bias, cfg.num_time_buckets, cfg.time_bucket_divisor
        )

    def forward(
        self, x: torch.Tensor, ctx: Context, buckets: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, Nq, D]; buckets [B, Nq, Nk] time-bucket indices (None: no time bias); past: cached
        (k, v) of earlier tokens -> (x [B, Nq, D], (k, v) of past + these tokens)."""
        cfg = self.cfg
        B, N, D = x.shape
        H, dqk, dv = cfg.num_heads, cfg.attention_dim, cfg.value_dim
        # without autograd, padded causal rows: the per-token work (norms, projections, gating)
        # runs on the real tokens only, [T, ...]; attention still runs on the padded [B, N] layout
        rows = ctx.token_rows() if past is None and not torch.is_grad_enabled() else None
        xt = x if rows is None else x.reshape(B * N, D).index_select(0, rows[0])  # [B N D] or [T D]
        h = F.layer_norm(xt, (D,), eps=1e-6)
        uvqk = F.silu(self.uvqk(h))
        u, vqk = uvqk[..., : H * dv], uvqk[..., H * dv :]
        if rows is not None:  # back to [B N]: a padding slot gets a copy of its row's last token (never attended to)
            vqk = vqk.index_select(0, rows[1]).view(B, N, -1)
        v, q, k = vqk.split([H * dv, H * dqk, H * dqk], dim=-1)
        q = q.view(B, N, H, dqk).transpose(1, 2)  # [B H Nq dqk]
        k = k.view(B, N, H, dqk).transpose(1, 2)
        v = v.view(B, N, H, dv).transpose(1, 2)  # [B H Nq dv]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # [B H Nk d]
        if cfg.attention == "softmax":  # every query sees >= 1 key: itself (causal, packed) or its history
            bias = ctx.memo(("bias", id(self)), lambda: self.rel_bias(ctx.q_pos, ctx.k_pos, buckets))  # [B|1 Nq Nk] or None
            a = softmax_attention(q, k, v, None if ctx.is_causal and bias is None else ctx.mask, bias, cfg.attn_dropout, self.training)
        else:
            if ctx.is_causal:  # rows s..e-1 on demand: the blocked kernel never builds the N x N bias
                bias = partial(self.rel_bias.causal_block, buckets=buckets)
                mask = None
            else:
                bias = ctx.memo(("bias", id(self)), lambda: self.rel_bias(ctx.q_pos, ctx.k_pos, buckets))  # [B|1 Nq Nk] or None
                mask = ctx.mask
            a = hstu_attention(q, k, v, bias, float(cfg.max_seq_len), mask, cfg.attn_dropout, self.training)
        a = a.transpose(1, 2).reshape(B, N, H * dv)
        if rows is not None:
            a = a.reshape(B * N, H * dv).index_select(0, rows[0])  # [T H*dv]
        y = u * F.layer_norm(a, (H * dv,), eps=1e-6)
        out = xt + self.out(F.dropout(y, p=cfg.dropout, training=self.training))
        if rows is not None:
            out = out.index_select(0, rows[1]).view(B, N, D)  # padding slots: unspecified (a copy)
        return out, (k, v)

    def forward_at(self, x: torch.Tensor, ctx: Context, at: torch.Tensor, buckets: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward` of a plain causal call (no cache) read at one token per row, without
        autograd: x [B, N, D], at [B] -> the output [B, D] at tokens ``at``. Keys and values come
        from every real token; U, Q, the attention row, the norm and W_o from those B tokens only."""
        cfg = self.cfg
        B, N, D = x.shape
        H, dqk, dv = cfg.num_heads, cfg.attention_dim, cfg.value_dim
        rows = ctx.token_rows()
        w = self.uvqk.weight  # rows: U, V, Q, K
        xt = x if rows is None else x.reshape(B * N, D).index_select(0, rows[0])  # [B N D] or [T D]
        vqk = F.silu(F.linear(F.layer_norm(xt, (D,), eps=1e-6), w[H * dv :]))  # V, Q, K of every token (one view of W; Q unused)
        if rows is not None:  # back to [B N]: padding slots copy their row's last token (masked below)
            vqk = vqk.index_select(0, rows[1]).view(B, N, -1)
        v, _, k = vqk.split([H * dv, H * dqk, H * dqk], dim=-1)
        k = k.view(B, N, H, dqk).transpose(1, 2)  # [B H N dqk]
        v = v.view(B, N, H, dv).transpose(1, 2)  # [B H N dv]
        x_at = x[torch.arange(B, device=x.device), at]  # [B D]
        uvqk = F.silu(F.linear(F.layer_norm(x_at, (D,), eps=1e-6), w))  # [B H(2dv+2dqk)]
        u, q = uvqk[:, : H * dv], uvqk[:, 2 * H * dv : 2 * H * dv + H * dqk].view(B, H, 1, dqk)
        visible = ctx.row_mask(at)  # [B 1 N]
        bias = self.rel_bias.row(at, N, buckets)  # [B 1 N] or None
        if cfg.attention == "softmax":
            a = softmax_attention(q, k, v, visible, bias)
        else:
            a = hstu_attention_inference(q, k, v, bias, float(cfg.max_seq_len), visible)  # [B H 1 dv]
        y = u * F.layer_norm(a.reshape(B, H * dv), (H * dv,), eps=1e-6)
        return x_at + self.out(y)


class HSTU(SequentialRecommender):
    """HSTU sequential retriever: item embedding × √D + learned absolute position → dropout →
    HSTU layers → (L2-normalised) output vector per position."""

    config: HSTUConfig

    def __init__(self, config: HSTUConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(HSTULayer(config) for _ in range(config.num_layers))

    @property
    def uses_timestamps(self) -> bool:
        return self.config.time_bias

    def transduce(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None,
                  layer_outputs: list | None = None) -> tuple[torch.Tensor, KVCache]:
        x = self.add_positions(x, ctx.q_pos)  # [B Nq D]
        buckets = ctx.memo(("buckets", id(self)), lambda: self.time_buckets(ctx, self.layers[0].rel_bias))
        return run_blocks(self.layers, x, ctx, cache, layer_outputs, buckets=buckets)

    def transduce_at(self, x: torch.Tensor, ctx: Context, at: torch.Tensor) -> torch.Tensor:
        """The last layer for the tokens ``at`` only (:meth:`HSTULayer.forward_at`) where :meth:`reads_at`."""
        if not self.reads_at(ctx):
            return super().transduce_at(x, ctx, at)
        buckets = self.time_buckets(ctx, self.layers[0].rel_bias)
        return run_blocks_at(self.layers, self.add_positions(x, ctx.q_pos), ctx, at, buckets=buckets)
