"""Memory-bounded logits for the retrieval losses: per-position negatives and the full softmax
without the large temporaries.

The straightforward forms materialise a ``[T, K, D]`` gather of per-position negative vectors
(``[T, 512, D]`` is ~0.1-0.8 GB in fp32), L2-normalise every gathered copy of a row again, or hold
``[T, num_items]`` logits and their gradient. On CPUs about half of such a step is system time:
the allocator maps and unmaps the temporaries every step. Here:

- :func:`gathered_logits` scores each position against its own negatives from one normalised
  copy of each distinct row (the whole table when that is smaller than the samples), in row
  blocks that reuse one buffer, forward and backward (:class:`_GatheredDot`), or, when the
  distinct rows are few compared to the negatives, as one blockwise matmul per row block whose
  entries are picked out (:class:`_DenseGather`; cheaper because a matmul runs near the machine's
  peak while a gather is bound by memory);
- :func:`softmax_cross_entropy` is the full-catalogue softmax cross-entropy by item blocks: the
  forward sums each block's exponentials (shifted by a bound known in advance), the backward
  reuses the blocks when they fit in :data:`CACHE_BYTES` and recomputes them otherwise, so memory
  is at most that or one ``T x block`` block whatever the catalogue size, and time follows the FLOPs.

Both are exact (same values as the dense expressions up to float rounding; tested in
``tests/training/test_logits.py``), except the full softmax with ``matmul="bf16"``, which rounds
its matmul operands on purpose (see :func:`softmax_cross_entropy`); ``benchmarks/engine.py``
measures them against the straightforward forms.
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

BLOCK_BYTES = 2 << 20
"""Target size of one block's temporary (bytes): small enough to stay in cache, large enough for
the matmuls to run near peak (blocks of 1-16 MB timed within noise of each other on the CPU
measured; on GPUs larger blocks are likely better, not measured)."""
CACHE_BYTES = 64 << 20
"""The full softmax keeps its forward blocks for the backward pass when they fit in this many bytes
(a T x num_items array in the matmul dtype, T padded for bf16), so that memory is at most this
much, or one block, whatever the catalogue size."""
DENSE_RATIO = 32
"""Score through a dense matmul when the distinct rows number at most this many times the
negatives per position: on the CPU measured a gathered (memory-bound) dot costs 25-50x a matmul's
multiply-add per element (``benchmarks/engine.py --kernels``; ``benchmarks/RESULTS.md``, "Engine")."""


def _rows_per_block(width: int, item_bytes: int = 4) -> int:
    return max(1, BLOCK_BYTES // max(1, width * item_bytes))


def _fp32(fn):
    """Run a forward or backward in fp32 with autocast off (the blocks use ``out=`` buffers, which
    autocast does not cast; the callers hand fp32 inputs, so bf16 runs score in fp32 here)."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with torch.autocast(args[0].device.type, enabled=False):
            return fn(ctx, *args)

    return wrapper


