"""Every backbone behind the same contract: causality, padding invariance, KV-cache parity,
M-FALCON parity in the interleaved model, and the pieces that differ (rotary, SASRec variants)."""

import math

import pytest
import torch
import torch.nn.functional as F

from genrec.models import MODELS, GenerativeRecommender, HeadConfig, build_model, model_config_from_dict
from genrec.models.base import next_timestamps
from genrec.models.layers import rotary
from genrec.models.ops import Context

VARIANTS = {
    "hstu": {"name": "hstu"},
    "hstu-no-rab": {"name": "hstu", "position_bias": False, "time_bias": False},
    "hstu-softmax": {"name": "hstu", "attention": "softmax"},
    "hstu-softmax-no-rab": {"name": "hstu", "attention": "softmax", "position_bias": False, "time_bias": False},
    "sasrec": {"name": "sasrec"},
    "sasrec-pre-ln": {"name": "sasrec", "residual": "pre_ln"},
    "sasrec-rab": {"name": "sasrec", "position_bias": True, "time_bias": True},
    "sasrec-pre-ln-rab": {"name": "sasrec", "residual": "pre_ln", "position_bias": True, "time_bias": True},
    "gpt": {"name": "gpt"},
    "llama": {"name": "llama"},
}


def _build(variant: str, max_seq_len: int = 12, num_layers: int = 2):
    torch.manual_seed(0)
    cfg = model_config_from_dict({**VARIANTS[variant], "num_items": 30, "max_seq_len": max_seq_len, "embedding_dim": 16,
                                  "num_layers": num_layers, "num_heads": 2, "dropout": 0.0})
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial relative biases, so they matter in the comparisons
        for name, p in model.named_parameters():
            if name.endswith(("pos_w", "ts_w")):
                p.normal_(0, 0.5)
    return model


def _seq():
    items = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 0, 0]])
    ts = torch.cumsum(torch.randint(1, 100_000, (2, 6), generator=torch.Generator().manual_seed(1)), 1) * (items != 0)
    qts = torch.cat([ts[:, 1:], ts[:, -1:] + 100], 1)
    return items, ts, qts


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_and_padding_invariant(variant):
    m = _build(variant)
    items, ts, qts = _seq()
    with torch.no_grad():
        h = m.encode(items, ts, qts)
        changed = items.clone()
        changed[0, 4:] = torch.tensor([20, 21])
        h2 = m.encode(changed, ts, qts)
        short = m.encode(items[1:, :3], ts[1:, :3], qts[1:, :3])
    assert h.shape == (2, 6, 16)
    torch.testing.assert_close(h[0, :4], h2[0, :4])  # later items do not leak backwards
    assert (h[0, 4:] - h2[0, 4:]).abs().max() > 1e-4
    torch.testing.assert_close(h[1, :3], short[0], atol=1e-5, rtol=1e-5)  # padding changes nothing


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
def test_user_vectors_equal_the_encoding_at_the_last_item(variant, num_layers):
    """user_vectors without autograd (every backbone runs its last layer at the last item only)
    equals the dense encoding (with autograd) read at each row's last item, padded or not."""
    m = _build(variant, num_layers=num_layers)
    items, ts, _ = _seq()
    lengths = (items != 0).sum(1)
    query = torch.tensor([10**7, 10**8])
    qts = next_timestamps(ts, lengths, query)
    dense = m.encode(items, ts, qts).detach()[torch.arange(2), lengths - 1]  # grad enabled: every layer at every token
    last = (m.layers if variant.startswith("hstu") else m.blocks)[-1]
    calls = []
    hook = last.register_forward_hook(lambda *a: calls.append(a))  # its forward() at every token: not called
    with torch.no_grad():
        fast = m.user_vectors(items, ts, query)
        alone = m.user_vectors(items[1:, :3], ts[1:, :3], query[1:])
    hook.remove()
    assert not calls
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], fast[1], atol=1e-5, rtol=1e-5)


