import math

import pytest
import torch
import torch.nn.functional as F

from genrec.config import TrainConfig
from genrec.errors import ConfigError
from genrec.data.batches import TrainBatch
from genrec.models import HSTUConfig, build_model
from genrec.training.losses import (LOSSES, RetrievalLoss, full_softmax_loss, in_batch_loss, mixed_loss, retrieval_loss,
                                   sampled_softmax_loss)


def _setup():
    torch.manual_seed(0)
    model = build_model(HSTUConfig(num_items=6, max_seq_len=4, embedding_dim=8, time_bias=False, dropout=0.0))
    q = F.normalize(torch.randn(5, 8), dim=-1)
    pos = torch.tensor([1, 2, 3, 3, 6])
    return model, q, pos


def test_full_softmax_equals_manual_cross_entropy():
    model, q, pos = _setup()
    logits = q @ F.normalize(model.item_embedding.weight[1:], dim=-1).T / 0.1
    expected = -(logits.log_softmax(-1)[torch.arange(5), pos - 1]).mean()
    torch.testing.assert_close(full_softmax_loss(q, pos, model, 0.1), expected)


def test_in_batch_uses_each_distinct_target_once():
    model, q, pos = _setup()
    cand = torch.tensor([1, 2, 3, 6])
    logits = q @ model.item_vectors(cand).T / 0.5
    label = torch.tensor([0, 1, 2, 2, 3])
    torch.testing.assert_close(in_batch_loss(q, pos, model, 0.5), F.cross_entropy(logits, label))


def test_sampled_softmax_masks_accidental_hits():
    # a catalogue of one item: every negative is the positive, all masked -> loss exactly 0
    model = build_model(HSTUConfig(num_items=1, max_seq_len=4, embedding_dim=8, time_bias=False))
    q = torch.randn(3, 8)
    for share in (True, False):
        assert sampled_softmax_loss(q, torch.ones(3, dtype=torch.long), model, 4, 0.05, share).item() == pytest.approx(0.0, abs=1e-6)


def test_sampled_softmax_value_with_known_negatives():
    model, q, pos = _setup()
    torch.manual_seed(3)
    loss = sampled_softmax_loss(q, pos, model, 4, 0.2, share=True)
    torch.manual_seed(3)
    neg = torch.randint(1, 7, (1, 4))
    pl = (q * model.item_vectors(pos)).sum(-1, keepdim=True)
    nl = (q @ model.item_vectors(neg[0]).T).masked_fill(neg == pos[:, None], -math.inf)
    expected = F.cross_entropy(torch.cat([pl, nl], 1) / 0.2, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(loss, expected)


def test_mixed_by_hand_counts_each_item_once():
    model, q, pos = _setup()  # targets 1 2 3 3 6 of a 6-item catalogue
    torch.manual_seed(6)  # draws 3 4 4 3 5 4 (checked below): 3 is a batch target, 4 comes three times
    loss = mixed_loss(q, pos, model, 6, 0.5)
    torch.manual_seed(6)
    assert torch.randint(1, 7, (1, 6))[0].tolist() == [3, 4, 4, 3, 5, 4]
    cand = torch.tensor([1, 2, 3, 6, 4, 5])  # the batch's distinct targets, then the uniform ids left: 4 and 5 once each
    logits = q @ model.item_vectors(cand).T / 0.5
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([0, 1, 2, 2, 3])))


def test_mixed_equals_in_batch_when_every_uniform_id_is_dropped():
    model, q, pos = _setup()
    torch.testing.assert_close(mixed_loss(q, pos, model, 8, 0.5, never=torch.arange(1, 7)), in_batch_loss(q, pos, model, 0.5))


def test_mixed_needs_negatives_and_says_so_in_the_protocol():
    with pytest.raises(ConfigError, match="num_negatives=0"):
        TrainConfig(loss="mixed", num_negatives=0)
    assert LOSSES["mixed"].describe(TrainConfig(loss="mixed", num_negatives=64)).startswith(
        "mixed negatives: the batch's other targets + 64 uniform negatives shared per batch")


@pytest.mark.parametrize("loss", ["sampled_softmax", "in_batch", "mixed", "full_softmax"])
def test_retrieval_loss_ignores_padding_positions(loss):
    model, _, _ = _setup()
    model.eval()
    cfg = TrainConfig(loss=loss, num_negatives=3)
    b1 = TrainBatch(torch.tensor([[1, 2]]), torch.tensor([[2, 3]]), None, None)
    b2 = TrainBatch(torch.tensor([[1, 2, 0]]), torch.tensor([[2, 3, 0]]), None, None)
    torch.manual_seed(0)
    l1 = retrieval_loss(model, b1, cfg)
    torch.manual_seed(0)
    l2 = retrieval_loss(model, b2, cfg)
    torch.testing.assert_close(l1, l2)


def test_a_new_loss_is_one_function_and_one_registry_line():
    model, _, _ = _setup()
    batch = TrainBatch(torch.tensor([[1, 2, 0]]), torch.tensor([[2, 3, 0]]), None, None)

    def hinge(q, pos, model, train_cfg):  # toy: positive score above a margin
        return (1.0 - (q * model.item_vectors(pos)).sum(-1)).clamp(min=0).mean()

    with pytest.raises(ConfigError, match="train.loss='hinge'"):
        TrainConfig(loss="hinge")
    LOSSES["hinge"] = RetrievalLoss(hinge, lambda t: "hinge", lambda t, num_items, tokens: tokens)
    try:
        cfg = TrainConfig(loss="hinge")
        q = model.encode(batch.items)[batch.targets != 0]
        torch.testing.assert_close(retrieval_loss(model, batch, cfg), hinge(q, torch.tensor([2, 3]), model, cfg))
    finally:
        del LOSSES["hinge"]


