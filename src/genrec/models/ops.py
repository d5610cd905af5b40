"""Attention kernels, relative biases and the attention context, each a pure-PyTorch reference.

Fast variants (jagged / packed kernels, compiled paths) go here beside these references, behind
the same signatures, and are tested against them.

Every backbone layer attends under one :class:`Context`: a boolean mask over (queries, keys), the
token positions of queries and keys (for absolute and relative positions) and, for a time bias, the
times. Keys are the cached tokens of an earlier call (if any) followed by the new tokens, which is
how M-FALCON scores candidates against a history encoded once.

(Over 350 lines on purpose: the references, the context they share and the kernels that must match
them are read and tested together.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def time_buckets(query_ts: torch.Tensor, ts: torch.Tensor, num_buckets: int, divisor: float) -> torch.Tensor:
    """HSTU log time buckets. query_ts [B, N] (time of the item after position i), ts [B, N]
    -> [B, N, N] long: floor(ln(max(|q_i - t_j|, 1)) / divisor), clamped to [0, num_buckets]."""
    delta = (query_ts.unsqueeze(2) - ts.unsqueeze(1)).abs().clamp(min=1).double()  # [B N N]
    return (delta.log() / divisor).floor().clamp(0, num_buckets).long()


@dataclass
class Context:
    """What attention needs for one forward call over Nq new tokens and Nk keys (cache + new)."""

    mask: torch.Tensor  # [B|1, Nq, Nk] bool, True where query i may attend to key j
    q_pos: torch.Tensor  # [B|1, Nq] token positions of the queries
    k_pos: torch.Tensor  # [B|1, Nk] token positions of the keys
    q_time: torch.Tensor | None = None  # [B, Nq] the "next" time of each query (time bias)
    k_time: torch.Tensor | None = None  # [B, Nk] the time of each key
    is_causal: bool = False  # mask is plain causal self-attention (lets kernels take a fast path)
    valid: torch.Tensor | None = None  # [B, Nq] causal, right-padded rows: the real tokens (None: all are)
    """Layers may skip the per-token work of padding tokens where no gradient is taken (see
    :meth:`token_rows`): the outputs at padding positions are then unspecified (no caller reads them)."""
    reuse: bool = False
    """The caller runs several forward calls under this one context: :meth:`memo` then keeps what
    it makes. Off by default: a kept bias lives as long as the context (every layer's, for a whole
    forward call), which costs peak memory for nothing when the context serves one call."""
    _rows: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def memo(self, key, make):
        """For a ``reuse`` context without autograd, ``make()`` once per key (e.g. a layer's
        attention bias, the time buckets), so the calls that share it (the enhancer's pool items,
        all with the same positions, masks and times) share them; otherwise ``make()`` each call."""
        if not self.reuse or torch.is_grad_enabled():
            return make()
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def row_mask(self, at: torch.Tensor) -> torch.Tensor:
        """For plain causal self-attention read at one query per row, at tokens ``at`` [B]: the
        keys that query sees, [B, 1, Nk] bool (keys 0..at; right padding comes later)."""
        return (self.k_pos <= at.unsqueeze(1)).unsqueeze(1)

    def token_rows(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For ``valid`` right-padded rows: (real [T], source [B*Nq]) flat indices into the
        [B*Nq] token slots: the real tokens, row-major, and for every slot the position among
        the T real tokens of itself or, for a padding slot, of its row's last real token (so a
        padded tensor is rebuilt by one gather, with finite values everywhere). None when there
        is no padding, a row is empty or a row is not right-padded (the caller stays dense)."""
        if self.valid is None or torch.compiler.is_compiling():  # (its host reads would break the graph)
            return None
        if self._rows is None:
            B, N = self.valid.shape
            lengths = self.valid.sum(1)  # [B]
            cols = torch.arange(N, device=self.valid.device)
            prefix = bool(torch.equal(self.valid, cols.unsqueeze(0) < lengths.unsqueeze(1)))
            if not prefix or int(lengths.min()) == 0 or int(lengths.sum()) == B * N:
                self._rows = ()
            else:
                real = torch.nonzero(self.valid.reshape(-1)).squeeze(1)  # [T]
                first = torch.cumsum(lengths, 0) - lengths  # [B] each row's first real token among the T
                source = first.unsqueeze(1) + torch.minimum(cols.unsqueeze(0), (lengths - 1).unsqueeze(1))  # [B N]
                self._rows = (real, source.reshape(-1))
        return self._rows or None

    @staticmethod
    def causal(N: int, device: torch.device, q_time: torch.Tensor | None = None, k_time: torch.Tensor | None = None,
               valid: torch.Tensor | None = None) -> "Context":
        """Plain causal self-attention over N right-padded tokens (padding comes after every real
        token; ``valid`` [B, N] marks the real ones, when known)."""
        pos = torch.arange(N, device=device).unsqueeze(0)
        return Context(causal_mask(N, device).unsqueeze(0), pos, pos, q_time, k_time, is_causal=True, valid=valid)

    @staticmethod
    def packed(segments: torch.Tensor, q_time: torch.Tensor | None = None, k_time: torch.Tensor | None = None) -> "Context":
        """Several sequences packed into each row: segments [B, N] (1, 1, 1, 2, 2, 0 ...: which
        sequence a token belongs to, 0 = padding). Causal within a sequence, nothing across;
        positions restart at 0 for each sequence; padding tokens see only themselves (no empty rows)."""
        B, N = segments.shape
        same = segments.unsqueeze(2) == segments.unsqueeze(1)  # [B N N]
        eye = torch.eye(N, dtype=torch.bool, device=segments.device)
        mask = (same & causal_mask(N, segments.device) & (segments != 0).unsqueeze(2)) | eye
        start = torch.ones_like(segments, dtype=torch.bool)
        start[:, 1:] = segments[:, 1:] != segments[:, :-1]  # first token of each sequence
        idx = torch.arange(N, device=segments.device).expand(B, N)
        first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values  # [B N] index of the sequence start
        pos = (idx - first) * (segments != 0)
        return Context(mask, pos, pos, q_time, k_time)