class _GatheredDot(torch.autograd.Function):
    """out[t, k] = q[t] . table[idx[t, k]], by blocks of positions through one reused buffer."""

    @staticmethod
    @_fp32
    def forward(ctx, q: torch.Tensor, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        T, K = idx.shape
        D = q.size(1)
        rows = _rows_per_block(K * D, q.element_size())
        out = q.new_empty(T, K)
        buf = q.new_empty(min(T, rows) * K, D)
        for s in range(0, T, rows):
            e = min(T, s + rows)
            g = torch.index_select(table, 0, idx[s:e].reshape(-1), out=buf[: (e - s) * K]).view(e - s, K, D)
            torch.bmm(g, q[s:e].unsqueeze(-1), out=out[s:e].unsqueeze(-1))
        ctx.save_for_backward(q, table, idx)
        return out

    @staticmethod
    @once_differentiable
    @_fp32
    def backward(ctx, grad: torch.Tensor):
        q, table, idx = ctx.saved_tensors
        T, K = idx.shape
        D = q.size(1)
        grad = grad.float().contiguous()
        rows = _rows_per_block(K * D, q.element_size())
        grad_q = torch.empty_like(q) if ctx.needs_input_grad[0] else None
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        buf = q.new_empty(min(T, rows) * K, D)
        for s in range(0, T, rows):
            e = min(T, s + rows)
            flat = idx[s:e].reshape(-1)
            g = buf[: (e - s) * K].view(e - s, K, D)
            if grad_q is not None:
                torch.index_select(table, 0, flat, out=buf[: (e - s) * K])
                torch.bmm(grad[s:e].unsqueeze(1), g, out=grad_q[s:e].unsqueeze(1))
            if grad_table is not None:
                torch.mul(grad[s:e].unsqueeze(-1), q[s:e].unsqueeze(1), out=g)
                grad_table.index_add_(0, flat, buf[: (e - s) * K])
        return grad_q, grad_table, None


class _DenseGather(torch.autograd.Function):
    """out[t, k] = (q @ table.T)[t, idx[t, k]], by blocks of positions (one [rows, U] buffer)."""

    @staticmethod
    @_fp32
    def forward(ctx, q: torch.Tensor, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        T, K = idx.shape
        rows = _rows_per_block(table.size(0), q.element_size())
        out = q.new_empty(T, K)
        scores = q.new_empty(min(T, rows), table.size(0))
        for s in range(0, T, rows):
            e = min(T, s + rows)
            torch.mm(q[s:e], table.T, out=scores[: e - s])
            torch.gather(scores[: e - s], 1, idx[s:e], out=out[s:e])
        ctx.save_for_backward(q, table, idx)
        return out

    @staticmethod
    @once_differentiable
    @_fp32
    def backward(ctx, grad: torch.Tensor):
        q, table, idx = ctx.saved_tensors
        T, K = idx.shape
        grad = grad.float().contiguous()
        rows = _rows_per_block(table.size(0), q.element_size())
        grad_q = torch.empty_like(q) if ctx.needs_input_grad[0] else None
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        scores = q.new_empty(min(T, rows), table.size(0))
        for s in range(0, T, rows):
            e = min(T, s + rows)
            block = scores[: e - s].zero_()
            block.scatter_add_(1, idx[s:e], grad[s:e])  # d loss / d (q @ table.T), sparse rows made dense
            if grad_q is not None:
                torch.mm(block, table, out=grad_q[s:e])
            if grad_table is not None:
                grad_table.addmm_(block.T, q[s:e])
        return grad_q, grad_table, None


def gathered_logits(q: torch.Tensor, vectors, ids: torch.Tensor, num_items: int) -> torch.Tensor:
    """q [T, D] and per-position item ids [T, K] (each in 1..num_items) -> [T, K] dot products
    q[t] . vectors(ids[t, k]), where ``vectors(rows)`` is the model's output-side item vectors
    (e.g. ``model.item_vectors``, L2-normalised rows). Each distinct row goes through ``vectors``
    once; nothing of size [T, K, D] is held for the backward pass."""
    T, K = ids.shape
    if num_items + 1 <= T * K:  # the whole table is smaller than the samples: no need to find distinct rows
        rows, local = torch.arange(num_items + 1, device=ids.device), ids
    else:
        rows, local = torch.unique(ids, return_inverse=True)
    table = vectors(rows).float()  # [U, D]
    fn = _DenseGather if rows.numel() <= DENSE_RATIO * K else _GatheredDot
    return fn.apply(q.float(), table, local)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """mean over t of logsumexp_j(q[t] . table[j] / tau) - q[t] . table[target[t]] / tau.

    Each row's exponentials are shifted by an upper bound of its logits known before any block is
    scored (Cauchy-Schwarz: |q[t]| max_j |table[j]| / tau), so a block is one matmul (the shift
    rides along as an extra column) and one in-place ``exp2`` (in base 2, :data:`LOG2E`): no max
    pass, no rescaling. Where that
    bound sits so far above a row's logits that its sum underflows (unnormalised vectors, tiny temperatures), the call
    falls back to shifting by the exact row maximum (a second pass). When all blocks fit in
    :data:`CACHE_BYTES` they are kept for the backward pass (which only rescales them: three
    matmuls per step instead of four); otherwise the backward recomputes each block and memory stays
    at one block. Blocks cover all T positions (fp32) or tiles of :data:`ROW_TILE` positions (other
    matmul dtypes; see there)."""

    @staticmethod
    @_fp32
    def forward(ctx, q: torch.Tensor, table: torch.Tensor, target: torch.Tensor, temperature: float,
                matmul_dtype: torch.dtype) -> torch.Tensor:
        T, N = q.size(0), table.size(0)
        scaled = q * (LOG2E / temperature)  # logits in base 2 (x log2 e): the blocks take exp2, several times cheaper than exp
        # >= every (base-2) logit of the row; rounded to the matmul dtype, so the folded shift column holds it exactly
        shift = (scaled.norm(dim=1) * table.norm(dim=1).max()).to(matmul_dtype).float()
        score = _Folded(_shifted(scaled, shift), _with_ones(table), matmul_dtype)
        keep = any(ctx.needs_input_grad[:2])  # no backward: nothing to keep
        total, blocks = _exp_sums(score, N, keep)
        if not bool((total > _TINY).all()):  # the bound is too loose for some row: exact maxima, subtracted after an fp32 matmul
            cols = _rows_per_block(T)
            shift = torch.stack([(scaled @ table[s : s + cols].T).amax(1) for s in range(0, N, cols)], 1).amax(1)
            score = _Exact(scaled, table, shift)
            total, blocks = _exp_sums(score, N, keep)
        lse = total.log2_() + shift  # base 2, as the logits
        if score.dtype == torch.float32:
            pos = (scaled * table[target]).sum(-1)
        else:  # from the rounded operands the blocks saw, so a fitted row's target term cancels its own rounding
            pos = (score.q_ops[:T, :-1].float() * score.ops[target, :-1].float()).sum(-1)
        ctx.save_for_backward(q, table, target, lse, shift)
        ctx.temperature, ctx.score, ctx.blocks = temperature, score, blocks
        return (lse - pos).mean() * LN2

    @staticmethod
    @once_differentiable
    @_fp32
    def backward(ctx, grad: torch.Tensor):
        q, table, target, lse, shift = ctx.saved_tensors
        score, blocks = ctx.score, ctx.blocks
        ctx.blocks = None  # freed now; a second backward (retain_graph) recomputes them from ctx.score
        T, N, dtype = q.size(0), table.size(0), score.dtype
        scale = grad / (T * ctx.temperature)  # d mean / d logit, times d logit / d (q . row)
        # probability x scale = 2^(logit - shift) x factor (base 2), with one factor per row: applied
        # to the [T, D] operands and results rather than to every [T, block] entry
        factor = (shift - lse).exp2_().mul_(scale).unsqueeze(1)
        weighted_q = _padded((q * factor).to(dtype), score.rows)  # padding rows are zero: they add nothing
        rows = table.to(dtype)
        lowp = dtype != torch.float32  # such matmuls give results in that dtype: summed into fp32 here
        acc = q.new_zeros(score.rows, q.size(1))
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None  # a frozen table needs none
        buf = None if blocks else score.buffer()
        for i, (r0, r1, s, e) in enumerate(score.grid(N)):
            p = blocks[i] if blocks else score(r0, r1, s, e, buf[: r1 - r0, : e - s])
            if lowp:
                acc[r0:r1] += torch.mm(p, rows[s:e])
            else:
                acc[r0:r1].addmm_(p, rows[s:e])
            if grad_table is not None:
                if lowp:
                    grad_table[s:e] += torch.mm(p.T, weighted_q[r0:r1])
                else:
                    grad_table[s:e].addmm_(p.T, weighted_q[r0:r1])
        # the target term, - q[t] . table[target[t]] / tau
        grad_q = acc[:T].mul_(factor).sub_(table[target] * scale)
        if grad_table is not None:
            grad_table.index_add_(0, target, q * -scale)
        return grad_q, grad_table, None, None, None


_TINY = 1e-20
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
"""The full softmax works in base 2: logits times log2 e, blocks of ``exp2``, ``log2`` sums, the loss
times ln 2 at the end: the same values up to rounding, and PyTorch's vectorised ``exp2`` costs less
than its ``exp`` on the CPU measured (per element, 1 thread, AMD EPYC Zen 4: fp32 0.31-0.35 ns vs
1.0-1.2 ns; bf16 0.42-0.44 ns vs 0.51-0.56 ns)."""
ROW_TILE = 512
"""With bf16 matmul operands the full softmax scores at most this many positions per matmul, and the
positions are padded (zero rows, dropped afterwards) to a multiple of :data:`ROW_PAD`. CPU bf16
matmuls run through oneDNN, which builds and caches a kernel for every distinct shape (~0.7 MB
each, up to 1024 of them; measured on an AMD EPYC), so the varying position counts of training
batches would grow the process by hundreds of MB; tiles keep the shapes to a few dozen. fp32
matmuls go through BLAS, which caches nothing: there a block covers all T positions, unpadded."""
ROW_PAD = 64


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x if x.size(0) == rows else torch.cat([x, x.new_zeros(rows - x.size(0), x.size(1))])


class _Folded:
    """exp(logit - shift) blocks from one matmul each: [scaled, -shift] against [rows, 1], operands
    cast to the matmul dtype once; fp32 blocks cover all positions, others :data:`ROW_TILE` tiles."""

    def __init__(self, q_ops: torch.Tensor, ops: torch.Tensor, dtype: torch.dtype) -> None:
        T = self.T = q_ops.size(0)  # positions; self.rows: with the padding
        self.dtype = dtype
        if dtype == torch.float32:
            self.rows, self.tile = T, max(1, T)  # (max: an empty batch gives an empty grid, not a zero step)
            self.cols = _rows_per_block(T)
        else:  # fixed block widths too, whatever T: one shape per tile height and item block
            self.rows = -(-T // ROW_PAD) * ROW_PAD
            self.tile = max(1, min(ROW_TILE, self.rows))
            self.cols = _rows_per_block(ROW_TILE, torch.finfo(dtype).bits // 8)
        self.q_ops = _padded(q_ops.to(dtype), self.rows)
        self.ops = ops.to(dtype)

    def grid(self, N: int) -> list[tuple[int, int, int, int]]:
        """(first row, end row, first item, end item) of every block, in a fixed order."""
        return [(r, min(self.rows, r + self.tile), s, min(N, s + self.cols))
                for r in range(0, self.rows, self.tile) for s in range(0, N, self.cols)]

    def buffer(self) -> torch.Tensor:
        return self.q_ops.new_empty(self.tile, self.cols)

    def __call__(self, r0: int, r1: int, s: int, e: int, out: torch.Tensor | None) -> torch.Tensor:
        return torch.mm(self.q_ops[r0:r1], self.ops[s:e].T, out=out).exp2_()


class _Exact(_Folded):
    """The exact-maxima fallback, always fp32: the shift is subtracted after the matmul, so logits
    far larger than their spread lose no precision to the cancellation inside the dot product."""

    def __init__(self, scaled: torch.Tensor, table: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__(scaled, table, torch.float32)
        self.shift = shift.unsqueeze(1)

    def __call__(self, r0: int, r1: int, s: int, e: int, out: torch.Tensor | None) -> torch.Tensor:
        return torch.mm(self.q_ops[r0:r1], self.ops[s:e].T, out=out).sub_(self.shift[r0:r1]).exp2_()


def _shifted(scaled: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """[T, D] queries with -shift appended: against :func:`_with_ones` rows one matmul gives
    logit - shift, so no separate pass over the [T, block] scores subtracts it (fine while the
    shift is near the logits' scale, which the Cauchy-Schwarz bound is for normalised vectors)."""
    return torch.cat([scaled, -shift.unsqueeze(1)], dim=1)


def _with_ones(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows, rows.new_ones(rows.size(0), 1)], dim=1)


def _exp_sums(score: _Folded, N: int, keep: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per position, the sum over items of the blocks' exponentials, in fp32 across blocks; the
    blocks too when ``keep`` and they fit in :data:`CACHE_BYTES` (for the backward pass), else none.
    A block's own row sums come in its dtype: for bf16, fp32 accumulation rounded to bf16 at the end
    (<= 0.3% off per block; asking ``sum`` for an fp32 result instead copies the whole block to fp32
    first, ~8% of the bf16 loss's time, measured)."""
    keep = keep and score.rows * N * score.ops.element_size() <= CACHE_BYTES
    total = score.q_ops.new_zeros(score.rows, dtype=torch.float32)
    buf = None if keep else score.buffer()
    blocks = []
    for r0, r1, s, e in score.grid(N):
        block = score(r0, r1, s, e, None if keep else buf[: r1 - r0, : e - s])
        total[r0:r1] += block.sum(1)  # (a bf16 sum accumulates in fp32 inside; its result is rounded to bf16)
        if keep:
            blocks.append(block)
    return total[: score.T], blocks


MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""``train.softmax_matmul`` names -> the dtype of the full softmax's matmul operands."""


def softmax_cross_entropy(q: torch.Tensor, table: torch.Tensor, target: torch.Tensor, temperature: float,
                          matmul: str = "fp32") -> torch.Tensor:
    """Full softmax cross-entropy of q [T, D] over every row of table [N, D] (target [T] indexes
    the rows), averaged over T, in blocks of items: memory T x block, never T x N.

    ``matmul``: ``fp32`` (exact up to fp32 rounding) or ``bf16``: the three [T x N x D] matmuls
    (scores, and the two gradient products) take bf16 operands and give bf16 blocks (the matmul
    accumulates in fp32 inside), and the exponentials and each block's row sums are bf16; the sums
    over blocks, logs, the target term and the gradients' sums over blocks stay fp32. The shift is
    rounded to bf16 before use, so it cancels exactly. On a Zen 4 CPU (``avx512_bf16``) the loss
    kernel runs 1.6-2x faster (benchmarks/RESULTS.md, "Engine"). Each probability is off by up to
    bf16's relative step (2^-8), an absolute error on the loss and the gradients: where they are
    large (rows not yet fitted) it is ~1e-3 of the loss and ~1% of the gradients (tested); on a
    row the model already fits, whose loss and gradient are near zero, the same absolute error is
    a large relative one (tested with an absolute bound). The exact-maxima fallback always runs in
    fp32. Both dtypes keep ``[scaled, -shift]`` and ``[table, 1]`` ([T, D+1] and [N, D+1], in the
    matmul dtype) from the forward pass to the backward."""
    return _SoftmaxCrossEntropy.apply(q.float(), table.float(), target, temperature, MATMUL_DTYPES[matmul])
