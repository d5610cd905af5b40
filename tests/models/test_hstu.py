import math

import pytest
import torch
import torch.nn.functional as F

from genrec.models.base import next_timestamps
from genrec.models.ops import Context
from genrec.models import HSTU, HSTUConfig


def _model(time_bias=True, **kw):
    torch.manual_seed(0)
    cfg = HSTUConfig(num_items=30, max_seq_len=8, embedding_dim=12, num_layers=2, num_heads=2, attention_dim=4, value_dim=6, dropout=0.0, time_bias=time_bias, **kw)
    model = HSTU(cfg).eval()
    with torch.no_grad():  # non-trivial biases so they matter in the comparisons
        for layer in model.layers:
            layer.rel_bias.pos_w.normal_(0, 0.5)
            if layer.rel_bias.ts_w is not None:
                layer.rel_bias.ts_w.normal_(0, 0.5)
    return model


def _loop_layer(layer, x, ts, qts):
    """Independent loop-based HSTU layer, written from the paper's equations (PAPERS.md §1.1)."""
    cfg = layer.cfg
    B, N, D = x.shape
    H, dqk, dv, L = cfg.num_heads, cfg.attention_dim, cfg.value_dim, cfg.max_seq_len
    W = layer.uvqk.weight  # [H(2dv+2dqk), D]
    out = torch.zeros_like(x)
    for b in range(B):
        for i in range(N):
            xi_norm = [F.layer_norm(x[b, t], (D,), eps=1e-6) for t in range(N)]
            proj = [F.silu(W @ xn) for xn in xi_norm]
            u_i = proj[i][: H * dv]
            heads = []
            for h in range(H):
                acc = torch.zeros(dv, dtype=x.dtype)
                scores, values = [], []
                for j in range(i + 1):  # causal, diagonal included
                    q = proj[i][2 * H * dv + h * dqk : 2 * H * dv + (h + 1) * dqk]
                    k = proj[j][2 * H * dv + H * dqk + h * dqk : 2 * H * dv + H * dqk + (h + 1) * dqk]
                    v = proj[j][H * dv + h * dv : H * dv + (h + 1) * dv]
                    s = torch.dot(q, k) + layer.rel_bias.pos_w[j - i + L - 1]
                    if layer.rel_bias.ts_w is not None:
                        delta = max(abs(int(qts[b, i]) - int(ts[b, j])), 1)
                        s = s + layer.rel_bias.ts_w[min(128, int(math.floor(math.log(delta) / 0.301)))]
                    if cfg.attention == "softmax":  # the ablation: softmax(q.k / sqrt(d_qk) + rab) over keys 0..i
                        scores.append(torch.dot(q, k) / math.sqrt(dqk) + (s - torch.dot(q, k)))
                        values.append(v)
                    else:
                        acc = acc + F.silu(s) / L * v
                if scores:
                    weights = torch.softmax(torch.stack(scores), 0)
                    acc = sum(w * v for w, v in zip(weights, values))
                heads.append(acc)
            a = torch.cat(heads)
            y = u_i * F.layer_norm(a, (H * dv,), eps=1e-6)
            out[b, i] = x[b, i] + layer.out(y)
    return out


