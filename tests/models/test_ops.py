import dataclasses
import math

import torch

from genrec.models.ops import Context, RelativeBias, softmax_attention, softmax_attention_reference, time_buckets


def test_time_bucket_values():
    ts = torch.tensor([[0, 0, 0, 0, 0, 0]])
    q = torch.tensor([[0, 1, 2, 10, 3600, 10**12]])
    b = time_buckets(q, ts, num_buckets=128, divisor=0.301)[0, :, 0]
    # |dt| clamped at 1 -> ln 1 = 0; ln 2 / .301 = 2.30 -> 2; ln 10 / .301 = 7.65 -> 7;
    # ln 3600 / .301 = 27.2 -> 27; ln 1e12 / .301 = 91.8 -> 91
    assert b.tolist() == [0, 0, 2, 7, 27, 91]
    # ln(2**62) / .301 = 142.8 -> clamped to the last bucket
    assert time_buckets(torch.tensor([[2**62]]), torch.tensor([[0]]), 128, 0.301).item() == 128
    assert time_buckets(torch.tensor([[5]]), torch.tensor([[9]]), 128, 0.301).item() == math.floor(math.log(4) / 0.301)


def test_relative_position_bias_indexing():
    rb = RelativeBias(max_seq_len=4, position=True, time=False, num_buckets=8, divisor=0.301)
    with torch.no_grad():
        rb.pos_w.copy_(torch.arange(7, dtype=torch.float))  # value = offset j - i + 3
    pos = torch.arange(3).unsqueeze(0)
    bias = rb(pos, pos, None)[0]
    for i in range(3):
        for j in range(3):
            assert bias[i, j].item() == j - i + 3


def test_softmax_attention_matches_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    torch.testing.assert_close(softmax_attention(q, k, v), softmax_attention_reference(q, k, v), atol=1e-5, rtol=1e-5)


def test_blocked_causal_hstu_attention_matches_reference_values_and_gradients():
    import pytest

    from genrec.models.ops import hstu_attention, hstu_attention_causal_blocked, hstu_attention_reference

    g = torch.Generator().manual_seed(0)
    for N, block in ((37, 8), (64, 64), (100, 33)):
        q, k, v = (torch.randn(2, 3, N, 5, generator=g, requires_grad=True) for _ in range(3))
        bias = torch.randn(1, N, N, generator=g, requires_grad=True)
        ref = hstu_attention_reference(q, k, v, bias, 50.0)
        out = hstu_attention_causal_blocked(q, k, v, bias, 50.0, block)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v, bias))
        grads = torch.autograd.grad(out.square().sum(), (q, k, v, bias))
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        # the dispatcher takes the blocked path past block_size and agrees too, also with a bias callable
        torch.testing.assert_close(hstu_attention(q, k, v, bias, 50.0, block_size=block), ref, atol=1e-5, rtol=1e-5)
        by_rows = lambda s, e: bias[:, s:e, :e]  # noqa: E731
        torch.testing.assert_close(hstu_attention(q, k, v, by_rows, 50.0, block_size=block), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hstu_attention(q, k, v, by_rows, 50.0, block_size=1000), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError):  # sanity: the comparison can fail
        torch.testing.assert_close(hstu_attention_causal_blocked(q, k, v, None, 50.0, 8), ref)


def test_causal_zeroing_equals_an_explicit_causal_mask():
    """mask=None zeroes the upper triangle by tril; the explicit-mask path (masked_fill) must agree
    in values and gradients, with and without autograd."""
    from genrec.models.ops import causal_mask, hstu_attention_inference, hstu_attention_reference

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 9, 4, generator=g, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 9, 9, generator=g)
    explicit = causal_mask(9, q.device).unsqueeze(0).expand(2, 9, 9)
    want = hstu_attention_reference(q, k, v, bias, 9.0, explicit)
    got = hstu_attention_reference(q, k, v, bias, 9.0)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), (q, k, v)), torch.autograd.grad(want.sum(), (q, k, v))):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(hstu_attention_inference(q, k, v, bias, 9.0), want, atol=1e-6, rtol=1e-5)


