import numpy as np

import torch

from genrec.data.batches import TrainBatches, eval_batches, pack_rows, shard_rows
from genrec.data.prepare import SequenceData


def _data():
    # user 0: 1 2 3 4 5 6 (times 10..60); user 1: 7 8 (train only); user 2: 2 4 6
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 2, 4, 6])
    ts = np.array([10, 20, 30, 40, 50, 60, 1, 2, 5, 6, 7])
    return SequenceData(np.array([0, 6, 8, 11]), items, ts, np.array([str(i) for i in range(1, 9)], dtype=object), np.array(["a", "b", "c"], dtype=object), {})


def test_train_windows_exclude_valid_and_test_items():
    tb = TrainBatches(_data(), max_seq_len=3, batch_size=10)
    batch = next(tb.epoch(seed=0, epoch=0))
    rows = {tuple(r[r != 0].tolist()): tuple(t[t != 0].tolist()) for r, t in zip(batch.items.numpy(), batch.targets.numpy())}
    # user 0 trains on 1..4 (5 = valid, 6 = test); user 1 on 7 8; user 2 has only item 2 -> no row
    assert rows == {(1, 2, 3): (2, 3, 4), (7,): (8,)}
    assert tb.num_tokens == 4


def test_train_window_truncates_to_max_len_and_times_align():
    tb = TrainBatches(_data(), max_seq_len=2, batch_size=1)
    batches = list(tb.epoch(seed=0, epoch=0))
    b0 = next(b for b in batches if b.items[0, 0] != 7)
    assert b0.items.tolist() == [[2, 3]] and b0.targets.tolist() == [[3, 4]]
    assert b0.timestamps.tolist() == [[20, 30]] and b0.query_timestamps.tolist() == [[30, 40]]


def test_epochs_are_reproducible_and_differ():
    tb = TrainBatches(_data(), max_seq_len=3, batch_size=1)
    first = [b.items.tolist() for b in tb.epoch(1, 0)]
    assert first == [b.items.tolist() for b in tb.epoch(1, 0)]
    assert sorted(map(str, first)) == sorted(map(str, [b.items.tolist() for b in tb.epoch(1, 5)]))


def test_eval_batches_valid_and_test():
    d = _data()
    (v,) = list(eval_batches(d, "valid", max_seq_len=3, batch_size=10))
    assert v.users.tolist() == [2, 0]  # shortest history first
    assert v.targets.tolist() == [4, 5] and v.items.tolist() == [[2, 0, 0], [2, 3, 4]]
    assert v.query_time.tolist() == [6, 50]  # the target's own time (reference protocol)
    assert v.exclude.tolist() == [[2, 0, 0, 0], [1, 2, 3, 4]]  # full history, beyond the window
    (t,) = list(eval_batches(d, "test", max_seq_len=3, batch_size=10, exclude_history="input", query_time="last"))
    assert t.targets.tolist() == [6, 6] and t.items.tolist() == [[2, 4, 0], [3, 4, 5]]
    assert t.exclude.tolist() == [[2, 4, 0], [3, 4, 5]] and t.query_time.tolist() == [6, 50]


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows(np.array([3, 5, 2, 4, 1]), capacity=5)
    assert sorted(sorted(r) for r in rows) == [[0, 2], [1], [3, 4]]
    assert all(sum([3, 5, 2, 4, 1][i] for i in r) <= 5 for r in rows)


def _ragged():
    # lengths 6, 4, 5, 3 -> training windows of 3, 1, 2 and 0 inputs after holding out valid + test
    lengths = [6, 4, 5, 3]
    items = np.concatenate([np.arange(1, n + 1) + 10 * u for u, n in enumerate(lengths)])
    ts = np.arange(len(items)) * 7
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return SequenceData(offsets, items, ts, np.array([str(i) for i in range(1, 40)], dtype=object), np.array(list("abcd"), dtype=object), {})


def test_packed_batches_hold_the_same_windows_without_padding_waste():
    data = _ragged()
    padded = next(TrainBatches(data, max_seq_len=5, batch_size=10).epoch(seed=0, epoch=0))
    packed = next(TrainBatches(data, max_seq_len=5, batch_size=10, pack=True).epoch(seed=0, epoch=0))
    def windows(b):
        segs = b.segments if b.segments is not None else (b.items != 0).long() * (torch.arange(b.items.size(0)) + 1).unsqueeze(1)
        out = set()
        for r in range(b.items.size(0)):
            for s in segs[r].unique().tolist():
                if s:
                    sel = segs[r] == s
                    out.add((tuple(b.items[r][sel].tolist()), tuple(b.targets[r][sel].tolist()), tuple(b.query_timestamps[r][sel].tolist())))
        return out
    assert windows(packed) == windows(padded)
    assert packed.num_targets == padded.num_targets
    assert padded.items.shape == (3, 3) and packed.items.shape == (2, 3)  # windows 3 | 2 + 1
    assert packed.padding_fraction == 0.0 and padded.padding_fraction == 1 - 6 / 9
    assert packed.segments.tolist() in ([[1, 1, 1], [1, 1, 2]], [[1, 1, 1], [1, 2, 2]])


def test_shard_rows_splits_each_batch_and_drops_a_too_small_tail():
    batches = [np.arange(5), np.arange(5, 9), np.array([9])]
    r0, r1 = list(shard_rows(batches, 0, 2)), list(shard_rows(batches, 1, 2))
    assert [b.tolist() for b in r0] == [[0, 2, 4], [5, 7]] and [b.tolist() for b in r1] == [[1, 3], [6, 8]]


def test_data_fraction_keeps_a_fixed_subset_of_users():
    data = _ragged()
    full = TrainBatches(data, max_seq_len=5, batch_size=10)
    half = TrainBatches(data, max_seq_len=5, batch_size=10, fraction=0.5, seed=3)
    again = TrainBatches(data, max_seq_len=5, batch_size=10, fraction=0.5, seed=3)
    assert half.num_users < full.num_users and set(half.starts) <= set(full.starts)
    assert half.starts.tolist() == again.starts.tolist()  # same subset every time (resume, every epoch)


def test_data_fraction_out_of_range_is_a_clear_error():
    import pytest

    from genrec.config import ExperimentConfig
    from genrec.errors import ConfigError

    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="train.data_fraction"):
            ExperimentConfig.from_dict({"train": {"data_fraction": bad}})


def test_cold_items_never_occur_in_training_but_stay_in_evaluation():
    from genrec.data.splits import cold_item_ids

    ids = cold_item_ids(100, 0.1)
    assert len(ids) == 10 and ids.tolist() == cold_item_ids(100, 0.1).tolist() and 1 <= ids.min() and ids.max() <= 100
    d = _data()  # user 0 trains on 1..4, user 1 on 7 8
    tb = TrainBatches(d, max_seq_len=3, batch_size=10, skip_items=np.array([2, 8]))
    batch = next(tb.epoch(seed=0, epoch=0))
    rows = {tuple(r[r != 0].tolist()): tuple(t[t != 0].tolist()) for r, t in zip(batch.items.numpy(), batch.targets.numpy())}
    assert rows == {(1, 3): (3, 4)}  # 2 and 8 are gone as inputs and targets; user 1 has one item left
    (t,) = list(eval_batches(d, "test", max_seq_len=3, batch_size=10))
    assert 2 in t.items.tolist()[0] and t.exclude.tolist()[1] == [1, 2, 3, 4, 5]  # evaluation still sees them