def version_key(module: nn.Module, tensors: list[torch.Tensor]) -> list[tuple] | None:
    """What identifies the values of a module's tensors without reading them, for caches of values
    derived from weights: each tensor object, its in-place version counter (optimizer steps,
    ``load_state_dict``), its storage and dtype (``.data =`` swaps the storage of the same object
    without a new version). None (do not cache) in training mode, under ``torch.compile`` and for
    inference tensors (they have no version counter). Writes that bypass the version counter
    (``.data.copy_``, fused optimizers) are not seen: the caches are used in eval mode only and
    dropped by ``train()`` and by ``.to(...)`` (see :class:`WeightCaches`)."""
    if module.training or torch.compiler.is_compiling() or any(t.is_inference() for t in tensors):
        return None
    return [(t, t._version, t.data_ptr(), t.dtype, t.device) for t in tensors]


def same_version(a: list[tuple] | None, b: list[tuple] | None) -> bool:
    """Whether two :func:`version_key` results name the same values (never when one is None)."""
    return a is not None and b is not None and len(a) == len(b) and all(x[0] is y[0] and x[1:] == y[1:] for x, y in zip(a, b))


class WeightCaches:
    """Mixin for modules that cache values derived from their weights (``_cache_fields``): every
    cache is dropped when the module enters training mode or is moved or cast (``.to``, ``.half``:
    the same parameter objects get new storage, sometimes at the old address)."""

    _cache_fields: tuple[str, ...] = ()

    def _drop_caches(self) -> None:
        for name in self._cache_fields:
            setattr(self, name, None)

    def train(self, mode: bool = True):
        self._drop_caches()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._drop_caches()
        return super()._apply(fn, recurse)


