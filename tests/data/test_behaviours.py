"""Multi-behaviour data: behaviour ids, target-behaviour splits, and what the model reads."""

import numpy as np
import pytest

from genrec.config import DataConfig, ExperimentConfig
from genrec.data.batches import TrainBatches, eval_batches
from genrec.data.splits import evaluable, split_block, train_end
from genrec.data.behaviours import with_behaviours
from genrec.data.prepare import SequenceData
from genrec.errors import ConfigError, DataFormatError


def _data() -> SequenceData:
    # user 0: items 1..6 rated 5 2 4 1 5 3 -> targets (rating >= 4) at items 1, 3, 5
    # user 1: items 7 8 9 rated 5 5 1       -> two targets only: trains, never evaluated
    # user 2: items 2 4 6 8 rated 4 4 4 2   -> targets 2, 4, 6; the trailing 8 comes after the test target
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 2, 4, 6, 8])
    ratings = np.array([5, 2, 4, 1, 5, 3, 5, 5, 1, 4, 4, 4, 2], dtype=np.float64)
    ts = np.arange(len(items)) * 10
    return SequenceData(np.array([0, 6, 9, 13]), items, ts, np.array([str(i) for i in range(1, 10)], dtype=object),
                        np.array(["a", "b", "c"], dtype=object), {"source": "test.csv"}, ratings)


def _cfg(**kw) -> DataConfig:
    return DataConfig(behaviour="rating", behaviour_values=[1, 2, 3, 4, 5], **kw)


def test_behaviour_ids_follow_the_listed_values():
    d = with_behaviours(_data(), DataConfig(behaviour="rating", behaviour_values=[5, 4, 3, 2, 1]))
    assert d.behaviours.ids[:6].tolist() == [1, 4, 2, 5, 1, 3] and d.behaviours.num == 5
    assert d.behaviours.targets is None and d.behaviours.reads is None
    assert with_behaviours(d, _cfg()) is d  # already set: unchanged


def test_values_outside_the_vocabulary_name_the_file_and_the_values():
    with pytest.raises(DataFormatError, match=r"test.csv: 2 interactions .* \[1.0\]"):
        with_behaviours(_data(), DataConfig(behaviour="rating", behaviour_values=[2, 3, 4, 5]))
    with pytest.raises(DataFormatError, match="neither 'rating' nor an action column"):
        with_behaviours(_data(), DataConfig(behaviour="clicks", behaviour_values=[0, 1]))


def test_config_checks():
    with pytest.raises(ConfigError, match="needs data.behaviour_values"):
        DataConfig(behaviour="rating")
    with pytest.raises(ConfigError, match="not all in data.behaviour_values"):
        DataConfig(behaviour="rating", behaviour_values=[1, 2], target_behaviours=[3])
    with pytest.raises(ConfigError, match="read_behaviours=targets needs"):
        _cfg(read_behaviours="targets")
    with pytest.raises(ConfigError, match="are for retrieval"):
        ExperimentConfig.from_dict({"data": {"behaviour": "rating", "behaviour_values": [1, 2]}, "task": {"kind": "ranking"}})


def test_splits_hold_out_the_last_two_target_interactions():
    d = with_behaviours(_data(), _cfg(target_behaviours=[4, 5]))
    assert evaluable(d).tolist() == [True, False, True]
    users, valid = split_block(d, "valid")
    _, test = split_block(d, "test")
    assert users.tolist() == [0, 2]
    assert d.items[valid].tolist() == [3, 4] and d.items[test].tolist() == [5, 6]
    assert train_end(d).tolist() == [2, 9, 10]
    assert train_end(d, include_valid=True).tolist() == [4, 9, 11]


