import pytest
import torch

from genrec.models import SASRec, SASRecConfig, build_model, HSTUConfig
from genrec.models.base import mask_items, next_timestamps


def test_mask_items_with_duplicates_and_padding():
    s = torch.zeros(2, 4)  # columns = item ids 3..6
    out = mask_items(s, torch.tensor([[3, 3, 0, 9], [6, 5, 5, 1]]), start=3, end=7)
    assert torch.isinf(out).tolist() == [[True, False, False, False], [False, False, True, True]]


def test_next_timestamps_puts_query_time_at_last_real_position():
    ts = torch.tensor([[1, 2, 3, 0], [5, 6, 0, 0]])
    out = next_timestamps(ts, torch.tensor([3, 2]), torch.tensor([9, 7]))
    assert out[0, :3].tolist() == [2, 3, 9] and out[1, :2].tolist() == [6, 7]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_topk_chunked_equals_full_sort_with_exclusions(chunk):
    torch.manual_seed(0)
    model = build_model(HSTUConfig(num_items=20, max_seq_len=5, embedding_dim=8, time_bias=False)).eval()
    user = torch.randn(3, 8)
    exclude = torch.tensor([[1, 2, 0], [5, 5, 20], [0, 0, 0]])
    scores, ids = model.topk(user, 6, exclude, chunk_size=chunk)
    full = model.score_items(user, 1, 21)
    for b in range(3):
        s = full[b].clone()
        for e in exclude[b].tolist():
            if e:
                s[e - 1] = float("-inf")
        ref = torch.topk(s, 6)
        assert ids[b].tolist() == (ref.indices + 1).tolist()
        torch.testing.assert_close(scores[b], ref.values)


@pytest.mark.parametrize("chunk", [2, 1000])
def test_topk_inside_an_item_range(chunk):
    torch.manual_seed(0)
    model = build_model(HSTUConfig(num_items=20, max_seq_len=5, embedding_dim=8, time_bias=False)).eval()
    user = torch.randn(2, 8)
    exclude = torch.tensor([[7, 2, 0], [0, 0, 0]])  # 2 is outside the range: ignored
    scores, ids = model.topk(user, 4, exclude, chunk_size=chunk, start=6, end=12)
    full = model.score_items(user, 6, 12)  # ids 6..11
    full[0, 7 - 6] = float("-inf")
    ref = torch.topk(full, 4)
    assert ids.tolist() == (ref.indices + 6).tolist()
    torch.testing.assert_close(scores, ref.values)
    _, ids = model.topk(user, 10, start=18)  # k above the range's size: the range, whole
    assert sorted(ids[0].tolist()) == [18, 19, 20]
    with pytest.raises(ValueError, match="item range"):
        model.topk(user, 3, start=5, end=22)


def test_topk_k_larger_than_catalogue():
    model = build_model(HSTUConfig(num_items=4, max_seq_len=5, embedding_dim=8, time_bias=False))
    _, ids = model.topk(torch.randn(1, 8), 10)
    assert sorted(ids[0].tolist()) == [1, 2, 3, 4]


def test_score_candidates_matches_score_items():
    model = build_model(HSTUConfig(num_items=10, max_seq_len=5, embedding_dim=8, time_bias=False))
    user = torch.randn(2, 8)
    cand = torch.tensor([[3, 1], [10, 2]])
    full = model.score_items(user, 1, 11)
    torch.testing.assert_close(model.score_candidates(user, cand), full.gather(1, cand - 1))


def test_sasrec_causal_and_padding_invariant():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=30, max_seq_len=8, embedding_dim=16, num_heads=2, dropout=0.0)).eval()
    a = model.encode(torch.tensor([[1, 2, 3, 4, 5]]))
    b = model.encode(torch.tensor([[1, 2, 3, 9, 9]]))
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])
    torch.testing.assert_close(model.user_vectors(torch.tensor([[1, 2, 3]])), model.user_vectors(torch.tensor([[1, 2, 3, 0, 0]])))