class RelativeBias(WeightCaches, nn.Module):
    """Learned scalar bias per relative position (2L-1 values) and per log time bucket
    (num_buckets+1 values), shared across heads, as in the HSTU reference."""

    _cache_fields = ("_positions",)

    def __init__(self, max_seq_len: int, position: bool, time: bool, num_buckets: int, divisor: float):
        super().__init__()
        self.max_seq_len, self.num_buckets, self.divisor = max_seq_len, num_buckets, divisor
        self.pos_w = nn.Parameter(torch.empty(2 * max_seq_len - 1).normal_(0, 0.02)) if position else None
        self.ts_w = nn.Parameter(torch.empty(num_buckets + 1).normal_(0, 0.02)) if time else None
        self._positions: tuple | None = None  # without autograd, eval mode: (version_key of pos_w, [n, n] Toeplitz table)

    def buckets(self, ts: torch.Tensor | None, query_ts: torch.Tensor | None) -> torch.Tensor | None:
        """Time-bucket indices [B, Nq, Nk] (compute once per forward, share across layers), or None."""
        if self.ts_w is None or ts is None or query_ts is None:
            return None
        return time_buckets(query_ts, ts, self.num_buckets, self.divisor)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor, buckets: torch.Tensor | None) -> torch.Tensor | None:
        """q_pos [B|1, Nq], k_pos [B|1, Nk] -> bias [B|1, Nq, Nk] with
        bias[i, j] = pos_w[k_pos[j] - q_pos[i]] + ts_w[buckets[i, j]], or None."""
        bias = None
        L = self.max_seq_len
        if self.pos_w is not None:
            offsets = (k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)).clamp(1 - L, L - 1) + L - 1  # [B|1 Nq Nk]
            bias = self.pos_w[offsets]
        if self.ts_w is not None and buckets is not None:
            tb = self.ts_w[buckets]  # [B N N]
            bias = tb if bias is None else bias + tb
        return bias

    def causal_block(self, s: int, e: int, buckets: torch.Tensor | None = None) -> torch.Tensor | None:
        """The bias of plain causal self-attention (positions 0..N-1, N <= max_seq_len) for query
        rows s..e-1 and keys 0..e-1: [B|1, e - s, e], or None. The position part is Toeplitz
        (:func:`toeplitz_bias`: fast gradient); buckets [B, N, N] as from :meth:`buckets`."""
        bias = None
        if self.pos_w is not None and torch.is_grad_enabled():
            bias = toeplitz_bias(self.pos_w, e - s, e, self.max_seq_len, s).unsqueeze(0)
        elif self.pos_w is not None:  # without autograd (evaluation, serving): a view of one table per weight version
            bias = self._position_table(e)[s:e, :e].unsqueeze(0)
        if self.ts_w is not None and buckets is not None:
            tb = self.ts_w[buckets[:, s:e, :e]]
            bias = tb if bias is None else bias + tb
        return bias

    def row(self, at: torch.Tensor, n: int, buckets: torch.Tensor | None = None) -> torch.Tensor | None:
        """The bias of plain causal self-attention for one query per row, at positions ``at`` [B],
        over keys 0..n-1: [B, 1, n] (keys after ``at`` get a value too; the caller masks them),
        or None. ``buckets`` [B, N, N] as from :meth:`buckets`, N >= n."""
        bias = None
        if self.pos_w is not None:
            if torch.is_grad_enabled():
                bias = self(at.unsqueeze(1), torch.arange(n, device=at.device).unsqueeze(0), None).squeeze(1)
            else:  # rows of the cached table
                bias = self._position_table(n)[at, :n]  # [B n]
        if self.ts_w is not None and buckets is not None:
            tb = self.ts_w[buckets[torch.arange(at.size(0), device=at.device), at, :n]]  # [B n]
            bias = tb if bias is None else bias + tb
        return None if bias is None else bias.unsqueeze(1)

    def _position_table(self, n: int) -> torch.Tensor:
        """[m, m] (m >= n) position bias of causal rows 0..m-1 over keys 0..m-1, built once per
        version of ``pos_w`` (and again for a longer n), so calls without autograd take views of it."""
        key, cached = version_key(self, [self.pos_w]), self._positions
        if cached is None or not same_version(cached[0], key) or cached[1].size(0) < n:
            with torch.no_grad():
                cached = (key, toeplitz_bias(self.pos_w, n, n, self.max_seq_len).detach())
            if key is not None:
                self._positions = cached  # one assignment: a concurrent reader sees the old pair or the new
        return cached[1]