def test_inference_hstu_attention_matches_reference():
    """Without autograd the dispatcher takes the in-place path: same values as the reference,
    causal or with a given mask, with and without a bias."""
    from genrec.models.ops import hstu_attention, hstu_attention_inference, hstu_attention_reference

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 12, 4, generator=g) for _ in range(3))
    bias = torch.randn(1, 12, 12, generator=g)
    mask = torch.rand(3, 12, 12, generator=g) > 0.3
    for b, m in ((bias, None), (None, None), (bias, mask), (None, mask)):
        ref = hstu_attention_reference(q, k, v, b, 12.0, m)
        torch.testing.assert_close(hstu_attention_inference(q, k, v, b, 12.0, m), ref, atol=1e-6, rtol=1e-5)
        with torch.inference_mode():
            torch.testing.assert_close(hstu_attention(q, k, v, b, 12.0, m), ref, atol=1e-6, rtol=1e-5)
    bias.requires_grad_(True)  # a trainable bias alone (the inputs frozen) still gets its gradient
    out = hstu_attention(q, k, v, bias, 12.0)
    assert out.requires_grad
    torch.testing.assert_close(out, hstu_attention_reference(q, k, v, bias, 12.0))
    (grad,) = torch.autograd.grad(out.square().sum(), bias)
    (want,) = torch.autograd.grad(hstu_attention_reference(q, k, v, bias, 12.0).square().sum(), bias)
    torch.testing.assert_close(grad, want)
    torch.manual_seed(0)  # attention dropout in training mode: the reference path even without gradients
    with torch.no_grad():
        dropped = hstu_attention(q, k, v, bias, 12.0, dropout=0.5, training=True)
    torch.manual_seed(0)
    with torch.no_grad():
        torch.testing.assert_close(dropped, hstu_attention_reference(q, k, v, bias, 12.0, dropout=0.5, training=True))


def test_position_table_without_autograd_follows_the_weights():
    """causal_block without autograd reads views of one table per weight version: equal to the
    autograd path for every block, rebuilt after an in-place change, a longer length and a dtype move."""
    from genrec.models.ops import RelativeBias

    torch.manual_seed(0)
    rb = RelativeBias(12, position=True, time=False, num_buckets=4, divisor=1.0).eval()

    def check(n):
        for s, e in ((0, n), (3, n), (2, 5)):
            want = rb.causal_block(s, e).detach()  # grad enabled: the autograd path
            with torch.no_grad():
                got = rb.causal_block(s, e)
            torch.testing.assert_close(got, want)
            assert got.dtype == rb.pos_w.dtype

    check(6)
    with torch.no_grad():
        table = rb._position_table(6)
        assert rb._position_table(4) is table  # reused for shorter lengths
        rb.pos_w.mul_(-2.0)
    check(6)
    check(12)  # longer than the table built so far
    rb.double()
    check(12)
    rb.half().float()  # a round trip may put the new storage at the old address: .to drops the table
    assert rb._positions is None
    check(12)
    rb.train()  # training mode: dropped, and never kept (fused optimizers step without a new version)
    assert rb._positions is None
    with torch.no_grad():
        rb.causal_block(0, 5)
    assert rb._positions is None
    with torch.inference_mode():  # weights made as inference tensors (no version counter): computed, never kept
        frozen = RelativeBias(6, position=True, time=False, num_buckets=4, divisor=1.0).eval()
        torch.testing.assert_close(frozen.causal_block(0, 4), frozen.causal_block(0, 4))
        assert frozen._positions is None


def test_toeplitz_bias_matches_the_gather_in_values_and_gradient():
    from genrec.models.ops import toeplitz_bias

    L, N = 9, 6
    w = torch.randn(2 * L - 1, dtype=torch.float64, requires_grad=True)
    idx = torch.arange(N)
    ref = w[idx.unsqueeze(0) - idx.unsqueeze(1) + L - 1]
    out = toeplitz_bias(w, N, N, L)
    torch.testing.assert_close(out, ref)
    g = torch.randn(N, N, dtype=torch.float64)
    (gw_ref,) = torch.autograd.grad((ref * g).sum(), w)
    (gw,) = torch.autograd.grad((out * g).sum(), w)
    torch.testing.assert_close(gw, gw_ref)
    # by hand: the weight of offset j - i = 0 collects the diagonal, offset N - 1 the corner (0, N-1)
    assert gw[L - 1].item() == torch.diagonal(g).sum().item() and gw[L - 1 + N - 1].item() == g[0, N - 1].item()
    assert torch.autograd.gradcheck(lambda x: toeplitz_bias(x, N, N, L), (w,))
    # a block of rows 2..4 over keys 0..4 is the same slice of the full matrix, gradient included
    blk = toeplitz_bias(w, 3, 5, L, row0=2)
    torch.testing.assert_close(blk, ref[2:5, :5])
    assert torch.autograd.gradcheck(lambda x: toeplitz_bias(x, 3, 5, L, 2), (w,))


def test_context_memo_keeps_only_for_a_reused_context_without_autograd():
    """A kept bias lives as long as its context: only a context that serves several calls keeps
    one, never under autograd (each call needs its own graph), and a copy starts empty."""
    calls = []

    def make():
        calls.append(1)
        return torch.ones(1)

    one_call = Context.causal(4, torch.device("cpu"))
    shared = dataclasses.replace(one_call, reuse=True)
    with torch.no_grad():
        one_call.memo("k", make), one_call.memo("k", make)
        assert len(calls) == 2  # a one-call context keeps nothing
        shared.memo("k", make), shared.memo("k", make)
        assert len(calls) == 3
        dataclasses.replace(shared).memo("k", make)  # a copy has its own, empty memo
        assert len(calls) == 4
    shared.memo("k", make)  # with autograd: made again
    assert len(calls) == 5

