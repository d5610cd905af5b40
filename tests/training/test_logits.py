"""The memory-bounded logits (genrec.training.logits) against the dense expressions they replace:
values and gradients, on every path (dense matmul or gathered rows, whole table or distinct rows,
cached or recomputed softmax blocks, the exact-maximum fallback)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genrec.training import logits as L


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so that every loop runs several iterations on these small inputs."""
    monkeypatch.setattr(L, "BLOCK_BYTES", 256)


def _inputs(T=13, K=7, D=8, V=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(T, D, generator=g), dim=-1).requires_grad_()
    table = torch.randn(V + 1, D, generator=g).requires_grad_()
    ids = torch.randint(1, V + 1, (T, K), generator=g)
    return q, table, ids


def _grads(out, weights, inputs):
    return torch.autograd.grad((out * weights).sum(), inputs)


@pytest.mark.parametrize("fn", [L._DenseGather, L._GatheredDot])
def test_gathered_paths_match_the_dense_gather(small_blocks, fn):
    q, table, ids = _inputs()
    w = torch.randn(ids.shape)
    ref = torch.einsum("td,tkd->tk", q, table[ids])
    out = fn.apply(q, table, ids)
    torch.testing.assert_close(out, ref)
    for a, b in zip(_grads(out, w, (q, table)), _grads(ref, w, (q, table))):
        torch.testing.assert_close(a, b)


def test_gathered_dot_by_hand():
    q = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 3.0]])
    ids = torch.tensor([[1, 3], [2, 2]])
    expected = torch.tensor([[1.0, 8.0], [-1.0, -1.0]])  # [1,2].[1,0], [1,2].[2,3]; [0,-1].[0,1] twice
    assert torch.equal(L._DenseGather.apply(q, table, ids), expected)
    assert torch.equal(L._GatheredDot.apply(q, table, ids), expected)
    # d sum / d table[2] = q[1] counted twice; table rows 0 and never-drawn ones get nothing
    table.requires_grad_()
    (g,) = torch.autograd.grad(L._GatheredDot.apply(q, table, ids).sum(), table)
    assert torch.equal(g, torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, -2.0], [1.0, 2.0]]))


@pytest.mark.parametrize("T, K", [(13, 200), (3, 7)])  # 13 x 200 samples > 41 rows: the whole table; 3 x 7 < 41: distinct rows
def test_gathered_logits_normalises_each_row_once_and_matches(small_blocks, T, K):
    q, table, ids = _inputs(T=T, K=K)
    calls = []

    def vectors(rows):
        calls.append(rows.numel())
        return F.normalize(table[rows], dim=-1)

    w = torch.randn(ids.shape)
    out = L.gathered_logits(q, vectors, ids, num_items=40)
    ref = torch.einsum("td,tkd->tk", q, F.normalize(table[ids], dim=-1))
    torch.testing.assert_close(out, ref)
    assert calls == ([41] if T * K >= 41 else [ids.unique().numel()])
    for a, b in zip(_grads(out, w, (q, table)), _grads(ref, w, (q, table))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cache", [0, 1 << 30])
@pytest.mark.parametrize("norm", [1.0, 40.0])  # 40: the Cauchy-Schwarz shift underflows, exact maxima are used
def test_softmax_cross_entropy_matches_full_logits(small_blocks, monkeypatch, cache, norm):
    monkeypatch.setattr(L, "CACHE_BYTES", cache)
    q, table, _ = _inputs()
    q = (q.detach() * norm).requires_grad_()
    target = torch.randint(0, table.size(0), (q.size(0),), generator=torch.Generator().manual_seed(1))
    loss = L.softmax_cross_entropy(q, table, target, 0.05)
    ref = F.cross_entropy(q @ table.T / 0.05, target)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4 * norm)
    got = torch.autograd.grad(3 * loss, (q, table))
    want = torch.autograd.grad(3 * ref, (q, table))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * norm)