def test_never_items_are_masked_like_accidental_hits():
    torch.manual_seed(0)
    model = build_model(HSTUConfig(num_items=6, max_seq_len=4, embedding_dim=8, time_bias=False))
    q, pos = torch.randn(3, 8), torch.tensor([1, 2, 3])
    torch.manual_seed(1)
    plain = sampled_softmax_loss(q, pos, model, 20, 0.5, share=True)
    torch.manual_seed(1)
    masked = sampled_softmax_loss(q, pos, model, 20, 0.5, share=True, never=torch.tensor([4, 5, 6]))
    # with 4..6 never negatives only ids 1..3 remain: the hand-computed softmax over them
    logits = (q @ model.item_vectors(torch.arange(1, 4)).T) / 0.5  # [3 3]
    torch.manual_seed(1)
    neg = torch.randint(1, 7, (1, 20))[0]
    present = [i for i in (1, 2, 3) if i in neg.tolist()]
    ref = []
    for t, p in enumerate(pos.tolist()):
        others = [logits[t, i - 1] for i in present if i != p]
        counts = [int((neg == i).sum()) for i in present if i != p]
        terms = torch.stack([logits[t, p - 1]] + [o for o, c in zip(others, counts) for _ in range(c)])
        ref.append(torch.logsumexp(terms, 0) - logits[t, p - 1])
    torch.testing.assert_close(masked, torch.stack(ref).mean())
    assert not torch.isclose(plain, masked)


@pytest.mark.parametrize("share", [True, False])
def test_negatives_from_the_targets_domain_never_leave_it(share):
    # items 1-10 are domain 0, 11-20 domain 1; one domain's item vectors are NaN, so a single
    # negative drawn from it makes the loss NaN: with ranges, the other domain's targets never see it
    torch.manual_seed(0)
    model = build_model(HSTUConfig(num_items=20, max_seq_len=4, embedding_dim=8, time_bias=False, dropout=0.0))
    ranges = torch.tensor([[1, 11], [11, 21]])
    q = F.normalize(torch.randn(6, 8), dim=-1)
    for poisoned, pos in (((1, 11), torch.tensor([12, 15, 20, 11, 13, 19])), ((11, 21), torch.tensor([1, 2, 3, 10, 4, 7]))):
        with torch.no_grad():
            saved = model.item_embedding.weight.clone()
            model.item_embedding.weight[poisoned[0] : poisoned[1]] = float("nan")
        assert torch.isfinite(sampled_softmax_loss(q, pos, model, 64, 0.1, share, ranges=ranges))
        assert torch.isnan(sampled_softmax_loss(q, pos, model, 64, 0.1, share))  # the whole catalogue: it is drawn
        with torch.no_grad():
            model.item_embedding.weight.copy_(saved)
    mixed = torch.tensor([1, 12, 5, 20, 9, 11])  # both domains in one batch: each row its own domain's negatives
    loss = sampled_softmax_loss(q, mixed, model, 64, 0.1, share, ranges=ranges)
    assert torch.isfinite(loss) and loss > 0


@pytest.mark.parametrize("share", [True, False])
def test_negatives_from_a_one_item_domain_are_all_accidental_hits(share):
    # domain 0 is item 1 alone: every negative of its targets is the positive, masked -> loss 0
    model = build_model(HSTUConfig(num_items=5, max_seq_len=4, embedding_dim=8, time_bias=False))
    q = F.normalize(torch.randn(3, 8), dim=-1)
    ranges = torch.tensor([[1, 2], [2, 6]])
    assert sampled_softmax_loss(q, torch.tensor([1, 1, 1]), model, 16, 0.1, share, ranges=ranges).item() == 0.0
    assert sampled_softmax_loss(q, torch.tensor([1, 3, 1]), model, 16, 0.1, share, ranges=ranges).item() > 0.0


def test_negatives_from_target_domain_needs_domains_and_sampled_softmax():
    from genrec.config import ExperimentConfig

    with pytest.raises(ConfigError, match="data.domains"):
        ExperimentConfig.from_dict({"train": {"negatives_from": "target_domain"}})
    with pytest.raises(ConfigError, match="sampled_softmax"):
        TrainConfig(negatives_from="target_domain", loss="in_batch")
    with pytest.raises(ConfigError, match="negatives_from"):
        TrainConfig(negatives_from="domain")


def test_softmax_matmul_is_a_full_softmax_setting_and_says_so_in_the_protocol():
    with pytest.raises(ConfigError, match="full_softmax only"):
        TrainConfig(softmax_matmul="bf16")  # default loss: sampled_softmax
    with pytest.raises(ConfigError, match="train.softmax_matmul"):
        TrainConfig(loss="full_softmax", softmax_matmul="fp16")
    cfg = TrainConfig(loss="full_softmax", softmax_matmul="bf16")
    assert LOSSES["full_softmax"].describe(cfg) == "full softmax, temperature 0.05, bf16 matmul operands"
    assert LOSSES["full_softmax"].describe(TrainConfig(loss="full_softmax")) == "full softmax, temperature 0.05"
    model, q, pos = _setup()
    exact = LOSSES["full_softmax"].fn(q, pos, model, TrainConfig(loss="full_softmax"))
    rounded = LOSSES["full_softmax"].fn(q, pos, model, cfg)
    torch.testing.assert_close(rounded, exact, rtol=5e-3, atol=0.0)
