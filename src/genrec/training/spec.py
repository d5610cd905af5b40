"""The resolved build spec: what the data decides about a model, derived once, never written back.

The user's config says what they want (``model.time_bias: true``, ``model.max_seq_len: 50``); the
data says what exists (the catalogue size, whether timestamps are present, which ranking tasks
the labels define). :func:`resolve_spec` derives an immutable :class:`BuildSpec` from both, and
:meth:`BuildSpec.model_config` gives the model a *copy* of its config with those facts filled in.
The experiment config stays as the user wrote it; what was changed and why goes into the run's
protocol as ``notes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from genrec.data.prepare import SequenceData
from genrec.models import ModelConfig


@dataclass(frozen=True)
class BuildSpec:
    num_items: int
    """Catalogue size of the prepared data (item ids 1..num_items)."""
    timestamps: bool
    """Whether the data has timestamps (a time bias needs them)."""
    task_names: tuple[str, ...] = ()
    """Ranking tasks defined by the labels (empty for retrieval)."""
    task_kinds: tuple[str, ...] = ()
    """``binary``/``regression`` per ranking task."""

    def model_config(self, model: ModelConfig) -> ModelConfig:
        """A copy of ``model`` with the data-decided fields set; ``model`` itself is not touched."""
        fields = {f.name for f in dataclasses.fields(model)}
        changes: dict = {"num_items": self.num_items}
        if "time_bias" in fields and not self.timestamps:
            changes["time_bias"] = False
        if "task_names" in fields and self.task_names:  # models that carry their tasks (DIN)
            changes.update(task_names=self.task_names, task_kinds=self.task_kinds)
        return dataclasses.replace(model, **changes)

    def notes(self, model: ModelConfig) -> list[str]:
        """Protocol notes about what :meth:`model_config` changed and why."""
        wants_time_bias = "time_bias" in {f.name for f in dataclasses.fields(model)} and model.time_bias
        if wants_time_bias and not self.timestamps:
            return ["time bias off: the dataset has no timestamps (position bias only)"]
        return []


def resolve_spec(data: SequenceData, task_names: tuple[str, ...] = (), task_kinds: tuple[str, ...] = ()) -> BuildSpec:
    return BuildSpec(data.num_items, data.timestamps is not None, tuple(task_names), tuple(task_kinds))