def test_empty_history_rejected():
    model = build_model(HSTUConfig(num_items=4, max_seq_len=5, embedding_dim=8, time_bias=False))
    with pytest.raises(ValueError, match="at least one item"):
        model.user_vectors(torch.tensor([[0, 0]]))


def test_mask_items_leaves_its_input_alone():
    s = torch.zeros(1, 3)
    mask_items(s, torch.tensor([[1, 2]]), start=1, end=4)
    assert s.tolist() == [[0.0, 0.0, 0.0]]


@pytest.mark.parametrize("features", ["none", "sum", "concat"])
def test_catalogue_vectors_follow_every_change_of_the_weights(features):
    """The no-grad scan's cached catalogue equals a fresh computation after an optimizer step, a
    load_state_dict and a new attribute table, and is reused while nothing changed."""
    torch.manual_seed(0)
    extra = {} if features == "none" else {"item_features": features, "num_attribute_tokens": 5, "max_item_attributes": 2}
    model = build_model(HSTUConfig(num_items=12, max_seq_len=5, embedding_dim=8, time_bias=False, **extra)).eval()
    if features != "none":
        model.load_item_attributes(torch.randint(0, 6, (13, 2)))

    def fresh() -> torch.Tensor:
        with torch.enable_grad():
            return model.item_vectors(start=0).detach()  # the autograd path never reads the cache

    user = torch.randn(2, 8)
    with torch.no_grad():
        first = model.catalogue_vectors()
        assert model.catalogue_vectors() is first  # reused
        torch.testing.assert_close(first, fresh())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.item_vectors(torch.tensor([[1, 2, 3]])).sum().backward()
    if features != "none":
        model.score_items(user).sum().backward()  # the fused side gets gradients too
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(model.catalogue_vectors(), fresh())
        scores, ids = model.topk(user, 12)
        torch.testing.assert_close(scores, (user @ fresh()[1:].T).sort(dim=1, descending=True).values)
    other = build_model(model.config)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.catalogue_vectors(), fresh())
    if features != "none":
        model.load_item_attributes(torch.randint(0, 6, (13, 2)))
        with torch.no_grad():
            torch.testing.assert_close(model.catalogue_vectors(), fresh())
    model.double()  # same parameter objects and versions, new storage and dtype
    with torch.no_grad():
        assert model.catalogue_vectors().dtype == torch.float64
        torch.testing.assert_close(model.catalogue_vectors(), fresh())
        model.item_embedding.weight.data = torch.randn_like(model.item_embedding.weight)  # swapped storage
        torch.testing.assert_close(model.catalogue_vectors(), fresh())
    model.half().double()  # a round trip may reuse the old address: .to drops the cache
    with torch.no_grad():
        torch.testing.assert_close(model.catalogue_vectors(), fresh())
    model.train()  # training mode: dropped and never kept (a fused optimizer steps without a new version)
    assert model._catalogue_cache is None
    with torch.no_grad():
        model.catalogue_vectors()
        model.item_embedding.weight.data.copy_(torch.randn_like(model.item_embedding.weight))  # no new version
        torch.testing.assert_close(model.catalogue_vectors(), fresh())
    assert model._catalogue_cache is None


def test_weights_made_under_inference_mode_still_serve():
    """Inference tensors have no version counter: the weight caches compute, and never keep."""
    with torch.inference_mode():
        model = build_model(HSTUConfig(num_items=12, max_seq_len=5, embedding_dim=8, time_bias=False)).eval()
        scores, ids = model.topk(model.user_vectors(torch.tensor([[1, 2, 0], [3, 4, 5]])), 3)
    assert ids.shape == (2, 3) and torch.isfinite(scores).all()
    assert model._catalogue_cache is None


def test_topk_ranks_non_finite_scores_last_on_the_fast_path():
    model = build_model(HSTUConfig(num_items=5, max_seq_len=5, embedding_dim=4, time_bias=False, l2_normalize=False)).eval()
    with torch.no_grad():
        model.item_embedding.weight[2] = float("nan")
        scores, ids = model.topk(torch.ones(1, 4), 5)
    assert ids[0, -1].item() == 2 and scores[0, -1].item() == float("-inf")
