"""Labels from ratings/actions, interleaved training windows and held-out impression blocks."""

import numpy as np
import pytest

from genrec.config import TaskConfig
from genrec.data.batches import TrainBatches, eval_batches
from genrec.data.feedback import feedback_normalisation, feedback_range, make_labels
from genrec.data.prepare import SequenceData, build_sequences, load_prepared, prepare
from genrec.errors import ConfigError, DataFormatError
from genrec.config import DataConfig
import pyarrow as pa


def _data(ratings, lengths=(4, 6), actions=None, names=()):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    T = int(offsets[-1])
    return SequenceData(
        offsets=offsets, items=np.arange(1, T + 1), timestamps=np.arange(T) * 10, item_ids=np.array([str(i) for i in range(T)], dtype=object),
        user_ids=np.array(["a", "b"], dtype=object), stats={"source": "fixture"},
        ratings=None if ratings is None else np.asarray(ratings, dtype=float), actions=actions, action_names=names,
    )


def test_rating_threshold_labels():
    d = _data([5, 4, 3.5, 1, 2, 2, 2, 2, 4.5, 3])
    labels, spec = make_labels(d, TaskConfig(kind="ranking"))
    assert spec.names == ("like",) and spec.kinds == ("binary",)
    assert labels[:, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    labels, _ = make_labels(d, TaskConfig(kind="ranking", positive_rating=5))
    assert labels[:, 0].sum() == 1


def test_rating_as_a_second_regression_task():
    d = _data([5, 4, 3.5, 1, 2, 2, 2, 2, 4.5, 3])
    labels, spec = make_labels(d, TaskConfig(kind="ranking", regression_actions=["rating"]))
    assert spec.names == ("like", "rating") and spec.kinds == ("binary", "regression") and "MSE" in spec.description
    assert labels[:, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    assert labels[:, 1].tolist() == [5, 4, 3.5, 1, 2, 2, 2, 2, 4.5, 3]
    for bad in ({"regression_actions": ["watch"]}, {"binary_actions": ["click"]}):
        with pytest.raises(ConfigError, match="need task.labels=actions"):
            TaskConfig(kind="ranking", **bad)


def test_feedback_normalisation_reads_training_interactions_only():
    d = _data([5, 4, 3.5, 1, 2, 2, 2, 2, 4.5, 3])  # users of 4 and 6; holdout 1: the last 2 of each are held out
    labels, spec = make_labels(d, TaskConfig(kind="ranking", regression_actions=["rating"]))
    shift, scale = feedback_normalisation(d, labels, spec, holdout=1)
    train = np.array([5, 4, 2, 2, 2, 2.0])  # hand-picked: user a's first 2, user b's first 4
    assert shift == (0.0, pytest.approx(train.mean())) and scale == (1.0, pytest.approx(train.std()))
    flat = _data([3.0] * 10)
    labels, spec = make_labels(flat, TaskConfig(kind="ranking", regression_actions=["rating"]))
    assert feedback_normalisation(flat, labels, spec, holdout=1) == ((0.0, 3.0), (1.0, 1.0))  # constant: scale 1


def test_feedback_range_reads_training_interactions_only():
    d = _data([5, 4, 3.5, 1, 2, 2, 2, 2, 4.5, 3])  # held out (holdout 1): 3.5, 1 (user a) and 4.5, 3 (user b)
    labels, _ = make_labels(d, TaskConfig(kind="ranking", regression_actions=["rating"]))
    assert feedback_range(d, labels, holdout=1) == ((0.0, 1.0), (2.0, 5.0))  # training ratings 5, 4, 2, 2, 2, 2


def test_missing_ratings_are_a_clear_error():
    with pytest.raises(DataFormatError, match="no ratings"):
        make_labels(_data(None), TaskConfig(kind="ranking"))
    r = [5.0] * 10
    r[3] = np.nan
    with pytest.raises(DataFormatError, match="1 of 10 interactions have no rating"):
        make_labels(_data(r), TaskConfig(kind="ranking"))


def test_action_columns_binary_and_regression():
    acts = np.stack([np.array([0, 1, 2, 0, 0, 1, 0, 0, 0, 3.0]), np.linspace(0, 9, 10)], 1).astype(np.float32)
    d = _data(None, actions=acts, names=("click", "watch"))
    cfg = TaskConfig(kind="unified", labels="actions", binary_actions=["click"], regression_actions=["watch"])
    labels, spec = make_labels(d, cfg)
    assert spec.kinds == ("binary", "regression")
    assert labels[:, 0].tolist() == [0, 1, 1, 0, 0, 1, 0, 0, 0, 1]
    np.testing.assert_allclose(labels[:, 1], np.linspace(0, 9, 10))
    with pytest.raises(DataFormatError, match="not in the data"):
        make_labels(d, TaskConfig(kind="ranking", labels="actions", binary_actions=["share"]))
    with pytest.raises(ConfigError):
        TaskConfig(kind="ranking", labels="actions")


def test_windows_stop_before_the_held_out_blocks_and_keep_negative_only_users():
    d = _data([1.0] * 4 + [5.0] * 6)  # user a: only negatives
    labels, _ = make_labels(d, TaskConfig(kind="ranking"))
    fb = TrainBatches(d, max_seq_len=10, batch_size=8, holdout=2, labels=labels)
    # holdout 2: a (4 items) is too short to evaluate (needs 5) and trains on all 4; b trains on 6 - 4 = 2
    (batch,) = list(fb.epoch(seed=0, epoch=0))
    rows = sorted(batch.items.tolist(), key=lambda r: r[0])
    assert rows == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert batch.labels.shape == (2, 4, 1)


def test_impression_blocks_hold_the_last_k_and_history_before_them():
    d = _data([5, 4, 3, 2, 1, 5, 4, 3, 2, 1], lengths=(4, 6))
    labels, _ = make_labels(d, TaskConfig(kind="ranking"))
    (test,) = list(eval_batches(d, "test", max_seq_len=3, batch_size=8, holdout=2, labels=labels))
    (valid,) = list(eval_batches(d, "valid", max_seq_len=3, batch_size=8, holdout=2, labels=labels))
    # only user b (6 items: 5..10) has >= 5; test = items 9, 10; valid = 7, 8; histories truncated to 3
    assert test.users.tolist() == [1] and test.candidates.tolist() == [[9, 10]] and test.items.tolist() == [[6, 7, 8]]
    assert valid.candidates.tolist() == [[7, 8]] and valid.items.tolist() == [[5, 6]]
    assert test.candidate_labels[0, :, 0].tolist() == [0.0, 0.0] and valid.candidate_labels[0, :, 0].tolist() == [1.0, 0.0]
    assert test.query_time.tolist() == [80]  # the first held-out item's time


def test_ties_in_time_keep_file_order_for_items_and_ratings():
    table = pa.table({"user": ["u", "u", "u"], "item": ["x", "y", "z"], "timestamp": [5, 5, 1], "rating": [1.0, 5.0, 3.0]})
    _, d = build_sequences(table)
    assert [d.item_ids[i - 1] for i in d.items] == ["z", "x", "y"]
    assert d.ratings.tolist() == [3.0, 1.0, 5.0]


def test_action_columns_survive_prepare(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("u,i,t,click,watch\na,x,1,1,3.5\na,y,2,0,0\nb,x,3,1,1\n")
    cfg = DataConfig(source=str(path), format="csv", columns={"user": "u", "item": "i", "timestamp": "t"},
                     action_columns=["click", "watch"], cache_dir=str(tmp_path / "c"))
    d = load_prepared(prepare(cfg))
    assert d.action_names == ("click", "watch")
    assert d.actions.tolist() == [[1.0, 3.5], [0.0, 0.0], [1.0, 1.0]]
    bad = tmp_path / "bad.csv"
    bad.write_text("u,i,t,click\na,x,1,yes\n")
    with pytest.raises(DataFormatError, match="bad.csv:2"):
        prepare(DataConfig(source=str(bad), format="csv", columns={"user": "u", "item": "i", "timestamp": "t"},
                           action_columns=["click"], cache_dir=str(tmp_path / "c")))
