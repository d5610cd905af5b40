"""Interleaved item/action model: token layout, causality, M-FALCON parity and candidate isolation."""

import pytest
import torch

from genrec.models import DIN, DINConfig, HSTU, HSTUConfig, SASRec, SASRecConfig
from genrec.models.generative import GenerativeRecommender, HeadConfig


def _model(backbone: str, time_bias: bool = True) -> GenerativeRecommender:
    """``hstu`` / ``hstu-softmax`` (HSTU's layer with softmax attention), ``sasrec`` (no bias) or
    ``sasrec-bias`` (SASRec with HSTU's relative position and time bias). ``time_bias`` is HSTU's
    only: the SASRec variants are fixed."""
    torch.manual_seed(0)
    if backbone.startswith("hstu"):
        attention = "softmax" if backbone == "hstu-softmax" else "pointwise"
        bb = HSTU(HSTUConfig(num_items=30, max_seq_len=21, embedding_dim=16, num_heads=2, num_layers=2,
                             time_bias=time_bias, attention=attention))
        biases = [layer.rel_bias for layer in bb.layers]
    else:
        bias = backbone == "sasrec-bias"
        bb = SASRec(SASRecConfig(num_items=30, max_seq_len=21, embedding_dim=16, num_heads=2, num_layers=2,
                                 position_bias=bias, time_bias=bias))
        biases = [block.rel_bias for block in bb.blocks if block.rel_bias is not None]
    for rel_bias in biases:  # make the biases matter
        with torch.no_grad():
            rel_bias.pos_w.normal_(0, 0.5)
            if rel_bias.ts_w is not None:
                rel_bias.ts_w.normal_(0, 0.5)
    return GenerativeRecommender(bb, HeadConfig(("click", "watch"), ("binary", "regression"))).eval()


def _history():
    torch.manual_seed(1)
    items = torch.tensor([[3, 4, 5, 6, 0, 0], [7, 8, 9, 10, 11, 12]])
    labels = torch.rand(2, 6, 2) * (items != 0).unsqueeze(-1)
    ts = torch.cumsum(torch.randint(1, 100_000, (2, 6)), 1) * (items != 0)
    return items, labels, ts, ts.max(1).values + 500


def test_tokens_interleave_items_and_actions():
    m = _model("hstu")
    items, labels, _, _ = _history()
    x = m.tokens(items, labels)
    assert x.shape == (2, 12, 16)
    torch.testing.assert_close(x[:, 0::2], m.backbone.item_embedding(items) * 4.0)  # × √16
    # default action token: the interaction's item embedding + its feedback embedding, both × √D
    torch.testing.assert_close(x[:, 1::2], (m.backbone.item_embedding(items) + m.action_proj(labels)) * 4.0)


def test_action_tokens_read_feedback_standardised_per_task():
    bb = HSTU(HSTUConfig(num_items=30, max_seq_len=21, embedding_dim=16, num_heads=2, num_layers=2))
    head = HeadConfig(("like", "rating"), ("binary", "regression"), 8, feedback_shift=(0.0, 3.5), feedback_scale=(1.0, 2.0))
    m = GenerativeRecommender(bb, head)
    items, labels, _, _ = _history()
    want = (m.backbone.item_embedding(items) + m.action_proj(labels * torch.tensor([1.0, 0.5]) - torch.tensor([0.0, 1.75]))) * 4.0
    torch.testing.assert_close(m.tokens(items, labels)[:, 1::2], want)
    assert not {"feedback_shift", "feedback_scale"} & set(m.state_dict())  # from head.json: old state dicts still load
    with pytest.raises(Exception, match="one value per task"):
        HeadConfig(("like", "rating"), ("binary", "regression"), feedback_shift=(0.0,), feedback_scale=(1.0,))
    with pytest.raises(Exception, match="scales > 0"):
        HeadConfig(("like",), ("binary",), feedback_shift=(0.0,), feedback_scale=(0.0,))


def test_feedback_only_action_tokens_are_the_first_design():
    bb = HSTU(HSTUConfig(num_items=30, max_seq_len=21, embedding_dim=16, num_heads=2, num_layers=2))
    m = GenerativeRecommender(bb, HeadConfig(("like", "watch"), ("binary", "regression"), 8, action_token="feedback"))
    items, labels, _, _ = _history()
    torch.testing.assert_close(m.tokens(items, labels)[:, 1::2], m.action_proj(labels))


@pytest.mark.parametrize("backbone", ["hstu", "sasrec"])
def test_m_falcon_equals_one_pass_per_candidate(backbone):
    m = _model(backbone)
    items, labels, ts, qt = _history()
    cand = torch.randint(1, 31, (2, 11))
    with torch.no_grad():
        fast = m.rank(items, labels, cand, ts, qt, micro_batch=4)
        slow = m.rank_one_by_one(items, labels, cand, ts, qt)
    assert fast.shape == (2, 11, 2)
    assert (fast - slow).abs().max().item() < 1e-5


