"""Learning-rate schedules: hand-computed factors and config checks (the trainer applying them,
resume included: tests/training/test_trainer.py)."""

import itertools
import math

import pytest

from genrec.config import TrainConfig
from genrec.errors import ConfigError
from genrec.training.schedule import lr_factor, warmup_steps


def test_constant_without_warmup_is_one_everywhere():
    assert [lr_factor(s, 5, 4, "constant", 0.0) for s in (0, 7, 19, 40)] == [1.0] * 4


def test_linear_warmup_then_constant():
    # 2 epochs of 5 steps: the first step takes 1/10 of the rate, the tenth the whole rate
    assert [lr_factor(s, 5, 4, "constant", 2.0) for s in range(12)] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0])


def test_cosine_after_warmup_by_hand():
    # 4 epochs x 5 steps = 20 steps, 10 of warm-up: decay over the other 10
    f = [lr_factor(s, 5, 4, "cosine", 2.0) for s in range(20)]
    assert f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)  # warm-up end, decay start (p = 0)
    assert f[15] == pytest.approx(0.5)  # p = 5/10: cos(pi/2) = 0
    assert f[19] == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))  # 0.02447: the last step still moves
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert lr_factor(25, 5, 4, "cosine", 2.0) == 0.0  # past the cap (not reached by training): 0, not negative


def test_cosine_without_warmup_starts_at_the_full_rate():
    assert lr_factor(0, 10, 3, "cosine", 0.0) == 1.0
    assert lr_factor(15, 10, 3, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))


def test_fractional_warmup_rounds_to_whole_steps():
    assert warmup_steps(0.5, 7) == 4 and warmup_steps(0.01, 7) == 1 and warmup_steps(0.0, 7) == 0


@pytest.mark.parametrize("kw, words", [
    ({"lr_schedule": "linear"}, "train.lr_schedule"),
    ({"warmup_epochs": -1}, "warmup_epochs=-1"),
    ({"lr_schedule": "cosine", "warmup_epochs": 5, "epochs": 5}, "no epoch of the cosine decay"),
    ({"warmup_epochs": 1, "item_table": "rowwise"}, "warmup_epochs=1 set the AdamW rate only"),
    ({"warmup_epochs": 3, "epochs": 2}, "longer than the run"),
])
def test_bad_schedules_are_refused(kw, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**kw)