@pytest.mark.parametrize("attention", ["pointwise", "softmax"])
@pytest.mark.parametrize("time_bias", [True, False])
def test_layer_matches_loop_reference(time_bias, attention):
    model = _model(time_bias, attention=attention)
    torch.manual_seed(1)
    x = torch.randn(2, 5, 12)
    ts = torch.cumsum(torch.randint(1, 100_000, (2, 5)), dim=1)
    qts = torch.cat([ts[:, 1:], ts[:, -1:] + 50], dim=1)
    layer = model.layers[0]
    buckets = layer.rel_bias.buckets(ts, qts)
    with torch.no_grad():
        fast, _ = layer(x, Context.causal(5, x.device), buckets)
        slow = _loop_layer(layer, x, ts, qts)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_causality_later_tokens_never_change_earlier_outputs():
    model = _model()
    items = torch.tensor([[3, 7, 9, 1, 4, 6]])
    ts = torch.tensor([[10, 200, 3000, 40000, 500000, 6000000]])
    qts = torch.cat([ts[:, 1:], ts[:, -1:]], 1)
    base = model.encode(items, ts, qts)
    items2, ts2, qts2 = items.clone(), ts.clone(), qts.clone()
    items2[0, 4:] = torch.tensor([11, 12])
    ts2[0, 4:] = torch.tensor([900000, 9000000])
    qts2[0, 4:] = torch.tensor([9000000, 9999999])
    changed = model.encode(items2, ts2, qts2)
    torch.testing.assert_close(base[:, :4], changed[:, :4])
    assert not torch.allclose(base[:, 4:], changed[:, 4:])


def test_padding_does_not_change_outputs():
    model = _model()
    items = torch.tensor([[3, 7, 9]])
    ts = torch.tensor([[10, 200, 3000]])
    u1 = model.user_vectors(items, ts, torch.tensor([5000]))
    u2 = model.user_vectors(torch.tensor([[3, 7, 9, 0, 0]]), torch.tensor([[10, 200, 3000, 0, 0]]), torch.tensor([5000]))
    torch.testing.assert_close(u1, u2)


def test_time_bias_uses_query_time():
    model = _model()
    items, ts = torch.tensor([[3, 7, 9]]), torch.tensor([[10, 200, 3000]])
    a = model.user_vectors(items, ts, torch.tensor([3001]))
    b = model.user_vectors(items, ts, torch.tensor([10**8]))
    assert not torch.allclose(a, b)


def test_requires_timestamps_when_time_bias_on():
    model = _model()
    with pytest.raises(ValueError, match="timestamps"):
        model.encode(torch.tensor([[1, 2]]))


def test_too_long_input_is_rejected():
    model = _model(time_bias=False)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.encode(torch.ones(1, 9, dtype=torch.long))


def test_unknown_attention_is_a_config_error():
    from genrec.errors import ConfigError

    with pytest.raises(ConfigError, match="model.attention"):
        HSTUConfig(num_items=3, attention="linear")


def _ragged_batch():
    torch.manual_seed(3)
    lengths = [8, 3, 1, 6]
    items = torch.zeros(4, 8, dtype=torch.long)
    ts = torch.zeros(4, 8, dtype=torch.long)
    for b, n in enumerate(lengths):
        items[b, :n] = torch.randint(1, 31, (n,))
        ts[b, :n] = torch.cumsum(torch.randint(1, 100_000, (n,)), 0)
        ts[b, n:] = ts[b, n - 1]
    qts = torch.cat([ts[:, 1:], ts[:, -1:] + 77], dim=1)
    return items, ts, qts, items != 0