def test_user_vectors_read_a_replaced_or_redefined_transduce():
    """The last-item shortcut never bypasses a transduce that differs from the one written beside
    it: an instance's compiled (replaced) transduce, or a subclass that re-defines transduce only."""
    items, ts, _ = _seq()
    m = _build("hstu")
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        return type(m).transduce(m, *args, **kwargs)

    with torch.no_grad():
        want = m.user_vectors(items, ts)
        m.transduce = wrapped  # what compile_backbone does with compile_fn
        torch.testing.assert_close(m.user_vectors(items, ts), want)
    assert calls  # evaluation ran the replaced (compiled) transduce

    class Doubled(type(m)):
        def transduce(self, x, ctx, cache=None, layer_outputs=None):
            h, kv = super().transduce(x, ctx, cache, layer_outputs)
            return 2 * h, kv

    d = _build("hstu")
    d.__class__ = Doubled
    d.config.l2_normalize = False  # (else the doubling would cancel)
    lengths = (items != 0).sum(1)
    qts = next_timestamps(ts, lengths, ts[torch.arange(2), lengths - 1])
    with torch.no_grad():
        torch.testing.assert_close(d.user_vectors(items, ts), d.encode(items, ts, qts)[torch.arange(2), lengths - 1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_continues_the_sequence(variant):
    m = _build(variant)
    items, ts, qts = _seq()
    x = m.embed_items(items[:1])
    t, qt = (ts[:1], qts[:1]) if m.uses_timestamps else (None, None)
    with torch.no_grad():
        full, _ = m.transduce(x, Context.causal(6, x.device, qt, t))
        head, cache = m.transduce(x[:, :4], Context.causal(4, x.device, None if qt is None else qt[:, :4], None if t is None else t[:, :4]))
        pos = torch.arange(6).unsqueeze(0)
        ctx = Context(torch.ones(1, 2, 6, dtype=torch.bool).tril(4), pos[:, 4:], pos, None if qt is None else qt[:, 4:], t)
        tail, _ = m.transduce(x[:, 4:], ctx, cache)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["gpt", "llama", "sasrec-pre-ln-rab"])
def test_m_falcon_parity_for_new_backbones(variant):
    m = GenerativeRecommender(_build(variant, max_seq_len=21), HeadConfig(("click",), ("binary",))).eval()
    items = torch.tensor([[3, 4, 5, 6, 0, 0], [7, 8, 9, 10, 11, 12]])
    labels = torch.rand(2, 6, 1, generator=torch.Generator().manual_seed(2)) * (items != 0).unsqueeze(-1)
    ts = torch.cumsum(torch.full((2, 6), 3600), 1) * (items != 0)
    cand = torch.randint(1, 31, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = m.rank(items, labels, cand, ts, ts.max(1).values + 60, micro_batch=3)
        slow = m.rank_one_by_one(items, labels, cand, ts, ts.max(1).values + 60)
    assert (fast - slow).abs().max().item() < 1e-5


def test_rotary_scores_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    def score(i, j):
        return (rotary(q, torch.tensor([[i]])) * rotary(k, torch.tensor([[j]]))).sum().item()
    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    # norm preserved, position 0 is the identity
    torch.testing.assert_close(rotary(q, torch.tensor([[0]])), q)
    assert rotary(q, torch.tensor([[7]])).norm().item() == pytest.approx(q.norm().item(), rel=1e-6)


def test_llama_block_matches_hand_written_equations():
    m = _build("llama")
    blk = m.blocks[0]
    x = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out, _ = blk(x, Context.causal(4, x.device))
        # independent: RMSNorm -> per-head rotary softmax attention -> SwiGLU
        def rms(t, w):
            return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w
        h = rms(x, blk.attn_norm.weight)
        q, k, v = (h @ w.T for w in blk.attn.qkv.weight.split(16))
        heads = []
        for hd in range(2):
            sl = slice(8 * hd, 8 * hd + 8)
            qh, kh = q[0, :, sl], k[0, :, sl]
            ang = torch.arange(4.0).unsqueeze(1) * 10000 ** (-torch.arange(0, 8, 2) / 8)  # [4 4]
            def rot(t):
                a, b = t[:, :4], t[:, 4:]
                return torch.cat([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], 1)
            s = rot(qh) @ rot(kh).T / math.sqrt(8)
            s = s.masked_fill(~torch.ones(4, 4, dtype=torch.bool).tril(), float("-inf"))
            heads.append(s.softmax(-1) @ v[0, :, sl])
        x1 = x + torch.cat(heads, 1) @ blk.attn.proj.weight.T
        g, u = (rms(x1, blk.mlp_norm.weight) @ blk.mlp.gate_up.weight.T).chunk(2, -1)
        ref = x1 + (F.silu(g) * u) @ blk.mlp.down.weight.T
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_sasrec_residual_modes_differ_as_documented():
    orig, pre = _build("sasrec"), _build("sasrec-pre-ln")
    pre.load_state_dict(orig.state_dict())  # same weights, only the wiring differs
    x = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(5))
    blk_o, blk_p = orig.blocks[0], pre.blocks[0]
    ctx = Context.causal(5, x.device)
    with torch.no_grad():
        out_p, _ = blk_p(x, ctx)
        h = blk_p.attn_norm(x)
        q, k, v = (F.linear(h, w, b) for w, b in zip(blk_p.qkv.weight.split(16), blk_p.qkv.bias.split(16)))
        sh = lambda t: t.view(1, 5, 2, 8).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(sh(q), sh(k), sh(v), is_causal=True).transpose(1, 2).reshape(1, 5, 16)
        x1 = x + blk_p.proj(a)
        ref = x1 + blk_p.ffn(blk_p.ffn_norm(x1))
        out_o, _ = blk_o(x, ctx)
    torch.testing.assert_close(out_p, ref, atol=1e-5, rtol=1e-5)
    assert (out_o - out_p).abs().max() > 1e-3


def test_every_registered_backbone_builds_from_config():
    for name in ("hstu", "sasrec", "gpt", "llama"):
        cfg = MODELS[name][0](num_items=5)
        assert build_model(cfg).encode(torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), torch.tensor([[2, 3]])).shape == (1, 2, 64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_rows_equal_separate_sequences(variant):
    m = _build(variant)
    g = torch.Generator().manual_seed(6)
    seqs = [torch.randint(1, 31, (n,), generator=g) for n in (4, 2, 3)]
    times = [torch.cumsum(torch.randint(1, 50_000, (n + 1,), generator=g), 0) for n in (4, 2, 3)]
    items = torch.cat(seqs).unsqueeze(0)  # one row: 4 + 2 + 3 tokens, then 1 padding
    items = torch.cat([items, torch.zeros(1, 1, dtype=torch.long)], 1)
    segments = torch.tensor([[1, 1, 1, 1, 2, 2, 3, 3, 3, 0]])
    ts = torch.cat([t[:-1] for t in times] + [torch.zeros(1, dtype=torch.long)]).unsqueeze(0)
    qts = torch.cat([t[1:] for t in times] + [torch.zeros(1, dtype=torch.long)]).unsqueeze(0)
    with torch.no_grad():
        packed = m.encode(items, ts, qts, segments)[0]
        col = 0
        for s, t in zip(seqs, times):
            alone = m.encode(s.unsqueeze(0), t[:-1].unsqueeze(0), t[1:].unsqueeze(0))[0]
            torch.testing.assert_close(packed[col : col + len(s)], alone, atol=1e-5, rtol=1e-5)
            col += len(s)
    assert torch.isfinite(packed).all()  # the padding token sees itself, never an empty row


def test_packed_context_positions_restart_per_sequence():
    ctx = Context.packed(torch.tensor([[1, 1, 1, 2, 2, 0]]))
    assert ctx.q_pos.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert ctx.mask[0, 4].tolist() == [False, False, False, True, True, False]
    assert ctx.mask[0, 5].tolist() == [False] * 5 + [True]
