"""Attention kernels and relative biases, each a pure-PyTorch reference.

Fast variants (jagged / packed kernels, compiled paths) go here beside these references, behind
the same signatures, and are tested against them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def time_buckets(query_ts: torch.Tensor, ts: torch.Tensor, num_buckets: int, divisor: float) -> torch.Tensor:
    """HSTU log time buckets. query_ts [B, N] (time of the item after position i), ts [B, N]
    -> [B, N, N] long: floor(ln(max(|q_i - t_j|, 1)) / divisor), clamped to [0, num_buckets]."""
    delta = (query_ts.unsqueeze(2) - ts.unsqueeze(1)).abs().clamp(min=1).double()  # [B N N]
    return (delta.log() / divisor).floor().clamp(0, num_buckets).long()


class RelativeBias(nn.Module):
    """Learned scalar bias per relative position (2L-1 values) and per log time bucket
    (num_buckets+1 values), shared across heads, as in the HSTU reference."""

    def __init__(self, max_seq_len: int, position: bool, time: bool, num_buckets: int, divisor: float):
        super().__init__()
        self.max_seq_len, self.num_buckets, self.divisor = max_seq_len, num_buckets, divisor
        self.pos_w = nn.Parameter(torch.empty(2 * max_seq_len - 1).normal_(0, 0.02)) if position else None
        self.ts_w = nn.Parameter(torch.empty(num_buckets + 1).normal_(0, 0.02)) if time else None

    def buckets(self, ts: torch.Tensor | None, query_ts: torch.Tensor | None) -> torch.Tensor | None:
        """Time-bucket indices [B, N, N] (compute once per forward, share across layers), or None."""
        if self.ts_w is None or ts is None or query_ts is None:
            return None
        return time_buckets(query_ts, ts, self.num_buckets, self.divisor)

    def forward(self, N: int, buckets: torch.Tensor | None) -> torch.Tensor | None:
        """-> bias [B or 1, N, N] with bias[i, j] = pos_w[j - i] + ts_w[buckets[i, j]], or None."""
        bias = None
        if self.pos_w is not None:
            idx = torch.arange(N, device=self.pos_w.device)
            offsets = idx.unsqueeze(0) - idx.unsqueeze(1) + self.max_seq_len - 1  # [N N] j - i
            bias = self.pos_w[offsets].unsqueeze(0)
        if self.ts_w is not None and buckets is not None:
            tb = self.ts_w[buckets]  # [B N N]
            bias = tb if bias is None else bias + tb
        return bias


def causal_mask(N: int, device: torch.device) -> torch.Tensor:
    """[N, N] bool, True where query i may attend to key j (j <= i)."""
    return torch.ones(N, N, dtype=torch.bool, device=device).tril()


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    norm: float,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Pointwise SiLU attention: A = SiLU(q k^T + bias) / norm, causal (incl. diagonal); out = A v.
    No softmax and no 1/sqrt(d). q, k [B, H, N, dqk], v [B, H, N, dv], bias [B|1, N, N] -> [B, H, N, dv].
    ``norm`` is a constant (the model's max length), so results do not depend on batch padding."""
    N = q.size(2)
    scores = q @ k.transpose(-1, -2)  # [B H N N]
    if bias is not None:
        scores = scores + bias.unsqueeze(1).to(scores.dtype)
    attn = F.silu(scores) / norm
    attn = attn.masked_fill(~causal_mask(N, q.device), 0.0)
    if dropout > 0.0 and training:
        attn = F.dropout(attn, p=dropout)
    return attn @ v


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """Causal scaled dot-product softmax attention. q, k, v [B, H, N, d] -> [B, H, N, d]."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout if training else 0.0)


def softmax_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain-matmul reference of :func:`softmax_attention` (no dropout), for tests."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~causal_mask(q.size(2), q.device), float("-inf"))
    return scores.softmax(-1) @ v