@pytest.mark.parametrize("cache", [0, 1 << 30])
@pytest.mark.parametrize("tile", [(512, 64), (16, 8)])  # (16, 8): 37 positions -> 40 rows in tiles of 16, 16, 8
def test_softmax_cross_entropy_bf16_matmuls_stay_close_to_fp32(small_blocks, monkeypatch, cache, tile):
    """train.softmax_matmul=bf16: same loss to ~1e-3 relative, gradients within ~1% (bf16 rounds
    each operand and block to 8 bits of mantissa; sums stay fp32), blocks kept or recomputed,
    positions in one padded tile or several."""
    monkeypatch.setattr(L, "CACHE_BYTES", cache)
    monkeypatch.setattr(L, "ROW_TILE", tile[0])
    monkeypatch.setattr(L, "ROW_PAD", tile[1])
    gen = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(37, 16, generator=gen), dim=-1).requires_grad_()
    table = F.normalize(torch.randn(300, 16, generator=gen), dim=-1).requires_grad_()
    target = torch.randint(0, 300, (37,), generator=gen)
    ref = F.cross_entropy(q @ table.T / 0.05, target)
    loss = L.softmax_cross_entropy(q, table, target, 0.05, matmul="bf16")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-3, atol=0.0)
    got = torch.autograd.grad(loss, (q, table))
    want = torch.autograd.grad(ref, (q, table))
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        assert float((a - b).norm() / b.norm()) < 1e-2
    assert L._Folded(q.detach(), table.detach(), torch.bfloat16).grid(300)[-1][:2] == ((32, 40) if tile[0] == 16 else (0, 64))
    # and the bf16 path really rounds: not bit-equal to the fp32 one
    assert float(loss.detach()) != float(L.softmax_cross_entropy(q, table, target, 0.05).detach())


def test_softmax_cross_entropy_bf16_falls_back_to_exact_fp32_maxima(small_blocks):
    """Unnormalised vectors push the Cauchy-Schwarz shift so far above the logits that the sums
    underflow: the exact-maxima fallback runs in fp32, whatever the matmul dtype, and stays exact."""
    q, table, _ = _inputs()
    q = (q.detach() * 40.0).requires_grad_()
    target = torch.randint(0, table.size(0), (q.size(0),), generator=torch.Generator().manual_seed(1))
    loss = L.softmax_cross_entropy(q, table, target, 0.05, matmul="bf16")
    ref = F.cross_entropy(q @ table.T / 0.05, target)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=4e-3)
    for a, b in zip(torch.autograd.grad(loss, (q, table)), torch.autograd.grad(ref, (q, table))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=4e-4)


def test_softmax_cross_entropy_frozen_table_and_no_double_backward():
    q, table, _ = _inputs()
    frozen = table.detach()
    loss = L.softmax_cross_entropy(q, frozen, torch.tensor([1] * q.size(0)), 0.05)
    (g,) = torch.autograd.grad(loss, q, create_graph=False)
    torch.testing.assert_close(g, torch.autograd.grad(F.cross_entropy(q @ frozen.T / 0.05, torch.tensor([1] * q.size(0))), q)[0])
    loss = L.softmax_cross_entropy(q, table, torch.tensor([1] * q.size(0)), 0.05)
    (g,) = torch.autograd.grad(loss, q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|not differentiable|does not require grad"):
        g.sum().backward()


def test_softmax_cross_entropy_by_hand():
    # two items at logits 0 and ln 3 (temperature 1): p = (1/4, 3/4); target 0 -> loss ln 4
    q = torch.tensor([[1.0]], requires_grad=True)
    table = torch.tensor([[0.0], [float(torch.log(torch.tensor(3.0)))]], requires_grad=True)
    loss = L.softmax_cross_entropy(q, table, torch.tensor([0]), 1.0)
    torch.testing.assert_close(loss, torch.log(torch.tensor(4.0)))
    gq, gt = torch.autograd.grad(loss, (q, table))
    # d/dq = sum_j p_j table_j - table_0 = 3/4 ln 3; d/dtable_j = (p_j - [j = 0]) q
    torch.testing.assert_close(gq, torch.tensor([[0.75 * float(torch.log(torch.tensor(3.0)))]]))
    torch.testing.assert_close(gt, torch.tensor([[-0.75], [0.75]]))


def test_bf16_inputs_score_in_fp32():
    q, table, ids = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = L.gathered_logits(q.bfloat16(), lambda rows: table[rows].bfloat16(), ids, num_items=40)
        loss = L.softmax_cross_entropy(q.bfloat16(), table.bfloat16(), ids[:, 0], 0.05)
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    out.sum().backward()
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_sampled_softmax_per_position_matches_the_dense_loss():
    """The retrieval loss with per-position negatives gives the same value and gradients as the
    dense [T, K, D] expression it replaced, for the same drawn negatives."""
    from genrec.models.base import SequentialRecommender
    from genrec.models.sasrec import SASRec, SASRecConfig
    from genrec.training.losses import sampled_softmax_loss

    model = SASRec(SASRecConfig(num_items=30, max_seq_len=5, embedding_dim=8, num_layers=1, num_heads=1))
    assert isinstance(model, SequentialRecommender)
    q = F.normalize(torch.randn(9, 8), dim=-1).requires_grad_()
    pos = torch.randint(1, 31, (9,))
    torch.manual_seed(3)
    got = sampled_softmax_loss(q, pos, model, 16, 0.05, share=False)
    g_got = torch.autograd.grad(got, (q, model.item_embedding.weight))
    torch.manual_seed(3)
    neg = torch.randint(1, 31, (9, 16))
    neg_logit = torch.einsum("td,tkd->tk", q, model.item_vectors(neg)).masked_fill(neg == pos.unsqueeze(1), float("-inf")) / 0.05
    pos_logit = (q * model.item_vectors(pos)).sum(-1, keepdim=True) / 0.05
    ref = F.cross_entropy(torch.cat([pos_logit, neg_logit], 1), torch.zeros(9, dtype=torch.long))
    g_ref = torch.autograd.grad(ref, (q, model.item_embedding.weight))
    torch.testing.assert_close(got, ref)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b)