def test_training_targets_are_target_behaviours_only():
    d = with_behaviours(_data(), _cfg(target_behaviours=[4, 5]))
    tb = TrainBatches(d, max_seq_len=10, batch_size=10)
    (batch,) = list(tb.epoch(seed=0, epoch=0))
    rows = sorted((r[r != 0].tolist(), t[: (r != 0).sum()].tolist(), b[r != 0].tolist())
                  for r, t, b in zip(batch.items.numpy(), batch.targets.numpy(), batch.behaviours.numpy()))
    # user 0 trains on items 1, 2 whose only target (2, rated 2) is not one: no window; user 2 has one item
    assert rows == [([7, 8], [8, 0], [5, 5])]
    assert tb.num_tokens == 1
    packed = next(TrainBatches(d, max_seq_len=10, batch_size=10, pack=True).epoch(seed=0, epoch=0))
    assert packed.targets[packed.items != 0].tolist() == [8, 0] and packed.behaviours[packed.items != 0].tolist() == [5, 5]


def test_positives_only_reading_keeps_targets_and_exclusions():
    d_all = with_behaviours(_data(), _cfg(target_behaviours=[4, 5]))
    d_pos = with_behaviours(_data(), _cfg(target_behaviours=[4, 5], read_behaviours="targets"))
    (a,) = list(eval_batches(d_all, "test", max_seq_len=10, batch_size=10))
    (p,) = list(eval_batches(d_pos, "test", max_seq_len=10, batch_size=10, query_time="last"))
    # (shorter users first)
    assert a.users.tolist() == p.users.tolist() == [2, 0] and a.targets.tolist() == p.targets.tolist() == [6, 5]
    assert a.items.tolist() == [[2, 4, 0, 0], [1, 2, 3, 4]] and a.behaviours.tolist() == [[4, 4, 0, 0], [5, 2, 4, 1]]
    assert p.items.tolist() == [[2, 4], [1, 3]] and p.behaviours.tolist() == [[4, 4], [5, 4]]
    assert a.exclude.tolist() == p.exclude.tolist() == [[2, 4, 0, 0], [1, 2, 3, 4]]  # every earlier interaction
    assert p.query_time.tolist() == [100, 20] and p.timestamps.tolist() == [[90, 100], [0, 20]]
    (pi,) = list(eval_batches(d_pos, "test", max_seq_len=1, batch_size=10, exclude_history="input"))
    assert pi.items.tolist() == [[3], [4]] and pi.exclude.tolist() == [[3], [4]]  # (equal length keys: user order)
    tb = TrainBatches(d_pos, max_seq_len=10, batch_size=10)
    (batch,) = list(tb.epoch(seed=0, epoch=0))
    assert batch.items.tolist() == [[7]] and batch.targets.tolist() == [[8]]


def test_without_behaviours_nothing_changes():
    d = _data()
    assert train_end(d).tolist() == [4, 7, 11]
    (t,) = list(eval_batches(d, "test", max_seq_len=10, batch_size=10))
    assert t.behaviours is None and t.users.tolist() == [1, 2, 0] and t.targets.tolist() == [9, 8, 6]


def test_exclude_targets_keeps_items_seen_with_another_behaviour():
    # a click (rating 1 here) on item 4 before it is "bought" (rated 5): with every earlier
    # interaction excluded the target could never rank; eval.exclude_history=targets keeps it
    items = np.array([1, 4, 2, 4, 3])
    ratings = np.array([5, 1, 5, 5, 4], dtype=np.float64)
    d = SequenceData(np.array([0, 5]), items, None, np.array([str(i) for i in range(1, 5)], dtype=object),
                     np.array(["a"], dtype=object), {}, ratings)
    d = with_behaviours(d, _cfg(target_behaviours=[4, 5]))
    (full,) = list(eval_batches(d, "valid", max_seq_len=10, batch_size=10))
    (tgt,) = list(eval_batches(d, "valid", max_seq_len=10, batch_size=10, exclude_history="targets"))
    assert full.targets.tolist() == [4] and full.exclude.tolist() == [[1, 4, 2]]
    assert sorted(x for x in tgt.exclude.tolist()[0] if x) == [1, 2]
    with pytest.raises(ConfigError, match="exclude_history=targets needs target behaviours"):
        ExperimentConfig.from_dict({"eval": {"exclude_history": "targets"}})
    with pytest.raises(ConfigError, match="behaviour_embedding needs behaviours"):
        ExperimentConfig.from_dict({"model": {"name": "sasrec", "behaviour_embedding": True}})
