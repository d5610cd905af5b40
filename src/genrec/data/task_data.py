"""What every task trains and evaluates on: the prepared data plus what the config reads from
beside it (behaviours, user attributes), in one place for ``build_task``, ``genrec distill`` and
the scripts that evaluate checkpoints themselves."""

from __future__ import annotations

from genrec.data.behaviours import with_behaviours
from genrec.data.prepare import SequenceData, load_prepared, prepare
from genrec.data.user_features import with_user_features


def task_data(data: SequenceData, cfg) -> SequenceData:
    """The prepared ``data`` of experiment ``cfg`` with its behaviours set (``data.behaviour``;
    a no-op without) and, for a model with ``model.user_features``, its users' attributes."""
    data = with_behaviours(data, cfg.data)
    if cfg.model.user_features != "none":
        data = with_user_features(data, cfg.data)
    return data


def load_data(cfg) -> SequenceData:
    """:func:`task_data` of experiment ``cfg``'s prepared data (prepared first if need be)."""
    return task_data(load_prepared(prepare(cfg.data)), cfg)