def test_no_candidate_sees_another():
    m = _model("hstu")
    items, labels, ts, qt = _history()
    cand = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    other = cand.clone()
    other[:, 1:] = torch.tensor([[20, 21, 22], [23, 24, 25]])
    with torch.no_grad():
        a = m.rank(items, labels, cand, ts, qt, micro_batch=4)
        b = m.rank(items, labels, other, ts, qt, micro_batch=4)
        c = m.rank(items, labels, cand[:, :1], ts, qt)
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[:, 0], c[:, 0], atol=1e-6, rtol=0)


def test_no_position_sees_the_future():
    m = _model("hstu")
    items, labels, ts, qt = _history()
    with torch.no_grad():
        h1 = m.encode_history(items, labels, ts, qt).hidden
        items2, labels2 = items.clone(), labels.clone()
        items2[1, 4:], labels2[1, 3:] = torch.tensor([1, 2]), 1.0 - labels2[1, 3:]
        h2 = m.encode_history(items2, labels2, ts, qt).hidden
    # row 1 tokens 0..5 (items 0..2 and their actions) are untouched; token 6 (item 3) too, its
    # action (token 7) changed
    torch.testing.assert_close(h1[1, :7], h2[1, :7], atol=1e-6, rtol=0)
    assert (h1[1, 7] - h2[1, 7]).abs().max() > 1e-4


def test_user_vector_is_the_last_action_token_and_needs_labels():
    m = _model("sasrec")
    items, labels, ts, qt = _history()
    with torch.no_grad():
        u = m.user_vectors(items, ts, qt, labels)
        h = m.encode_history(items, labels, ts, qt).hidden
    torch.testing.assert_close(u[0], torch.nn.functional.normalize(h[0, 7], dim=-1))
    with pytest.raises(ValueError, match="feedback"):
        m.user_vectors(items, ts, qt, None)


def test_din_scores_depend_on_the_visible_history_only():
    torch.manual_seed(0)
    din = DIN(DINConfig(num_items=30, max_seq_len=8, embedding_dim=8, dropout=0.0)).eval()
    items = torch.tensor([[3, 4, 5, 0]])
    labels = torch.tensor([[[1.0], [0.0], [1.0], [0.0]]])
    cand = torch.tensor([[7, 8]])
    with torch.no_grad():
        full = din.rank(items, labels, cand)
        padded_differently = din.rank(torch.tensor([[3, 4, 5]]), labels[:, :3], cand)
        vis = torch.tensor([[[True, False, False, False], [True, True, True, False]]])
        masked = din.rank(items, labels, cand, visible=vis)
        first_only = din.rank(items[:, :1], labels[:, :1], cand[:, :1])
    assert full.shape == (1, 2, 1)
    torch.testing.assert_close(full, padded_differently)
    torch.testing.assert_close(masked[0, 0], first_only[0, 0])
    torch.testing.assert_close(masked[0, 1], full[0, 1])


@pytest.mark.parametrize("backbone", ["hstu", "hstu-softmax", "sasrec", "sasrec-bias"])
def test_next_slot_outputs_equal_m_falcon_on_each_prefix(backbone):
    """The enhancer's M-FALCON over positions (one shared context for every pool item; without
    autograd its biases computed once): pool item p at slot j scores as ``rank`` of that item
    after the first j+1 history items, with item j+1's time as the request time."""
    m = _model(backbone)
    items, labels, ts, _ = _history()
    torch.manual_seed(2)
    n1, P = items.size(1) - 1, 3
    pool = torch.randint(1, 31, (2, n1, P))
    with torch.no_grad():
        enc = m.encode_history(items, labels, ts)
        got = m.next_slot_outputs(enc, pool, ts)  # [B n-1 P A]
        for b, n in ((0, 4), (1, 6)):
            for j in range(n - 1):
                want = m.rank(items[b : b + 1, : j + 1], labels[b : b + 1, : j + 1], pool[b : b + 1, j],
                              ts[b : b + 1, : j + 1], ts[b : b + 1, j + 1])  # [1 P A]
                torch.testing.assert_close(got[b, j], want[0], atol=1e-5, rtol=1e-4)
    with_grad = m.next_slot_outputs(m.encode_history(items, labels, ts), pool, ts)  # no memo: every pass its own biases
    torch.testing.assert_close(with_grad.detach(), got, atol=1e-5, rtol=1e-4)


def test_next_slot_outputs_computes_each_layers_bias_once_without_autograd():
    """The P pool passes share one context: without autograd each layer's relative bias is made
    once (not once per pool item); with autograd every pass makes its own (each needs its graph)."""
    m = _model("hstu")
    items, labels, ts, _ = _history()
    pool = torch.randint(1, 31, (2, items.size(1) - 1, 3))
    calls = []
    hooks = [layer.rel_bias.register_forward_hook(lambda *_: calls.append(1)) for layer in m.backbone.layers]
    try:
        with torch.no_grad():
            enc = m.encode_history(items, labels, ts)
            calls.clear()
            m.next_slot_outputs(enc, pool, ts)
        assert len(calls) == len(m.backbone.layers)
        enc = m.encode_history(items, labels, ts)
        calls.clear()
        m.next_slot_outputs(enc, pool, ts)
        assert len(calls) == 3 * len(m.backbone.layers)
    finally:
        for hook in hooks:
            hook.remove()
