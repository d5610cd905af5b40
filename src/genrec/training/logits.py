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
``tests/training/test_logits.py``); ``benchmarks/engine.py`` measures them against the
straightforward forms.
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
(a T x num_items fp32 array), so that memory is at most this much, or one block, whatever the
catalogue size."""
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
    rides along as an extra column) and one in-place ``exp``: no max pass, no rescaling. Where that
    bound sits so far above a row's logits that its sum underflows (unnormalised vectors, tiny temperatures), the call
    falls back to shifting by the exact row maximum (a second pass). When all blocks fit in
    :data:`CACHE_BYTES` they are kept for the backward pass (which only rescales them: three
    matmuls per step instead of four); otherwise the backward recomputes each block and memory stays
    at one block."""

    @staticmethod
    @_fp32
    def forward(ctx, q: torch.Tensor, table: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
        T, N = q.size(0), table.size(0)
        cols = _rows_per_block(T, q.element_size())
        keep = T * N * q.element_size() <= CACHE_BYTES and any(ctx.needs_input_grad[:2])  # no backward: nothing to keep
        scaled = q / temperature
        shift = scaled.norm(dim=1) * table.norm(dim=1).max()  # >= every logit of the row
        total, blocks = _exp_sums(scaled, table, shift, cols, keep)
        exact = not bool((total > _TINY).all())
        if exact:  # the bound is too loose for some row: use exact maxima, subtracted after the matmul
            shift = torch.stack([(scaled @ table[s : s + cols].T).amax(1) for s in range(0, N, cols)], 1).amax(1)
            total, blocks = _exp_sums(scaled, table, shift, cols, keep, fold=False)
        lse = total.log_() + shift
        pos = (scaled * table[target]).sum(-1)
        ctx.save_for_backward(q, table, target, lse, shift)
        ctx.temperature, ctx.cols, ctx.blocks, ctx.fold = temperature, cols, blocks, not exact
        return (lse - pos).mean()

    @staticmethod
    @once_differentiable
    @_fp32
    def backward(ctx, grad: torch.Tensor):
        q, table, target, lse, shift = ctx.saved_tensors
        T, N = q.size(0), table.size(0)
        tau, cols = ctx.temperature, ctx.cols
        scale = grad / (T * tau)  # d mean / d logit, times d logit / d (q . row)
        scaled = q / tau
        # probability x scale = exp(logit - shift) x factor, with one factor per row: applied to the
        # [T, D] operands and results rather than to every [T, block] entry
        factor = (shift - lse).exp_().mul_(scale).unsqueeze(1)
        weighted_q = q * factor
        acc = torch.zeros_like(q)
        grad_table = torch.empty_like(table) if ctx.needs_input_grad[1] else None  # a frozen table needs none
        buf = q_aug = None
        if not ctx.blocks:
            buf = q.new_empty(T, min(N, cols))
        for i, s in enumerate(range(0, N, cols)):
            e = min(N, s + cols)
            if ctx.blocks:
                p = ctx.blocks[i]
            else:
                p = _exp_block(scaled, table[s:e], shift, ctx.fold, buf[:, : e - s])
            acc.addmm_(p, table[s:e])
            if grad_table is not None:
                torch.mm(p.T, weighted_q, out=grad_table[s:e])
        ctx.blocks = None
        # the target term, - q[t] . table[target[t]] / tau
        grad_q = acc.mul_(factor).sub_(table[target] * scale)
        if grad_table is not None:
            grad_table.index_add_(0, target, q * -scale)
        return grad_q, grad_table, None, None


_TINY = 1e-20


def _shifted(scaled: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """[T, D] queries with -shift appended: against :func:`_with_ones` rows one matmul gives
    logit - shift, so no separate pass over the [T, block] scores subtracts it."""
    return torch.cat([scaled, -shift.unsqueeze(1)], dim=1)


def _with_ones(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows, rows.new_ones(rows.size(0), 1)], dim=1)


def _exp_block(scaled: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor, fold: bool, out: torch.Tensor | None) -> torch.Tensor:
    """exp(scaled . rows - shift) [T, R], into ``out`` when given. ``fold``: the shift rides along
    the matmul as an extra column (one pass; fine while the shift is near the logits' scale);
    otherwise it is subtracted after the matmul, so logits far larger than their spread (the exact
    maxima fallback) lose no precision to the cancellation inside the dot product."""
    if fold:
        block = torch.mm(_shifted(scaled, shift), _with_ones(rows).T, out=out)
    else:
        block = torch.mm(scaled, rows.T, out=out).sub_(shift.unsqueeze(1))
    return block.exp_()


def _exp_sums(scaled: torch.Tensor, table: torch.Tensor, shift: torch.Tensor, cols: int, keep: bool, fold: bool = True):
    """Per row, sum_j exp(scaled . table[j] - shift), by blocks of ``cols`` items; with ``keep``
    also the blocks of exponentials themselves (for the backward pass). ``fold``: see :func:`_exp_block`."""
    T, N = scaled.size(0), table.size(0)
    total = scaled.new_zeros(T)
    buf = None if keep else scaled.new_empty(T, min(N, cols))
    blocks = []
    for s in range(0, N, cols):
        e = min(N, s + cols)
        block = _exp_block(scaled, table[s:e], shift, fold, None if keep else buf[:, : e - s])
        total += block.sum(1)
        if keep:
            blocks.append(block)
    return total, blocks


def softmax_cross_entropy(q: torch.Tensor, table: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Full softmax cross-entropy of q [T, D] over every row of table [N, D] (target [T] indexes
    the rows), averaged over T, in blocks of items: memory T x block, never T x N."""
    return _SoftmaxCrossEntropy.apply(q.float(), table.float(), target, temperature)