class _ToeplitzBias(torch.autograd.Function):
    """out[i, j] = w[L - 1 + j - (i + row0)]; the backward sums the gradient along diagonals in a
    few dense passes instead of a scatter-add over every entry (which dominates at long lengths)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, R: int, C: int, L: int, row0: int) -> torch.Tensor:
        ctx.shape = (R, C, L, row0)
        rows = torch.arange(row0, row0 + R, device=w.device)
        return w[torch.arange(C, device=w.device).unsqueeze(0) - rows.unsqueeze(1) + L - 1]  # [R C]

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        R, C, L, row0 = ctx.shape
        # row i of the column-flipped gradient, shifted right by i, puts j - i = C - 1 - c in column c
        shifted = F.pad(g.flip(-1), (0, R)).flatten()[: R * (C + R - 1)].view(R, C + R - 1)
        sums = shifted.sum(0).flip(0)  # [R + C - 1], index t + R - 1 for j - i = t
        grad = g.new_zeros(2 * L - 1)
        start = L - row0 - R  # w index of t = -(R - 1)
        grad[start : start + R + C - 1] = sums
        return grad, None, None, None, None


def toeplitz_bias(w: torch.Tensor, rows: int, cols: int, L: int, row0: int = 0) -> torch.Tensor:
    """w [2L-1] relative-position weights -> [rows, cols], entry (i, j) = w[L - 1 + j - (i + row0)]
    (query positions row0.., key positions 0..; all offsets within ±(L - 1))."""
    return _ToeplitzBias.apply(w, rows, cols, L, row0)


def causal_mask(N: int, device: torch.device) -> torch.Tensor:
    """[N, N] bool, True where query i may attend to key j (j <= i)."""
    return torch.ones(N, N, dtype=torch.bool, device=device).tril()


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    norm: float,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
    block_size: int = 256,
) -> torch.Tensor:
    """Pointwise SiLU attention: A = SiLU(q k^T + bias) / norm, zero where masked; out = A v.
    No softmax and no 1/sqrt(d). q [B, H, Nq, dqk], k [B, H, Nk, dqk], v [B, H, Nk, dv],
    bias and mask [B|1, Nq, Nk] (mask None = causal, Nq == Nk) -> [B, H, Nq, dv]. In the causal
    case ``bias`` may instead be a callable (s, e) -> [B|1, e - s, e], the bias of query rows s..e-1
    over keys 0..e-1, so the blocked kernel never builds (or back-propagates through) the N x N bias.
    ``norm`` is a constant (the model's max length), so results do not depend on batch padding.

    Dispatcher: causal calls longer than ``block_size`` (and without attention dropout) take
    :func:`hstu_attention_causal_blocked`, which skips the upper triangle; calls that need no
    gradient and no dropout (evaluation, serving) take :func:`hstu_attention_inference`, in place;
    everything else takes :func:`hstu_attention_reference`. Tests compare them."""
    if mask is None and q.size(2) > block_size and not (dropout > 0.0 and training):
        return hstu_attention_causal_blocked(q, k, v, bias, norm, block_size)
    if callable(bias):
        bias = bias(0, q.size(2))
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    if not needs_grad and not (dropout > 0.0 and training):
        return hstu_attention_inference(q, k, v, bias, norm, mask)
    return hstu_attention_reference(q, k, v, bias, norm, mask, dropout, training)


def hstu_attention_inference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, norm: float, mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`hstu_attention_reference` without autograd (evaluation, serving): the [B, H, Nq, Nk]
    scores are one buffer changed in place (bias, SiLU, mask), and 1/norm scales v, the smaller
    operand, instead of every score: three fewer passes over the largest tensor. Equal to the
    reference up to float rounding (tests compare them)."""
    scores = q @ k.transpose(-1, -2)  # [B H Nq Nk], a fresh buffer
    if bias is not None:
        scores += bias.unsqueeze(1).to(scores.dtype)
    F.silu(scores, inplace=True)
    if mask is None:
        scores.tril_()  # causal: the upper triangle zeroed (an order of magnitude cheaper than a broadcast masked_fill)
    else:  # times the mask (several times cheaper than masked_fill on CPU); a masked key's non-finite score
        scores.mul_(mask.unsqueeze(1))  # would spread as NaN, as its non-finite value spreads through A·v anyway
    return scores @ (v / norm)


def hstu_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    norm: float,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Dense reference of :func:`hstu_attention`: materialises the full [B, H, Nq, Nk] scores."""
    scores = q @ k.transpose(-1, -2)  # [B H Nq Nk]
    if bias is not None:
        scores = scores + bias.unsqueeze(1).to(scores.dtype)
    attn = F.silu(scores) / norm
    if mask is None:
        attn = attn.tril()  # causal (forward and backward much cheaper than a broadcast masked_fill)
    else:
        attn = attn.masked_fill(~mask.unsqueeze(1), 0.0)  # [B|1 1 Nq Nk]
    if dropout > 0.0 and training:
        attn = F.dropout(attn, p=dropout)
    return attn @ v


def hstu_attention_causal_blocked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias, norm: float, block_size: int = 256
) -> torch.Tensor:
    """Causal :func:`hstu_attention` by query blocks: block [s, e) scores only keys [0, e), so the
    upper triangle (half the work and memory at long lengths) is never computed. Keys [0, s) are
    all visible to the block and need no mask; only the small diagonal tile [s, e) x [s, e) is
    masked. Because the attention is pointwise (no softmax over the row), blocks need no running
    normaliser, and 1/norm is folded into v once instead of scaling every score."""
    N = q.size(2)
    v = v / norm
    outs = []
    for s in range(0, N, block_size):
        e = min(s + block_size, N)
        qb = q[:, :, s:e]  # [B H b d]
        blk = bias(s, e) if callable(bias) else (None if bias is None else bias[:, s:e, :e])  # [B|1 b e]
        diag = qb @ k[:, :, s:e].transpose(-1, -2)  # [B H b b]
        if blk is not None:
            diag = diag + blk[:, :, s:e].unsqueeze(1).to(diag.dtype)
        out = F.silu(diag).tril() @ v[:, :, s:e]  # [B H b dv], causal within the diagonal tile
        if s > 0:
            past = qb @ k[:, :, :s].transpose(-1, -2)  # [B H b s], all visible
            if blk is not None:
                past = past + blk[:, :, :s].unsqueeze(1).to(past.dtype)
            out = out + F.silu(past) @ v[:, :, :s]
        outs.append(out)
    return torch.cat(outs, dim=2)


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Scaled dot-product softmax attention. q [B, H, Nq, d], k, v [B, H, Nk, d], mask and additive
    bias [B|1, Nq, Nk] (both None = causal, Nq == Nk) -> [B, H, Nq, d]. Every query must see >= 1 key."""
    p = dropout if training else 0.0
    if mask is None and bias is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
    if mask is None:
        mask = causal_mask(q.size(2), q.device).unsqueeze(0)
    attn_bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    if bias is not None:
        attn_bias = attn_bias + bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.unsqueeze(1), dropout_p=p)


def softmax_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-matmul reference of :func:`softmax_attention` (no dropout, no bias), for tests."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    mask = causal_mask(q.size(2), q.device) if mask is None else mask.unsqueeze(1)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v