@pytest.mark.parametrize("time_bias", [True, False])
def test_inference_on_real_tokens_only_matches_the_dense_path(time_bias):
    """Without autograd the per-token work of a padded batch runs on its real tokens only: every
    real position's output equals the dense (autograd) path's, and every row equals its own
    unpadded encoding."""
    model = _model(time_bias)
    items, ts, qts, real = _ragged_batch()
    args = (ts, qts) if time_bias else ()
    dense = model.encode(items, *args).detach()  # grad enabled: the dense path
    with torch.no_grad():
        packed = model.encode(items, *args)
        for b in range(items.size(0)):
            n = int(real[b].sum())
            alone = model.encode(items[b : b + 1, :n], *((ts[b : b + 1, :n], qts[b : b + 1, :n]) if time_bias else ()))
            torch.testing.assert_close(packed[b, :n], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[real], dense[real], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(packed).all()  # padding slots hold copies, never garbage


def test_inference_on_real_tokens_with_the_profile_token():
    torch.manual_seed(0)
    model = HSTU(HSTUConfig(num_items=30, max_seq_len=9, embedding_dim=8, num_layers=2, num_heads=2, dropout=0.0, time_bias=True,
                            user_features="token", user_attributes=["g=f", "g=m"], max_user_attributes=1)).eval()
    items, ts, qts, real = _ragged_batch()
    users = torch.tensor([[[1]], [[2]], [[0]], [[1]]])
    dense = model.encode(items, ts, qts, user_tokens=users).detach()
    with torch.no_grad():
        packed = model.encode(items, ts, qts, user_tokens=users)
    torch.testing.assert_close(packed[real], dense[real], atol=1e-5, rtol=1e-5)


def test_token_rows_only_for_right_padded_rows_with_padding():
    pos = lambda rows: Context.causal(rows.size(1), rows.device, valid=rows != 0).token_rows()  # noqa: E731
    real, source = pos(torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert real.tolist() == [0, 1, 2, 3] and source.tolist() == [0, 1, 2, 3, 3, 3]
    assert pos(torch.tensor([[5, 6], [7, 8]])) is None  # no padding: nothing to skip
    assert pos(torch.tensor([[5, 6], [0, 0]])) is None  # an empty row
    assert pos(torch.tensor([[0, 6], [7, 8]])) is None  # left padding: stays dense
    assert Context.causal(3, torch.device("cpu")).token_rows() is None


@pytest.mark.parametrize("attention", ["pointwise", "softmax"])
@pytest.mark.parametrize("time_bias", [True, False])
def test_user_vectors_run_the_last_layer_at_the_last_item_only(time_bias, attention):
    """Without autograd, user_vectors computes the final layer for each row's last item only
    (HSTULayer.forward_at): equal to the dense (autograd) encoding read at that item, padded or not."""
    model = _model(time_bias, attention=attention)
    items, ts, _, real = _ragged_batch()
    lengths = real.sum(1)
    query = torch.tensor([10**6, 5, 2 * 10**6, 7])  # request times (the time bias reads them at the last item)
    qts = next_timestamps(ts, lengths, query)
    args = (ts, qts) if time_bias else ()
    dense = model.encode(items, *args).detach()[torch.arange(4), lengths - 1]  # grad enabled: every layer at every token
    calls = []
    hook = model.layers[-1].register_forward_hook(lambda *a: calls.append(a))  # forward() of the last layer: not called
    with torch.no_grad():
        fast = model.user_vectors(items, ts if time_bias else None, query if time_bias else None)
        one = model.user_vectors(items[1:2, :3], ts[1:2, :3] if time_bias else None, query[1:2] if time_bias else None)
    hook.remove()
    assert not calls
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one[0], fast[1], atol=1e-5, rtol=1e-5)  # no padding at all: the same vector
    with torch.enable_grad():  # with autograd: the dense path, same vectors
        torch.testing.assert_close(model.user_vectors(items, ts if time_bias else None, query if time_bias else None).detach(),
                                   fast, atol=1e-5, rtol=1e-5)


def test_user_vectors_at_the_last_item_with_the_profile_token():
    torch.manual_seed(0)
    model = HSTU(HSTUConfig(num_items=30, max_seq_len=9, embedding_dim=8, num_layers=2, num_heads=2, dropout=0.0, time_bias=True,
                            user_features="token", user_attributes=["g=f", "g=m"], max_user_attributes=1)).eval()
    items, ts, _, real = _ragged_batch()
    lengths = real.sum(1)
    users = torch.tensor([[[1]], [[2]], [[0]], [[1]]])
    qts = next_timestamps(ts, lengths, ts[torch.arange(4), lengths - 1])
    dense = model.encode(items, ts, qts, user_tokens=users).detach()[torch.arange(4), lengths - 1]
    with torch.no_grad():
        fast = model.user_vectors(items, ts, user_tokens=users)
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-5)