def test_bf16_block_shapes_stay_few_whatever_the_batch():
    """oneDNN caches a kernel per matmul shape (~0.7 MB each): over every position count a
    training batch can have, the bf16 blocks take a few dozen shapes, not one per count."""
    table = torch.zeros(12101, 9)
    shapes = set()
    for T in range(1, 3000):
        score = L._Folded(torch.zeros(T, 9), table, torch.bfloat16)
        shapes |= {(r1 - r0, e - s) for r0, r1, s, e in score.grid(table.size(0))}
    assert len(shapes) <= 2 * L.ROW_TILE // L.ROW_PAD


@pytest.mark.parametrize("matmul", ["fp32", "bf16"])
@pytest.mark.parametrize("cache", [0, 1 << 30])
def test_softmax_cross_entropy_backward_twice(small_blocks, monkeypatch, matmul, cache):
    """retain_graph: a second backward of the same graph (the gradient weighters take per-task
    gradient norms this way) gives the same gradients, whether the blocks were kept or not."""
    monkeypatch.setattr(L, "CACHE_BYTES", cache)
    q, table, _ = _inputs()
    loss = L.softmax_cross_entropy(q, table, torch.arange(q.size(0)) % 40, 0.05, matmul)
    first = torch.autograd.grad(loss, (q, table), retain_graph=True)
    second = torch.autograd.grad(loss, (q, table))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_softmax_cross_entropy_bf16_runs_every_matmul_in_bf16(small_blocks, monkeypatch):
    """Forward and backward: every [positions x items] matmul takes bf16 operands (a path that
    silently ran in fp32 would still be close to fp32, so closeness alone cannot show it)."""
    q, table, _ = _inputs()
    table = F.normalize(table.detach(), dim=-1).requires_grad_()
    seen, mm = [], torch.mm

    def spy(a, b, *args, **kwargs):
        seen.append((a.dtype, b.dtype, a.size(0), b.size(1)))
        return mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mm", spy)
    L.softmax_cross_entropy(q, table, torch.arange(q.size(0)) % 40, 0.05, "bf16").backward()
    assert seen and all(a == b == torch.bfloat16 for a, b, _, _ in seen)
    # forward blocks [64 x items] (items per block != D here), backward [64 x D] and [items x D]
    widths = [n for _, _, _, n in seen]
    blocks = sum(n != q.size(1) for n in widths)
    assert blocks > 0 and widths.count(q.size(1)) == 2 * blocks


def test_softmax_cross_entropy_bf16_on_a_fitted_row_has_a_small_absolute_error():
    """A row whose target dominates: loss and gradient near zero in fp32; bf16's error there is
    small in absolute terms (bounded by the 2^-8 step per probability, scaled by 1 / tau)."""
    gen = torch.Generator().manual_seed(5)
    table = F.normalize(torch.randn(500, 16, generator=gen), dim=-1)
    q = table[:8].clone().requires_grad_()  # each row points at its own target
    table.requires_grad_()
    target, tau = torch.arange(8), 0.05
    exact = L.softmax_cross_entropy(q, table, target, tau)
    rounded = L.softmax_cross_entropy(q, table, target, tau, "bf16")
    assert float(exact.detach()) < 0.05
    assert abs(float(rounded.detach()) - float(exact.detach())) < 2**-7
    for a, b in zip(torch.autograd.grad(rounded, (q, table)), torch.autograd.grad(exact, (q, table))):
        assert float((a - b).abs().max()) < 2**-7 / tau / q.size(0)


@pytest.mark.parametrize("matmul", ["fp32", "bf16"])
def test_softmax_cross_entropy_of_no_positions_is_nan_not_a_crash(matmul):
    q = torch.zeros(0, 8, requires_grad=True)
    assert torch.isnan(L.softmax_cross_entropy(q, torch.randn(40, 8), torch.zeros(0, dtype=torch.long), 0.05, matmul))
