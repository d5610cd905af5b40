"""Building blocks shared by the softmax-attention backbones (GPT, Llama): multi-head causal
self-attention over a :class:`~genrec.models.ops.Context` with a KV cache, rotary positions and
the two feed-forward networks. The attention kernels themselves live in :mod:`genrec.models.ops`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models.ops import Context, softmax_attention


def rotary(x: torch.Tensor, pos: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (RoFormer / Llama, rotate-half layout).
    x [B, H, N, d] (d even), pos [B|1, N] token positions -> x rotated by angle pos · θ^(-2i/d)."""
    d = x.size(-1)
    inv_freq = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # [d/2]
    ang = pos.to(torch.float32).unsqueeze(-1) * inv_freq  # [B|1 N d/2]
    cos, sin = ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)  # [B|1 1 N d/2]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head softmax self-attention; queries attend to cached keys + their own under ``ctx``.
    With ``rotary_theta`` set, q and k are rotated by their token positions (cached keys are
    stored rotated, so a cache stays valid)."""

    def __init__(self, dim: int, num_heads: int, bias: bool, dropout: float, rotary_theta: float | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding_dim={dim} is not divisible by num_heads={num_heads}")
        if rotary_theta is not None and (dim // num_heads) % 2:
            raise ValueError(f"rotary positions need an even head width, got {dim // num_heads}")
        self.num_heads, self.dropout, self.rotary_theta = num_heads, dropout, rotary_theta
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(
        self, x: torch.Tensor, ctx: Context, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, Nq, D] (already normalised) -> (out [B, Nq, D], (k, v) of past + these tokens)."""
        B, N, D = x.shape
        H = self.num_heads
        q, k, v = (t.view(B, N, H, D // H).transpose(1, 2) for t in self.qkv(x).split(D, dim=-1))  # [B H Nq d]
        if self.rotary_theta is not None:
            q, k = rotary(q, ctx.q_pos, self.rotary_theta), rotary(k, ctx.q_pos, self.rotary_theta)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # [B H Nk d]
        mask = None if ctx.is_causal else ctx.mask
        a = softmax_attention(q, k, v, mask, None, self.dropout, self.training)  # [B H Nq d]
        return self.proj(a.transpose(1, 2).reshape(B, N, D)), (k, v)

    def forward_at(self, x: torch.Tensor, ctx: Context, at: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` of a plain causal call (no cache) for the queries at tokens ``at`` [B]
        only: x [B, N, D] (normalised) -> [B, D]. Keys and values come from every token."""
        B, N, D = x.shape
        H = self.num_heads
        wq, wkv = self.qkv.weight.split([D, 2 * D])
        bq, bkv = (None, None) if self.qkv.bias is None else self.qkv.bias.split([D, 2 * D])
        q = F.linear(x[torch.arange(B, device=x.device), at], wq, bq).view(B, H, 1, D // H)
        k, v = (t.view(B, N, H, D // H).transpose(1, 2) for t in F.linear(x, wkv, bkv).split(D, dim=-1))  # [B H N d]
        if self.rotary_theta is not None:
            q, k = rotary(q, at.unsqueeze(1), self.rotary_theta), rotary(k, ctx.q_pos, self.rotary_theta)
        visible = ctx.row_mask(at)  # [B 1 N]
        return self.proj(softmax_attention(q, k, v, visible).reshape(B, D))


class GELUMLP(nn.Module):
    """GPT feed-forward: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc, self.out = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(x)))


class SwiGLU(nn.Module):
    """Llama feed-forward: W_down (SiLU(W_gate x) ⊙ W_up x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class PreNormBlock(nn.Module):
    """x <- x + Dropout(Attn(Norm(x)));  x <- x + Dropout(MLP(Norm(x)))  (GPT-2 / Llama layout)."""

    def __init__(self, attn: SelfAttention, mlp: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module, dropout: float):
        super().__init__()
        self.attn, self.mlp, self.attn_norm, self.mlp_norm, self.dropout = attn, mlp, attn_norm, mlp_norm, dropout

    def forward(
        self, x: torch.Tensor, ctx: Context, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.attn_norm(x), ctx, past)
        x = x + F.dropout(a, p=self.dropout, training=self.training)
        return x + F.dropout(self.mlp(self.mlp_norm(x)), p=self.dropout, training=self.training), kv

    def forward_at(self, x: torch.Tensor, ctx: Context, at: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` (eval mode, plain causal, no cache) read at tokens ``at`` [B] -> [B, D]."""
        x_at = x[torch.arange(x.size(0), device=x.device), at] + self.attn.forward_at(self.attn_norm(x), ctx, at)
        return x_at + self.mlp(self.mlp_norm(x_at))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, ctx: Context, cache: list | None, layer_outputs: list | None = None,
               **extra) -> tuple[torch.Tensor, list]:
    """Apply blocks in order, each with its slice of the KV cache (and ``extra`` keyword inputs,
    e.g. the time buckets shared by every layer); return (x, new cache). ``layer_outputs``: when
    given, each block's output is appended to it."""
    new_cache = []
    for i, block in enumerate(blocks):
        x, kv = block(x, ctx, past=None if cache is None else cache[i], **extra)
        new_cache.append(kv)
        if layer_outputs is not None:
            layer_outputs.append(x)
    return x, new_cache


def run_blocks_at(blocks: nn.ModuleList, x: torch.Tensor, ctx: Context, at: torch.Tensor, **extra) -> torch.Tensor:
    """:func:`run_blocks` without a cache, read at tokens ``at`` [B] -> [B, D]: every block but
    the last at every token, the last (its ``forward_at``) for the tokens ``at`` only. For
    inference: eval mode, no autograd, a plain causal context (see ``SequentialRecommender.transduce_at``)."""
    x, _ = run_blocks(blocks[:-1], x, ctx, None, **extra)
    return blocks[-1].forward_at(x, ctx, at=at, **extra)
